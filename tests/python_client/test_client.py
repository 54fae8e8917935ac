"""The Python client (client/python, package `loraserve`) against the real loraserve on the built-in
model and demo adapters, and its retries against a scripted fake server."""
import os
import sys
import tempfile
import threading
from concurrent import futures

import grpc
import pytest

import loraserve
from loraserve.v1 import inference_service_pb2 as ipb
from loraserve.v1 import inference_service_pb2_grpc as ipb_grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testing"))
from loraserve_process import LoraserveProcess  # noqa: E402

ADAPTER_ROOT = os.environ.get("LORASERVE_ADAPTER_ROOT", "")


@pytest.fixture(scope="module")
def server():
    with tempfile.TemporaryDirectory() as work:
        s = LoraserveProcess(os.environ["LORASERVE_BINARY"], os.environ["LORASERVE_MODEL"], ADAPTER_ROOT, work)
        try:
            yield s
        finally:
            assert s.stop() == 0


@pytest.fixture()
def client(server):
    with loraserve.Client(server.addr, timeout=30) as c:
        yield c
        c.unload_all()


def test_health_tokenize_detokenize(client):
    assert client.health() == "SERVING"
    with pytest.raises(loraserve.Error) as e:  # a name longer than 127 bytes: a two-byte length
        client.health("s" * 200)
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    ids = client.tokenize("Once upon a time")
    assert ids[0] == 1 and len(ids) == 5
    assert client.detokenize(ids, skip_special_tokens=True) == "Once upon a time"
    assert client.token_texts(ids[1:]) == ["Once", "upon", "a", "time"]  # each decoded alone


def test_generate_and_stream(client):
    r = client.generate("Once upon a time", max_new_tokens=12, temperature=0)
    assert r.text.startswith(", there was a little girl named Lily")  # stories260K's greedy story
    assert r.completion_tokens == 12 and r.finish_reason == "length" and r.prompt_tokens == 5
    streamed = list(client.generate_stream("Once upon a time", max_new_tokens=12, temperature=0))
    assert "".join(t.text for t in streamed) == r.text
    assert [t.index for t in streamed] == list(range(12))
    lp = client.generate([1, 403], max_new_tokens=3, seed=5, logprobs=True, top_logprobs=2)
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in lp.tokens) and lp.seed == 5


def test_score(client):
    s = client.score([1, 403, 407, 261], top_logprobs=1)
    assert s.num_tokens == 4 and s.vocab_size == 512 and len(s.token_logprobs) == 3
    assert len(s.top_logprobs) == 4 and all(len(p) == 1 for p in s.top_logprobs)
    full = client.score([1, 403], full_logits=True)
    assert len(full.logits) == 2 * 512


def test_adapter_lifecycle(client):
    info, again = client.load_adapter("qv", "demo-qv")
    assert info.name == "qv" and info.state == "ready" and not again and info.checksum
    assert client.load_adapter("qv", "demo-qv")[1] is True  # the same files: already loaded
    assert [a.name for a in client.list_adapters()] == ["qv"]
    assert client.get_adapter("qv").max_rank == 8
    base = client.score([1, 403, 407], adapter="").token_logprobs
    adapted = client.score([1, 403, 407], adapter="qv").token_logprobs
    assert base != adapted
    merged, was = client.merge_adapter("qv")
    assert merged.state == "merged" and not was
    assert client.score([1, 403, 407], adapter="qv").token_logprobs == pytest.approx(adapted, abs=1e-4)
    assert client.unmerge_adapter("qv").state == "ready"
    client.load_adapter("mlp", "demo-mlp")
    mix = client.combine_adapters("mix", [("qv", 0.7), ("mlp", 0.3)], combination_type="cat")
    assert mix.source == "combined"
    with tempfile.TemporaryDirectory() as out:
        files = client.save_adapter("qv", out)
        assert sorted(f.path for f in files) == ["adapter_config.json", "adapter_model.safetensors"]
        assert all(os.path.getsize(os.path.join(out, f.path)) == f.size for f in files)
        uploaded, _ = client.upload_adapter("qv-copy", out)
        assert uploaded.checksum == client.get_adapter("qv").checksum and uploaded.source == "upload"
    with tempfile.TemporaryDirectory() as out:
        files = client.export_merged_model(["qv"], out)
        assert "config.json" in [f.path for f in files]
    client.delete_adapter("qv-copy")
    assert client.unload_all() == 3


