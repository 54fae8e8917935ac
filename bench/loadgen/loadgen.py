#!/usr/bin/python3
"""Open-loop multi-adapter workload generator for loraserve (see bench/loadgen/README.md).

Writes N PEFT LoRA adapters (1 to 2000) from one template with different seeds (cached on disk),
registers them with LoadAdapter (optionally register_only), then sends Poisson arrivals of
Generate (streamed) and Score requests for --duration seconds with uniform or Zipf adapter
popularity, and reports throughput, TTFT / TPOT / end-to-end latency percentiles, SLO
attainment, per-adapter counts, every RPC error, the server's RSS and its loraserve_adapter_*
metrics. --check_scores compares Scores under load bit for bit with the idle server's.

  # start a server, 50 adapters, Zipf popularity, 20 req/s for 15 s, with Score checks:
  bench/loadgen/loadgen.py --loraserve build/server/loraserve --model build/default-model \\
      --extra=--threads=1 --adapters 50 --rate 20 --duration 15 --popularity zipf \\
      --check_scores --score_fraction 0.2 --fail_on_error --out /tmp/lg.json
  # the same offered load for 1, 10 and 100 adapters (fresh server each), JSON + PNG plot:
  bench/loadgen/loadgen.py --loraserve build/server/loraserve --model build/default-model \\
      --adapters_sweep 1,10,100 --duration 10 --out /tmp/sweep.json --plot /tmp/sweep.png
  # an existing server (loopback only) whose --adapter_root is DIR:
  bench/loadgen/loadgen.py --target 127.0.0.1:50051 --model build/default-model \\
      --adapter_dir DIR --adapters 100 --rate 50 --duration 30

Needs Debian's python3-grpcio, protoc and grpc_python_plugin (as tests/e2e); run it with
/usr/bin/python3. Exit codes: 0 done, 1 errors with --fail_on_error (or a failed start), 2 usage.
"""

import argparse
import asyncio
import bisect
import collections
import hashlib
import ipaddress
import json
import os
import random
import shutil
import socket
import struct
import sys
import tempfile
import time
import urllib.request
from array import array

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "testing"))
sys.path.insert(0, HERE)
from loraserve_process import LoraserveProcess, generate_stubs  # noqa: E402 (tests/testing/)

# Hard bounds, so that a run cannot run away.
MAX_DURATION_S, MAX_ADAPTERS, MAX_INFLIGHT, MAX_RATE, MAX_CHECKED = 600, 2000, 256, 2000.0, 256
# Where each target module sits in a Llama layer, and its (in, out) features from config.json.
PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
          "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
CHECK_LEN = 16          # length of the fixed --check_scores token sequence
FIRST_SAFE_ID = 3       # prompts avoid <unk>=0, <s>=1, </s>=2 (BOS is put first explicitly)


class Failure(Exception):
    pass


# ------------------------------------------------------------------------------------- adapters

def module_shapes(cfg):
    h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or h // heads
    q, kv, inter = heads * hd, cfg.get("num_key_value_heads", heads) * hd, cfg["intermediate_size"]
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}


def write_safetensors(path, tensors):
    """tensors: [(name, shape, array('f'))] -> a safetensors file (F32, little-endian)."""
    header, off = {}, 0
    for name, shape, data in tensors:
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + 4 * len(data)]}
        off += 4 * len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for _, _, data in tensors:
            if sys.byteorder != "little":
                data = array("f", data)
                data.byteswap()
            f.write(data.tobytes())


