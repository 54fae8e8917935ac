// loraserve-mkmodel: writes the built-in default model (random Llama-architecture weights and a
// small BPE tokenizer, deterministic for a seed) to a directory in Hugging Face layout.
// Exit codes: 0 success, 64 usage error, 1 failure.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/numbers.h"
#include "core/lora/demo_adapters.h"
#include "core/model/model_maker.h"

namespace {

constexpr int kUsageError = 64;

void PrintUsage() {
  std::fprintf(stderr,
               "usage: loraserve-mkmodel --out DIR [--preset tiny|bench] [--seed N] [--force]\n"
               "                         [--adapters DIR]\n"
               "       loraserve-mkmodel --model DIR --adapters DIR [--seed N]\n"
               "\n"
               "Writes a random model (config.json, model.safetensors, tokenizer.json) to DIR,\n"
               "and with --adapters a few PEFT-format demo adapters (demo-qv, demo-mlp,\n"
               "demo-dora, demo-head) for that model, one sub-directory each. With --model,\n"
               "writes only the demo adapters, for the existing model in DIR.\n"
               "\n"
               "flags:\n"
               "  --out DIR        output directory (created if missing)\n"
               "  --preset NAME    tiny (default; ~0.1M parameters) or bench (~220M parameters)\n"
               "  --seed N         weight seed (default 0); the same seed gives the same bytes\n"
               "  --force          write into DIR even if it is not empty\n"
               "  --adapters DIR   also write the demo adapters under DIR\n"
               "  --model DIR      an existing Hugging Face model to write adapters for (no --out)\n");
}

}  // namespace

int main(int argc, char** argv) {
  loraserve::core::ModelMakerOptions options;
  std::string out, adapters, model;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    // Accepts both "--flag value" and "--flag=value".
    auto value = [&](const char* name, std::string* v) {
      const std::string eq = std::string(name) + "=";
      if (a == name && i + 1 < argc) {
        *v = argv[++i];
        return true;
      }
      if (a.rfind(eq, 0) == 0) {
        *v = a.substr(eq.size());
        return true;
      }
      return false;
    };
    std::string v;
    if (a == "--help" || a == "-h") {
      PrintUsage();
      return 0;
    } else if (a == "--force") {
      options.overwrite = true;
    } else if (value("--model", &v)) {
      model = v;
    } else if (value("--adapters", &v)) {
      adapters = v;
    } else if (value("--out", &v)) {
      out = v;
    } else if (value("--preset", &v)) {
      auto preset = loraserve::core::ParseModelPreset(v);
      if (!preset.ok()) {
        std::fprintf(stderr, "loraserve-mkmodel: %s\n", preset.status().ToString().c_str());
        return kUsageError;
      }
      options.preset = *preset;
    } else if (value("--seed", &v)) {
      if (!absl::SimpleAtoi(v, &options.seed)) {
        std::fprintf(stderr, "loraserve-mkmodel: --seed wants a non-negative integer, got %s\n",
                     v.c_str());
        return kUsageError;
      }
    } else {
      std::fprintf(stderr, "loraserve-mkmodel: unexpected argument %s\n", a.c_str());
      PrintUsage();
      return kUsageError;
    }
  }
  if (!model.empty()) {
    if (!out.empty() || adapters.empty()) {
      std::fprintf(stderr, "loraserve-mkmodel: --model needs --adapters and no --out\n");
      return kUsageError;
    }
    absl::Status status = loraserve::core::WriteDemoAdapters(model, adapters, options.seed);
    if (!status.ok()) {
      std::fprintf(stderr, "loraserve-mkmodel: adapters: %s\n", status.ToString().c_str());
      return 1;
    }
    std::printf("wrote demo adapters for %s to %s\n", model.c_str(), adapters.c_str());
    return 0;
  }
  if (out.empty()) {
    PrintUsage();
    return kUsageError;
  }
  absl::Status status = loraserve::core::WriteDemoModel(out, options);
  if (!status.ok()) {
    std::fprintf(stderr, "loraserve-mkmodel: %s%s\n", status.ToString().c_str(),
                 status.code() == absl::StatusCode::kFailedPrecondition ? " (use --force)" : "");
    return 1;
  }
  std::printf("wrote the %s model (seed %llu) to %s\n",
              loraserve::core::ModelPresetName(options.preset),
              static_cast<unsigned long long>(options.seed), out.c_str());
  if (!adapters.empty()) {
    status = loraserve::core::WriteDemoAdapters(out, adapters, options.seed);
    if (!status.ok()) {
      std::fprintf(stderr, "loraserve-mkmodel: adapters: %s\n", status.ToString().c_str());
      return 1;
    }
    std::printf("wrote demo adapters to %s\n", adapters.c_str());
  }
  return 0;
}
