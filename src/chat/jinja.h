#pragma once
// A renderer for the subset of Jinja2 that Hugging Face chat templates use (Llama-3, Qwen2.5 /
// ChatML, SmolLM2, Mistral): text with {{ expressions }}, {% if/elif/else %}, {% for %} with
// loop.* and else, {% set %} (names and namespace attributes), {% break/continue %}, comments,
// whitespace control (-, +) with trim_blocks and lstrip_blocks on, the filters, tests, string
// and dict methods those templates call, and the globals raise_exception, namespace, range.
// Values behave as in Python and Jinja2 as configured by transformers' apply_chat_template
// (tojson is json.dumps with ensure_ascii=False). Anything outside the subset is refused with
// an Error naming "<template>:<line>:<column>".
//
// It knows nothing about HTTP, tokenizers or models: variables in, text out.
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace subbit::jinja {

// Insertion-ordered, as Python dicts are: tojson and iteration keep the caller's key order.
using Json = nlohmann::ordered_json;

class Template {
 public:
  // Parses `source`; `name` prefixes error positions. Throws Error on syntax outside the subset.
  Template(std::string source, std::string name);
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with `variables` (a JSON object) as the global names. Throws Error naming the
  // position for runtime errors (type errors, undefined attribute access, raise_exception).
  std::string render(const Json& variables) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Python's json.dumps(value, ensure_ascii=False, indent=indent) (indent < 0: one line with
// ", " and ": " separators), which is what the tojson filter of chat templates produces.
std::string python_json_dumps(const Json& value, int indent = -1);

}  // namespace subbit::jinja