class AdapterSet:
    """N adapters of one template under <adapter_dir>/<template key>/s<seed>, written once.

    lora_A ~ U(±1/sqrt(in)) (PEFT's kaiming-uniform scale), lora_B ~ U with std --b_std (PEFT
    starts B at zero; non-zero B makes every adapter change the outputs)."""

    def __init__(self, args, cfg):
        shapes = module_shapes(cfg)
        self.targets = [t.strip() for t in args.target_modules.split(",") if t.strip()]
        bad = [t for t in self.targets if t not in shapes]
        if bad:
            raise Failure(f"unknown target modules {bad}; known: {sorted(shapes)}")
        self.rank, self.alpha, self.b_std = args.rank, args.lora_alpha, args.b_std
        self.layers = cfg["num_hidden_layers"]
        self.base_model = os.path.basename(os.path.normpath(args.model))
        self.shapes = {t: shapes[t] for t in self.targets}
        key = json.dumps([self.shapes, self.layers, self.rank, self.alpha, self.b_std, self.base_model], sort_keys=True)
        self.key = hashlib.sha256(key.encode()).hexdigest()[:10]
        self.root = args.adapter_dir
        self.written = 0

    def name(self, i):
        return f"lg-{self.key}-{i}"

    def path(self, i):
        return f"{self.key}/s{i}"

    def ensure(self, n):
        for i in range(n):
            d = os.path.join(self.root, self.path(i))
            if not os.path.exists(os.path.join(d, "adapter_model.safetensors")):
                self.write(i, d)

    def write(self, i, d):
        rng = random.Random(f"{self.key}/{i}")
        b_half = self.b_std * 3 ** 0.5                     # U(-a, a) has std a/sqrt(3)
        tensors = []
        for layer in range(self.layers):
            for t in self.targets:
                fin, fout = self.shapes[t]
                p = f"base_model.model.model.layers.{layer}.{PARENT[t]}.{t}"
                a_half = fin ** -0.5
                tensors.append((p + ".lora_A.weight", (self.rank, fin),
                                array("f", [(2 * rng.random() - 1) * a_half for _ in range(self.rank * fin)])))
                tensors.append((p + ".lora_B.weight", (fout, self.rank),
                                array("f", [(2 * rng.random() - 1) * b_half for _ in range(fout * self.rank)])))
        tensors.sort(key=lambda x: x[0])
        config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": self.base_model,
                  "r": self.rank, "lora_alpha": self.alpha, "lora_dropout": 0.0, "bias": "none",
                  "target_modules": self.targets, "use_rslora": False, "use_dora": False}
        tmp = d + f".tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
            json.dump(config, f, indent=2)
        write_safetensors(os.path.join(tmp, "adapter_model.safetensors"), tensors)
        shutil.rmtree(d, ignore_errors=True)
        os.rename(tmp, d)
        self.written += 1


# ------------------------------------------------------------------------------- distributions

def parse_dist(spec):
    """'fixed:N' or 'uniform:A:B' -> a function of an rng giving an int."""
    parts = spec.split(":")
    try:
        if parts[0] == "fixed" and len(parts) == 2 and int(parts[1]) >= 1:
            n = int(parts[1])
            return (lambda rng: n), n
        if parts[0] == "uniform" and len(parts) == 3 and 1 <= int(parts[1]) <= int(parts[2]):
            a, b = int(parts[1]), int(parts[2])
            return (lambda rng: rng.randint(a, b)), b
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"bad distribution {spec!r}: want fixed:N or uniform:A:B")


def popularity_cdf(n, kind, alpha):
    """Cumulative weights over adapter indices: uniform, or Zipf (adapter i weighs 1/(i+1)^alpha)."""
    w = [1.0] * n if kind == "uniform" else [1.0 / (i + 1) ** alpha for i in range(n)]
    cdf, s = [], 0.0
    for x in w:
        s += x
        cdf.append(s)
    return cdf


def pick(cdf, rng):
    return min(bisect.bisect_left(cdf, rng.random() * cdf[-1]), len(cdf) - 1)


def percentiles(xs):
    if not xs:
        return {"n": 0}
    xs = sorted(xs)
    at = lambda p: xs[min(len(xs) - 1, int(p / 100 * len(xs)))]  # noqa: E731
    return {"n": len(xs), "p50": at(50), "p90": at(90), "p99": at(99), "mean": sum(xs) / len(xs), "max": xs[-1]}


