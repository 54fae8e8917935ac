#!/usr/bin/python3
"""CLI test: the real `loraserve` binary driven by the real `loractl`, every subcommand.

Starts loraserve on the built-in demo model and demo adapters written by the build (no ../shared),
then runs loractl for every subcommand, human and --json output, and checks stdout, stderr and exit
codes (0, the gRPC status code of a failed call, 64 for usage errors), including:
  - errors: unknown adapter (5), bad load path, missing upload dir (3), bad combine options, a
    closed port (14, quickly), usage errors and unknown flags (64), --help for every subcommand;
  - save / export write the expected files (SHA-256s as reported), --progress draws on stderr (and
    a terminal gets the bar without asking); save -> upload round trip;
  - independent truths where there are some: Score's top-1 equals greedy Generate's token,
    merging an adapter does not change its greedy answer, same seed -> same text, a stop string cuts
    the text where it first occurs;
  - a server with --auth_tokens_file (no / wrong token -> 16, --token / --token_file /
    LORASERVE_TOKEN work), a TLS server (works with --tls --tls_ca_file, also with
    --tls_server_name; fails without) and a mutual-TLS server (needs --tls_cert_file/--tls_key_file);
    certificates made here with /usr/bin/openssl.

Exit codes: 0 pass, 1 fail.
Usage: cli_test.py --loractl BIN --loraserve BIN --model DIR --adapter_root DIR
"""

import argparse
import hashlib
import json
import math
import os
import pty
import select
import socket
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testing"))
from loraserve_process import LoraserveProcess  # noqa: E402 (tests/testing/)

USAGE = 64
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION = 3, 5, 6, 9
UNAVAILABLE, UNAUTHENTICATED = 14, 16
DEMO_ADAPTERS = ["demo-qv", "demo-mlp", "demo-dora", "demo-head"]
PROMPT = "Once upon a time"


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def Server(binary, model, adapter_root, workdir, name, extra=()):
    """A loraserve process on free ports (tests/testing/loraserve_process.py)."""
    return LoraserveProcess(binary, model, adapter_root, workdir, name,
                            extra=("--shutdown_grace=5s", *extra), failure=Failure)


class Result:
    def __init__(self, args, proc, elapsed):
        self.args, self.code, self.out, self.err = args, proc.returncode, proc.stdout, proc.stderr
        self.elapsed = elapsed

    def json(self):
        try:
            return json.loads(self.out)
        except ValueError as e:
            raise Failure(f"loractl {' '.join(self.args)}: stdout is not one JSON document ({e}):\n{self.out}")

    def error(self):
        """The {"error": {...}} document of a failed --json run (stderr)."""
        try:
            doc = json.loads(self.err)
        except ValueError as e:
            raise Failure(f"loractl {' '.join(self.args)}: stderr is not JSON ({e}):\n{self.err}")
        check(set(doc) == {"error"} and {"code", "code_number", "message"} <= set(doc["error"]),
              f"error document {doc}")
        check(doc["error"]["code_number"] == self.code, f"code_number {doc} but exit {self.code}")
        return doc["error"]


