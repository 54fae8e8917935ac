// The post-processor stage: the special ids tokenizer.json's "post_processor" (TemplateProcessing,
// ByteLevel, RobertaProcessing, BertProcessing, Sequence, or none) puts around a single sequence.
// Internal to core/tokenizer.
#ifndef LORASERVE_CORE_TOKENIZER_POST_PROCESSOR_H_
#define LORASERVE_CORE_TOKENIZER_POST_PROCESSOR_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "core/io/json_file.h"
#include "core/tokenizer/tokenizer_json.h"

namespace loraserve::core::tokenizer_internal {

// Post-processor: the special ids put around a single sequence.
struct PostProcessor {
  std::vector<int32_t> prefix, suffix;
};

// Adds the ids of post-processor `j` (nothing for null) to `pp`. InvalidArgument for an unsupported
// type or a template that is not one sequence between special tokens.
absl::Status ParsePostProcessor(const JsonReader& r, const Json& j, PostProcessor* pp);

}  // namespace loraserve::core::tokenizer_internal

#endif  // LORASERVE_CORE_TOKENIZER_POST_PROCESSOR_H_