def f32_bytes(values):
    return array("f", values).tobytes()   # bit-exact comparison of the server's float32s


# --------------------------------------------------------------------------------- the server

def check_loopback(hostport, what):
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise Failure(f"{what} {hostport!r}: want HOST:PORT")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise Failure(f"{what} {hostport!r}: {e}")
    addrs = {ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos}
    if not addrs or not all(a.is_loopback for a in addrs):
        raise Failure(f"{what} {hostport!r} is not a loopback address: refused (loopback only)")
    return hostport


def proc_status_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def adapter_metrics(metrics_addr):
    """The loraserve_adapter* series of /metrics: per name, the sum over label sets, the number of
    series and (when at most 20) each series' value. Histogram buckets are left out."""
    if not metrics_addr:
        return None
    try:
        with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError as e:
        return {"error": str(e)}
    fams = {}
    for line in text.splitlines():
        if not line.startswith("loraserve_adapter") or "_bucket" in line.split(" ")[0]:
            continue
        series, _, value = line.rpartition(" ")
        name = series.split("{")[0]
        f = fams.setdefault(name, {"sum": 0.0, "series": 0, "values": {}})
        f["sum"] += float(value)
        f["series"] += 1
        f["values"][series[len(name):] or "{}"] = float(value)
    for f in fams.values():
        if f["series"] > 20:
            del f["values"]
    return fams


# ---------------------------------------------------------------------------------- one run

