#!/usr/bin/env bash
# Installs the CUDA LibTorch flavour into a project-local venv (default .venv-torch-cuda, or
# $LORASERVE_TORCH_CUDA_VENV) from deploy/torch-cuda-requirements.txt, once: a stamp of that
# file's SHA-256 makes a second run a no-op. About 830 MB from PyPI, 1-2 minutes on a fast link.
#
#   deploy/install-torch-cuda.sh                  install (idempotent)
#   deploy/install-torch-cuda.sh --print-prefix   install, then print the torch package directory
#                                                 (what CMAKE_PREFIX_PATH needs)
#
# Isolation from Debian's gRPC/protobuf: the wheel carries protobuf 3.13 headers and a protoc
# for its internal ONNX code, while Debian's gRPC is built on protobuf 3.21. Both are removed from
# the venv so that the only protobuf the build can see is Debian's (the wheel's libraries keep
# their own protobuf internal; only a few of its symbols are exported, none that ours use).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${LORASERVE_TORCH_CUDA_VENV:-$root/.venv-torch-cuda}"
requirements="$root/deploy/torch-cuda-requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

torch_dir() { ls -d "$venv"/lib/python3*/site-packages/torch 2>/dev/null | head -1; }

if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" || -z "$(torch_dir)" ]]; then
  echo "install-torch-cuda: installing $(grep -c '^[a-z]' "$requirements") pinned wheels into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  if ! "$venv/bin/pip" install -q --disable-pip-version-check --no-deps --require-hashes \
         -r "$requirements" >&2; then
    rm -rf "$venv"
    echo "install-torch-cuda: cannot install the pinned wheels from PyPI" >&2
    exit 1
  fi
  t="$(torch_dir)"
  rm -rf "$t/include/google" "$t"/bin/protoc*
  echo "$want" >"$stamp"
fi
if [[ "${1:-}" == "--print-prefix" ]]; then
  torch_dir
fi