def test_hostile_adapters_are_refused_by_name(client):
    """Issue 14: lora_alpha 1e308 (and a NaN weight) must fail the upload with INVALID_ARGUMENT
    naming the field, not load and then answer NaN logits."""
    import json
    import shutil
    import struct
    src = os.path.join(ADAPTER_ROOT, "demo-qv")
    with tempfile.TemporaryDirectory() as work:
        huge = os.path.join(work, "huge")
        shutil.copytree(src, huge)
        with open(os.path.join(huge, "adapter_config.json")) as f:
            cfg = json.load(f)
        cfg["lora_alpha"] = 1e308
        with open(os.path.join(huge, "adapter_config.json"), "w") as f:
            json.dump(cfg, f)
        with pytest.raises(loraserve.Error) as e:
            client.upload_adapter("huge", huge)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "lora_alpha" in e.value.message
        # A NaN in the first float32 of the weights file (safetensors: 8-byte header length, header).
        nan = os.path.join(work, "nan")
        shutil.copytree(src, nan)
        path = os.path.join(nan, "adapter_model.safetensors")
        with open(path, "r+b") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            f.seek(8 + n)
            f.write(struct.pack("<f", float("nan")))
        with pytest.raises(loraserve.Error) as e:
            client.upload_adapter("nan", nan)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "NaN or Inf" in e.value.message
    assert not {a.name for a in client.list_adapters()} & {"huge", "nan"}


def test_errors_carry_code_and_request_id(client):
    with pytest.raises(loraserve.Error) as e:
        client.get_adapter("no-such-adapter")
    assert e.value.code == grpc.StatusCode.NOT_FOUND and e.value.request_id and "no-such-adapter" in e.value.message
    with pytest.raises(loraserve.Error) as e:
        client.generate("x", adapter="missing")
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(loraserve.Error) as e:
        client.combine_adapters("m", [("a", 1.0)], combination_type="bogus")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with tempfile.TemporaryDirectory() as out:
        open(os.path.join(out, "x"), "w").close()
        with pytest.raises(ValueError):
            client.save_adapter("qv", out)  # not empty


class FlakyInference(ipb_grpc.InferenceServiceServicer):
    """UNAVAILABLE twice, then RESOURCE_EXHAUSTED with retry-after-ms, then the answer."""

    def __init__(self):
        self.calls = 0
        self.lock = threading.Lock()

    def Tokenize(self, request, context):
        with self.lock:
            self.calls += 1
            n = self.calls
        if n <= 2:
            context.abort(grpc.StatusCode.UNAVAILABLE, "starting")
        if n == 3:
            context.set_trailing_metadata([("retry-after-ms", "30"), ("x-request-id", "r3")])
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        return ipb.TokenizeResponse(token_ids=[7, 8])

    def Score(self, request, context):
        context.set_trailing_metadata([("x-request-id", "rid-1")])
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full, no hint")


def test_retries_unavailable_and_retry_after():
    fake = FlakyInference()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    ipb_grpc.add_InferenceServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with loraserve.Client(f"127.0.0.1:{port}", retries=3, initial_backoff=0.01) as c:
            assert c.tokenize("x") == [7, 8]
            assert fake.calls == 4
            with pytest.raises(loraserve.Error) as e:  # RESOURCE_EXHAUSTED without a hint: not retried
                c.score([1])
            assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.value.request_id == "rid-1"
        fake.calls = 0
        with loraserve.Client(f"127.0.0.1:{port}", retries=1, initial_backoff=0.01) as c:
            with pytest.raises(loraserve.Error) as e:  # out of attempts
                c.tokenize("x")
            assert e.value.code == grpc.StatusCode.UNAVAILABLE and fake.calls == 2
    finally:
        server.stop(0)


def test_bearer_token(server):
    with tempfile.TemporaryDirectory() as work:
        tokens = os.path.join(work, "tokens")
        with open(tokens, "w") as f:
            f.write("secret\n")
        s = LoraserveProcess(os.environ["LORASERVE_BINARY"], os.environ["LORASERVE_MODEL"], ADAPTER_ROOT, work,
                             name="auth", extra=["--auth_tokens_file=" + tokens])
        try:
            with loraserve.Client(s.addr, retries=0) as anonymous:
                with pytest.raises(loraserve.Error) as e:
                    anonymous.list_adapters()
                assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
            with loraserve.Client(s.addr, token="secret") as c:
                assert c.list_adapters() == []
        finally:
            assert s.stop() == 0


