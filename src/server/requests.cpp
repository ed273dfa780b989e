#include "server/requests.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>

#include "common/error.h"

namespace subbit::server {

namespace {

using Json = nlohmann::ordered_json;

template <typename... Args>
[[noreturn]] void bad_request(fmt::format_string<Args...> format, Args&&... args) {
  throw RequestError{400, fmt::format(format, std::forward<Args>(args)...)};
}

Json parse_body(std::string_view text) {
  Json body;
  try {
    body = Json::parse(text);
  } catch (const Json::exception& e) {
    bad_request("the request body is not valid JSON ({})", e.what());
  }
  if (!body.is_object()) bad_request("the request body must be a JSON object");
  return body;
}

// Refuses fields that are neither implemented nor known OpenAI fields accepted and ignored.
void check_fields(const Json& body, const std::set<std::string>& known) {
  for (const auto& [key, value] : body.items())
    if (!known.count(key)) bad_request("unknown field '{}'", key);
}

const Json* field(const Json& body, const char* name) {
  auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

std::optional<double> number_field(const Json& body, const char* name, double low, double high) {
  const Json* v = field(body, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) bad_request("'{}' must be a number", name);
  const double x = v->get<double>();
  if (!(x >= low && x <= high)) bad_request("'{}' must be between {} and {}", name, low, high);
  return x;
}

// Saturates unsigned JSON integers beyond int64 (they are out of every range asked for).
int64_t as_int64(const Json& v) {
  return v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX) ? INT64_MAX
                                                                           : v.get<int64_t>();
}

std::optional<int64_t> integer_field(const Json& body, const char* name, int64_t low,
                                     int64_t high) {
  const Json* v = field(body, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number_integer()) bad_request("'{}' must be an integer", name);
  const int64_t x = as_int64(*v);
  if (x < low || x > high) bad_request("'{}' must be between {} and {}", name, low, high);
  return x;
}

bool bool_field(const Json& body, const char* name, bool fallback) {
  const Json* v = field(body, name);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) bad_request("'{}' must be true or false", name);
  return v->get<bool>();
}

// A list of token ids, each in [0, vocab_size); `what` names the field in the message.
std::vector<int32_t> token_ids(const Json& list, int64_t vocab_size, const char* what) {
  std::vector<int32_t> ids;
  for (const Json& id : list) {
    if (!id.is_number_integer() || as_int64(id) < 0 || as_int64(id) >= vocab_size)
      bad_request("'{}' must hold token ids from 0 to {}", what, vocab_size - 1);
    ids.push_back(int32_t(as_int64(id)));
  }
  return ids;
}

std::vector<std::string> stop_field(const Json& body) {
  const Json* v = field(body, "stop");
  if (v == nullptr) return {};
  std::vector<std::string> stops;
  if (v->is_string()) {
    stops.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    if (v->size() > 16) bad_request("'stop' takes at most 16 strings");
    for (const Json& s : *v) {
      if (!s.is_string()) bad_request("'stop' must be a string or a list of strings");
      stops.push_back(s.get<std::string>());
    }
  } else {
    bad_request("'stop' must be a string or a list of strings");
  }
  for (const std::string& s : stops)
    if (s.empty() || s.size() > 256) bad_request("every 'stop' string must have 1 to 256 bytes");
  return stops;
}

const std::set<std::string> kCommonFields = {
    "model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "n",
    // accepted and ignored, so that OpenAI clients that send their defaults work unchanged
    "user", "frequency_penalty", "presence_penalty", "logit_bias", "stream_options", "logprobs"};

std::vector<int32_t> completion_prompt(const Json& body, const ModelInterface& model) {
  const Json* p = field(body, "prompt");
  if (p == nullptr) bad_request("'prompt' is required");
  if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) p = &(*p)[0];
  if (p->is_string())
    return model.tokenizer->encode(p->get<std::string>(), model.add_special_tokens_to_completions);
  if (p->is_array()) return token_ids(*p, model.vocab_size, "prompt");
  bad_request("'prompt' must be a string, a list of one string, or a list of token ids");
}

