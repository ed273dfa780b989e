#include "server/http_server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace subbit::server {

namespace {

using Json = nlohmann::ordered_json;

// Generated text may end inside a UTF-8 character at the length limit; replace, never throw.
std::string dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

void send_error(httplib::Response& res, int status, const std::string& message) {
  const char* type = status == 401   ? "authentication_error"
                     : status == 503 ? "unavailable_error"
                     : status >= 500 ? "server_error"
                     : status == 404 ? "not_found_error"
                                     : "invalid_request_error";
  res.status = status;
  res.set_content(dump({{"error", {{"message", message}, {"type", type}, {"code", status}}}}),
                  "application/json");
}

void send_json(httplib::Response& res, const Json& body) {
  res.set_content(dump(body), "application/json");
}

}  // namespace

struct HttpServer::Impl {
  Engine& engine;
  ModelInterface model;
  ServerOptions options;
  httplib::Server http;
  std::atomic<uint64_t> next_id{1};
  const int64_t created = int64_t(std::time(nullptr));

  Impl(Engine& e, ModelInterface m, ServerOptions o)
      : engine(e), model(std::move(m)), options(std::move(o)) {}

  std::shared_ptr<Job> submit(CompletionRequest request) {
    auto job = engine.submit(std::move(request));
    if (!job) {
      const Engine::Load load = engine.load();
      throw RequestError{
          503, fmt::format("the server is busy ({} slots busy, {} requests queued); retry later",
                           load.busy, load.queued)};
    }
    return job;
  }

  static Json usage(const Job::Update& u) {
    return {{"prompt_tokens", u.prompt_tokens},
            {"completion_tokens", u.completion_tokens},
            {"total_tokens", u.prompt_tokens + u.completion_tokens}};
  }

  static void check_finished(const Job::Update& u) {
    if (u.finish == FinishReason::Failed) throw RequestError{500, "generation failed: " + u.error};
    if (u.finish == FinishReason::Cancelled) throw RequestError{503, "the server is shutting down"};
  }

  void completions(const httplib::Request& req, httplib::Response& res, bool chat) {
    ParsedCompletion parsed = parse_completion(req.body, chat, model, engine.context());
    const bool stream = parsed.stream;
    auto job = submit(std::move(parsed.request));

    const std::string id = fmt::format("{}-{}", chat ? "chatcmpl" : "cmpl", next_id++);
    const Json header = {{"id", id},
                         {"object", chat ? (stream ? "chat.completion.chunk" : "chat.completion")
                                         : "text_completion"},
                         {"created", int64_t(std::time(nullptr))},
                         {"model", options.model_name}};
    if (!stream) {
      const Job::Update u = job->wait_all();
      check_finished(u);
      Json out = header;
      Json choice = {{"index", 0}};
      if (chat) {
        choice["message"] = {{"role", "assistant"}, {"content", u.text}};
      } else {
        choice["text"] = u.text;
        choice["logprobs"] = nullptr;
      }
      choice["finish_reason"] = finish_reason_name(u.finish);
      out["choices"] = Json::array({choice});
      out["usage"] = usage(u);
      send_json(res, out);
      return;
    }
    stream_response(res, job, header, chat);
  }

