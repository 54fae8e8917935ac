#!/usr/bin/env python3
"""The OpenAI-compatible HTTP API of the real `loraserve`, driven by the real `openai` package and
by plain HTTP (urllib, as curl would): /v1/models, /v1/completions plain and streaming, adapters
as models, errors in OpenAI's shape (400, 401, 404, 405), bearer tokens.

Runs on the built-in model (the vendored stories260K) and the demo adapters the build writes (no
../shared needed).
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from http.client import HTTPConnection

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testing"))
from loraserve_process import LoraserveProcess  # noqa: E402

import openai  # noqa: E402

FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what, flush=True)


def expect_error(fn, exc_type, status, what):
    try:
        fn()
    except exc_type as e:
        check(getattr(e, "status_code", None) == status, f"{what}: status {getattr(e, 'status_code', None)} != {status}")
        body = getattr(e, "body", None)
        check(isinstance(body, dict) and "message" in body and "type" in body, f"{what}: error body {body!r}")
        return e
    except Exception as e:  # noqa: BLE001
        check(False, f"{what}: raised {type(e).__name__}: {e}")
        return None
    check(False, f"{what}: no error")
    return None


def http(port, method, path, body=None, headers=None):
    """(status, headers, body bytes) of a plain HTTP request."""
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_models_and_completions(client, port, base, adapter):
    models = [m.id for m in client.models.list().data]
    check(models[:1] == [base] and adapter in models, f"models {models}")

    greedy = dict(prompt="Once upon a time", max_tokens=8, temperature=0)
    a = client.completions.create(model=base, **greedy)
    check(a.object == "text_completion" and len(a.choices) == 1, f"completion shape {a}")
    check(a.usage.completion_tokens == 8 and a.usage.prompt_tokens > 0, f"usage {a.usage}")
    check(a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens, "total_tokens")
    check(a.choices[0].finish_reason == "length", f"finish_reason {a.choices[0].finish_reason}")
    b = client.completions.create(model=base, **greedy)
    # The built-in model is the real stories260K: its greedy story is llama2.c's reference one.
    story = client.completions.create(model=base, prompt="Once upon a time", max_tokens=12, temperature=0)
    check(story.choices[0].text.startswith(", there was a little girl named Lily"), f"story {story.choices[0].text!r}")
    check(a.choices[0].text == b.choices[0].text, "greedy is deterministic")

    # Streaming: the pieces add up to the plain answer; the last chunk has the finish reason.
    pieces, reasons = [], []
    for chunk in client.completions.create(model=base, stream=True, **greedy):
        check(chunk.created > 1_000_000_000 and chunk.model == base and chunk.id.startswith("cmpl-"),
              f"stream chunk envelope {chunk}")
        for c in chunk.choices:
            pieces.append(c.text)
            reasons.append(c.finish_reason)
    check("".join(pieces) == a.choices[0].text, f"stream {''.join(pieces)!r} != {a.choices[0].text!r}")
    check(reasons and reasons[-1] == "length" and all(r is None for r in reasons[:-1]), f"stream reasons {reasons}")
    usage = [c.usage for c in client.completions.create(model=base, stream=True,
                                                         stream_options={"include_usage": True}, **greedy)
             if c.usage is not None]
    check(len(usage) == 1 and usage[0].completion_tokens == 8, f"stream usage {usage}")

    # Token-id prompts, seeds, echo, logprobs, stop.
    ids = client.completions.create(model=base, prompt=[1, 40, 41, 42], max_tokens=4, temperature=0)
    check(ids.usage.prompt_tokens == 4, f"token-id prompt usage {ids.usage}")
    s1 = client.completions.create(model=base, prompt="Hello", max_tokens=6, temperature=1, seed=7)
    s2 = client.completions.create(model=base, prompt="Hello", max_tokens=6, temperature=1, seed=7)
    check(s1.choices[0].text == s2.choices[0].text, "same seed, same text")
    echo = client.completions.create(model=base, echo=True, **greedy)
    check(echo.choices[0].text == "Once upon a time" + a.choices[0].text, f"echo {echo.choices[0].text!r}")
    lp = client.completions.create(model=base, logprobs=2, **greedy)
    lps = lp.choices[0].logprobs
    check(lps is not None and len(lps.token_logprobs) == 8 and all(x <= 0 for x in lps.token_logprobs),
          f"logprobs {lps}")
    check(all(len(t) == 2 for t in lps.top_logprobs), "two alternatives per token")
    check("".join(lps.tokens) == lp.choices[0].text, "logprob tokens spell the text")
    if len(a.choices[0].text) > 3:
        stop = a.choices[0].text[2:4]
        st = client.completions.create(model=base, stop=[stop], **greedy)
        check(stop not in st.choices[0].text and st.choices[0].finish_reason == "stop", f"stop {st.choices[0]}")

    # The adapter is a model of its own, with its own answer.
    ad = client.completions.create(model=adapter, **greedy)
    check(ad.model == adapter and ad.usage.completion_tokens >= 1, f"adapter completion {ad}")
    lp_base = client.completions.create(model=base, prompt="Once upon a time", max_tokens=1, temperature=0,
                                        logprobs=1).choices[0].logprobs.token_logprobs[0]
    lp_ad = client.completions.create(model=adapter, prompt="Once upon a time", max_tokens=1, temperature=0,
                                      logprobs=1).choices[0].logprobs.token_logprobs[0]
    # (The random demo model is very sure of itself: log-probs near 0 that still differ.)
    check(lp_base != lp_ad or ad.choices[0].text != a.choices[0].text, "the adapter changes the model")


def test_errors(client, port, base):
    e = expect_error(lambda: client.completions.create(model="no-such-model", prompt="x", max_tokens=1),
                     openai.NotFoundError, 404, "unknown model")
    if e is not None:
        check(e.body.get("code") == "model_not_found", f"unknown model code {e.body}")
    expect_error(lambda: client.completions.create(model=base, prompt="x", temperature=5),
                 openai.BadRequestError, 400, "temperature out of range")
    expect_error(lambda: client.completions.create(model=base, prompt="x", n=2),
                 openai.BadRequestError, 400, "n = 2")
    expect_error(lambda: client.completions.create(model=base, prompt="x", extra_body={"bogus": 1}),
                 openai.BadRequestError, 400, "unknown field")
    expect_error(lambda: client.completions.create(model=base, prompt=["a", "b"]),
                 openai.BadRequestError, 400, "several prompts")
    expect_error(lambda: client.completions.create(model=base, prompt=[1, 10 ** 9]),
                 openai.BadRequestError, 400, "token id out of range")

    # Plain HTTP, as curl sends it.
    for body, what in [("{not json", "malformed JSON"), ('{"model": 3, "prompt": "x"}', "wrong type"),
                       ('[1, 2]', "not an object"), ('{"model": "%s"}' % base, "missing prompt")]:
        status, headers, text = http(port, "POST", "/v1/completions", body, {"Content-Type": "application/json"})
        check(status == 400, f"{what}: status {status}")
        try:
            err = json.loads(text)["error"]
            check(err["type"] == "invalid_request_error" and err["message"], f"{what}: {err}")
        except (ValueError, KeyError) as ex:
            check(False, f"{what}: body {text!r} ({ex})")
    status, headers, _ = http(port, "POST", "/v1/completions", "x" * (2 << 20))
    check(status == 413, f"huge body: status {status}")
    status, headers, _ = http(port, "GET", "/v1/completions")
    check(status == 405 and "POST" in headers.get("Allow", ""), f"GET /v1/completions: {status} {headers}")
    status, _, text = http(port, "GET", "/v1/models")
    check(status == 200 and json.loads(text)["object"] == "list", f"GET /v1/models {status}")


def test_random_bad_bodies(port, base):
    """Seeded random bodies (wrong types, truncations, deep nesting, junk bytes): always an answer
    in OpenAI's error shape (or a completion), never a crash or a hung connection."""
    import random
    rng = random.Random(1234)
    values = [None, True, -1, 0, 2 ** 70, 1.5e308, "", "x" * 5000, [], [1, "a"], {}, {"a": {"b": []}},
              [[[[[]]]]], -0.0, "\u0000", [10 ** 9], "\ud83d"]
    fields = ["model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "stream", "logprobs",
              "echo", "n", "stream_options", "ignore_eos", "bogus"]
    statuses = {}
    for i in range(150):
        doc = {"model": base, "prompt": "Hi", "max_tokens": 2}
        for _ in range(rng.randint(1, 3)):
            doc[rng.choice(fields)] = rng.choice(values)
        body = json.dumps(doc)
        kind = rng.random()
        if kind < 0.2:
            body = body[: rng.randint(0, len(body))]
        elif kind < 0.3:
            body = "[" * rng.randint(1, 30000)
        elif kind < 0.4:
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200)))
        status, _, text = http(port, "POST", "/v1/completions", body, {"Content-Type": "application/json"})
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            continue
        check(400 <= status < 500, f"random body {i}: status {status} for {body[:200]!r}")
        try:
            check("message" in json.loads(text)["error"], f"random body {i}: {text[:200]!r}")
        except (ValueError, KeyError):
            check(False, f"random body {i}: not OpenAI's error shape: {text[:200]!r}")
    print("random bodies:", dict(sorted(statuses.items())), flush=True)
    status, _, _ = http(port, "GET", "/healthz")
    check(status == 200, "the server is alive after the random bodies")


