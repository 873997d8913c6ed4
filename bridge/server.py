"""The bridge's local HTTP API (design.md, pinned): JSON on loopback, bearer token, SSE.

Only this process and the user's own tools may drive the bridge: every request must name a
loopback Host (DNS rebinding) and carry no foreign Origin (a web page in a browser), and
everything but the health check needs the token from the data folder.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

import bridge
from bridge.config import BridgeConfig, Secret, redact_url
from bridge.discovery import health_proof, is_loopback_host
from bridge.engine import Engine
from bridge.errors import DamagedJobError, DuplicateReferenceError, InputError, StoreError
from bridge.jobs import Job, JobSpec, State, check_file_id, normalize_reference_id
from bridge.keys import AUTH_SCHEMES, is_usable_key, key_fingerprint
from bridge.store import IllegalTransition, Store
from bridge.watch import running_watchers

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", BridgeConfig)
TOKEN = web.AppKey("token", str)
STORE = web.AppKey("store", Store)
ENGINE = web.AppKey("engine", Engine)
WATCH_FOLDERS = web.AppKey("watch_folders", list)
WATCHERS = web.AppKey("watchers", list)
EVENT_QUEUES = web.AppKey("event_queues", set)
OPENAPI = web.AppKey("openapi", bytes)
OPENAPI_PATH = Path(__file__).with_name("openapi.json")

HEARTBEAT_SECONDS = 15.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse foreign Host/Origin and missing tokens; turn every error into one sentence."""
    if not is_loopback_host(request.headers.get("Host", "")):
        return error_response(
            403, "This bridge only answers requests addressed to 127.0.0.1, localhost or [::1]."
        )
    origin = request.headers.get("Origin")
    if origin is not None and not (
        urlsplit(origin).scheme in ("http", "https") and is_loopback_host(urlsplit(origin).netloc)
    ):
        return error_response(403, "Requests from web pages on other sites are not allowed.")
    if not (request.method == "GET" and request.path == "/v1/health"):
        expected = f"Bearer {request.app[TOKEN]}"
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return error_response(
                401,
                "Missing or wrong bridge token: send 'Authorization: Bearer <token>' with the "
                "token from the bridge's data folder.",
            )
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return error_response(404, f"There is no {request.path} in the bridge's API.")
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error_response(
            405, f"{request.method} is not allowed on {request.path}; use {allowed}."
        )
    except web.HTTPException as exc:
        return error_response(exc.status, f"The bridge refused the request: {exc.reason}.")
    except StoreError as exc:
        return error_response(507 if exc.disk_full else 503, str(exc))  # 507: Insufficient Storage
    except DamagedJobError as exc:
        return error_response(500, str(exc))
    except Exception:
        log.exception("Unexpected error on %s %s", request.method, request.path)
        return error_response(500, "The bridge hit an unexpected error; details are in bridge.log.")


def _fingerprint(request: web.Request) -> str | None:
    """The engine's current key as only holders of the token can compare it."""
    api_key = request.app[ENGINE].config.api_key
    return key_fingerprint(request.app[TOKEN], api_key.value) if api_key.value else None


async def health(request: web.Request) -> web.Response:
    """Open to all; with `?challenge=`, also the proof that this bridge holds the token, which
    clients check before they send it (a stale bridge.json may name another program's port)."""
    config = request.app[CONFIG]
    fingerprint = _fingerprint(request)
    body: dict[str, Any] = {
        "status": "ok",
        "version": bridge.__version__,
        "api_version": bridge.API_VERSION,
        "api_revision": bridge.API_REVISION,
        "api_base": redact_url(config.api_base),
        "api_key_configured": fingerprint is not None,
        "api_key_fingerprint": fingerprint,
        # The real service never runs on this machine: a loopback API is an emulator.
        "emulator": is_loopback_host(urlsplit(config.api_base).netloc),
        # What stops jobs from making progress right now (an outage, a full disk), if anything.
        "problems": request.app[ENGINE].problems.sentences(),
    }
    challenge = request.query.get("challenge")
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if challenge and sockname:
        body["proof"] = health_proof(request.app[TOKEN], challenge, sockname[1])
    if request.app[WATCHERS]:
        body["watch"] = [watcher.status() for watcher in request.app[WATCHERS]]
    return web.json_response(body)


