"""Watch-folder mode: video+audio pairs dropped into a folder become lip-sync jobs.

The folder is the user interface, so its rules are strict: a pair is submitted only once
its files held still for `settle` seconds and probe as media; the store remembers which job
came from which stem (origin "watch:<folder>", output name "<stem>.lipsync.mp4"), so a
restarted watcher adopts its unfinished jobs instead of paying for them twice. Its parts:
this module scans and decides, `watch_submit` makes the jobs, `watch_filing` files the
outcomes, `watch_state` is what they share.

watchdog only wakes the asyncio loop (its callbacks run on its own thread); the loop lists
the folder off-thread, so events lost on a network share cost a rescan's delay, not a pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from bridge.aio import wait_event
from bridge.engine import Engine
from bridge.store import Store
from bridge.watch_filing import OutcomeFiler
from bridge.watch_pairing import DONE_DIR, FAILED_DIR, Pair, scan
from bridge.watch_state import Stage, Tracked, WatchState, log, stem_of
from bridge.watch_submit import PairSubmitter, names_urls

DEFAULT_SETTLE_SECONDS = float(os.environ.get("CHAMELAION_WATCH_SETTLE") or 2.0)
DEFAULT_GIVE_UP_SECONDS = 30.0
DEFAULT_RESCAN_SECONDS = 10.0
MIN_SCAN_GAP = 0.1


class _Wake(FileSystemEventHandler):
    """Runs on watchdog's thread: hands every relevant event to the loop as a wake-up."""

    def __init__(self, watcher: WatchFolder, loop: asyncio.AbstractEventLoop) -> None:
        self._watcher = watcher
        self._loop = loop

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [event.src_path, getattr(event, "dest_path", "") or ""]
        if any(p and not self._watcher.is_private(os.fsdecode(p)) for p in paths):
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(self._watcher.wake)


