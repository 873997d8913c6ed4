#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv with Python 3.11.
# Idempotent: reinstalls only when pyproject.toml changed. Sourced by demo.sh and test.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"

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

stamp="$venv/.installed-$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "Setting up $venv (first run takes a minute)..." >&2
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e "$root[dev]"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