// OpenAI messages with their content flattened to a string (text parts joined).
Json chat_messages(const Json& body) {
  const Json* messages = field(body, "messages");
  if (messages == nullptr || !messages->is_array() || messages->empty())
    bad_request("'messages' must be a non-empty list");
  Json out = Json::array();
  for (const Json& m : *messages) {
    if (!m.is_object()) bad_request("every message must be an object");
    const Json* role = field(m, "role");
    if (role == nullptr || !role->is_string()) bad_request("every message needs a string 'role'");
    Json message = m;
    const Json* content = field(m, "content");
    if (content == nullptr) {
      message["content"] = "";
    } else if (content->is_array()) {
      std::string text;
      for (const Json& part : *content) {
        const Json* type = part.is_object() ? field(part, "type") : nullptr;
        const Json* part_text = part.is_object() ? field(part, "text") : nullptr;
        if (type == nullptr || *type != "text" || part_text == nullptr || !part_text->is_string())
          bad_request(
              "only text content parts ({{\"type\": \"text\", \"text\": ...}}) are supported");
        text += part_text->get<std::string>();
      }
      message["content"] = text;
    } else if (!content->is_string()) {
      bad_request("message 'content' must be a string or a list of text parts");
    }
    out.push_back(std::move(message));
  }
  return out;
}

// Sampling, limits and stops shared by both completion endpoints.
CompletionRequest common_request(const Json& body, std::vector<int32_t> prompt,
                                 int64_t default_max_tokens, const ModelInterface& model,
                                 int64_t context) {
  if (auto n = integer_field(body, "n", 1, 1); n && *n != 1) bad_request("'n' must be 1");
  if (const Json* logprobs = field(body, "logprobs");
      logprobs && *logprobs != false && *logprobs != Json(0))
    bad_request("'logprobs' is not supported");
  if (prompt.empty()) bad_request("the prompt is empty (no tokens)");
  if (int64_t(prompt.size()) >= context)
    bad_request(
        "the prompt has {} tokens; the context (--ctx) holds {}, so at most {} can be given",
        prompt.size(), context, context - 1);
  CompletionRequest r;
  r.max_tokens = integer_field(body, "max_tokens", 1, INT64_MAX).value_or(default_max_tokens);
  if (auto m = integer_field(body, "max_completion_tokens", 1, INT64_MAX)) r.max_tokens = *m;
  r.sampling.temperature = float(number_field(body, "temperature", 0, 100).value_or(1.0));
  r.sampling.top_p = float(number_field(body, "top_p", 0, 1).value_or(1.0));
  r.sampling.top_k = integer_field(body, "top_k", 0, INT64_MAX).value_or(0);
  if (auto seed = integer_field(body, "seed", INT64_MIN, INT64_MAX)) {
    r.sampling.seed = uint64_t(*seed);
  } else {
    r.sampling.seed = std::random_device{}();
  }
  r.stop_strings = stop_field(body);
  r.stop_tokens = model.end_tokens;
  r.prompt = std::move(prompt);
  return r;
}

}  // namespace

ParsedCompletion parse_completion(std::string_view text, bool chat, const ModelInterface& model,
                                  int64_t context) {
  const Json body = parse_body(text);
  std::set<std::string> known = kCommonFields;
  if (chat) {
    known.insert({"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools",
                  "tool_choice", "parallel_tool_calls"});
  } else {
    known.insert({"prompt", "echo", "best_of", "suffix"});
  }
  check_fields(body, known);
  ParsedCompletion parsed;
  parsed.stream = bool_field(body, "stream", false);
  if (!chat) {
    parsed.request = common_request(body, completion_prompt(body, model), /*OpenAI's default*/ 16,
                                    model, context);
    return parsed;
  }
  const Json messages = chat_messages(body);
  std::string prompt_text;
  try {
    prompt_text = model.chat_format->apply(messages, /*add_generation_prompt=*/true);
  } catch (const Error& e) {
    bad_request("cannot apply the chat template: {}", e.what());
  }
  // A template writes the BOS text itself; the plain fallback is encoded as completions are.
  std::vector<int32_t> prompt = model.tokenizer->encode(
      prompt_text, !model.chat_format->has_template() && model.add_special_tokens_to_completions);
  const int64_t default_max_tokens = context - int64_t(prompt.size());
  parsed.request = common_request(body, std::move(prompt), default_max_tokens, model, context);
  for (std::string& stop : model.chat_format->stop_strings())
    parsed.request.stop_strings.push_back(std::move(stop));
  return parsed;
}

TokenizeRequest parse_tokenize(std::string_view text) {
  const Json body = parse_body(text);
  check_fields(body, {"content", "add_special"});
  const Json* content = field(body, "content");
  if (content == nullptr || !content->is_string()) bad_request("'content' must be a string");
  return {content->get<std::string>(), bool_field(body, "add_special", false)};
}

std::vector<int32_t> parse_detokenize(std::string_view text, int64_t vocab_size) {
  const Json body = parse_body(text);
  check_fields(body, {"tokens"});
  const Json* tokens = field(body, "tokens");
  if (tokens == nullptr || !tokens->is_array()) bad_request("'tokens' must be a list of token ids");
  return token_ids(*tokens, vocab_size, "tokens");
}

}  // namespace subbit::server
