#!/usr/bin/env bash
# Runs test_client.py (pytest) against the real loraserve with the Python client package
# (client/python) installed into a venv in the build tree with pinned PyPI packages (installed
# once, idempotently; the client itself is reinstalled from the source every run). Exit 77
# (skipped) when PyPI cannot be reached, except under CI=true, where that fails the run.
#   run_python_client_test.sh VENV_DIR LORASERVE_BINARY MODEL_DIR ADAPTER_ROOT
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$1"
source "$here/../testing/pinned_venv.sh"
ensure_pinned_venv "$venv" "$here/requirements.txt" python_client_test
# The package under test, built offline from the source (stubs generated from proto/).
"$venv/bin/pip" install -q --disable-pip-version-check --no-build-isolation --no-deps --force-reinstall \
  "$repo/client/python"
export LORASERVE_BINARY="$2" LORASERVE_MODEL="$3" LORASERVE_ADAPTER_ROOT="$4"
cd "$here"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider test_client.py
