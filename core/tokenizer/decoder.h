// The decoder stage: parsing tokenizer.json's "decoder" (Sequence, Replace, ByteFallback, Fuse,
// Strip, ByteLevel, Metaspace, or none) into a chain of steps, and running the chain over all
// tokens at once (Tokenizer::Decode) or over successive batches (StreamingDecoder). Internal to
// core/tokenizer.
#ifndef LORASERVE_CORE_TOKENIZER_DECODER_H_
#define LORASERVE_CORE_TOKENIZER_DECODER_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/io/json_file.h"
#include "core/tokenizer/tokenizer_json.h"

namespace loraserve::core::tokenizer_internal {

// Decoder chain. Each step maps a list of token strings to a new list, as HF's decode_chain does.
// To support streaming, every step can also run on successive batches of tokens: it keeps in its
// state whatever a later token could still change and emits it once decided (or when `final`).
// For a step after Fuse/ByteLevel ("fused" input) the pieces it receives are consecutive parts of
// one logical token.

struct DecodeStep {
  enum class Kind {
    kReplace,
    kByteFallback,
    kFuse,
    kStrip,
    kByteLevel,
    kMetaspace,
    kJoinWithSpace,  // No decoder at all: HF joins the tokens with " ".
  };
  Kind kind;
  bool fused_input = false;
  std::string pattern, content;  // Replace; Strip / Metaspace use `content` as their character.
  size_t start = 0, stop = 0;    // Strip.
  bool metaspace_strip_first = true;
};

struct DecodeStepState {
  std::string carry;          // Undecided bytes / text (see each step).
  size_t tokens_seen = 0;     // Metaspace, JoinWithSpace.
  size_t left_remaining = 0;  // Strip on fused input: leading chars it may still strip.
};

// One state per step of `chain`, for a new sequence.
std::vector<DecodeStepState> InitialDecodeStates(const std::vector<DecodeStep>& chain);

// Runs `tokens` through every step of `chain`, appending what is decided to `out`. `final`: no
// more tokens follow, so nothing is held back.
void RunDecodeChain(const std::vector<DecodeStep>& chain, std::vector<DecodeStepState>& states,
                    std::vector<std::string> tokens, bool final, std::string* out);

// Appends the steps of decoder `j` (a Sequence flattened) to `chain`; `*fused` tells whether a step
// so far fuses the tokens (Fuse, ByteLevel), and is updated. InvalidArgument for an unsupported
// type, a bad field or an unsupported order.
absl::Status ParseDecoder(const JsonReader& r, const Json& j, std::vector<DecodeStep>* chain,
                          bool* fused);

}  // namespace loraserve::core::tokenizer_internal

#endif  // LORASERVE_CORE_TOKENIZER_DECODER_H_