def test_load_on_miss():
    """--adapter_load_on_miss: a request naming an unloaded adapter loads <adapter_root>/<name>
    (gRPC Generate and Score, and the OpenAI model field), concurrent first requests load it once,
    an unknown name is still NOT_FOUND."""
    import json
    import urllib.error
    import urllib.request
    with tempfile.TemporaryDirectory() as work:
        s = LoraserveProcess(os.environ["LORASERVE_BINARY"], os.environ["LORASERVE_MODEL"], ADAPTER_ROOT, work,
                             name="on_miss", extra=("--adapter_load_on_miss",))
        try:
            with loraserve.Client(s.addr, timeout=30) as c:
                assert c.list_adapters() == []
                with futures.ThreadPoolExecutor(8) as pool:
                    results = list(pool.map(lambda _: c.generate([1, 403], adapter="demo-qv", max_new_tokens=2,
                                                                 temperature=0), range(8)))
                assert len({tuple(t.id for t in r.tokens) for r in results}) == 1
                info = c.get_adapter("demo-qv")
                assert info.state == "ready" and info.source == "adapter_root" and info.path == "demo-qv"
                assert c.score([1, 403, 404], adapter="demo-mlp").num_tokens == 3
                with pytest.raises(loraserve.Error) as e:
                    c.generate([1, 403], adapter="no-such-adapter", max_new_tokens=1)
                assert e.value.code == grpc.StatusCode.NOT_FOUND and "no-such-adapter" in e.value.message
                body = json.dumps({"model": "demo-dora", "prompt": "Once", "max_tokens": 2}).encode()
                req = urllib.request.Request(f"http://{s.metrics_addr}/v1/completions", data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=30) as r:
                    assert json.load(r)["model"] == "demo-dora"
                req = urllib.request.Request(f"http://{s.metrics_addr}/v1/completions",
                                             data=body.replace(b"demo-dora", b"nope"),
                                             headers={"Content-Type": "application/json"})
                with pytest.raises(urllib.error.HTTPError) as he:
                    urllib.request.urlopen(req, timeout=30)
                assert he.value.code == 404
                assert sorted(a.name for a in c.list_adapters()) == ["demo-dora", "demo-mlp", "demo-qv"]
            log = s.logs()
            assert log.count("event=adapter_loaded_on_miss name=demo-qv") == 1, log
        finally:
            assert s.stop() == 0


def test_tenants_file_and_sighup_reload():
    """--tenants_file on the real binary: per-tenant names (load-on-miss included), SIGHUP rereads
    the file while a generation streams (it finishes), a broken file keeps the current tenants."""
    import json
    import signal
    import time

    def tenants(extra_token=None):
        acme = ["acme-1"] + ([extra_token] if extra_token else [])
        return json.dumps({"tenants": [
            {"id": "acme", "role": "operator", "tokens": acme, "adapter_dir": ""},
            {"id": "beta", "role": "operator", "tokens": ["beta-1"], "adapter_dir": ""}]})

    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "tenants.json")
        with open(path, "w") as f:
            f.write(tenants())
        s = LoraserveProcess(os.environ["LORASERVE_BINARY"], os.environ["LORASERVE_MODEL"], ADAPTER_ROOT, work,
                             name="tenants", extra=["--tenants_file=" + path, "--adapter_load_on_miss"])
        try:
            with loraserve.Client(s.addr, token="acme-1", timeout=30) as acme, \
                    loraserve.Client(s.addr, token="beta-1", timeout=30, retries=0) as beta:
                acme.generate([1, 403], adapter="demo-qv", max_new_tokens=2)  # loads acme's demo-qv
                assert [a.name for a in acme.list_adapters()] == ["demo-qv"]
                assert beta.list_adapters() == []
                with pytest.raises(loraserve.Error) as e:
                    beta.get_adapter("acme/demo-qv")
                assert e.value.code == grpc.StatusCode.NOT_FOUND
                stream = acme.generate_stream([1, 403], adapter="demo-qv", max_new_tokens=200, temperature=0,
                                              ignore_eos=True)
                first = next(stream)
                with open(path, "w") as f:
                    f.write(tenants("acme-2"))
                s.proc.send_signal(signal.SIGHUP)
                deadline = time.time() + 10
                while "event=tenants_reloaded" not in s.logs() and time.time() < deadline:
                    time.sleep(0.05)
                assert "event=tenants_reloaded" in s.logs(), s.logs()
                rest = list(stream)
                assert first is not None and len(rest) >= 1
                with loraserve.Client(s.addr, token="acme-2") as acme2:
                    assert [a.name for a in acme2.list_adapters()] == ["demo-qv"]
                with open(path, "w") as f:
                    f.write("{ broken")
                s.proc.send_signal(signal.SIGHUP)
                deadline = time.time() + 10
                while "event=tenants_reload_failed" not in s.logs() and time.time() < deadline:
                    time.sleep(0.05)
                assert "event=tenants_reload_failed" in s.logs(), s.logs()
                assert [a.name for a in acme.list_adapters()] == ["demo-qv"]
                assert s.proc.poll() is None
        finally:
            assert s.stop() == 0
