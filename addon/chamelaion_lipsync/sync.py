"""The main thread's side of the worker: one pass applies the bridge's answers, follows the
exports running in background Blender processes, places finished takes and asks for more.
`chamelaion_sync`, the timer and the load handler all run it.

The bridge is the record of a file's jobs: everything here lives in memory and is rebuilt
from the bridge, so undo, redo and reopening never lose a job. A job that never reached the
bridge (its export failed or was canceled) is kept in memory under its file's id, so it stays in
its batch when the file is reopened in the same Blender session; it does not survive quitting
Blender (nothing was sent, nothing is billed).
"""

from __future__ import annotations

import contextlib
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import bpy

from chamelaion_client import FINAL_STATES, RETRYABLE_STATES

from . import placement, props, takes
from .background import ExportTask
from .takes import PlacementProblem
from .worker import Request, Result, Worker

POLL_ACTIVE = 1.0
POLL_IDLE = 5.0
HEALTH_EVERY = 5.0
PLACE_BUDGET = 0.015
FILE_ID = "chamelaion_file"

News = list[tuple[str, str]]  # (report level "ERROR" | "WARNING", sentence) for the editor

_worker: Worker | None = None
status: dict[str, Any] = {"text": "Not checked yet", "ok": False, "checked": float("-inf")}


@dataclass
class Export:
    """A job still being written by a background Blender, then handed to the bridge."""

    task: ExportTask
    body: dict[str, Any]
    created: float = field(default_factory=time.time)


@dataclass
class Unsent:
    """A job that never reached the bridge: why, and its request when it can be sent again
    (its files are whole; a failed or canceled export has none)."""

    error: str
    body: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)
    client: dict[str, Any] = field(default_factory=dict)  # the job's record (file, batch)
    state: str = "failed"  # or "canceled": the editor stopped its export


@dataclass
class Memory:
    """What this Blender session knows beyond the bridge's record."""

    file_id: str | None = None
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # the bridge's jobs, by ref
    listed: bool = False  # rows came from the bridge at least once for this file
    exports: dict[str, Export] = field(default_factory=dict)
    sending: dict[str, dict[str, Any]] = field(default_factory=dict)  # create bodies in flight
    local_errors: dict[str, Unsent] = field(default_factory=dict)  # never reached the bridge,
    # of every file opened in this session: rows() shows the current file's
    placed: set[str] = field(default_factory=set)  # placed once: an undo of it is respected
    problems: dict[str, str] = field(default_factory=dict)  # why a take is not placed
    warnings: dict[str, str] = field(default_factory=dict)


memory = Memory()


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
    for export in memory.exports.values():
        export.task.cancel()
    memory.exports.clear()


def file_id(create: bool = False) -> str | None:
    """This file's id: kept in every scene, and in memory so an undo cannot take it away."""
    if memory.file_id is None:
        memory.file_id = next(
            (str(s[FILE_ID]) for s in bpy.data.scenes if s.get(FILE_ID)), None
        ) or (uuid.uuid4().hex if create else None)
    return memory.file_id


def keep_file_id() -> None:
    """Write the id back where an undo removed it (a no-op when it is there)."""
    if memory.file_id is None:
        return
    for scene in bpy.data.scenes:
        if scene.get(FILE_ID) != memory.file_id:
            scene[FILE_ID] = memory.file_id


def start_job(reference_id: str, task: ExportTask, body: dict[str, Any]) -> None:
    """Follow an export; its job goes to the bridge when the files are whole."""
    memory.local_errors.pop(reference_id, None)  # exported again
    memory.exports[reference_id] = Export(task, body)


def send(reference_id: str, body: dict[str, Any]) -> None:
    memory.sending[reference_id] = body
    memory.local_errors.pop(reference_id, None)
    worker().submit(Request("create", body, tag=reference_id))


def retry(reference_id: str) -> str | None:
    """Run a failed or canceled job again: one that never reached the bridge is sent now (its
    cause may be fixed), the bridge retries its own; None when done, else why not."""
    unsent = memory.local_errors.get(reference_id)
    if unsent is not None and unsent.body is not None:
        send(reference_id, unsent.body)
        return None
    job = memory.rows.get(reference_id)
    if job is None or job.get("state") not in RETRYABLE_STATES:
        return "Only a failed or canceled job can be retried."
    memory.placed.discard(reference_id)
    worker().submit(Request("retry", job["id"], tag=reference_id))
    return None


def known_references() -> set[str]:
    return {*memory.rows, *memory.exports, *memory.sending, *memory.local_errors}