class WatchFolder(WatchState):
    """One watched folder: pairs in `in_dir` become jobs whose results land in `out_dir`."""

    def __init__(
        self,
        in_dir: Path,
        out_dir: Path,
        engine: Engine,
        store: Store,
        *,
        poll: bool = False,
        follow_symlinks: bool = False,
        settle: float = DEFAULT_SETTLE_SECONDS,
        give_up: float = DEFAULT_GIVE_UP_SECONDS,
        rescan: float = DEFAULT_RESCAN_SECONDS,
    ) -> None:
        super().__init__(in_dir, out_dir, engine, store)
        self.poll = poll
        self.follow_symlinks = follow_symlinks
        self.settle = settle
        self.rescan = rescan
        self.online = False
        self.filer = OutcomeFiler(self)
        give_up = max(give_up, settle)
        self.submitter = PairSubmitter(self, self.filer, settle=settle, give_up=give_up)
        self._private = [self.in_dir / DONE_DIR, self.in_dir / FAILED_DIR, self.out_dir]
        self._skip = frozenset(p for p in self._private if p.parent == self.in_dir)
        self._wake = asyncio.Event()
        self._observer: BaseObserver | None = None
        self._runner: asyncio.Task[None] | None = None
        self._unsubscribe = lambda: None
        self._said_offline = ""
        self._loop: asyncio.AbstractEventLoop  # set by start(), which runs on the loop

    # ----- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Adopt this folder's unfinished jobs, settle finished ones, then start watching."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.out_dir.mkdir, parents=True, exist_ok=True)
        self._unsubscribe = self.store.subscribe(self.filer.job_changed)
        self.handled = await self.store.run(self.store.handled_watch_jobs)
        for job in await self.steps.list_by_origin(self.origin):
            self.remember(job)
            if job.id in self.handled:
                continue
            if job.is_final:
                self.spawn(self.filer.finish(job))
            else:
                self.tracked[stem_of(job)] = Tracked(
                    [], time.monotonic(), stage=Stage.RUNNING, job_id=job.id
                )
                self.say(stem_of(job), f"resumed: job {job.reference_id} is {job.state}")
        log.info(
            "watching %s -> %s%s", self.in_dir, self.out_dir, " (polling)" if self.poll else ""
        )
        self._runner = asyncio.create_task(self._run(), name=f"watch {self.in_dir}")

    async def close(self) -> None:
        """Stop watching; jobs keep their state in the store and are adopted on restart."""
        self._unsubscribe()
        tasks = [*self.tasks, *([self._runner] if self._runner else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(self._stop_observer)

    def status(self) -> dict[str, Any]:
        """For /v1/health and `chamelaion-bridge jobs`: where, whether reachable, how many."""
        stages = [t.stage for t in self.tracked.values()]
        waiting = (Stage.SETTLING, Stage.WAITING, Stage.SUBMITTING)
        return {
            "in_dir": str(self.in_dir),
            "out_dir": str(self.out_dir),
            "online": self.online,
            "polling": self.poll,
            "waiting": sum(stage in waiting for stage in stages),
            "running": sum(stage in (Stage.RUNNING, Stage.FINISHING) for stage in stages),
            "done": self.counts["done"],
            "failed": self.counts["failed"],
        }

    def wake(self) -> None:
        self._wake.set()

    def is_private(self, path: str) -> bool:
        """Whether a path lies in done/, failed/ or the output folder (never our input)."""
        return any(path == str(p) or path.startswith(f"{p}{os.sep}") for p in self._private)

    # ----- the scan loop ---------------------------------------------------------------

    async def _run(self) -> None:
        """Scan on every wake-up and every `rescan` seconds; no failure ends this loop."""
        while True:
            try:
                pending = await self._scan_once()
                self.filer.file_pending()
                self.problems.clear(self.origin)
            except Exception as exc:
                log.exception("watch %s: scan failed", self.in_dir)
                self.problems.report(
                    self.origin,
                    f"Watching {self.in_dir} failed ({type(exc).__name__}); it is tried again, "
                    "details are in bridge.log.",
                )
                pending = False
            timeout = self.settle / 2 if pending else self.rescan
            await wait_event(self._wake, timeout)
            self._wake.clear()
            await asyncio.sleep(MIN_SCAN_GAP)  # let a burst of events become one scan

    async def _scan_once(self) -> bool:
        """Look at the folder once; returns whether some pair is still settling."""
        async with self.lock:
            try:
                pairs = await asyncio.to_thread(
                    scan, self.in_dir, self._skip, follow_symlinks=self.follow_symlinks
                )
            except OSError as exc:
                await self._set_online(False, exc)
                return False
            await self._set_online(True)
            now = time.monotonic()
            for stem in [s for s, t in self.tracked.items() if s not in pairs and not t.busy]:
                del self.tracked[stem]
            pending = False
            for stem, pair in pairs.items():
                pending |= await self._consider(stem, pair, now)
            return pending

    async def _consider(self, stem: str, pair: Pair, now: float) -> bool:
        """Advance one stem; returns True while it is settling (worth a quick rescan)."""
        tracked = self.tracked.get(stem)
        if tracked is not None and tracked.busy:
            return False
        if tracked is None or tracked.signature != pair.signature:
            if tracked is None:
                tracked = self.tracked[stem] = Tracked(pair.signature, now)
            tracked.signature, tracked.since, tracked.stage = pair.signature, now, Stage.SETTLING
            return True
        if now - tracked.since < self.settle or now < tracked.not_before:
            return True
        problem = pair.problem()
        if problem is not None:
            tracked.stage = Stage.FINISHING
            self.spawn(self.filer.refuse(stem, pair, problem))
            return False
        missing = pair.missing()
        if missing is not None and not await asyncio.to_thread(names_urls, pair):
            tracked.stage = Stage.WAITING
            self.say(stem, f"waiting for {missing}")
            return False
        if not self.engine.config.api_key:
            tracked.stage = Stage.WAITING
            self.say(stem, "waiting: no Chamelaion API key is set (CHAMELAION_API_KEY)")
            return False
        tracked.stage = Stage.SUBMITTING
        self.spawn(self.submitter.submit(stem, pair, tracked))
        return False

    async def _set_online(self, online: bool, exc: OSError | None = None) -> None:
        if online and not self.online:
            self.online = True
            self._said_offline = ""
            log.info("watch folder %s is online", self.in_dir)
            self.problems.clear(f"{self.origin}:offline")
            await asyncio.to_thread(self._restart_observer)
        elif not online:
            self.online = False
            reason = exc.strerror if exc and exc.strerror else str(exc)
            if self._said_offline != reason:
                self._said_offline = reason
                self.problems.report(
                    f"{self.origin}:offline",
                    f"The watch folder {self.in_dir} cannot be read ({reason}); waiting for it "
                    "to come back.",
                )

    def _restart_observer(self) -> None:
        self._stop_observer()
        observer = PollingObserver(timeout=1.0) if self.poll else Observer()
        # Polling walks the tree each time: keep it to the top level (rescans cover the rest).
        observer.schedule(_Wake(self, self._loop), str(self.in_dir), recursive=not self.poll)
        observer.start()
        self._observer = observer

    def _stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            with contextlib.suppress(RuntimeError):
                self._observer.join(timeout=5)
            self._observer = None


@contextlib.asynccontextmanager
async def running_watchers(
    folders: Sequence[tuple[Path, Path]], engine: Engine, store: Store, *, poll: bool = False
) -> AsyncIterator[list[WatchFolder]]:
    """Start one WatchFolder per (IN, OUT) for the life of the block (the daemon's hook)."""
    follow = engine.config.watch_follow_symlinks
    watchers = [
        WatchFolder(i, o, engine, store, poll=poll, follow_symlinks=follow) for i, o in folders
    ]
    try:
        for watcher in watchers:
            await watcher.start()
        yield watchers
    finally:
        for watcher in watchers:
            await watcher.close()
