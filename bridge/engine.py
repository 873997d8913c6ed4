"""Runs jobs: prepare → upload/submit → poll → download, resuming after any crash.

Rules this module exists to keep (design.md): a generate call is made only after the job is
recorded as `uploading` with its reference_id, and after any doubt (a crash, a dropped
connection, a 5xx) the API is asked for that reference_id before anything is sent again,
so nothing is paid twice. A request the API is still running is never failed locally.

Every call to the API goes through one Gateway (bridge.gateway): a transient failure only
delays a job, and only a definite answer fails it. No loop dies of an exception: a job's
driver and the poller log it, show it in health and in the job's note, and go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from bridge import media, preparing
from bridge.aio import wait_event
from bridge.backoff import Backoff, RateWindow
from bridge.config import BridgeConfig, Secret
from bridge.errors import (
    AuthError,
    BridgeError,
    DuplicateReferenceError,
    InputError,
    LocalProblem,
    NotFoundError,
    RemoteError,
    StoreError,
)
from bridge.files import (
    has_other_names,
    is_published,
    link_into_place,
    numbered_names,
    open_exclusive,
    part_path,
    safe_filename,
)
from bridge.gateway import API_PROBLEM, Gateway, Note
from bridge.jobs import ACTIVE_STATES, FINAL_STATES, Job, JobSpec, State, now_iso
from bridge.problems import Problems, clock
from bridge.remote import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, RemoteAPI, RemoteRequest, utc
from bridge.store import IllegalTransition, Store

log = logging.getLogger(__name__)

PROGRESS_STEP = 0.01
PROGRESS_SECONDS = 0.25
PREPARE_NOTE_SECONDS = 1.0
PREPARE_CONCURRENCY = 2
DRIVEN_STATES = frozenset({State.QUEUED, State.UPLOADING, State.DOWNLOADING})
# Remote outcomes after which a retry needs a new request (and is charged again).
RESUBMIT_AFTER = frozenset({"failed", "forgotten"})
# A result that stays unplayable, or whose link stays "not found", after this many fresh
# downloads is a definite failure (retrying later downloads again at no charge).
DOWNLOAD_GIVE_UP = 4
# How far the API's clock may run behind ours when telling our request from an older one.
CLOCK_SKEW = timedelta(minutes=5)
POLLED_STATES = frozenset({State.SUBMITTED, State.PROCESSING})


class _InputsChanged(Exception):
    """An input changed after it was prepared: check and prepare it again before paying."""


class Engine:
    """Owns every unfinished job of one store; one instance per running bridge."""

    def __init__(self, config: BridgeConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.remote: RemoteAPI | None = None
        self.problems = Problems()
        self.gateway = Gateway(self.problems, base=config.retry_base, cap=config.retry_cap)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._output_urls: dict[str, str] = {}
        # Input checks done at submit, reused once when the job is prepared for upload.
        self._checked: dict[str, preparing.Checked] = {}
        # Jobs whose request the API answers "not found": since when (monotonic, clock).
        self._missing_since: dict[str, tuple[float, str]] = {}
        self._poll_wake = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._prepare_slots = asyncio.Semaphore(PREPARE_CONCURRENCY)
        self._upload_slots = asyncio.Semaphore(max(1, config.upload_concurrency))
        self._download_slots = asyncio.Semaphore(2)
        self._generate_window = RateWindow(config.generate_per_minute)
        self._list_total: int | None = None
        self._list_limit = MAX_LIST_LIMIT  # 0: the API refuses listing; poll per request
        # Notes the store could not take (its disk is full): shown with the job all the same,
        # until the job's record changes again.
        self._unsaved_notes: dict[str, str] = {}
        self._listening = [store.subscribe(_log_change), store.subscribe(self._saved)]
        self._closed = False

    # ----- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Resume every unfinished job where it stood when the bridge last stopped."""
        for folder in (self.config.output_dir, self.config.work_dir):
            folder.mkdir(parents=True, exist_ok=True)
        if self.config.api_key:
            self.remote = RemoteAPI(
                self.config.api_base, self.config.api_key, auth=self.config.api_auth
            )
        await asyncio.to_thread(self._sweep_work)
        for job in self.store.active():
            if job.state in DRIVEN_STATES:
                self._drive(job.id)
        self._poller = asyncio.create_task(self._poll_loop(), name="chamelaion-poller")

    async def close(self) -> None:
        """Stop working; unfinished jobs stay in the store and resume on the next start."""
        if self._closed:
            return
        self._closed = True
        tasks = [*self._tasks.values(), *([self._poller] if self._poller else [])]
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
        self._check_output_dir(Path(spec.output_dir) if spec.output_dir else None)
        job = self.store.create(spec)
        if checked is not None:
            self._checked[job.id] = checked
        self._drive(job.id)
        return job

    def cancel(self, key: str) -> Job:
        """Stop a job; what was prepared for it stays, so a retry does not convert again."""
        job = self._find(key)
        job = self.store.update(job.id, state=State.CANCELED, progress=0.0, note=None)
        task = self._tasks.pop(job.id, None)
        if task is not None:
            task.cancel()
        return job

    def retry(self, key: str) -> Job:
        """Run a failed or canceled job again without ever paying twice for it."""
        job = self._find(key)
        if job.state not in (State.FAILED, State.CANCELED):
            raise IllegalTransition(
                f"Job {job.reference_id} is {job.state}; "
                "only failed or canceled jobs can be retried."
            )
        if job.request_id and job.remote_status not in RESUBMIT_AFTER:
            # The API has (or had) a good request: poll and download it again, no new charge.
            job = self.store.update(
                job.id, state=State.SUBMITTED, error=None, progress=0.0, remote_status=None
            )
            self._poll_wake.set()
            return job
        changes: dict[str, Any] = {"error": None, "progress": 0.0}
        if job.request_id:
            # That request failed or was forgotten remotely: a new one needs a reference_id
            # the API never saw.
            changes |= {
                "reference_id": self._next_reference_id(job),
                "previous_reference_ids": [*job.previous_reference_ids, job.reference_id],
                "request_id": None,
                "remote_status": None,
                "submit_started": False,
                "unsettled_since": None,
            }
        job = self._update_with_fresh_reference(job, changes)
        self._drive(job.id)
        return job

    def set_api_key(self, api_key: Secret, auth: str) -> int:
        """Use a new API key from now on, without a restart: unfinished jobs go on with it.

        Jobs that failed on the old key then say that a retry works; returns how many. The
        old client closes once the tasks that may still hold it are done, so a transfer
        under a key that works is not cut off.
        """
        old, holders = self.remote, list(self._tasks.values())
        self.config = dataclasses.replace(self.config, api_key=api_key, api_auth=auth)
        self.remote = RemoteAPI(self.config.api_base, api_key, auth=auth)
        if old is not None:

            async def close_old() -> None:
                try:
                    await asyncio.gather(*holders, return_exceptions=True)
                finally:
                    await old.close()

            self._spawn(f"old-remote-{id(old)}", close_old())
        self._poll_wake.set()
        touched = 0
        for job in self.store.list(states=[str(State.FAILED)]):
            error = job.error_with_new_key()
            if error is not None:
                with contextlib.suppress(IllegalTransition):
                    self.store.update(job.id, error=error, expect={State.FAILED})
                    touched += 1
        return touched

    # ----- driving one job ---------------------------------------------------------------

    def _drive(self, job_id: str) -> None:
        """Run the job's local steps (prepare, upload, download) in a task of its own."""
        self._spawn(job_id, self._run_job(job_id))

    async def _run_job(self, job_id: str) -> None:
        """Take a job through its local steps until the poller owns it or it is final.

        A definite answer fails the job. Anything else (a full disk, an unwritable store, a
        bug) is logged, shown in health and the job's note, and the step is run again from
        what the store says, as after a restart.
        """
        trouble = Backoff(base=self.config.retry_base, cap=self.config.retry_cap)
        reported: set[str] = set()  # problems this job ran into: gone with it, or once it got on
        try:
            while True:
                try:
                    job = self._get(job_id)
                    if job.state in DRIVEN_STATES:
                        if job.state == State.DOWNLOADING:
                            await self._download(job)
                        else:
                            await self._submit(job)
                    return
                except IllegalTransition:
                    return  # canceled or moved on meanwhile; whoever did that took it over
                except Exception as exc:
                    problem: Exception = exc
                    if _is_definite(exc):
                        try:
                            self._fail(job_id, str(exc))
                            return
                        except StoreError as store_problem:
                            problem = store_problem
                    reported.add(await self._wait_out(job_id, problem, trouble))
        finally:
            for source in reported:
                self.problems.clear(source)

    async def _wait_out(self, job_id: str, exc: Exception, backoff: Backoff) -> str:
        """Log and show what stops the job, then wait; returns the problem's source."""
        delay = backoff.next_delay()
        if isinstance(exc, LocalProblem):
            sentence = str(exc)
            source = "store" if isinstance(exc, StoreError) else "files"
            log.warning("job %s: %s", job_id, sentence)
        else:
            log.error("job %s: unexpected error", job_id, exc_info=exc)
            sentence = (
                f"The bridge hit an unexpected error ({type(exc).__name__}); "
                "details are in bridge.log."
            )
            source = "unexpected"
        since = self.problems.report(source, sentence)
        self._note(
            job_id,
            f"{sentence} The job waits (since {since}); next try in {max(1, round(delay))} s.",
        )
        await asyncio.sleep(delay)
        return source

    # ----- submission ------------------------------------------------------------------

    async def _submit(self, job: Job) -> None:
        """Prepare the inputs (once), then send the job until the API has accepted it."""
        while True:
            prepared = await self._prepared(job)
            try:
                request_id = await self.gateway.call(
                    lambda prepared=prepared: self._submit_attempt(job.id, prepared),
                    doing="submit the job",
                    note=self._noter(job.id),
                )
            except _InputsChanged:
                log.info("job %s: an input changed since it was checked", job.reference_id)
                continue
            self._accepted(job.id, request_id)
            return

    async def _submit_attempt(self, job_id: str, prepared: preparing.Prepared | None) -> str:
        """One try, in an upload slot (not held while waiting between tries): adopt what
        the API already holds under the reference_id, else send."""
        async with self._upload_slots:
            return await self._adopt_or_send(job_id, prepared)

    async def _adopt_or_send(self, job_id: str, prepared: preparing.Prepared | None) -> str:
        remote = self._require_remote()
        job = self._get(job_id)
        if job.state not in (State.QUEUED, State.UPLOADING):
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
            raise _InputsChanged
        await self._generate_window.acquire()
        job = self.store.update(
            job.id,
            state=State.UPLOADING,
            submit_started=True,
            unsettled_since=now_iso(),
            progress=0.0,
            note=None,
            attempts=job.attempts + 1,
            expect={State.QUEUED, State.UPLOADING},
        )
        try:
            return await self._send(remote, job, prepared)
        except RemoteError as exc:
            if exc.status is not None and exc.status < 500:  # a clear "no" (429, 401, 400...)
                self.store.update(job.id, unsettled_since=None, expect={State.UPLOADING})
            raise

    def _check_grace(self, job: Job) -> None:
        """A generate call with no clear answer may still be taken by the API (a gateway's
        504 while the upload goes on, a crash mid-upload): it is not sent again before the
        API had time to show it, or it would be paid twice."""
        if not job.unsettled_since:
            return
        resend_at = utc(job.unsettled_since) + timedelta(seconds=self.config.accept_grace)
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
            progress=self._progress_reporter(job.id, State.UPLOADING),
        )

    def _accepted(self, job_id: str, request_id: str) -> None:
        self.store.update(
            job_id,
            state=State.SUBMITTED,
            request_id=request_id,
            unsettled_since=None,
            progress=0.0,
            note=None,
            expect={State.QUEUED, State.UPLOADING},
        )
        self._checked.pop(job_id, None)
        self._poll_wake.set()

    async def _prepared(self, job: Job) -> preparing.Prepared | None:
        """The files to upload (None for URL jobs): kept from before, or prepared now,
        outside the upload slots so a long conversion holds up no other job's upload."""
        if not job.video_path or not job.audio_path:
            return None
        workdir = self.config.work_dir / job.id
        prepared = await asyncio.to_thread(preparing.load, workdir)
        if prepared is not None:
            return prepared
        video_range = (
            (job.video_range.start_seconds, job.video_range.duration_seconds)
            if job.video_range
            else None
        )
        async with self._prepare_slots:
            try:
                return await asyncio.to_thread(
                    preparing.prepare,
                    Path(job.video_path),
                    Path(job.audio_path),
                    workdir,
                    video_range,
                    self._checked.pop(job.id, None),
                    self._preparing_reporter(job.id),
                )
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                raise _folder_error(self.config.work_dir, exc) from None

    def _preparing_reporter(self, job_id: str) -> Callable[[float], None]:
        """Shows a conversion's progress in the job's note, at most once a second.

        Runs on the converting thread; raising there (the job was canceled) stops the work.
        """
        last = {"at": -PREPARE_NOTE_SECONDS, "percent": -1}

        def report(fraction: float) -> None:
            percent, now = int(fraction * 100), time.monotonic()
            if percent == last["percent"] or now - last["at"] < PREPARE_NOTE_SECONDS:
                return
            last.update(at=now, percent=percent)
            note = f"Preparing the video for upload: converting, {percent} % done."
            with contextlib.suppress(StoreError):
                self.store.update(job_id, note=note, expect={State.QUEUED, State.UPLOADING})

        return report

    # ----- polling ---------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        """Poll every submitted job until it is final; no failure ends this loop."""
        interval = self.config.poll_interval
        trouble = Backoff(base=self.config.poll_interval, cap=self.config.retry_cap)
        while True:
            jobs: list[Job] = []
            try:
                jobs = self.store.list(states=[str(state) for state in POLLED_STATES])
                if not jobs or self.remote is None:
                    self._poll_wake.clear()
                    await self._poll_wake.wait()
                    interval = self.config.poll_interval
                    continue
                self._poll_wake.clear()
                changed = await self._poll_once(self.remote, jobs)
            except Exception as exc:
                await self._sleep_or_wake(self._poll_trouble(exc, jobs, trouble))
                continue
            if trouble.attempt:
                trouble.reset()
                self.gateway.recovered()
                self.problems.clear("poller")
            interval = (
                self.config.poll_interval
                if changed
                else min(interval * 1.5, self.config.max_poll_interval)
            )
            await self._sleep_or_wake(interval)

    def _poll_trouble(self, exc: Exception, jobs: list[Job], backoff: Backoff) -> float:
        """Say why polling waits (health, and each polled job's note); the delay to wait."""
        if isinstance(exc, RemoteError):
            source, sentence = API_PROBLEM, str(exc)
            delay = backoff.next_delay(exc.retry_after)
            level = logging.ERROR if isinstance(exc, AuthError) else logging.WARNING
            log.log(level, "polling: %s (next poll in %.1f s)", exc, delay)
            waiting = "Waiting to hear from the Chamelaion API"
        else:
            source, delay = "poller", backoff.next_delay()
            if isinstance(exc, LocalProblem):
                sentence = str(exc)
                log.warning("polling: %s", exc)
            else:
                sentence = (
                    f"Checking on running jobs failed ({type(exc).__name__}); it is tried "
                    "again, details are in bridge.log."
                )
                log.error("polling failed", exc_info=exc)
            waiting = "Waiting to record what the Chamelaion API says"
        since = self.problems.report(source, sentence)
        for job in jobs:
            self._note(job.id, f"{waiting}: {sentence} (since {since})")
        return delay

    async def _sleep_or_wake(self, seconds: float) -> None:
        await wait_event(self._poll_wake, seconds)

    async def _poll_once(self, remote: RemoteAPI, jobs: list[Job]) -> bool:
        """Update every polled job; list pages when cheaper than one GET per job."""
        wanted = {job.request_id: job for job in jobs if job.request_id}
        seen: dict[str, RemoteRequest] = {}
        if self._list_limit and len(wanted) > 1:
            pages = -(-self._list_total // self._list_limit) if self._list_total else 1
            if pages < len(wanted):
                seen = await self._listed(remote, wanted.keys())
        changed = False
        for request_id in wanted.keys() - seen.keys():
            found = await remote.retrieve(request_id)
            if found is None:
                changed |= self._missing(wanted[request_id])
            else:
                seen[request_id] = found
        for request_id, remote_request in seen.items():
            self._missing_since.pop(wanted[request_id].id, None)
            changed |= await self._apply_remote(remote, wanted[request_id], remote_request)
        return changed

    async def _listed(self, remote: RemoteAPI, wanted: Iterable[str]) -> dict[str, RemoteRequest]:
        """The wanted requests found by paging through the list (in whatever order it has).

        An API that refuses our page size (its maximum is undocumented) gets the documented
        default next time; one that refuses listing altogether is polled per request.
        """
        wanted = set(wanted)
        seen: dict[str, RemoteRequest] = {}
        offset = 0
        try:
            while len(seen) < len(wanted):
                items, total, limit = await remote.list_page(offset=offset, limit=self._list_limit)
                self._list_total, self._list_limit = total, max(1, limit)
                seen.update({r.id: r for r in items if r.id in wanted})
                offset += len(items)
                if not items or offset >= total:
                    break
        except RemoteError as exc:
            if exc.retryable or isinstance(exc, AuthError):
                raise
            self._list_limit = DEFAULT_LIST_LIMIT if self._list_limit > DEFAULT_LIST_LIMIT else 0
            log.warning("listing requests failed (%s); polling per request for now", exc)
        return seen

    def _missing(self, job: Job) -> bool:
        """The API answers "not found" for a request it accepted: forgotten after a while."""
        first, since = self._missing_since.setdefault(job.id, (time.monotonic(), clock()))
        if time.monotonic() - first < self.config.forget_after:
            self._note(
                job.id,
                f"The Chamelaion API does not find request {job.request_id} (since {since}); "
                f"the job fails if it stays missing for {self.config.forget_after:.0f} s.",
            )
            return False
        log.warning("job %s: the API no longer knows request %s", job.reference_id, job.request_id)
        self._fail(
            job.id,
            f"The Chamelaion API no longer knows request {job.request_id} (it has answered "
            f"'not found' since {since}); retry the job to send it again as a new request, "
            "which is charged again.",
            remote_status="forgotten",
        )
        self._missing_since.pop(job.id, None)
        return True

    async def _apply_remote(self, remote: RemoteAPI, job: Job, request: RemoteRequest) -> bool:
        try:
            if request.status == "completed":
                if not request.output_url:
                    request = await remote.retrieve(request.id) or request
                if not request.output_url:
                    self._fail(
                        job.id,
                        "The Chamelaion API says the job completed but gave no output URL; "
                        f"retry the job, or contact Chamelaion support with request {request.id}.",
                        remote_status="completed",
                    )
                    return True
                self._output_urls[job.id] = request.output_url
                self.store.update(
                    job.id,
                    state=State.DOWNLOADING,
                    remote_status=request.status,
                    progress=0.0,
                    note=None,
                    expect={State.SUBMITTED, State.PROCESSING},
                )
                self._drive(job.id)
                return True
            if request.status == "failed":
                reason = request.error_message or "no reason given"
                self._fail(
                    job.id,
                    f"The Chamelaion API could not lip-sync this clip: {reason}.",
                    remote_status="failed",
                )
                return True
            if job.remote_status == request.status:
                if job.note is not None:  # it waited on something that is over now
                    self.store.update(job.id, note=None, expect=POLLED_STATES)
                return False
            state = State.SUBMITTED if request.status == "queued" else State.PROCESSING
            if job.state == State.PROCESSING:
                state = State.PROCESSING
            self.store.update(
                job.id,
                state=state,
                remote_status=request.status,
                note=None,
                expect=POLLED_STATES,
            )
            return True
        except IllegalTransition:
            return False  # canceled while we were asking

    # ----- download --------------------------------------------------------------------

    async def _download(self, job: Job) -> None:
        """Fetch the result into a fresh temporary file beside its destination, then publish
        it whole under a name no other file has."""
        folder = Path(job.output_dir) if job.output_dir else self.config.output_dir
        if (
            job.part_path
            and job.output_path
            and is_published(Path(job.part_path), Path(job.output_path))
        ):
            self._completed(job, Path(job.part_path))
            return
        if job.part_path:  # left by a download that a crash or an error interrupted
            Path(job.part_path).unlink(missing_ok=True)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _folder_error(folder, exc) from None
        part = part_path(folder, job.reference_id)
        job = self.store.update(job.id, part_path=str(part), expect={State.DOWNLOADING})
        try:
            with _opened(part, folder) as fh:
                if not await self._fetch_playable(job, fh, part):
                    part.unlink(missing_ok=True)
                    return
            self._publish(job, part, folder)
        except BaseException:
            if not has_other_names(part):  # published but not yet recorded: keep for a resume
                part.unlink(missing_ok=True)
            raise

    async def _fetch_playable(self, job: Job, fh: IO[bytes], part: Path) -> bool:
        """Download until the file plays; False when the API no longer offers a result (the
        poller then decides, which fails the job if the API has forgotten it)."""
        remote = self._require_remote()
        misses = Backoff(base=self.config.retry_base, cap=self.config.retry_cap)
        problem = ""
        while misses.attempt < DOWNLOAD_GIVE_UP:
            url = self._output_urls.get(job.id) or await self._fresh_output_url(remote, job)
            if url is None:
                return False
            try:
                await self.gateway.call(
                    lambda url=url: self._download_attempt(remote, job, url, fh),
                    doing="download the result",
                    note=self._noter(job.id),
                )
                if await asyncio.to_thread(media.is_playable_video, part):
                    return True
                problem = "the file that arrives is not a playable video"
            except NotFoundError as exc:  # an expired link: ask for a fresh one
                problem = str(exc)
            self._output_urls.pop(job.id, None)
            log.warning("job %s: %s; fetching a fresh link", job.reference_id, problem)
            await asyncio.sleep(misses.next_delay())
        raise RemoteError(
            f"The result could not be downloaded ({problem}, {DOWNLOAD_GIVE_UP} times from "
            "fresh links); retry the job later to download it again (no new charge), or contact "
            f"Chamelaion support with request {job.request_id}."
        )

    async def _download_attempt(self, remote: RemoteAPI, job: Job, url: str, fh: IO[bytes]) -> None:
        """One try, in a download slot (not held while waiting between tries)."""
        async with self._download_slots:
            await remote.download(url, fh, self._progress_reporter(job.id, State.DOWNLOADING))

    async def _fresh_output_url(self, remote: RemoteAPI, job: Job) -> str | None:
        request = await self.gateway.call(
            lambda: remote.retrieve(job.request_id or job.reference_id),
            doing="ask for the result's download link",
            note=self._noter(job.id),
        )
        if request is None or not request.output_url:
            self.store.update(
                job.id, state=State.PROCESSING, remote_status=None, expect={State.DOWNLOADING}
            )
            self._poll_wake.set()
            return None
        self._output_urls[job.id] = request.output_url
        return request.output_url

    def _publish(self, job: Job, part: Path, folder: Path) -> None:
        name = safe_filename(job.output_name or f"{job.reference_id}.mp4")
        try:
            for candidate in numbered_names(folder / name):
                job = self.store.update(
                    job.id, output_path=str(candidate), expect={State.DOWNLOADING}
                )
                if link_into_place(part, candidate):
                    break
        except OSError as exc:
            raise _folder_error(folder, exc) from None
        self._completed(job, part)

    def _completed(self, job: Job, part: Path) -> None:
        self.store.update(
            job.id, state=State.COMPLETED, progress=1.0, error=None, note=None, part_path=None
        )
        part.unlink(missing_ok=True)
        self._output_urls.pop(job.id, None)
        self._clean_work(job.id)

    # ----- helpers ---------------------------------------------------------------------

    def _spawn(self, job_id: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=f"job-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(
            lambda t: self._tasks.pop(job_id, None) if self._tasks.get(job_id) is t else None
        )

    def _progress_reporter(self, job_id: str, state: State):  # type: ignore[no-untyped-def]
        """A callback that persists transfer progress once 1% more is done and 0.25 s passed.

        Both, not either: each write is a SQLite commit plus an event to every subscriber,
        and on a fast link "either" meant a hundred of them per upload on the hot path.
        Progress is best effort: a store that cannot be written must not stop a transfer.
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
            with contextlib.suppress(BridgeError):
                self.store.update(job_id, progress=round(fraction, 4), expect={state})

        return report

    def _note(self, job_id: str, note: str | None) -> None:
        """Say why an unfinished job waits, even when the store is what is wrong."""
        try:
            job = self.store.get(job_id)
            if job is not None and not job.is_final and job.note != note:
                self.store.update(job_id, note=note, expect=ACTIVE_STATES)
        except StoreError:
            if note is not None:
                self._unsaved_notes[job_id] = note
        except BridgeError:
            pass  # final or damaged meanwhile: nothing to say

    def _saved(self, job: Job) -> None:
        self._unsaved_notes.pop(job.id, None)

    def view(self, job: Job) -> dict[str, Any]:
        """The job's JSON as clients see it, with a note the store could not take."""
        data = job.to_json()
        unsaved = None if job.is_final else self._unsaved_notes.get(job.id)
        if unsaved is not None:
            data["note"] = unsaved
        return data

    def _noter(self, job_id: str) -> Note:
        return lambda note: self._note(job_id, note)

    def _fail(self, job_id: str, message: str, **changes: Any) -> None:
        """Fail a job for a definite reason; what was prepared stays for a retry."""
        with contextlib.suppress(IllegalTransition):
            self.store.update(job_id, state=State.FAILED, error=message, note=None, **changes)
        self._checked.pop(job_id, None)
        self._output_urls.pop(job_id, None)

    def _clean_work(self, job_id: str) -> None:
        self._checked.pop(job_id, None)
        shutil.rmtree(self.config.work_dir / job_id, ignore_errors=True)

    def _sweep_work(self) -> None:
        """Remove what was prepared for jobs that are done or gone; the rest stays, since a
        retry (even one that sends a new request) reuses it."""
        for folder in self.config.work_dir.iterdir():
            with contextlib.suppress(BridgeError):
                job = self.store.get(folder.name)
                if job is None or job.state == State.COMPLETED:
                    shutil.rmtree(folder, ignore_errors=True)

    def _require_remote(self) -> RemoteAPI:
        if self.remote is None:
            raise InputError(
                "No Chamelaion API key is set; set CHAMELAION_API_KEY or enter the key in the "
                "add-on preferences, then retry the job."
            )
        return self.remote

    def _get(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise InputError(f"There is no job {job_id!r}.")
        return job

    def _find(self, key: str) -> Job:
        job = self.store.get(key)
        if job is None:
            raise JobNotFound(f"There is no job with id or reference_id {key!r}.")
        return job

    def _check_output_dir(self, folder: Path | None) -> None:
        folder = folder or self.config.output_dir
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(_folder_problem(folder, exc)) from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(
                f"The output folder {folder} is not writable; choose another output folder."
            )

    def _next_reference_id(self, job: Job) -> str:
        base = re.sub(r"-r\d+$", "", job.reference_id)[:120]
        return f"{base}-r{len(job.previous_reference_ids) + 2}"

    def _update_with_fresh_reference(self, job: Job, changes: dict[str, Any]) -> Job:
        """Queue the job again; bump the -rN suffix while another job holds that id."""
        while True:
            try:
                return self.store.update(job.id, state=State.QUEUED, **changes)
            except DuplicateReferenceError:
                if "reference_id" not in changes:
                    raise
                n = int(changes["reference_id"].rsplit("-r", 1)[1]) + 1
                changes["reference_id"] = f"{changes['reference_id'].rsplit('-r', 1)[0]}-r{n}"


class JobNotFound(InputError):
    """No job has that id or reference_id (the local API answers 404)."""


def _is_definite(exc: Exception) -> bool:
    """Whether a failure is the answer (bad input, a refused key, the API's verdict) rather
    than something that waiting can fix."""
    if isinstance(exc, RemoteError):
        return not exc.retryable
    return isinstance(exc, InputError)


def _folder_error(folder: Path, exc: OSError) -> BridgeError:
    """A folder that is full or away only makes a job wait; one that refuses us fails it."""
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return InputError(_folder_problem(folder, exc))
    if exc.errno == errno.ENOSPC:
        return LocalProblem(
            f"The disk holding {folder} is full; free some space and the job goes on by itself."
        )
    return LocalProblem(
        f"The output folder {folder} cannot be written right now ({exc.strerror or exc}); "
        "the job goes on once it can."
    )


@contextlib.contextmanager
def _opened(part: Path, folder: Path) -> Iterator[IO[bytes]]:
    """The temporary file, created exclusively; write errors become a folder problem."""
    try:
        with open_exclusive(part) as fh:
            yield fh
    except OSError as exc:
        raise _folder_error(folder, exc) from None


def _folder_problem(folder: Path, exc: OSError) -> str:
    if exc.errno == 28:
        return f"The disk holding {folder} is full; free some space and retry the job."
    if isinstance(exc, PermissionError) or exc.errno == 13 or exc.errno == 30:
        return f"The output folder {folder} is not writable; choose another output folder."
    return f"The output folder {folder} cannot be used ({exc.strerror}); choose another one."


def _log_change(job: Job) -> None:
    if job.state in FINAL_STATES:
        log.info("job %s %s%s", job.reference_id, job.state, f": {job.error}" if job.error else "")
    elif job.progress in (0.0, 1.0):
        log.info("job %s %s", job.reference_id, job.state)
