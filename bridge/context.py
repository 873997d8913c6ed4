"""What the engine's parts share: the job steps, the remote client, and a job's notes.

The submitter, the poller and the downloader each own one stage of a job; this is the small
common ground between them (and the only place that turns a waiting job into a note).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Coroutine
from typing import Any

from bridge import preparing
from bridge.config import BridgeConfig
from bridge.errors import BridgeError, InputError, StoreError
from bridge.gateway import Gateway, Note
from bridge.jobs import ACTIVE_STATES, Job, State
from bridge.problems import Problems
from bridge.remote import RemoteAPI
from bridge.store import IllegalTransition, Store
from bridge.transitions import Transitions

log = logging.getLogger(__name__)

PROGRESS_STEP = 0.01
PROGRESS_SECONDS = 0.25


class EngineContext:
    """The state one running engine shares between its parts."""

    def __init__(self, config: BridgeConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.steps = Transitions(store)
        self.remote: RemoteAPI | None = None
        self.problems = Problems()
        self.gateway = Gateway(self.problems, base=config.retry_base, cap=config.retry_cap)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.output_urls: dict[str, str] = {}
        # Input checks done at submit, reused once when the job is prepared for upload.
        self.checked: dict[str, preparing.Checked] = {}
        self.poll_wake = asyncio.Event()
        # Notes the store could not take (its disk is full): shown with the job all the same,
        # until the job's record changes again.
        self.unsaved_notes: dict[str, str] = {}
        # Set by the engine: run a job's local steps (prepare, upload, download) in a task.
        self.drive: Callable[[str], None] = lambda job_id: None

    def spawn(self, job_id: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=f"job-{job_id}")
        self.tasks[job_id] = task
        task.add_done_callback(
            lambda t: self.tasks.pop(job_id, None) if self.tasks.get(job_id) is t else None
        )

    def require_remote(self) -> RemoteAPI:
        if self.remote is None:
            raise InputError(
                "No Chamelaion API key is set; set CHAMELAION_API_KEY or enter the key in the "
                "add-on preferences, then retry the job."
            )
        return self.remote

    async def get(self, job_id: str) -> Job:
        job = await self.steps.get(job_id)
        if job is None:
            raise InputError(f"There is no job {job_id!r}.")
        return job

    async def note(self, job_id: str, note: str | None) -> None:
        """Say why an unfinished job waits, even when the store is what is wrong."""
        try:
            await self.steps.note(job_id, note, ACTIVE_STATES)
        except StoreError:
            if note is not None:
                self.unsaved_notes[job_id] = note
        except BridgeError:
            pass  # final or damaged meanwhile: nothing to say

    def noter(self, job_id: str) -> Note:
        return lambda note: self.note(job_id, note)

    def progress_reporter(self, job_id: str, state: State) -> Callable[[int, int], None]:
        """A callback that records transfer progress once 1% more is done and 0.25 s passed.

        Both, not either: each write is a SQLite commit plus an event to every subscriber,
        and on a fast link "either" meant a hundred of them per upload on the hot path.
        Progress is best effort and queued, not awaited: the transfer never waits for it.
        """
        last = {"fraction": -1.0, "at": 0.0}

        def report(done: int, total: int) -> None:
            fraction = done / total if total else 0.0
            now = time.monotonic()
            if fraction < 1.0 and (
                fraction - last["fraction"] < PROGRESS_STEP or now - last["at"] < PROGRESS_SECONDS
            ):
                return
            last.update(fraction=fraction, at=now)
            self.steps.progress(job_id, fraction, state)

        return report

    async def fail(self, job_id: str, message: str, **changes: Any) -> None:
        """Fail a job for a definite reason; what was prepared stays for a retry."""
        with contextlib.suppress(IllegalTransition):
            await self.steps.fail(job_id, message, **changes)
        self.checked.pop(job_id, None)
        self.output_urls.pop(job_id, None)

    async def clean_work(self, job_id: str) -> None:
        self.checked.pop(job_id, None)
        await asyncio.to_thread(shutil.rmtree, self.config.work_dir / job_id, ignore_errors=True)

    def view(self, job: Job) -> dict[str, Any]:
        """The job's JSON as clients see it, with a note the store could not take."""
        data = job.to_json()
        unsaved = None if job.is_final else self.unsaved_notes.get(job.id)
        if unsaved is not None:
            data["note"] = unsaved
        return data

    def saved(self, job: Job) -> None:
        """A store listener: a note the store took replaces the one it could not take."""
        self.unsaved_notes.pop(job.id, None)
