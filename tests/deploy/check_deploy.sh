#!/usr/bin/env bash
# Offline checks of deploy/: hadolint on both Dockerfiles; `kubectl kustomize` renders each
# overlay; kubernetes-validate (strict) checks every object against Kubernetes $K8S_VERSION's
# schemas; yamllint on every manifest; check_manifests.py checks what the schemas cannot (flags
# are real server flags, grace period above --shutdown_grace, gRPC probes, GPU settings); and
# check_runtime_libs.py checks the runtime image's package list against `ldd` of the binaries.
# Exit 77 (skipped, said loudly) when PyPI cannot be reached, except under CI=true.
#   check_deploy.sh VENV_DIR LORASERVE_BINARY LORACTL_BINARY MKMODEL_BINARY
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$1"
shift
K8S_VERSION="${K8S_VERSION:-1.33.0}"
source "$here/../testing/pinned_venv.sh"
ensure_pinned_venv "$venv" "$here/requirements.txt" deploy_checks
bin="$venv/bin"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "deploy_checks: hadolint"
"$bin/hadolint" "$repo/Dockerfile" "$repo/deploy/Dockerfile.cuda"
echo "deploy_checks: yamllint"
"$bin/yamllint" -s -c "$here/yamllint.yaml" "$repo/deploy/k8s" "$repo/deploy/envoy"
for overlay in cpu gpu; do
  echo "deploy_checks: kubectl kustomize overlays/$overlay, kubernetes-validate $K8S_VERSION"
  "$bin/kubectl" kustomize "$repo/deploy/k8s/overlays/$overlay" >"$out/$overlay.yaml"
  "$bin/kubernetes-validate" --quiet --strict -k "$K8S_VERSION" "$out/$overlay.yaml"
done
"$bin/python" "$here/check_manifests.py" --loraserve "$1" "$out/cpu.yaml" "$out/gpu.yaml" "$repo/Dockerfile" \
  "$repo/deploy/Dockerfile.cuda"
/usr/bin/python3 "$here/check_runtime_libs.py" "$repo/deploy/runtime-packages.txt" "$@"
echo "deploy_checks: all passed"