async def _json_body(request: web.Request) -> Any:
    """The parsed body, or the one sentence every handler gives for one that is not JSON."""
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError):
        raise InputError("The request body is not valid JSON.") from None


def _normalized(body: Any) -> Any:
    """The body with its reference_id made valid (free text spelled as an id), so clients
    such as the add-on send a strip's name and take the id from the answer."""
    if isinstance(body, dict) and isinstance(body.get("reference_id"), str):
        return {**body, "reference_id": normalize_reference_id(body["reference_id"])}
    return body


async def create_job(request: web.Request) -> web.Response:
    try:
        spec = JobSpec.from_json(_normalized(await _json_body(request)), origin="api")
        job = await request.app[ENGINE].submit(spec)
    except DuplicateReferenceError as exc:
        return error_response(409, str(exc))
    except InputError as exc:
        return error_response(400, str(exc))
    return web.json_response(request.app[ENGINE].view(job), status=201)


async def list_jobs(request: web.Request) -> web.Response:
    states = request.query.getall("state", [])
    unknown = [s for s in states if s not in {state.value for state in State}]
    if unknown:
        return error_response(
            400, f"Unknown state {unknown[0]!r}; use one of {', '.join(s.value for s in State)}."
        )
    keys = request.query.getall("reference_id", [])
    file = request.query.get("file")
    if file is not None:
        try:
            check_file_id(file, "The file filter")
        except InputError as exc:
            return error_response(400, str(exc))
    store = request.app[STORE]
    jobs, damaged = await store.run(
        store.listing, states=states, keys=keys, file=file, cleared=False
    )
    return web.json_response(
        {
            "jobs": [request.app[ENGINE].view(job) for job in jobs],
            "damaged": [record.to_json() for record in damaged],
        }
    )


async def _find(request: web.Request) -> Job | web.Response:
    key = request.match_info["key"]
    job = await request.app[STORE].run(request.app[STORE].get, key)
    if job is None:
        return error_response(404, f"There is no job with id or reference_id {key!r}.")
    return job


async def get_job(request: web.Request) -> web.Response:
    found = await _find(request)
    if isinstance(found, web.Response):
        return found
    return web.json_response(request.app[ENGINE].view(found))


def _change(action: str) -> Handler:
    """A handler for cancel or retry: the engine decides, the store enforces the states."""

    async def handler(request: web.Request) -> web.Response:
        found = await _find(request)
        if isinstance(found, web.Response):
            return found
        engine = request.app[ENGINE]
        try:
            job = await (engine.cancel(found.id) if action == "cancel" else engine.retry(found.id))
        except (IllegalTransition, DuplicateReferenceError) as exc:
            return error_response(409, str(exc))
        except InputError as exc:
            return error_response(400, str(exc))
        return web.json_response(engine.view(job))

    return handler


async def clear_job(request: web.Request) -> web.Response:
    """Take a final job out of the listings; its files and its reference_id stay."""
    found = await _find(request)
    if isinstance(found, web.Response):
        return found
    try:
        job = await request.app[ENGINE].steps.clear(found.id)
    except IllegalTransition as exc:
        return error_response(409, str(exc))
    return web.json_response(request.app[ENGINE].view(job))


def _key_from_json(body: Any) -> tuple[Secret, str]:
    """The key and its scheme from a PUT /v1/api-key body; no error ever quotes the key."""
    if not isinstance(body, dict):
        raise InputError("The request body must be a JSON object.")
    if set(body) - {"api_key", "auth"}:  # names not quoted: one may be a misplaced key
        raise InputError("The body may hold only api_key and auth.")
    api_key, auth = body.get("api_key"), body.get("auth", "x-api-key")
    if not isinstance(api_key, str) or not is_usable_key(api_key):
        raise InputError(
            "api_key must be a string of 1 to 1024 printable ASCII characters without spaces."
        )
    if auth not in AUTH_SCHEMES:
        raise InputError(f"auth must be one of {', '.join(AUTH_SCHEMES)}.")
    return Secret(api_key), auth


