"""loraserve.Client: the loraserve.v1 gRPC API with plain dataclasses, retries and typed errors.

Mirrors the C++ client (client/client.h): idempotent calls are retried on UNAVAILABLE, and on
RESOURCE_EXHAUSTED when the server sent `retry-after-ms`, with exponential backoff and jitter
(the server's hint wins); every failure raises `loraserve.Error` with the gRPC code, the message
and the server's request id.
"""
from __future__ import annotations

import hashlib
import os
import random
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import grpc

from loraserve.v1 import adapter_service_pb2 as apb
from loraserve.v1 import adapter_service_pb2_grpc as apb_grpc
from loraserve.v1 import files_pb2
from loraserve.v1 import inference_service_pb2 as ipb
from loraserve.v1 import inference_service_pb2_grpc as ipb_grpc

REQUEST_ID_KEY = "x-request-id"
RETRY_AFTER_KEY = "retry-after-ms"
ADAPTER_KEY = "x-loraserve-adapter"
CHUNK_BYTES = 1 << 20
_HEALTH_SERVICE = "/grpc.health.v1.Health/Check"


class Error(Exception):
    """A failed call: `code` (grpc.StatusCode), `message`, `request_id` (may be empty)."""

    def __init__(self, code: grpc.StatusCode, message: str, request_id: str = "",
                 retry_after_ms: Optional[int] = None):
        super().__init__(f"{code.name}: {message}" + (f" (request {request_id})" if request_id else ""))
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after_ms = retry_after_ms


@dataclass
class AdapterInfo:
    name: str
    state: str
    residency: str
    source: str
    path: str
    bytes: int
    max_rank: int
    ranks: List[int]
    target_modules: List[str]
    dora: bool
    has_head: bool
    base_model_name_or_path: str
    warnings: List[str]
    uses: int
    checksum: str


@dataclass
class TokenLogprob:
    id: int
    logprob: float


@dataclass
class GeneratedToken:
    id: int
    index: int
    text: str
    logprob: float
    top_logprobs: List[TokenLogprob] = field(default_factory=list)


@dataclass
class GenerateResult:
    text: str
    tokens: List[GeneratedToken]
    finish_reason: str
    stop_string: str
    prompt_tokens: int
    completion_tokens: int
    seed: int


@dataclass
class ScoreResult:
    num_tokens: int
    vocab_size: int
    token_logprobs: List[float]
    logits: List[float]
    top_logprobs: List[List[TokenLogprob]]


@dataclass
class TransferredFile:
    path: str
    size: int
    sha256: str


def _enum_name(enum, value, prefix: str) -> str:
    return enum.Name(value)[len(prefix):].lower()


def _adapter(a) -> AdapterInfo:
    return AdapterInfo(
        name=a.name, state=_enum_name(apb.AdapterState, a.state, "ADAPTER_STATE_"),
        residency=_enum_name(apb.Residency, a.residency, "RESIDENCY_"),
        source=_enum_name(apb.AdapterSource, a.source, "ADAPTER_SOURCE_"), path=a.path, bytes=a.bytes,
        max_rank=a.max_rank, ranks=list(a.ranks), target_modules=list(a.target_modules), dora=a.dora,
        has_head=a.has_head, base_model_name_or_path=a.base_model_name_or_path, warnings=list(a.warnings),
        uses=a.uses, checksum=a.checksum)


def _token(t) -> GeneratedToken:
    return GeneratedToken(t.id, t.index, t.text, t.logprob, [TokenLogprob(x.id, x.logprob) for x in t.top_logprobs])


def _error(e: grpc.RpcError) -> Error:
    md = dict(e.trailing_metadata() or ())
    retry = md.get(RETRY_AFTER_KEY)
    return Error(e.code(), e.details() or "", md.get(REQUEST_ID_KEY, ""),
                 int(retry) if retry and str(retry).isdigit() else None)


