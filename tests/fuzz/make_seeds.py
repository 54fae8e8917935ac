#!/usr/bin/python3
"""Writes the seed corpora under tests/fuzz/corpus/ (committed; rerun to regenerate). Needs protoc
for the RPC seeds and a configured build's demo adapters for the adapter configs.
Usage: make_seeds.py BUILD_DIR"""

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
CORPUS = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None):
    header, blobs, off = {}, b"", 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        blobs += data
        off += len(data)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + blobs


def encode(message, proto, text):
    return subprocess.run(["protoc", "-I", os.path.join(ROOT, "proto"), "--encode=" + message, proto],
                          input=text.encode(), capture_output=True, check=True).stdout


def main():
    build = sys.argv[1]
    shutil.rmtree(CORPUS, ignore_errors=True)
    # safetensors
    put("safetensors_fuzz", "one_f32", safetensors({"w": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4))}))
    put("safetensors_fuzz", "two_with_metadata", safetensors(
        {"a": ("BF16", [3], b"\0\x3f" * 3), "b": ("I64", [1], struct.pack("<q", 7))}, {"format": "pt"}))
    put("safetensors_fuzz", "empty", safetensors({}))
    put("safetensors_fuzz", "scalar", safetensors({"s": ("F16", [], b"\0\x3c")}))
    put("safetensors_fuzz", "bad_length", struct.pack("<Q", 1 << 40) + b"{}")
    # configs
    with open(os.path.join(ROOT, "models", "stories260K", "config.json")) as f:
        put("config_fuzz", "stories260K_config.json", f.read())
    for d in sorted(os.listdir(os.path.join(build, "default-adapters"))):
        with open(os.path.join(build, "default-adapters", d, "adapter_config.json")) as f:
            put("config_fuzz", f"{d}_adapter_config.json", f.read())
    put("config_fuzz", "patterns.json", json.dumps({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": "^.*q_proj$",
        "rank_pattern": {"layers.0.self_attn.q_proj": 2}, "alpha_pattern": {"q_proj": 1e308},
        "use_rslora": True, "layers_to_transform": [0], "modules_to_save": ["lm_head"]}))
    # tokenizer: even first byte = a tokenizer.json, odd = text for the built-in tokenizer
    with open(os.path.join(ROOT, "models", "stories260K", "tokenizer.json")) as f:
        put("tokenizer_fuzz", "stories260K_tokenizer.json", "\0" + f.read())
    for i, text in enumerate(["Once upon a time", " <s></s><unk> x", "caf\u00e9 \U0001F43B\t\n  end",
                              "\xff\xfe invalid utf8 \xc3", "a" * 300]):
        raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
        put("tokenizer_fuzz", f"text_{i}", bytes([1 + 2 * (i % 2)]) + raw)
    # upload chunks: cap byte, then per chunk: pick, data (len-prefixed), flags[, u32..., sha]
    def chunk(pick, data, flags, extra=b""):
        return bytes([pick, len(data)]) + data + bytes([flags]) + extra
    cfg = b'{"peft_type": "LORA"}'
    put("upload_chunks_fuzz", "one_file", bytes([1]) + chunk(0, cfg, 2 | 4 | 8))
    put("upload_chunks_fuzz", "two_files", bytes([3]) + chunk(0, cfg[:10], 0) + chunk(0, cfg[10:], 2 | 4 | 8)
        + chunk(1, b"\0" * 40, 2 | 4 | 8))
    put("upload_chunks_fuzz", "escape", bytes([1]) + chunk(3, b"x", 2 | 4 | 8) + chunk(4, b"y", 2 | 4 | 8))
    put("upload_chunks_fuzz", "bad_sha", bytes([1]) + chunk(2, b"abc", 2 | 4, bytes([64]) + b"0" * 64))
    put("upload_chunks_fuzz", "gap", bytes([1]) + chunk(0, b"abc", 1, struct.pack(">I", (1 << 16) + 9)))
    # RPC requests: first byte = the message (rpc_validation_fuzz.cc), then its wire encoding
    inf, ad = "loraserve/v1/inference_service.proto", "loraserve/v1/adapter_service.proto"
    put("rpc_validation_fuzz", "generate_text", b"\0" + encode("loraserve.v1.GenerateRequest", inf,
        'adapter: "x" text: "Once" sampling { temperature: 0.7 top_p: 0.9 max_new_tokens: 8 stop: "." seed: 1 }'))
    put("rpc_validation_fuzz", "generate_ids", b"\0" + encode("loraserve.v1.GenerateRequest", inf,
        'adapter: "shared/x" token_ids: [1, 2, 600] sampling { top_k: 5 logprobs: true top_logprobs: 3 }'))
    put("rpc_validation_fuzz", "score", b"\1" + encode("loraserve.v1.ScoreRequest", inf,
        'adapter: "acme/x" token_ids: [1, 403, 407] full_logits: true top_logprobs: 2'))
    put("rpc_validation_fuzz", "combine", b"\2" + encode("loraserve.v1.CombineAdaptersRequest", ad,
        'name: "mix" sources { name: "a" weight: 0.5 } sources { name: "shared/b" weight: 1 } '
        'combination_type: COMBINATION_TYPE_TIES density: 0.5 svd_rank: 4'))
    put("rpc_validation_fuzz", "load", b"\3" + encode("loraserve.v1.LoadAdapterRequest", ad,
        'name: "x" path: "a/b"'))
    put("rpc_validation_fuzz", "load_escape", b"\3" + encode("loraserve.v1.LoadAdapterRequest", ad,
        'name: "x" path: "a/link/../../.."'))
    for i, n in enumerate(["x", "acme/x", "beta/x", "shared/x", "a/b/c", "../x", ""]):
        put("rpc_validation_fuzz", f"name_{i}", b"\4" + n.encode())
    put("rpc_validation_fuzz", "tenants", b"\5" + json.dumps({"tenants": [
        {"id": "t", "role": "operator", "tokens": ["abc"], "weight": 2,
         "quotas": {"adapters": 3, "tokens_per_minute": 100}}]}).encode())


if __name__ == "__main__":
    main()
