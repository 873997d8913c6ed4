"""Test helpers shared by the bridge and add-on suites."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from bridge import discovery

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], timeout: float = 20.0, interval: float = 0.02, message: str = ""
) -> T:
    """Poll `condition` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or condition}")
        time.sleep(interval)


async def async_wait_until(
    condition: Callable[[], T | Awaitable[T]],
    timeout: float = 20.0,
    interval: float = 0.02,
    message: str = "",
) -> T:
    """The asyncio twin of wait_until: `condition` may be a plain or an async callable."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or condition}")
        await asyncio.sleep(interval)


@dataclass
class Seen:
    """One request an impostor received, whole: what a client gave away."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def __str__(self) -> str:
        return f"{self.method} {self.path} {self.headers} {self.body!r}"


@dataclass
class Impostor:
    """Another program holding the port a stale bridge.json names (see `impostor`)."""

    url: str
    port: int
    seen: list[Seen] = field(default_factory=list)


@contextmanager
def impostor() -> Iterator[Impostor]:
    """A plain HTTP server on an ephemeral loopback port that answers like a bridge (health
    "ok", an empty job list, 201 to any job) without the token, and records every request."""
    found: list[Seen] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            found.append(
                Seen(self.command, self.path, dict(self.headers.items()), self.rfile.read(size))
            )
            if self.path.startswith("/v1/health"):
                body: dict[str, Any] = {"status": "ok", "version": "0.1.0", "proof": "0" * 64}
            else:
                body = {"jobs": [], "id": "x", "reference_id": "x", "state": "queued"}
            data = json.dumps(body).encode()
            self.send_response(201 if self.command == "POST" else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's name)
            """Quiet: the test reads `seen`, not stderr."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="impostor", daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        yield Impostor(f"http://127.0.0.1:{port}", port, found)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def plant_stale_discovery(folder: Path, url: str, port: int) -> str:
    """A data folder left by a bridge that died without cleaning up: its token, and a
    bridge.json naming `url`. Returns the token, which nothing else may ever see."""
    folder.mkdir(parents=True, exist_ok=True)
    token = "stale-token-that-only-our-bridge-may-see"
    (folder / discovery.TOKEN_FILE).write_text(token)
    info = {"pid": 999999, "url": url, "port": port, "version": "0.1.0", "started_at": "x"}
    (folder / discovery.DISCOVERY_FILE).write_text(json.dumps(info))
    return token
