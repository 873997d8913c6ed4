"""What one watch folder knows between scans, shared by its parts (scanning, submitting,
filing outcomes): the stems it tracks and how far each got, and the jobs that came of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from bridge.engine import Engine
from bridge.jobs import Job, now_iso
from bridge.store import Store
from bridge.watch_pairing import RESULT_SUFFIX

log = logging.getLogger("bridge.watch")


class Stage(StrEnum):
    """How far a stem got: the watch folder's side of a job, before and after the job."""

    SETTLING = "settling"  # its files may still be growing
    WAITING = "waiting"  # a half or the API key is missing
    SUBMITTING = "submitting"
    RUNNING = "running"  # a job of the engine
    FINISHING = "finishing"  # its outcome is being filed


BUSY_STAGES = frozenset({Stage.SUBMITTING, Stage.RUNNING, Stage.FINISHING})


@dataclass
class Tracked:
    """What the watcher knows about one stem between scans."""

    signature: list[tuple[str, int, int]]
    since: float
    detected_at: str = field(default_factory=now_iso)
    stage: Stage = Stage.SETTLING
    job_id: str | None = None
    said: str = ""  # the last state logged, so each change is logged once
    not_before: float = 0.0  # a probe failed: do not look again before this moment

    @property
    def busy(self) -> bool:
        return self.stage in BUSY_STAGES


def stem_of(job: Job) -> str:
    name = job.output_name or ""
    return name[: -len(RESULT_SUFFIX)] if name.endswith(RESULT_SUFFIX) else name


class WatchState:
    """One watched folder's memory; the parts of the watcher share it."""

    def __init__(self, in_dir: Path, out_dir: Path, engine: Engine, store: Store) -> None:
        self.in_dir = Path(os.path.abspath(in_dir))
        self.out_dir = Path(os.path.abspath(out_dir))
        self.engine = engine
        self.steps = engine.steps
        self.problems = engine.problems
        self.store = store
        self.origin = f"watch:{self.in_dir}"
        self.counts = {"done": 0, "failed": 0}
        self.tracked: dict[str, Tracked] = {}
        self.latest: dict[str, Job] = {}
        self.timeline: dict[str, dict[str, str]] = {}
        self.handled: set[str] = set()
        self.finishing: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.lock = asyncio.Lock()

    def remember(self, job: Job) -> None:
        """Keep a job of this folder: its state times, and whether it is its stem's latest."""
        self.timeline.setdefault(job.id, {}).setdefault(str(job.state), job.updated_at)
        latest = self.latest.get(stem_of(job))
        if latest is None or latest.id == job.id or job.created_at >= latest.created_at:
            self.latest[stem_of(job)] = job

    def say(self, stem: str, what: str) -> None:
        """One log line per change of a pair's state."""
        tracked = self.tracked.get(stem)
        if tracked is not None:
            if tracked.said == what:
                return
            tracked.said = what
        log.info("watch %s: %s %s", self.in_dir, stem, what)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("watch %s: %s", self.in_dir, exc, exc_info=exc)
            self.problems.report(
                f"{self.origin}:filing",
                f"Filing an outcome in {self.in_dir} failed ({type(exc).__name__}); it is tried "
                "again, details are in bridge.log.",
            )
