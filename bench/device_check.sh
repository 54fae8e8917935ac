#!/usr/bin/env bash
# The prepared device check (issue 12, part 5): one command on a lent GPU machine, at most about 8
# minutes, writing a Markdown report.
#
#   bash bench/device_check.sh                # on the GPU machine: its own python's torch, cuda
#   bash bench/device_check.sh --dry-run      # here: CPU, tiny shapes, the CUDA-flavour torch venv
#
# Steps: configure and build bench/device_check/ (core, the CUDA kernels, sgmv_kernel_test,
# lora_kernel_test, peft_device_test, engine_device_bench; no gRPC) with ninja or make; run the
# kernel tests; run the PEFT fixtures on the device in float32 and bfloat16 (needs the shared
# fixtures: $LORASERVE_SHARED_DIR or ../shared); benchmark the engine (llama7b shape, bf16: decode
# tok/s and time to first token at batch 1/32/128 with 1/32/128 distinct adapters, base and merged);
# write $OUT/device_check.md (default bench/results/device_check-<date>.md).
# Environment: LORASERVE_DEVICE_DEPS=DIR puts an unpacked prefix of Debian packages (absl, re2,
# nlohmann-json, googletest: bench/device_check.sh --pack-deps DIR makes it) first on the search
# path, for a machine without them. Not yet here: Hugging Face transformers + PEFT as the
# same-GPU peer (needs their wheels carried to the machine).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dry=0 out_dir="" pack=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --out) out_dir=$2; shift ;;
    --pack-deps) pack=$2; shift ;;
    *) echo "device_check: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

if [[ -n "$pack" ]]; then
  # Debian 12 packages with the headers and libraries the check's build needs, unpacked into $pack.
  mkdir -p "$pack/debs"
  (cd "$pack/debs" && apt-get download libabsl-dev libabsl20220623 libre2-dev libre2-9 \
     nlohmann-json3-dev libgtest-dev libgmock-dev >/dev/null)
  for d in "$pack"/debs/*.deb; do dpkg-deb -x "$d" "$pack/root"; done
  echo "device_check: unpacked $(ls "$pack"/debs | wc -l) packages into $pack/root ($(du -sh "$pack/root" | cut -f1))"
  exit 0
fi

start=$(date +%s)
stamp=$(date -u +%Y-%m-%dT%H%MZ)
out_dir=${out_dir:-$root/bench/results}
mkdir -p "$out_dir"
report="$out_dir/device_check-$([[ $dry == 1 ]] && echo dry-run- || true)$stamp.md"
build=${LORASERVE_DEVICE_CHECK_BUILD:-$root/build-device-check}
log="$build/device_check.log"
mkdir -p "$build"
: >"$log"
step() { echo "device_check: $* ($(( $(date +%s) - start ))s)" | tee -a "$log" >&2; }

if [[ $dry == 1 ]]; then
  # The CUDA-flavour wheel, installed without its Python dependencies: used as a LibTorch only.
  torch_prefix=$(bash deploy/install-torch-cuda.sh --print-prefix)
  torch_version=$(sed -n 's/^Version: //p' "$torch_prefix"-*.dist-info/METADATA)
  gpu=none
  device=cpu; shape=tiny; batches=1,4,8; adapters=1,4,8; steps=4; context=16
else
  python=${PYTHON:-python3}
  torch_prefix=$("$python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')
  torch_version=$("$python" -c 'import torch; print(torch.__version__)')
  gpu=$("$python" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")')
  device=${LORASERVE_CHECK_DEVICE:-cuda}; shape=llama7b; batches=1,32,128; adapters=1,32,128; steps=32; context=128
fi
prefix="$torch_prefix"
if [[ -n "${LORASERVE_DEVICE_DEPS:-}" ]]; then
  prefix="$LORASERVE_DEVICE_DEPS/root/usr;$prefix"
  export PKG_CONFIG_PATH="$LORASERVE_DEVICE_DEPS/root/usr/lib/x86_64-linux-gnu/pkgconfig:${PKG_CONFIG_PATH:-}"
  export LD_LIBRARY_PATH="$LORASERVE_DEVICE_DEPS/root/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
fi
nvcc=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
archs=${LORASERVE_CUDA_ARCHS:-$([[ $dry == 1 ]] && echo 90 || "$python" -c 'import torch; p=torch.cuda.get_device_capability(); print(f"{p[0]}{p[1]}")')}
generator=$(command -v ninja >/dev/null && echo Ninja || echo "Unix Makefiles")

step "configuring against torch $torch_version ($torch_prefix), archs $archs"
cmake -S bench/device_check -B "$build" -G "$generator" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_CUDA_COMPILER="$nvcc" -DLORASERVE_CUDA_ARCHS="$archs" \
  -DTORCH_CUDA_ARCH_LIST="$(echo "$archs" | sed -E 's/([0-9])([0-9])/\1.\2/g')" \
  $(command -v ccache >/dev/null && echo -DCMAKE_CXX_COMPILER_LAUNCHER=ccache) >>"$log" 2>&1
step "building"
cmake --build "$build" -j"${JOBS:-$(( $(nproc) > 16 ? 16 : $(nproc) ))}" >>"$log" 2>&1

run_test() {  # name, extra env; prints "passed/skipped/failed" counts line
  local name=$1; shift
  env "$@" "$build/$name" --gtest_brief=1 >"$build/$name.out" 2>&1 && echo ok || echo FAILED
}
step "kernel tests"
sgmv=$(run_test sgmv_kernel_test)
kernel=$(run_test lora_kernel_test)
step "PEFT fixtures on $device"
fixtures=$(run_test peft_device_test LORASERVE_TEST_DEVICE="$device")
step "engine benchmark ($shape on $device)"
bench_dtype=$([[ $dry == 1 ]] && echo float32 || echo bfloat16)
"$build/engine_device_bench" --device="$device" --dtype="$bench_dtype" --shape="$shape" --batches=$batches \
  --adapters=$adapters --steps=$steps --context=$context --out="$build/bench.tsv" 2>>"$log" >/dev/null
step "writing $report"
{
  echo "# Device check $stamp$([[ $dry == 1 ]] && echo ' (dry run on the CPU: tiny shapes, no GPU figures)')"
  echo
  echo "- machine: $(uname -n), $(nproc) CPU cores; GPU: $gpu"
  echo "- torch $torch_version at $torch_prefix; nvcc $("$nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'); archs $archs"
  echo "- commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); command: \`bash bench/device_check.sh$([[ $dry == 1 ]] && echo ' --dry-run')\`"
  echo
  echo "## Tests"
  echo
  echo "| test | result | detail |"
  echo "|---|---|---|"
  echo "| sgmv_kernel_test (CUDA kernels vs gather reference, random shapes) | $sgmv | $(grep -c 'SKIPPED \]' "$build/sgmv_kernel_test.out" || true) skipped |"
  echo "| lora_kernel_test | $kernel | |"
  echo "| peft_device_test on $device | $fixtures | $(grep '^peft_device_test:' "$build/peft_device_test.out" | tr '\n' ';' ) |"
  echo
  echo "## Engine: $shape, $bench_dtype, rank 16 on q,k,v,o, context $context, $steps decode steps"
  echo
  echo "| batch | distinct adapters | mode | time to first token (ms) | decode tok/s | vs base |"
  echo "|---|---|---|---|---|---|"
  tail -n +2 "$build/bench.tsv" | awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6}'
  echo
  echo "Total time: $(( $(date +%s) - start )) s."
} >"$report"
cat "$report"
[[ $sgmv == ok && $kernel == ok && $fixtures == ok ]]
