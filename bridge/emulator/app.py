"""The emulator as an aiohttp app: the documented Chamelaion API, its result files, and the
controls a harness uses.

Layout: the API under `/api` (so `base_url = http://host:port/api`), results under
`/files/<request id>.mp4` (unauthenticated, like a signed URL), and controls under
`/_emulator` (`reset`, `stats`). A harness changes behaviour only through
`EmulatorState.hooks` (see `EmulatorHooks`); the emulator itself has no fault code.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.multipart import BodyPartReader

from bridge.emulator.samples import make_sample_video
from bridge.emulator.state import CHUNK, EmulatorConfig, EmulatorState, Handler, Inputs, Middleware

ENDPOINTS = ("health", "users", "generate", "generate-with-media", "retrieve", "list", "output")
BOOLEANS = frozenset({"true", "false", "1", "0"})  # form values accepted for a boolean field
NOT_FOUND = "lipsync request not found"

STATE = web.AppKey("emulator_state", EmulatorState)
# Which API call a request is (an ENDPOINTS name), for the hooks' middlewares.
ENDPOINT = web.RequestKey("emulator_endpoint", str)


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """An answer with the API's documented error body, `{"error": message}`."""
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


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.match_info.route.name != "health":
        problem = _auth_problem(request, request.config_dict[STATE].config.api_keys)
        if problem is not None:
            return error_response(401, problem)
    return await handler(request)


def _chain(middleware: Middleware, inner: Handler) -> Handler:
    """`inner` as seen through one of the hooks' middlewares."""

    async def call(request: web.Request) -> web.StreamResponse:
        return await middleware(request, inner)

    return call


@web.middleware
async def _calls_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count each API and file call, then run it through the hooks' middlewares."""
    # Route names are identifiers, so "generate-with-media" is named "generate_with_media".
    endpoint = (request.match_info.route.name or "").replace("_", "-")
    if endpoint not in ENDPOINTS:
        return await handler(request)
    state = request.config_dict[STATE]
    state.stats.calls[endpoint] += 1
    request[ENDPOINT] = endpoint
    for middleware in reversed(state.hooks.middlewares):
        handler = _chain(middleware, handler)
    state.in_flight += 1
    try:
        return await handler(request)
    finally:
        state.in_flight -= 1


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _accept(request: web.Request, reference_id: str | None, inputs: Inputs) -> web.Response:
    """Take the request (the moment it is charged) and answer with its id."""
    record = request.config_dict[STATE].create(reference_id, inputs, _origin(request))
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
        return error_response(400, "content-type must be application/json")
    try:
        body = await request.json()
        video_url, audio_url, reference_id = _parse_inputs(body)
    except json.JSONDecodeError:
        return error_response(400, "invalid request body")
    except _BadRequest as exc:
        return error_response(400, str(exc))
    state = request.config_dict[STATE]
    inputs = Inputs(state.new_work_dir(), video_url=video_url, audio_url=audio_url)
    return _accept(request, reference_id, inputs)


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
        return error_response(400, "content-type must be multipart/form-data")
    state = request.config_dict[STATE]
    work = state.new_work_dir()
    try:
        reference_id = await _read_upload(request, work, state.config.process_media)
    except _BadRequest as exc:
        shutil.rmtree(work, ignore_errors=True)
        return error_response(400, str(exc))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return _accept(request, reference_id, Inputs(work))


async def retrieve(request: web.Request) -> web.Response:
    record = request.config_dict[STATE].find(request.match_info["id"])
    if record is None:
        return error_response(404, NOT_FOUND)
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
        return error_response(400, str(exc))
    if limit > state.config.max_list_limit and state.config.reject_large_limit:
        return error_response(400, f"limit must be at most {state.config.max_list_limit}")
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
        return error_response(404, "file not found")
    if state.config.outputs_need_auth:
        problem = _auth_problem(request, state.config.api_keys)
        if problem:
            return error_response(401, problem)
    state.stats.downloads += 1
    return web.FileResponse(record.output_path)


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
                    make_sample_video, storage / "placeholder.mp4", 1, 1, (96, 48)
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

    app = web.Application(middlewares=[_calls_middleware])
    app[STATE] = state
    app.cleanup_ctx.append(lifecycle)
    app.add_subapp("/api", api)
    app.router.add_get("/files/{id}.mp4", output, name="output")
    app.router.add_post("/_emulator/reset", reset)
    app.router.add_get("/_emulator/stats", stats)
    return app
