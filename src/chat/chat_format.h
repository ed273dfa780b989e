#pragma once
// Turns a conversation (OpenAI-shaped messages) into the prompt text a model was trained on:
// the model's own Jinja chat template when it has one, else a documented plain format.
#include <optional>
#include <string>
#include <vector>

#include "chat/jinja.h"

namespace subbit::chat {

class ChatFormat {
 public:
  // `template_source` empty: the plain fallback. `source_name` prefixes template errors.
  ChatFormat(const std::string& template_source, const std::string& source_name,
             std::string bos_token, std::string eos_token);

  bool has_template() const { return template_.has_value(); }

  // `messages`: an array of {"role": ..., "content": ...} objects (extra fields such as
  // tool_calls pass through to the template). Throws Error for bad messages or when the template
  // raises. Without a template the fallback is
  //     "System: <content>\n\nUser: <content>\n\nAssistant: <content>\n\n...Assistant:"
  // (one "<Role>: <content>\n\n" block per message, role capitalised; the trailing
  // "Assistant:" only with add_generation_prompt).
  std::string apply(const jinja::Json& messages, bool add_generation_prompt) const;

  // Text that ends an assistant turn and is not part of the answer: the fallback's next-turn
  // markers. Templated models end turns with special tokens instead (none here).
  std::vector<std::string> stop_strings() const;

 private:
  std::optional<jinja::Template> template_;
  std::string bos_token_, eos_token_;
};

}  // namespace subbit::chat
