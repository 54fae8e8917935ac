"""Same-run peers for multi-adapter decode on the CPU (issue 13 item 6): loraserve (build/bench/
lora_bench) against Hugging Face transformers + PEFT and plain PyTorch eager, on the same shapes and
threads, printing one table of tokens/s and each peer's ratio to loraserve.

Shapes (lora_bench's): the bench preset Llama (hidden 1024, 12 layers, 16 heads, MLP 2816, vocab
32000, ~220M parameters, fp32, random weights), 32 sequences with 128 tokens of context, one new
token per sequence per step, rank-16 adapters on q/k/v/o (lora_alpha 32).
  base          no adapter
  distinct N    N distinct adapters over the 32 rows (row r uses adapter r mod N)
Peers:
  transformers  LlamaForCausalLM in eager PyTorch (sdpa attention), no adapter
  peft-mixed    PEFT with N adapters, one forward with adapter_names=[...] (its mixed batch)
  peft-swap     PEFT set_adapter per adapter: one forward per adapter group (its own KV cache)
  torch-bgmv    plain PyTorch: the same model with every q/k/v/o output plus a batched gather LoRA
                (A[idx] and B[idx] gathered per row, two bmm), the obvious eager multi-adapter path

Run through bench/run_peers.sh (the pinned venv of tests/peft_live; torch 2.11 on the CPU):
    bash bench/run_peers.sh [--threads 2] [--seconds 3]
"""
import argparse
import json
import os
import subprocess
import sys
import time


def timed_steps(step, seconds):
    """Calls step() (one decode step of the whole batch) for about `seconds`; steps per second."""
    step()  # warm-up
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        el = time.perf_counter() - t0
        if el >= seconds and n >= 2:
            return n / el


