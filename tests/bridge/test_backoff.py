"""Pacing: the generate rate window and the retry backoff."""

from __future__ import annotations

import time

from bridge.backoff import Backoff, RateWindow


async def test_rate_window_lets_a_burst_through_then_waits_for_the_window_to_slide() -> None:
    window = RateWindow(limit=3, period=0.4)
    started = time.monotonic()
    for _ in range(3):
        await window.acquire()
    burst = time.monotonic() - started
    await window.acquire()
    fourth = time.monotonic() - started
    assert burst < 0.2
    assert fourth >= 0.4  # the first call must have left the window


async def test_rate_window_zero_means_no_limit() -> None:
    window = RateWindow(limit=0, period=60)
    for _ in range(1000):
        await window.acquire()


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    backoff = Backoff(base=1.0, cap=8.0)
    delays = [backoff.next_delay() for _ in range(6)]
    assert all(0.5 * min(8.0, 2**n) <= d <= min(8.0, 2**n) for n, d in enumerate(delays))
    assert backoff.next_delay(retry_after=3.0) == 3.0
    assert backoff.next_delay(retry_after=10_000) == 3600.0  # a long wait is honoured
    assert backoff.next_delay(retry_after=10**9) == 3600.0  # a bogus value is capped
    assert backoff.next_delay(retry_after=0) == 1.0  # "try again now" is no hot loop