async def set_api_key(request: web.Request) -> web.Response:
    """Swap the key the engine uses, so a key fixed after a refusal needs no restart."""
    try:
        api_key, auth = _key_from_json(await _json_body(request))
    except InputError as exc:
        return error_response(400, str(exc))
    updated = await request.app[ENGINE].set_api_key(api_key, auth)
    log.info(
        "The API key was replaced; %d job(s) that failed on the old one may be retried.", updated
    )
    return web.json_response(
        {
            "api_key_configured": True,
            "api_key_fingerprint": _fingerprint(request),
            "jobs_updated": updated,
        }
    )


async def openapi(request: web.Request) -> web.Response:
    """The contract this bridge serves (bridge/openapi.json), for clients and tools."""
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: one `data: <job json>` per committed job change."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def on_change(job: Job) -> None:
        # The store calls this on the loop, except for a write made before any `Store.run`
        # bound it to one (a test's direct write): thread-safe for that case.
        loop.call_soon_threadsafe(queue.put_nowait, json.dumps(job.to_json()))

    unsubscribe = request.app[STORE].subscribe(on_change)
    request.app[EVENT_QUEUES].add(queue)
    try:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        await response.write(b": connected\n\n")
        while True:
            try:
                async with asyncio.timeout(HEARTBEAT_SECONDS):  # not wait_for: see bridge.aio
                    item = await queue.get()
            except TimeoutError:
                await response.write(b": heartbeat\n\n")
                continue
            if item is None:
                break
            await response.write(f"data: {item}\n\n".encode())
        return response
    finally:
        unsubscribe()
        request.app[EVENT_QUEUES].discard(queue)


async def _end_event_streams(app: web.Application) -> None:
    """Let open SSE responses finish so shutdown does not wait for clients to hang up."""
    for queue in list(app[EVENT_QUEUES]):
        queue.put_nowait(None)


async def _engine_context(app: web.Application) -> AsyncIterator[None]:
    store = await asyncio.to_thread(Store, app[CONFIG].store_path)  # opening SQLite blocks
    engine = Engine(app[CONFIG], store)
    app[STORE], app[ENGINE] = store, engine
    try:
        await engine.start()
        async with running_watchers(
            app[WATCH_FOLDERS], engine, store, poll=app[CONFIG].watch_poll
        ) as watchers:
            app[WATCHERS] = watchers
            yield
    finally:
        try:
            await engine.close()
        finally:
            await asyncio.to_thread(store.close)


def create_app(
    config: BridgeConfig, token: str, *, watch_folders: Sequence[tuple[Path, Path]] = ()
) -> web.Application:
    """The local API app; its cleanup context owns the store, the engine and the watchers."""
    app = web.Application(middlewares=[guard])
    app[CONFIG] = config
    app[TOKEN] = token
    app[WATCH_FOLDERS] = list(watch_folders)
    app[WATCHERS] = []
    app[EVENT_QUEUES] = set()
    app[OPENAPI] = OPENAPI_PATH.read_bytes()
    app.cleanup_ctx.append(_engine_context)
    app.on_shutdown.append(_end_event_streams)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/openapi", openapi)
    app.router.add_post("/v1/jobs", create_job)
    app.router.add_get("/v1/jobs", list_jobs)
    app.router.add_get("/v1/jobs/{key}", get_job)
    app.router.add_delete("/v1/jobs/{key}", clear_job)
    app.router.add_post("/v1/jobs/{key}/cancel", _change("cancel"))
    app.router.add_post("/v1/jobs/{key}/retry", _change("retry"))
    app.router.add_put("/v1/api-key", set_api_key)
    app.router.add_get("/v1/events", events)
    return app