def metric(port, name, labels):
    """The value of `name{labels}` on /metrics (0 when absent)."""
    _, _, text = http(port, "GET", "/metrics")
    want = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    for line in text.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series, value = line.rsplit(" ", 1)
            got = series[len(name):]
            if got == want or (not labels and got == ""):
                return float(value)
    return 0.0


def expect_disconnect_cancels(port, base, stream):
    """A client that sends a 480-token completion (`stream` or not), gets its 200 status and goes
    away: its request ends long before max_tokens."""
    what = "streaming" if stream else "non-streaming"
    labels = {"adapter": "__base__"}
    before_requests = metric(port, "loraserve_adapter_requests_total", labels)
    before_tokens = metric(port, "loraserve_generated_tokens_total", labels)
    conn = HTTPConnection("127.0.0.1", port, timeout=30)
    body = {"model": base, "prompt": "Once upon a time", "max_tokens": 480, "temperature": 1, "seed": 1,
            "ignore_eos": True}
    if stream:
        body["stream"] = True
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()  # non-streaming: the status comes with the first heartbeat
    check(resp.status == 200, f"{what} status {resp.status}")
    if stream:
        first = resp.fp.readline()
        check(first.startswith(b"data: ") or first.strip() != b"", f"first stream line {first!r}")
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    deadline = time.time() + 20
    while metric(port, "loraserve_adapter_requests_total", labels) == before_requests and time.time() < deadline:
        time.sleep(0.05)
    check(metric(port, "loraserve_adapter_requests_total", labels) == before_requests + 1, f"the {what} request ended")
    generated = metric(port, "loraserve_generated_tokens_total", labels) - before_tokens
    check(generated < 240, f"{what} request cancelled after {generated} of 480 tokens")


