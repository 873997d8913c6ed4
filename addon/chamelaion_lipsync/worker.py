"""The one thread that talks to the bridge, so Blender's main thread never waits on HTTP.

The main thread puts requests in; the worker answers each with a `Result` in an outbox that
the sync tick drains. The worker never touches `bpy`: everything it needs arrives as plain
values in `Settings`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chamelaion_client.client import BridgeRequestError, BridgeUnavailable, ClientError
from chamelaion_client.layout import read_discovery

from . import launcher
from .client import Client, OtherApiVersion

NEEDS_KEY = frozenset({"create", "retry"})  # requests that send work to the API
# What a click sends: a bridge whose last start failed is started again at once for these
# (the editor may have fixed the cause), while polls wait launcher.SPAWN_INTERVAL.
CLICKS = frozenset({"create", "retry", "cancel"})


@dataclass(frozen=True)
class Settings:
    """What the worker needs from the preferences, copied on the main thread."""

    data_dir: Path
    url: str | None = None
    auto_start: bool = True
    api_base: str = ""
    api_key: str = field(default="", repr=False)
    command: str = ""
    timeout: float = 10.0


@dataclass(frozen=True)
class Request:
    kind: str  # health | create | list | cancel | retry | clear
    payload: Any = None
    tag: str = ""  # the local job this is about (scene name / local id)


@dataclass(frozen=True)
class Result:
    request: Request
    value: Any = None
    error: str | None = None
    unavailable: bool = False
    status: int | None = None


class Worker:
    """A daemon thread serving requests in order; `pending` tells which kinds are in flight."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.inbox: queue.Queue[Request | None] = queue.Queue()
        self.outbox: queue.Queue[Result] = queue.Queue()
        self.launcher = launcher.Launcher()
        self._bridge: Client | None = None  # kept: it proves the bridge once per URL
        # The reference_id the bridge gave each job we created, by the local name it was
        # sent under: a cancel clicked while the job was sending reaches the right job.
        self._created: dict[str, str] = {}
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chamelaion-worker", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> None:
        with self._lock:
            self._in_flight[request.kind] = self._in_flight.get(request.kind, 0) + 1
        self.inbox.put(request)

    def busy(self, kind: str) -> bool:
        with self._lock:
            return self._in_flight.get(kind, 0) > 0

    def drain(self, limit: int = 1000) -> list[Result]:
        """Results ready now, without waiting."""
        results = []
        while len(results) < limit:
            try:
                results.append(self.outbox.get_nowait())
            except queue.Empty:
                break
        return results

    def stop(self) -> None:
        self._stop.set()
        self.inbox.put(None)
        self._thread.join(timeout=2.0)

    def _client(self) -> Client:
        """A client for our data folder's bridge; never a stranger that answers the default
        port before ours has published its URL (its token would not match).

        The same client serves as long as the URL and the token stay the same, so that the
        bridge proves itself once rather than on every poll.
        """
        s = self.settings
        if not s.url and read_discovery(s.data_dir) is None:
            raise BridgeUnavailable(
                f"No Chamelaion bridge has started with the data folder {s.data_dir} yet; "
                "turn on 'Start the bridge when needed' in the add-on preferences or run "
                "'chamelaion-bridge serve'."
            )
        fresh = Client(s.url or None, data_dir=s.data_dir, timeout=s.timeout)
        if self._bridge is None or _identity(self._bridge) != _identity(fresh):
            self._bridge = fresh
        return self._bridge

    def _run(self) -> None:
        while not self._stop.is_set():
            request = self.inbox.get()
            if request is None:
                break
            try:
                result = self._serve(request)
            except Exception as exc:  # noqa: BLE001 - a worker must answer every request
                result = Result(request, error=f"Unexpected error talking to the bridge: {exc}")
            if request.kind == "create" and isinstance(result.value, dict):
                self._created[request.tag] = result.value["reference_id"]
            with self._lock:
                self._in_flight[request.kind] -= 1
            self.outbox.put(result)

    def _serve(self, request: Request) -> Result:
        call = self._call_for(request)
        try:
            return self._attempt(request, call)
        except BridgeUnavailable as exc:
            if not self.settings.auto_start:
                return Result(request, error=str(exc), unavailable=True)
            if request.kind == "health":  # a status check starts nothing
                return Result(request, error=self._not_started(exc), unavailable=True)
        problem = self.launcher.ensure_running(
            self.settings, self._client, self._stop, at_once=request.kind in CLICKS
        )
        if problem:
            return Result(request, error=problem, unavailable=True)
        try:
            return self._attempt(request, call)
        except BridgeUnavailable as exc:
            return Result(request, error=str(exc), unavailable=True)

    def _not_started(self, exc: BridgeUnavailable) -> str:
        """The status while none answers and auto-start is on: why the last start failed,
        else what runs in its place (a bridge of another API version), else that the bridge
        starts by itself when there is work."""
        folder = self.settings.data_dir
        if folder in self.launcher.failures:
            return self.launcher.failures[folder]
        if isinstance(exc, OtherApiVersion):
            return str(exc)
        return (
            f"The Chamelaion bridge is not running yet; it starts by itself with the next "
            f"Lip Sync (data folder {folder})."
        )

    def _attempt(self, request: Request, call: Callable[[Client], Any]) -> Result:
        """One call; an unreachable bridge propagates, any other failure is the answer."""
        try:
            client = self._client()
            if request.kind in NEEDS_KEY and self.settings.api_key:
                # A key entered or fixed in the preferences reaches a running bridge here.
                client.hand_over_key(self.settings.api_key)
            return Result(request, value=call(client))
        except BridgeRequestError as exc:
            return Result(request, error=str(exc), status=exc.status)
        except BridgeUnavailable:
            raise
        except ClientError as exc:
            return Result(request, error=str(exc))

    def _call_for(self, request: Request) -> Callable[[Client], Any]:
        kind, payload = request.kind, request.payload
        calls: dict[str, Callable[[Client], Any]] = {
            "health": lambda c: c.health(),
            "create": lambda c: c.create_job(payload),
            "list": lambda c: c.list_jobs(file=payload),
            "cancel": lambda c: c.cancel(self._created.get(payload, payload)),
            "retry": lambda c: c.retry(payload),
            "clear": lambda c: c.clear(payload),
        }
        return calls[kind]


def _identity(client: Client) -> tuple[Any, ...]:
    """What makes two clients interchangeable: the same bridge, token, folder and patience."""
    return (client.url, client.token, client.data_dir, client.timeout)
