"""The main thread's side of the worker: one pass applies answers, imports finished takes
and asks for the next poll. `chamelaion_sync`, the timer and the load handler all run it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import bpy

from . import importer, props
from .worker import Request, Result, Worker

POLL_ACTIVE = 1.0
POLL_IDLE = 5.0
HEALTH_EVERY = 5.0
IMPORT_BUDGET = 0.015

_worker: Worker | None = None
status: dict[str, Any] = {"text": "Not checked yet", "ok": False, "checked": float("-inf")}
_sending: set[str] = set()


def worker() -> Worker:
    """The one worker, started on first use with the current preferences."""
    global _worker
    settings = props.worker_settings()
    if _worker is None:
        _worker = Worker(settings)
    else:
        _worker.settings = settings
    return _worker


def stop_worker() -> None:
    global _worker
    if _worker is not None:
        _worker.stop()
        _worker = None
    _sending.clear()


def file_jobs() -> Iterator[tuple[Any, Any]]:
    """(scene, job) for every job this .blend tracks."""
    for scene in bpy.data.scenes:
        settings = getattr(scene, "chamelaion", None)
        if settings is not None:
            for job in settings.jobs:
                yield scene, job


def send(scene: Any, job: Any) -> None:
    """Hand the stored job request to the worker (first time, or after it never arrived)."""
    import json

    _sending.add(job.reference_id)
    job.state, job.error = "sending", ""
    worker().submit(Request("create", json.loads(job.request_body), tag=job.reference_id))


def find_job(key: str) -> tuple[Any, Any] | tuple[None, None]:
    for scene, job in file_jobs():
        if key and key in (job.job_id, job.reference_id):
            return scene, job
    return None, None


def update_job(job: Any, data: dict[str, Any], news: list[str]) -> None:
    """Copy the bridge's view of a job into the .blend; a new failure becomes news."""
    was_failed = job.state == "failed"
    job.job_id = data.get("id") or job.job_id
    job.reference_id = data.get("reference_id") or job.reference_id
    job.request_id = data.get("request_id") or ""
    job.state = data.get("state") or job.state
    job.progress = float(data.get("progress") or 0.0)
    job.error = data.get("error") or ""
    job.note = data.get("note") or ""
    job.output_path = data.get("output_path") or ""
    if job.is_final and not job.finished:
        job.finished = repr(time.time())
    if not job.is_final:
        job.finished = ""
    if job.state == "failed" and not was_failed:
        news.append(f"Lip sync {job.reference_id} failed: {job.error or 'no reason given'}")


def apply(result: Result, news: list[str]) -> None:
    """Fold one worker answer into the file's jobs and the bridge status."""
    kind, value, error = result.request.kind, result.value, result.error
    if result.unavailable or kind == "health":
        set_status(value, error)
    if kind == "list":
        if error is None:
            for data in value:
                _, job = find_job(data.get("id", ""))
                if job is None:
                    _, job = find_job(data.get("reference_id", ""))
                if job is not None:
                    update_job(job, data, news)
        return
    if kind == "create":
        _sending.discard(result.request.tag)
    _, job = find_job(result.request.tag)
    if job is None:
        return
    if error is None and isinstance(value, dict):
        update_job(job, value, news)
        return
    if error is not None and kind == "create" and result.status == 409:
        job.state = "queued"  # the bridge already has it: the next poll brings its state
        return
    if error is not None:
        if kind == "create":
            job.state, job.error = "failed", error
        news.append(error)


def set_status(health: Any, error: str | None) -> None:
    status["checked"] = time.monotonic()
    if error is not None:
        status.update(text=error, ok=False)
        return
    key = "API key set" if health.get("api_key_configured") else "no API key"
    status.update(text=f"Bridge {health.get('version', '?')} running ({key})", ok=True)


def import_finished(news: list[str], budget: float) -> None:
    """Import completed takes until the time budget is spent; the rest wait for next pass."""
    deadline = time.perf_counter() + budget
    for scene, job in file_jobs():
        if job.state != "completed" or job.imported or not job.output_path:
            continue
        try:
            strip, warning = importer.import_result(scene, job)
        except (importer.ImportProblem, RuntimeError) as exc:
            job.imported, job.warning = True, str(exc)
            news.append(str(exc))
            continue
        job.imported, job.result_name, job.warning = True, strip.name, warning
        if warning:
            news.append(warning)
        if time.perf_counter() > deadline:
            break


def tick(budget: float = IMPORT_BUDGET) -> list[str]:
    """One pass; returns the new error sentences for the caller to report."""
    news: list[str] = []
    w = worker()
    for result in w.drain():
        apply(result, news)
    import_finished(news, budget)
    active = [(s, j) for s, j in file_jobs() if not j.is_final]
    for scene, job in active:
        if job.state == "sending" and job.reference_id not in _sending and job.request_body:
            send(scene, job)
    keys = [j.job_id or j.reference_id for _, j in active if j.state != "sending"]
    if keys and not w.busy("list"):
        w.submit(Request("list", keys))
    if time.monotonic() - status["checked"] > HEALTH_EVERY and not w.busy("health"):
        status["checked"] = time.monotonic()
        w.submit(Request("health"))
    redraw()
    return news


def has_active_jobs() -> bool:
    return any(
        not job.is_final or (job.state == "completed" and not job.imported)
        for _, job in file_jobs()
    )


def redraw() -> None:
    wm = bpy.context.window_manager
    for window in wm.windows if wm else ():
        for area in window.screen.areas:
            if area.type == "SEQUENCE_EDITOR":
                area.tag_redraw()


def timer() -> float:
    """bpy.app.timers callback: the same pass as the operator, more often while busy."""
    tick()
    return POLL_ACTIVE if has_active_jobs() or _sending else POLL_IDLE


@bpy.app.handlers.persistent
def on_load(*_args: Any) -> None:
    """A file just opened: ask at once for its jobs so results that came meanwhile land."""
    _sending.clear()
    tick()
