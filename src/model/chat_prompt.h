#pragma once
// A loaded model's chat conventions: its chat template (or the plain fallback) with its BOS/EOS
// text, and the tokens that end an assistant turn.
#include <cstdint>
#include <vector>

#include "chat/chat_format.h"
#include "model/loader.h"

namespace subbit {

chat::ChatFormat chat_format_for(const ModelBundle& bundle);

// The end-of-sequence token and the end-of-turn markers of the common chat formats that the
// vocabulary has (<|im_end|>, <|eot_id|>, <|eom_id|>, <|end|>, <end_of_turn>, </s>).
std::vector<int32_t> end_of_turn_tokens(const ModelBundle& bundle);

}  // namespace subbit
