#pragma once
// OpenAI-shaped HTTP API over an Engine: GET /health, GET /v1/models, POST /v1/completions,
// POST /v1/chat/completions (both also as server-sent events with "stream": true), and
// POST /tokenize, POST /detokenize. Every error is a JSON body
// {"error": {"message", "type", "code"}} with a 4xx/5xx status; no request can stop the server.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "chat/chat_format.h"
#include "server/engine.h"
#include "tokenizer/tokenizer.h"

namespace subbit::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string api_key;          // empty: no authentication
  std::string model_name;       // reported by /v1/models and in responses
  size_t max_body_bytes = 1 << 20;
  int http_threads = 16;        // connections served at once (streams hold one each)
};

// What the HTTP side needs to know about the model.
struct ModelInterface {
  const Tokenizer* tokenizer;
  const chat::ChatFormat* chat_format;
  bool add_special_tokens_to_completions;  // as `subbit run` encodes prompts
  std::vector<int32_t> end_tokens;         // end of sequence / turn: stop generating
  int64_t vocab_size;
};

class HttpServer {
 public:
  HttpServer(Engine& engine, ModelInterface model, ServerOptions options);
  ~HttpServer();
  // Binds; returns the bound port (options.port 0 picks a free one). Throws Error on failure.
  int bind();
  // Serves until stop(); returns when the listener is closed and open connections ended.
  void serve();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace subbit::server
