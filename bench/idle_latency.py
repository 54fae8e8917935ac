#!/usr/bin/python3
"""Latency on an idle server (issue 13 item 8): a 3-token Score with top_logprobs=1 and a
Tokenize on the same grpcio channel, one call at a time, against the real `loraserve`.
Prints p50/p99 of each and the Score - Tokenize gap at p50.

    bench/idle_latency.py --loraserve build/server/loraserve --model build/default-model \
        [--n 2000] [--extra=--max_wait=1ms]
Needs Debian's python3-grpcio, protoc and grpc_python_plugin (as tests/e2e).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "testing"))
from loraserve_process import LoraserveProcess  # noqa: E402


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loraserve", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--extra", action="append", default=[], help="extra loraserve flags")
    args = ap.parse_args()
    import grpc
    proto_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proto")
    with tempfile.TemporaryDirectory() as work:
        gen = os.path.join(work, "gen")
        os.makedirs(gen)
        subprocess.run(["protoc", "-I", proto_dir, "--python_out=" + gen, "--grpc_out=" + gen,
                        "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
                        "loraserve/v1/files.proto", "loraserve/v1/inference_service.proto"], check=True)
        sys.path.insert(0, gen)
        from loraserve.v1 import inference_service_pb2 as pb, inference_service_pb2_grpc as pbg
        server = LoraserveProcess(args.loraserve, args.model, work, work, extra=args.extra)
        try:
            stub = pbg.InferenceServiceStub(grpc.insecure_channel(server.addr))
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
        finally:
            server.stop()
    for name, xs in times.items():
        print(f"{name:9s} p50 {percentile(xs, 50):8.1f} us   p99 {percentile(xs, 99):8.1f} us")
    print(f"Score - Tokenize at p50: {percentile(times['Score'], 50) - percentile(times['Tokenize'], 50):.1f} us")


if __name__ == "__main__":
    main()
