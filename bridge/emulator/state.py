"""The emulator's requests and their lifecycle: queued, processing, then completed or failed.

A created request is "charged" (counted per reference_id in `EmulatorStats`); its result is
the stand-in of `bridge.emulator.lipsync`, not real lip sync.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bridge import media
from bridge.emulator.lipsync import mux_audio
from bridge.errors import MediaError

log = logging.getLogger(__name__)

CHUNK = 1 << 20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# aiohttp's middleware shape: await middleware(request, handler) -> response.
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
Finisher = Callable[["LipsyncRecord"], None]


@dataclass
class EmulatorConfig:
    api_keys: frozenset[str] = frozenset({"emulator-key"})
    queued_seconds: float = 0.2
    processing_seconds: float = 1.0
    storage_dir: Path | None = None
    process_media: bool = True
    max_list_limit: int = 100
    # Stricter than documented, as another implementation may be: a limit above the maximum
    # is refused (400) instead of clamped, and result files need the API key.
    reject_large_limit: bool = False
    outputs_need_auth: bool = False


@dataclass
class EmulatorHooks:
    """Where a harness (the tests' fault injection) changes how the emulator behaves; both
    lists are empty in normal use, and `reset` empties them.

    `middlewares` run around every API and file call, the first outermost, after the call
    was counted; `request[ENDPOINT]` names the call. `finishers` see each request as it
    ends and may change how it ended (status, error_message, output_url).
    """

    middlewares: list[Middleware] = field(default_factory=list)
    finishers: list[Finisher] = field(default_factory=list)


@dataclass
class EmulatorStats:
    """What happened, for tests that assert e.g. "submitted exactly once"."""

    calls: Counter[str] = field(default_factory=Counter)
    # Requests created (i.e. charged) per reference_id, by either generate endpoint.
    generate_by_reference_id: Counter[str] = field(default_factory=Counter)
    requests_created: int = 0
    downloads: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "generate_by_reference_id": dict(self.generate_by_reference_id),
            "requests_created": self.requests_created,
            "downloads": self.downloads,
        }


def now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class LipsyncRecord:
    """One lip-sync request as the API reports it, plus where its result file lives."""

    id: str
    created_at: datetime
    status: str = "queued"
    reference_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output_url: str | None = None
    error_message: str | None = None
    output_path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """The documented LipsyncRequest: optional fields are left out, never null."""
        body: dict[str, Any] = {
            "id": self.id,
            "created_at": _iso(self.created_at),
            "status": self.status,
        }
        optional = {
            "reference_id": self.reference_id,
            "started_at": self.started_at and _iso(self.started_at),
            "finished_at": self.finished_at and _iso(self.finished_at),
            "output_url": self.output_url,
            "error_message": self.error_message,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        return body


@dataclass
class Inputs:
    """A created request's media: uploaded files already in `work`, or URLs to fetch there."""

    work: Path
    video_url: str | None = None
    audio_url: str | None = None

    @property
    def video(self) -> Path:
        return self.work / "video"

    @property
    def audio(self) -> Path:
        return self.work / "audio"


class EmulatorState:
    """The emulator's requests, counters and hooks; tests drive it in-process."""

    def __init__(self, config: EmulatorConfig, storage: Path) -> None:
        self.config = config
        self.storage = storage
        self.requests: dict[str, LipsyncRecord] = {}
        self.hooks = EmulatorHooks()
        self.stats = EmulatorStats()
        self.http: aiohttp.ClientSession | None = None
        self.placeholder: Path | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # API calls being handled right now: a test that kills a client mid-call waits for
        # this to reach 0 so the call's outcome (created or not) is settled before it checks.
        self.in_flight = 0

    async def reset(self) -> None:
        """Forget every request, hook and counter: a fresh emulator."""
        await self.cancel_tasks()
        self.requests.clear()
        self.hooks = EmulatorHooks()
        self.stats = EmulatorStats()
        for sub in ("work", "files"):
            shutil.rmtree(self.storage / sub, ignore_errors=True)

    def find(self, id_or_reference: str) -> LipsyncRecord | None:
        """Look a request up by its id or, failing that, by its reference_id."""
        record = self.requests.get(id_or_reference)
        if record is not None:
            return record
        return next((r for r in self.requests.values() if r.reference_id == id_or_reference), None)

    def new_work_dir(self) -> Path:
        work = self.storage / "work" / uuid.uuid4().hex
        work.mkdir(parents=True)
        return work

    def create(self, reference_id: str | None, inputs: Inputs, origin: str) -> LipsyncRecord:
        """Accept a request (the moment it is charged) and start its lifecycle."""
        record = LipsyncRecord(id=str(uuid.uuid4()), created_at=now(), reference_id=reference_id)
        self.requests[record.id] = record
        self.stats.requests_created += 1
        if reference_id is not None:
            self.stats.generate_by_reference_id[reference_id] += 1
        task = asyncio.create_task(self._run(record, inputs, origin))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return record

    async def cancel_tasks(self) -> None:
        """Stop every request's lifecycle (on reset and shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, record: LipsyncRecord, inputs: Inputs, origin: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(self.config.queued_seconds)
            record.status, record.started_at = "processing", now()
            done_at = loop.time() + self.config.processing_seconds
            error = await self._produce(record, inputs)
            await asyncio.sleep(max(0.0, done_at - loop.time()))
        except Exception:  # a bug here must not leave the request "processing" for ever
            log.exception("emulator request %s crashed", record.id)
            error = "internal error"
        finally:
            shutil.rmtree(inputs.work, ignore_errors=True)
        record.finished_at = now()
        if error is not None:
            record.status, record.error_message = "failed", error
        else:
            record.status, record.output_url = "completed", f"{origin}/files/{record.id}.mp4"
        for finish in self.hooks.finishers:
            finish(record)

    async def _produce(self, record: LipsyncRecord, inputs: Inputs) -> str | None:
        """Fetch URL inputs, check both decode, mux; return an error_message or None."""
        for kind, url, path in (
            ("video", inputs.video_url, inputs.video),
            ("audio", inputs.audio_url, inputs.audio),
        ):
            if url is not None and not await self._fetch(url, path):
                return f"{kind} URL is not accessible"
        if not self.config.process_media:
            record.output_path = self.placeholder
            return None
        for kind, check in (
            ("video", media.check_video_input),
            ("audio", media.check_audio_input),
        ):
            try:
                await asyncio.to_thread(check, getattr(inputs, kind))
            except MediaError:
                return f"{kind} could not be decoded"
        out = self.storage / "files" / f"{record.id}.mp4"
        try:
            await asyncio.to_thread(mux_audio, inputs.video, inputs.audio, out)
        except MediaError:
            return "lip sync failed: the inputs could not be combined"
        record.output_path = out
        return None

    async def _fetch(self, url: str, path: Path) -> bool:
        """Download `url` to `path` (or just read it when media is not processed)."""
        if not url.startswith(("http://", "https://")) or self.http is None:
            return False
        try:
            async with self.http.get(url) as response:
                if response.status != 200:
                    return False
                with open(path, "wb") as out:
                    async for chunk in response.content.iter_chunked(CHUNK):
                        if self.config.process_media:
                            out.write(chunk)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False
        return True