def test_stream_disconnect_cancels(port, base):
    """A streaming client that goes away: its request ends long before max_tokens."""
    expect_disconnect_cancels(port, base, stream=True)


def test_nonstream_heartbeat_and_disconnect(client, port, base):
    """A non-streaming completion longer than --http_completion_heartbeat (20 ms here): 200, spaces,
    then the JSON body (the openai package parses it); a client that goes away cancels it."""
    r = client.completions.create(model=base, prompt="Once upon a time", max_tokens=400, temperature=1,
                                  seed=3, extra_body={"ignore_eos": True})
    check(r.usage.completion_tokens == 400 and r.choices[0].finish_reason == "length",
          f"long non-streaming completion: {r.usage}")
    body = json.dumps({"model": base, "prompt": "Once upon a time", "max_tokens": 400, "temperature": 1,
                       "seed": 3, "ignore_eos": True})
    status, _, raw = http(port, "POST", "/v1/completions", body, {"Content-Type": "application/json"})
    check(status == 200 and raw.startswith(b" ") and json.loads(raw)["usage"]["completion_tokens"] == 400,
          f"heartbeat body: {status} {raw[:40]!r}")
    expect_disconnect_cancels(port, base, stream=False)


def test_vllm_adapter_routes(client, port, base, adapter_root):
    """vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter, and the chat-completions 400."""
    def post(path, doc):
        return http(port, "POST", path, json.dumps(doc), {"Content-Type": "application/json"})

    status, _, text = post("/v1/load_lora_adapter", {"lora_name": "mlp", "lora_path": "demo-mlp"})
    check(status == 200 and b"added successfully" in text, f"load relative: {status} {text!r}")
    check("mlp" in [m.id for m in client.models.list().data], "the loaded adapter is a model")
    r = client.completions.create(model="mlp", prompt="Once upon a time", max_tokens=4, temperature=0)
    check(r.usage.completion_tokens == 4, "completion with the adapter loaded over HTTP")
    status, _, text = post("/v1/load_lora_adapter", {"lora_name": "mlp", "lora_path": "demo-mlp"})
    check(status == 200 and b"already loaded" in text, f"load again: {status} {text!r}")
    status, _, text = post("/v1/load_lora_adapter", {"lora_name": "mlp", "lora_path": "demo-dora"})
    check(status == 409, f"same name, other files: {status} {text!r}")
    status, _, text = post("/v1/load_lora_adapter",
                           {"lora_name": "dora", "lora_path": os.path.join(os.path.abspath(adapter_root), "demo-dora")})
    check(status == 200, f"load absolute under the root: {status} {text!r}")
    status, _, text = post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/etc"})
    check(status == 400 and json.loads(text)["error"]["param"] == "lora_path", f"outside the root: {status} {text!r}")
    status, _, text = post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "no-such-dir"})
    check(status == 404, f"missing dir: {status} {text!r}")
    status, _, text = post("/v1/load_lora_adapter", {"lora_path": "demo-mlp"})
    check(status == 400 and json.loads(text)["error"]["param"] == "lora_name", f"no name: {status} {text!r}")
    for name in ("mlp", "dora"):
        status, _, text = post("/v1/unload_lora_adapter", {"lora_name": name})
        check(status == 200 and b"removed successfully" in text, f"unload {name}: {status} {text!r}")
    status, _, _ = post("/v1/unload_lora_adapter", {"lora_name": "mlp"})
    check(status == 404, f"unload twice: {status}")
    check("mlp" not in [m.id for m in client.models.list().data], "unloaded adapters leave /v1/models")
    e = expect_error(lambda: client.chat.completions.create(model=base, messages=[{"role": "user", "content": "hi"}]),
                     openai.BadRequestError, 400, "chat without a template")
    if e is not None:
        check(e.body.get("code") == "chat_template_missing", f"chat error code {e.body}")


