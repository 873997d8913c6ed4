"""Runs jobs: prepare → upload/submit → poll → download, resuming after any crash.

The stages are parts of their own: `submitter` (prepare, adopt or send, never paying twice),
`poller` (one list call for many jobs), `downloader` (fetch and publish); every change of a
job's state is a named step in `transitions`. This module starts and stops them and serves
the commands (submit, cancel, retry, a new API key).

Every call to the API goes through one Gateway (bridge.gateway): a transient failure only
delays a job, and only a definite answer fails it. No loop dies of an exception: a job's
driver and the poller log it, show it in health and in the job's note, and go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
from pathlib import Path

from bridge import preparing
from bridge.config import BridgeConfig, Secret
from bridge.context import EngineContext
from bridge.downloader import Downloader
from bridge.driver import JobDriver
from bridge.errors import BridgeError, InputError
from bridge.files import check_output_dir
from bridge.jobs import ACTIVE_STATES, FINAL_STATES, Job, JobSpec, State
from bridge.poller import Poller
from bridge.remote import RemoteAPI
from bridge.store import IllegalTransition, Store
from bridge.submitter import Submitter
from bridge.transitions import DRIVEN_STATES, RESUBMIT_AFTER, RETRYABLE_STATES

log = logging.getLogger(__name__)


class Engine(EngineContext):
    """Owns every unfinished job of one store; one instance per running bridge."""

    def __init__(self, config: BridgeConfig, store: Store) -> None:
        super().__init__(config, store)
        self.submitter = Submitter(self)
        self.poller = Poller(self)
        self.downloader = Downloader(self)
        self.driver = JobDriver(self, self.submitter, self.downloader)
        self.drive = self._drive
        self._poller: asyncio.Task[None] | None = None
        self._listening = [store.subscribe(_log_change), store.subscribe(self.saved)]
        self._closed = False

    async def start(self) -> None:
        """Resume every unfinished job where it stood when the bridge last stopped."""
        for folder in (self.config.output_dir, self.config.work_dir):
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        if self.config.api_key:
            self.remote = RemoteAPI(
                self.config.api_base, self.config.api_key, auth=self.config.api_auth
            )
        await asyncio.to_thread(self._sweep_work)
        for job in await self.steps.list(sorted(ACTIVE_STATES)):
            if job.state in DRIVEN_STATES:
                self._drive(job.id)
        self._poller = asyncio.create_task(self.poller.run(), name="chamelaion-poller")

    async def close(self) -> None:
        """Stop working; unfinished jobs stay in the store and resume on the next start."""
        if self._closed:
            return
        self._closed = True
        tasks = [*self.tasks.values(), *([self._poller] if self._poller else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for unsubscribe in self._listening:
            unsubscribe()
        if self.remote is not None:
            await self.remote.close()

    # ----- commands --------------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> Job:
        """Check the inputs (nothing is paid for a bad file) and queue the job."""
        spec.validated()
        if not self.config.api_key:
            raise InputError(
                "No Chamelaion API key is set; set CHAMELAION_API_KEY (or enter it in the "
                "add-on preferences), or try 'chamelaion-bridge demo' to run offline."
            )
        checked = None
        if spec.video_path and spec.audio_path:
            checked = await asyncio.to_thread(
                preparing.check, Path(spec.video_path), Path(spec.audio_path)
            )
        output_dir = Path(spec.output_dir) if spec.output_dir else self.config.output_dir
        await asyncio.to_thread(check_output_dir, output_dir)
        job = await self.steps.create(spec)
        if checked is not None:
            self.checked[job.id] = checked
        self._drive(job.id)
        return job

    async def cancel(self, key: str) -> Job:
        """Stop a job; what was prepared for it stays, so a retry does not convert again."""
        job = await self.steps.cancel((await self._find(key)).id)
        task = self.tasks.pop(job.id, None)
        if task is not None:
            task.cancel()
        return job

    async def retry(self, key: str) -> Job:
        """Run a failed or canceled job again without ever paying twice for it."""
        job = await self._find(key)
        if job.state not in RETRYABLE_STATES:
            raise IllegalTransition(
                f"Job {job.reference_id} is {job.state}; "
                "only failed or canceled jobs can be retried."
            )
        if job.request_id and job.remote_status not in RESUBMIT_AFTER:
            # The API has (or had) a good request: poll and download it again, no new charge.
            job = await self.steps.resume_polling(job.id)
            self.poll_wake.set()
            return job
        job = await self.steps.requeue(job)
        self._drive(job.id)
        return job

    async def set_api_key(self, api_key: Secret, auth: str) -> int:
        """Use a new API key from now on, without a restart: unfinished jobs go on with it.

        Jobs that failed on the old key then say that a retry works; returns how many. The
        old client closes once the tasks that may still hold it are done, so a transfer
        under a key that works is not cut off.
        """
        old, holders = self.remote, list(self.tasks.values())
        self.config = dataclasses.replace(self.config, api_key=api_key, api_auth=auth)
        self.remote = RemoteAPI(self.config.api_base, api_key, auth=auth)
        if old is not None:

            async def close_old() -> None:
                try:
                    await asyncio.gather(*holders, return_exceptions=True)
                finally:
                    await old.close()

            self.spawn(f"old-remote-{id(old)}", close_old())
        self.poll_wake.set()
        touched = 0
        for job in await self.steps.list([State.FAILED]):
            error = job.error_with_new_key()
            if error is not None:
                with contextlib.suppress(IllegalTransition):
                    await self.steps.rekeyed(job.id, error)
                    touched += 1
        return touched

    def _drive(self, job_id: str) -> None:
        """Run the job's local steps (prepare, upload, download) in a task of its own."""
        self.spawn(job_id, self.driver.run(job_id))

    # ----- helpers ---------------------------------------------------------------------

    def _sweep_work(self) -> None:
        """Remove what was prepared for jobs that are done or gone; the rest stays, since a
        retry (even one that sends a new request) reuses it. Blocking: run in a thread."""
        for folder in self.config.work_dir.iterdir():
            with contextlib.suppress(BridgeError):
                job = self.store.get(folder.name)
                if job is None or job.state == State.COMPLETED:
                    shutil.rmtree(folder, ignore_errors=True)

    async def _find(self, key: str) -> Job:
        job = await self.steps.get(key)
        if job is None:
            raise JobNotFound(f"There is no job with id or reference_id {key!r}.")
        return job


class JobNotFound(InputError):
    """No job has that id or reference_id (the local API answers 404)."""


def _log_change(job: Job) -> None:
    if job.state in FINAL_STATES:
        log.info("job %s %s%s", job.reference_id, job.state, f": {job.error}" if job.error else "")
    elif job.progress in (0.0, 1.0):
        log.info("job %s %s", job.reference_id, job.state)
