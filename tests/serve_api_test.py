#!/usr/bin/env python3
"""End-to-end test of `subbit serve`: starts the real server process on a free loopback port and
talks to it over HTTP with Python's standard library. Covers completions and chat (plain and
streamed), sampling fields, stop strings, tokenize/detokenize, bad requests (each must get a
4xx JSON error while the server keeps serving), a client that disconnects mid-stream, the API
key, 503 on a full queue, and a clean stop on SIGINT/SIGTERM. Every wait is bounded.

usage: serve_api_test.py --cli build/subbit --model models/sb-8m
Exit status 0 when every check passes; failures are listed."""
import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

FAILURES = []


def check(condition, message):
    if not condition:
        FAILURES.append(message)
        print(f"FAIL: {message}", flush=True)
    return condition


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, cli, model, *extra):
        self.port = free_port()
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [cli, "serve", model, "--host", "127.0.0.1", "--port", str(self.port), *extra],
            stdout=self.log, stderr=self.log)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early ({self.process.returncode}): {self.output()}")
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.process.kill()
        raise RuntimeError("server did not come up within 120 s: " + self.output())

    def output(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def connection(self, timeout=120):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, raw=None):
        """Returns (status, parsed JSON or None, raw text)."""
        c = self.connection()
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            all_headers = {"Content-Type": "application/json"}
            all_headers.update(headers or {})
            c.request(method, path, body=data, headers=all_headers)
            r = c.getresponse()
            text = r.read().decode(errors="replace")
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            return r.status, parsed, text
        finally:
            c.close()

    def stream(self, path, body, headers=None):
        """Returns (status, list of parsed events, saw [DONE])."""
        c = self.connection()
        try:
            all_headers = {"Content-Type": "application/json"}
            all_headers.update(headers or {})
            c.request("POST", path, body=json.dumps(body).encode(), headers=all_headers)
            r = c.getresponse()
            if r.status != 200:
                return r.status, [json.loads(r.read())], False
            events, done = [], False
            for line in r:
                line = line.decode().rstrip("\n")
                if not line.startswith("data: "):
                    continue
                payload = line[len("data: "):]
                if payload == "[DONE]":
                    done = True
                    break
                events.append(json.loads(payload))
            return r.status, events, done
        finally:
            c.close()

    def stop(self, sig=signal.SIGTERM, timeout=30):
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None


def is_error(status, body, expected_status):
    return (status == expected_status and isinstance(body, dict) and isinstance(body.get("error"), dict)
            and isinstance(body["error"].get("message"), str))