class Run:
    """One server (started or targeted), N adapters registered, --duration s of traffic."""

    def __init__(self, args, stubs, cfg, adapters, n, addr, metrics_addr, pid):
        import grpc
        self.grpc = grpc
        self.args, self.cfg, self.adapters, self.n = args, cfg, adapters, n
        self.apb, self.apbg, self.ipb, self.ipbg = stubs
        self.addr, self.metrics_addr, self.pid = addr, metrics_addr, pid
        self.errors = collections.Counter()            # (method, code, message) -> n
        self.per_adapter = collections.Counter()
        self.mismatches, self.n_mismatch = [], 0
        self.refs = {}                                 # adapter index -> float32 bytes
        self.gen, self.score_ms, self.client_lag_ms = [], [], []
        self.dropped = self.cancelled = self.arrivals = 0
        self.inflight = 0

    def error(self, method, e):
        code = e.code().name if hasattr(e, "code") else type(e).__name__
        msg = (e.details() if hasattr(e, "details") else str(e)) or ""
        self.errors[(method, code, msg[:300])] += 1

    async def register(self, stub):
        """LoadAdapter for every adapter, --register_concurrency calls at a time."""
        apb, sem = self.apb, asyncio.Semaphore(self.args.register_concurrency)
        lat, residency, already = [], collections.Counter(), 0
        kw = {"register_only": True} if self.args.register == "register_only" else {}

        async def one(i):
            nonlocal already
            async with sem:
                t0 = time.perf_counter()
                try:
                    r = await stub.LoadAdapter(apb.LoadAdapterRequest(name=self.adapters.name(i), path=self.adapters.path(i), **kw),
                                               timeout=self.args.timeout)
                except self.grpc.aio.AioRpcError as e:
                    self.error("LoadAdapter", e)
                    return
                lat.append((time.perf_counter() - t0) * 1e3)
                already += r.already_loaded
                residency[apb.Residency.Name(r.adapter.residency)] += 1
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(self.n)))
        return {"mode": self.args.register, "seconds": time.perf_counter() - t0, "ok": len(lat),
                "already_loaded": already, "residency": dict(residency), "latency_ms": percentiles(lat)}

    async def references(self, stub):
        """Idle-server Scores of the fixed sequence for the (at most --check_adapters) most popular
        adapters, one call at a time."""
        rng = random.Random(self.args.seed ^ 0x5C0)
        self.check_tokens = [1] + [rng.randrange(FIRST_SAFE_ID, self.cfg["vocab_size"]) for _ in range(CHECK_LEN - 1)]
        k = min(self.n, self.args.check_adapters)
        for i in range(k):
            try:
                r = await stub.Score(self.ipb.ScoreRequest(adapter=self.adapters.name(i), token_ids=self.check_tokens),
                                     timeout=self.args.timeout)
                self.refs[i] = f32_bytes(r.token_logprobs)
            except self.grpc.aio.AioRpcError as e:
                self.error("Score(reference)", e)
        distinct = len(set(self.refs.values()))
        if k > 1 and distinct < 2:
            raise Failure("every checked adapter gave the same Score: the adapters change nothing")
        return {"adapters": len(self.refs), "distinct_scores": distinct, "tokens": self.check_tokens}

    async def generate(self, stub, i, tokens, out_len, seed):
        ipb, t0 = self.ipb, time.perf_counter()
        req = ipb.GenerateRequest(adapter=self.adapters.name(i), token_ids=tokens, sampling=ipb.SamplingOptions(
            max_new_tokens=out_len, ignore_eos=True, seed=seed))
        call, first, last, ntok, summary = stub.Generate(req, timeout=self.args.timeout), None, None, 0, None
        try:
            async for msg in call:
                now = time.perf_counter()
                if msg.tokens:
                    first = first or now
                    last, ntok = now, ntok + len(msg.tokens)
                if msg.HasField("summary"):
                    summary = msg.summary
        except self.grpc.aio.AioRpcError as e:
            self.error("Generate", e)
            return
        except asyncio.CancelledError:
            call.cancel()
            self.cancelled += 1
            raise
        end = time.perf_counter()
        if first is None:
            self.errors[("Generate", "CLIENT", "stream ended without tokens")] += 1
            return
        self.gen.append({"ttft": (first - t0) * 1e3, "tpot": (last - first) * 1e3 / (ntok - 1) if ntok > 1 else None,
                         "e2e": (end - t0) * 1e3, "tokens": ntok,
                         "server_ttft": summary.time_to_first_token_ms if summary else None,
                         "queue": summary.queue_time_ms if summary else None})

    async def score(self, stub, i, tokens, check):
        t0 = time.perf_counter()
        try:
            r = await stub.Score(self.ipb.ScoreRequest(adapter=self.adapters.name(i), token_ids=tokens), timeout=self.args.timeout)
        except self.grpc.aio.AioRpcError as e:
            self.error("Score", e)
            return
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.score_ms.append((time.perf_counter() - t0) * 1e3)
        if check and f32_bytes(r.token_logprobs) != self.refs[i]:
            self.n_mismatch += 1
            if len(self.mismatches) < 20:
                want = array("f", self.refs[i]).tolist()
                self.mismatches.append({"adapter": self.adapters.name(i), "got": list(r.token_logprobs)[:4], "want": want[:4]})

    async def traffic(self, inf):
        """Open loop: Poisson arrivals at --rate, independent of completions; over --max_inflight
        an arrival is dropped by the client."""
        a, loop = self.args, asyncio.get_running_loop()
        rng = random.Random(a.seed)
        cdf = popularity_cdf(self.n, a.popularity, a.zipf_alpha)
        checked = sorted(self.refs)
        check_cdf = list(_accumulate(cdf, checked))   # popularity restricted to the checked adapters
        tasks = set()

        def done(t):
            tasks.discard(t)
            self.inflight -= 1
        start, t = loop.time(), 0.0
        while True:
            t += rng.expovariate(a.rate)
            if t >= a.duration:
                break
            delay = start + t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.arrivals += 1
            is_score = rng.random() < a.score_fraction
            check = is_score and bool(checked)
            i = checked[pick(check_cdf, rng)] if check else pick(cdf, rng)
            plen, olen = a.prompt_len(rng), a.output_len(rng)
            tokens = [1] + [rng.randrange(FIRST_SAFE_ID, self.cfg["vocab_size"]) for _ in range(plen - 1)]
            seed = rng.getrandbits(63)
            if self.inflight >= a.max_inflight:
                self.dropped += 1
                continue
            self.per_adapter[self.adapters.name(i)] += 1
            self.client_lag_ms.append((loop.time() - start - t) * 1e3)
            coro = (self.score(inf, i, self.check_tokens if check else tokens, check) if is_score
                    else self.generate(inf, i, tokens, olen, seed))
            task = asyncio.ensure_future(coro)
            self.inflight += 1
            tasks.add(task)
            task.add_done_callback(done)
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=a.drain_timeout)
            for p in pending:
                p.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        return loop.time() - start

    async def run(self):
        grpc = self.grpc
        opts = [("grpc.max_receive_message_length", 64 << 20)]
        async with grpc.aio.insecure_channel(self.addr, options=opts) as ch:
            try:
                await asyncio.wait_for(ch.channel_ready(), 30)
            except asyncio.TimeoutError:
                raise Failure(f"no gRPC server answered at {self.addr} within 30 s")
            adm, inf = self.apbg.AdapterServiceStub(ch), self.ipbg.InferenceServiceStub(ch)
            out = {"adapters": self.n, "register": await self.register(adm)}
            out["rss_after_register_kib"] = proc_status_kib(self.pid) if self.pid else None
            if self.args.check_scores:
                out["check"] = await self.references(inf)
            out["metrics_before"] = adapter_metrics(self.metrics_addr)
            elapsed = await self.traffic(inf)
        out.update(self.summarize(elapsed))
        out["rss_end_kib"] = proc_status_kib(self.pid) if self.pid else None
        out["metrics_after"] = adapter_metrics(self.metrics_addr)
        return out

    def summarize(self, elapsed):
        a = self.args
        g = self.gen
        tokens = sum(r["tokens"] for r in g)
        ok = len(g) + len(self.score_ms)
        met = sum(1 for r in g if r["ttft"] <= a.slo_ttft_ms and (r["tpot"] is None or r["tpot"] <= a.slo_tpot_ms))
        met += sum(1 for ms in self.score_ms if ms <= a.slo_ttft_ms)
        n_err = sum(self.errors.values())
        return {
            "offered": {"arrivals": self.arrivals, "rate": a.rate, "duration_s": a.duration},
            "elapsed_s": elapsed, "completed": ok, "dropped_by_client": self.dropped,
            "cancelled_at_end": self.cancelled, "errors_total": n_err,
            "errors": [{"method": m, "code": c, "message": msg, "count": k} for (m, c, msg), k in self.errors.most_common()],
            "score_mismatches": self.n_mismatch, "mismatch_examples": self.mismatches,
            "requests_per_s": ok / elapsed if elapsed else 0.0, "output_tokens_per_s": tokens / elapsed if elapsed else 0.0,
            "generate": {"completed": len(g), "output_tokens": tokens,
                         "ttft_ms": percentiles([r["ttft"] for r in g]),
                         "tpot_ms": percentiles([r["tpot"] for r in g if r["tpot"] is not None]),
                         "e2e_ms": percentiles([r["e2e"] for r in g]),
                         "server_ttft_ms": percentiles([r["server_ttft"] for r in g if r["server_ttft"] is not None]),
                         "server_queue_ms": percentiles([r["queue"] for r in g if r["queue"] is not None])},
            "score": {"completed": len(self.score_ms), "e2e_ms": percentiles(self.score_ms)},
            "slo": {"ttft_ms": a.slo_ttft_ms, "tpot_ms": a.slo_tpot_ms,
                    "attainment": met / self.arrivals if self.arrivals else None,
                    "attainment_of_completed": met / ok if ok else None},
            "client_lag_ms": percentiles(self.client_lag_ms),
            "per_adapter_requests": dict(self.per_adapter.most_common()),
        }


