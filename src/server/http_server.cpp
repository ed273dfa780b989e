#include "server/http_server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <optional>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace subbit::server {

namespace {

using Json = nlohmann::ordered_json;

// A request the server refuses: becomes {"error": {...}} with `status`.
struct HttpError {
  int status;
  std::string message;
};

template <typename... Args>
[[noreturn]] void bad_request(fmt::format_string<Args...> format, Args&&... args) {
  throw HttpError{400, fmt::format(format, std::forward<Args>(args)...)};
}

// Generated text may end inside a UTF-8 character at the length limit; replace, never throw.
std::string dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

void send_error(httplib::Response& res, int status, const std::string& message) {
  const char* type = status == 401   ? "authentication_error"
                     : status == 503 ? "unavailable_error"
                     : status >= 500 ? "server_error"
                     : status == 404 ? "not_found_error"
                                     : "invalid_request_error";
  res.status = status;
  res.set_content(dump({{"error", {{"message", message}, {"type", type}, {"code", status}}}}), "application/json");
}

void send_json(httplib::Response& res, const Json& body) { res.set_content(dump(body), "application/json"); }

Json parse_body(const httplib::Request& req) {
  Json body;
  try {
    body = Json::parse(req.body);
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

std::optional<int64_t> integer_field(const Json& body, const char* name, int64_t low, int64_t high) {
  const Json* v = field(body, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number_integer()) bad_request("'{}' must be an integer", name);
  const int64_t x = v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX) ? INT64_MAX : v->get<int64_t>();
  if (x < low || x > high) bad_request("'{}' must be between {} and {}", name, low, high);
  return x;
}

bool bool_field(const Json& body, const char* name, bool fallback) {
  const Json* v = field(body, name);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) bad_request("'{}' must be true or false", name);
  return v->get<bool>();
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

}  // namespace

struct HttpServer::Impl {
  Engine& engine;
  ModelInterface model;
  ServerOptions options;
  httplib::Server http;
  std::atomic<uint64_t> next_id{1};
  const int64_t created = int64_t(std::time(nullptr));

  Impl(Engine& e, ModelInterface m, ServerOptions o) : engine(e), model(std::move(m)), options(std::move(o)) {}

  // Sampling, limits and stops shared by both completion endpoints.
  CompletionRequest common_request(const Json& body, std::vector<int32_t> prompt, int64_t default_max_tokens) {
    if (auto n = integer_field(body, "n", 1, 1); n && *n != 1) bad_request("'n' must be 1");
    if (const Json* logprobs = field(body, "logprobs"); logprobs && *logprobs != false && *logprobs != Json(0))
      bad_request("'logprobs' is not supported");
    if (prompt.empty()) bad_request("the prompt is empty (no tokens)");
    const int64_t context = engine.context();
    if (int64_t(prompt.size()) >= context)
      bad_request("the prompt has {} tokens; the context (--ctx) holds {}, so at most {} can be given",
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

  std::shared_ptr<Job> submit(CompletionRequest request) {
    auto job = engine.submit(std::move(request));
    if (!job) {
      const Engine::Load load = engine.load();
      throw HttpError{503, fmt::format("the server is busy ({} slots busy, {} requests queued); retry later",
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
    if (u.finish == FinishReason::Failed) throw HttpError{500, "generation failed: " + u.error};
    if (u.finish == FinishReason::Cancelled) throw HttpError{503, "the server is shutting down"};
  }

  void completions(const httplib::Request& req, httplib::Response& res, bool chat) {
    const Json body = parse_body(req);
    std::set<std::string> known = kCommonFields;
    if (chat) {
      known.insert({"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools",
                    "tool_choice", "parallel_tool_calls"});
    } else {
      known.insert({"prompt", "echo", "best_of", "suffix"});
    }
    check_fields(body, known);
    const bool stream = bool_field(body, "stream", false);
    std::vector<int32_t> prompt;
    int64_t default_max_tokens;
    std::vector<std::string> extra_stops;
    if (chat) {
      const Json messages = chat_messages(body);
      std::string text;
      try {
        text = model.chat_format->apply(messages, /*add_generation_prompt=*/true);
      } catch (const Error& e) {
        bad_request("cannot apply the chat template: {}", e.what());
      }
      // A template writes the BOS text itself; the plain fallback is encoded as completions are.
      prompt = model.tokenizer->encode(
          text, !model.chat_format->has_template() && model.add_special_tokens_to_completions);
      default_max_tokens = engine.context() - int64_t(prompt.size());
      extra_stops = model.chat_format->stop_strings();
    } else {
      prompt = completion_prompt(body);
      default_max_tokens = 16;  // OpenAI's default for /v1/completions
    }
    CompletionRequest request = common_request(body, std::move(prompt), default_max_tokens);
    request.stop_strings.insert(request.stop_strings.end(), extra_stops.begin(), extra_stops.end());
    auto job = submit(std::move(request));

    const std::string id = fmt::format("{}-{}", chat ? "chatcmpl" : "cmpl", next_id++);
    const Json header = {{"id", id},
                         {"object", chat ? (stream ? "chat.completion.chunk" : "chat.completion") : "text_completion"},
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
  void stream_response(httplib::Response& res, const std::shared_ptr<Job>& job, const Json& header, bool chat) {
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
            const std::string message = u.finish == FinishReason::Failed ? "generation failed: " + u.error
                                                                         : "the server is shutting down";
            if (!send(dump({{"error", {{"message", message}, {"type", "server_error"}, {"code", 500}}}})))
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

  std::vector<int32_t> completion_prompt(const Json& body) {
    const Json* p = field(body, "prompt");
    if (p == nullptr) bad_request("'prompt' is required");
    if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) p = &(*p)[0];
    if (p->is_string()) return model.tokenizer->encode(p->get<std::string>(), model.add_special_tokens_to_completions);
    if (p->is_array()) {
      std::vector<int32_t> ids;
      for (const Json& id : *p) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= model.vocab_size)
          bad_request("'prompt' as a list must hold token ids from 0 to {}", model.vocab_size - 1);
        ids.push_back(id.get<int32_t>());
      }
      return ids;
    }
    bad_request("'prompt' must be a string, a list of one string, or a list of token ids");
  }

  // OpenAI messages with their content flattened to a string (text parts joined).
  static Json chat_messages(const Json& body) {
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
          if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
              !part["text"].is_string())
            bad_request("only text content parts ({{\"type\": \"text\", \"text\": ...}}) are supported");
          text += part["text"].get<std::string>();
        }
        message["content"] = text;
      } else if (!content->is_string()) {
        bad_request("message 'content' must be a string or a list of text parts");
      }
      out.push_back(std::move(message));
    }
    return out;
  }

  void tokenize(const httplib::Request& req, httplib::Response& res) {
    const Json body = parse_body(req);
    check_fields(body, {"content", "add_special"});
    const Json* content = field(body, "content");
    if (content == nullptr || !content->is_string()) bad_request("'content' must be a string");
    const auto ids = model.tokenizer->encode(content->get<std::string>(), bool_field(body, "add_special", false));
    send_json(res, {{"tokens", ids}});
  }

  void detokenize(const httplib::Request& req, httplib::Response& res) {
    const Json body = parse_body(req);
    check_fields(body, {"tokens"});
    const Json* tokens = field(body, "tokens");
    if (tokens == nullptr || !tokens->is_array()) bad_request("'tokens' must be a list of token ids");
    std::vector<int32_t> ids;
    const int64_t known = model.tokenizer->vocab_size();
    for (const Json& id : *tokens) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= known)
        bad_request("'tokens' must hold token ids from 0 to {}", known - 1);
      ids.push_back(id.get<int32_t>());
    }
    send_json(res, {{"content", model.tokenizer->decode(ids)}});
  }

