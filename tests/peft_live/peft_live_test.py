"""Live differential test: real Hugging Face PEFT (PyPI, pinned) against the real loraserve.

Seeded random LoraConfigs (rank, alpha, rsLoRA, DoRA, bias modes, lora_bias, target sets including
embed_tokens and lm_head, modules_to_save, layers_to_transform, rank/alpha patterns, non-zero init)
are applied with real PEFT to a small random Llama (untied head, attention biases), saved with
save_pretrained, uploaded to loraserve through the Python client and compared logit by logit:
unmerged, merged (loraserve's merge must keep the unmerged answer, and the base's), after unmerge
(the base bit for bit), in concurrent mixed batches (one adapter merged meanwhile), and every
add_weighted_adapter combination type. The reference is always PEFT's forward of the adapter
reloaded from the saved files (what a user of that directory gets); PEFT's in-memory forward is
checked against it and any difference is printed as a PEFT note, not a failure.

With --shared, the same PEFT release also recomputes the ../shared/fixtures/peft logits (made by an
older PEFT) and prints each difference: the semantic-drift report between the two releases.

Every mismatch is printed with its config and seed; regressions.json keeps the configs of failures
found (run first, every time). Exit status 0 only when everything matched.
"""
import argparse
import copy
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import urllib.request
from concurrent import futures

import numpy as np
import torch
import transformers
import peft
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

import loraserve

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "..", "testing"))
from loraserve_process import LoraserveProcess  # noqa: E402

ATOL, RTOL = 1e-4, 1e-4          # PEFT's own test tolerances (spec/lora-semantics.md section 6)
# A strong adapter makes a prompt ill-conditioned (r=1 with lora_alpha=32, or q/k LoRAs that sharpen
# attention, put fp32 PEFT itself up to ~5e-5 from exact), and two fp32 implementations with
# different summation orders then land at different distances: loraserve was measured up to 12x
# PEFT's own fp32 error there (and within 1x elsewhere). Real bugs found by this test were 1e-2 to 10.
ROUNDING_FACTOR = 16
LAYERS = 3
COMBINATION_TYPES = ["svd", "linear", "cat", "ties", "ties_svd", "dare_linear", "dare_ties",
                     "dare_linear_svd", "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd"]
TARGET_SETS = [["q_proj", "v_proj"], ["k_proj", "o_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"],
               ["gate_proj", "up_proj", "down_proj"], ["up_proj"], "all-linear",
               r".*\.layers\.[01]\.self_attn\.(q|v)_proj", r".*\.mlp\.(gate|down)_proj"]
PATTERN_KEYS = ["v_proj", "model.layers.1.self_attn.q_proj", "down_proj", "layers.2.mlp.up_proj", "o_proj"]


class Failure(Exception):
    pass


def worst_excess(got, expected):
    """max(|got - expected| - RTOL*|expected|): <= ATOL means torch.allclose(atol, rtol) holds."""
    got = np.asarray(got, dtype=np.float64).reshape(expected.shape)
    if not np.all(np.isfinite(got)):
        return math.inf
    return float(np.max(np.abs(got - expected) - RTOL * np.abs(expected)))


# ---- the base model ------------------------------------------------------------------------------

