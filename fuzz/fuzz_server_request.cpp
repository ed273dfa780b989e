// The server's request bodies (src/server/requests.h): the first byte picks the endpoint
// (/v1/completions, /v1/chat/completions, /tokenize, /detokenize), the rest is the body. The model
// behind it is sb-8m's tokenizer with the Llama-3.1 chat template, the largest of
// tests/data/chat_templates. A bad request must be refused with RequestError (the client's 4xx);
// any other exception would reach the client as a 500, so it is a finding, as is an accepted
// request that breaks what the engine relies on.
#include <fstream>
#include <memory>
#include <sstream>

#include "chat/chat_format.h"
#include "fuzz_support.h"
#include "server/requests.h"
#include "tokenizer/tokenizer.h"

using namespace subbit;

namespace {

constexpr int64_t kContext = 256;

struct ServedModel {
  Tokenizer tokenizer;
  chat::ChatFormat chat_format;
  server::ModelInterface interface;

  explicit ServedModel(const std::filesystem::path& source_dir)
      : tokenizer(Tokenizer::from_file(source_dir / "models" / "sb-8m" / "tokenizer.json")),
        chat_format(read_text(source_dir / "tests" / "data" / "chat_templates" / "llama3.1.jinja"),
                    "llama3.1.jinja", "<|begin_of_text|>", "<|eot_id|>"),
        interface {
    &tokenizer, &chat_format, true, {0}, tokenizer.vocab_size()
  } {
  }

  static std::string read_text(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    if (!in) throw Error("fuzz: cannot read " + path.string());
    return text.str();
  }
};

void check_accepted(const server::CompletionRequest& r, const server::ModelInterface& model) {
  fuzz::check(!r.prompt.empty() && int64_t(r.prompt.size()) < kContext,
              "the prompt fits the context");
  for (int32_t id : r.prompt)
    fuzz::check(id >= 0 && id < model.vocab_size, "prompt ids are in the vocabulary");
  fuzz::check(r.max_tokens >= 1, "at least one token is asked for");
  fuzz::check(r.sampling.temperature >= 0 && r.sampling.top_p >= 0 && r.sampling.top_p <= 1 &&
                  r.sampling.top_k >= 0,
              "sampling parameters are in range");
  for (const std::string& stop : r.stop_strings)
    fuzz::check(!stop.empty(), "stop strings are not empty");
}

}  // namespace

int subbit::fuzz::run_server_request(const std::filesystem::path& source_dir, const uint8_t* data,
                                     size_t size) {
  static const ServedModel served(source_dir);
  const server::ModelInterface& model = served.interface;
  if (size == 0) return 0;
  const std::string_view body = fuzz::as_text(data + 1, size - 1);
  try {
    switch (data[0] % 4) {
      case 0:
      case 1:
        check_accepted(server::parse_completion(body, data[0] % 4 == 1, model, kContext).request,
                       model);
        break;
      case 2: {
        const server::TokenizeRequest request = server::parse_tokenize(body);
        served.tokenizer.encode(request.content, request.add_special);
        break;
      }
      case 3:
        served.tokenizer.decode(server::parse_detokenize(body, served.tokenizer.vocab_size()));
        break;
    }
  } catch (const server::RequestError& e) {
    fuzz::check(e.status >= 400 && e.status < 500 && !e.message.empty(),
                "a refusal is a 4xx with a message");
  }
  return 0;
}

#ifdef SUBBIT_FUZZ_MAIN
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return subbit::fuzz::run_server_request(SUBBIT_SOURCE_DIR, data, size);
}
#endif
