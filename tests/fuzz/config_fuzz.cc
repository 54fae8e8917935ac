// libFuzzer target: config.json (ModelConfig) and adapter_config.json (LoraConfig) parsing over
// arbitrary text, and the adapter config's JSON written back, which must parse again.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/io/json_file.h"
#include "core/lora/lora_config.h"
#include "core/model/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace loraserve::core;
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<Json> json = ParseJson(text, "fuzz.json");
  if (!json.ok()) return 0;
  (void)ModelConfig::FromJson(*json, "config.json");
  absl::StatusOr<LoraConfig> lora = LoraConfig::FromJson(*json, "adapter_config.json");
  if (lora.ok()) {
    // What SaveAdapter writes must load again.
    absl::StatusOr<Json> again = ParseJson(lora->ToJson().dump(), "again.json");
    if (!again.ok() || !LoraConfig::FromJson(*again, "again.json").ok()) std::abort();
  }
  return 0;
}