class Client:
    """A thread-safe client of one loraserve server.

    address: "host:port". token: bearer token for --auth_tokens_file servers. timeout: seconds per
    call (None = no deadline). retries: extra attempts of idempotent calls. tls_ca: PEM bytes of
    the CA to trust (TLS on); tls_server_name: name to check in the server's certificate.
    """

    def __init__(self, address: str, token: Optional[str] = None, timeout: Optional[float] = 30.0,
                 retries: int = 3, initial_backoff: float = 0.05, max_backoff: float = 2.0,
                 tls_ca: Optional[bytes] = None, tls_server_name: Optional[str] = None):
        if not address:
            raise ValueError("empty server address")
        options = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if tls_ca is not None:
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(tls_ca), options)
        else:
            self._channel = grpc.insecure_channel(address, options)
        self._adapters = apb_grpc.AdapterServiceStub(self._channel)
        self._inference = ipb_grpc.InferenceServiceStub(self._channel)
        self._token = token
        self.timeout = timeout
        self.retries = retries
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _metadata(self, request=None) -> List[Tuple[str, str]]:
        md = [("authorization", f"Bearer {self._token}")] if self._token else []
        # The adapter the call names (its `adapter`, else its `name`): what a proxy hashes on to
        # keep an adapter's traffic on one replica (deploy/envoy/envoy.yaml).
        fields = request.DESCRIPTOR.fields_by_name if request is not None and hasattr(request, "DESCRIPTOR") else {}
        for field in ("adapter", "name"):
            if field in fields and fields[field].type == fields[field].TYPE_STRING and getattr(request, field):
                md.append((ADAPTER_KEY, getattr(request, field)))
                break
        return md

    def _call(self, rpc, request, idempotent: bool = True):
        attempts = 1 + (self.retries if idempotent else 0)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        backoff = self.initial_backoff
        for attempt in range(1, attempts + 1):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return rpc(request, timeout=remaining, metadata=self._metadata(request))
            except grpc.RpcError as e:
                err = _error(e)
                retryable = err.code == grpc.StatusCode.UNAVAILABLE or (
                    err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.retry_after_ms is not None)
                if not retryable or attempt == attempts:
                    raise err from None
                delay = (err.retry_after_ms / 1000.0 if err.retry_after_ms is not None
                         else min(backoff, self.max_backoff) * random.uniform(0.8, 1.2))
                backoff *= 2
                if deadline is not None and time.monotonic() + delay >= deadline:
                    raise err from None
                time.sleep(delay)

    def _receive(self, responses, out_dir: str) -> List[TransferredFile]:
        """Writes a FileChunk stream into out_dir (must exist and be empty), checking SHA-256s."""
        if not os.path.isdir(out_dir) or os.listdir(out_dir):
            raise ValueError(f"{out_dir} must be an existing empty directory")
        files: List[TransferredFile] = []
        current, digest, handle = None, None, None
        try:
            for msg in responses:
                c = msg.chunk
                if not c.path:
                    continue
                parts = c.path.split("/")
                if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
                    raise Error(grpc.StatusCode.INTERNAL, f"server sent a bad path {c.path!r}")
                if c.path != current:
                    current, digest = c.path, hashlib.sha256()
                    os.makedirs(os.path.dirname(os.path.join(out_dir, c.path)) or out_dir, exist_ok=True)
                    handle = open(os.path.join(out_dir, c.path), "wb")
                handle.write(c.data)
                digest.update(c.data)
                if c.eof:
                    handle.close()
                    handle = None
                    if digest.hexdigest() != c.sha256:
                        raise Error(grpc.StatusCode.DATA_LOSS, f"{c.path}: SHA-256 mismatch")
                    files.append(TransferredFile(c.path, c.size, c.sha256))
                    current = None
        except grpc.RpcError as e:
            raise _error(e) from None
        finally:
            if handle is not None:
                handle.close()
        return files

    # ------------------------------------------------------------------ health

    def health(self, service: str = "") -> str:
        """grpc.health.v1 status: "SERVING", "NOT_SERVING", ... (raw bytes protocol, no extra stubs:
        generated grpc.health.v1 modules would shadow grpcio's own `grpc` package)."""
        check = self._channel.unary_unary(_HEALTH_SERVICE)
        # HealthCheckRequest{service = 1}: one length-delimited field, the length as a varint.
        data = service.encode()
        length, n = b"", len(data)
        while True:
            length += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
            n >>= 7
            if n == 0:
                break
        request = (b"\x0a" + length + data) if data else b""
        reply = self._call(check, request)
        status = reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0
        return {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}.get(status, "UNKNOWN")

    # ------------------------------------------------------------------ adapters

    def load_adapter(self, name: str, path: str) -> Tuple[AdapterInfo, bool]:
        """Loads `path` (relative to the server's --adapter_root) as `name`: (info, already_loaded)."""
        r = self._call(self._adapters.LoadAdapter, apb.LoadAdapterRequest(name=name, path=path))
        return _adapter(r.adapter), r.already_loaded

    def upload_adapter(self, name: str, directory: str) -> Tuple[AdapterInfo, bool]:
        """Sends a local PEFT directory's files (chunked, with SHA-256s) and loads them as `name`."""
        paths = []
        for root, dirs, names in os.walk(directory):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for n in sorted(names):
                if not n.startswith("."):
                    paths.append(os.path.relpath(os.path.join(root, n), directory).replace(os.sep, "/"))
        total = sum(os.path.getsize(os.path.join(directory, p)) for p in paths)

        def requests() -> Iterator[apb.UploadAdapterRequest]:
            yield apb.UploadAdapterRequest(name=name, total_bytes=total)
            for p in paths:
                digest, offset = hashlib.sha256(), 0
                with open(os.path.join(directory, p), "rb") as f:
                    data = f.read(CHUNK_BYTES)
                    while True:
                        following = f.read(CHUNK_BYTES)
                        digest.update(data)
                        chunk = files_pb2.FileChunk(path=p, offset=offset, data=data)
                        offset += len(data)
                        if not following:
                            chunk.eof, chunk.size, chunk.sha256 = True, offset, digest.hexdigest()
                            yield apb.UploadAdapterRequest(chunk=chunk)
                            break
                        yield apb.UploadAdapterRequest(chunk=chunk)
                        data = following

        # A fresh request stream per attempt (retries resend everything).
        r = self._call(lambda _, **kw: self._adapters.UploadAdapter(requests(), **kw), None)
        return _adapter(r.adapter), r.already_loaded

    def get_adapter(self, name: str) -> AdapterInfo:
        return _adapter(self._call(self._adapters.GetAdapter, apb.GetAdapterRequest(name=name)).adapter)

    def list_adapters(self) -> List[AdapterInfo]:
        return [_adapter(a) for a in self._call(self._adapters.ListAdapters, apb.ListAdaptersRequest()).adapters]

    def delete_adapter(self, name: str) -> None:
        self._call(self._adapters.DeleteAdapter, apb.DeleteAdapterRequest(name=name))

    def merge_adapter(self, name: str) -> Tuple[AdapterInfo, bool]:
        """Merges `name` into the base weights: (info, already_merged)."""
        r = self._call(self._adapters.MergeAdapter, apb.MergeAdapterRequest(name=name))
        return _adapter(r.adapter), r.already_merged

    def unmerge_adapter(self, name: str) -> AdapterInfo:
        return _adapter(self._call(self._adapters.UnmergeAdapter, apb.UnmergeAdapterRequest(name=name)).adapter)

    def unload_all(self) -> int:
        return self._call(self._adapters.UnloadAll, apb.UnloadAllRequest()).deleted

    def combine_adapters(self, name: str, sources: Sequence[Tuple[str, float]], combination_type: str = "svd",
                         svd_rank: int = 0, svd_clamp: float = 0.0, density: Optional[float] = None,
                         majority_sign_method: str = "total", seed: int = 0) -> AdapterInfo:
        """PEFT add_weighted_adapter: `sources` are (adapter, weight) pairs; types as PEFT names them."""
        try:
            ctype = apb.CombinationType.Value("COMBINATION_TYPE_" + combination_type.upper())
            sign = apb.MajoritySignMethod.Value("MAJORITY_SIGN_METHOD_" + majority_sign_method.upper())
        except ValueError as e:
            raise Error(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        req = apb.CombineAdaptersRequest(
            name=name, sources=[apb.WeightedAdapter(name=n, weight=w) for n, w in sources],
            combination_type=ctype, svd_rank=svd_rank, svd_clamp=svd_clamp, majority_sign_method=sign, seed=seed)
        if density is not None:
            req.density = density
        return _adapter(self._call(self._adapters.CombineAdapters, req, idempotent=False).adapter)

    def save_adapter(self, name: str, out_dir: str) -> List[TransferredFile]:
        """The adapter as a PEFT directory, written into out_dir (existing, empty)."""
        stream = self._adapters.SaveAdapter(apb.SaveAdapterRequest(name=name), timeout=self.timeout,
                                            metadata=self._metadata())
        return self._receive(stream, out_dir)

    def export_merged_model(self, adapters: Sequence[str], out_dir: str) -> List[TransferredFile]:
        """merge_and_unload of `adapters` as a Hugging Face checkpoint, written into out_dir."""
        stream = self._adapters.ExportMergedModel(apb.ExportMergedModelRequest(adapters=list(adapters)),
                                                  timeout=self.timeout, metadata=self._metadata())
        return self._receive(stream, out_dir)

    # ------------------------------------------------------------------ inference

    @staticmethod
    def _generate_request(prompt, adapter: str, max_new_tokens: int, temperature: Optional[float],
                          top_k: int, top_p: Optional[float], seed: Optional[int], stop: Sequence[str],
                          ignore_eos: bool, logprobs: bool, top_logprobs: int) -> ipb.GenerateRequest:
        s = ipb.SamplingOptions(top_k=top_k, max_new_tokens=max_new_tokens, stop=list(stop), ignore_eos=ignore_eos,
                                logprobs=logprobs, top_logprobs=top_logprobs)
        if temperature is not None:
            s.temperature = temperature
        if top_p is not None:
            s.top_p = top_p
        if seed is not None:
            s.seed = seed
        req = ipb.GenerateRequest(adapter=adapter, sampling=s)
        if isinstance(prompt, str):
            req.text = prompt
        else:
            req.token_ids.extend(prompt)
        return req

    def generate_stream(self, prompt, adapter: str = "", max_new_tokens: int = 128,
                        temperature: Optional[float] = None, top_k: int = 0, top_p: Optional[float] = None,
                        seed: Optional[int] = None, stop: Sequence[str] = (), ignore_eos: bool = False,
                        logprobs: bool = False, top_logprobs: int = 0) -> Iterator[GeneratedToken]:
        """Yields each token as the server sends it. `prompt`: text or token ids."""
        req = self._generate_request(prompt, adapter, max_new_tokens, temperature, top_k, top_p, seed, stop,
                                     ignore_eos, logprobs, top_logprobs)
        try:
            for msg in self._inference.Generate(req, timeout=self.timeout, metadata=self._metadata(req)):
                for t in msg.tokens:
                    yield _token(t)
        except grpc.RpcError as e:
            raise _error(e) from None

    def generate(self, prompt, adapter: str = "", max_new_tokens: int = 128, temperature: Optional[float] = None,
                 top_k: int = 0, top_p: Optional[float] = None, seed: Optional[int] = None,
                 stop: Sequence[str] = (), ignore_eos: bool = False, logprobs: bool = False,
                 top_logprobs: int = 0) -> GenerateResult:
        """The whole generation. Retried (seeded or greedy requests only: the same answer) on UNAVAILABLE."""
        req = self._generate_request(prompt, adapter, max_new_tokens, temperature, top_k, top_p, seed, stop,
                                     ignore_eos, logprobs, top_logprobs)
        deterministic = seed is not None or temperature == 0

        def run(request, timeout=None, metadata=None):
            tokens, summary = [], None
            for msg in self._inference.Generate(request, timeout=timeout, metadata=metadata):
                tokens.extend(_token(t) for t in msg.tokens)
                if msg.HasField("summary"):
                    summary = msg.summary
            return tokens, summary

        tokens, s = self._call(run, req, idempotent=deterministic)
        return GenerateResult(text="".join(t.text for t in tokens), tokens=tokens,
                              finish_reason=_enum_name(ipb.FinishReason, s.finish_reason, "FINISH_REASON_"),
                              stop_string=s.stop_string, prompt_tokens=s.prompt_tokens,
                              completion_tokens=s.completion_tokens, seed=s.seed)

    def score(self, token_ids: Sequence[int], adapter: str = "", full_logits: bool = False,
              top_logprobs: int = 0) -> ScoreResult:
        r = self._call(self._inference.Score, ipb.ScoreRequest(adapter=adapter, token_ids=list(token_ids),
                                                              full_logits=full_logits, top_logprobs=top_logprobs))
        return ScoreResult(r.num_tokens, r.vocab_size, list(r.token_logprobs), list(r.logits),
                           [[TokenLogprob(x.id, x.logprob) for x in p.top] for p in r.top_logprobs])

    def tokenize(self, text: str, add_special_tokens: bool = True, parse_special: bool = False) -> List[int]:
        return list(self._call(self._inference.Tokenize, ipb.TokenizeRequest(
            text=text, add_special_tokens=add_special_tokens, parse_special=parse_special)).token_ids)

    def detokenize(self, token_ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._call(self._inference.Detokenize, ipb.DetokenizeRequest(
            token_ids=list(token_ids), skip_special_tokens=skip_special_tokens)).text

    def token_texts(self, token_ids: Sequence[int]) -> List[str]:
        return list(self._call(self._inference.Detokenize, ipb.DetokenizeRequest(
            token_ids=list(token_ids), per_token=True)).token_texts)
