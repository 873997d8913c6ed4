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
from bridge.config import BridgeConfig, redact_url
from bridge.discovery import health_proof
from bridge.engine import Engine
from bridge.errors import DuplicateReferenceError, InputError
from bridge.jobs import Job, JobSpec, State
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

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
HEARTBEAT_SECONDS = 15.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.1, localhost and [::1], with or without a port."""
    try:
        name = urlsplit(f"//{host.strip()}").hostname
    except ValueError:
        return False
    return bool(name) and name.rstrip(".").lower() in LOOPBACK_NAMES


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
    except Exception:
        log.exception("Unexpected error on %s %s", request.method, request.path)
        return error_response(500, "The bridge hit an unexpected error; details are in bridge.log.")


async def health(request: web.Request) -> web.Response:
    """Open to all; with `?challenge=`, also the proof that this bridge holds the token, which
    clients check before they send it (a stale bridge.json may name another program's port)."""
    config = request.app[CONFIG]
    body: dict[str, Any] = {
        "status": "ok",
        "version": bridge.__version__,
        "api_version": bridge.API_VERSION,
        "api_base": redact_url(config.api_base),
        "api_key_configured": bool(config.api_key),
        # The real service never runs on this machine: a loopback API is an emulator.
        "emulator": is_loopback_host(urlsplit(config.api_base).netloc),
    }
    challenge = request.query.get("challenge")
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if challenge and sockname:
        body["proof"] = health_proof(request.app[TOKEN], challenge, sockname[1])
    if request.app[WATCHERS]:
        body["watch"] = [watcher.status() for watcher in request.app[WATCHERS]]
    return web.json_response(body)


async def create_job(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return error_response(400, "The request body is not valid JSON.")
    try:
        spec = JobSpec.from_json(body, origin="api")
        job = await request.app[ENGINE].submit(spec)
    except DuplicateReferenceError as exc:
        return error_response(409, str(exc))
    except InputError as exc:
        return error_response(400, str(exc))
    return web.json_response(job.to_json(), status=201)


async def list_jobs(request: web.Request) -> web.Response:
    states = request.query.getall("state", [])
    unknown = [s for s in states if s not in {state.value for state in State}]
    if unknown:
        return error_response(
            400, f"Unknown state {unknown[0]!r}; use one of {', '.join(s.value for s in State)}."
        )
    keys = request.query.getall("reference_id", [])
    jobs = request.app[STORE].list(states=states, keys=keys)
    return web.json_response({"jobs": [job.to_json() for job in jobs]})


def _find(request: web.Request) -> Job | web.Response:
    key = request.match_info["key"]
    job = request.app[STORE].get(key)
    if job is None:
        return error_response(404, f"There is no job with id or reference_id {key!r}.")
    return job


async def get_job(request: web.Request) -> web.Response:
    found = _find(request)
    return found if isinstance(found, web.Response) else web.json_response(found.to_json())


def _change(action: str) -> Handler:
    """A handler for cancel or retry: the engine decides, the store enforces the states."""

    async def handler(request: web.Request) -> web.Response:
        found = _find(request)
        if isinstance(found, web.Response):
            return found
        engine = request.app[ENGINE]
        try:
            job = engine.cancel(found.id) if action == "cancel" else engine.retry(found.id)
        except (IllegalTransition, DuplicateReferenceError) as exc:
            return error_response(409, str(exc))
        except InputError as exc:
            return error_response(400, str(exc))
        return web.json_response(job.to_json())

    return handler


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: one `data: <job json>` per committed job change."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def on_change(job: Job) -> None:
        # The store calls this on whichever thread committed the change.
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
    store = Store(app[CONFIG].store_path)
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
            store.close()


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
    app.cleanup_ctx.append(_engine_context)
    app.on_shutdown.append(_end_event_streams)
    app.router.add_get("/v1/health", health)
    app.router.add_post("/v1/jobs", create_job)
    app.router.add_get("/v1/jobs", list_jobs)
    app.router.add_get("/v1/jobs/{key}", get_job)
    app.router.add_post("/v1/jobs/{key}/cancel", _change("cancel"))
    app.router.add_post("/v1/jobs/{key}/retry", _change("retry"))
    app.router.add_get("/v1/events", events)
    return app
