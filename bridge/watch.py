"""Watch-folder mode: video+audio pairs dropped into a folder become lip-sync jobs.

The folder is the user interface, so its rules are strict: a pair is submitted only once
its files held still for `settle` seconds and probe as media; the store remembers which job
came from which stem (origin "watch:<folder>", output name "<stem>.lipsync.mp4"), so a
restarted watcher adopts its unfinished jobs instead of paying for them twice; outcomes are
files (the result plus a JSON record, or failed/<stem>.error.txt) and the inputs move to
done/ or failed/, which is also how the watcher tells "handled" from "dropped again".

watchdog only wakes the asyncio loop (its callbacks run on its own thread); the loop lists
the folder off-thread, so events lost on a network share cost a rescan's delay, not a pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from bridge.aio import wait_event
from bridge.discovery import write_atomic
from bridge.engine import Engine
from bridge.errors import InputError, MediaError
from bridge.files import numbered_names
from bridge.jobs import Job, JobSpec, State, new_reference_id, now_iso, safe_reference_id
from bridge.store import Store
from bridge.watch_pairing import (
    DONE_DIR,
    FAILED_DIR,
    RESULT_SUFFIX,
    Pair,
    read_sidecar,
    scan,
)

log = logging.getLogger(__name__)

DEFAULT_SETTLE_SECONDS = float(os.environ.get("CHAMELAION_WATCH_SETTLE") or 2.0)
DEFAULT_GIVE_UP_SECONDS = 30.0
DEFAULT_RESCAN_SECONDS = 10.0
SUBMIT_CONCURRENCY = 4
MIN_SCAN_GAP = 0.1

LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS watch_handled (job_id TEXT PRIMARY KEY, handled_at TEXT NOT NULL);
"""


