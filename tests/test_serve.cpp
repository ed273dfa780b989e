// The serving engine against the plain generation loop, and where chat templates come from
// (tokenizer_config.json, model files). The HTTP API itself is tested end to end by
// tests/serve_api_test.py (ctest serve.api).
#include <fstream>

#include "common/error.h"
#include "io/text_file.h"
#include "model/chat_prompt.h"
#include "model/generate.h"
#include "model/loader.h"
#include "model/model_file.h"
#include "server/engine.h"
#include "server/requests.h"
#include "test_support.h"

namespace subbit {
namespace {

namespace fs = std::filesystem;

std::string run_to_end(server::Engine& engine, server::CompletionRequest request,
                       server::FinishReason* reason, int64_t* tokens = nullptr) {
  auto job = engine.submit(std::move(request));
  if (!job) throw std::runtime_error("refused");
  const server::Job::Update u = job->wait_all();
  *reason = u.finish;
  if (tokens) *tokens = u.completion_tokens;
  return u.text;
}

TEST(ServeEngine, GreedyTextMatchesGenerate) {
  SKIP_UNLESS_EXISTS(testing::embedded_sb8m() / "model.safetensors");
  const ModelBundle bundle = load_model(testing::embedded_sb8m());
  const auto prompt = bundle.tokenizer->encode("The history of the United States", true);
  const std::vector<int32_t> reference =
      generate(*bundle.model, prompt, 40, {}, std::nullopt, nullptr);
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), reference.begin(), reference.end());
  const std::string expected =
      bundle.tokenizer->decode(all).substr(bundle.tokenizer->decode(prompt).size());

  server::Engine engine(*bundle.model, *bundle.tokenizer, /*slots=*/3, /*context=*/256,
                        /*max_queue=*/8);
  // Three requests at once share the inference thread; each must equal the sequential result.
  std::vector<std::shared_ptr<server::Job>> jobs;
  for (int i = 0; i < 5; ++i) {
    server::CompletionRequest r;
    r.prompt = prompt;
    r.max_tokens = 40;
    jobs.push_back(engine.submit(r));
    ASSERT_TRUE(jobs.back());
  }
  for (auto& job : jobs) {
    std::string text;
    server::Job::Update u;
    do {
      u = job->wait(std::chrono::milliseconds(50));
      text += u.text;
    } while (u.finish == server::FinishReason::None);
    EXPECT_EQ(u.finish, server::FinishReason::Length);
    EXPECT_EQ(u.completion_tokens, 40);
    EXPECT_EQ(u.prompt_tokens, int64_t(prompt.size()));
    EXPECT_EQ(text, expected);
  }
}

TEST(ServeEngine, StopStringsTokensAndLimits) {
  SKIP_UNLESS_EXISTS(testing::embedded_sb8m() / "model.safetensors");
  const ModelBundle bundle = load_model(testing::embedded_sb8m());
  server::Engine engine(*bundle.model, *bundle.tokenizer, 2, 64, 4);
  server::CompletionRequest base;
  base.prompt = bundle.tokenizer->encode("The history of the United States", true);
  base.max_tokens = 30;
  server::FinishReason reason;
  const std::string full = run_to_end(engine, base, &reason);
  ASSERT_GT(full.size(), 20u);

  // A stop string ends the text before it; one spanning tokens is found too.
  for (const size_t at : {size_t(5), size_t(11)}) {
    server::CompletionRequest r = base;
    r.stop_strings = {"no such text", full.substr(at, 4)};
    const std::string cut = run_to_end(engine, r, &reason);
    EXPECT_EQ(reason, server::FinishReason::Stop);
    EXPECT_EQ(cut, full.substr(0, full.find(full.substr(at, 4))));
  }
  // A stop token ends generation without appearing in the text.
  {
    server::CompletionRequest r = base;
    const auto generated = generate(*bundle.model, base.prompt, 30, {}, std::nullopt, nullptr);
    r.stop_tokens = {generated.at(5)};
    int64_t tokens = 0;
    const std::string cut = run_to_end(engine, r, &reason, &tokens);
    EXPECT_EQ(reason, server::FinishReason::Stop);
    EXPECT_LT(tokens, 30);
    EXPECT_EQ(full.rfind(cut, 0), 0u) << cut;
  }
  // max_tokens beyond the context is clipped to what is left.
  {
    server::CompletionRequest r = base;
    r.max_tokens = 1000;
    int64_t tokens = 0;
    run_to_end(engine, r, &reason, &tokens);
    EXPECT_EQ(reason, server::FinishReason::Length);
    EXPECT_EQ(tokens, 64 - int64_t(base.prompt.size()));
  }
}

