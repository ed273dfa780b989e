#include "chat/chat_format.h"

#include "common/error.h"

namespace subbit::chat {

ChatFormat::ChatFormat(const std::string& template_source, const std::string& source_name,
                       std::string bos_token, std::string eos_token)
    : bos_token_(std::move(bos_token)), eos_token_(std::move(eos_token)) {
  if (!template_source.empty()) template_.emplace(template_source, source_name);
}

std::string ChatFormat::apply(const jinja::Json& messages, bool add_generation_prompt) const {
  if (!messages.is_array() || messages.empty()) throw Error("messages must be a non-empty array");
  for (const auto& m : messages) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      throw Error("every message must be an object with a string \"role\"");
    if (m.contains("content") && !m["content"].is_string() && !m["content"].is_null())
      throw Error("message content must be a string");
  }
  if (template_) {
    return template_->render({{"messages", messages},
                              {"add_generation_prompt", add_generation_prompt},
                              {"bos_token", bos_token_},
                              {"eos_token", eos_token_}});
  }
  std::string out;
  for (const auto& m : messages) {
    std::string role = m["role"].get<std::string>();
    if (!role.empty() && role[0] >= 'a' && role[0] <= 'z') role[0] = char(role[0] - 'a' + 'A');
    const std::string content =
        m.contains("content") && m["content"].is_string() ? m["content"].get<std::string>() : "";
    out += role + ": " + content + "\n\n";
  }
  if (add_generation_prompt) out += "Assistant:";
  return out;
}

std::vector<std::string> ChatFormat::stop_strings() const {
  if (template_) return {};
  return {"\nUser:", "\nSystem:"};
}

}  // namespace subbit::chat