class _Ledger:
    """Which finished jobs already had their files moved: survives a SIGKILL mid-batch."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(LEDGER_SCHEMA)

    def handled(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT job_id FROM watch_handled")}

    def mark(self, job_id: str) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO watch_handled (job_id, handled_at) VALUES (?, ?)",
            (job_id, now_iso()),
        )

    def close(self) -> None:
        self._db.close()


@dataclass
class _Tracked:
    """What the watcher knows about one stem between scans."""

    signature: list[tuple[str, int, int]]
    since: float
    detected_at: str = field(default_factory=now_iso)
    status: str = "settling"  # settling, waiting, submitting, running, finishing
    job_id: str | None = None
    said: str = ""  # the last state logged, so each change is logged once
    not_before: float = 0.0  # a probe failed: do not look again before this moment

    @property
    def busy(self) -> bool:
        return self.status in ("submitting", "running", "finishing")


def stem_of(job: Job) -> str:
    name = job.output_name or ""
    return name[: -len(RESULT_SUFFIX)] if name.endswith(RESULT_SUFFIX) else name


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


class WatchFolder:
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
        self.in_dir = Path(os.path.abspath(in_dir))
        self.out_dir = Path(os.path.abspath(out_dir))
        self.engine = engine
        self.problems = engine.problems
        self.store = store
        self.poll = poll
        self.follow_symlinks = follow_symlinks
        self.settle = settle
        self.give_up = max(give_up, settle)
        self.rescan = rescan
        self.origin = f"watch:{self.in_dir}"
        self.online = False
        self.counts = {"done": 0, "failed": 0}
        self._private = [self.in_dir / DONE_DIR, self.in_dir / FAILED_DIR, self.out_dir]
        self._skip = frozenset(p for p in self._private if p.parent == self.in_dir)
        self._tracked: dict[str, _Tracked] = {}
        self._latest: dict[str, Job] = {}
        self._timeline: dict[str, dict[str, str]] = {}
        self._handled: set[str] = set()
        self._finishing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(SUBMIT_CONCURRENCY)
        self._wake = asyncio.Event()
        self._observer: BaseObserver | None = None
        self._runner: asyncio.Task[None] | None = None
        self._ledger = _Ledger(store.path)
        self._unsubscribe = lambda: None
        self._said_offline = ""
        self._loop: asyncio.AbstractEventLoop  # set by start(), which runs on the loop

    # ----- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Adopt this folder's unfinished jobs, settle finished ones, then start watching."""
        self._loop = asyncio.get_running_loop()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._unsubscribe = self.store.subscribe(self._on_store_change)
        self._handled = self._ledger.handled()
        for job in self.store.list_by_origin(self.origin):
            self._remember(job)
            if job.id in self._handled:
                continue
            if job.is_final:
                self._spawn(self._finish(job))
            else:
                self._tracked[stem_of(job)] = _Tracked(
                    [], time.monotonic(), status="running", job_id=job.id
                )
                self._say(stem_of(job), f"resumed: job {job.reference_id} is {job.state}")
        log.info(
            "watching %s -> %s%s", self.in_dir, self.out_dir, " (polling)" if self.poll else ""
        )
        self._runner = asyncio.create_task(self._run(), name=f"watch {self.in_dir}")

    async def close(self) -> None:
        """Stop watching; jobs keep their state in the store and are adopted on restart."""
        self._unsubscribe()
        tasks = [*self._tasks, *([self._runner] if self._runner else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(self._stop_observer)
        self._ledger.close()

    def status(self) -> dict[str, Any]:
        """For /v1/health and `chamelaion-bridge jobs`: where, whether reachable, how many."""
        tracked = list(self._tracked.values())
        return {
            "in_dir": str(self.in_dir),
            "out_dir": str(self.out_dir),
            "online": self.online,
            "polling": self.poll,
            "waiting": sum(t.status in ("settling", "waiting", "submitting") for t in tracked),
            "running": sum(t.status in ("running", "finishing") for t in tracked),
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
                self._file_pending_outcomes()
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
        async with self._lock:
            try:
                pairs = await asyncio.to_thread(
                    scan, self.in_dir, self._skip, follow_symlinks=self.follow_symlinks
                )
            except OSError as exc:
                await self._set_online(False, exc)
                return False
            await self._set_online(True)
            now = time.monotonic()
            for stem in [s for s, t in self._tracked.items() if s not in pairs and not t.busy]:
                del self._tracked[stem]
            pending = False
            for stem, pair in pairs.items():
                pending |= self._consider(stem, pair, now)
            return pending

    def _consider(self, stem: str, pair: Pair, now: float) -> bool:
        """Advance one stem; returns True while it is settling (worth a quick rescan)."""
        tracked = self._tracked.get(stem)
        if tracked is not None and tracked.busy:
            return False
        if tracked is None or tracked.signature != pair.signature:
            if tracked is None:
                tracked = self._tracked[stem] = _Tracked(pair.signature, now)
            tracked.signature, tracked.since, tracked.status = pair.signature, now, "settling"
            return True
        if now - tracked.since < self.settle or now < tracked.not_before:
            return True
        problem = pair.problem()
        if problem is not None:
            tracked.status = "finishing"
            self._spawn(self._refuse(stem, pair, problem))
            return False
        missing = pair.missing()
        if missing is not None and not self._names_urls(pair):
            tracked.status = "waiting"
            self._say(stem, f"waiting for {missing}")
            return False
        if not self.engine.config.api_key:
            tracked.status = "waiting"
            self._say(stem, "waiting: no Chamelaion API key is set (CHAMELAION_API_KEY)")
            return False
        tracked.status = "submitting"
        self._spawn(self._submit(stem, pair, tracked))
        return False

    def _names_urls(self, pair: Pair) -> bool:
        """A lone sidecar naming URLs is a whole pair (URL mode); a broken one is refused."""
        if pair.sidecar is None or pair.videos or pair.audios:
            return False
        try:
            options = read_sidecar(pair.sidecar)
        except InputError:
            return True  # let the submission refuse it with the sidecar's own sentence
        return bool(options.get("video_url") or options.get("audio_url"))

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

    def _file_pending_outcomes(self) -> None:
        """File outcomes that could not be filed before (the folder was away, a disk full)."""
        for job in list(self._latest.values()):
            if job.is_final and job.id not in self._handled and job.id not in self._finishing:
                self._spawn(self._finish(job))

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

    # ----- submitting --------------------------------------------------------------------

    async def _submit(self, stem: str, pair: Pair, tracked: _Tracked) -> None:
        async with self._slots:
            previous = self._latest.get(stem)
            if previous is not None and previous.id not in self._handled:
                # Ours from before a restart (or a duplicate event): adopt it, never resubmit.
                tracked.status, tracked.job_id = "running", previous.id
                if previous.is_final:
                    await self._finish(previous)
                return
            try:
                spec = self._spec(stem, pair)
                job = await self.engine.submit(spec)
            except MediaError as exc:
                now = time.monotonic()
                if now - tracked.since < self.give_up:
                    # Maybe still being written: look again after another settle period.
                    tracked.status, tracked.not_before = "settling", now + self.settle
                    self._say(stem, f"not ready yet ({exc})")
                    return
                await self._refuse(stem, pair, str(exc))
                return
            except InputError as exc:
                await self._refuse(stem, pair, str(exc))
                return
        tracked.status, tracked.job_id = "running", job.id
        self._remember(job)
        self._say(stem, f"submitted as job {job.reference_id}")

    def _spec(self, stem: str, pair: Pair) -> JobSpec:
        options = read_sidecar(pair.sidecar) if pair.sidecar else {}
        urls = options.get("video_url") or options.get("audio_url")
        if urls and (pair.videos or pair.audios):
            raise InputError(
                f"The sidecar {stem}.json names URLs but media files for {stem} are in the "
                "folder too; give either the files or video_url and audio_url, not both."
            )
        spec = JobSpec(
            video_path=str(pair.video) if pair.video else None,
            audio_path=str(pair.audio) if pair.audio else None,
            video_url=options.get("video_url"),
            audio_url=options.get("audio_url"),
            reference_id=self._reference_id(stem, options.get("reference_id")),
            disable_active_speaker_detection=bool(
                options.get("disable_active_speaker_detection", False)
            ),
            model=options.get("model"),
            output_dir=str(self.out_dir),
            output_name=f"{stem}{RESULT_SUFFIX}",
            origin=self.origin,
        )
        return spec.validated()

    def _reference_id(self, stem: str, wanted: str | None) -> str:
        """The sidecar's reference_id, suffixed -r2, -r3… when an earlier run of it used it."""
        if not wanted:
            return new_reference_id(prefix=safe_reference_id(stem, 60))
        candidate, n = wanted, 1
        while (used := self.store.get(candidate)) is not None:
            if used.origin != self.origin or stem_of(used) != stem:
                return wanted  # someone else's: the store refuses it with its own sentence
            n += 1
            candidate = f"{wanted}-r{n}"
        return candidate

    # ----- outcomes ----------------------------------------------------------------------

    def _on_store_change(self, job: Job) -> None:
        """Runs on whichever thread committed the change: hand it to the loop."""
        if job.origin == self.origin:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._job_changed, job)

    def _job_changed(self, job: Job) -> None:
        self._remember(job)
        if job.is_final and job.id not in self._handled and job.id not in self._finishing:
            self._spawn(self._finish(job))

    def _remember(self, job: Job) -> None:
        self._timeline.setdefault(job.id, {}).setdefault(str(job.state), job.updated_at)
        latest = self._latest.get(stem_of(job))
        if latest is None or latest.id == job.id or job.created_at >= latest.created_at:
            self._latest[stem_of(job)] = job

    async def _finish(self, job: Job) -> None:
        """Write the outcome files, then move the inputs away, then remember it is handled.

        In that order, inputs in done/ or failed/ always have their record beside them, and
        a watcher killed halfway redoes the (idempotent) rest on restart.
        """
        if job.id in self._finishing:
            return
        self._finishing.add(job.id)
        stem = stem_of(job)
        try:
            async with self._lock:
                tracked = self._tracked.get(stem)
                if tracked is not None:
                    tracked.status = "finishing"
                if job.state == State.COMPLETED and job.output_path:
                    record = self._record(stem, job, DONE_DIR)
                    await asyncio.to_thread(_write_json, _record_path(job.output_path), record)
                    await asyncio.to_thread(self._move_inputs, stem, job, DONE_DIR)
                    self.counts["done"] += 1
                    self._say(stem, f"done: {job.output_path}")
                else:
                    reason = job.error or "The job was canceled before it finished."
                    record = self._record(stem, job, FAILED_DIR)
                    await asyncio.to_thread(self._write_error, stem, reason, record)
                    await asyncio.to_thread(self._move_inputs, stem, job, FAILED_DIR)
                    self.counts["failed"] += 1
                    self._say(stem, f"failed: {reason}")
                self._ledger.mark(job.id)
                self._handled.add(job.id)
                self.problems.clear(f"{self.origin}:filing")
                self._tracked.pop(stem, None)
        except OSError as exc:
            # Typically the folder went offline: filed on a later scan, once it can be.
            self._cannot_file(stem, exc)
        finally:
            self._finishing.discard(job.id)

    async def _refuse(self, stem: str, pair: Pair, reason: str) -> None:
        """A pair that never became a job: straight to failed/ with the reason."""
        async with self._lock:
            details = {"inputs": [str(p) for p in pair.members]}
            self._tracked.pop(stem, None)  # looked at again by the next scan if this fails
            try:
                await asyncio.to_thread(self._write_error, stem, reason, details)
                await asyncio.to_thread(self._move, pair.members, FAILED_DIR)
            except OSError as exc:
                self._cannot_file(stem, exc)
                return
            self.counts["failed"] += 1
            self._say(stem, f"failed: {reason}")

    def _cannot_file(self, stem: str, exc: OSError) -> None:
        where = f"{exc.filename}: " if exc.filename else ""
        log.warning("watch %s: cannot file the outcome of %s yet (%s)", self.in_dir, stem, exc)
        self.problems.report(
            f"{self.origin}:filing",
            f"The outcome of {stem} cannot be filed in {self.in_dir} yet ({where}"
            f"{exc.strerror or exc}); it is tried again.",
        )

    def _move_inputs(self, stem: str, job: Job, where: str) -> None:
        folder = self.in_dir / stem
        if folder.is_dir():
            members = [folder]
        else:
            names = (job.video_path, job.audio_path, str(self.in_dir / f"{stem}.json"))
            members = [Path(p) for p in names if p]
        self._move([p for p in members if p.exists()], where)

    def _move(self, members: Sequence[Path], where: str) -> None:
        """Move files (or a pair's sub-folder) into done/ or failed/, never over another."""
        target = _own_folder(self.in_dir / where)
        for path in members:
            for candidate in numbered_names(target / path.name):
                if candidate.exists():
                    continue
                with contextlib.suppress(FileNotFoundError):  # moved before a crash
                    os.rename(path, candidate)
                break

    def _write_error(self, stem: str, reason: str, details: dict[str, Any]) -> None:
        folder = _own_folder(self.in_dir / FAILED_DIR)
        text = (
            f"{stem} was not lip-synced. {reason} Its files were moved to {folder}; fix the "
            f"problem, then move them back into {self.in_dir} to try again.\n"
        )
        write_atomic(folder / f"{stem}.error.txt", text)
        _write_json(
            folder / f"{stem}.error.json",
            {
                **details,
                "stem": stem,
                "error": reason,
                "inputs_moved_to": str(folder),
                "failed_at": now_iso(),
            },
        )

    def _record(self, stem: str, job: Job, where: str) -> dict[str, Any]:
        tracked = self._tracked.get(stem)
        return {
            "stem": stem,
            "reference_id": job.reference_id,
            "request_id": job.request_id,
            "job_id": job.id,
            "state": str(job.state),
            "output": job.output_path,
            "inputs": {
                "video": job.video_path or job.video_url,
                "audio": job.audio_path or job.audio_url,
                "moved_to": str(self.in_dir / where),
            },
            "options": {
                "disable_active_speaker_detection": job.disable_active_speaker_detection,
                "model": job.model,
            },
            "timings": {
                "detected_at": tracked.detected_at if tracked else None,
                "created_at": job.created_at,
                "finished_at": job.updated_at,
                "states": self._timeline.get(job.id, {}),
            },
        }

    # ----- helpers -----------------------------------------------------------------------

    def _say(self, stem: str, what: str) -> None:
        """One log line per change of a pair's state."""
        tracked = self._tracked.get(stem)
        if tracked is not None:
            if tracked.said == what:
                return
            tracked.said = what
        log.info("watch %s: %s %s", self.in_dir, stem, what)

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("watch %s: %s", self.in_dir, exc, exc_info=exc)
            self.problems.report(
                f"{self.origin}:filing",
                f"Filing an outcome in {self.in_dir} failed ({type(exc).__name__}); it is tried "
                "again, details are in bridge.log.",
            )


def _own_folder(path: Path) -> Path:
    """done/ or failed/, made if missing; never a link someone made to send the inputs and
    the records elsewhere."""
    path.mkdir(exist_ok=True)
    if path.is_symlink():
        raise OSError(errno.ELOOP, "it is a symbolic link; make it a plain folder", str(path))
    return path


def _record_path(output_path: str) -> Path:
    path = Path(output_path)
    return path.with_suffix(".json")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


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
