"""Nothing the bridge does blocks its event loop: a 20-job batch through a watch folder, with
the local API and its event stream in use, in asyncio's debug mode with a 50 ms slow-callback
threshold. A callback that takes longer (a store commit, a file write, an fsync on the loop)
stalls every job, every HTTP answer and every event of the bridge for as long.

The disk is made slow, as a network share or a busy disk is: every commit of the job store,
fsync, rename and link takes longer than the threshold, so any of them on the loop shows."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.emulator import RunningEmulator
from bridge.jobs import JobSpec
from bridge.server import create_app
from bridge.store import Store
from bridge.transitions import Transitions
from tests.bridge.conftest import bridge_config, emulator_thread
from tests.helpers import async_wait_until

JOBS = 20
SLOW_CALLBACK = 0.05
SLOW_DISK = 0.06  # what one commit or file operation takes on the slowed disk
TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPORT = Path(__file__).resolve().parents[2] / "build" / "test-reports" / "event-loop.json"


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[RunningEmulator]:
    """In a thread: only the bridge's callbacks are timed."""
    with emulator_thread(tmp_path / "emu", queued_seconds=0.05, processing_seconds=0.2) as running:
        yield running


def slow_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every store commit and every fsync, rename and link takes SLOW_DISK seconds."""

    def slowed(call: Callable[..., Any]) -> Callable[..., Any]:
        def slow(*args: Any, **kwargs: Any) -> Any:
            time.sleep(SLOW_DISK)
            return call(*args, **kwargs)

        return slow

    for name in ("fsync", "rename", "replace", "link"):
        monkeypatch.setattr(os, name, slowed(getattr(os, name)))
    transaction = Store._transaction  # noqa: SLF001 - where a commit happens

    @contextlib.contextmanager
    def slow_transaction(store: Store) -> Iterator[Any]:
        with transaction(store) as db:
            time.sleep(SLOW_DISK)
            yield db

    monkeypatch.setattr(Store, "_transaction", slow_transaction)


class CallbackTimer:
    """Times every callback the loop runs, to report the largest one (debug mode only logs
    those over the threshold)."""

    def __init__(self) -> None:
        self.largest = 0.0
        self.slowest = ""

    def wrap(self, run: Callable[[asyncio.Handle], None]) -> Callable[[asyncio.Handle], None]:
        def timed(handle: asyncio.Handle) -> None:
            started = time.perf_counter()
            try:
                run(handle)
            finally:
                took = time.perf_counter() - started
                if took > self.largest:
                    self.largest, self.slowest = took, repr(handle)

        return timed


async def test_a_batch_through_a_watch_folder_never_blocks_the_loop(
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    in_dir, out_dir, staging = tmp_path / "in", tmp_path / "out", tmp_path / "staging"
    in_dir.mkdir()
    staging.mkdir()
    for n in range(1, JOBS + 1):
        shutil.copyfile(sample_pair[0], staging / f"ep{n:02}.mp4")
        shutil.copyfile(sample_pair[1], staging / f"ep{n:02}.wav")
    # What earlier tests in this process left on the heap is not the bridge's: frozen, it
    # makes no garbage-collection pause inside one of the bridge's callbacks.
    gc.collect()
    gc.freeze()
    request.addfinalizer(gc.unfreeze)
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_CALLBACK
    timer = CallbackTimer()
    monkeypatch.setattr(asyncio.Handle, "_run", timer.wrap(asyncio.Handle._run))
    caplog.set_level(logging.WARNING, logger="asyncio")

    config = bridge_config(tmp_path / "data", emulator.base_url)
    api = await aiohttp_client(create_app(config, TOKEN, watch_folders=[(in_dir, out_dir)]))
    events = await api.get("/v1/events", headers=AUTH)  # a listener, as the add-on has
    # Renames (before the disk is slowed, by the test, not the bridge): the batch lands at once.
    await asyncio.to_thread(
        lambda: [item.rename(in_dir / item.name) for item in sorted(staging.iterdir())]
    )
    slow_disk(monkeypatch)

    async def all_completed() -> list[dict[str, Any]] | None:
        jobs = (await (await api.get("/v1/jobs", headers=AUTH)).json())["jobs"]
        done = len(jobs) == JOBS and all(job["state"] == "completed" for job in jobs)
        return jobs if done else None

    jobs = await async_wait_until(all_completed, timeout=120, interval=0.2, message="the batch")
    await async_wait_until(
        lambda: len(list((in_dir / "done").glob("*.wav"))) == JOBS, message="inputs filed"
    )
    assert sorted(Path(job["output_path"]).name for job in jobs) == [
        f"ep{n:02}.lipsync.mp4" for n in range(1, JOBS + 1)
    ]
    assert await events.content.readuntil(b"\n\n") == b": connected\n\n"
    assert (await events.content.readuntil(b"\n\n")).startswith(b"data: {")
    events.close()

    said = [record.getMessage() for record in caplog.records if record.name == "asyncio"]
    slow = [message for message in said if message.startswith("Executing") and "took" in message]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "jobs": JOBS,
        "slow_callback_threshold_seconds": SLOW_CALLBACK,
        "largest_callback_seconds": round(timer.largest, 4),
        "slowest_callback": timer.slowest,
        "slow_callbacks": slow,
    }
    REPORT.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nlargest callback: {timer.largest * 1000:.1f} ms ({timer.slowest})")
    assert slow == []


async def test_store_listeners_hear_every_change_on_the_loop_in_commit_order(
    tmp_path: Path,
) -> None:
    """Writes run on the store's writer thread; its listeners (the event stream, the watch
    folder) touch asyncio objects, so they must be called on the loop all the same."""
    store = Store(tmp_path / "jobs.sqlite3")
    loop_thread = threading.get_ident()
    heard: list[tuple[str, str, bool]] = []
    store.subscribe(lambda job: heard.append((job.reference_id, job.state, on_loop())))

    def on_loop() -> bool:
        return threading.get_ident() == loop_thread

    steps = Transitions(store)
    job = await steps.create(
        JobSpec(
            video_url="https://example.com/v.mp4",
            audio_url="https://example.com/a.wav",
            reference_id="one",
        )
    )
    await steps.mark_uploading(job)
    await steps.accepted(job.id, "request-1")
    await asyncio.to_thread(store.submit(store.update, job.id, note="from a thread").result)
    await steps.cancel(job.id)
    await asyncio.to_thread(store.close)

    assert heard == [
        ("one", "queued", True),
        ("one", "uploading", True),
        ("one", "submitted", True),
        ("one", "submitted", True),
        ("one", "canceled", True),
    ]
