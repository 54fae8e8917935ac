# Sourced by the PyPI-based test runners: ensure_pinned_venv VENV REQUIREMENTS NAME [PIP_ARGS...]
# makes VENV a venv with exactly REQUIREMENTS installed (once: a stamp of the file's SHA-256 skips
# reinstalls); PIP_ARGS go to `pip install` (e.g. --no-deps for a complete freeze).
# When PyPI cannot be reached it exits 77 (skipped, said loudly), or 1 under CI=true.
ensure_pinned_venv() {
  local venv="$1" requirements="$2" name="$3"
  shift 3
  local stamp="$venv/.requirements.sha256" want
  want="$(sha256sum "$requirements" | cut -d' ' -f1)"
  [[ -x "$venv/bin/python" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]] && return 0
  rm -rf "$venv"
  if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check \
           "$@" -r "$requirements"; } >"$venv.log" 2>&1; then
    cat "$venv.log" >&2
    rm -rf "$venv"
    if [[ "${CI:-}" == "true" ]]; then
      echo "$name: cannot install the pinned packages from PyPI (CI=true: failing)" >&2
      exit 1
    fi
    echo "$name: SKIPPED: cannot install the pinned packages from PyPI" >&2
    exit 77
  fi
  echo "$want" >"$stamp"
}
