#!/usr/bin/python3
"""Bounded soak test of the real `loraserve`: several tenants, adapter churn and mixed traffic.

One server (tenants file, --state_dir, a small --adapter_budget_bytes so adapters are evicted and
reloaded all the time) runs for --seconds while
  - each operator tenant churns its adapters: load, upload, combine, delete (its `adapters` quota
    is hit on purpose: RESOURCE_EXHAUSTED then, and only then, is expected);
  - the admin merges and unmerges a shared adapter (a merge changes what every tenant runs on);
  - traffic threads of every tenant send Generate (streams, some cancelled by the client after
    their first token, some with deadlines too short to finish) and Score, on the base model, on
    stable adapters (two tenants own an adapter of the same name with different weights), on
    shared adapters and on adapters being churned;
  - one tenant floods past its concurrent_requests + queued_requests quota (RESOURCE_EXHAUSTED
    with retry-after-ms is expected for it only).
Every Score is compared, bit for bit (fp32), with the value computed once on the idle server
before the traffic for the same content and merge state (a call that overlapped a merge or
unmerge may match either state; one on an adapter being replaced may match the old or the new
content, or be NOT_FOUND). Any other status code is unexpected. At the end: 0 wrong answers,
0 unexpected codes, the server's resident memory within --rss_bound_mib of its value after
warm-up, no growth in its open file descriptors, evictions and reloads did happen, and the
server exits 0 on SIGTERM. Prints the figures (and writes them as JSON with --json).

Runs on the built-in demo model and adapters (no ../shared needed). Exit codes: 0 pass, 1 fail.
Usage: soak_test.py --loraserve BIN --proto_dir DIR --model DIR --adapter_root DIR
                    [--seconds 120] [--seed S] [--json FILE]
"""

import argparse
import collections
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testing"))
from loraserve_process import LoraserveProcess, adapter_files, generate_stubs, upload_requests  # noqa: E402 (tests/testing/)

SOURCES = ["demo-qv", "demo-mlp", "demo-dora", "demo-head"]
# Combined contents: (source content, weight), made with a LINEAR combination of one source.
COMBOS = {"combo-qv": ("demo-qv", 0.5), "combo-mlp": ("demo-mlp", 1.5)}
PROMPTS = [[1, 403, 407, 261, 378, 300, 42, 7], [1, 300, 301, 302, 303]]
MERGE_TARGET = "shared/m"     # the admin's merge toggles it; its content:
MERGE_CONTENT = "demo-mlp"    # no DoRA module shared with demo-dora, no second lm_head
TENANTS = {
    "ops": {"role": "admin", "token": "ops-1"},
    "acme": {"role": "operator", "token": "acme-1", "weight": 1,
             "quotas": {"adapters": 4, "concurrent_requests": 8, "queued_requests": 32}},
    "beta": {"role": "operator", "token": "beta-1", "weight": 2,
             "quotas": {"adapters": 6, "concurrent_requests": 8, "queued_requests": 32}},
    # A user running in acme's namespace (inference and reads only).
    "acme-app": {"role": "user", "token": "app-1", "namespace": "acme"},
    # The flooder: 4 threads against 1 running + 1 queued.
    "flood": {"role": "operator", "token": "flood-1",
              "quotas": {"concurrent_requests": 1, "queued_requests": 1}},
}
# Each operator's stable adapter "s" (same name, different content) and what it combines from it.
STABLE = {"acme": "demo-qv", "beta": "demo-mlp"}
TENANT_COMBO = {"acme": "combo-qv", "beta": "combo-mlp"}
CHURN_NAMES = ["c0", "c1", "c2", "c3", "c4"]


