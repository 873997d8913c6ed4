"""Pacing calls to the API: jittered exponential backoff that honours Retry-After, and a
sliding window that keeps generate calls under the documented rate limit."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass

MAX_RETRY_AFTER = 3600.0


@dataclass
class Backoff:
    """Delays for successive failed attempts: base * 2^n, capped, with full jitter.

    A server's Retry-After wins over the computed delay (it knows its own limits), within
    bounds: at least `base` (a "Retry-After: 0" must not become a hot loop that re-sends an
    upload many times a second) and at most an hour (a bogus huge value must not park a
    job for days).
    """

    base: float = 1.0
    cap: float = 60.0
    attempt: int = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        self.attempt += 1
        if retry_after is not None and retry_after >= 0:
            return min(max(retry_after, self.base), MAX_RETRY_AFTER)
        ceiling = min(self.cap, self.base * 2 ** (self.attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class RateWindow:
    """At most `limit` calls started in any `period` seconds (0: no limit).

    The API allows 60 generate calls a minute; a 429 for an upload arrives only after its
    whole body was sent, so pacing ahead saves re-sending gigabytes.
    """

    def __init__(self, limit: int, period: float = 60.0) -> None:
        self.limit, self.period = limit, period
        self._starts: deque[float] = deque()

    async def acquire(self) -> None:
        while self.limit:
            now = time.monotonic()
            while self._starts and now - self._starts[0] >= self.period:
                self._starts.popleft()
            if len(self._starts) < self.limit:
                self._starts.append(now)
                return
            await asyncio.sleep(self.period - (now - self._starts[0]))
