// The post-processor stage: parse (see post_processor.h).
#include "core/tokenizer/post_processor.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "core/base/status_macros.h"

namespace loraserve::core::tokenizer_internal {
namespace {

// One post-processor that is not a Sequence.
absl::Status ParsePostProcessorStep(const JsonReader& r, const Json& j, const std::string& type,
                                    const std::string& where, PostProcessor* pp) {
  if (type == "ByteLevel") return absl::OkStatus();  // Only changes offsets.
  std::vector<int32_t> prefix, suffix;
  if (type == "TemplateProcessing") {
    const Json* single = JsonReader::Find(j, "single");
    if (single == nullptr || !single->is_array()) return r.Error(where, "missing \"single\"");
    const Json* specials = JsonReader::Find(j, "special_tokens");
    bool seen_sequence = false;
    for (const Json& item : *single) {
      if (JsonReader::Find(item, "Sequence") != nullptr) {
        if (seen_sequence) return r.Error(where, "\"single\" has more than one sequence");
        seen_sequence = true;
        continue;
      }
      const Json* st = JsonReader::Find(item, "SpecialToken");
      if (st == nullptr) return r.Error(where, "template items must be SpecialToken or Sequence");
      LORASERVE_ASSIGN_OR_RETURN(const std::string name, r.String(*st, "id", where, {}));
      const Json* entry = specials == nullptr ? nullptr : JsonReader::Find(*specials, name.c_str());
      const Json* ids = entry == nullptr ? nullptr : JsonReader::Find(*entry, "ids");
      if (ids == nullptr || !ids->is_array()) {
        return r.Error(where, absl::StrCat("special token \"", name, "\" has no ids"));
      }
      for (const Json& id : *ids) {
        if (!id.is_number_integer()) return r.Error(where, "special token ids must be integers");
        (seen_sequence ? suffix : prefix).push_back(static_cast<int32_t>(id.get<int64_t>()));
      }
    }
    if (!seen_sequence) return r.Error(where, "\"single\" has no $A sequence");
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    for (const char* key : {"cls", "sep"}) {
      const Json* f = JsonReader::Find(j, key);
      if (f == nullptr || !f->is_array() || f->size() != 2 || !(*f)[1].is_number_integer()) {
        return r.Error(where, absl::StrCat("\"", key, "\" must be [token, id]"));
      }
      (std::string(key) == "cls" ? prefix : suffix)
          .push_back(static_cast<int32_t>((*f)[1].get<int64_t>()));
    }
  } else {
    return r.Error("post_processor",
                   absl::StrCat("unsupported post_processor type \"", type,
                                "\" (supported: TemplateProcessing, ByteLevel, RobertaProcessing, "
                                "BertProcessing, Sequence)"));
  }
  // Processors in a Sequence wrap the result of the previous ones.
  pp->prefix.insert(pp->prefix.begin(), prefix.begin(), prefix.end());
  pp->suffix.insert(pp->suffix.end(), suffix.begin(), suffix.end());
  return absl::OkStatus();
}

}  // namespace

absl::Status ParsePostProcessor(const JsonReader& r, const Json& j, PostProcessor* pp) {
  return ParseStageOrSequence(r, j, "post_processor", "processors", /*null_ok=*/true,
                              ParsePostProcessorStep, pp);
}

}  // namespace loraserve::core::tokenizer_internal
