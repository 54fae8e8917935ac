// A from-scratch forward of one short float32 sequence on the CPU in plain loops (issue 13
// item 8): Model::Score's path for small requests without adapter hooks. The LibTorch forward
// issues ~50 operators per layer; on a small model and a few tokens their dispatch, not the
// arithmetic, is what a request waits for (stories260K, 3 tokens: ~480 us through LibTorch).
// The numbers equal the LibTorch forward's up to float rounding (other summation orders).
// Internal to core/; no LibTorch types, so it compiles without the LibTorch headers.
#ifndef LORASERVE_CORE_MODEL_SMALL_FORWARD_H_
#define LORASERVE_CORE_MODEL_SMALL_FORWARD_H_

#include <cstdint>
#include <vector>

namespace loraserve::core {

// y = x·Wᵀ (+ b): W [out, in] row-major, b [out] or null.
struct SmallLinear {
  const float* weight = nullptr;
  const float* bias = nullptr;
  int64_t in = 0;
  int64_t out = 0;
};

struct SmallLayer {
  const float* input_norm = nullptr;  // [hidden]
  const float* post_norm = nullptr;   // [hidden]
  SmallLinear q, k, v, o, gate, up, down;
};

// Pointers into a Model's float32 CPU tensors (contiguous), valid for one call.
struct SmallModelView {
  int64_t hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, vocab = 0;
  int64_t sliding_window = 0;  // 0 = full attention
  float rms_norm_eps = 0;
  const float* embedding = nullptr;   // [vocab, hidden]
  const float* final_norm = nullptr;  // [hidden]
  const float* rope_cos = nullptr;    // [max_positions, head_dim]
  const float* rope_sin = nullptr;
  std::vector<SmallLayer> layers;
  SmallLinear head;
};

// Logits [ids.size(), vocab] of `ids` (valid token ids, positions 0..n-1, n within the rotary
// tables) into `logits`.
void SmallScore(const SmallModelView& model, const int32_t* ids, int64_t n, float* logits);

// y[t] = x[t]·Wᵀ + b for t < rows (exposed for its test).
void SmallLinearRows(const SmallLinear& m, const float* x, int64_t rows, float* y);

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_MODEL_SMALL_FORWARD_H_
