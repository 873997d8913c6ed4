"""The command line every bridge benchmark shares: --tmp-dir and --json, one scratch folder
for the run's files, and the result printed as JSON or as the benchmark's own table."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Measure = Callable[[argparse.Namespace, Path], dict[str, Any]]


def parse_bench_args(
    doc: str, add_options: Callable[[argparse.ArgumentParser], None], argv: list[str] | None
) -> argparse.Namespace:
    """The benchmark's own options plus the shared ones, parsed; described by the first
    paragraph of the benchmark's docstring."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add_options(parser)
    parser.add_argument(
        "--tmp-dir", help="parent folder for the scratch files (default: the system temp folder)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    return parser.parse_args(argv)


def add_queued_seconds(parser: argparse.ArgumentParser) -> None:
    """--queued-seconds, for the benchmarks that run the emulator in its own process."""
    parser.add_argument(
        "--queued-seconds",
        type=float,
        default=1.0,
        help="how long the emulator keeps a new request queued (default 1)",
    )


@contextlib.contextmanager
def scratch_folder(parent: str | None) -> Iterator[Path]:
    """One temporary folder for every file of the run, deleted afterwards whatever happens."""
    folder = Path(tempfile.mkdtemp(prefix="chamelaion-bench-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_bench(
    args: argparse.Namespace, measure: Measure, print_table: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Measure in a scratch folder, print the result (JSON with --json) and return it."""
    with scratch_folder(args.tmp_dir) as folder:
        result = measure(args, folder)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return result
