// Fused single-token (decode) attention on the CPU: for every decoding sequence of a packed batch,
// append its new key/value row to its KV cache and attend over the cached keys, all sequences and
// kv heads in one parallel loop. Replaces ~12 small LibTorch ops per sequence and layer (the
// dispatch overhead bounded decode throughput at large batch sizes). Internal to core/.
#ifndef LORASERVE_CORE_MODEL_DECODE_ATTENTION_H_
#define LORASERVE_CORE_MODEL_DECODE_ATTENTION_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace loraserve::core {

// One decoding sequence in one layer.
struct DecodeAttentionSeq {
  at::Tensor k_cache;  // [kv_heads, capacity, head_dim], contiguous, capacity > past
  at::Tensor v_cache;
  int64_t row = 0;    // the sequence's row in q/k/v/out
  int64_t past = 0;   // tokens cached before this one (the new row goes to position `past`)
  int64_t first = 0;  // first key position visible (sliding window), <= past
};

// True when FusedDecodeAttention handles tensors like `q` (CPU, float32 or bfloat16).
bool FusedDecodeAttentionSupported(const at::Tensor& q);

// q [T, heads, head_dim], k and v [T, kv_heads, head_dim] (rotary embedding applied), out
// [T, heads * head_dim]; all contiguous, of one dtype. For each entry of `seqs`: writes k/v of its
// row into its caches at `past`, then out[row] = softmax(q[row]·Kᵀ·scale) · V over key positions
// first..past (query heads grouped over kv heads as in GQA). Accumulates in float32.
void FusedDecodeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::vector<DecodeAttentionSeq>& seqs, double scale,
                          at::Tensor& out);

}  // namespace loraserve::core

#endif  // LORASERVE_CORE_MODEL_DECODE_ATTENTION_H_