def apply(result: Result, news: News) -> None:
    """Fold one worker answer into memory and the bridge status."""
    kind, value, error, tag = result.request.kind, result.value, result.error, result.request.tag
    if result.unavailable or kind == "health":
        set_status(value, error)
    if kind == "health":
        return
    if kind == "list":
        if error is None and result.request.payload == memory.file_id:
            update_rows(value, news)
        return
    if kind == "create":
        body = memory.sending.pop(tag, None)
        if error is None or result.status == 409:  # 409: the bridge has it already
            if isinstance(value, dict):  # under the id the bridge made of our name
                memory.rows[value["reference_id"]] = value
            return
        if body is not None:
            memory.local_errors[tag] = Unsent(error, body, client=body["client"])
    if error is not None:
        news.append(("ERROR", error))
        return
    if kind == "clear":
        memory.rows.pop(value.get("reference_id", ""), None)
    elif isinstance(value, dict) and any(
        job["id"] == value.get("id") for job in memory.rows.values()
    ):
        # By id: a retry after the API failed the request runs under a new reference_id.
        update_rows([*other_rows(value["id"]), value], news)


def other_rows(job_id: str) -> list[dict[str, Any]]:
    return [row for row in memory.rows.values() if row["id"] != job_id]


def update_rows(jobs: list[dict[str, Any]], news: News) -> None:
    """The bridge's list replaces ours; a job that newly failed becomes news."""
    fresh = {job["reference_id"]: job for job in jobs}
    for ref, job in fresh.items():
        before = memory.rows.get(ref, {}).get("state")
        if job.get("state") == "failed" and before not in (None, "failed"):
            news.append(
                ("ERROR", f"Lip sync {ref} failed: {job.get('error') or 'no reason given'}")
            )
        if job.get("state") != "completed":
            memory.placed.discard(ref)  # retried: its new take lands again
    memory.rows, memory.listed = fresh, True


def set_status(health: Any, error: str | None) -> None:
    status["checked"] = time.monotonic()
    if error is not None:
        status.update(text=error, ok=False)
        return
    key = "API key set" if health.get("api_key_configured") else "no API key"
    status.update(
        text=f"Bridge {health.get('version', '?')} running ({key})",
        ok=True,
        api_base=health.get("api_base", ""),
    )


def follow_exports(news: News) -> None:
    """Hand finished exports to the bridge; a failed or canceled one stays a row (in its
    batch) with its sentence."""
    for ref, export in list(memory.exports.items()):
        state = export.task.poll()
        if state.stage == "done":
            del memory.exports[ref]
            send(ref, export.body)
        elif state.stage in ("failed", "canceled"):
            del memory.exports[ref]
            client = export.body["client"]
            memory.local_errors[ref] = Unsent(state.error, client=client, state=state.stage)
            if state.stage == "failed":
                news.append(("ERROR", state.error))


def place_finished(news: News, budget: float) -> None:
    """Place completed takes that no strip holds yet, until the time budget is spent."""
    done = [
        job
        for ref, job in memory.rows.items()
        if job.get("state") == "completed" and ref not in memory.placed
    ]
    if not done:
        return
    deadline = time.perf_counter() + budget
    held = held_references()
    for job in done:
        ref = job["reference_id"]
        memory.placed.add(ref)
        if ref in held:
            continue
        place(job, news)
        if time.perf_counter() > deadline:
            break


def held_references() -> set[str]:
    """Every take some strip of this file holds, in any scene."""
    return set().union(
        *(takes.references_in(s.sequence_editor) for s in bpy.data.scenes if s.sequence_editor)
    )


def place(job: dict[str, Any], news: News) -> bool:
    """Place one take as an undo step of its own; a problem is kept for the panel."""
    ref = job["reference_id"]
    try:
        _, warning = placement.place(job)
    except (PlacementProblem, RuntimeError, KeyError, ValueError) as exc:
        memory.problems[ref] = str(exc)
        news.append(("ERROR", str(exc)))
        return False
    memory.problems.pop(ref, None)
    memory.warnings[ref] = warning
    if warning:
        news.append(("WARNING", warning))
    bpy.ops.ed.undo_push(message=f"Place lip-sync take {ref}")
    return True


def needs_listing() -> bool:
    return not memory.listed or any(
        job.get("state") not in FINAL_STATES
        or (job.get("state") == "completed" and job["reference_id"] not in memory.placed)
        for job in memory.rows.values()
    )


