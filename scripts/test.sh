#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, the bridge's tests, then the add-on's tests
# inside real Blender (the bpy wheel, 4.5 LTS and 5.0). Installs what it needs on first run.
# Extra arguments go to every pytest run (e.g. -x, -k NAME).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh || exit 1
reports="$root/build/test-reports"
rm -rf "$reports" && mkdir -p "$reports"
status=0

echo "== ruff"
.venv/bin/ruff check . && .venv/bin/ruff format --check . || status=1

echo "== import contracts (pyproject.toml [tool.importlinter])"
PYTHONPATH=addon .venv/bin/lint-imports --no-cache || status=1

echo "== bridge tests"
.venv/bin/python -m pytest tests/bridge -q --junitxml="$reports/bridge.xml" "$@" || status=1

for version in ${CHAMELAION_TEST_BLENDER:-4.5 5.0}; do
  echo "== add-on tests in Blender $version"
  venv=".venv-bpy${version/./}"
  if bash scripts/bootstrap_blender.sh "$version"; then
    "$venv/bin/python" -m pytest tests/addon -q --junitxml="$reports/addon-$version.xml" "$@" \
      || status=1
  else
    echo "could not install Blender $version as a Python module" >&2
    status=1
  fi
done

.venv/bin/python scripts/summarize_tests.py "$reports"/*.xml || status=1
exit $status