def loraserve_rates(lora_bench, threads, seconds):
    """tokens/s of lora_bench's Base and Distinct/N rows (one run, JSON output)."""
    env = dict(os.environ, LORASERVE_BENCH_THREADS=str(threads))
    out = subprocess.run([lora_bench, "--benchmark_filter=BM_DecodeBase|BM_DecodeDistinct/|BM_DecodePeftSwap",
                          f"--benchmark_min_time={seconds}", "--benchmark_format=json"],
                         env=env, check=True, capture_output=True, text=True).stdout
    rates = {}
    for b in json.loads(out)["benchmarks"]:
        name = b["name"].split("/min_time")[0]
        rates[name] = b["tokens_per_s"]
    return {"base": rates["BM_DecodeBase"], 1: rates["BM_DecodeDistinct/1"], 8: rates["BM_DecodeDistinct/8"],
            32: rates["BM_DecodeDistinct/32"], "swap32": rates["BM_DecodePeftSwap/32"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lora_bench", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0, help="timed decode per configuration")
    ap.add_argument("--json", help="write the table here as JSON")
    args = ap.parse_args()

    import torch
    import transformers
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.cache_utils import DynamicCache

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch, context, rank, targets = 32, 128, 16, ["q_proj", "k_proj", "v_proj", "o_proj"]

    print(f"peers: loraserve lora_bench ({args.threads} threads) ...", file=sys.stderr)
    ours = loraserve_rates(args.lora_bench, args.threads, args.seconds)

    cfg = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16,
                      num_key_value_heads=16, vocab_size=32000, max_position_embeddings=2048,
                      tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).eval()
    prompt = torch.stack([torch.full((context,), 10 + r, dtype=torch.long) for r in range(batch)])
    step_ids = torch.full((batch, 1), 7, dtype=torch.long)

    def prefill(m, rows, **kw):
        cache = DynamicCache()
        with torch.inference_mode():
            m(input_ids=prompt[rows], past_key_values=cache, use_cache=True, **kw)
        return cache

    def decode(m, cache, rows, **kw):
        def step():
            with torch.inference_mode():
                m(input_ids=step_ids[rows], past_key_values=cache, use_cache=True, logits_to_keep=1, **kw)
            cache.crop(-1)  # drop the new token again (transformers 5: a negative count)
        return step

    peers = {}
    all_rows = list(range(batch))
    print("peers: transformers base ...", file=sys.stderr)
    cache = prefill(model, all_rows)
    peers[("transformers", "base")] = batch * timed_steps(decode(model, cache, all_rows), args.seconds)

    # Plain PyTorch eager: forward hooks add a batched gather LoRA (per-row A and B) to q/k/v/o.
    lora_a = {t: torch.randn(cfg.num_hidden_layers, 32, rank, cfg.hidden_size) * 0.01 for t in targets}
    lora_b = {t: torch.randn(cfg.num_hidden_layers, 32, cfg.hidden_size, rank) * 0.01 for t in targets}
    state = {"idx": None}
    hooks = []
    for li, layer in enumerate(model.model.layers):
        for t in targets:
            mod = getattr(layer.self_attn, t)

            def hook(module, inputs, output, li=li, t=t):
                idx = state["idx"]
                if idx is None:
                    return output
                x = inputs[0]                                    # [B, T, in]
                a = lora_a[t][li][idx]                        # [B, r, in]
                b = lora_b[t][li][idx]                        # [B, out, r]
                return output + torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2)) * 2.0
            hooks.append(mod.register_forward_hook(hook))
    for n in (1, 8, 32):
        print(f"peers: torch-bgmv {n} ...", file=sys.stderr)
        state["idx"] = torch.tensor([r % n for r in all_rows])
        cache = prefill(model, all_rows)
        peers[("torch-bgmv", n)] = batch * timed_steps(decode(model, cache, all_rows), args.seconds)
    state["idx"] = None
    for h in hooks:
        h.remove()

    # PEFT: 32 adapters; its mixed batch (adapter_names) and set_adapter swapping.
    lcfg = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False)
    pm = peft.get_peft_model(model, lcfg, adapter_name="a0")
    for i in range(1, 32):
        pm.add_adapter(f"a{i}", lcfg)
    pm.eval()
    for n in (1, 8, 32):
        print(f"peers: peft-mixed {n} ...", file=sys.stderr)
        names = [f"a{r % n}" for r in all_rows]
        cache = prefill(pm, all_rows, adapter_names=names)
        peers[("peft-mixed", n)] = batch * timed_steps(decode(pm, cache, all_rows, adapter_names=names),
                                                       args.seconds)
    for n in (8, 32):
        print(f"peers: peft-swap {n} ...", file=sys.stderr)
        groups = [[r for r in all_rows if r % n == g] for g in range(n)]
        caches = []
        for g, rows in enumerate(groups):
            pm.set_adapter(f"a{g}")
            caches.append(prefill(pm, rows))
        steps = [decode(pm, c, rows) for c, rows in zip(caches, groups)]

        def swap_step():
            for g, s in enumerate(steps):
                pm.set_adapter(f"a{g}")
                s()
        peers[("peft-swap", n)] = batch * timed_steps(swap_step, args.seconds)

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"
    rows = []
    for (peer, n), rate in peers.items():
        mine = ours["base"] if n == "base" else ours[n]
        rows.append({"peer": peer, "adapters": n, "tokens_per_s": rate, "loraserve_tokens_per_s": mine,
                     "peer_vs_loraserve": rate / mine})
    rows.append({"peer": "loraserve (its PEFT-style swap)", "adapters": 32, "tokens_per_s": ours["swap32"],
                 "loraserve_tokens_per_s": ours[32], "peer_vs_loraserve": ours["swap32"] / ours[32]})
    print(f"\ndecode, batch {batch}, context {context}, rank {rank} q/k/v/o, fp32, {args.threads} threads; {versions}")
    print(f"{'peer':<32} {'adapters':>8} {'tok/s':>9} {'loraserve tok/s':>16} {'peer/loraserve':>15}")
    for r in rows:
        print(f"{r['peer']:<32} {str(r['adapters']):>8} {r['tokens_per_s']:>9.1f} {r['loraserve_tokens_per_s']:>16.1f} "
              f"{r['peer_vs_loraserve']:>15.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"versions": versions, "threads": args.threads, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