def _accumulate(cdf, idx):
    """Cumulative popularity of the adapters `idx` alone (a cdf for pick())."""
    s = 0.0
    for i in idx:
        s += cdf[i] - (cdf[i - 1] if i else 0.0)
        yield s


# ------------------------------------------------------------------------------------- driver

def run_one(args, stubs, cfg, adapters, n, work):
    t0 = time.perf_counter()
    adapters.ensure(n)
    write_s = time.perf_counter() - t0
    server, pid = None, None
    if args.target:
        addr, maddr = args.target, args.metrics
    else:
        server = LoraserveProcess(args.loraserve, args.model, args.adapter_dir, work, name=f"server-{n}",
                                  extra=args.extra, failure=Failure)
        addr, maddr, pid = server.addr, server.metrics_addr, server.proc.pid
    try:
        rss_start = proc_status_kib(pid) if pid else None
        out = asyncio.run(Run(args, stubs, cfg, adapters, n, addr, maddr, pid).run())
        out["rss_start_kib"] = rss_start
    finally:
        if server:
            rc = server.stop()
            if rc != 0:
                print(f"loraserve exited {rc}; log tail:\n" + server.logs()[-2000:], file=sys.stderr)
    out["adapter_files"] = {"dir": os.path.join(args.adapter_dir, adapters.key), "written": adapters.written,
                            "write_s": write_s}
    adapters.written = 0
    return out


