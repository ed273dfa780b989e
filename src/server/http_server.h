#pragma once
// OpenAI-shaped HTTP API over an Engine: GET /health, GET /v1/models, POST /v1/completions,
// POST /v1/chat/completions (both also as server-sent events with "stream": true), and
// POST /tokenize, POST /detokenize. Every error is a JSON body
// {"error": {"message", "type", "code"}} with a 4xx/5xx status; no request can stop the server.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "server/engine.h"
#include "server/requests.h"

namespace subbit::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string api_key;     // empty: no authentication
  std::string model_name;  // reported by /v1/models and in responses
  size_t max_body_bytes = 1 << 20;
  int http_threads = 16;  // connections served at once (streams hold one each)
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
