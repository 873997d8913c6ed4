"""A local stand-in for the Chamelaion lip-sync API: the offline default and the tests' peer.

THIS DOES NO REAL LIP SYNC. It implements the documented API (../shared/chamelaion-api.md:
endpoints, auth, validation messages, the request lifecycle) so the bridge can be run and
tested without the real service; its "result" is merely the source video with the target
audio muxed in (`bridge.media.mux_audio`). `GET /api/health` says so (`"emulator": true`).

Layout of the served app: the API under `/api` (so `base_url = http://host:port/api`),
results under `/files/<request id>.mp4` (unauthenticated, like a signed URL), and test
controls under `/_emulator` (`faults`, `reset`, `stats`). Faults and job outcomes can be
injected in-process through `EmulatorState` or over HTTP with the same JSON shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import shutil
import signal
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from aiohttp.multipart import BodyPartReader

from bridge import media
from bridge.errors import MediaError

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK = 1 << 20
ENDPOINTS = ("health", "users", "generate", "generate-with-media", "retrieve", "list", "output")
ENDPOINT_GROUPS = {"any": frozenset(ENDPOINTS), "requests": frozenset({"retrieve", "list"})}
FAULT_KINDS = frozenset(
    {
        "429",
        "500",
        "502-html",
        "401",
        "404",
        "412",
        "delay",
        "drop",
        "drop-after-accept",
        "delay-after-accept",
        "accept-late",
        "drop-midway",
    }
)
# Kinds that only make sense where the handler itself acts on them.
KIND_ENDPOINTS = {
    "drop-after-accept": frozenset({"generate", "generate-with-media"}),
    "delay-after-accept": frozenset({"generate", "generate-with-media"}),
    # A gateway answers 504 while the API behind it takes the request `delay` s later.
    "accept-late": frozenset({"generate", "generate-with-media"}),
    "drop-midway": frozenset({"output"}),
}
BOOLEANS = frozenset({"true", "false", "1", "0"})  # form values accepted for a boolean field
JOB_OUTCOMES = frozenset({"fail", "no-output"})
NOT_FOUND = "lipsync request not found"
NGINX_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
NGINX_504 = NGINX_502.replace("502 Bad Gateway", "504 Gateway Time-out")


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
class FaultRule:
    """One injected misbehaviour of an endpoint, used up after `count` calls (-1: forever)."""

    endpoint: str
    kind: str
    count: int = 1
    retry_after: float | None = None
    delay: float = 0.0
    # The chance that a matching call misbehaves (a soak's "30 % of answers are errors").
    probability: float = 1.0

    def __post_init__(self) -> None:
        targets = ENDPOINT_GROUPS.get(self.endpoint, {self.endpoint})
        if not targets <= set(ENDPOINTS):
            raise ValueError(f"unknown endpoint {self.endpoint!r}")
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if not targets <= KIND_ENDPOINTS.get(self.kind, targets):
            raise ValueError(f"fault kind {self.kind!r} does not apply to {self.endpoint!r}")
        if self.count == 0 or self.count < -1:
            raise ValueError("count must be a positive number or -1 (forever)")
        if not 0 < self.probability <= 1:
            raise ValueError("probability must be above 0 and at most 1")

    def matches(self, endpoint: str) -> bool:
        return self.count != 0 and endpoint in ENDPOINT_GROUPS.get(self.endpoint, {self.endpoint})


@dataclass
class JobOutcome:
    """Forces how the next `count` created requests end: `fail` or `no-output` (completed)."""

    outcome: str
    count: int = 1
    error_message: str = "lip sync failed"

    def __post_init__(self) -> None:
        if self.outcome not in JOB_OUTCOMES:
            raise ValueError(f"unknown job outcome {self.outcome!r}")
        if self.count == 0 or self.count < -1:
            raise ValueError("count must be a positive number or -1 (forever)")


@dataclass
class EmulatorStats:
    """What happened, for tests that assert e.g. "submitted exactly once"."""

    calls: Counter[str] = field(default_factory=Counter)
    # Requests created (i.e. charged) per reference_id, by either generate endpoint.
    generate_by_reference_id: Counter[str] = field(default_factory=Counter)
    requests_created: int = 0
    downloads: int = 0
    # Faults that fired, by kind.
    faults: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "generate_by_reference_id": dict(self.generate_by_reference_id),
            "requests_created": self.requests_created,
            "downloads": self.downloads,
            "faults": dict(self.faults),
        }


def _now() -> datetime:
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
class _Inputs:
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
    """The emulator's requests, injected faults and counters; tests drive it in-process."""

    def __init__(self, config: EmulatorConfig, storage: Path) -> None:
        self.config = config
        self.storage = storage
        self.requests: dict[str, LipsyncRecord] = {}
        self.faults: list[FaultRule] = []
        self.job_outcomes: list[JobOutcome] = []
        self.stats = EmulatorStats()
        self.http: aiohttp.ClientSession | None = None
        self.placeholder: Path | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # API calls being handled right now: a test that kills a client mid-call waits for
        # this to reach 0 so the call's outcome (created or not) is settled before it checks.
        self.in_flight = 0

    def add_fault(
        self,
        endpoint: str,
        kind: str,
        *,
        count: int = 1,
        retry_after: float | None = None,
        delay: float = 0.0,
        probability: float = 1.0,
    ) -> FaultRule:
        """Make the next `count` calls to `endpoint` misbehave as `kind` (each with
        `probability`)."""
        rule = FaultRule(endpoint, kind, count, retry_after, delay, probability)
        self.faults.append(rule)
        return rule

    def fail_next(self, count: int = 1, error_message: str = "lip sync failed") -> None:
        """The next `count` created requests end `failed` with `error_message`."""
        self.job_outcomes.append(JobOutcome("fail", count, error_message))

    def complete_without_output_next(self, count: int = 1) -> None:
        """The next `count` created requests end `completed` but carry no output_url."""
        self.job_outcomes.append(JobOutcome("no-output", count))

    async def reset(self) -> None:
        """Forget every request, fault, outcome and counter: a fresh emulator."""
        await self.cancel_tasks()
        self.requests.clear()
        self.faults.clear()
        self.job_outcomes.clear()
        self.stats = EmulatorStats()
        for sub in ("work", "files"):
            shutil.rmtree(self.storage / sub, ignore_errors=True)

    def find(self, id_or_reference: str) -> LipsyncRecord | None:
        """Look a request up by its id or, failing that, by its reference_id."""
        record = self.requests.get(id_or_reference)
        if record is not None:
            return record
        return next((r for r in self.requests.values() if r.reference_id == id_or_reference), None)

    def take_fault(self, endpoint: str) -> FaultRule | None:
        """The first matching rule that fires for this call, if any (used up by one)."""
        for rule in self.faults:
            if rule.matches(endpoint) and random.random() < rule.probability:
                if rule.count > 0:
                    rule.count -= 1
                self.stats.faults[rule.kind] += 1
                return rule
        return None

    def _take_outcome(self) -> JobOutcome | None:
        outcome = next((o for o in self.job_outcomes if o.count != 0), None)
        if outcome is not None and outcome.count > 0:
            outcome.count -= 1
        return outcome

    def new_work_dir(self) -> Path:
        work = self.storage / "work" / uuid.uuid4().hex
        work.mkdir(parents=True)
        return work

    def create(self, reference_id: str | None, inputs: _Inputs, origin: str) -> LipsyncRecord:
        """Accept a request (the moment it is charged) and start its lifecycle."""
        record = LipsyncRecord(id=str(uuid.uuid4()), created_at=_now(), reference_id=reference_id)
        self.requests[record.id] = record
        self.stats.requests_created += 1
        if reference_id is not None:
            self.stats.generate_by_reference_id[reference_id] += 1
        task = asyncio.create_task(self._run(record, inputs, origin, self._take_outcome()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return record

    def create_later(
        self, seconds: float, reference_id: str | None, inputs: _Inputs, origin: str
    ) -> None:
        """Take a request `seconds` from now (after its client was told it timed out)."""

        async def later() -> None:
            await asyncio.sleep(seconds)
            self.create(reference_id, inputs, origin)

        task = asyncio.create_task(later())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel_tasks(self) -> None:
        """Stop every request's lifecycle (on reset and shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(
        self, record: LipsyncRecord, inputs: _Inputs, origin: str, outcome: JobOutcome | None
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(self.config.queued_seconds)
            record.status, record.started_at = "processing", _now()
            done_at = loop.time() + self.config.processing_seconds
            if outcome is not None and outcome.outcome == "fail":
                error = outcome.error_message
            else:
                error = await self._produce(record, inputs)
            await asyncio.sleep(max(0.0, done_at - loop.time()))
        except Exception:  # a bug here must not leave the request "processing" for ever
            log.exception("emulator request %s crashed", record.id)
            error = "internal error"
        finally:
            shutil.rmtree(inputs.work, ignore_errors=True)
        record.finished_at = _now()
        if error is not None:
            record.status, record.error_message = "failed", error
            return
        record.status = "completed"
        if outcome is None:  # a "no-output" outcome completes without an output_url
            record.output_url = f"{origin}/files/{record.id}.mp4"

    async def _produce(self, record: LipsyncRecord, inputs: _Inputs) -> str | None:
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
            await asyncio.to_thread(media.mux_audio, inputs.video, inputs.audio, out)
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


STATE = web.AppKey("emulator_state", EmulatorState)
FAULT = web.RequestKey("emulator_fault", FaultRule)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class _BadRequest(Exception):
    """A documented 400: its message is the exact `error` string."""


def _auth_problem(request: web.Request, keys: frozenset[str]) -> str | None:
    """The documented 401 message for this request's credentials, or None when accepted."""
    api_key = request.headers.get("x-api-key")
    if api_key is not None and api_key.strip() in keys:
        return None
    header = request.headers.get("Authorization")
    if header is None:
        if api_key is None:
            return "missing authorization header"
        return "invalid token" if api_key.strip() else "missing token"
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return "invalid authorization format"
    if not token.strip():
        return "missing token"
    return None if token.strip() in keys else "invalid token"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.match_info.route.name != "health":
        problem = _auth_problem(request, request.config_dict[STATE].config.api_keys)
        if problem is not None:
            return _error(401, problem)
    return await handler(request)


async def _drain(request: web.Request) -> None:
    """Read and discard the body, as a buffering proxy does before it answers."""
    while await request.content.readany():
        pass


def _drop(request: web.Request) -> web.StreamResponse:
    """Cut the connection without answering; aiohttp then writes nothing."""
    assert request.transport is not None
    request.transport.abort()
    return web.Response()


@web.middleware
async def _fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Route names are identifiers, so "generate-with-media" is named "generate_with_media".
    endpoint = (request.match_info.route.name or "").replace("_", "-")
    if endpoint not in ENDPOINTS:
        return await handler(request)
    state = request.config_dict[STATE]
    state.stats.calls[endpoint] += 1
    state.in_flight += 1
    try:
        return await _apply_fault(request, handler, state, endpoint)
    finally:
        state.in_flight -= 1


async def _apply_fault(
    request: web.Request, handler: Handler, state: EmulatorState, endpoint: str
) -> web.StreamResponse:
    rule = state.take_fault(endpoint)
    if rule is None:
        return await handler(request)
    if rule.kind in KIND_ENDPOINTS:
        request[FAULT] = rule
        return await handler(request)
    if rule.kind == "delay":
        await asyncio.sleep(rule.delay)
        return await handler(request)
    await _drain(request)
    if rule.kind == "drop":
        return _drop(request)
    if rule.kind == "502-html":
        return web.Response(status=502, text=NGINX_502, content_type="text/html")
    if rule.kind == "429":
        headers = {} if rule.retry_after is None else {"Retry-After": f"{rule.retry_after:g}"}
        return _error(429, "rate limit exceeded", headers)
    status, message = {
        "500": (500, "internal error"),
        "401": (401, "unauthorized"),
        "404": (404, NOT_FOUND),
        "412": (412, "token limit reached"),
    }[rule.kind]
    return _error(status, message)


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def _accept(
    request: web.Request, reference_id: str | None, inputs: _Inputs
) -> web.StreamResponse:
    """Take the request (charge it) and answer, unless an after-accept fault wants the answer
    lost (dropped), late (delayed) or a gateway's timeout while the API takes it later: the
    moments a client may pay without knowing it."""
    state = request.config_dict[STATE]
    rule = request.get(FAULT)
    if rule is not None and rule.kind == "accept-late":
        state.create_later(rule.delay, reference_id, inputs, _origin(request))
        return web.Response(status=504, text=NGINX_504, content_type="text/html")
    record = state.create(reference_id, inputs, _origin(request))
    if rule is not None and rule.kind == "drop-after-accept":
        return _drop(request)
    if rule is not None and rule.kind == "delay-after-accept":
        await asyncio.sleep(rule.delay)
    return web.json_response({"status": "success", "request_id": record.id})


async def health(request: web.Request) -> web.Response:
    return web.json_response(
        {"status": "ok", "emulator": True, "note": "local stand-in: no real lip sync is done"}
    )


async def users_me(request: web.Request) -> web.Response:
    return web.json_response({"name": "emulator token"})


def _parse_inputs(body: Any) -> tuple[str, str, str | None]:
    """Validate a JSON generate body; return (video_url, audio_url, reference_id)."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise _BadRequest("invalid request body")
    urls: dict[str, list[str]] = {"video": [], "audio": []}
    for item in body["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise _BadRequest("invalid request body")
        if item.get("type") not in urls:
            raise _BadRequest('input type must be "video" or "audio"')
        urls[item["type"]].append(item["url"])
    for kind in ("video", "audio"):
        if len(urls[kind]) != 1:
            raise _BadRequest(f"expected exactly one {kind} input")
    reference_id = body.get("reference_id")
    asd = body.get("disable_active_speaker_detection", False)
    if not isinstance(reference_id, str | None) or not isinstance(asd, bool):
        raise _BadRequest("invalid request body")
    return urls["video"][0], urls["audio"][0], reference_id


async def generate(request: web.Request) -> web.StreamResponse:
    if request.content_type != "application/json":
        return _error(400, "content-type must be application/json")
    try:
        body = await request.json()
        video_url, audio_url, reference_id = _parse_inputs(body)
    except json.JSONDecodeError:
        return _error(400, "invalid request body")
    except _BadRequest as exc:
        return _error(400, str(exc))
    state = request.config_dict[STATE]
    inputs = _Inputs(state.new_work_dir(), video_url=video_url, audio_url=audio_url)
    return await _accept(request, reference_id, inputs)


async def _save_part(part: BodyPartReader, path: Path, keep: bool) -> int:
    """Stream one file part to disk chunk by chunk (memory stays flat); return its size."""
    size = 0
    with open(path, "wb") as out:
        while chunk := await part.read_chunk(CHUNK):
            size += len(chunk)
            if keep:
                out.write(chunk)
    return size


async def _read_upload(request: web.Request, work: Path, keep: bool) -> str | None:
    """Store the multipart files in `work`, validate the fields; return the reference_id."""
    sizes: dict[str, int] = {}
    fields: dict[str, str] = {}
    try:
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader):
                raise _BadRequest("invalid request body")
            if part.name in ("video", "audio"):
                sizes[part.name] = await _save_part(part, work / part.name, keep)
            elif part.name in ("model", "reference_id", "disable_active_speaker_detection"):
                fields[part.name] = await part.text()
            else:
                while await part.read_chunk(CHUNK):
                    pass
    except (ValueError, AssertionError, RuntimeError, UnicodeDecodeError) as exc:
        raise _BadRequest("invalid request body") from exc
    for kind in ("video", "audio"):
        if not sizes.get(kind):
            raise _BadRequest(f"{kind} file is required")
    if fields.get("model", "lipsync-2") != "lipsync-2":
        raise _BadRequest('model must be "lipsync-2"')
    if fields.get("disable_active_speaker_detection", "false").lower() not in BOOLEANS:
        raise _BadRequest("invalid request body")
    return fields.get("reference_id")


async def generate_with_media(request: web.Request) -> web.StreamResponse:
    if request.content_type != "multipart/form-data":
        return _error(400, "content-type must be multipart/form-data")
    state = request.config_dict[STATE]
    work = state.new_work_dir()
    try:
        reference_id = await _read_upload(request, work, state.config.process_media)
    except _BadRequest as exc:
        shutil.rmtree(work, ignore_errors=True)
        return _error(400, str(exc))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return await _accept(request, reference_id, _Inputs(work))


async def retrieve(request: web.Request) -> web.Response:
    record = request.config_dict[STATE].find(request.match_info["id"])
    if record is None:
        return _error(404, NOT_FOUND)
    return web.json_response(record.to_json())


def _query_int(request: web.Request, name: str, default: int, minimum: int) -> int:
    try:
        value = int(request.query.get(name, default))
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise _BadRequest(f"{name} must be an integer of at least {minimum}")
    return value


async def list_requests(request: web.Request) -> web.Response:
    state = request.config_dict[STATE]
    try:
        limit = _query_int(request, "limit", 20, 1)
        offset = _query_int(request, "offset", 0, 0)
    except _BadRequest as exc:
        return _error(400, str(exc))
    if limit > state.config.max_list_limit and state.config.reject_large_limit:
        return _error(400, f"limit must be at most {state.config.max_list_limit}")
    limit = min(limit, state.config.max_list_limit)
    reference_id = request.query.get("reference_id")
    matching = [
        r for r in state.requests.values() if reference_id is None or r.reference_id == reference_id
    ]
    return web.json_response(
        {
            "data": [r.to_json() for r in matching[offset : offset + limit]],
            "pagination": {"limit": limit, "offset": offset, "total": len(matching)},
        }
    )


async def output(request: web.Request) -> web.StreamResponse:
    state = request.config_dict[STATE]
    record = state.requests.get(request.match_info["id"])
    if record is None or record.output_url is None or record.output_path is None:
        return _error(404, "file not found")
    if state.config.outputs_need_auth:
        problem = _auth_problem(request, state.config.api_keys)
        if problem:
            return _error(401, problem)
    state.stats.downloads += 1
    if FAULT not in request:  # only "drop-midway" reaches this handler
        return web.FileResponse(record.output_path)
    data = record.output_path.read_bytes()
    response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    return _drop(request)


async def set_faults(request: web.Request) -> web.Response:
    """`{"rules": [FaultRule...], "jobs": [JobOutcome...]}`: appended to what is pending."""
    state = request.app[STATE]
    try:
        body = await request.json()
        rules = [FaultRule(**rule) for rule in body.get("rules", [])]
        outcomes = [JobOutcome(**job) for job in body.get("jobs", [])]
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        return _error(400, f"invalid fault configuration: {exc}")
    state.faults.extend(rules)
    state.job_outcomes.extend(outcomes)
    return await get_faults(request)


async def get_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(
        {
            "rules": [asdict(r) for r in state.faults if r.count != 0],
            "jobs": [asdict(o) for o in state.job_outcomes if o.count != 0],
        }
    )


async def reset(request: web.Request) -> web.Response:
    await request.app[STATE].reset()
    return web.json_response({"status": "ok"})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats.to_json())


def create_emulator_app(config: EmulatorConfig | None = None) -> web.Application:
    """The emulator as an aiohttp app: API under /api, files under /files, controls."""
    config = config or EmulatorConfig()
    scratch = None
    if config.storage_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="chamelaion-emulator-")
        storage = Path(scratch.name)
    else:
        storage = Path(config.storage_dir)
    storage.mkdir(parents=True, exist_ok=True)
    state = EmulatorState(config, storage)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
        ) as session:
            state.http = session
            if not config.process_media:
                state.placeholder = await asyncio.to_thread(
                    media.make_test_video, storage / "placeholder.mp4", 1, 1, (96, 48)
                )
            yield
            await state.cancel_tasks()
        if scratch is not None:
            scratch.cleanup()

    api = web.Application(middlewares=[_auth_middleware])
    api.router.add_get("/health", health, name="health")
    api.router.add_get("/v1/users/me", users_me, name="users")
    api.router.add_post("/v1/lipsync/generate", generate, name="generate")
    api.router.add_post(
        "/v1/lipsync/generate-with-media", generate_with_media, name="generate_with_media"
    )
    api.router.add_get("/v1/lipsync/requests", list_requests, name="list")
    api.router.add_get("/v1/lipsync/requests/{id}", retrieve, name="retrieve")

    app = web.Application(middlewares=[_fault_middleware])
    app[STATE] = state
    app.cleanup_ctx.append(lifecycle)
    app.add_subapp("/api", api)
    app.router.add_get("/files/{id}.mp4", output, name="output")
    app.router.add_post("/_emulator/faults", set_faults)
    app.router.add_get("/_emulator/faults", get_faults)
    app.router.add_post("/_emulator/reset", reset)
    app.router.add_get("/_emulator/stats", stats)
    return app


@dataclass
class RunningEmulator:
    """An emulator serving on a real loopback port."""

    url: str
    app: web.Application
    runner: web.AppRunner
    site: web.TCPSite
    loop: asyncio.AbstractEventLoop

    @property
    def base_url(self) -> str:
        return self.url + "/api"

    @property
    def state(self) -> EmulatorState:
        return self.app[STATE]

    async def close(self) -> None:
        await self.runner.cleanup()

    async def go_offline(self) -> None:
        """An outage: refuse new connections and cut the open ones; requests are kept."""
        await self.site.stop()
        assert self.runner.server is not None
        for connection in list(self.runner.server.connections):
            connection.force_close()

    async def go_online(self) -> None:
        """Back after an outage, on the same address."""
        address = urlsplit(self.url)
        self.site = web.TCPSite(self.runner, address.hostname, address.port)
        await self.site.start()

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on the emulator's loop from another thread (emulator_in_background)."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout=30)


async def start_emulator(
    config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> RunningEmulator:
    """Serve the emulator on `host:port` (0: an ephemeral port) inside the running loop."""
    app = create_emulator_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    return RunningEmulator(
        f"http://{host}:{bound_port}", app, runner, site, asyncio.get_running_loop()
    )


@contextlib.contextmanager
def emulator_in_background(
    config: EmulatorConfig | None = None,
) -> Iterator[RunningEmulator]:
    """The emulator on an ephemeral loopback port, served by a loop on its own thread, for
    callers that block (the demo, Blender's main thread, subprocess-driving tests)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="emulator", daemon=True)
    thread.start()
    try:
        emulator = asyncio.run_coroutine_threadsafe(start_emulator(config), loop).result(timeout=30)
        try:
            yield emulator
        finally:
            asyncio.run_coroutine_threadsafe(emulator.close(), loop).result(timeout=30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def run_emulator(
    port: int = 7879, host: str = "127.0.0.1", config: EmulatorConfig | None = None
) -> None:
    """Serve until Ctrl+C or SIGTERM, after printing the base_url and the key to use.

    OSError (e.g. the port is taken) propagates: the CLI turns it into its sentence.
    """
    config = config or EmulatorConfig()

    async def serve() -> None:
        emulator = await start_emulator(config, host, port)
        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print(
            f"Chamelaion emulator (a local stand-in: no real lip sync) at {emulator.base_url}\n"
            f"Use: CHAMELAION_BASE_URL={emulator.base_url} "
            f"CHAMELAION_API_KEY={sorted(config.api_keys)[0]}",
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            await emulator.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
