"""Polling benchmark (issue 2, Performance): API calls while many jobs are processing.

A real `chamelaion-bridge serve` process is given --jobs small jobs (tiny sample media, so
uploads take no time) against an emulator in its own process whose requests stay
`processing` for longer than the run. Once the bridge shows every job as `processing`, the
emulator's own counters (`/_emulator/stats`) are read at the start and at the end of a
--seconds window; the calls in between are what the bridge spent on polling.

Two baselines, both "one GET per job per poll":
- same schedule: jobs x the poll rounds the bridge actually made in the window (a round is
  one pass over the list pages, ceil(jobs / 100) of them here, as the emulator holds only
  these jobs);
- fixed interval: jobs x floor(seconds / poll_interval), a client that polls every job at
  the bridge's configured poll_interval without backing off.

Run: .venv/bin/python bench/bench_polling.py [--jobs 100] [--seconds 60] [--json]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from bench_cli import add_queued_seconds, parse_bench_args, run_bench
from bench_upload import Bridge, Emulator, machine

from bridge.config import BridgeConfig
from tests.media_samples import make_sample_media

LIST_LIMIT = 100  # the API's (and the emulator's) largest page
POLLING = ("retrieve", "list")
RAMP_TIMEOUT = 300.0  # for every job to be submitted and seen `processing`
SAMPLE_EVERY = 0.25  # how often the emulator's counters are read to time the poll rounds


def submit_jobs(bridge: Bridge, video: Path, audio: Path, count: int) -> None:
    client = bridge.client
    for n in range(count):
        client.create_job(
            {"video_path": str(video), "audio_path": str(audio), "reference_id": f"poll-{n}"}
        )


def wait_all_processing(bridge: Bridge, count: int, started: float) -> float:
    """Seconds from `started` until the bridge shows all `count` jobs `processing`."""
    while True:
        jobs = bridge.client.list_jobs()
        failed = [j for j in jobs if j["state"] == "failed"]
        if failed:
            raise RuntimeError(f"a job failed: {failed[0]['error']}")
        if sum(j["state"] == "processing" for j in jobs) == count:
            return time.monotonic() - started
        if time.monotonic() - started > RAMP_TIMEOUT:
            raise RuntimeError(f"not all {count} jobs reached processing in {RAMP_TIMEOUT:.0f}s")
        time.sleep(0.5)


def polling_calls(stats: dict[str, Any]) -> dict[str, int]:
    return {name: stats["calls"].get(name, 0) for name in POLLING}


def observe(emulator: Emulator, seconds: float) -> tuple[dict, dict, list[float]]:
    """Counters at the start and end of the window, and when list/retrieve calls were seen."""
    first = last = emulator.stats()
    started = time.monotonic()
    rounds_at: list[float] = []
    while (elapsed := time.monotonic() - started) < seconds:
        time.sleep(min(SAMPLE_EVERY, seconds - elapsed))
        now = emulator.stats()
        if polling_calls(now) != polling_calls(last):
            rounds_at.append(round(time.monotonic() - started, 2))
        last = now
    return first, last, rounds_at


def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    video, audio = make_sample_media(folder / "media", seconds=1.0, size=(96, 48))
    config = BridgeConfig(data_dir=folder)
    processing_seconds = RAMP_TIMEOUT + args.seconds + 60  # no job finishes during the run
    with (
        Emulator(folder / "emulator", args.queued_seconds, processing_seconds) as emulator,
        Bridge(folder / "bridge", emulator.base_url) as bridge,
    ):
        started = time.monotonic()
        submit_jobs(bridge, video, audio, args.jobs)
        ramp = wait_all_processing(bridge, args.jobs, started)
        if not args.json:
            print(f"{args.jobs} jobs submitted and processing after {ramp:.1f}s")
        first, last, rounds_at = observe(emulator, args.seconds)
        still = sum(j["state"] == "processing" for j in bridge.client.list_jobs())
        if still != args.jobs:
            raise RuntimeError(f"only {still} of {args.jobs} jobs stayed processing")
    calls = {
        name: count - first["calls"].get(name, 0)
        for name, count in last["calls"].items()
        if count != first["calls"].get(name, 0)
    }
    pages = math.ceil(args.jobs / LIST_LIMIT)
    rounds = (
        calls.get("list", 0) / pages if calls.get("list") else calls.get("retrieve", 0) / args.jobs
    )
    made = sum(calls.get(name, 0) for name in POLLING)
    same_schedule = args.jobs * rounds
    fixed = args.jobs * math.floor(args.seconds / config.poll_interval)
    return {
        "machine": machine(),
        "parameters": {
            "jobs": args.jobs,
            "seconds": args.seconds,
            "emulator_queued_seconds": args.queued_seconds,
            "emulator_processing_seconds": processing_seconds,
            "bridge_poll_interval": config.poll_interval,
            "bridge_max_poll_interval": config.max_poll_interval,
        },
        "ramp_seconds": round(ramp, 1),
        "calls_in_window": calls,
        "polling_calls": made,
        "poll_rounds": rounds,
        "poll_rounds_seen_at_seconds": rounds_at,
        "baseline_same_schedule": same_schedule,
        "baseline_fixed_interval": fixed,
        "fraction_of_same_schedule": round(made / same_schedule, 4) if same_schedule else None,
        "fraction_of_fixed_interval": round(made / fixed, 4) if fixed else None,
    }


def print_table(result: dict[str, Any]) -> None:
    p = result["parameters"]
    print(
        f"\n{p['jobs']} jobs processing for {p['seconds']:g}s; bridge poll_interval "
        f"{p['bridge_poll_interval']:g}s, backing off to {p['bridge_max_poll_interval']:g}s"
    )
    print(f"calls in the window by endpoint: {result['calls_in_window']}")
    print(f"poll rounds seen at (s into the window): {result['poll_rounds_seen_at_seconds']}")
    rows = [
        ("bridge (list + retrieve)", result["polling_calls"], None),
        (
            f"one GET per job per round, same schedule ({result['poll_rounds']:g} rounds)",
            result["baseline_same_schedule"],
            result["fraction_of_same_schedule"],
        ),
        (
            f"one GET per job every {p['bridge_poll_interval']:g}s, no backoff",
            result["baseline_fixed_interval"],
            result["fraction_of_fixed_interval"],
        ),
    ]
    print(f"\n{'who':<58} {'API calls':>10} {'bridge / this':>14}")
    for name, count, fraction in rows:
        share = f"{fraction:.2%}" if fraction is not None else ""
        print(f"{name:<58} {count:>10g} {share:>14}")


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=100, help="jobs processing (default 100)")
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="length of the window (default 60)"
    )
    add_queued_seconds(parser)


if __name__ == "__main__":
    run_bench(parse_bench_args(__doc__, add_options, None), measure, print_table)
