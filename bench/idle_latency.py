#!/usr/bin/python3
"""Latency on an idle server (issue 13 item 8): a 3-token Score with top_logprobs=1 and a
Tokenize on the same grpcio channel, one call at a time, against the real `loraserve`.
Prints p50/p99 of each and the Score - Tokenize gap at p50. Then, unless --busy_seconds=0, the same
server under load: --busy_threads streams of Generate (greedy, 32 new tokens, eos ignored) for
--busy_seconds, with Scores beside them, reporting generated tokens/s and requests/s (batching under
load) and the Score latency then. --compare BINARY runs everything against a second binary in the
same run (a baseline) and prints both.

    bench/idle_latency.py --loraserve build/server/loraserve --model build/default-model \
        [--n 2000] [--extra=--max_wait=1ms] [--compare /path/to/baseline/loraserve]
Needs Debian's python3-grpcio, protoc and grpc_python_plugin (as tests/e2e).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "testing"))
from loraserve_process import LoraserveProcess  # noqa: E402


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def measure(binary, args, pb, pbg, work):
    import grpc
    server = LoraserveProcess(binary, args.model, work, work, extra=args.extra)
    out = {}
    try:
        channel = grpc.insecure_channel(server.addr)
        stub = pbg.InferenceServiceStub(channel)
        score = pb.ScoreRequest(token_ids=[1, 403, 407], top_logprobs=1)
        tok = pb.TokenizeRequest(text="Once upon a time")
        for _ in range(200):  # warm-up
            stub.Score(score)
            stub.Tokenize(tok)
        times = {"Score": [], "Tokenize": []}
        for _ in range(args.n):
            for name, call, req in (("Score", stub.Score, score), ("Tokenize", stub.Tokenize, tok)):
                t0 = time.perf_counter()
                call(req)
                times[name].append((time.perf_counter() - t0) * 1e6)
        out["idle"] = times
        if args.busy_seconds > 0:
            gen = pb.GenerateRequest(token_ids=[1, 403, 407, 261], sampling=pb.SamplingOptions(
                max_new_tokens=32, ignore_eos=True))
            stop = time.monotonic() + args.busy_seconds
            counts = {"tokens": 0, "requests": 0, "errors": 0}
            lock = threading.Lock()

            def generate():
                c = grpc.insecure_channel(server.addr)
                s = pbg.InferenceServiceStub(c)
                while time.monotonic() < stop:
                    try:
                        n = sum(len(r.tokens) for r in s.Generate(gen))
                        with lock:
                            counts["tokens"] += n
                            counts["requests"] += 1
                    except grpc.RpcError:
                        with lock:
                            counts["errors"] += 1
                c.close()

            threads = [threading.Thread(target=generate) for _ in range(args.busy_threads)]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            busy_scores = []
            while time.monotonic() < stop:
                s0 = time.perf_counter()
                stub.Score(score)
                busy_scores.append((time.perf_counter() - s0) * 1e6)
                time.sleep(0.002)
            for t in threads:
                t.join()
            elapsed = time.monotonic() - t0
            out["busy"] = {"tok_per_s": counts["tokens"] / elapsed, "req_per_s": counts["requests"] / elapsed,
                           "errors": counts["errors"], "scores": busy_scores}
        channel.close()
    finally:
        server.stop()
    return out


def report(label, r):
    print(f"== {label}")
    times = r["idle"]
    for name, xs in times.items():
        print(f"{name:9s} p50 {percentile(xs, 50):8.1f} us   p99 {percentile(xs, 99):8.1f} us   (idle)")
    print(f"Score - Tokenize at p50: {percentile(times['Score'], 50) - percentile(times['Tokenize'], 50):.1f} us")
    if "busy" in r:
        b = r["busy"]
        print(f"under load: Generate {b['tok_per_s']:.0f} tok/s, {b['req_per_s']:.1f} req/s, {b['errors']} errors; "
              f"Score p50 {percentile(b['scores'], 50):.1f} us p99 {percentile(b['scores'], 99):.1f} us")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loraserve", required=True)
    ap.add_argument("--compare", help="a baseline loraserve binary measured in the same run")
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--busy_seconds", type=float, default=10)
    ap.add_argument("--busy_threads", type=int, default=8)
    ap.add_argument("--extra", action="append", default=[], help="extra loraserve flags")
    args = ap.parse_args()
    proto_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proto")
    with tempfile.TemporaryDirectory() as work:
        gen = os.path.join(work, "gen")
        os.makedirs(gen)
        subprocess.run(["protoc", "-I", proto_dir, "--python_out=" + gen, "--grpc_out=" + gen,
                        "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
                        "loraserve/v1/files.proto", "loraserve/v1/inference_service.proto"], check=True)
        sys.path.insert(0, gen)
        from loraserve.v1 import inference_service_pb2 as pb, inference_service_pb2_grpc as pbg
        runs = [("loraserve " + args.loraserve, args.loraserve)]
        if args.compare:
            runs.append(("baseline " + args.compare, args.compare))
        results = []
        for i, (label, binary) in enumerate(runs):
            run_dir = os.path.join(work, f"run{i}")  # each server its own port file and logs
            os.makedirs(run_dir)
            results.append((label, measure(binary, args, pb, pbg, run_dir)))
    for label, r in results:
        report(label, r)
    if len(results) == 2 and "busy" in results[0][1]:
        a, b = results[0][1]["busy"], results[1][1]["busy"]
        print(f"Generate tok/s under load, loraserve / baseline: {a['tok_per_s'] / b['tok_per_s']:.3f}")


if __name__ == "__main__":
    main()
