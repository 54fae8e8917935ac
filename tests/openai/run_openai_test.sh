#!/usr/bin/env bash
# Runs openai_test.py with the real `openai` package from PyPI, installed (pinned, idempotently)
# into a venv in the build tree. Exit 77 (skipped) when PyPI cannot be reached, except under
# CI=true, where that fails the run.
#   run_openai_test.sh VENV_DIR ARGS...   (ARGS go to openai_test.py)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$1"
shift
source "$here/../testing/pinned_venv.sh"
ensure_pinned_venv "$venv" "$here/requirements.txt" openai_test
exec "$venv/bin/python" "$here/openai_test.py" "$@"
