"""One retry policy for every call to the Chamelaion API.

Transient failures (429, 5xx, HTML gateway pages, refused or dropped connections, timeouts)
only delay the work: the call is tried again with jittered backoff, Retry-After honoured, for
as long as the outage lasts, with no attempt cap. Only a definite answer (a RemoteError that
is not retryable) reaches the caller. While a call waits, the caller's note says why and
since when, and `GET /v1/health` lists the problem.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from bridge.backoff import Backoff
from bridge.errors import RemoteError
from bridge.problems import Problems, clock

log = logging.getLogger(__name__)

T = TypeVar("T")
Note = Callable[[str | None], Awaitable[None]]
API_PROBLEM = "api"


class Gateway:
    """Runs attempts at a remote call until one succeeds or the API answers definitely."""

    def __init__(self, problems: Problems, *, base: float = 1.0, cap: float = 60.0) -> None:
        self.problems = problems
        self.base, self.cap = base, cap

    async def call(
        self, attempt: Callable[[], Awaitable[T]], *, doing: str, note: Note | None = None
    ) -> T:
        """`await attempt()` until it returns; `doing` completes "Waiting to ..." in notes.

        `await note(text)` hears each wait and `await note(None)` the recovery, so a job's note is
        cleared as soon as the API answers again.
        """
        backoff = Backoff(base=self.base, cap=self.cap)
        since: str | None = None
        while True:
            try:
                result = await attempt()
            except RemoteError as exc:
                if not exc.retryable:
                    raise
                since = since or clock()
                self.problems.report(API_PROBLEM, str(exc))
                delay = backoff.next_delay(exc.retry_after)
                log.warning("%s: %s (next try in %.1f s)", doing, exc, delay)
                if note is not None:
                    await note(
                        f"Waiting to {doing}: {exc} Waiting since {since}; "
                        f"next try in {max(1, round(delay))} s."
                    )
                await asyncio.sleep(delay)
                continue
            self.recovered()
            if since is not None and note is not None:
                await note(None)
            return result

    def recovered(self) -> None:
        self.problems.clear(API_PROBLEM)
