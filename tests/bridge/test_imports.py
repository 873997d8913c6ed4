"""The product holds the product: the bridge that serves jobs loads neither the emulator (the
demo's and the tests' stand-in for the API) nor the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOADS_EVERY_MODULE_BUT_THE_EMULATOR_PART = """
import importlib, pkgutil, sys
import bridge
for module in pkgutil.iter_modules(bridge.__path__):
    if module.name not in ("emulator", "demo", "__main__"):
        importlib.import_module("bridge." + module.name)
loaded = [name for name in sys.modules if name.split(".")[:2] in (["bridge", "emulator"],
          ["bridge", "demo"]) or name.split(".")[0] == "tests"]
print(sorted(loaded))
"""


def test_the_bridge_loads_without_the_emulator_or_the_tests() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LOADS_EVERY_MODULE_BUT_THE_EMULATOR_PART],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]"