  // Server-sent events: one "data: {chunk}" per piece of text, a last chunk with the finish
  // reason and usage, then "data: [DONE]". A client that goes away cancels its request.
  void stream_response(httplib::Response& res, const std::shared_ptr<Job>& job, const Json& header,
                       bool chat) {
    struct State {
      std::shared_ptr<Job> job;
      Json header;
      bool chat;
      bool started = false;
    };
    auto state = std::make_shared<State>(State{job, header, chat});
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [state](size_t, httplib::DataSink& sink) {
          auto send = [&](const std::string& payload) {
            const std::string event = "data: " + payload + "\n\n";
            if (sink.write(event.data(), event.size())) return true;
            state->job->cancel();
            return false;
          };
          auto chunk = [&](const std::string& text, const char* finish) {
            Json c = state->header;
            Json choice = {{"index", 0}};
            if (state->chat) {
              choice["delta"] = text.empty() ? Json::object() : Json{{"content", text}};
            } else {
              choice["text"] = text;
              choice["logprobs"] = nullptr;
            }
            choice["finish_reason"] = finish ? Json(finish) : Json();
            c["choices"] = Json::array({choice});
            return c;
          };
          if (!state->started) {
            state->started = true;
            if (state->chat) {
              Json first = chunk("", nullptr);
              first["choices"][0]["delta"] = {{"role", "assistant"}, {"content", ""}};
              return send(dump(first));
            }
          }
          const Job::Update u = state->job->wait(std::chrono::milliseconds(100));
          if (!u.text.empty() && !send(dump(chunk(u.text, nullptr)))) return false;
          if (u.finish == FinishReason::None) return true;
          if (u.finish == FinishReason::Failed || u.finish == FinishReason::Cancelled) {
            const std::string message = u.finish == FinishReason::Failed
                                            ? "generation failed: " + u.error
                                            : "the server is shutting down";
            if (!send(dump(
                    {{"error", {{"message", message}, {"type", "server_error"}, {"code", 500}}}})))
              return false;
          } else {
            Json last = chunk("", finish_reason_name(u.finish));
            last["usage"] = usage(u);
            if (!send(dump(last))) return false;
          }
          if (!send("[DONE]")) return false;
          sink.done();
          return true;
        },
        [state](bool success) {
          if (!success) state->job->cancel();
        });
  }

  void tokenize(const httplib::Request& req, httplib::Response& res) {
    const TokenizeRequest request = parse_tokenize(req.body);
    send_json(res, {{"tokens", model.tokenizer->encode(request.content, request.add_special)}});
  }

  void detokenize(const httplib::Request& req, httplib::Response& res) {
    const std::vector<int32_t> ids = parse_detokenize(req.body, model.tokenizer->vocab_size());
    send_json(res, {{"content", model.tokenizer->decode(ids)}});
  }

  // Runs a handler, turning refusals and unexpected failures into JSON errors.
  template <typename Handler>
  httplib::Server::Handler guarded(Handler handler) {
    return [this, handler](const httplib::Request& req, httplib::Response& res) {
      try {
        handler(req, res);
      } catch (const RequestError& e) {
        send_error(res, e.status, e.message);
      } catch (const std::exception& e) {
        send_error(res, 500, std::string("internal error: ") + e.what());
      }
    };
  }

  bool authorized(const httplib::Request& req) const {
    if (options.api_key.empty()) return true;
    const std::string expected = "Bearer " + options.api_key;
    const std::string given = req.get_header_value("Authorization");
    // Compare without an early exit so timing does not reveal how much of the key matched.
    unsigned char difference = given.size() != expected.size();
    for (size_t i = 0; i < std::min(given.size(), expected.size()); ++i)
      difference |= given[i] ^ expected[i];
    return difference == 0;
  }

  void install_routes() {
    const int threads = options.http_threads;
    http.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
    http.set_payload_max_length(options.max_body_bytes);
    http.set_keep_alive_timeout(5);
    http.set_read_timeout(30);
    http.set_write_timeout(30);
    // Browser chat UIs on another origin need CORS; the API key, not the origin, guards access.
    http.set_default_headers({{"Access-Control-Allow-Origin", "*"}});
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (req.method == "OPTIONS" || req.path == "/health" || authorized(req))
        return httplib::Server::HandlerResponse::Unhandled;
      send_error(res, 401,
                 "missing or wrong API key (send the header 'Authorization: Bearer <key>')");
      return httplib::Server::HandlerResponse::Handled;
    });
    http.set_error_handler([](const httplib::Request&, httplib::Response& res) {
      if (!res.body.empty()) return;
      if (res.status == 413)
        send_error(res, 413, "the request body is too large");
      else if (res.status == 404)
        send_error(res, 404, "no such endpoint");
      else
        send_error(res, res.status, fmt::format("the request failed (HTTP {})", res.status));
    });
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res,
                                  std::exception_ptr) { send_error(res, 500, "internal error"); });
    http.Options(".*", [](const httplib::Request&, httplib::Response& res) {
      res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type");
      res.status = 204;
    });
    http.Get("/health", guarded([this](const httplib::Request&, httplib::Response& res) {
               const Engine::Load load = engine.load();
               send_json(res, {{"status", "ok"},
                               {"slots", load.slots},
                               {"slots_busy", load.busy},
                               {"queued", load.queued}});
             }));
    http.Get("/v1/models", guarded([this](const httplib::Request&, httplib::Response& res) {
               send_json(res, {{"object", "list"},
                               {"data", Json::array({{{"id", options.model_name},
                                                      {"object", "model"},
                                                      {"created", created},
                                                      {"owned_by", "subbit"},
                                                      {"context_length", engine.context()}}})}});
             }));
    http.Post("/v1/completions",
              guarded([this](const httplib::Request& req, httplib::Response& res) {
                completions(req, res, false);
              }));
    http.Post("/v1/chat/completions",
              guarded([this](const httplib::Request& req, httplib::Response& res) {
                completions(req, res, true);
              }));
    http.Post("/tokenize", guarded([this](const httplib::Request& req, httplib::Response& res) {
                tokenize(req, res);
              }));
    http.Post("/detokenize", guarded([this](const httplib::Request& req, httplib::Response& res) {
                detokenize(req, res);
              }));
  }
};

HttpServer::HttpServer(Engine& engine, ModelInterface model, ServerOptions options)
    : impl_(std::make_unique<Impl>(engine, std::move(model), std::move(options))) {
  impl_->install_routes();
}

HttpServer::~HttpServer() = default;

int HttpServer::bind() {
  const std::string& host = impl_->options.host;
  const int port = impl_->options.port;
  const int bound = port == 0 ? impl_->http.bind_to_any_port(host)
                              : (impl_->http.bind_to_port(host, port) ? port : -1);
  if (bound <= 0)
    fail("{}:{}: cannot listen there (address in use, or not an address of this machine?)", host,
         port);
  return bound;
}

void HttpServer::serve() { impl_->http.listen_after_bind(); }

void HttpServer::stop() { impl_->http.stop(); }

}  // namespace subbit::server
