#!/usr/bin/env bash
# Creates (or refreshes) .venv-bpy45 / .venv-bpy50: Python 3.11 with Blender as a module
# (the `bpy` wheel) plus this repo in dev mode, for the add-on's tests and bench.
# Usage: scripts/bootstrap_blender.sh 4.5|5.0   Idempotent, like scripts/bootstrap.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="${1:-4.5}"
case "$version" in
  4.5|5.0) ;;
  *) echo "usage: $0 4.5|5.0" >&2; exit 2 ;;
esac

# Blender's module links against a few X/GL libraries even when headless.
if command -v apt-get >/dev/null 2>&1 && ! ldconfig -p | grep -q 'libXi.so.6'; then
  apt-get update -qq && apt-get install -y -qq libxi6 libxxf86vm1 libxfixes3 libxrender1 \
    libxkbcommon0 libsm6 libgl1 libegl1 >/dev/null || true
fi

exec bash "$root/scripts/bootstrap.sh" "$root/.venv-bpy${version/./}" "bpy==$version.*"