class Cli:
    """Runs loractl against one server address."""

    def __init__(self, binary, addr, metrics_addr, env=None):
        self.binary, self.addr, self.metrics_addr = binary, addr, metrics_addr
        self.env = dict(os.environ if env is None else env)
        for var in ("LORASERVE_ADDR", "LORASERVE_TOKEN", "LORASERVE_METRICS_ADDR"):
            self.env.pop(var, None)
        self.adapter_root = None  # the server's --adapter_root, for tests that read it locally

    def raw(self, args, expect=0, env=None, stdin=None, timeout=60):
        start = time.time()
        proc = subprocess.run([self.binary, *args], capture_output=True, text=True, errors="replace",
                              env=env or self.env, input=stdin, timeout=timeout)
        r = Result(args, proc, time.time() - start)
        if expect is not None and r.code != expect:
            raise Failure(f"loractl {' '.join(args)}: exit {r.code}, want {expect}\n"
                          f"--- stdout\n{r.out}--- stderr\n{r.err}")
        return r

    def __call__(self, *args, expect=0, **kw):
        return self.raw(["--addr", self.addr, *args], expect=expect, **kw)

    def json(self, *args, **kw):
        return self(*args, "--json", **kw).json()

    def error(self, code, *args, **kw):
        """Runs a failing command twice: human (stderr names the code) and --json (error document)."""
        human = self(*args, expect=code, **kw)
        check(human.out == "", f"{args}: stdout on failure: {human.out!r}")
        check(human.err.startswith("loractl: "), f"{args}: stderr {human.err!r}")
        doc = self("--json", *args, expect=code, **kw).error()
        check(doc["code"] in human.err, f"{args}: human stderr {human.err!r} lacks {doc['code']}")
        return doc


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_with_tty_stderr(argv, env):
    """Runs argv with stderr on a pseudo-terminal; returns (exit code, what the terminal got)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    got = b""
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        got += chunk
    os.close(master)
    return proc.wait(timeout=30), got.decode(errors="replace")


# ---- scenarios ------------------------------------------------------------------------------------

ALL_COMMANDS = ["adapters list", "adapters get", "adapters load", "adapters register", "adapters upload",
                "adapters delete",
                "adapters merge", "adapters unmerge", "adapters combine", "adapters save",
                "adapters export", "adapters unload-all", "generate", "score", "tokenize",
                "detokenize", "health", "metrics"]


def help_and_usage(cli):
    top = cli.raw(["--help"])
    for name in ALL_COMMANDS:
        check(name in top.out, f"loractl --help does not list {name}")
    for flag in ("--addr", "--timeout", "--token", "--token_file", "--tls", "--tls_ca_file",
                 "--tls_cert_file", "--tls_key_file", "--tls_server_name", "--retries", "--json",
                 "--quiet", "--progress"):
        check(flag in top.out, f"loractl --help does not document {flag}")
    check(cli.raw(["-h"]).out == top.out, "-h differs from --help")
    for name in ALL_COMMANDS:
        r = cli.raw([*name.split(), "--help"])
        check(r.out.startswith(f"usage: loractl [GLOBAL FLAGS] {name}"), f"{name} --help:\n{r.out}")
        check(cli.raw(["help", *name.split()]).out == r.out, f"loractl help {name} differs")
    gen = cli.raw(["generate", "-h"]).out
    for flag in ("--adapter", "--max_new_tokens", "--temperature", "--top_k", "--top_p", "--seed",
                 "--stop", "--ignore_eos", "--logprobs", "--top_logprobs", "--token_ids"):
        check(flag in gen, f"generate --help lacks {flag}")
    combine = cli.raw(["adapters", "combine", "--help"]).out
    for flag in ("--type", "--svd_rank", "--svd_clamp", "--density", "--majority_sign_method", "--seed"):
        check(flag in combine, f"adapters combine --help lacks {flag}")
    group = cli.raw(["adapters", "--help"]).out
    check("adapters unload-all" in group and "adapters combine" in group, f"adapters --help:\n{group}")

    # Usage errors: 64 with a message naming the problem; nothing on stdout.
    for args, words in [([], "usage"),
                        (["frobnicate"], 'unknown command "frobnicate"'),
                        (["adapters"], "needs a subcommand"),
                        (["adapters", "frob"], 'unknown command "adapters frob"'),
                        (["--bogus", "health"], "unknown flag --bogus"),
                        (["adapters", "list", "--bogus"], "unknown flag --bogus"),
                        (["adapters", "list", "extra"], "usage: loractl adapters list"),
                        (["adapters", "get"], "usage: loractl adapters get NAME"),
                        (["adapters", "load", "only-name"], "usage: loractl adapters load NAME PATH"),
                        (["generate", "--max_new_tokens", "many", PROMPT], "--max_new_tokens"),
                        (["generate", "--top_logprobs", "21", PROMPT], "--top_logprobs"),
                        (["generate"], "TEXT"),
                        (["generate", "--token_ids", "1,2", PROMPT], "not both"),
                        (["generate", "--token_ids", "1,x"], "bad token id"),
                        (["generate", PROMPT, "--temperature"], "needs a value"),
                        (["generate", "--ignore_eos=maybe", PROMPT], "--ignore_eos"),
                        (["detokenize", "a,b"], "bad token id"),
                        (["adapters", "combine", "c", "demo-qv:heavy"], "NAME:WEIGHT"),
                        (["adapters", "combine", "c", "demo-qv", "--svd_rank", "-1"], "--svd_rank"),
                        (["--timeout", "soon", "health"], "--timeout"),
                        (["--retries", "-1", "health"], "--retries"),
                        (["--token", "a", "--token_file", "/dev/null", "health"], "not both"),
                        (["--token_file", "/no/such/file", "health"], "--token_file"),
                        (["--tls_ca_file", "/no/such/ca.pem", "health"], "--tls_ca_file"),
                        (["--tls_cert_file", "/dev/null", "health"], "--tls_key_file")]:
        r = cli(*args, expect=USAGE)
        check(r.out == "", f"{args}: stdout on a usage error: {r.out!r}")
        check(words in r.err, f"{args}: stderr {r.err!r} lacks {words!r}")
    doc = cli("--json", "adapters", "list", "--bogus", expect=USAGE).error()
    check(doc["code_number"] == USAGE and "--bogus" in doc["message"], f"JSON usage error {doc}")


def health_and_connection(cli, binary):
    check(cli("health").out == "SERVING\n", "health")
    check(cli.json("health") == {"service": "", "status": "SERVING", "serving": True}, "health --json")
    # LORASERVE_ADDR instead of --addr; global flags after the command.
    env = dict(cli.env, LORASERVE_ADDR=cli.addr)
    check(cli.raw(["health", "--timeout", "5"], env=env).out == "SERVING\n", "LORASERVE_ADDR")
    # A closed port: UNAVAILABLE (14), quickly, with and without retries.
    down = Cli(binary, f"127.0.0.1:{free_port()}", cli.metrics_addr)
    for retries in ("0", "2"):
        r = down("--timeout", "3", "--retries", retries, "health", expect=UNAVAILABLE)
        check(r.elapsed < 2.5, f"closed port took {r.elapsed:.1f} s with --retries {retries}")
        check("UNAVAILABLE" in r.err, f"closed port stderr {r.err!r}")
    doc = down.error(UNAVAILABLE, "--timeout", "3", "--retries", "0", "adapters", "list")
    check(doc["code"] == "UNAVAILABLE", f"closed port {doc}")
    # metrics over plain HTTP to a closed port
    down("metrics", "--metrics_addr", down.addr, "--timeout", "3", expect=UNAVAILABLE)


def tokenize_detokenize(cli):
    ids = [int(x) for x in cli("tokenize", PROMPT).out.split()]
    doc = cli.json("tokenize", PROMPT)
    check(doc["token_ids"] == ids and doc["count"] == len(ids), f"tokenize --json {doc} vs {ids}")
    plain = cli.json("tokenize", "--no_special_tokens", PROMPT)["token_ids"]
    check(len(plain) == len(ids) - 1 and ids[1:] == plain, f"--no_special_tokens: {plain} vs {ids}")
    check(cli.json("tokenize", "-", stdin=PROMPT)["token_ids"] == ids, "tokenize from stdin")
    text = cli("detokenize", "--skip_special_tokens", ",".join(map(str, ids))).out
    check(text == PROMPT + "\n", f"detokenize gave {text!r}")
    doc = cli.json("detokenize", *map(str, ids[1:]))
    check(doc == {"text": PROMPT}, f"detokenize --json {doc}")
    doc = cli.error(INVALID_ARGUMENT, "detokenize", "999999")
    check(doc["code"] == "INVALID_ARGUMENT", f"detokenize out of vocabulary {doc}")
    return ids


def register(cli):
    """adapters register: validated, weights not kept; the first request loads them."""
    r = cli("adapters", "register", "lazy-qv", "demo-qv").out
    check(r.startswith("registered lazy-qv: ready, not_loaded, rank "), f"register:\n{r}")
    got = cli.json("adapters", "get", "lazy-qv")["adapter"]
    check(got["residency"] == "not_loaded" and got["bytes"] == 0 and len(got["checksum"]) == 64, f"get {got}")
    again = cli.json("adapters", "register", "lazy-qv", "demo-qv")
    check(again["already_loaded"] is True, f"register again {again}")
    lazy = cli.json("score", "--adapter", "lazy-qv", "--token_ids", "1,2,3")["token_logprobs"]
    eager = cli.json("score", "--adapter", "demo-qv", "--token_ids", "1,2,3")["token_logprobs"]
    check(lazy == eager, f"registered adapter scores {lazy} vs loaded {eager}")
    got = cli.json("adapters", "get", "lazy-qv")["adapter"]
    check(got["residency"] == "resident" and got["bytes"] > 0, f"get after use {got}")
    cli("adapters", "delete", "lazy-qv")


def load_list_get(cli):
    for name in DEMO_ADAPTERS:
        r = cli("adapters", "load", name, name)
        check(r.out.startswith(f"loaded {name}: ready, resident, rank ") and r.out.count("\n") == 1,
              f"load {name}:\n{r.out}")
    again = cli.json("adapters", "load", "demo-qv", "demo-qv")
    check(again["already_loaded"] is True and again["adapter"]["name"] == "demo-qv", f"load again {again}")
    again = cli("adapters", "load", "demo-qv", "demo-qv").out
    check(again.startswith("demo-qv was already loaded (same checksum): ready"), f"load again:\n{again}")

    listed = cli.json("adapters", "list")["adapters"]
    by_name = {a["name"]: a for a in listed}
    check(sorted(by_name) == sorted(DEMO_ADAPTERS), f"list --json names {sorted(by_name)}")
    for a in listed:
        check(a["state"] == "ready" and a["source"] == "adapter_root" and a["path"] == a["name"]
              and len(a["checksum"]) == 64 and a["bytes"] > 0 and a["max_rank"] > 0
              and len(a["target_modules"]) == len(a["ranks"]) > 0, f"adapter {a}")
    check(by_name["demo-dora"]["dora"] and by_name["demo-head"]["has_head"], "dora / head flags")

    lines = cli("adapters", "list").out.splitlines()
    header = lines[0].split()
    check(header == ["NAME", "STATE", "RESIDENCY", "SOURCE", "RANK", "BYTES", "MODULES", "CHECKSUM"],
          f"list header {lines[0]!r}")
    check(len(lines) == 1 + len(DEMO_ADAPTERS), f"list rows:\n{lines}")
    for line in lines[1:]:
        cols = line.split()
        a = by_name[cols[0]]
        check(cols[1:4] == [a["state"], a["residency"], a["source"]] and cols[4] == str(a["max_rank"])
              and cols[-2] == str(len(a["target_modules"])) and cols[-1] == a["checksum"][:12],
              f"list row {line!r} vs {a}")
    # Aligned: every row's CHECKSUM column starts where the header's does.
    at = lines[0].index("CHECKSUM")
    check(all(len(l) > at and l[at - 2:at] == "  " and l[at] != " " for l in lines[1:]), f"alignment:\n{lines}")

    got = cli.json("adapters", "get", "demo-qv")["adapter"]
    check(got == by_name["demo-qv"], f"get --json {got} vs list {by_name['demo-qv']}")
    fields = dict(l.split(":", 1) for l in cli("adapters", "get", "demo-dora").out.splitlines())
    fields = {k: v.strip() for k, v in fields.items()}
    check(fields["name"] == "demo-dora" and fields["state"] == "ready" and fields["dora"] == "yes"
          and fields["checksum"] == by_name["demo-dora"]["checksum"]
          and fields["bytes"].startswith(str(by_name["demo-dora"]["bytes"]) + " ")
          and fields["target_modules"].startswith(str(len(by_name["demo-dora"]["target_modules"]))),
          f"get human {fields}")

    # Errors.
    doc = cli.error(NOT_FOUND, "adapters", "get", "no-such-adapter")
    check(doc["code"] == "NOT_FOUND" and "no-such-adapter" in doc["message"] and doc["request_id"],
          f"unknown adapter {doc}")
    doc = cli.error(NOT_FOUND, "--request_id", "cli-test-42", "adapters", "get", "no-such-adapter")
    check(doc["request_id"] == "cli-test-42", f"--request_id not echoed: {doc}")
    cli.error(NOT_FOUND, "adapters", "load", "x", "no-such-dir")
    cli.error(INVALID_ARGUMENT, "adapters", "load", "x", "../escape")
    cli.error(INVALID_ARGUMENT, "adapters", "load", "bad name!", "demo-qv")
    cli.error(INVALID_ARGUMENT, "adapters", "upload", "x", "/no/such/local/dir")
    cli.error(NOT_FOUND, "adapters", "delete", "no-such-adapter")
    cli.error(NOT_FOUND, "adapters", "merge", "no-such-adapter")
    return by_name


def generate_and_score(cli, prompt_ids):
    base = ["--max_new_tokens", "12", "--ignore_eos"]
    r = cli("generate", *base, "--seed", "7", PROMPT)
    check(r.out.startswith(PROMPT) and r.out.endswith("\n"), f"generate echo:\n{r.out}")
    check("prompt +" in r.err and "12 new tokens" in r.err and "seed 7" in r.err, f"summary {r.err!r}")
    doc = cli.json("generate", *base, "--seed", "7", PROMPT)
    check(doc["completion_tokens"] == 12 and len(doc["tokens"]) == 12 and doc["seed"] == 7
          and doc["finish_reason"] == "length" and doc["prompt_tokens"] == len(prompt_ids)
          and doc["text"] == "".join(t["text"] for t in doc["tokens"]), f"generate --json {doc}")
    check(r.out == PROMPT + doc["text"] + "\n", f"human text {r.out!r} vs JSON {doc['text']!r}")
    check(cli.json("generate", *base, "--seed", "7", PROMPT)["text"] == doc["text"], "same seed, other text")
    check(cli("--quiet", "generate", *base, "--seed", "7", "--no_echo", PROMPT).out == doc["text"] + "\n",
          "--no_echo / --quiet")
    check(cli("--quiet", "generate", *base, PROMPT).err == "", "--quiet still wrote to stderr")

    # --token_ids gives the same as the text prompt (which the server tokenizes with BOS).
    ids_arg = ",".join(map(str, prompt_ids))
    greedy = cli.json("generate", *base, "--temperature", "0", "--token_ids", ids_arg)
    check(greedy["text"] == cli.json("generate", *base, "--temperature", "0", PROMPT)["text"],
          "--token_ids vs TEXT")

    # Score's most likely next token is what greedy generation picks.
    first = greedy["tokens"][0]["id"]
    sc = cli.json("score", "--top_logprobs", "3", "--token_ids", ids_arg)
    check(sc["token_ids"] == prompt_ids and len(sc["token_logprobs"]) == len(prompt_ids) - 1
          and len(sc["top_logprobs"]) == len(prompt_ids) and len(sc["top_logprobs"][-1]) == 3
          and sc["vocab_size"] > 0, f"score --json {sc}")
    check(sc["top_logprobs"][-1][0]["id"] == first, f"score top-1 {sc['top_logprobs'][-1][0]} vs greedy {first}")
    # --full_logits: every position's logits; the last row's argmax is greedy's first token and
    # log_softmax of row t at token t+1 is that token's logprob.
    full = cli.json("score", "--full_logits", "--token_ids", ids_arg)
    rows = full["logits"]
    check(len(rows) == len(prompt_ids) and all(len(r) == full["vocab_size"] for r in rows),
          "score --full_logits shape")
    check(max(range(full["vocab_size"]), key=lambda v: rows[-1][v]) == first,
          "score --full_logits argmax vs greedy")
    row0 = rows[0]
    m = max(row0)
    lse = m + math.log(sum(math.exp(v - m) for v in row0))
    check(abs((row0[prompt_ids[1]] - lse) - full["token_logprobs"][0]) < 1e-3,
          "score --full_logits log_softmax vs token_logprobs")
    check("full logits: " in cli("score", "--full_logits", PROMPT).out, "score --full_logits human line")
    check(abs(sc["total_logprob"] - sum(sc["token_logprobs"])) < 1e-3, "total_logprob")
    check(cli.json("score", PROMPT)["token_ids"] == prompt_ids, "score TEXT tokenized server-side")
    human = cli("score", "--top_logprobs", "2", PROMPT).out.splitlines()
    check(human[0].split()[:4] == ["POS", "ID", "TOKEN", "LOGPROB"] and len(human) == len(prompt_ids) + 3
          and human[-2].startswith(f"next: {first} ") and human[-1].startswith("total logprob "),
          f"score human:\n{human}")
    check(f"{sc['token_logprobs'][0]:.4f}" in human[2], f"score row 1 {human[2]!r} vs {sc['token_logprobs'][0]}")

    # logprobs / top_logprobs
    lp = cli.json("generate", "--max_new_tokens", "4", "--seed", "1", "--top_logprobs", "2", PROMPT)
    check(all(len(t["top_logprobs"]) == 2 and t["logprob"] <= 0 for t in lp["tokens"]), f"logprobs {lp}")
    table = cli("generate", "--max_new_tokens", "4", "--seed", "1", "--logprobs", PROMPT).out.splitlines()
    header = [i for i, l in enumerate(table) if l.split()[:4] == ["INDEX", "ID", "TOKEN", "LOGPROB"]]
    check(len(header) == 1 and len(table) == header[0] + 5, f"--logprobs table:\n{table}")

    # A stop string ends the text where it first occurs.
    long = cli.json("generate", "--max_new_tokens", "24", "--ignore_eos", "--temperature", "0",
                    "--adapter", "demo-qv", PROMPT)["text"]
    check(len(long) >= 4, f"greedy text too short to cut: {long!r}")
    stop = long[2:4]
    cut = cli.json("generate", "--max_new_tokens", "24", "--ignore_eos", "--temperature", "0",
                   "--adapter", "demo-qv", "--stop", "never-appears", "--stop", stop, PROMPT)
    check(cut["finish_reason"] == "stop" and cut["stop_string"] == stop and cut["text"] == long[:long.find(stop)],
          f"--stop {stop!r}: {cut} (full text {long!r})")

    # Errors: unknown adapter, bad sampling options (the server says INVALID_ARGUMENT).
    cli.error(NOT_FOUND, "generate", "--adapter", "no-such-adapter", PROMPT)
    cli.error(INVALID_ARGUMENT, "generate", "--top_p", "2", PROMPT)
    cli.error(NOT_FOUND, "score", "--adapter", "no-such-adapter", PROMPT)
    cli.error(INVALID_ARGUMENT, "score", "--token_ids", "99999999")


def merge_unmerge(cli):
    args = ["generate", "--max_new_tokens", "10", "--ignore_eos", "--temperature", "0", PROMPT]
    before = cli.json(*args, "--adapter", "demo-qv")["text"]
    base = cli.json(*args)["text"]
    check(cli("adapters", "merge", "demo-qv").out == "demo-qv merged\n", "merge")
    doc = cli.json("adapters", "merge", "demo-qv")
    check(doc["already_merged"] is True and doc["adapter"]["state"] == "merged", f"merge again {doc}")
    check(cli("adapters", "merge", "demo-qv").out == "demo-qv was already merged\n", "merge again, human")
    check(cli.json(*args, "--adapter", "demo-qv")["text"] == before, "merging changed the adapter's answer")
    check(cli.json(*args)["text"] == base, "merging changed the base model's answer")
    cli.error(FAILED_PRECONDITION, "adapters", "delete", "demo-qv")
    check(cli("adapters", "unmerge", "demo-qv").out == "demo-qv unmerged\n", "unmerge")
    check(cli.json("adapters", "get", "demo-qv")["adapter"]["state"] == "ready", "state after unmerge")
    cli.error(FAILED_PRECONDITION, "adapters", "unmerge", "demo-qv")


def combine(cli):
    r = cli("adapters", "combine", "mix", "demo-qv:0.7", "demo-mlp:0.3", "--type", "svd", "--svd_rank", "8")
    check(r.out.startswith("combined 2 adapters into mix (svd): ready, resident, rank 8, "), f"combine:\n{r.out}")
    doc = cli.json("adapters", "combine", "mix2", "demo-qv:1", "demo-mlp:-0.5", "--type", "dare_ties_svd",
                   "--density", "0.5", "--majority_sign_method", "frequency", "--seed", "3")
    a = doc["adapter"]
    check(a["name"] == "mix2" and a["source"] == "combined" and a["state"] == "ready", f"combine --json {doc}")
    doc = cli.json("adapters", "combine", "mix3", "demo-qv", "--type", "cat")
    check(doc["adapter"]["max_rank"] == 8, f"cat of one adapter {doc}")
    gen = cli.json("generate", "--adapter", "mix", "--max_new_tokens", "3", "--seed", "1", PROMPT)
    check(gen["completion_tokens"] >= 1, "generate with a combined adapter")
    # Bad options.
    cli.error(ALREADY_EXISTS, "adapters", "combine", "mix", "demo-qv")
    cli.error(NOT_FOUND, "adapters", "combine", "mix4", "no-such-adapter:1")
    cli.error(INVALID_ARGUMENT, "adapters", "combine", "mix4", "demo-qv", "--density", "0", "--type", "ties")
    cli.error(INVALID_ARGUMENT, "adapters", "combine", "mix4", "demo-qv", "--type", "bogus")
    cli.error(INVALID_ARGUMENT, "adapters", "combine", "mix4", "demo-qv", "--majority_sign_method", "vote")
    cli.error(INVALID_ARGUMENT, "adapters", "combine", "mix4", "demo-qv", "--svd_clamp", "2")
    cli.error(INVALID_ARGUMENT, "adapters", "combine", "mix4", "demo-qv:1", "demo-qv:2")
    for name in ("mix2", "mix3"):
        check(cli("adapters", "delete", name).out == f"deleted {name}\n", f"delete {name}")


def save_upload_export(cli, work):
    saved = os.path.join(work, "saved-qv")
    r = cli("adapters", "save", "demo-qv", saved, "--progress")
    check(sorted(os.listdir(saved)) == ["adapter_config.json", "adapter_model.safetensors"],
          f"saved files {os.listdir(saved)}")
    check(r.out.startswith(f"saved demo-qv to {saved}: 2 files"), f"save stdout:\n{r.out}")
    progress = [l for l in r.err.splitlines() if l.startswith("save demo-qv [")]
    check(progress and "100%" in progress[-1] and " / " in progress[-1], f"save --progress stderr {r.err!r}")
    check(cli("adapters", "save", "demo-qv", saved).err == "", "progress without --progress or a terminal")
    check(cli("--quiet", "adapters", "save", "demo-qv", saved, "--progress").err == "", "--quiet --progress")
    doc = cli.json("adapters", "save", "demo-qv", saved)
    check(doc["dir"] == saved and doc["name"] == "demo-qv" and len(doc["files"]) == 2, f"save --json {doc}")
    for f in doc["files"]:
        path = os.path.join(saved, f["path"])
        check(os.path.getsize(path) == f["size"] and sha256_file(path) == f["sha256"], f"saved file {f}")
    with open(os.path.join(saved, "adapter_config.json")) as f:
        check(json.load(f).get("peft_type") == "LORA", "saved adapter_config.json")

    # A terminal on stderr gets the bar without --progress, drawn in place.
    code, tty = run_with_tty_stderr([cli.binary, "--addr", cli.addr, "adapters", "save", "demo-qv", saved],
                                    cli.env)
    check(code == 0 and "\r" in tty and "100%" in tty and "save demo-qv [" in tty, f"terminal progress {tty!r}")

    # Round trip: upload the saved directory under another name.
    r = cli("adapters", "upload", "qv-copy", saved, "--progress")
    check(r.out.startswith("uploaded qv-copy: ready, resident, rank 8, "), f"upload stdout:\n{r.out}")
    check(any(l.startswith("upload qv-copy [") and "100%" in l for l in r.err.splitlines()), f"upload progress {r.err!r}")
    listed = {a["name"]: a for a in cli.json("adapters", "list")["adapters"]}
    check("qv-copy" in listed and listed["qv-copy"]["source"] == "upload", f"uploaded adapter not listed: {listed}")
    check(listed["qv-copy"]["checksum"] == listed["demo-qv"]["checksum"], "round trip changed the checksum")
    args = ["generate", "--max_new_tokens", "8", "--ignore_eos", "--temperature", "0", PROMPT]
    check(cli.json(*args, "--adapter", "qv-copy")["text"] == cli.json(*args, "--adapter", "demo-qv")["text"],
          "uploaded copy answers differently")
    again = cli.json("adapters", "upload", "qv-copy", saved)
    check(again["already_loaded"] is True, f"upload again {again}")
    cli.error(ALREADY_EXISTS, "adapters", "upload", "qv-copy", os.path.join(cli.adapter_root, "demo-mlp"))

    # Export: the base model with demo-qv merged, and the base model alone.
    exported = os.path.join(work, "merged")
    r = cli("adapters", "export", exported, "demo-qv", "--progress")
    files = sorted(os.listdir(exported))
    check("config.json" in files and "model.safetensors" in files, f"exported files {files}")
    check(r.out.startswith(f"exported base + demo-qv to {exported}:"), f"export stdout:\n{r.out}")
    check(any(l.startswith("export [") and "100%" in l for l in r.err.splitlines()), f"export progress {r.err!r}")
    base_dir = os.path.join(work, "base")
    doc = cli.json("adapters", "export", base_dir)
    check(doc["adapters"] == [] and {f["path"] for f in doc["files"]} >= {"config.json", "model.safetensors"},
          f"export --json {doc}")
    for f in doc["files"]:
        check(sha256_file(os.path.join(base_dir, f["path"])) == f["sha256"], f"exported file {f}")
    check(sha256_file(os.path.join(base_dir, "model.safetensors")) !=
          sha256_file(os.path.join(exported, "model.safetensors")), "merging demo-qv changed no weight")

    cli.error(NOT_FOUND, "adapters", "save", "no-such-adapter", os.path.join(work, "nothing"))
    cli.error(NOT_FOUND, "adapters", "export", os.path.join(work, "nothing"), "no-such-adapter")


def delete_unload_all(cli):
    check(cli("adapters", "delete", "qv-copy").out == "deleted qv-copy\n", "delete")
    cli.error(NOT_FOUND, "adapters", "delete", "qv-copy")
    check(cli.json("adapters", "delete", "mix") == {"deleted": "mix"}, "delete --json")
    remaining = len(cli.json("adapters", "list")["adapters"])
    check(cli("adapters", "unload-all").out == f"deleted {remaining} adapters\n", "unload-all")
    check(cli("adapters", "list").out == "no adapters\n", "list after unload-all")
    check(cli.json("adapters", "list") == {"adapters": []}, "list --json after unload-all")
    check(cli.json("adapters", "unload-all") == {"deleted": 0}, "unload-all --json")


def metrics(cli):
    out = cli("metrics", "--metrics_addr", cli.metrics_addr, "loraserve_requests_total").out.splitlines()
    check(out and all(l.startswith("loraserve_requests_total{") for l in out), f"metrics:\n{out}")
    check(any('rpc="Generate"' in l for l in out), f"no Generate requests counted:\n{out}")
    env = dict(cli.env, LORASERVE_METRICS_ADDR=cli.metrics_addr)
    doc = cli.raw(["--json", "metrics", "loraserve_requests_total"], env=env).json()
    samples = doc["samples"]
    check(samples and all(s["name"] == "loraserve_requests_total" for s in samples), f"metrics --json {doc}")
    ok = [s for s in samples if s["labels"].get("rpc") == "GetAdapter" and s["labels"].get("code") == "NOT_FOUND"]
    check(ok and ok[0]["value"] >= 1, f"no GetAdapter NOT_FOUND sample: {samples}")
    full = cli("metrics", "--metrics_addr", cli.metrics_addr).out
    check("# TYPE loraserve_engine_steps_total counter" in full, "metrics without prefix lacks comments")


def make_certs(work):
    """A CA, a server certificate for IP 127.0.0.1 / DNS loraserve.test and a client certificate."""
    openssl = "/usr/bin/openssl"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    p = lambda name: os.path.join(work, name)
    subprocess.run([openssl, "req", "-x509", *ec, "-keyout", p("ca.key"), "-out", p("ca.pem"),
                    "-subj", "/CN=loraserve-cli-test-ca", "-days", "2"], check=True, capture_output=True)
    for who, ext in [("server", "subjectAltName=IP:127.0.0.1,DNS:loraserve.test\nextendedKeyUsage=serverAuth\n"),
                     ("client", "extendedKeyUsage=clientAuth\n")]:
        with open(p(f"{who}.ext"), "w") as f:
            f.write(ext)
        subprocess.run([openssl, "req", *ec, "-keyout", p(f"{who}.key"), "-out", p(f"{who}.csr"),
                        "-subj", f"/CN=loraserve-cli-test-{who}"], check=True, capture_output=True)
        subprocess.run([openssl, "x509", "-req", "-in", p(f"{who}.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
                        "-CAcreateserial", "-out", p(f"{who}.pem"), "-days", "2", "-extfile", p(f"{who}.ext")],
                       check=True, capture_output=True)
    return p


def auth_tokens(args, work, servers):
    tokens = os.path.join(work, "tokens")
    with open(tokens, "w") as f:
        f.write("# operators\nsecret-one\n\nsecret-two\n")
    server = Server(args.loraserve, args.model, args.adapter_root, work, "auth", ["--auth_tokens_file=" + tokens])
    servers.append(server)
    cli = Cli(args.loractl, server.addr, server.metrics_addr)
    check(cli("health").out == "SERVING\n", "health stays open with --auth_tokens_file")
    doc = cli.error(UNAUTHENTICATED, "adapters", "list")
    check(doc["code"] == "UNAUTHENTICATED", f"no token {doc}")
    cli.error(UNAUTHENTICATED, "--token", "wrong", "adapters", "list")
    cli.error(UNAUTHENTICATED, "generate", "--max_new_tokens", "2", PROMPT)
    check(cli("--token", "secret-two", "adapters", "list").out == "no adapters\n", "--token")
    token_file = os.path.join(work, "token")
    with open(token_file, "w") as f:
        f.write("secret-one\n")
    check(cli("adapters", "load", "demo-qv", "demo-qv", "--token_file", token_file).out.startswith("loaded demo-qv:"),
          "--token_file")
    env = dict(cli.env, LORASERVE_TOKEN="secret-two")
    r = cli.raw(["--addr", cli.addr, "--json", "adapters", "list"], env=env).json()
    check([a["name"] for a in r["adapters"]] == ["demo-qv"], f"LORASERVE_TOKEN {r}")
    # --token beats the environment.
    cli.raw(["--addr", cli.addr, "--token", "wrong", "adapters", "list"], env=env, expect=UNAUTHENTICATED)


def tls(args, work, servers):
    p = make_certs(work)
    server = Server(args.loraserve, args.model, args.adapter_root, work, "tls",
                    ["--tls_cert_file=" + p("server.pem"), "--tls_key_file=" + p("server.key")])
    servers.append(server)
    cli = Cli(args.loractl, server.addr, server.metrics_addr)
    quick = ["--timeout", "5", "--retries", "0"]
    check(cli("--tls", "--tls_ca_file", p("ca.pem"), "health").out == "SERVING\n", "TLS with the CA")
    check(cli("--tls_ca_file", p("ca.pem"), "--tls_server_name", "loraserve.test", "tokenize", "hi").out.strip(),
          "TLS with --tls_server_name")
    cli.error(UNAVAILABLE, *quick, "health")  # plaintext to a TLS port
    cli.error(UNAVAILABLE, *quick, "--tls", "health")  # the system's roots do not know our CA
    cli.error(UNAVAILABLE, *quick, "--tls_ca_file", p("ca.pem"), "--tls_server_name", "other.test", "health")

    mtls = Server(args.loraserve, args.model, args.adapter_root, work, "mtls",
                  ["--tls_cert_file=" + p("server.pem"), "--tls_key_file=" + p("server.key"),
                   "--tls_client_ca_file=" + p("ca.pem")])
    servers.append(mtls)
    cli = Cli(args.loractl, mtls.addr, mtls.metrics_addr)
    check(cli("--tls_ca_file", p("ca.pem"), "--tls_cert_file", p("client.pem"), "--tls_key_file", p("client.key"),
              "adapters", "list").out == "no adapters\n", "mutual TLS")
    cli.error(UNAVAILABLE, *quick, "--tls_ca_file", p("ca.pem"), "health")  # no client certificate


def all_replicas(args, work, servers):
    """--all: two servers on one port of two loopback addresses (like a headless Service's pods)."""
    a = Server(args.loraserve, args.model, args.adapter_root, work, "replica-a")
    servers.append(a)
    port = a.port
    b = Server(args.loraserve, args.model, args.adapter_root, work, "replica-b",
               extra=(f"--listen=127.0.0.2:{port}",))
    servers.append(b)
    ra, rb = f"127.0.0.1:{port}", f"127.0.0.2:{port}"
    cli = Cli(args.loractl, f"ipv4:{rb},{ra}", a.metrics_addr)
    r = cli("--all", "adapters", "load", "x", "demo-qv")
    check(r.out.startswith(f"== {ra} ==\n") and f"\n== {rb} ==\n" in r.out, f"--all output {r.out!r}")
    check("loractl: --all: 2 replicas, 0 failed" in r.err, f"--all summary {r.err!r}")
    for one in (ra, rb):
        got = Cli(args.loractl, one, a.metrics_addr).json("adapters", "get", "x")["adapter"]
        check(got["name"] == "x", f"{one} has x: {got}")
    doc = cli.json("--all", "adapters", "list")
    check([e["addr"] for e in doc["replicas"]] == [ra, rb] and doc["failed"] == 0, f"--all --json {doc}")
    check(all([x["name"] for x in e["result"]["adapters"]] == ["x"] and e["exit_code"] == 0
              for e in doc["replicas"]), f"--all list {doc}")
    cli("--all", "adapters", "merge", "x")
    cli("--all", "adapters", "unmerge", "x")
    # One replica down: the others still get the call; the exit status is the failure's.
    check(b.stop() == 0, "replica b exits 0")
    r = cli("--all", "--json", "--retries", "0", "--timeout", "5", "adapters", "delete", "x", expect=UNAVAILABLE)
    doc = r.json()
    check(doc["failed"] == 1 and doc["replicas"][0]["exit_code"] == 0 and
          doc["replicas"][1]["error"]["code"] == "UNAVAILABLE" and doc["replicas"][1]["exit_code"] == UNAVAILABLE,
          f"--all with a replica down {doc}")
    check(Cli(args.loractl, ra, a.metrics_addr).json("adapters", "list")["adapters"] == [], "x deleted on a")
    r = cli("--all", "--retries", "0", "--timeout", "5", "health", expect=UNAVAILABLE)
    check(f"loractl: health ({rb}): UNAVAILABLE" in r.err and "2 replicas, 1 failed" in r.err, f"--all stderr {r.err!r}")
    # A name: every address it resolves to (an IP literal resolves to itself).
    r = Cli(args.loractl, ra, a.metrics_addr)("--all", "health")
    check(r.out == f"== {ra} ==\nSERVING\n" and "1 replica, 0 failed" in r.err, f"--all by name {r.out!r} {r.err!r}")
    Cli(args.loractl, "no-such-host.invalid:50051", None)("--all", "health", expect=5)  # NOT_FOUND
    # Commands that are routed, read stdin or write local files are refused.
    for argv in (["generate", "hi"], ["adapters", "save", "x", os.path.join(work, "s")], ["tokenize", "hi"]):
        r = cli("--all", *argv, expect=64)
        check("--all is for management and health commands" in r.err, f"--all {argv}: {r.err!r}")
    r = cli("--all", "--addr", "ipv4:1.2.3:4", "health", expect=64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loractl", required=True)
    ap.add_argument("--loraserve", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter_root", required=True)
    args = ap.parse_args()
    for d in (args.model, args.adapter_root):
        if not os.path.isdir(d):
            print(f"FAIL: {d} is missing (the build writes the demo model and adapters)")
            return 1

    started = time.time()
    ok = False
    servers = []
    with tempfile.TemporaryDirectory(prefix="loraserve-cli-") as work:
        try:
            server = Server(args.loraserve, args.model, args.adapter_root, work, "main")
            servers.append(server)
            cli = Cli(args.loractl, server.addr, server.metrics_addr)
            cli.adapter_root = args.adapter_root
            prompt_ids = []
            steps = [("--help and usage errors", lambda: help_and_usage(cli)),
                     ("health, connection errors", lambda: health_and_connection(cli, args.loractl)),
                     ("tokenize / detokenize", lambda: prompt_ids.extend(tokenize_detokenize(cli))),
                     ("adapters load / list / get", lambda: load_list_get(cli)),
                     ("adapters register", lambda: register(cli)),
                     ("generate / score", lambda: generate_and_score(cli, prompt_ids)),
                     ("adapters merge / unmerge", lambda: merge_unmerge(cli)),
                     ("adapters combine", lambda: combine(cli)),
                     ("adapters save / upload / export", lambda: save_upload_export(cli, work)),
                     ("adapters delete / unload-all", lambda: delete_unload_all(cli)),
                     ("metrics", lambda: metrics(cli)),
                     ("--auth_tokens_file and tokens", lambda: auth_tokens(args, work, servers)),
                     ("TLS and mutual TLS", lambda: tls(args, work, servers)),
                     ("--all over two replicas", lambda: all_replicas(args, work, servers))]
            for name, step in steps:
                start = time.time()
                step()
                print(f"ok   {name} ({time.time() - start:.1f} s)", flush=True)
            ok = True
        except Failure as e:
            print(f"FAIL {e}")
        except Exception:  # a broken test or a crash: show it whole
            traceback.print_exc()
        finally:
            for s in servers:
                code = s.stop()
                if ok and code != 0:
                    print(f"FAIL loraserve exited with {code} after SIGTERM")
                    ok = False
            if not ok:
                for s in servers:
                    print(f"--- server log {s.log_path} ---\n" + s.logs()[-10000:])
    print(f"{'PASS' if ok else 'FAIL'} ({time.time() - started:.1f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
