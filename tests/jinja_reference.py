#!/usr/bin/env python3
"""Reference renderer for the chat-template tests: Jinja2 configured as transformers'
apply_chat_template configures it (sandboxed, trim_blocks, lstrip_blocks, loop controls,
tojson = json.dumps(ensure_ascii=False), raise_exception).

stdin: a JSON list of {"template": str, "variables": object}
stdout: a JSON list of {"ok": true, "text": str} or {"ok": false, "error": str}, same order."""
import json
import sys

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def main():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    results = []
    for case in json.load(sys.stdin):
        try:
            text = env.from_string(case["template"]).render(**case["variables"])
            results.append({"ok": True, "text": text})
        except Exception as error:  # every failure is an answer: the C++ side must fail too
            results.append({"ok": False, "error": f"{type(error).__name__}: {error}"})
    json.dump(results, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
