#pragma once
// The server's request bodies read into engine requests: JSON text in, a CompletionRequest (or
// the text / ids of /tokenize and /detokenize) out, or a RequestError with the HTTP status and
// the message the client gets. Pure functions of the body and the model's interface, with no
// sockets, so that the fuzz target (fuzz/fuzz_server_request.cpp) and the tests call exactly
// what the server runs.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "chat/chat_format.h"
#include "server/engine.h"
#include "tokenizer/tokenizer.h"

namespace subbit::server {

// What the HTTP side needs to know about the model.
struct ModelInterface {
  const Tokenizer* tokenizer;
  const chat::ChatFormat* chat_format;
  bool add_special_tokens_to_completions;  // as `subbit run` encodes prompts
  std::vector<int32_t> end_tokens;         // end of sequence / turn: stop generating
  int64_t vocab_size;
};

// A request the server refuses: becomes {"error": {...}} with `status`.
struct RequestError {
  int status;
  std::string message;
};

struct ParsedCompletion {
  CompletionRequest request;
  bool stream = false;
};

// POST /v1/completions (`chat` false) or /v1/chat/completions (`chat` true). `context`: tokens
// per slot; the prompt must leave room for one more. Throws RequestError.
ParsedCompletion parse_completion(std::string_view body, bool chat, const ModelInterface& model,
                                  int64_t context);

struct TokenizeRequest {
  std::string content;
  bool add_special = false;
};
TokenizeRequest parse_tokenize(std::string_view body);  // POST /tokenize
std::vector<int32_t> parse_detokenize(std::string_view body,
                                      int64_t vocab_size);  // POST /detokenize

}  // namespace subbit::server