  // Runs a handler, turning refusals and unexpected failures into JSON errors.
  template <typename Handler>
  httplib::Server::Handler guarded(Handler handler) {
    return [this, handler](const httplib::Request& req, httplib::Response& res) {
      try {
        handler(req, res);
      } catch (const HttpError& e) {
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
    for (size_t i = 0; i < std::min(given.size(), expected.size()); ++i) difference |= given[i] ^ expected[i];
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
      send_error(res, 401, "missing or wrong API key (send the header 'Authorization: Bearer <key>')");
      return httplib::Server::HandlerResponse::Handled;
    });
    http.set_error_handler([](const httplib::Request&, httplib::Response& res) {
      if (!res.body.empty()) return;
      if (res.status == 413) send_error(res, 413, "the request body is too large");
      else if (res.status == 404) send_error(res, 404, "no such endpoint");
      else send_error(res, res.status, fmt::format("the request failed (HTTP {})", res.status));
    });
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
      send_error(res, 500, "internal error");
    });
    http.Options(".*", [](const httplib::Request&, httplib::Response& res) {
      res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type");
      res.status = 204;
    });
    http.Get("/health", guarded([this](const httplib::Request&, httplib::Response& res) {
      const Engine::Load load = engine.load();
      send_json(res, {{"status", "ok"}, {"slots", load.slots}, {"slots_busy", load.busy}, {"queued", load.queued}});
    }));
    http.Get("/v1/models", guarded([this](const httplib::Request&, httplib::Response& res) {
      send_json(res, {{"object", "list"},
                      {"data", Json::array({{{"id", options.model_name},
                                             {"object", "model"},
                                             {"created", created},
                                             {"owned_by", "subbit"},
                                             {"context_length", engine.context()}}})}});
    }));
    http.Post("/v1/completions", guarded([this](const httplib::Request& req, httplib::Response& res) {
      completions(req, res, false);
    }));
    http.Post("/v1/chat/completions", guarded([this](const httplib::Request& req, httplib::Response& res) {
      completions(req, res, true);
    }));
    http.Post("/tokenize", guarded([this](const httplib::Request& req, httplib::Response& res) { tokenize(req, res); }));
    http.Post("/detokenize",
              guarded([this](const httplib::Request& req, httplib::Response& res) { detokenize(req, res); }));
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
  const int bound = port == 0 ? impl_->http.bind_to_any_port(host) : (impl_->http.bind_to_port(host, port) ? port : -1);
  if (bound <= 0) fail("{}:{}: cannot listen there (address in use, or not an address of this machine?)", host, port);
  return bound;
}

void HttpServer::serve() { impl_->http.listen_after_bind(); }

void HttpServer::stop() { impl_->http.stop(); }

}  // namespace subbit::server
