"""Getting a job to the API: prepare its inputs once, then adopt or send, never paying twice.

A generate call is made only after the job is recorded as `uploading` with its reference_id,
and after any doubt (a crash, a dropped connection, a 5xx) the API is asked for that
reference_id before anything is sent again (design.md, "No double charge").
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bridge import preparing
from bridge.backoff import RateWindow
from bridge.context import EngineContext
from bridge.errors import RemoteError, StoreError
from bridge.files import folder_error
from bridge.jobs import Job, State
from bridge.remote import RemoteAPI, utc
from bridge.store import IllegalTransition
from bridge.transitions import SENDABLE_STATES

log = logging.getLogger(__name__)

PREPARE_NOTE_SECONDS = 1.0
PREPARE_CONCURRENCY = 2
# How far the API's clock may run behind ours when telling our request from an older one.
CLOCK_SKEW = timedelta(minutes=5)


class InputsChanged(Exception):
    """An input changed after it was prepared: check and prepare it again before paying."""


class Submitter:
    """Takes queued (and interrupted uploading) jobs until the API has accepted them."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self._prepare_slots = asyncio.Semaphore(PREPARE_CONCURRENCY)
        self._upload_slots = asyncio.Semaphore(max(1, ctx.config.upload_concurrency))
        self._generate_window = RateWindow(ctx.config.generate_per_minute)

    async def submit(self, job: Job) -> None:
        """Prepare the inputs (once), then send the job until the API has accepted it."""
        while True:
            prepared = await self._prepared(job)
            try:
                request_id = await self.ctx.gateway.call(
                    lambda prepared=prepared: self._attempt(job.id, prepared),
                    doing="submit the job",
                    note=self.ctx.noter(job.id),
                )
            except InputsChanged:
                log.info("job %s: an input changed since it was checked", job.reference_id)
                continue
            await self.ctx.steps.accepted(job.id, request_id)
            self.ctx.checked.pop(job.id, None)
            self.ctx.poll_wake.set()
            return

    async def _attempt(self, job_id: str, prepared: preparing.Prepared | None) -> str:
        """One try, in an upload slot (not held while waiting between tries)."""
        async with self._upload_slots:
            return await self._adopt_or_send(job_id, prepared)

    async def _adopt_or_send(self, job_id: str, prepared: preparing.Prepared | None) -> str:
        """Adopt what the API already holds under the reference_id, else send."""
        remote = self.ctx.require_remote()
        job = await self.ctx.get(job_id)
        if job.state not in SENDABLE_STATES:
            raise IllegalTransition(f"Job {job.reference_id} is {job.state} now.")
        if job.submit_started:
            found = await remote.find_by_reference_id(
                job.reference_id, created_after=utc(job.created_at) - CLOCK_SKEW
            )
            if found is not None:
                log.info("job %s: adopting request %s", job.reference_id, found.id)
                return found.id
            self._check_grace(job)
        if prepared is not None and not await asyncio.to_thread(prepared.still_valid):
            raise InputsChanged
        await self._generate_window.acquire()
        job = await self.ctx.steps.mark_uploading(job)
        try:
            return await self._send(remote, job, prepared)
        except RemoteError as exc:
            if exc.status is not None and exc.status < 500:  # a clear "no" (429, 401, 400...)
                await self.ctx.steps.upload_refused(job.id)
            raise

    def _check_grace(self, job: Job) -> None:
        """A generate call with no clear answer may still be taken by the API (a gateway's
        504 while the upload goes on, a crash mid-upload): it is not sent again before the
        API had time to show it, or it would be paid twice."""
        if not job.unsettled_since:
            return
        resend_at = utc(job.unsettled_since) + timedelta(seconds=self.ctx.config.accept_grace)
        if datetime.now(UTC) < resend_at:
            raise RemoteError(
                "The Chamelaion API has not shown yet whether it took the last upload; it is "
                f"sent again only if the API still does not know it at {resend_at:%H:%M:%S} UTC.",
                retryable=True,
            )

    async def _send(self, remote: RemoteAPI, job: Job, prepared: preparing.Prepared | None) -> str:
        if prepared is None:
            return await remote.generate_from_urls(
                job.video_url or "",
                job.audio_url or "",
                reference_id=job.reference_id,
                disable_asd=job.disable_active_speaker_detection,
            )
        return await remote.generate_with_media(
            prepared.video,
            prepared.audio,
            reference_id=job.reference_id,
            disable_asd=job.disable_active_speaker_detection,
            model=job.model,
            progress=self.ctx.progress_reporter(job.id, State.UPLOADING),
        )

    async def _prepared(self, job: Job) -> preparing.Prepared | None:
        """The files to upload (None for URL jobs): kept from before, or prepared now,
        outside the upload slots so a long conversion holds up no other job's upload."""
        if not job.video_path or not job.audio_path:
            return None
        workdir = self.ctx.config.work_dir / job.id
        video_range = job.video_range.as_tuple() if job.video_range else None
        audio_range = job.audio_range.as_tuple() if job.audio_range else None
        prepared = await asyncio.to_thread(preparing.load, workdir, video_range, audio_range)
        if prepared is not None:
            return prepared
        async with self._prepare_slots:
            try:
                return await asyncio.to_thread(
                    preparing.prepare,
                    Path(job.video_path),
                    Path(job.audio_path),
                    workdir,
                    video_range,
                    self.ctx.checked.pop(job.id, None),
                    self._preparing_reporter(job.id),
                    audio_range,
                )
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                raise folder_error(self.ctx.config.work_dir, exc) from None

    def _preparing_reporter(self, job_id: str) -> Callable[[float], None]:
        """Shows a conversion's progress in the job's note, at most once a second.

        Runs on the converting thread, which waits for the store's writer; raising there
        (the job was canceled) stops the work.
        """
        last = {"at": -PREPARE_NOTE_SECONDS, "percent": -1}
        steps = self.ctx.steps

        def report(fraction: float) -> None:
            percent, now = int(fraction * 100), time.monotonic()
            if percent == last["percent"] or now - last["at"] < PREPARE_NOTE_SECONDS:
                return
            last.update(at=now, percent=percent)
            note = f"Preparing the video for upload: converting, {percent} % done."
            with contextlib.suppress(StoreError):
                steps.queue_note(job_id, note, SENDABLE_STATES).result()

        return report
