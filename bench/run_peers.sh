#!/usr/bin/env bash
# bench/peers.py in the pinned venv of tests/peft_live (transformers + peft from PyPI, the CUDA
# flavour's pinned torch 2.11 run on the CPU; installed idempotently, ~2 min the first time), against
# build/bench/lora_bench in the same run. OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are left as the
# environment sets them (say so when quoting numbers).
#   bash bench/run_peers.sh [BUILD_DIR] [peers.py args...]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$repo/build}"
shift || true
venv="$build/peft-live-venv"
cuda_lib="${CUDA_HOME:-/usr/local/cuda}/lib64"
torch_dir="$(bash "$repo/deploy/install-torch-cuda.sh" --print-prefix)"
source "$repo/tests/testing/pinned_venv.sh"
ensure_pinned_venv "$venv" "$repo/tests/peft_live/requirements.txt" peers --no-deps
echo "$(dirname "$torch_dir")" >"$(ls -d "$venv"/lib/python3*/site-packages)/loraserve-torch.pth"
export LD_LIBRARY_PATH="$cuda_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$venv/bin/python" "$repo/bench/peers.py" --lora_bench "$build/bench/lora_bench" "$@"
