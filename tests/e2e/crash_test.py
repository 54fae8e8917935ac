#!/usr/bin/python3
"""Crash test of --state_dir: SIGKILL the real `loraserve` at seeded random moments of load, upload,
merge, unmerge, combine and delete, restart it on the same state directory, and check that
  - every acknowledged operation is there (names, sources, checksums, merged or not);
  - the operation in flight at the kill is either wholly there or not at all (an upload that
    landed has its whole checksum; nothing is left LOADING);
  - every adapter's Score (and the base model's) equals, bit for bit, the value it had before the
    crash in the same merge state (merges are restored in their order);
  - files/ holds exactly the files of the uploaded and combined adapters (no half uploads left);
then corrupt records (truncated, altered, garbage, wrong name) are skipped with a logged error and
the server still starts with the rest.

Runs on the built-in demo model and adapters (no ../shared needed). Prints the figures.
Exit codes: 0 pass, 1 fail.
Usage: crash_test.py --loraserve BIN --proto_dir DIR --model DIR --adapter_root DIR
                     [--kills N] [--seed S]
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testing"))
from loraserve_process import ADAPTER_FILES, LoraserveProcess, adapter_files, generate_stubs, upload_requests  # noqa: E402 (tests/testing/)

NAMES = ["a0", "a1", "a2", "a3", "a4"]
TOKENS = [1, 403, 407, 261, 378, 300, 42, 7]


class Failure(Exception):
    pass


def adapter_checksum(directory):
    """loraserve.v1.Adapter.checksum of a PEFT directory (transfer/file_transfer.h)."""
    files = adapter_files(directory)
    lines = "".join(f"{f} {hashlib.sha256(files[f]).hexdigest()}\n" for f in ADAPTER_FILES)
    return hashlib.sha256(lines.encode()).hexdigest()


class Crash:
    def __init__(self, args, pb, pb_grpc, inf_pb, inf_grpc, files_pb, work):
        import grpc
        self.grpc = grpc
        self.args, self.pb, self.pb_grpc, self.inf_pb, self.inf_grpc, self.files_pb = \
            args, pb, pb_grpc, inf_pb, inf_grpc, files_pb
        self.work = work
        self.state_dir = os.path.join(work, "state")
        self.rng = random.Random(args.seed)
        self.sources = sorted(d for d in os.listdir(args.adapter_root)
                              if os.path.isfile(os.path.join(args.adapter_root, d, "adapter_config.json")))
        self.checksums = {d: adapter_checksum(os.path.join(args.adapter_root, d)) for d in self.sources}
        self.files = {d: adapter_files(os.path.join(args.adapter_root, d)) for d in self.sources}
        # The acknowledged state: name -> {"kind", "id" (content identity), "checksum", "merged"};
        # merge order as a list of names.
        self.model = {}
        self.merged = []
        self.generation = 0
        # (tuple of merged ids in order, id or "" for the base) -> token_logprobs
        self.scores = {}
        self.server = None
        self.starts = 0
        self.figures = {"kills": 0, "ops_acked": 0, "ops_in_flight_landed": 0, "ops_in_flight_lost": 0,
                        "ops_refused": 0, "score_checks": 0, "restarts_ms": []}
        self.op_counts = {}
        self.latency = {}  # op -> seconds of completed calls

    # ---------------------------------------------------------------- server

    def start(self):
        self.starts += 1
        t = time.time()
        self.server = LoraserveProcess(self.args.loraserve, self.args.model, self.args.adapter_root, self.work,
                                       name=f"server{self.starts}",
                                       extra=("--state_dir=" + self.state_dir,), failure=Failure)
        self.channel = self.grpc.insecure_channel(self.server.addr)
        self.grpc.channel_ready_future(self.channel).result(timeout=30)
        self.adapters = self.pb_grpc.AdapterServiceStub(self.channel)
        self.inference = self.inf_grpc.InferenceServiceStub(self.channel)
        self.figures["restarts_ms"].append((time.time() - t) * 1000)

    def kill(self):
        self.server.proc.kill()
        self.server.proc.wait()
        self.channel.close()
        self.figures["kills"] += 1

    # ---------------------------------------------------------------- operations

    def pick_op(self):
        absent = [n for n in NAMES if n not in self.model]
        present = sorted(self.model)
        unmerged = [n for n in present if not self.model[n]["merged"]]
        choices = []
        if absent:
            choices += ["load", "upload"]
            if present:
                choices.append("combine")
        if unmerged:
            choices += ["merge", "delete"]
        if self.merged:
            choices.append("unmerge")
        op = self.rng.choice(choices)
        if op in ("load", "upload"):
            return op, {"name": self.rng.choice(absent), "source": self.rng.choice(self.sources)}
        if op == "combine":
            k = min(len(present), self.rng.choice([1, 2]))
            srcs = self.rng.sample(present, k)
            return op, {"name": self.rng.choice(absent), "sources": srcs,
                        "weights": [self.rng.choice([0.5, 1.0, 1.5]) for _ in srcs]}
        if op in ("merge", "delete"):
            return op, {"name": self.rng.choice(unmerged)}
        return op, {"name": self.rng.choice(self.merged)}

    def issue(self, op, a):
        """The call's future."""
        pb = self.pb
        if op == "load":
            return self.adapters.LoadAdapter.future(pb.LoadAdapterRequest(name=a["name"], path=a["source"]), timeout=30)
        if op == "upload":
            return self.adapters.UploadAdapter.future(
                upload_requests(self.pb, self.files_pb, a["name"], self.files[a["source"]], 16384), timeout=30)
        if op == "combine":
            req = pb.CombineAdaptersRequest(name=a["name"], combination_type=pb.COMBINATION_TYPE_LINEAR)
            for n, w in zip(a["sources"], a["weights"]):
                req.sources.add(name=n, weight=w)
            return self.adapters.CombineAdapters.future(req, timeout=30)
        if op == "merge":
            return self.adapters.MergeAdapter.future(pb.MergeAdapterRequest(name=a["name"]), timeout=30)
        if op == "unmerge":
            return self.adapters.UnmergeAdapter.future(pb.UnmergeAdapterRequest(name=a["name"]), timeout=30)
        return self.adapters.DeleteAdapter.future(pb.DeleteAdapterRequest(name=a["name"]), timeout=30)

    def apply(self, op, a):
        """The model after `op` took effect."""
        n = a["name"]
        if op in ("load", "upload"):
            # The name is part of the identity: a merged adapter's own rows skip the LoRA path,
            # so the same files under another name score differently while one of them is merged.
            self.model[n] = {"kind": op, "id": f"{n}:{self.checksums[a['source']]}",
                             "checksum": self.checksums[a["source"]], "merged": False}
        elif op == "combine":
            self.generation += 1
            self.model[n] = {"kind": "combine", "id": f"combined-{self.generation}", "checksum": "",
                             "merged": False}
        elif op == "merge":
            self.model[n]["merged"] = True
            self.merged.append(n)
        elif op == "unmerge":
            self.model[n]["merged"] = False
            self.merged.remove(n)
        else:
            del self.model[n]

    REFUSALS = {"merge": {"FAILED_PRECONDITION", "INVALID_ARGUMENT"},
                "combine": {"FAILED_PRECONDITION", "INVALID_ARGUMENT"}}

    def outcome(self, op, fut):
        """'ok', 'refused' (an accepted refusal: nothing changed) or 'lost' (the kill cut it)."""
        try:
            fut.result()
            return "ok"
        except self.grpc.RpcError as e:
            code = e.code().name
            if code in self.REFUSALS.get(op, ()):
                return "refused"
            if code in ("UNAVAILABLE", "CANCELLED", "UNKNOWN", "INTERNAL") and self.server.proc.poll() is not None:
                return "lost"
            raise Failure(f"{op}: unexpected {code}: {e.details()}")

    # ---------------------------------------------------------------- checks

    def listing(self):
        return {a.name: a for a in self.adapters.ListAdapters(self.pb.ListAdaptersRequest(), timeout=30).adapters}

    def merged_key(self):
        return tuple(self.model[n]["id"] for n in self.merged)

    def score_all(self, compare):
        key = self.merged_key()
        for name in [""] + sorted(self.model):
            got = list(self.inference.Score(self.inf_pb.ScoreRequest(adapter=name, token_ids=TOKENS),
                                            timeout=30).token_logprobs)
            k = (key, self.model[name]["id"] if name else "")
            if k in self.scores:
                if compare:
                    self.figures["score_checks"] += 1
                if got != self.scores[k]:
                    raise Failure(f"Score of {name or 'the base model'} after restart {self.starts} differs "
                                  f"from before (merged {self.merged}): {got} vs {self.scores[k]}")
            else:
                self.scores[k] = got

    def resolve(self, op, a, listed):
        """Whether the in-flight op landed, judged from the listing (and checked whole)."""
        n = a["name"]
        if op in ("load", "upload", "combine"):
            return n in listed
        if op == "merge":
            return n in listed and listed[n].state == self.pb.ADAPTER_STATE_MERGED
        if op == "unmerge":
            return n in listed and listed[n].state != self.pb.ADAPTER_STATE_MERGED
        return n not in listed

    def verify(self, in_flight):
        listed = self.listing()
        if in_flight is not None:
            op, a = in_flight
            if self.resolve(op, a, listed):
                self.apply(op, a)
                self.figures["ops_in_flight_landed"] += 1
            else:
                self.figures["ops_in_flight_lost"] += 1
        want = set(self.model)
        if set(listed) != want:
            raise Failure(f"after restart {self.starts}: adapters {sorted(listed)}, expected {sorted(want)} "
                          f"(in flight: {in_flight})")
        source_of = {"load": self.pb.ADAPTER_SOURCE_ADAPTER_ROOT, "upload": self.pb.ADAPTER_SOURCE_UPLOAD,
                     "combine": self.pb.ADAPTER_SOURCE_COMBINED}
        for n, m in self.model.items():
            a = listed[n]
            merged = a.state == self.pb.ADAPTER_STATE_MERGED
            if a.state == self.pb.ADAPTER_STATE_LOADING or merged != m["merged"]:
                raise Failure(f"after restart {self.starts}: {n} is in state {a.state}, expected merged={m['merged']}")
            if a.source != source_of[m["kind"]] or a.checksum != m["checksum"]:
                raise Failure(f"after restart {self.starts}: {n} has source {a.source} checksum {a.checksum!r}, "
                              f"expected {m['kind']} {m['checksum']!r}")
        files = sorted(os.listdir(os.path.join(self.state_dir, "files")))
        expected_files = sum(1 for m in self.model.values() if m["kind"] in ("upload", "combine"))
        if len(files) != expected_files:
            raise Failure(f"after restart {self.starts}: files/ holds {files}, expected {expected_files} entries")
        self.score_all(compare=True)

    # ---------------------------------------------------------------- the run

    def round(self):
        for _ in range(self.rng.randint(0, 4)):
            op, a = self.pick_op()
            t = time.time()
            result = self.outcome(op, self.issue(op, a))
            self.latency.setdefault(op, []).append(time.time() - t)
            if result == "ok":
                self.apply(op, a)
                self.figures["ops_acked"] += 1
            else:
                self.figures["ops_refused"] += 1
            self.op_counts[op] = self.op_counts.get(op, 0) + 1
            self.score_all(compare=False)
        # The kill: during an operation (most rounds) or between two.
        in_flight = None
        if self.rng.random() < 0.85:
            op, a = self.pick_op()
            self.op_counts[op] = self.op_counts.get(op, 0) + 1
            fut = self.issue(op, a)
            # Aim inside the call: up to 1.2x its median latency so far (1 to 10 ms here).
            lat = sorted(self.latency.get(op, [0.005]))
            time.sleep(self.rng.uniform(0, 1.2 * lat[len(lat) // 2]))
            self.kill()
            result = self.outcome(op, fut)
            if result == "ok":  # acknowledged before it died: must be there
                self.apply(op, a)
                self.figures["ops_acked"] += 1
            elif result == "refused":
                self.figures["ops_refused"] += 1
            else:
                in_flight = (op, a)
        else:
            time.sleep(self.rng.uniform(0, 0.01))
            self.kill()
        self.start()
        self.verify(in_flight)

    def corrupt_records(self):
        """Truncated, altered, garbage and misnamed records: skipped, logged, the server starts."""
        self.server.stop()
        adapters_dir = os.path.join(self.state_dir, "adapters")
        # Good records of our own to damage (loaded on a fresh start below).
        self.start()
        for n in ("c0", "c1", "c2"):
            self.adapters.LoadAdapter(self.pb.LoadAdapterRequest(name=n, path=self.sources[0]), timeout=30)
        self.server.stop()
        with open(os.path.join(adapters_dir, "c0.json"), "r+b") as f:
            data = f.read()
            f.seek(0)
            f.truncate()
            f.write(data[:len(data) // 2])  # truncated
        with open(os.path.join(adapters_dir, "c1.json")) as f:
            doc = json.load(f)
        doc["record"]["root_path"] = self.sources[1]  # altered: the digest no longer matches
        with open(os.path.join(adapters_dir, "c1.json"), "w") as f:
            json.dump(doc, f)
        shutil.copy(os.path.join(adapters_dir, "c2.json"), os.path.join(adapters_dir, "c3.json"))  # misnamed
        with open(os.path.join(adapters_dir, "garbage.json"), "wb") as f:
            f.write(os.urandom(200))
        with open(os.path.join(adapters_dir, "c4.json.tmp.123.0"), "w") as f:
            f.write("{")  # an interrupted write
        self.start()
        listed = self.listing()
        log = self.server.logs()
        skipped = log.count("event=state_record_skipped")
        for n in ("c0", "c1", "c3"):
            if n in listed:
                raise Failure(f"corrupt record {n} was restored")
        if "c2" not in listed or not set(self.model) <= set(listed):
            raise Failure(f"good records lost next to corrupt ones: {sorted(listed)}")
        if skipped != 4:
            raise Failure(f"expected 4 event=state_record_skipped lines, got {skipped}:\n{log}")
        quarantined = sorted(os.listdir(os.path.join(self.state_dir, "quarantine")))
        if len(quarantined) != 4 or os.path.exists(os.path.join(adapters_dir, "c4.json.tmp.123.0")):
            raise Failure(f"quarantine holds {quarantined}; the temporary file should be gone")
        self.figures["corrupt_records_skipped"] = skipped
        # A second start finds nothing more to skip (no crash loop, nothing re-reported).
        self.server.stop()
        self.start()
        if self.server.logs().count("event=state_record_skipped") != 0:
            raise Failure("the quarantined records were read again")

    def run(self):
        self.start()
        self.score_all(compare=False)
        while self.figures["kills"] < self.args.kills:
            self.round()
        self.corrupt_records()
        code = self.server.stop()
        if code != 0:
            raise Failure(f"loraserve exited with {code} after SIGTERM")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loraserve", required=True)
    ap.add_argument("--proto_dir", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter_root", required=True)
    ap.add_argument("--kills", type=int, default=60)
    ap.add_argument("--seed", type=int, default=int(os.environ.get("LORASERVE_CRASH_SEED", "20261207")))
    args = ap.parse_args()

    import grpc  # noqa: F401 (Debian python3-grpcio)

    with tempfile.TemporaryDirectory(prefix="loraserve-crash-") as work:
        generate_stubs(args.proto_dir, work)
        from loraserve.v1 import adapter_service_pb2, adapter_service_pb2_grpc
        from loraserve.v1 import inference_service_pb2, inference_service_pb2_grpc, files_pb2

        t = Crash(args, adapter_service_pb2, adapter_service_pb2_grpc, inference_service_pb2,
                  inference_service_pb2_grpc, files_pb2, work)
        start = time.time()
        try:
            t.run()
        except Exception as e:  # noqa: BLE001 (gRPC errors too: show them whole)
            if not isinstance(e, Failure):
                traceback.print_exc()
            print(f"FAIL (seed {args.seed}, kill {t.figures['kills']}) {e}")
            if t.server is not None:
                print("--- server log ---\n" + t.server.logs()[-10000:])
            return 1
        f = t.figures
        ms = sorted(f["restarts_ms"])
        print(f"seed {args.seed}: {f['kills']} SIGKILLs in {time.time() - start:.1f} s; operations issued "
              f"{dict(sorted(t.op_counts.items()))}; acknowledged {f['ops_acked']}, refused {f['ops_refused']}; "
              f"in flight at a kill: landed whole {f['ops_in_flight_landed']}, absent {f['ops_in_flight_lost']}, "
              f"half there 0; bit-exact Score checks after restarts {f['score_checks']}, mismatches 0; "
              f"restart to SERVING p50 {ms[len(ms) // 2]:.0f} ms; corrupt records skipped "
              f"{f['corrupt_records_skipped']} (server started)")
        print("PASS")
        return 0


if __name__ == "__main__":
    sys.exit(main())