def report(r):
    g, mib = r["generate"], lambda k: (r.get(k) or {}).get("VmHWM", 0) / 1024
    p = lambda d, k: f"{d[k]:.1f}" if k in d else "-"  # noqa: E731
    reg = r["register"]
    print(f"adapters {r['adapters']}: registered {reg['ok']} ({reg['mode']}) in {reg['seconds']:.2f} s; "
          f"residency {reg['residency']}")
    print(f"  {r['offered']['arrivals']} arrivals, {r['completed']} completed, {r['dropped_by_client']} dropped by client, "
          f"{r['errors_total']} errors, {r['score_mismatches']} score mismatches")
    print(f"  {r['requests_per_s']:.1f} req/s, {r['output_tokens_per_s']:.0f} output tok/s; "
          f"TTFT p50/p99 {p(g['ttft_ms'], 'p50')}/{p(g['ttft_ms'], 'p99')} ms, TPOT p50/p99 {p(g['tpot_ms'], 'p50')}/"
          f"{p(g['tpot_ms'], 'p99')} ms, e2e p99 {p(g['e2e_ms'], 'p99')} ms, Score p99 {p(r['score']['e2e_ms'], 'p99')} ms")
    slo = r["slo"]["attainment"]
    print(f"  SLO (TTFT<={r['slo']['ttft_ms']:g} ms, TPOT<={r['slo']['tpot_ms']:g} ms): "
          f"{'-' if slo is None else f'{100 * slo:.1f}%'}" + (f"; server VmHWM {mib('rss_end_kib'):.0f} MiB" if r.get("rss_end_kib") else ""))
    for e in r["errors"][:5]:
        print(f"  error x{e['count']}: {e['method']} {e['code']}: {e['message']}")


