"""What currently stops the bridge from making progress, in sentences for `GET /v1/health`.

Loops report a problem when they hit one and clear it when the same work succeeds again, so
the list always says what is wrong *now*, and since when.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


def clock() -> str:
    """The time of day in UTC, as notes and problems say "since" it."""
    return time.strftime("%H:%M:%S UTC", time.gmtime())


class Problems:
    """Current problems by source ("api", "store", "poller", "watch:<folder>", ...)."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[str, str]] = {}

    def report(self, source: str, sentence: str) -> str:
        """Record (or update) the problem of `source`; returns since when it lasts."""
        previous = self._items.get(source)
        since = previous[1] if previous else clock()
        if previous is None:
            log.warning("problem (%s): %s", source, sentence)
        self._items[source] = (sentence, since)
        return since

    def clear(self, source: str) -> None:
        if self._items.pop(source, None) is not None:
            log.info("problem (%s) is gone", source)

    def sentences(self) -> list[str]:
        return [f"{sentence} (since {since})" for sentence, since in self._items.values()]
