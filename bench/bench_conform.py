"""Conform benchmark (issue 10, Done when): a 50-shot timeline conformed against the emulator.

A cut of --shots clips (from five timecoded 25 fps sources, each used ten times, gaps between
some) is written as .otio with a dub under it. A real `chamelaion-bridge serve` process runs
against the emulator in its own process (media processing off: it keeps each request
queued/processing for the given seconds and serves a placeholder take). The conform itself
runs in this process, exactly as the CLI runs it, with a client that counts its calls to the
bridge's local API. Measured: wall time from the command's start to OUT written, the
emulator's API calls by kind (its own counters), and the conform's local API calls by route.

Run: .venv/bin/python bench/bench_conform.py [--shots 50] [--processing-seconds 5] [--json]
"""

from __future__ import annotations

import argparse
import io
import time
import urllib.parse
import urllib.request
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

from bench_cli import add_queued_seconds, parse_bench_args, run_bench
from bench_upload import Bridge, Emulator, machine

from bridge.conform import ConformOptions, run_conform
from chamelaion_client.client import BridgeClient
from tests.timelines import Cut, CutClip, make_dub, make_sources, write_timeline

RATE = Fraction(25)
SOURCES = 5
SOURCE_FRAMES = 240


class CountingClient(BridgeClient):
    """The CLI's client, counting each HTTP call to the bridge by method and route."""

    calls: Counter[str] = Counter()

    def _send(self, request: urllib.request.Request) -> Any:
        path = urllib.parse.urlsplit(request.full_url).path
        route = "/v1/jobs/{key}" if path.startswith("/v1/jobs/") else path
        CountingClient.calls[f"{request.get_method()} {route}"] += 1
        return super()._send(request)


def fifty_shot_cut(folder: Path, shots: int) -> Cut:
    """`shots` clips of 6-15 frames from five sources, a gap before every third one."""
    sources = make_sources(folder / "media", RATE, count=SOURCES, frames=SOURCE_FRAMES)
    clips = tuple(
        CutClip(
            sources[n % SOURCES],
            first=(n * 7) % (SOURCE_FRAMES - 16),
            frames=6 + n % 10,
            gap_before=2 if n % 3 == 2 else 0,
        )
        for n in range(shots)
    )
    return Cut("bench50", RATE, clips)


def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    cut = fifty_shot_cut(folder, args.shots)
    timeline = write_timeline(cut.timeline(), folder / f"{cut.name}.otio")
    dub = make_dub(folder / "dub.wav", cut.seconds + 1)
    options = ConformOptions(timeline=timeline, dub=dub)
    with (
        Emulator(folder / "emulator", args.queued_seconds, args.processing_seconds) as emulator,
        Bridge(folder / "bridge", emulator.base_url) as bridge,
    ):
        before = emulator.stats()
        CountingClient.calls.clear()
        progress, report = io.StringIO(), io.StringIO()
        started = time.monotonic()
        status = run_conform(
            options,
            lambda: CountingClient(bridge.url, bridge.token, timeout=60.0),
            stdout=report,
            stderr=progress,
        )
        wall = time.monotonic() - started
        after = emulator.stats()
    if status != 0:
        raise RuntimeError(f"the conform exited {status}: {progress.getvalue()[-500:]}")
    api_calls = {
        name: count - before["calls"].get(name, 0)
        for name, count in sorted(after["calls"].items())
        if count != before["calls"].get(name, 0)
    }
    return {
        "machine": machine(),
        "parameters": {
            "shots": args.shots,
            "billable_seconds": round(sum(c.frames for c in cut.clips) / float(RATE), 3),
            "emulator_queued_seconds": args.queued_seconds,
            "emulator_processing_seconds": args.processing_seconds,
        },
        "wall_seconds": round(wall, 2),
        "api_calls": api_calls,
        "api_calls_total": sum(api_calls.values()),
        "charged_per_reference_id": sorted(set(after["generate_by_reference_id"].values())),
        "local_api_calls": dict(sorted(CountingClient.calls.items())),
        "local_api_calls_total": sum(CountingClient.calls.values()),
    }


def print_table(result: dict[str, Any]) -> None:
    p = result["parameters"]
    print(
        f"{p['shots']} shots ({p['billable_seconds']:g} billable s), emulator requests "
        f"{p['emulator_queued_seconds']:g} s queued + {p['emulator_processing_seconds']:g} s "
        f"processing"
    )
    print(f"wall time, command start to OUT written: {result['wall_seconds']:.2f} s")
    print(f"generate calls per reference_id: {result['charged_per_reference_id']}")
    print(f"\n{'Chamelaion API calls (emulator)':<40} {'count':>6}")
    for name, count in result["api_calls"].items():
        print(f"  {name:<38} {count:>6}")
    print(f"  {'total':<38} {result['api_calls_total']:>6}")
    print(f"\n{'local API calls (conform -> bridge)':<40} {'count':>6}")
    for name, count in result["local_api_calls"].items():
        print(f"  {name:<38} {count:>6}")
    print(f"  {'total':<38} {result['local_api_calls_total']:>6}")


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shots", type=int, default=50, help="clips on the timeline (default 50)")
    add_queued_seconds(parser)
    parser.add_argument(
        "--processing-seconds",
        type=float,
        default=5.0,
        help="how long the emulator processes a request (default 5)",
    )


if __name__ == "__main__":
    run_bench(parse_bench_args(__doc__, add_options, None), measure, print_table)