def make_base(model_dir, seed):
    """A small random Llama in Hugging Face layout (stories260K's tokenizer, vocab 512)."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
        attention_bias=True, mlp_bias=False, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        initializer_range=0.1)
    cfg._attn_implementation = "eager"
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    model.save_pretrained(model_dir, safe_serialization=True)
    shutil.copy(os.path.join(REPO, "models", "stories260K", "tokenizer.json"), model_dir)
    return model


def forward(model, prompts):
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].double().numpy() for ids in prompts]


def loosen(refs, extra):
    """The references with each bound raised by `extra` (a merged adapter's rounding)."""
    return [(r, t + extra) for r, t in refs]


def exact_reference(model, prompts):
    """(logits in float64, tolerance) per prompt: PEFT's forward run in float64 is the reference, and
    the bound is PEFT's tolerance plus ROUNDING_FACTOR x PEFT's own fp32 error on this prompt."""
    f32 = forward(model, prompts)
    f64 = forward(copy.deepcopy(model).double(), prompts)
    return [(r, ATOL + ROUNDING_FACTOR * float(np.max(np.abs(a - r)))) for a, r in zip(f32, f64)]


# ---- random configs ------------------------------------------------------------------------------

def draw_single(rng):
    """A random LoraConfig's kwargs (JSON-able), every feature loraserve claims to reproduce."""
    targets = copy.copy(rng.choice(TARGET_SETS))
    kw = {"r": rng.choice([1, 2, 4, 8, 16]), "lora_alpha": rng.choice([1, 2, 8, 16, 32]),
          "use_rslora": rng.random() < 0.3, "use_dora": rng.random() < 0.25,
          "bias": rng.choice(["none", "none", "all", "lora_only"]),
          "init_lora_weights": rng.choice([True, "gaussian", False])}
    if isinstance(targets, list):
        if rng.random() < 0.3:
            targets.append("embed_tokens")
        if rng.random() < 0.25:
            targets.append("lm_head")
        if rng.random() < 0.25:
            kw["layers_to_transform"] = sorted(rng.sample(range(LAYERS), rng.randint(1, LAYERS - 1)))
            kw["layers_pattern"] = "layers"
    kw["target_modules"] = targets
    if "lm_head" not in targets and rng.random() < 0.2:
        kw["modules_to_save"] = ["lm_head"]
    # PEFT refuses lora_bias with DoRA, on embeddings and with init_lora_weights="gaussian".
    if (not kw["use_dora"] and "embed_tokens" not in targets and kw["init_lora_weights"] != "gaussian"
            and rng.random() < 0.2):
        kw["lora_bias"] = True
    if rng.random() < 0.3:
        kw["rank_pattern"] = {k: rng.choice([1, 3, 6, 12]) for k in rng.sample(PATTERN_KEYS, rng.randint(1, 2))}
    if rng.random() < 0.3:
        kw["alpha_pattern"] = {k: rng.choice([3, 24, 64]) for k in rng.sample(PATTERN_KEYS, rng.randint(1, 2))}
    return kw


def draw_source(rng, r):
    """A plain LoRA that PEFT's add_weighted_adapter accepts (no DoRA, biases or saved modules)."""
    targets = copy.copy(rng.choice(TARGET_SETS[:5]))
    if rng.random() < 0.2:
        targets.append("embed_tokens")
    return {"r": r, "lora_alpha": rng.choice([2, 8, 16]), "use_rslora": rng.random() < 0.3,
            "target_modules": targets, "init_lora_weights": False}


def perturb(model, kw, gen):
    """Trained-looking weights: every LoRA factor, DoRA magnitude, saved module and saved bias moves."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.1 * noise)
            elif "lora_" in name:
                p.add_(0.15 * noise)
            elif "modules_to_save" in name:
                p.add_(0.05 * noise)
            elif name.endswith(".bias") and (kw.get("bias") == "all" or
                                             (kw.get("bias") == "lora_only" and "base_layer" in name)):
                p.add_(0.1 * noise)


# ---- the comparison ------------------------------------------------------------------------------

class Run:
    def __init__(self, client, base, prompts, workdir):
        self.client, self.base, self.prompts, self.workdir = client, base, prompts, workdir
        self.base_ref = exact_reference(base, prompts)
        self.base_served = None
        self.refs = {}            # adapter name -> PEFT reference logits per prompt
        self.failures, self.notes, self.checks = [], [], 0
        self.merged_tol = {}      # adapter name -> bound for answers while it is merged
        self.failed = set()       # adapters that mismatched alone (not reported again in mixed batches)
        self.worst = {}           # check kind -> worst excess seen

    def score(self, adapter, ids):
        r = self.client.score(ids, adapter=adapter, full_logits=True)
        return np.array(r.logits, dtype=np.float32).reshape(r.num_tokens, r.vocab_size)

    def check(self, kind, got, ref):
        """None when `got` is within the reference's bound, else what is wrong."""
        expected, tol = ref
        e = worst_excess(got, expected)
        if os.environ.get("PEFT_LIVE_DEBUG"):
            print(f"    {kind}: excess {e:.3g} tol {tol:.3g} max|ref| {float(np.max(np.abs(expected))):.3g}")
        self.worst[kind] = max(self.worst.get(kind, -1.0), e)
        return None if e <= tol else f"max(|diff| - rtol*|ref|) = {e:.3g} > {tol:.3g}"

    def compare(self, kind, label, adapter, refs, exact=False):
        bad = []
        for i, ids in enumerate(self.prompts):
            got = self.score(adapter, ids)
            self.checks += 1
            if exact:
                if not np.array_equal(got, refs[i]):
                    bad.append(f"{kind} p{i}: not bit-identical (max |diff| "
                               f"{float(np.max(np.abs(got - refs[i]))):.3g})")
                continue
            why = self.check(kind, got, refs[i])
            if why:
                bad.append(f"{kind} p{i}: {why}")
        if bad:
            self.failed.add(adapter)
            self.failures.append(f"{label}: " + "; ".join(bad))
        return not bad

    def save_with_peft(self, kw, gen, name):
        torch.manual_seed(gen.initial_seed() + len(name))  # PEFT's own init draws from the global RNG
        model = get_peft_model(copy.deepcopy(self.base), LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **kw))
        perturb(model, kw, gen)
        in_memory = forward(model.eval(), self.prompts)
        out = os.path.join(self.workdir, name)
        model.save_pretrained(out)
        return out, in_memory

    def reference(self, adapter_dir):
        """The reference per prompt, and the extra bound while the adapter is merged: merging rounds
        differently, so ROUNDING_FACTOR x the larger of PEFT's own fp32 errors unmerged and merged
        (PEFT cannot merge lora_bias on a layer without a bias: then the unmerged one)."""
        reloaded = PeftModel.from_pretrained(copy.deepcopy(self.base), adapter_dir).eval()
        ref = exact_reference(reloaded, self.prompts)
        merged_tol = max(t for _, t in ref) - ATOL
        try:
            reloaded.merge_adapter()
            merged = forward(reloaded, self.prompts)
            merged_tol = max(merged_tol, ROUNDING_FACTOR * max(float(np.max(np.abs(m - r)))
                                                               for m, (r, _) in zip(merged, ref)))
        except Exception:  # noqa: BLE001 - PEFT refuses some merges loraserve makes
            pass
        return ref, merged_tol

    def single(self, label, name, kw, seed):
        gen = torch.Generator().manual_seed(seed)
        try:
            adapter_dir, in_memory = self.save_with_peft(kw, gen, name)
        except Exception as e:  # PEFT refuses this combination of options: not loraserve's business
            self.notes.append(f"{label}: PEFT refused the config ({type(e).__name__}: {e})")
            return False
        ref, merged_tol = self.reference(adapter_dir)
        self.merged_tol[name] = merged_tol
        drift = max(worst_excess(a, b[0]) - b[1] + ATOL for a, b in zip(in_memory, ref))
        if drift > ATOL:
            self.notes.append(f"{label}: PEFT's in-memory forward differs from the saved-and-reloaded "
                              f"adapter ({drift:.3g}); the reloaded one is the reference")
        try:
            self.client.upload_adapter(name, adapter_dir)
        except loraserve.Error as e:
            self.failures.append(f"{label}: loraserve refused the adapter: {e.code.name}: {e.message}")
            return False
        self.refs[name] = ref
        ok = self.compare("unmerged", label, name, ref)
        try:
            self.client.merge_adapter(name)
        except loraserve.Error as e:
            self.failures.append(f"{label}: merge refused: {e.code.name}: {e.message}")
            return False
        ok &= self.compare("merged", label, name, loosen(ref, merged_tol))
        ok &= self.compare("base while merged", label, "", loosen(self.base_ref, merged_tol))
        self.client.unmerge_adapter(name)
        ok &= self.compare("after unmerge", label, name, ref)
        ok &= self.compare("base after unmerge (bit-exact)", label, "", self.base_served, exact=True)
        return ok

    def combination(self, label, ctype, rng, seed):
        gen = torch.Generator().manual_seed(seed)
        same_rank = ctype not in ("cat",) and not ctype.endswith("svd")
        r1 = rng.choice([2, 4, 8])
        r2 = r1 if same_rank else rng.choice([2, 4, 8])
        kws = [draw_source(rng, r1), draw_source(rng, r2)]
        names = [f"{label}-src{i}" for i in range(2)]
        dirs = [self.save_with_peft(kw, gen, n)[0] for kw, n in zip(kws, names)]
        weights = [round(rng.uniform(-1.0, 1.5), 3), round(rng.uniform(0.2, 1.2), 3)]
        density = 1.0 if ctype.startswith("dare") else round(rng.uniform(0.2, 0.9), 2)
        args = {"density": density} if ctype not in ("svd", "linear", "cat") else {}
        spec = {"kind": "combination", "type": ctype, "sources": kws, "weights": weights, **args}
        model = PeftModel.from_pretrained(copy.deepcopy(self.base), dirs[0], adapter_name=names[0])
        model.load_adapter(dirs[1], adapter_name=names[1])
        model64 = copy.deepcopy(model).double()
        for m in (model, model64):
            self.combine_with_peft(m, names, weights, ctype, args)
        # The combination's own fp32 rounding (an SVD, sums of factors) bounds loraserve's too.
        exact = forward(model64.eval(), self.prompts)
        ref = [(r, t + ROUNDING_FACTOR * float(np.max(np.abs(r - x)))) for (r, t), x in
               zip(exact_reference(model.eval(), self.prompts), exact)]
        for n, d in zip(names, dirs):
            self.client.upload_adapter(n, d)
        name = f"{label}-combined"
        try:
            self.client.combine_adapters(name, list(zip(names, weights)), combination_type=ctype, **args)
        except loraserve.Error as e:
            self.failures.append(f"{label} {json.dumps(spec)}: CombineAdapters refused: {e.code.name}: {e.message}")
            return spec, False
        self.refs[name] = ref
        return spec, self.compare(f"combined {ctype}", f"{label} {json.dumps(spec)}", name, ref)

    def mixed_generation(self, rng, metrics_addr, groups=4):
        """Engine-batched prefill over many adapters: concurrent one-token greedy Generates (Score runs
        each request alone), each checked against the reference's last-position log-probabilities
        (top 5), and the server must have run multi-adapter steps."""
        def steps():
            with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=30) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith("loraserve_multi_adapter_steps_total"):
                        return float(line.rsplit(" ", 1)[1])
            return 0.0
        names = sorted(self.refs)
        before, checked = steps(), 0
        for g in range(groups):
            jobs = [(a, i) for a in rng.sample(names, min(len(names), 12)) + [""] for i in range(len(self.prompts))]
            rng.shuffle(jobs)
            with futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
                got = list(pool.map(lambda j: self.client.generate(self.prompts[j[1]], adapter=j[0], max_new_tokens=1,
                                                                   temperature=0, logprobs=True, top_logprobs=5), jobs))
            for (a, i), r in zip(jobs, got):
                ref, tol = (self.refs[a] if a else self.base_ref)[i]
                last = ref[-1] - ref[-1].max()
                logp = last - np.log(np.exp(last).sum())
                for t in r.tokens[0].top_logprobs:
                    checked += 1
                    diff = abs(t.logprob - logp[t.id])
                    self.worst["mixed generation logprob"] = max(self.worst.get("mixed generation logprob", -1.0), diff)
                    if diff > 2 * tol + RTOL * abs(logp[t.id]) and a not in self.failed:
                        self.failures.append(f"mixed generation {g}: adapter {a or '<base>'} p{i} token {t.id}: "
                                             f"logprob {t.logprob:.6g} vs {logp[t.id]:.6g}")
        multi = steps() - before
        if multi < 1:
            self.failures.append("mixed generation: the server ran no multi-adapter step (requests were not batched)")
        self.checks += checked
        return checked, int(multi)

    def merged_beside(self, merged, adapter):
        """`adapter`'s answers while `merged` is merged (both loaded singles)."""
        if merged not in self.refs or adapter not in self.refs:
            self.failures.append(f"merged_beside {merged}, {adapter}: not both loaded")
            return
        self.client.merge_adapter(merged)
        self.compare("beside a merged adapter", f"{adapter} beside merged {merged}", adapter,
                     loosen(self.refs[adapter], self.merged_tol[merged]))
        self.client.unmerge_adapter(merged)

    def combine_with_peft(self, model, names, weights, ctype, args):
        model.add_weighted_adapter(names, weights, "combined", combination_type=ctype, **args)
        model.set_adapter("combined")
        cfg = model.peft_config["combined"]
        if cfg.use_rslora:
            # This PEFT release copies use_rslora from the first source into the combined config
            # (scaling sqrt(r) instead of 1): upstream PR #3449 fixed that after it, and the fixtures'
            # PEFT carries the fix, as the spec and loraserve do. The reference applies the fix.
            self.notes.append(f"PEFT {peft.__version__}: the combined adapter inherits use_rslora=True from its "
                              "first source (upstream #3449 is not in this release); the reference resets it")
            cfg.use_rslora = False
            for m in model.modules():
                if isinstance(m, LoraLayer) and "combined" in m.scaling:
                    m.scaling["combined"] = cfg.lora_alpha / cfg.r

    def mixed_batches(self, rng, groups):
        """Concurrent Scores of several adapters and the base (each Score runs alone in the engine;
        mixed_generation covers batched steps), every other group with one of them merged meanwhile."""
        names = sorted(self.refs)
        jobs_run = 0
        for g in range(groups):
            merged = rng.choice(names) if g % 2 == 1 else None
            if merged:
                self.client.merge_adapter(merged)
            picked = rng.sample(names, min(len(names), 7)) + [""]
            jobs = [(a, i) for a in picked for i in range(len(self.prompts))]
            rng.shuffle(jobs)
            with futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
                got = list(pool.map(lambda j: self.score(j[0], self.prompts[j[1]]), jobs))
            for (a, i), logits in zip(jobs, got):
                ref = self.refs[a][i] if a else self.base_ref[i]
                why = self.check("mixed batch", logits, loosen([ref], self.merged_tol.get(merged, 0))[0])
                if why and a not in self.failed:
                    self.failures.append(f"mixed batch {g} (merged: {merged}): adapter {a or '<base>'} p{i}: {why}")
            jobs_run += len(jobs)
            if merged:
                self.client.unmerge_adapter(merged)
        self.checks += jobs_run
        return jobs_run


