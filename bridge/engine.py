"""Runs jobs: prepare → upload/submit → poll → download, resuming after any crash.

Rules this module exists to keep (design.md): a generate call is made only after the job is
recorded as `uploading` with its reference_id, and after any doubt (a crash, a dropped
connection, a 5xx) the API is asked for that reference_id before anything is sent again,
so nothing is paid twice. A request the API is still running is never failed locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any

from bridge import media
from bridge.aio import wait_event
from bridge.backoff import Backoff, RateWindow
from bridge.config import BridgeConfig, Secret
from bridge.errors import (
    AuthError,
    BridgeError,
    DuplicateReferenceError,
    InputError,
    NotFoundError,
    RemoteError,
)
from bridge.files import is_published, link_into_place, numbered_names, safe_filename
from bridge.jobs import FINAL_STATES, Job, JobSpec, State
from bridge.remote import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, RemoteAPI, RemoteRequest
from bridge.store import IllegalTransition, Store

log = logging.getLogger(__name__)

# A 429 is waited out for as long as it lasts; ambiguous failures (5xx, drops) are not.
MAX_SUBMIT_ATTEMPTS = 8
MAX_DOWNLOAD_ATTEMPTS = 6
PROGRESS_STEP = 0.01
PROGRESS_SECONDS = 0.25
POLLED_STATES = (str(State.SUBMITTED), str(State.PROCESSING))


class Engine:
    """Owns every unfinished job of one store; one instance per running bridge."""

    def __init__(self, config: BridgeConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.remote: RemoteAPI | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._output_urls: dict[str, str] = {}
        # Input checks done at submit, reused once when the job is prepared for upload.
        self._checked: dict[str, tuple[media.MediaInfo, media.MediaInfo]] = {}
        self._poll_wake = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._upload_slots = asyncio.Semaphore(max(1, config.upload_concurrency))
        self._download_slots = asyncio.Semaphore(2)
        self._generate_window = RateWindow(config.generate_per_minute)
        self._list_total: int | None = None
        self._list_limit = MAX_LIST_LIMIT  # 0: the API refuses listing; poll per request
        self._unsubscribe = store.subscribe(_log_change)
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
        for job in self.store.active():
            if job.state in (State.QUEUED, State.UPLOADING):
                self._spawn(job.id, self._submission(job.id))
            elif job.state == State.DOWNLOADING:
                self._spawn(job.id, self._download(job.id))
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
        self._unsubscribe()
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
                media.check_inputs, Path(spec.video_path), Path(spec.audio_path)
            )
        self._check_output_dir(Path(spec.output_dir) if spec.output_dir else None)
        job = self.store.create(spec)
        if checked is not None:
            self._checked[job.id] = checked
        self._spawn(job.id, self._submission(job.id))
        return job

    def cancel(self, key: str) -> Job:
        job = self._find(key)
        job = self.store.update(job.id, state=State.CANCELED, progress=0.0)
        task = self._tasks.pop(job.id, None)
        if task is not None:
            task.cancel()
        self._clean_work(job.id)
        return job

    def retry(self, key: str) -> Job:
        """Run a failed or canceled job again without ever paying twice for it."""
        job = self._find(key)
        if job.state not in (State.FAILED, State.CANCELED):
            raise IllegalTransition(
                f"Job {job.reference_id} is {job.state}; "
                "only failed or canceled jobs can be retried."
            )
        if job.request_id and job.remote_status != "failed":
            # The API has (or had) a good request: poll and download it again, no new charge.
            job = self.store.update(job.id, state=State.SUBMITTED, error=None, progress=0.0)
            self._poll_wake.set()
            return job
        changes: dict[str, Any] = {"error": None, "progress": 0.0}
        if job.request_id:
            # That request failed remotely: a new one needs a reference_id the API never saw.
            changes |= {
                "reference_id": self._next_reference_id(job),
                "previous_reference_ids": [*job.previous_reference_ids, job.reference_id],
                "request_id": None,
                "remote_status": None,
                "submit_started": False,
            }
        job = self._update_with_fresh_reference(job, changes)
        self._spawn(job.id, self._submission(job.id))
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

    # ----- submission ------------------------------------------------------------------

    async def _submission(self, job_id: str) -> None:
        try:
            async with self._upload_slots:
                await self._submit_until_accepted(job_id)
        except IllegalTransition:
            return  # canceled meanwhile
        except BridgeError as exc:
            self._fail(job_id, str(exc))
        except OSError as exc:  # an input vanished or became unreadable (e.g. a lost share)
            self._fail(
                job_id,
                f"An input file could not be read ({exc.strerror or exc}: {exc.filename}); "
                "put it back and retry the job.",
            )
        except Exception:
            log.exception("job %s: unexpected error while submitting", job_id)
            self._fail(
                job_id, "The bridge hit an unexpected error while submitting; see bridge.log."
            )

    async def _submit_until_accepted(self, job_id: str) -> None:
        remote = self._require_remote()
        backoff = Backoff()
        ambiguous_failures = 0
        while True:
            job = self._get(job_id)
            if job.state not in (State.QUEUED, State.UPLOADING):
                return
            if job.submit_started:
                found = await remote.find_by_reference_id(job.reference_id)
                if found is not None:
                    log.info("job %s: adopting request %s", job.reference_id, found.id)
                    self._accepted(job, found.id)
                    return
            video, audio = await self._prepared_inputs(job)
            await self._generate_window.acquire()
            job = self.store.update(
                job.id,
                state=State.UPLOADING,
                submit_started=True,
                progress=0.0,
                attempts=job.attempts + 1,
                expect={State.QUEUED, State.UPLOADING},
            )
            try:
                request_id = await self._send(remote, job, video, audio)
            except RemoteError as exc:
                if not exc.retryable:
                    raise
                if exc.status != 429:
                    ambiguous_failures += 1
                    if ambiguous_failures >= MAX_SUBMIT_ATTEMPTS:
                        raise RemoteError(
                            f"Gave up submitting after {ambiguous_failures} attempts ({exc}); "
                            "retry the job when the API is reachable again."
                        ) from None
                delay = backoff.next_delay(exc.retry_after)
                log.warning("job %s: %s (next try in %.1fs)", job.reference_id, exc, delay)
                self.store.update(job.id, note=f"{exc} Next try in {delay:.0f} s.")
                await asyncio.sleep(delay)
                continue
            self._accepted(job, request_id)
            return

    async def _send(
        self, remote: RemoteAPI, job: Job, video: Path | None, audio: Path | None
    ) -> str:
        if video is None or audio is None:
            return await remote.generate_from_urls(
                job.video_url or "",
                job.audio_url or "",
                reference_id=job.reference_id,
                disable_asd=job.disable_active_speaker_detection,
            )
        return await remote.generate_with_media(
            video,
            audio,
            reference_id=job.reference_id,
            disable_asd=job.disable_active_speaker_detection,
            model=job.model,
            progress=self._progress_reporter(job.id, State.UPLOADING),
        )

    def _accepted(self, job: Job, request_id: str) -> None:
        self.store.update(
            job.id,
            state=State.SUBMITTED,
            request_id=request_id,
            progress=0.0,
            note=None,
            expect={State.QUEUED, State.UPLOADING},
        )
        self._clean_work(job.id)
        self._poll_wake.set()

    async def _prepared_inputs(self, job: Job) -> tuple[Path | None, Path | None]:
        """The files to upload: the inputs as they are, or converted/cut copies in work/."""
        if not job.video_path or not job.audio_path:
            return None, None
        workdir = self.config.work_dir / job.id
        workdir.mkdir(parents=True, exist_ok=True)
        video_range = (
            (job.video_range.start_seconds, job.video_range.duration_seconds)
            if job.video_range
            else None
        )
        video_info, audio_info = self._checked.pop(job.id, (None, None))
        video = await asyncio.to_thread(
            media.prepare_video, Path(job.video_path), workdir, video_range, video_info
        )
        audio = await asyncio.to_thread(
            media.prepare_audio, Path(job.audio_path), workdir, audio_info
        )
        return video, audio

    # ----- polling ---------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        interval = self.config.poll_interval
        errors = Backoff(base=self.config.poll_interval, cap=60.0)
        while True:
            jobs = self.store.list(states=POLLED_STATES)
            if not jobs or self.remote is None:
                self._poll_wake.clear()
                await self._poll_wake.wait()
                interval = self.config.poll_interval
                continue
            self._poll_wake.clear()
            try:
                changed = await self._poll_once(self.remote, jobs)
                errors.reset()
            except RemoteError as exc:
                delay = errors.next_delay(exc.retry_after)
                level = logging.ERROR if isinstance(exc, AuthError) else logging.WARNING
                log.log(level, "polling: %s (next poll in %.1fs)", exc, delay)
                await self._sleep_or_wake(delay)
                continue
            interval = (
                self.config.poll_interval
                if changed
                else min(interval * 1.5, self.config.max_poll_interval)
            )
            await self._sleep_or_wake(interval)

    async def _sleep_or_wake(self, seconds: float) -> None:
        await wait_event(self._poll_wake, seconds)

    async def _poll_once(self, remote: RemoteAPI, jobs: list[Job]) -> bool:
        """Update every polled job; list pages when cheaper than one GET per job."""
        wanted = {job.request_id: job for job in jobs if job.request_id}
        seen: dict[str, RemoteRequest] = {}
        if self._list_limit and len(wanted) > 1:
            pages = math.ceil(self._list_total / self._list_limit) if self._list_total else 1
            if pages < len(wanted):
                seen = await self._listed(remote, wanted.keys())
        for request_id in wanted.keys() - seen.keys():
            found = await remote.retrieve(request_id)
            if found is not None:
                seen[request_id] = found
        changed = False
        for request_id, remote_request in seen.items():
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
                    expect={State.SUBMITTED, State.PROCESSING},
                )
                self._spawn(job.id, self._download(job.id))
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
                return False
            state = State.SUBMITTED if request.status == "queued" else State.PROCESSING
            if job.state == State.PROCESSING:
                state = State.PROCESSING
            self.store.update(
                job.id,
                state=state,
                remote_status=request.status,
                expect={State.SUBMITTED, State.PROCESSING},
            )
            return True
        except IllegalTransition:
            return False  # canceled while we were asking

    # ----- download --------------------------------------------------------------------

    async def _download(self, job_id: str) -> None:
        try:
            async with self._download_slots:
                await self._download_and_publish(job_id)
        except IllegalTransition:
            return
        except BridgeError as exc:
            self._fail(job_id, str(exc))
        except Exception:
            log.exception("job %s: unexpected error while downloading", job_id)
            self._fail(
                job_id, "The bridge hit an unexpected error while downloading; see bridge.log."
            )

    async def _download_and_publish(self, job_id: str) -> None:
        remote = self._require_remote()
        job = self._get(job_id)
        folder = Path(job.output_dir) if job.output_dir else self.config.output_dir
        tmp = folder / f".{job.id}.part"
        if job.output_path and is_published(tmp, Path(job.output_path)):
            self._completed(job, tmp)
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(_folder_problem(folder, exc)) from None
        backoff = Backoff()
        for attempt in range(1, MAX_DOWNLOAD_ATTEMPTS + 1):
            url = self._output_urls.get(job.id) or await self._fresh_output_url(remote, job)
            try:
                await remote.download(url, tmp, self._progress_reporter(job.id, State.DOWNLOADING))
                if await asyncio.to_thread(media.is_playable_video, tmp):
                    break
                problem: RemoteError = RemoteError("The result file is not a playable video.")
            except NotFoundError as exc:
                self._output_urls.pop(job.id, None)  # expired link: ask for a fresh one
                problem = exc
            except RemoteError as exc:
                if not exc.retryable:
                    raise
                problem = exc
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise InputError(_folder_problem(folder, exc)) from None
            tmp.unlink(missing_ok=True)
            if attempt == MAX_DOWNLOAD_ATTEMPTS:
                raise RemoteError(
                    f"The result could not be downloaded after {attempt} attempts ({problem}); "
                    "retry the job to download it again (no new charge)."
                )
            await asyncio.sleep(backoff.next_delay(problem.retry_after))
        name = safe_filename(job.output_name or f"{job.reference_id}.mp4")
        for candidate in numbered_names(folder / name):
            job = self.store.update(job.id, output_path=str(candidate), expect={State.DOWNLOADING})
            if link_into_place(tmp, candidate):
                break
        self._completed(job, tmp)

    async def _fresh_output_url(self, remote: RemoteAPI, job: Job) -> str:
        request = await remote.retrieve(job.request_id or job.reference_id)
        if request is None or not request.output_url:
            raise RemoteError(
                "The Chamelaion API no longer offers this job's result for download; "
                f"contact Chamelaion support with request {job.request_id}."
            )
        self._output_urls[job.id] = request.output_url
        return request.output_url

    def _completed(self, job: Job, tmp: Path) -> None:
        self.store.update(job.id, state=State.COMPLETED, progress=1.0, error=None)
        tmp.unlink(missing_ok=True)
        self._output_urls.pop(job.id, None)

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
            with contextlib.suppress(IllegalTransition):
                self.store.update(job_id, progress=round(fraction, 4), expect={state})

        return report

    def _fail(self, job_id: str, message: str, **changes: Any) -> None:
        with contextlib.suppress(IllegalTransition):
            self.store.update(job_id, state=State.FAILED, error=message, note=None, **changes)
        self._clean_work(job_id)
        self._output_urls.pop(job_id, None)

    def _clean_work(self, job_id: str) -> None:
        self._checked.pop(job_id, None)
        shutil.rmtree(self.config.work_dir / job_id, ignore_errors=True)

    def _require_remote(self) -> RemoteAPI:
        if self.remote is None:
            raise InputError(
                "No Chamelaion API key is set; set CHAMELAION_API_KEY and restart the bridge."
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