def table(runs):
    print(f"{'adapters':>8} {'reg_s':>6} {'req/s':>7} {'tok/s':>7} {'ttft50':>7} {'ttft99':>7} {'tpot99':>7} "
          f"{'e2e99':>8} {'slo%':>6} {'err':>5} {'drop':>5} {'hwm_MiB':>8}")
    for r in runs:
        g = r["generate"]
        f = lambda d, k: f"{d[k]:.1f}" if k in d else "-"  # noqa: E731
        slo = r["slo"]["attainment"]
        print(f"{r['adapters']:>8} {r['register']['seconds']:>6.2f} {r['requests_per_s']:>7.1f} {r['output_tokens_per_s']:>7.0f} "
              f"{f(g['ttft_ms'], 'p50'):>7} {f(g['ttft_ms'], 'p99'):>7} {f(g['tpot_ms'], 'p99'):>7} {f(g['e2e_ms'], 'p99'):>8} "
              f"{'-' if slo is None else f'{100 * slo:.1f}':>6} {r['errors_total'] + r['score_mismatches']:>5} "
              f"{r['dropped_by_client']:>5} {((r.get('rss_end_kib') or {}).get('VmHWM', 0) / 1024):>8.0f}")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    srv = ap.add_mutually_exclusive_group(required=True)
    srv.add_argument("--loraserve", help="start this server binary (with --adapter_root=--adapter_dir)")
    srv.add_argument("--target", help="an existing server's HOST:PORT (loopback only)")
    ap.add_argument("--metrics", help="with --target: its --metrics_listen HOST:PORT (loopback only)")
    ap.add_argument("--model", required=True, help="model directory (its config.json gives the adapter shapes)")
    ap.add_argument("--extra", action="append", default=[], help="extra loraserve flag, e.g. --extra=--threads=2")
    ap.add_argument("--adapter_dir", default=os.path.join(tempfile.gettempdir(), "loraserve-loadgen-adapters"),
                    help="adapter cache; the started server's --adapter_root (with --target: the server's root)")
    ap.add_argument("--adapters", type=int, default=10, help=f"number of adapters, 1 to {MAX_ADAPTERS}")
    ap.add_argument("--adapters_sweep", help="comma-separated adapter counts, one run each")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lora_alpha", type=float, default=16)
    ap.add_argument("--target_modules", default="q_proj,v_proj")
    ap.add_argument("--b_std", type=float, default=0.02, help="std of the lora_B values")
    ap.add_argument("--register", choices=("load", "register_only"), default="load")
    ap.add_argument("--register_concurrency", type=int, default=4, help="LoadAdapter calls in flight")
    ap.add_argument("--popularity", choices=("uniform", "zipf"), default="uniform")
    ap.add_argument("--zipf_alpha", type=float, default=1.0)
    ap.add_argument("--rate", type=float, default=10.0, help="Poisson arrivals per second")
    ap.add_argument("--duration", type=float, default=10.0, help=f"seconds of arrivals (at most {MAX_DURATION_S})")
    ap.add_argument("--prompt_len", type=parse_dist, default="uniform:8:32", help="fixed:N or uniform:A:B tokens (BOS included)")
    ap.add_argument("--output_len", type=parse_dist, default="fixed:16", help="fixed:N or uniform:A:B new tokens")
    ap.add_argument("--score_fraction", type=float, default=0.0, help="fraction of requests that are Score")
    ap.add_argument("--check_scores", action="store_true", help="Scores under load must equal the idle server's, bit for bit")
    ap.add_argument("--check_adapters", type=int, default=64, help=f"adapters given a reference Score (at most {MAX_CHECKED})")
    ap.add_argument("--max_inflight", type=int, default=128, help=f"client in-flight cap (at most {MAX_INFLIGHT})")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-RPC deadline, seconds")
    ap.add_argument("--drain_timeout", type=float, default=30.0, help="wait this long for in-flight requests at the end")
    ap.add_argument("--slo_ttft_ms", type=float, default=1000.0)
    ap.add_argument("--slo_tpot_ms", type=float, default=200.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the JSON report here")
    ap.add_argument("--plot", help="sweep: write the PNG plot here (default: --out with .png)")
    ap.add_argument("--fail_on_error", action="store_true", help="exit 1 on any RPC error or score mismatch")
    ap.add_argument("--require_positive", action="append", default=[], metavar="METRIC",
                    help="with --fail_on_error: exit 1 unless the server's loraserve_adapter* METRIC grew "
                         "during the run (e.g. loraserve_adapter_evictions_total: the budget bit)")
    a = ap.parse_args(argv)
    a.prompt_len, a.max_prompt = a.prompt_len
    a.output_len, a.max_output = a.output_len
    a.sweep = [int(x) for x in a.adapters_sweep.split(",")] if a.adapters_sweep else [a.adapters]
    checks = [(all(1 <= n <= MAX_ADAPTERS for n in a.sweep), f"adapters must be 1 to {MAX_ADAPTERS}"),
              (0 < a.duration <= MAX_DURATION_S, f"--duration must be in (0, {MAX_DURATION_S}]"),
              (0 < a.rate <= MAX_RATE, f"--rate must be in (0, {MAX_RATE:g}]"),
              (1 <= a.max_inflight <= MAX_INFLIGHT, f"--max_inflight must be 1 to {MAX_INFLIGHT}"),
              (1 <= a.check_adapters <= MAX_CHECKED, f"--check_adapters must be 1 to {MAX_CHECKED}"),
              (0 <= a.score_fraction <= 1, "--score_fraction must be in [0, 1]"),
              (1 <= a.register_concurrency <= 64, "--register_concurrency must be 1 to 64"),
              (a.rank >= 1 and a.b_std > 0 and a.zipf_alpha > 0, "--rank, --b_std, --zipf_alpha must be positive"),
              (not (a.check_scores and a.score_fraction == 0), "--check_scores needs --score_fraction > 0"),
              (not a.metrics or a.target, "--metrics goes with --target")]
    for ok, msg in checks:
        if not ok:
            ap.error(msg)
    return a


def main(argv=None):
    args = parse_args(argv)
    import grpc  # noqa: F401 (fail early without python3-grpcio)
    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)
    ctx = cfg.get("max_position_embeddings", 2048)
    if args.max_prompt + args.max_output > ctx or max(args.max_prompt, CHECK_LEN) > ctx:
        raise Failure(f"prompt ({args.max_prompt}) + output ({args.max_output}) tokens exceed the context ({ctx})")
    if args.target:
        check_loopback(args.target, "--target")
        if args.metrics:
            check_loopback(args.metrics, "--metrics")
    args.adapter_dir = os.path.abspath(args.adapter_dir)
    os.makedirs(args.adapter_dir, exist_ok=True)
    adapters = AdapterSet(args, cfg)
    with tempfile.TemporaryDirectory(prefix="loadgen-") as work:
        generate_stubs(os.path.join(ROOT, "proto"), work)
        from loraserve.v1 import adapter_service_pb2 as apb, adapter_service_pb2_grpc as apbg
        from loraserve.v1 import inference_service_pb2 as ipb, inference_service_pb2_grpc as ipbg
        if args.register == "register_only" and "register_only" not in apb.LoadAdapterRequest.DESCRIPTOR.fields_by_name:
            raise Failure("this proto has no LoadAdapterRequest.register_only")
        runs = []
        for n in args.sweep:
            runs.append(run_one(args, (apb, apbg, ipb, ipbg), cfg, adapters, n, work))
            report(runs[-1])
    conf = {k: v for k, v in vars(args).items() if k not in ("prompt_len", "output_len")}
    doc = {"config": conf, "runs": runs}
    if len(runs) > 1:
        table(runs)
        plot = args.plot or (os.path.splitext(args.out)[0] + ".png" if args.out else None)
        if plot:
            import png_plot
            png_plot.plot(plot, [r["adapters"] for r in runs], ("req/s", [r["requests_per_s"] for r in runs]),
                          ("p99 ms", [(r["generate"]["e2e_ms"].get("p99") or r["score"]["e2e_ms"].get("p99")) for r in runs]))
            print(f"plot: {plot}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"report: {args.out}")
    bad = sum(r["errors_total"] + r["score_mismatches"] for r in runs)
    for r in runs:
        before, after = r.get("metrics_before") or {}, r.get("metrics_after") or {}
        for name in args.require_positive:
            grew = after.get(name, {}).get("sum", 0) - before.get(name, {}).get("sum", 0)
            if grew <= 0:
                print(f"loadgen: {name} did not grow in the run with {r['adapters']} adapters", file=sys.stderr)
                bad += 1
    return 1 if args.fail_on_error and bad else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failure as e:
        print(f"loadgen: {e}", file=sys.stderr)
        sys.exit(1)
