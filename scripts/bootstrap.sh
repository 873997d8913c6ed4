#!/usr/bin/env bash
# Creates (or refreshes) a Python 3.11 virtual environment with this repo installed in dev
# mode. Idempotent: reinstalls only when pyproject.toml, this script or the extras change.
# Usage: scripts/bootstrap.sh [VENV_DIR] [EXTRA_PIP_REQUIREMENT...]   (default: .venv)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$root/.venv}"
shift $(( $# > 0 ? 1 : 0 ))
extras=("$@")

find_python() {
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}

if ! py="$(find_python)"; then
  echo "Python 3.11 not found; installing it with apt-get." >&2
  apt-get update -qq && apt-get install -y -qq python3.11 python3.11-venv >/dev/null
  py="$(find_python)"
fi
if ! "$py" -c 'import venv, ensurepip' 2>/dev/null; then
  apt-get update -qq && apt-get install -y -qq python3.11-venv >/dev/null
fi

fingerprint="$( (cat "$root/pyproject.toml" "$0"; printf '%s\n' "${extras[@]+"${extras[@]}"}") \
  | sha256sum | cut -c1-16)"
stamp="$venv/.installed-$fingerprint"
if [ ! -f "$stamp" ]; then
  echo "Setting up $venv (the first run downloads packages; a minute or so)..." >&2
  "$py" -m venv "$venv"
  log="$venv/install.log"
  pip_quietly() {  # pip's chatter goes to a log that is shown only when it fails
    "$venv/bin/python" -m pip install -q "$@" >>"$log" 2>&1 || { cat "$log" >&2; exit 1; }
  }
  pip_quietly --upgrade pip
  if [ ${#extras[@]} -gt 0 ]; then pip_quietly "${extras[@]}"; fi
  pip_quietly -e "$root[dev]"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