def test_basics(server, cli, model):
    status, body, _ = server.request("GET", "/health")
    check(status == 200 and body["status"] == "ok", f"/health: {status} {body}")
    status, body, _ = server.request("GET", "/v1/models")
    check(status == 200 and body["object"] == "list" and body["data"][0]["id"] == os.path.basename(model),
          f"/v1/models: {status} {body}")

    prompt = "The history of the United States"
    expected = subprocess.run([cli, "run", model, "-p", prompt, "-n", "24", "--temp", "0", "-t", "2"],
                              capture_output=True, text=True, timeout=120).stdout
    status, body, _ = server.request("POST", "/v1/completions",
                                     {"prompt": prompt, "max_tokens": 24, "temperature": 0})
    check(status == 200, f"completion status {status}")
    text = body["choices"][0]["text"]
    check(body["object"] == "text_completion", "completion object")
    check(prompt + text + "\n" == expected,
          f"greedy completion differs from `subbit run`: {text!r} vs {expected!r}")
    usage = body["usage"]
    tokens = server.request("POST", "/tokenize", {"content": prompt, "add_special": True})[1]["tokens"]
    check(usage["prompt_tokens"] == len(tokens) and usage["total_tokens"] == usage["prompt_tokens"] +
          usage["completion_tokens"], f"usage {usage}")
    check(body["choices"][0]["finish_reason"] in ("length", "stop"), "finish_reason")
    if body["choices"][0]["finish_reason"] == "length":
        check(usage["completion_tokens"] == 24, f"completion_tokens {usage}")

    # Streaming gives the same text, then a last chunk with the finish reason and usage, then [DONE].
    status, events, done = server.stream("/v1/completions", {"prompt": prompt, "max_tokens": 24,
                                                             "temperature": 0, "stream": True})
    streamed = "".join(e["choices"][0]["text"] for e in events)
    check(status == 200 and done, "completion stream ends with [DONE]")
    check(streamed == text, f"streamed text {streamed!r} != {text!r}")
    check(events[-1]["choices"][0]["finish_reason"] is not None and events[-1]["usage"] == usage,
          f"last stream chunk {events[-1]}")

    # A stop string cuts the text before it.
    if len(text) > 12:
        stop = text[6:10]
        status, body, _ = server.request("POST", "/v1/completions", {"prompt": prompt, "max_tokens": 24,
                                                                     "temperature": 0, "stop": [stop]})
        cut = body["choices"][0]["text"]
        check(cut == text[:text.index(stop)] and body["choices"][0]["finish_reason"] == "stop",
              f"stop {stop!r}: {cut!r} from {text!r}")
        status, events, done = server.stream("/v1/completions", {"prompt": prompt, "max_tokens": 24,
                                                                 "temperature": 0, "stop": stop, "stream": True})
        check("".join(e["choices"][0]["text"] for e in events) == cut, "streamed text with a stop string")

    # Sampling: a seed repeats, top_k 1 is greedy, a list of token ids is a prompt.
    sampled = [server.request("POST", "/v1/completions", {"prompt": prompt, "max_tokens": 16, "temperature": 1.0,
                                                          "top_p": 0.9, "seed": 7})[1]["choices"][0]["text"]
               for _ in range(2)]
    check(sampled[0] == sampled[1], f"same seed, different text: {sampled}")
    top1 = server.request("POST", "/v1/completions", {"prompt": prompt, "max_tokens": 24, "temperature": 1.5,
                                                      "top_k": 1})[1]["choices"][0]["text"]
    check(top1 == text, f"top_k 1 is not greedy: {top1!r}")
    by_ids = server.request("POST", "/v1/completions", {"prompt": tokens, "max_tokens": 24,
                                                        "temperature": 0})[1]["choices"][0]["text"]
    check(by_ids == text, "a prompt of token ids")

    # Chat: the model has no template, so the documented plain fallback applies.
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": "Tell me about the history of Rome."}]}]
    status, body, _ = server.request("POST", "/v1/chat/completions",
                                     {"model": "anything", "messages": messages, "max_tokens": 20, "temperature": 0})
    check(status == 200 and body["object"] == "chat.completion", f"chat: {status} {body}")
    answer = body["choices"][0]["message"]
    check(answer["role"] == "assistant" and isinstance(answer["content"], str), f"chat message {answer}")
    check(body["usage"]["completion_tokens"] <= 20 and body["usage"]["prompt_tokens"] > 0, "chat usage")
    status, events, done = server.stream("/v1/chat/completions", {"messages": messages, "max_tokens": 20,
                                                                  "temperature": 0, "stream": True})
    check(status == 200 and done and events[0]["choices"][0]["delta"].get("role") == "assistant",
          "chat stream starts with the assistant role and ends with [DONE]")
    check(all(e["object"] == "chat.completion.chunk" for e in events), "chat chunk objects")
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    check(streamed == answer["content"], f"streamed chat {streamed!r} != {answer['content']!r}")
    check(events[-1]["choices"][0]["finish_reason"] in ("stop", "length") and "usage" in events[-1],
          "chat stream's last chunk")

    # tokenize / detokenize round trip, including non-ASCII text.
    sample = "Grüße aus Köln — 2024!"
    ids = server.request("POST", "/tokenize", {"content": sample})[1]["tokens"]
    back = server.request("POST", "/detokenize", {"tokens": ids})[1]["content"]
    check(back == sample, f"detokenize(tokenize(x)) = {back!r}")


def test_bad_requests(server):
    long_prompt = "history " * 400  # well past --ctx 256
    cases = [
        ("malformed JSON", "/v1/completions", None, b'{"prompt": "x", ', 400),
        ("invalid UTF-8", "/v1/completions", None, b'{"prompt": "\xff\xfe"}', 400),
        ("not an object", "/v1/completions", [1, 2], None, 400),
        ("missing prompt", "/v1/completions", {"max_tokens": 3}, None, 400),
        ("prompt of wrong type", "/v1/completions", {"prompt": {"a": 1}}, None, 400),
        ("max_tokens of wrong type", "/v1/completions", {"prompt": "x", "max_tokens": "3"}, None, 400),
        ("negative max_tokens", "/v1/completions", {"prompt": "x", "max_tokens": -1}, None, 400),
        ("temperature of wrong type", "/v1/completions", {"prompt": "x", "temperature": "hot"}, None, 400),
        ("top_p out of range", "/v1/completions", {"prompt": "x", "top_p": 2}, None, 400),
        ("stop of wrong type", "/v1/completions", {"prompt": "x", "stop": 5}, None, 400),
        ("stream of wrong type", "/v1/completions", {"prompt": "x", "stream": "yes"}, None, 400),
        ("unknown field", "/v1/completions", {"prompt": "x", "frobnicate": 1}, None, 400),
        ("n > 1", "/v1/completions", {"prompt": "x", "n": 2}, None, 400),
        ("token id out of range", "/v1/completions", {"prompt": [1, 99999999]}, None, 400),
        ("prompt beyond the context", "/v1/completions", {"prompt": long_prompt}, None, 400),
        ("chat without messages", "/v1/chat/completions", {"model": "x"}, None, 400),
        ("messages of wrong type", "/v1/chat/completions", {"messages": "hi"}, None, 400),
        ("message without role", "/v1/chat/completions", {"messages": [{"content": "hi"}]}, None, 400),
        ("image content", "/v1/chat/completions",
         {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, None, 400),
        ("chat beyond the context", "/v1/chat/completions",
         {"messages": [{"role": "user", "content": long_prompt}]}, None, 400),
        ("tokenize without content", "/tokenize", {"text": "x"}, None, 400),
        ("detokenize bad id", "/detokenize", {"tokens": [-1]}, None, 400),
        ("unknown endpoint", "/v1/nothing", {"x": 1}, None, 404),
        ("oversize body", "/v1/completions", None, b'{"prompt": "' + b"a" * (2 << 20) + b'"}', 413),
    ]
    for label, path, body, raw, expected in cases:
        try:
            status, parsed, text = server.request("POST", path, body=body, raw=raw)
        except OSError as e:  # an oversize body may be refused before it is all sent
            check(label == "oversize body", f"{label}: connection error {e}")
            continue
        check(is_error(status, parsed, expected), f"{label}: expected a {expected} JSON error, got {status} {text[:200]}")
    status, body, _ = server.request("GET", "/health")
    check(status == 200, "the server still serves after bad requests")


def test_disconnect(server):
    """A client that goes away mid-stream frees its slot; the server keeps serving."""
    for _ in range(3):
        c = server.connection()
        c.request("POST", "/v1/completions", body=json.dumps({"prompt": "Once upon a time", "max_tokens": 200,
                                                              "temperature": 0.8, "stream": True}),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        r.fp.readline()  # the first event
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
    deadline = time.time() + 60
    busy = None
    while time.time() < deadline:
        busy = server.request("GET", "/health")[1]
        if busy["slots_busy"] == 0 and busy["queued"] == 0:
            break
        time.sleep(0.1)
    check(busy["slots_busy"] == 0 and busy["queued"] == 0, f"slots not freed after disconnects: {busy}")
    status, body, _ = server.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})
    check(status == 200, "serves after disconnects")


