#include "model/chat_prompt.h"

#include <algorithm>

namespace subbit {

chat::ChatFormat chat_format_for(const ModelBundle& bundle) {
  const LlamaConfig& c = bundle.model->config();
  const Tokenizer& tok = *bundle.tokenizer;
  const std::string bos = c.bos_token_id ? tok.id_to_token(*c.bos_token_id) : "";
  const std::string eos = c.eos_token_id ? tok.id_to_token(*c.eos_token_id) : "";
  return chat::ChatFormat(bundle.chat_template, bundle.path.string() + " (chat template)", bos,
                          eos);
}

std::vector<int32_t> end_of_turn_tokens(const ModelBundle& bundle) {
  std::vector<int32_t> ids;
  if (auto eos = bundle.model->config().eos_token_id) ids.push_back(*eos);
  for (const char* marker :
       {"<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "</s>"})
    if (auto id = bundle.tokenizer->token_to_id(marker);
        id && std::find(ids.begin(), ids.end(), *id) == ids.end())
      ids.push_back(*id);
  return ids;
}

}  // namespace subbit
