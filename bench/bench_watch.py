"""Watch-folder benchmark (issue 3, Performance): a whole batch dropped at once.

Starts a real `python -m bridge watch IN --out OUT` process against the emulator (in this
process, process_media=False so it only accepts and returns a stock clip), moves N pairs
into IN with renames (the batch lands within milliseconds), and measures:
- time from the drop to the first generate call and to the N-th (all submitted),
- time until every pair's inputs are in IN/done/ (all finished),
- the watcher process's peak RSS (VmHWM; target under 150 MB),
- the number of generate calls the emulator received (must equal N).

Run: .venv/bin/python bench/bench_watch.py [--pairs 500] [--settle 2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.emulator import EmulatorConfig, start_emulator  # noqa: E402
from tests.bridge.processes import start_watch_process  # noqa: E402
from tests.media_samples import make_sample_media  # noqa: E402

TARGET_RSS_MB = 150


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a live process (Linux); None where /proc is not available."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def run(pairs: int, settle: float, work: Path) -> dict[str, object]:
    video, audio = make_sample_media(work / "media", seconds=1.0, fps=25, size=(160, 120))
    staging, in_dir, out_dir = work / "staging", work / "in", work / "out"
    staging.mkdir()
    in_dir.mkdir()
    for i in range(pairs):
        shutil.copyfile(video, staging / f"ep{i:04d}.mp4")
        shutil.copyfile(audio, staging / f"ep{i:04d}.wav")

    emulator = await start_emulator(
        EmulatorConfig(
            queued_seconds=0.2,
            processing_seconds=0.5,
            storage_dir=work / "emu",
            process_media=False,
        )
    )
    data_dir = work / "data"
    proc = start_watch_process(
        in_dir, out_dir, data_dir, emulator.base_url, poll_interval=0.5, settle=settle
    )
    stats = emulator.state.stats
    try:
        while not (data_dir / "bridge.json").exists():
            if proc.poll() is not None:
                raise SystemExit(f"the watcher exited with status {proc.returncode}")
            await asyncio.sleep(0.05)
        started = time.monotonic()
        for item in sorted(staging.iterdir()):
            item.rename(in_dir / item.name)
        dropped = time.monotonic() - started
        first = all_submitted = finished = None
        done = in_dir / "done"
        deadline = started + 600
        while finished is None and time.monotonic() < deadline:
            now = time.monotonic() - started
            if first is None and stats.requests_created >= 1:
                first = now
            if all_submitted is None and stats.requests_created >= pairs:
                all_submitted = now
            if all_submitted is not None and done.is_dir() and len(os.listdir(done)) >= 2 * pairs:
                finished = now
            await asyncio.sleep(0.01)
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
        await emulator.close()
    generate_calls = stats.calls["generate-with-media"] + stats.calls["generate"]
    return {
        "pairs": pairs,
        "settle_seconds": settle,
        "drop_seconds": round(dropped, 3),
        "first_submission_seconds": _round(first),
        "all_submitted_seconds": _round(all_submitted),
        "all_finished_seconds": _round(finished),
        "watcher_peak_rss_mb": _round(rss, 1),
        "generate_calls": generate_calls,
        "requests_created": stats.requests_created,
        "results": len(list(out_dir.glob("*.lipsync.mp4"))),
        "ok": generate_calls == pairs
        and finished is not None
        and (rss is None or rss < TARGET_RSS_MB),
    }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--settle", type=float, default=2.0, help="the watcher's settle time")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chamelaion-bench-watch-") as tmp:
        figures = asyncio.run(run(args.pairs, args.settle, Path(tmp)))
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        width = max(len(k) for k in figures)
        for key, value in figures.items():
            print(f"{key.ljust(width)}  {value}")
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