TEST(ServeEngine, FullQueueRefusesAndCancelFreesTheSlot) {
  SKIP_UNLESS_EXISTS(testing::embedded_sb8m() / "model.safetensors");
  const ModelBundle bundle = load_model(testing::embedded_sb8m());
  server::Engine engine(*bundle.model, *bundle.tokenizer, 1, 512, 0);
  server::CompletionRequest r;
  r.prompt = bundle.tokenizer->encode("Once upon a time", true);
  r.max_tokens = 400;
  auto first = engine.submit(r);
  ASSERT_TRUE(first);
  EXPECT_FALSE(engine.submit(r));  // one slot, no queue
  first->cancel();
  EXPECT_EQ(first->wait_all().finish, server::FinishReason::Cancelled);
  for (int i = 0; i < 100 && engine.load().busy != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  r.max_tokens = 2;
  auto second = engine.submit(r);
  ASSERT_TRUE(second);
  EXPECT_EQ(second->wait_all().completion_tokens, 2);
  engine.stop();
  EXPECT_FALSE(engine.submit(r));
}

TEST(ServeChat, TemplateFromTokenizerConfig) {
  const fs::path dir = testing::temp_dir("chat_config");
  auto write = [&](const std::string& text) {
    std::ofstream(dir / "tokenizer_config.json") << text;
  };
  EXPECT_EQ(read_hf_chat_template(dir / "tokenizer_config.json"), "");  // absent file
  write(R"({"eos_token": "</s>"})");
  EXPECT_EQ(read_hf_chat_template(dir / "tokenizer_config.json"), "");
  write(R"({"chat_template": "{{ messages[0].content }}"})");
  EXPECT_EQ(read_hf_chat_template(dir / "tokenizer_config.json"), "{{ messages[0].content }}");
  write(
      R"({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})");
  EXPECT_EQ(read_hf_chat_template(dir / "tokenizer_config.json"), "D");
  write(R"({"chat_template": 5})");
  EXPECT_THROW(read_hf_chat_template(dir / "tokenizer_config.json"), Error);
  write(R"({"chat_template": )");
  try {
    read_hf_chat_template(dir / "tokenizer_config.json");
    ADD_FAILURE() << "malformed JSON accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(ServeChat, ModelFileCarriesTheChatTemplate) {
  SKIP_UNLESS_EXISTS(testing::embedded_sb8m() / "model.safetensors");
  const ModelBundle bundle = load_model(testing::embedded_sb8m());
  EXPECT_EQ(bundle.chat_template, "");  // sb-8m is a base model
  EXPECT_FALSE(chat_format_for(bundle).has_template());
  const fs::path dir = testing::temp_dir("chat_file");
  const std::string chat_template =
      "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}";
  for (const std::string& carried : {std::string(), chat_template}) {
    save_model_file(dir / "m.gguf", bundle.model->config(), bundle.tokenizer_json,
                    bundle.model->weights(), {"sb-8m", "none", "{}", carried});
    const ModelBundle loaded = load_model(dir / "m.gguf");
    EXPECT_EQ(loaded.chat_template, carried);
    EXPECT_EQ(chat_format_for(loaded).has_template(), !carried.empty());
  }
  fs::remove_all(dir);
}

TEST(ServeChat, EndOfTurnTokensIncludeEos) {
  SKIP_UNLESS_EXISTS(testing::embedded_sb8m() / "model.safetensors");
  const ModelBundle bundle = load_model(testing::embedded_sb8m());
  const auto ids = end_of_turn_tokens(bundle);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], *bundle.model->config().eos_token_id);
}

TEST(ServeText, CompleteUtf8Prefix) {
  EXPECT_EQ(complete_utf8_prefix("abc"), 3u);
  EXPECT_EQ(complete_utf8_prefix("a\xC3"), 1u);      // first byte of a 2-byte character
  EXPECT_EQ(complete_utf8_prefix("a\xC3\xA9"), 3u);  // é complete
  EXPECT_EQ(complete_utf8_prefix("\xE4\xB8"), 0u);   // 2 of 3 bytes
  EXPECT_EQ(complete_utf8_prefix("\xF0\x9F\x99\x82"), 4u);
  EXPECT_EQ(complete_utf8_prefix(""), 0u);
}