class Failure(Exception):
    pass


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise Failure("no VmRSS")


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class Soak:
    def __init__(self, args, stubs, work):
        import grpc
        self.grpc = grpc
        self.args = args
        self.pb, self.pb_grpc, self.inf_pb, self.inf_grpc, self.files_pb = stubs
        self.work = work
        self.rng = random.Random(args.seed)
        self.files = {d: adapter_files(os.path.join(args.adapter_root, d)) for d in SOURCES}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        # (merged: bool, content or "" for the base or MERGE_TARGET, prompt index) -> token_logprobs
        self.ref = {}
        # Merge state: epoch counter (odd while a merge/unmerge call is in flight) and merged flag.
        self.merge_epoch = 0
        self.merged = False
        # Per tenant, name -> {"content", "version", "busy" (an op on it is in flight), "pending"
        # (the content that op installs; None for a delete)}; absent names have content None.
        self.names = {t: {} for t in TENANTS}
        self.counts = collections.Counter()      # (kind, code) -> n
        self.unexpected = []                     # descriptions
        self.wrong = []
        self.score_checks = 0
        self.figures = {}

    # ---------------------------------------------------------------- plumbing

    def stub(self, tenant, kind):
        ch = self.channels[tenant]
        return self.pb_grpc.AdapterServiceStub(ch) if kind == "adapters" else self.inf_grpc.InferenceServiceStub(ch)

    def md(self, tenant):
        return (("authorization", "Bearer " + TENANTS[tenant]["token"]),)

    def note_unexpected(self, what):
        with self.lock:
            if len(self.unexpected) < 50:
                self.unexpected.append(what)
            self.counts[("unexpected", "")] += 1

    def count(self, kind, code):
        with self.lock:
            self.counts[(kind, code)] += 1

    def call(self, tenant, kind, method, request, timeout=30):
        stub = self.stub(tenant, kind)
        return getattr(stub, method)(request, metadata=self.md(tenant), timeout=timeout)

    def score(self, tenant, adapter, prompt, timeout=30):
        r = self.call(tenant, "inference", "Score",
                      self.inf_pb.ScoreRequest(adapter=adapter, token_ids=PROMPTS[prompt]), timeout)
        return list(r.token_logprobs)

    # ---------------------------------------------------------------- set-up on the idle server

    def start(self):
        tenants = []
        for tid, t in TENANTS.items():
            e = {"id": tid, "role": t["role"], "tokens": [t["token"]], "adapter_dir": ""}
            for k in ("weight", "quotas", "namespace"):
                if k in t:
                    e[k] = t[k]
            tenants.append(e)
        path = os.path.join(self.work, "tenants.json")
        with open(path, "w") as f:
            json.dump({"tenants": tenants}, f)
        self.server = LoraserveProcess(
            self.args.loraserve, self.args.model, self.args.adapter_root, self.work, name="soak",
            extra=("--tenants_file=" + path, "--state_dir=" + os.path.join(self.work, "state"),
                   "--adapter_budget_bytes=" + str(self.args.adapter_budget_bytes),
                   "--audit_log=" + os.path.join(self.work, "audit.jsonl"), "--shutdown_grace=5s"),
            failure=Failure)
        self.channels = {t: self.grpc.insecure_channel(self.server.addr) for t in TENANTS}
        for ch in self.channels.values():
            self.grpc.channel_ready_future(ch).result(timeout=30)

    def references(self):
        """Scores of every content on the idle server, unmerged and with MERGE_TARGET merged."""
        pb = self.pb
        for d in SOURCES:
            self.call("ops", "adapters", "LoadAdapter", pb.LoadAdapterRequest(name="ref-" + d, path=d))
        for c, (src, w) in COMBOS.items():
            req = pb.CombineAdaptersRequest(name="ref-" + c, combination_type=pb.COMBINATION_TYPE_LINEAR)
            req.sources.add(name="ref-" + src, weight=w)
            self.call("ops", "adapters", "CombineAdapters", req)
        self.call("ops", "adapters", "LoadAdapter", pb.LoadAdapterRequest(name=MERGE_TARGET, path=MERGE_CONTENT))
        contents = [""] + SOURCES + list(COMBOS) + [MERGE_TARGET]

        def name_of(c):
            return c if c in ("", MERGE_TARGET) else "ref-" + c

        def pass_(merged):
            out = {}
            for c in contents:
                for p in range(len(PROMPTS)):
                    out[(merged, c, p)] = self.score("ops", name_of(c), p)
            return out

        first = pass_(False)
        self.call("ops", "adapters", "MergeAdapter", pb.MergeAdapterRequest(name=MERGE_TARGET))
        merged = pass_(True)
        self.call("ops", "adapters", "UnmergeAdapter", pb.UnmergeAdapterRequest(name=MERGE_TARGET))
        again = pass_(False)
        if again != first:
            raise Failure("unmerge did not restore the idle server's Scores bit for bit")
        if all(merged[(True, c, p)] == first[(False, c, p)] for c in contents for p in range(len(PROMPTS))):
            raise Failure("merging changed no Score: the merge references would check nothing")
        self.ref.update(first)
        self.ref.update(merged)
        for d in SOURCES + list(COMBOS):
            self.call("ops", "adapters", "DeleteAdapter", pb.DeleteAdapterRequest(name="ref-" + d))
        # The stable adapters of the traffic, and a shared DoRA adapter.
        for t, content in STABLE.items():
            self.call(t, "adapters", "LoadAdapter", pb.LoadAdapterRequest(name="s", path=content))
            self.names[t]["s"] = {"content": content, "version": 0, "busy": False}
        self.call("ops", "adapters", "LoadAdapter", pb.LoadAdapterRequest(name="shared/d", path="demo-dora"))
        for t in ("acme", "beta"):
            for n in CHURN_NAMES:
                self.names[t][n] = {"content": None, "version": 0, "busy": False}
        self.names["acme-app"] = self.names["acme"]  # one namespace

    # ---------------------------------------------------------------- what a Score may equal

    def snapshot(self, tenant, adapter):
        """(merge epoch, merged, entry version, busy, content) as of now."""
        with self.lock:
            if adapter in ("", MERGE_TARGET, "shared/d"):
                content = {"": "", MERGE_TARGET: MERGE_TARGET, "shared/d": "demo-dora"}[adapter]
                return (self.merge_epoch, self.merged, 0, False, content, None)
            e = self.names[tenant][adapter]
            return (self.merge_epoch, self.merged, e["version"], e["busy"], e["content"], e.get("pending"))

    def allowed_states(self, before, after):
        if before[0] == after[0] and before[0] % 2 == 0:
            return {before[1]}
        return {False, True}

    def allowed_contents(self, before, after):
        if before[2] == after[2] and not before[3] and not after[3]:
            return {before[4]}, False
        # Replaced meanwhile: the old content, the new one, or the one an op in flight installs.
        return {before[4], after[4], before[5], after[5]}, True

    # ---------------------------------------------------------------- workers

    def traffic(self, tenant, seed, targets):
        rng = random.Random(seed)
        while not self.stop.is_set():
            adapter = rng.choice(targets())
            if rng.random() < 0.5:
                self.one_score(tenant, adapter, rng)
            else:
                self.one_generate(tenant, adapter, rng)

    def back_off(self, e):
        """A refused client waits as long as the server's retry-after-ms says (at most 200 ms)."""
        if e.code() == self.grpc.StatusCode.RESOURCE_EXHAUSTED:
            ms = dict(e.trailing_metadata() or ()).get("retry-after-ms")
            time.sleep(min(float(ms) if ms else 50.0, 200.0) / 1000.0)

    def one_score(self, tenant, adapter, rng):
        p = rng.randrange(len(PROMPTS))
        before = self.snapshot(tenant, adapter)
        try:
            got = self.score(tenant, adapter, p)
            code = "OK"
        except self.grpc.RpcError as e:
            got, code = None, e.code().name
            details = e.details()
            self.back_off(e)
        after = self.snapshot(tenant, adapter)
        self.count("score", code)
        contents, changing = self.allowed_contents(before, after)
        if code == "NOT_FOUND" and (None in contents or changing):
            return
        if code == "RESOURCE_EXHAUSTED" and tenant == "flood":
            return
        if code != "OK":
            self.note_unexpected(f"Score {tenant} {adapter!r}: {code} {details}")
            return
        states = self.allowed_states(before, after)
        want = [self.ref[(m, c, p)] for m in states for c in contents if c is not None]
        with self.lock:
            self.score_checks += 1
        if got not in want:
            matches = sorted(f"{c or 'base'}{'+merged' if m else ''}" for (m, c, q), v in self.ref.items()
                             if q == p and v == got)
            with self.lock:
                self.wrong.append(f"Score {tenant} {adapter!r} prompt {p}: {got[:3]}... expected contents "
                                  f"{sorted(str(c) for c in contents)} merged {sorted(states)}, "
                                  f"matches {matches or 'no reference'} (before {before}, after {after})")

    def one_generate(self, tenant, adapter, rng):
        before = self.snapshot(tenant, adapter)
        mode = rng.choices(["full", "cancel", "deadline"], weights=[75, 15, 10])[0]
        n = rng.randint(1, 24)
        req = self.inf_pb.GenerateRequest(adapter=adapter, token_ids=PROMPTS[rng.randrange(len(PROMPTS))])
        req.sampling.max_new_tokens = n
        req.sampling.ignore_eos = True
        if rng.random() < 0.5:
            req.sampling.temperature = 0.0
        else:
            req.sampling.temperature = 0.8
            req.sampling.seed = rng.randrange(1 << 30)
        timeout = 30 if mode != "deadline" else rng.choice([0.002, 0.01, 0.05])
        stream = self.stub(tenant, "inference").Generate(req, metadata=self.md(tenant), timeout=timeout)
        tokens = 0
        summary = None
        try:
            for msg in stream:
                tokens += len(msg.tokens)
                if msg.HasField("summary"):
                    summary = msg.summary
                if mode == "cancel" and tokens >= 1:
                    stream.cancel()
            code = "OK"
        except self.grpc.RpcError as e:
            code = e.code().name
            details = e.details()
            self.back_off(e)
        after = self.snapshot(tenant, adapter)
        self.count("generate_" + mode, code)
        if code == "OK":
            if summary is None or tokens != n or summary.completion_tokens != n:
                self.note_unexpected(f"Generate {tenant} {adapter!r}: {tokens} tokens, summary {summary}, wanted {n}")
            return
        contents, changing = self.allowed_contents(before, after)
        if code == "CANCELLED" and mode == "cancel":
            return
        if code == "DEADLINE_EXCEEDED" and mode == "deadline":
            return
        if code == "NOT_FOUND" and (None in contents or changing):
            return
        if code == "RESOURCE_EXHAUSTED" and tenant == "flood":
            return
        self.note_unexpected(f"Generate[{mode}] {tenant} {adapter!r}: {code} {details}")

    def churn(self, tenant, seed):
        """Load, upload, combine and delete the tenant's churn names."""
        rng = random.Random(seed)
        pb = self.pb
        quota = TENANTS[tenant]["quotas"]["adapters"]
        while not self.stop.is_set():
            with self.lock:
                present = [n for n in CHURN_NAMES if self.names[tenant][n]["content"] is not None]
                absent = [n for n in CHURN_NAMES if n not in present]
                held = 1 + len(present)  # "s" too
            ops = (["load", "upload", "combine"] if absent else []) + (["delete"] * 2 if present else [])
            op = rng.choice(ops)
            name = rng.choice(absent if op != "delete" else present)
            content = None
            if op in ("load", "upload"):
                content = rng.choice(SOURCES)
            elif op == "combine":
                content = TENANT_COMBO[tenant]
            with self.lock:
                self.names[tenant][name]["busy"] = True
                self.names[tenant][name]["pending"] = content
            over_quota = op != "delete" and held >= quota
            try:
                if op == "load":
                    self.call(tenant, "adapters", "LoadAdapter", pb.LoadAdapterRequest(name=name, path=content))
                elif op == "upload":
                    self.stub(tenant, "adapters").UploadAdapter(
                        upload_requests(pb, self.files_pb, name, self.files[content], rng.choice([4096, 65536])),
                        metadata=self.md(tenant), timeout=30)
                elif op == "combine":
                    req = pb.CombineAdaptersRequest(name=name, combination_type=pb.COMBINATION_TYPE_LINEAR)
                    req.sources.add(name="s", weight=COMBOS[content][1])
                    self.call(tenant, "adapters", "CombineAdapters", req)
                else:
                    self.call(tenant, "adapters", "DeleteAdapter", pb.DeleteAdapterRequest(name=name))
                code = "OK"
            except self.grpc.RpcError as e:
                code = e.code().name
                details = e.details()
                retry_after = dict(e.trailing_metadata() or ()).get("retry-after-ms")
            with self.lock:
                e_ = self.names[tenant][name]
                if code == "OK":
                    e_["content"] = None if op == "delete" else content
                    e_["version"] += 1
                e_["busy"] = False
                e_["pending"] = None
            self.count(op, code)
            if code == "OK" and over_quota:
                self.note_unexpected(f"{op} {tenant} {name}: OK although the tenant held {held} of {quota} adapters")
            elif code == "RESOURCE_EXHAUSTED" and over_quota:
                if retry_after is None:
                    self.note_unexpected(f"{op} {tenant} {name}: RESOURCE_EXHAUSTED without retry-after-ms")
            elif code != "OK":
                self.note_unexpected(f"{op} {tenant} {name}: {code} {details}")
            time.sleep(rng.uniform(0.0, 0.2))

    def merger(self, seed):
        rng = random.Random(seed)
        pb = self.pb
        while not self.stop.is_set():
            time.sleep(rng.uniform(1.0, 3.0))
            with self.lock:
                self.merge_epoch += 1
                op = "unmerge" if self.merged else "merge"
            try:
                if op == "merge":
                    self.call("ops", "adapters", "MergeAdapter", pb.MergeAdapterRequest(name=MERGE_TARGET))
                else:
                    self.call("ops", "adapters", "UnmergeAdapter", pb.UnmergeAdapterRequest(name=MERGE_TARGET))
                code = "OK"
            except self.grpc.RpcError as e:
                code = e.code().name
                self.note_unexpected(f"{op} {MERGE_TARGET}: {code} {e.details()}")
            with self.lock:
                if code == "OK":
                    self.merged = op == "merge"
                self.merge_epoch += 1
            self.count(op, code)
        if self.merged:  # leave it unmerged
            self.call("ops", "adapters", "UnmergeAdapter", pb.UnmergeAdapterRequest(name=MERGE_TARGET))
            self.merged = False

    # ---------------------------------------------------------------- the run

    def metric(self, name, labels=None):
        import urllib.request
        text = urllib.request.urlopen(f"http://{self.server.metrics_addr}/metrics", timeout=10).read().decode()
        total, seen = 0.0, False
        for line in text.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] != name:
                continue
            if labels and not all(f'{k}="{v}"' in head for k, v in labels.items()):
                continue
            total += float(value)
            seen = True
        if not seen:
            raise Failure(f"/metrics has no {name}")
        return total

    def run(self):
        t0 = time.time()
        self.start()
        self.references()
        pid = self.server.proc.pid
        setup_s = time.time() - t0

        def own(t):
            return lambda: ["", "s", "shared/d", MERGE_TARGET] + CHURN_NAMES

        workers = []
        seed = self.args.seed
        plan = [("acme", own("acme")), ("acme", own("acme")), ("beta", own("beta")), ("beta", own("beta")),
                ("acme-app", own("acme-app")), ("flood", lambda: ["", "shared/d"])] + \
               [("flood", lambda: ["", "shared/d"])] * 3
        for i, (tenant, targets) in enumerate(plan):
            workers.append(threading.Thread(target=self.guard, args=(self.traffic, tenant, seed * 100 + i, targets)))
        workers.append(threading.Thread(target=self.guard, args=(self.churn, "acme", seed * 100 + 50)))
        workers.append(threading.Thread(target=self.guard, args=(self.churn, "beta", seed * 100 + 51)))
        workers.append(threading.Thread(target=self.guard, args=(self.merger, seed * 100 + 52)))
        for w in workers:
            w.start()
        warm = min(20.0, self.args.seconds / 4)
        time.sleep(warm)
        rss_warm, fds_warm = rss_kib(pid), open_fds(pid)
        rss_peak = rss_warm
        end = t0 + setup_s + self.args.seconds
        while time.time() < end and not self.stop.is_set():
            time.sleep(1.0)
            rss_peak = max(rss_peak, rss_kib(pid))
            if self.server.proc.poll() is not None:
                raise Failure("the server exited during the soak:\n" + self.server.logs()[-4000:])
        self.stop.set()
        for w in workers:
            w.join(timeout=60)
            if w.is_alive():
                raise Failure("a worker did not stop within 60 s")
        time.sleep(1.0)
        rss_end, fds_end = rss_kib(pid), open_fds(pid)
        evictions = self.metric("loraserve_adapter_evictions_total")
        loads = self.metric("loraserve_adapter_load_duration_seconds_count")
        steps = self.metric("loraserve_engine_steps_total")
        multi = self.metric("loraserve_multi_adapter_steps_total")
        code = self.server.stop()
        by_kind = collections.defaultdict(dict)
        for (kind, c), n in sorted(self.counts.items()):
            by_kind[kind][c] = n
        self.figures = {
            "seconds": round(time.time() - t0 - setup_s, 1), "setup_s": round(setup_s, 1), "seed": self.args.seed,
            "calls": dict(by_kind), "score_checks": self.score_checks, "wrong_answers": len(self.wrong),
            "unexpected_codes": self.counts.get(("unexpected", ""), 0),
            "rss_mib": {"warm": round(rss_warm / 1024, 1), "peak": round(rss_peak / 1024, 1),
                        "end": round(rss_end / 1024, 1), "bound_over_warm": self.args.rss_bound_mib},
            "fds": {"warm": fds_warm, "end": fds_end},
            "evictions": evictions, "adapter_loads": loads, "engine_steps": steps, "multi_adapter_steps": multi,
            "exit_code": code,
        }
        problems = []
        if self.wrong:
            problems.append(f"{len(self.wrong)} wrong Scores, first: " + "; ".join(self.wrong[:5]))
        if self.unexpected:
            problems.append(f"{self.figures['unexpected_codes']} unexpected results, first: " +
                            "; ".join(self.unexpected[:10]))
        if rss_end > rss_warm + self.args.rss_bound_mib * 1024:
            problems.append(f"resident memory grew from {rss_warm} KiB after warm-up to {rss_end} KiB")
        if fds_end > fds_warm:
            problems.append(f"open file descriptors grew from {fds_warm} after warm-up to {fds_end}")
        if evictions <= 0:
            problems.append("no adapter was evicted: --adapter_budget_bytes did not bite")
        if self.score_checks < 100:
            problems.append(f"only {self.score_checks} Scores were checked")
        for kind in ("load", "upload", "combine", "delete", "merge", "unmerge", "generate_full", "score"):
            if by_kind.get(kind, {}).get("OK", 0) == 0:
                problems.append(f"no successful {kind}")
        for kind, code_ in (("generate_cancel", "CANCELLED"), ("generate_deadline", "DEADLINE_EXCEEDED")):
            if by_kind.get(kind, {}).get(code_, 0) == 0:
                problems.append(f"no {kind} ended {code_}")
        if by_kind.get("score", {}).get("RESOURCE_EXHAUSTED", 0) + \
                sum(v.get("RESOURCE_EXHAUSTED", 0) for k, v in by_kind.items() if k.startswith("generate")) == 0:
            problems.append("the flooding tenant never hit its quota")
        if code != 0:
            problems.append(f"the server exited {code} on SIGTERM")
        if problems:
            raise Failure("\n".join(problems))

    def guard(self, fn, *a):
        try:
            fn(*a)
        except Exception:  # noqa: BLE001 (any worker crash fails the run)
            self.note_unexpected("worker crashed: " + traceback.format_exc())
            self.stop.set()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loraserve", required=True)
    ap.add_argument("--proto_dir", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter_root", required=True)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument("--adapter_budget_bytes", type=int, default=600000,
                    help="the server's resident adapter budget (small: evictions all the time)")
    ap.add_argument("--rss_bound_mib", type=float, default=32,
                    help="largest allowed growth of the server's RSS from warm-up to the end")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="loraserve-soak-")
    soak = None
    try:
        generate_stubs(args.proto_dir, work)
        from loraserve.v1 import adapter_service_pb2 as pb, adapter_service_pb2_grpc as pb_grpc
        from loraserve.v1 import files_pb2 as files_pb
        from loraserve.v1 import inference_service_pb2 as inf_pb, inference_service_pb2_grpc as inf_grpc
        soak = Soak(args, (pb, pb_grpc, inf_pb, inf_grpc, files_pb), work)
        soak.run()
        print(json.dumps(soak.figures, indent=1))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(soak.figures, f, indent=1)
        print("soak: PASS")
        shutil.rmtree(work, ignore_errors=True)
        return 0
    except Failure as e:
        if soak is not None and soak.figures:
            print(json.dumps(soak.figures, indent=1))
        print(f"soak: FAIL: {e}\n(work dir kept: {work})")
        if soak is not None and getattr(soak, "server", None) is not None:
            if soak.server.proc.poll() is None:
                soak.server.proc.kill()
            print(soak.server.logs()[-3000:])
        return 1


if __name__ == "__main__":
    sys.exit(main())
