"""Watching submitted jobs at the API: one list call for many jobs, backing off while quiet.

A request the API is still running is never failed locally; one it answers "not found" for
is failed only once it stays missing for `forget_after` seconds. No failure ends the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from bridge.aio import wait_event
from bridge.backoff import Backoff
from bridge.context import EngineContext
from bridge.errors import AuthError, LocalProblem, RemoteError
from bridge.gateway import API_PROBLEM
from bridge.jobs import Job
from bridge.problems import clock
from bridge.remote import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, RemoteAPI, RemoteRequest
from bridge.store import IllegalTransition
from bridge.transitions import POLLED_STATES

log = logging.getLogger(__name__)


class Poller:
    """Polls every submitted job until it is final; one per engine."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self._list_total: int | None = None
        self._list_limit = MAX_LIST_LIMIT  # 0: the API refuses listing; poll per request
        # Jobs whose request the API answers "not found": since when (monotonic, clock).
        self._missing_since: dict[str, tuple[float, str]] = {}

    async def run(self) -> None:
        """Poll until canceled; wait for a wake-up while nothing is submitted."""
        ctx = self.ctx
        interval = ctx.config.poll_interval
        trouble = Backoff(base=ctx.config.poll_interval, cap=ctx.config.retry_cap)
        while True:
            jobs: list[Job] = []
            try:
                jobs = await ctx.steps.list(POLLED_STATES)
                if not jobs or ctx.remote is None:
                    ctx.poll_wake.clear()
                    await ctx.poll_wake.wait()
                    interval = ctx.config.poll_interval
                    continue
                ctx.poll_wake.clear()
                changed = await self._poll_once(ctx.remote, jobs)
            except Exception as exc:
                await wait_event(ctx.poll_wake, await self._trouble(exc, jobs, trouble))
                continue
            if trouble.attempt:
                trouble.reset()
                ctx.gateway.recovered()
                ctx.problems.clear("poller")
            interval = (
                ctx.config.poll_interval
                if changed
                else min(interval * 1.5, ctx.config.max_poll_interval)
            )
            await wait_event(ctx.poll_wake, interval)

    async def _trouble(self, exc: Exception, jobs: list[Job], backoff: Backoff) -> float:
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
        since = self.ctx.problems.report(source, sentence)
        for job in jobs:
            await self.ctx.note(job.id, f"{waiting}: {sentence} (since {since})")
        return delay

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
                changed |= await self._missing(wanted[request_id])
            else:
                seen[request_id] = found
        for request_id, remote_request in seen.items():
            self._missing_since.pop(wanted[request_id].id, None)
            changed |= await self._apply(remote, wanted[request_id], remote_request)
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

    async def _missing(self, job: Job) -> bool:
        """The API answers "not found" for a request it accepted: forgotten after a while."""
        forget_after = self.ctx.config.forget_after
        first, since = self._missing_since.setdefault(job.id, (time.monotonic(), clock()))
        if time.monotonic() - first < forget_after:
            await self.ctx.note(
                job.id,
                f"The Chamelaion API does not find request {job.request_id} (since {since}); "
                f"the job fails if it stays missing for {forget_after:.0f} s.",
            )
            return False
        log.warning("job %s: the API no longer knows request %s", job.reference_id, job.request_id)
        await self.ctx.fail(
            job.id,
            f"The Chamelaion API no longer knows request {job.request_id} (it has answered "
            f"'not found' since {since}); retry the job to send it again as a new request, "
            "which is charged again.",
            remote_status="forgotten",
        )
        self._missing_since.pop(job.id, None)
        return True

    async def _apply(self, remote: RemoteAPI, job: Job, request: RemoteRequest) -> bool:
        """Record what the API says of one request; whether anything changed."""
        try:
            if request.status == "completed":
                await self._completed(remote, job, request)
                return True
            if request.status == "failed":
                reason = request.error_message or "no reason given"
                await self.ctx.fail(
                    job.id,
                    f"The Chamelaion API could not lip-sync this clip: {reason}.",
                    remote_status="failed",
                )
                return True
            if job.remote_status == request.status:
                if job.note is not None:  # it waited on something that is over now
                    await self.ctx.steps.note(job.id, None, POLLED_STATES)
                return False
            await self.ctx.steps.remote_moved(job, request.status)
            return True
        except IllegalTransition:
            return False  # canceled while we were asking

    async def _completed(self, remote: RemoteAPI, job: Job, request: RemoteRequest) -> None:
        if not request.output_url:
            request = await remote.retrieve(request.id) or request
        if not request.output_url:
            await self.ctx.fail(
                job.id,
                "The Chamelaion API says the job completed but gave no output URL; "
                f"retry the job, or contact Chamelaion support with request {request.id}.",
                remote_status="completed",
            )
            return
        self.ctx.output_urls[job.id] = request.output_url
        await self.ctx.steps.start_download(job.id, request.status)
        self.ctx.drive(job.id)