// Request bodies as the server reads them (src/server/requests.h), without sockets.
TEST(ServeRequests, BodiesBecomeEngineRequestsOrFourHundreds) {
  const Tokenizer tokenizer = Tokenizer::from_file(testing::embedded_sb8m() / "tokenizer.json");
  const chat::ChatFormat plain("", "none", "<s>", "</s>");
  const server::ModelInterface model{&tokenizer, &plain, true, {7}, tokenizer.vocab_size()};
  const int64_t context = 64;

  const server::ParsedCompletion ok = server::parse_completion(
      R"({"prompt": [5, 6], "max_tokens": 3, "top_p": 0.5, "stop": ["x"], "stream": true, "seed": 9})",
      false, model, context);
  EXPECT_TRUE(ok.stream);
  EXPECT_EQ(ok.request.prompt, (std::vector<int32_t>{5, 6}));
  EXPECT_EQ(ok.request.max_tokens, 3);
  EXPECT_FLOAT_EQ(ok.request.sampling.top_p, 0.5f);
  EXPECT_EQ(ok.request.sampling.seed, 9u);
  EXPECT_EQ(ok.request.stop_tokens, (std::vector<int32_t>{7}));
  EXPECT_EQ(ok.request.stop_strings, (std::vector<std::string>{"x"}));

  // The plain chat format appends its turn markers to the client's stops.
  const server::ParsedCompletion chat = server::parse_completion(
      R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "stop": "y"})",
      true, model, context);
  EXPECT_EQ(chat.request.prompt, tokenizer.encode("User: Hi\n\nAssistant:", true));
  EXPECT_EQ(chat.request.stop_strings, (std::vector<std::string>{"y", "\nUser:", "\nSystem:"}));
  EXPECT_EQ(chat.request.max_tokens, context - int64_t(chat.request.prompt.size()));

  EXPECT_EQ(server::parse_detokenize(R"({"tokens": [1, 2]})", 100), (std::vector<int32_t>{1, 2}));
  const server::TokenizeRequest tokenize =
      server::parse_tokenize(R"({"content": "a b", "add_special": true})");
  EXPECT_EQ(tokenize.content, "a b");
  EXPECT_TRUE(tokenize.add_special);

  auto refusal = [&](const char* body, bool chat_endpoint) {
    try {
      server::parse_completion(body, chat_endpoint, model, context);
    } catch (const server::RequestError& e) {
      EXPECT_EQ(e.status, 400) << body;
      return e.message;
    }
    ADD_FAILURE() << "accepted: " << body;
    return std::string();
  };
  EXPECT_NE(refusal("{", false).find("not valid JSON"), std::string::npos);
  EXPECT_NE(refusal("[1]", false).find("JSON object"), std::string::npos);
  EXPECT_NE(refusal(R"({"prompt": "a", "bogus": 1})", false).find("unknown field 'bogus'"),
            std::string::npos);
  EXPECT_NE(refusal(R"({"prompt": [1, 100000]})", false).find("token ids"), std::string::npos);
  EXPECT_NE(refusal(R"({"prompt": [18446744073709551615]})", false).find("token ids"),
            std::string::npos);
  EXPECT_NE(refusal(R"({"prompt": "a", "top_p": 2})", false).find("'top_p'"), std::string::npos);
  EXPECT_NE(refusal(R"({"prompt": "a", "n": 2})", false).find("'n'"), std::string::npos);
  EXPECT_NE(refusal(R"({"prompt": []})", false).find("empty"), std::string::npos);
  std::string long_prompt = R"({"prompt": [)";
  for (int i = 0; i < context; ++i) long_prompt += i ? ",1" : "1";
  EXPECT_NE(refusal((long_prompt + "]}").c_str(), false).find("context"), std::string::npos);
  EXPECT_NE(refusal(R"({"messages": []})", true).find("'messages'"), std::string::npos);
  // A content part whose "type" is not a string once escaped as nlohmann's type_error (a 500).
  EXPECT_NE(
      refusal(R"({"messages": [{"role": "user", "content": [{"type": 5, "text": "a"}]}]})", true)
          .find("text content parts"),
      std::string::npos);
  EXPECT_THROW(server::parse_detokenize(R"({"tokens": [-1]})", 100), server::RequestError);
  EXPECT_THROW(server::parse_tokenize(R"({"content": 3})"), server::RequestError);
}

}  // namespace
}  // namespace subbit