def test_api_key(cli, model):
    server = Server(cli, model, "--api-key", "s3cret", "--ctx", "128", "-t", "2")
    try:
        body = {"prompt": "x", "max_tokens": 2}
        status, parsed, _ = server.request("POST", "/v1/completions", body)
        check(is_error(status, parsed, 401), f"no key: {status}")
        status, parsed, _ = server.request("POST", "/v1/completions", body, {"Authorization": "Bearer wrong"})
        check(is_error(status, parsed, 401), f"wrong key: {status}")
        status, parsed, _ = server.request("GET", "/v1/models", headers={"Authorization": "Bearer s3cret"})
        check(status == 200, f"right key on /v1/models: {status}")
        status, parsed, _ = server.request("POST", "/v1/completions", body, {"Authorization": "Bearer s3cret"})
        check(status == 200, f"right key: {status}")
        check(server.request("GET", "/health")[0] == 200, "/health needs no key")
    finally:
        check(server.stop() == 0, "API-key server stops cleanly")


def test_full_queue(cli, model):
    """One slot, a queue of one: of five long requests sent at once, two are taken and the rest
    get a 503 JSON error (each would take far longer than sending all five)."""
    server = Server(cli, model, "--parallel", "1", "--queue", "1", "-t", "2")
    held = []
    try:
        long_request = json.dumps({"prompt": "Once upon a time", "max_tokens": 1000, "temperature": 0.8,
                                   "stream": True})
        for _ in range(5):
            c = server.connection()
            c.request("POST", "/v1/completions", body=long_request, headers={"Content-Type": "application/json"})
            held.append(c)
        statuses = []
        for c in held:
            r = c.getresponse()
            statuses.append(r.status)
            if r.status == 503:
                body = json.loads(r.read())
                check(is_error(503, body, 503), f"503 body: {body}")
        check(statuses.count(503) >= 1 and set(statuses) <= {200, 503} and statuses.count(200) >= 1,
              f"full queue: statuses {statuses}")
    finally:
        for c in held:
            c.close()
        check(server.stop(signal.SIGINT) == 0, "stops cleanly on SIGINT with requests in flight")
        check("stopping" in server.output(), "reports stopping")


def test_stop_mid_stream(cli, model):
    """SIGTERM while a stream is open: the stream ends (no hang) and the process exits 0."""
    server = Server(cli, model, "--ctx", "1024", "-t", "2")
    c = server.connection(timeout=60)
    c.request("POST", "/v1/completions", body=json.dumps({"prompt": "Once", "max_tokens": 1000, "stream": True}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    r.fp.readline()
    code = server.stop(signal.SIGTERM)
    check(code == 0, f"SIGTERM exit status {code}")
    try:
        r.read()  # must end, not hang: the server closed the stream
    except (OSError, http.client.HTTPException):
        pass
    c.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cli", required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args()

    server = Server(args.cli, args.model, "--ctx", "256", "--parallel", "2", "-t", "2")
    try:
        test_basics(server, args.cli, args.model)
        test_bad_requests(server)
        test_disconnect(server)
    finally:
        check(server.stop() == 0, "stops cleanly on SIGTERM")
    test_api_key(args.cli, args.model)
    test_full_queue(args.cli, args.model)
    test_stop_mid_stream(args.cli, args.model)
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed")
        return 1
    print("all serve API checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
