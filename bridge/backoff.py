"""Jittered exponential backoff that honours the server's Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Backoff:
    """Delays for successive failed attempts: base * 2^n, capped, with full jitter.

    A server's Retry-After wins over the computed delay (it knows its own limits), but is
    itself capped so a bogus huge value cannot park a job for hours.
    """

    base: float = 1.0
    cap: float = 60.0
    attempt: int = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        self.attempt += 1
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.cap * 5)
        ceiling = min(self.cap, self.base * 2 ** (self.attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
