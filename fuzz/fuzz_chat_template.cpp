// The chat-template renderer (src/chat) on hostile templates: the input is the template source,
// optionally followed by kPartSeparator and a JSON object of variables (otherwise a short
// conversation as `subbit serve` passes it). Parsing and rendering may refuse with Error (syntax
// outside the subset, runtime errors, the nesting / step / output budgets); they must never
// crash, recurse past the stack, hang or allocate without bound.
#include "chat/jinja.h"
#include "fuzz_support.h"

using namespace subbit;

namespace {

const jinja::Json& conversation() {
  static const jinja::Json variables = {
      {"messages",
       jinja::Json::array({{{"role", "system"}, {"content", "Be brief."}},
                           {{"role", "user"}, {"content", "Hello"}},
                           {{"role", "assistant"}, {"content", "Hi! \xc3\xa9\xe2\x82\xac"}},
                           {{"role", "user"}, {"content", "Count to 3."}}})},
      {"add_generation_prompt", true},
      {"bos_token", "<s>"},
      {"eos_token", "</s>"}};
  return variables;
}

}  // namespace

int subbit::fuzz::run_chat_template(const uint8_t* data, size_t size) {
  const auto parts = fuzz::split_parts(fuzz::as_text(data, size), 2);
  jinja::Json variables = conversation();
  if (parts.size() == 2) {
    jinja::Json given = jinja::Json::parse(parts[1], nullptr, /*allow_exceptions=*/false);
    if (given.is_object()) variables = std::move(given);
  }
  fuzz::expect_clean_refusal([&] {
    const jinja::Template chat_template(std::string(parts[0]), "fuzz.jinja");
    chat_template.render(variables);
  });
  return 0;
}

#ifdef SUBBIT_FUZZ_MAIN
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return subbit::fuzz::run_chat_template(data, size);
}
#endif