# ---- PEFT release drift against ../shared/fixtures ------------------------------------------------

def fixture_drift(shared):
    """Recomputes the fixtures' logits with this PEFT release; returns lines describing differences."""
    root = os.path.join(shared, "fixtures", "peft")
    base = transformers.LlamaForCausalLM.from_pretrained(
        os.path.join(shared, "fixtures", "models", "stories260K"), attn_implementation="eager").eval()
    lines = []
    for case in sorted(os.listdir(root)):
        if case == "multi" or not os.path.isdir(os.path.join(root, case)):
            continue
        exp = json.load(open(os.path.join(root, case, "expected.json")))
        tensors = load_file(os.path.join(root, case, "expected.safetensors"))
        model = PeftModel.from_pretrained(copy.deepcopy(base), os.path.join(root, case, "adapter")).eval()
        got = forward(model, [p["ids"] for p in exp["prompts"]])
        worst = max(worst_excess(g, tensors[f"logits.adapter.p{i}"].double().numpy()) for i, g in enumerate(got))
        atol = exp.get("recommended_logits_atol", ATOL)
        lines.append(f"fixture {case}: {'same' if worst <= atol else 'DIFFERS'} (worst excess {worst:.3g}, atol {atol:g})")
    weighted = os.path.join(root, "multi", "weighted")
    for name in sorted(os.listdir(weighted)):
        exp = json.load(open(os.path.join(weighted, name, "expected.json")))
        tensors = load_file(os.path.join(weighted, name, "expected.safetensors"))
        sources = list(exp["source_adapters"].items())
        model = PeftModel.from_pretrained(copy.deepcopy(base), os.path.join(weighted, name, sources[0][1]),
                                          adapter_name=sources[0][0])
        model.load_adapter(os.path.join(weighted, name, sources[1][1]), adapter_name=sources[1][0])
        model.add_weighted_adapter([s for s, _ in sources], exp["weights"], "c",
                                   combination_type=exp["combination_type"], **exp["kwargs"])
        model.set_adapter("c")
        got = forward(model.eval(), [p["ids"] for p in exp["prompts"]])
        worst = max(worst_excess(g, tensors[f"logits.p{i}"].double().numpy()) for i, g in enumerate(got))
        lines.append(f"fixture weighted/{name}: {'same' if worst <= ATOL else 'DIFFERS'} (worst excess {worst:.3g})")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loraserve", required=True)
    ap.add_argument("--configs", type=int, default=100, help="random single-adapter configs")
    ap.add_argument("--combination_rounds", type=int, default=1, help="rounds over all 11 combination types")
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument("--shared", default="auto",
                    help="../shared (auto: $LORASERVE_SHARED_DIR or ../shared beside the checkout; "
                         "none: skip): also report this PEFT release's drift on its fixtures")
    ap.add_argument("--only", type=int, default=None, help="run only the single config of this index")
    args = ap.parse_args()
    start = time.time()
    print(f"peft_live_test: torch {torch.__version__}, transformers {transformers.__version__}, "
          f"peft {peft.__version__}, seed {args.seed}", flush=True)
    torch.set_num_threads(1)
    regressions = json.load(open(os.path.join(HERE, "regressions.json")))
    with tempfile.TemporaryDirectory() as work:
        model_dir = os.path.join(work, "model")
        base = make_base(model_dir, args.seed)
        rng = random.Random(args.seed)
        prompts = [[1] + [rng.randrange(3, 512) for _ in range(n - 1)] for n in (5, 13, 24)]
        server = LoraserveProcess(args.loraserve, model_dir, work, work,
                                  extra=("--max_wait=5ms", "--shutdown_grace=10s"), failure=Failure)
        try:
            with loraserve.Client(server.addr, timeout=60) as client:
                run = Run(client, base, prompts, work)
                run.base_served = [run.score("", ids) for ids in prompts]
                for i, ids in enumerate(prompts):
                    why = run.check("base", run.base_served[i], run.base_ref[i])
                    if why:
                        run.failures.append(f"base model p{i} against transformers: {why}")
                singles = 0
                cases = [(f"regression{j}", r["seed"], r["config"]) for j, r in enumerate(regressions["singles"])]
                for i in range(args.configs):
                    crng = random.Random(args.seed * 1000 + i)
                    cases.append((f"config{i}", args.seed * 1000 + i, draw_single(crng)))
                if args.only is not None:
                    cases = [c for c in cases if c[0] == f"config{args.only}"]
                for label, seed, kw in cases:
                    before = len(run.failures)
                    ok = run.single(f"{label} seed={seed} {json.dumps(kw)}", label, kw, seed)
                    singles += ok or len(run.failures) > before
                    print(f"  {label}: {'ok' if ok else 'MISMATCH' if len(run.failures) > before else 'skipped'}"
                          f"  {json.dumps(kw)}", flush=True)
                for merged, rows in regressions["merged_beside"] if args.only is None else []:
                    run.merged_beside(merged, rows)
                combos = 0
                if args.only is None:
                    for rnd in range(args.combination_rounds):
                        for t, ctype in enumerate(COMBINATION_TYPES):
                            seed = args.seed * 1000 + 500 + rnd * 100 + t
                            spec, ok = run.combination(f"combo{rnd}-{ctype}", ctype, random.Random(seed), seed)
                            combos += 1
                            print(f"  combo{rnd}-{ctype}: {'ok' if ok else 'MISMATCH'}  {json.dumps(spec)}", flush=True)
                    mixed = run.mixed_batches(random.Random(args.seed + 7), groups=6)
                    print(f"  mixed batches: {mixed} concurrent Scores", flush=True)
                    checked, multi = run.mixed_generation(random.Random(args.seed + 8), server.metrics_addr)
                    print(f"  mixed generation: {checked} top log-probabilities checked, {multi} multi-adapter steps",
                          flush=True)
        finally:
            status = server.stop()
            if status != 0:
                print(server.logs()[-4000:])
                run_failed = f"loraserve exited with {status}"
            else:
                run_failed = None
    shared = args.shared
    if shared == "auto":
        shared = os.environ.get("LORASERVE_SHARED_DIR") or os.path.join(os.path.dirname(REPO), "shared")
        if not os.path.isdir(os.path.join(shared, "fixtures", "peft")):
            if os.environ.get("CI") == "true":
                run.failures.append(f"no ../shared at {shared} (CI=true: the fixture drift report is required)")
            else:
                print(f"peft_live_test: SKIPPED the fixture drift report: no ../shared at {shared}")
            shared = "none"
    drift = fixture_drift(shared) if shared != "none" else []
    for line in drift:
        print("  " + line)
    for n in dict.fromkeys(run.notes):
        print("  PEFT note: " + n)
    print(f"peft_live_test: {singles} single configs + {combos} combinations, {run.checks} logit checks, "
          f"worst excess by kind {json.dumps({k: float(f'{v:.3g}') for k, v in run.worst.items()})}, "
          f"{time.time() - start:.0f} s")
    if run_failed:
        run.failures.append(run_failed)
    if args.only is None and singles < min(50, args.configs):
        run.failures.append(f"only {singles} configs ran (PEFT refused the others); at least 50 must")
    for f in run.failures:
        print("MISMATCH " + f)
    print(f"peft_live_test: {'FAILED' if run.failures else 'PASSED'} ({len(run.failures)} mismatches)")
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
