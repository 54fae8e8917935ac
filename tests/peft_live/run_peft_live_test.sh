#!/usr/bin/env bash
# Runs peft_live_test.py: real PEFT (PyPI, pinned in requirements.txt) against the real loraserve.
# torch is the CUDA flavour's pinned wheel (deploy/install-torch-cuda.sh, idempotent; ~830 MB once,
# shared with `make build-cuda`), seen by the test venv through a .pth file and run on the CPU.
# Exit 77 (skipped, said loudly) when PyPI or the CUDA toolkit's libraries are missing, except
# under CI=true, where that fails the run.
#   run_peft_live_test.sh VENV_DIR LORASERVE_BINARY ARGS...   (ARGS go to peft_live_test.py)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$1"
binary="$2"
shift 2
skip() {
  if [[ "${CI:-}" == "true" ]]; then echo "peft_live_test: $1 (CI=true: failing)" >&2; exit 1; fi
  echo "peft_live_test: SKIPPED: $1" >&2
  exit 77
}
cuda_lib="${CUDA_HOME:-/usr/local/cuda}/lib64"
[[ -e "$cuda_lib/libcudart.so" || -n "$(ls "$cuda_lib"/libcudart.so.* 2>/dev/null)" ]] ||
  skip "no CUDA toolkit libraries in $cuda_lib (PyPI's torch needs them to import, even on the CPU)"
torch_dir="$(bash "$repo/deploy/install-torch-cuda.sh" --print-prefix)" || skip "cannot install the pinned torch"
source "$here/../testing/pinned_venv.sh"
ensure_pinned_venv "$venv" "$here/requirements.txt" peft_live_test --no-deps
echo "$(dirname "$torch_dir")" >"$(ls -d "$venv"/lib/python3*/site-packages)/loraserve-torch.pth"
"$venv/bin/pip" install -q --disable-pip-version-check --no-build-isolation --no-deps --force-reinstall \
  "$repo/client/python" >/dev/null
export LD_LIBRARY_PATH="$cuda_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$venv/bin/python" "$here/peft_live_test.py" --loraserve "$binary" "$@"
