#!/usr/bin/env bash
# Creates (or refreshes) .venv-bpy45 / .venv-bpy50: Python 3.11 with Blender as a module
# (the `bpy` wheel) plus this repo in dev mode, for the add-on's tests and bench.
# Usage: scripts/bootstrap_blender.sh 4.5|5.0   Idempotent: a stamp file skips reinstalls.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="${1:-4.5}"
case "$version" in
  4.5|5.0) ;;
  *) echo "usage: $0 4.5|5.0" >&2; exit 2 ;;
esac
venv="$root/.venv-bpy${version/./}"

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

# Blender's module links against a few X/GL libraries even when headless.
if command -v apt-get >/dev/null 2>&1 && ! ldconfig -p | grep -q 'libXi.so.6'; then
  apt-get update -qq && apt-get install -y -qq libxi6 libxxf86vm1 libxfixes3 libxrender1 \
    libxkbcommon0 libsm6 libgl1 libegl1 >/dev/null || true
fi

stamp="$venv/.installed-$version-$(cat "$root/pyproject.toml" "$0" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "Setting up $venv with bpy $version (first run downloads ~400 MB)..." >&2
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "bpy==$version.*"
  "$venv/bin/python" -m pip install -q -e "$root[dev]"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