def tick(budget: float = PLACE_BUDGET) -> News:
    """One pass; returns the new sentences for the caller to report."""
    news: News = []
    w = worker()
    for result in w.drain():
        apply(result, news)
    follow_exports(news)
    keep_file_id()
    for scene in bpy.data.scenes:
        if scene.sequence_editor:
            takes.show_orphaned_covers(scene.sequence_editor)
    place_finished(news, budget)
    if memory.file_id and needs_listing() and not w.busy("list"):
        w.submit(Request("list", memory.file_id))
    if time.monotonic() - status["checked"] > HEALTH_EVERY and not w.busy("health"):
        status["checked"] = time.monotonic()
        w.submit(Request("health"))
    redraw()
    return news


def busy() -> bool:
    """Whether the timer should come back soon."""
    waiting = memory.file_id is not None and needs_listing()
    return bool(memory.exports or memory.sending) or waiting


def redraw() -> None:
    wm = bpy.context.window_manager
    for window in wm.windows if wm else ():
        for area in window.screen.areas:
            if area.type == "SEQUENCE_EDITOR":
                area.tag_redraw()


def timer() -> float:
    """bpy.app.timers callback: the same pass as the operator, more often while busy. It runs
    in a window's context, as a click would (placing a take runs operators), and its failures
    reach the status bar through a report of their own."""
    try:
        with in_window():
            for level, sentence in tick():
                report(level, sentence)
    except Exception:  # noqa: BLE001 - Blender drops a timer that raises: keep it alive
        traceback.print_exc()
    return POLL_ACTIVE if busy() else POLL_IDLE


def report(level: str, sentence: str) -> None:
    """Into the status bar and the Info log, through an operator (a timer has none)."""
    # bpy.ops raises on an ERROR report once it has shown it: showing it was the point.
    with contextlib.suppress(RuntimeError):
        bpy.ops.sequencer.chamelaion_report(level=level, message=sentence)


@contextlib.contextmanager
def in_window() -> Iterator[None]:
    """The first window's context when there is one (a timer has none of its own)."""
    wm = bpy.context.window_manager
    window = wm.windows[0] if wm and wm.windows else None
    if window is None:
        yield
        return
    with bpy.context.temp_override(window=window):
        yield


@bpy.app.handlers.persistent
def on_load(*_args: Any) -> None:
    """A file just opened: forget the last file's rows and ask at once for this one's jobs.
    Exports of the file just closed carry on: their jobs reach the bridge all the same; the
    jobs that never reached it are kept for when that file is open again."""
    global memory
    memory = Memory(
        exports=memory.exports, sending=memory.sending, local_errors=memory.local_errors
    )
    file_id()
    tick()


def rows() -> Iterator[dict[str, Any]]:
    """What the panel shows, newest first: exports, local failures and the bridge's jobs."""
    items: list[dict[str, Any]] = []
    for ref, export in memory.exports.items():
        state = export.task.poll()
        items.append(
            {
                "reference_id": ref,
                "state": state.stage,
                "progress": state.progress,
                "created": export.created,
                "local": True,
                "client": export.body["client"],
            }
        )
    for ref, body in memory.sending.items():
        items.append(
            {
                "reference_id": ref,
                "state": "sending",
                "created": time.time(),
                "client": body["client"],
            }
        )
    for ref, unsent in unsent_here().items():
        items.append(
            {
                "reference_id": ref,
                "state": unsent.state,
                "error": unsent.error,
                "local": unsent.body is None,  # nothing to send again: Lip Sync anew
                "created": unsent.created,
                "client": unsent.client,
            }
        )
    items.extend(dict(job) for job in memory.rows.values())
    for item in items:
        ref = item["reference_id"]
        item["problem"] = memory.problems.get(ref, "")
        item["warning"] = memory.warnings.get(ref, "")
    yield from sorted(items, key=created_seconds, reverse=True)


def unsent_here() -> dict[str, Unsent]:
    """The jobs of the open file that never reached the bridge."""
    return {
        ref: unsent
        for ref, unsent in memory.local_errors.items()
        if unsent.client.get("file") == memory.file_id
    }


def forget_unsent() -> None:
    """Clear Finished: the open file's jobs that never reached the bridge go."""
    for ref in unsent_here():
        del memory.local_errors[ref]


def created_seconds(item: dict[str, Any]) -> float:
    """Seconds since the epoch; the bridge's rows say it as ISO 8601 text."""
    value = item.get("created_at") or item.get("created") or 0.0
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return 0.0
    return float(value)
