"""Small asyncio helpers the engine and the watcher share."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait for `event` at most `seconds`; True if it was set.

    `asyncio.timeout`, not `asyncio.wait_for`: on Python 3.11 `wait_for` can swallow a
    cancellation that races with the event being set, and a loop built on it then never
    stops (seen as a hung shutdown).
    """
    try:
        async with asyncio.timeout(seconds):
            return await event.wait()
    except TimeoutError:
        return False
