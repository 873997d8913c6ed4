#!/usr/bin/env bash
# The whole lip-sync round trip, offline: sample media → emulator → bridge → result file.
# Installs what it needs on first run. With CHAMELAION_API_KEY set it uses the real API.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
exec "$root/.venv/bin/chamelaion-bridge" demo "$@"