def test_chat(binary, model, adapter_root, workdir):
    """/v1/chat/completions on a copy of the model with a chat template in tokenizer_config.json:
    the rendered prompt (<s> + the user's text) gives exactly the completion of that text; streamed
    deltas add up to the same message; bad messages are 400s."""
    chat_model = os.path.join(workdir, "chat-model")
    shutil.copytree(model, chat_model)
    with open(os.path.join(chat_model, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": {"content": "<s>"}, "eos_token": "</s>",
                   "chat_template": "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
                                    "{{ m['content'] | trim }}{% endif %}{% endfor %}"}, f)
    server = LoraserveProcess(binary, chat_model, adapter_root, workdir, name="chat", failure=AssertionError)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.metrics_port}/v1", api_key="unused", max_retries=0)
        base = client.models.list().data[0].id
        want = client.completions.create(model=base, prompt="Once upon a time", max_tokens=12, temperature=0)
        msgs = [{"role": "system", "content": "ignored by this template"},
                {"role": "user", "content": " Once upon a time "}]
        r = client.chat.completions.create(model=base, messages=msgs, max_tokens=12, temperature=0)
        check(r.object == "chat.completion" and r.choices[0].message.role == "assistant", f"chat shape {r}")
        check(r.choices[0].message.content == want.choices[0].text, f"chat {r.choices[0].message.content!r} != "
                                                                    f"completion {want.choices[0].text!r}")
        check(r.usage.prompt_tokens == want.usage.prompt_tokens == 5 and r.choices[0].finish_reason == "length",
              f"chat usage {r.usage} finish {r.choices[0].finish_reason}")
        parts = [{"type": "text", "text": "Once upon"}, {"type": "text", "text": " a time"}]
        chunks = list(client.chat.completions.create(model=base, messages=[{"role": "user", "content": parts}],
                                                     max_completion_tokens=12, temperature=0, stream=True))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        check(text == want.choices[0].text, f"streamed chat {text!r}")
        check(chunks[-1].choices[0].finish_reason == "length" and chunks[0].object == "chat.completion.chunk",
              f"last chunk {chunks[-1]}")
        for what, kwargs in (("no messages", {"messages": []}),
                             ("image part", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                             ("no role", {"messages": [{"content": "x"}]}),
                             ("logprobs", {"messages": msgs, "logprobs": True}),
                             ("tools", {"messages": msgs, "extra_body": {"tools": []}})):
            expect_error(lambda: client.chat.completions.create(model=base, **kwargs), openai.BadRequestError, 400,
                         f"chat {what}")
    finally:
        check(server.stop() == 0, "chat server exits 0")


def test_auth(binary, model, adapter_root, workdir):
    tokens = os.path.join(workdir, "tokens")
    with open(tokens, "w") as f:
        f.write("sk-right\n")
    server = LoraserveProcess(binary, model, adapter_root, workdir, name="auth",
                              extra=["--auth_tokens_file=" + tokens], failure=AssertionError)
    try:
        base_url = f"http://127.0.0.1:{server.metrics_port}/v1"
        wrong = openai.OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0)
        expect_error(lambda: wrong.completions.create(model="x", prompt="x"), openai.AuthenticationError, 401,
                     "unknown token")
        expect_error(lambda: wrong.models.list(), openai.AuthenticationError, 401, "unknown token on models")
        status, _, _ = http(server.metrics_port, "POST", "/v1/completions", '{"model": "x", "prompt": "x"}')
        check(status == 401, f"no token: status {status}")
        right = openai.OpenAI(base_url=base_url, api_key="sk-right", max_retries=0)
        base = right.models.list().data[0].id
        r = right.completions.create(model=base, prompt="Hi", max_tokens=2, temperature=0)
        check(r.usage.completion_tokens == 2, "the right token is served")
    finally:
        check(server.stop() == 0, "auth server exits 0")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("loraserve", "loractl", "model", "adapter_root"):  # binaries, demo model and adapters
        parser.add_argument("--" + name, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        server = LoraserveProcess(args.loraserve, args.model, args.adapter_root, workdir, failure=AssertionError,
                                  extra=["--http_completion_heartbeat=20ms"])
        try:
            adapter = "demo-qv"
            subprocess.run([args.loractl, "--addr", server.addr, "adapters", "load", adapter, adapter],
                           check=True, stdout=subprocess.DEVNULL)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.metrics_port}/v1", api_key="unused",
                                   max_retries=0)
            base = client.models.list().data[0].id
            test_models_and_completions(client, server.metrics_port, base, adapter)
            test_errors(client, server.metrics_port, base)
            test_vllm_adapter_routes(client, server.metrics_port, base, args.adapter_root)
            test_stream_disconnect_cancels(server.metrics_port, base)
            test_nonstream_heartbeat_and_disconnect(client, server.metrics_port, base)
            test_random_bad_bodies(server.metrics_port, base)
        finally:
            check(server.stop() == 0, "server exits 0 on SIGTERM")
        test_auth(args.loraserve, args.model, args.adapter_root, workdir)
        test_chat(args.loraserve, args.model, args.adapter_root, workdir)
    if FAILURES:
        print(f"{len(FAILURES)} failure(s)")
        return 1
    print("openai_test: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
