"""Running one job's local steps (prepare and send, or download) until the poller owns it
or it is final: a definite answer fails the job, anything else only makes it wait.

No job's task dies of an exception: a full disk, an unwritable store or a bug is logged
(with its traceback when unexpected), shown in health and the job's note, and the step
runs again from what the store says, as after a restart.
"""

from __future__ import annotations

import asyncio
import logging

from bridge.backoff import Backoff
from bridge.context import EngineContext
from bridge.downloader import Downloader
from bridge.errors import InputError, LocalProblem, RemoteError, StoreError
from bridge.jobs import State
from bridge.store import IllegalTransition
from bridge.submitter import Submitter
from bridge.transitions import DRIVEN_STATES

log = logging.getLogger(__name__)


class JobDriver:
    """Takes each driven job (queued, uploading, downloading) to its next owner."""

    def __init__(self, ctx: EngineContext, submitter: Submitter, downloader: Downloader) -> None:
        self.ctx = ctx
        self.submitter = submitter
        self.downloader = downloader

    async def run(self, job_id: str) -> None:
        """Take a job through its local steps until the poller owns it or it is final."""
        ctx = self.ctx
        trouble = Backoff(base=ctx.config.retry_base, cap=ctx.config.retry_cap)
        reported: set[str] = set()  # problems this job ran into: gone with it, or once it got on
        try:
            while True:
                try:
                    job = await ctx.get(job_id)
                    if job.state == State.DOWNLOADING:
                        await self.downloader.download(job)
                    elif job.state in DRIVEN_STATES:
                        await self.submitter.submit(job)
                    return
                except IllegalTransition:
                    return  # canceled or moved on meanwhile; whoever did that took it over
                except Exception as exc:
                    problem: Exception = exc
                    if _is_definite(exc):
                        try:
                            await ctx.fail(job_id, str(exc))
                            return
                        except StoreError as store_problem:
                            problem = store_problem
                    reported.add(await self._wait_out(job_id, problem, trouble))
        finally:
            for source in reported:
                ctx.problems.clear(source)

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
        since = self.ctx.problems.report(source, sentence)
        await self.ctx.note(
            job_id,
            f"{sentence} The job waits (since {since}); next try in {max(1, round(delay))} s.",
        )
        await asyncio.sleep(delay)
        return source


def _is_definite(exc: Exception) -> bool:
    """Whether a failure is the answer (bad input, a refused key, the API's verdict) rather
    than something that waiting can fix."""
    if isinstance(exc, RemoteError):
        return not exc.retryable
    return isinstance(exc, InputError)
