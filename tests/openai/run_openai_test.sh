#!/usr/bin/env bash
# Runs openai_test.py with the real `openai` package from PyPI, installed (pinned, idempotently)
# into a venv in the build tree. Exit 77 (skipped) when PyPI cannot be reached, except under
# CI=true, where that fails the run.
#   run_openai_test.sh VENV_DIR ARGS...   (ARGS go to openai_test.py)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$1"
shift
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  rm -rf "$venv"
  if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check \
           -r "$here/requirements.txt"; } >"$venv.log" 2>&1; then
    cat "$venv.log" >&2
    rm -rf "$venv"
    if [[ "${CI:-}" == "true" ]]; then
      echo "openai_test: cannot install the pinned openai package from PyPI (CI=true: failing)" >&2
      exit 1
    fi
    echo "openai_test: SKIPPED: cannot install the pinned openai package from PyPI" >&2
    exit 77
  fi
  echo "$want" >"$stamp"
fi
exec "$venv/bin/python" "$here/openai_test.py" "$@"
