"""Durable job store: one SQLite file in WAL mode, one transaction per state change.

The store is the single source of truth that survives a SIGKILL: the engine records what
it is about to do (for example `uploading` with the reference_id) before doing it, so a
restarted bridge knows what to reconcile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from bridge.errors import (
    BridgeError,
    DamagedJobError,
    DuplicateReferenceError,
    InputError,
    StoreError,
)
from bridge.jobs import (
    ACTIVE_STATES,
    FINAL_STATES,
    RANGE_FIELDS,
    Job,
    JobSpec,
    MediaRange,
    State,
    can_transition,
    new_reference_id,
    now_iso,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    reference_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
-- Every reference_id a job has ever used: a retry must never reuse one the API knows.
CREATE TABLE IF NOT EXISTS reference_ids (
    reference_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL
);
-- Finished watch-folder jobs whose files were already filed (survives a SIGKILL mid-batch).
-- The watcher once kept it through a connection of its own: same table, so nothing migrates.
CREATE TABLE IF NOT EXISTS watch_handled (job_id TEXT PRIMARY KEY, handled_at TEXT NOT NULL);
"""

Listener = Callable[[Job], None]
P = ParamSpec("P")
T = TypeVar("T")
log = logging.getLogger(__name__)


class IllegalTransition(InputError):
    """A state change the job's state machine does not allow (e.g. retrying a completed job)."""


def _job_from_row(data: str) -> Job:
    raw: dict[str, Any] = json.loads(data)
    known = {f.name for f in fields(Job)}
    raw = {k: v for k, v in raw.items() if k in known}
    raw["state"] = State(raw["state"])
    for name in RANGE_FIELDS:
        if raw.get(name):
            raw[name] = MediaRange(**raw[name])
    return Job(**raw)


@dataclass(frozen=True)
class DamagedJob:
    """A row whose record cannot be read: listed as such so that it hides no other job."""

    id: str
    reference_id: str
    error: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "reference_id": self.reference_id, "error": self.error}


def _damaged(job_id: str, reference_id: str, exc: Exception) -> DamagedJob:
    return DamagedJob(
        job_id,
        reference_id,
        f"The record of job {reference_id} in the job store cannot be read "
        f"({type(exc).__name__}); the other jobs are unaffected.",
    )


_ROW_ERRORS = (ValueError, TypeError, KeyError, AttributeError)
# A field of a job's record (its path is a parameter), NULL for a record that is not JSON:
# CASE, unlike AND, is sure never to run json_extract on a damaged record (an SQL error).
_JSON_FIELD = "CASE WHEN json_valid(data) THEN json_extract(data, ?) END"


class Store:
    """Thread-safe access to the job table; listeners hear every committed change.

    The asyncio side calls it through `run` (or `submit`): every call then goes through one
    writer thread in order, so a commit (and SQLite's 5 s busy wait) never blocks the loop.
    Listeners are always called on the loop that last used `run`, in commit order.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        with self._sqlite():
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(SCHEMA)
        self._listeners: list[Listener] = []
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    @contextmanager
    def _sqlite(self) -> Iterator[None]:
        """Turn SQLite's failures (a full disk, an unreadable file) into one sentence."""
        try:
            yield
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            reason = str(exc)
            # "database or disk is full": SQLite's word for ENOSPC (and for max_page_count).
            full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            advice = "free some space" if full else "check the folder"
            raise StoreError(
                f"The bridge cannot use its job store in {self.path.parent} ({reason}); "
                f"{advice}, and jobs go on by themselves.",
                disk_full=full,
            ) from exc

    def close(self) -> None:
        """Finish the writes already handed to the writer thread, then close the file."""
        self._writer.shutdown(wait=True)
        with self._lock:
            self._db.close()

    async def run(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`call(*args, **kwargs)` (a method of this store) on the writer thread."""
        self._bind_loop()
        return await asyncio.wrap_future(self._writer.submit(call, *args, **kwargs))

    def submit(self, call: Callable[P, Any], *args: P.args, **kwargs: P.kwargs) -> Future[Any]:
        """Queue `call` on the writer thread without waiting (progress, notes): it runs after
        every call queued before it. A job that moved on meanwhile is not worth a log line."""
        future = self._writer.submit(call, *args, **kwargs)
        future.add_done_callback(_log_unexpected)
        return future

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._loop_thread = loop, threading.get_ident()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(job)` after each committed change; returns the unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._sqlite():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back itself (disk full)
                    self._db.execute("ROLLBACK")
                raise

    def _rows(self, query: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock, self._sqlite():
            return self._db.execute(query, args).fetchall()

    @staticmethod
    def _jobs(rows: list[tuple[Any, ...]]) -> tuple[list[Job], list[DamagedJob]]:
        """The readable jobs of `rows` (id, reference_id, data), and the damaged ones."""
        jobs, damaged = [], []
        for job_id, reference_id, data in rows:
            try:
                jobs.append(_job_from_row(data))
            except _ROW_ERRORS as exc:
                damaged.append(_damaged(job_id, reference_id, exc))
        return jobs, damaged

    def _notify(self, job: Job) -> None:
        """Tell the listeners, on the loop when there is one (they touch asyncio objects)."""
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            try:
                loop.call_soon_threadsafe(self._dispatch, job)
                return
            except RuntimeError:  # the loop is closed: nobody there listens any more
                pass
        self._dispatch(job)

    def _dispatch(self, job: Job) -> None:
        for listener in list(self._listeners):
            try:
                listener(job)
            except Exception:
                log.exception("a listener of the job store failed on job %s", job.reference_id)

    def _write(self, db: sqlite3.Connection, job: Job) -> None:
        data = asdict(job)
        data["state"] = str(job.state)
        db.execute(
            "INSERT INTO jobs (id, reference_id, state, created_at, data) VALUES (?,?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET reference_id=excluded.reference_id, "
            "state=excluded.state, data=excluded.data",
            (job.id, job.reference_id, str(job.state), job.created_at, json.dumps(data)),
        )

    def _claim_reference_id(self, db: sqlite3.Connection, reference_id: str, job_id: str) -> None:
        try:
            db.execute(
                "INSERT INTO reference_ids (reference_id, job_id) VALUES (?, ?)",
                (reference_id, job_id),
            )
        except sqlite3.IntegrityError:
            raise DuplicateReferenceError(
                f"reference_id {reference_id!r} is already used by another job; "
                "choose a different one or leave it out to get a fresh one."
            ) from None

    def create(self, spec: JobSpec) -> Job:
        """Store a new queued job; its reference_id must never have been used before."""
        job_id = uuid.uuid4().hex
        job = Job(
            id=job_id,
            reference_id=spec.reference_id or new_reference_id(),
            state=State.QUEUED,
            **{f.name: getattr(spec, f.name) for f in fields(JobSpec) if f.name != "reference_id"},
        )
        try:
            with self._transaction() as db:
                self._claim_reference_id(db, job.reference_id, job_id)
                self._write(db, job)
        except StoreError as exc:
            if not exc.disk_full:
                raise
            raise StoreError(
                f"The disk holding the bridge's data folder {self.path.parent} is full; free "
                "some space and submit again.",
                disk_full=True,
            ) from None
        self._notify(job)
        return job

    def get(self, key: str) -> Job | None:
        """A job by its id or its (current) reference_id; DamagedJobError if unreadable."""
        rows = self._rows(
            "SELECT id, reference_id, data FROM jobs WHERE id = ? OR reference_id = ?", (key, key)
        )
        if not rows:
            return None
        job_id, reference_id, data = rows[0]
        try:
            return _job_from_row(data)
        except _ROW_ERRORS as exc:
            raise DamagedJobError(_damaged(job_id, reference_id, exc).error) from None

    def list(self, *, states: Sequence[str] = (), keys: Sequence[str] = ()) -> list[Job]:
        """Jobs in any of `states`, and whose id or reference_id is one of `keys`, if given;
        damaged records are left out, cleared jobs are in."""
        return self.listing(states=states, keys=keys)[0]

    def listing(
        self,
        *,
        states: Sequence[str] = (),
        keys: Sequence[str] = (),
        file: str | None = None,
        cleared: bool = True,
    ) -> tuple[list[Job], list[DamagedJob]]:
        """Like `list`, plus the records that match but cannot be read; `file` keeps the
        jobs whose client.file it is, `cleared=False` leaves cleared jobs out."""
        query, args = "SELECT id, reference_id, data FROM jobs WHERE 1=1", []
        if states:
            query += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        if keys:
            marks = ",".join("?" * len(keys))
            query += f" AND (id IN ({marks}) OR reference_id IN ({marks}))"
            args += list(keys) * 2
        if file is not None:
            query += f" AND {_JSON_FIELD} = ?"
            args += ["$.client.file", file]
        if not cleared:
            query += f" AND coalesce({_JSON_FIELD}, 0) = 0"
            args.append("$.cleared")
        return self._jobs(self._rows(query + " ORDER BY created_at, id", args))

    def list_by_origin(self, origin: str) -> list[Job]:
        """Jobs started by one source (e.g. "watch:<folder>"), oldest first."""
        rows = self._rows(
            "SELECT id, reference_id, data FROM jobs WHERE json_valid(data) "
            "AND json_extract(data, '$.origin') = ? ORDER BY created_at, id",
            (origin,),
        )
        return self._jobs(rows)[0]

    def active(self) -> list[Job]:
        return self.list(states=[str(s) for s in ACTIVE_STATES])

    def update(
        self,
        job_id: str,
        *,
        state: State | None = None,
        expect: frozenset[State] | set[State] | None = None,
        refusal: str = "so it cannot be changed that way",
        after_commit: Callable[[], None] | None = None,
        **changes: Any,
    ) -> Job:
        """Apply one change in one transaction and return the job as now stored.

        `expect` guards against races (e.g. a cancel arriving mid-upload): the change is
        refused with IllegalTransition ("Job X is <state>, <refusal>.") unless the job is
        still in one of those states. A job that becomes active again is no longer cleared.
        `after_commit` runs once the change is durable, before anyone reads the store or
        hears of the change (say, removing a file that the new state no longer needs).
        """
        with self._lock:
            job = self._update(job_id, state, expect, refusal, changes)
            if after_commit is not None:
                after_commit()
        self._notify(job)
        return job

    def _update(
        self,
        job_id: str,
        state: State | None,
        expect: frozenset[State] | set[State] | None,
        refusal: str,
        changes: dict[str, Any],
    ) -> Job:
        with self._transaction() as db:
            row = db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise InputError(f"There is no job {job_id!r}.")
            try:
                job = _job_from_row(row[0])
            except _ROW_ERRORS as exc:
                raise DamagedJobError(_damaged(job_id, job_id, exc).error) from None
            if expect is not None and job.state not in expect:
                raise IllegalTransition(f"Job {job.reference_id} is {job.state}, {refusal}.")
            if state is not None and not can_transition(job.state, state):
                raise IllegalTransition(
                    f"Job {job.reference_id} is {job.state} and cannot become {state}."
                )
            new_ref = changes.get("reference_id")
            if new_ref and new_ref != job.reference_id:
                self._claim_reference_id(db, new_ref, job.id)
            job = replace(job, **changes, updated_at=now_iso())
            if state is not None:
                job.state = state
                job.cleared = job.cleared and state in FINAL_STATES
            self._write(db, job)
        return job

    def handled_watch_jobs(self) -> set[str]:
        """The watch-folder jobs whose outcome has been filed (see `mark_watch_handled`)."""
        return {row[0] for row in self._rows("SELECT job_id FROM watch_handled")}

    def mark_watch_handled(self, job_id: str) -> None:
        """Remember that a finished watch-folder job's files were filed, once and for good."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO watch_handled (job_id, handled_at) VALUES (?, ?)",
                (job_id, now_iso()),
            )

    def clear(self, job_id: str) -> Job:
        """Put a final job away: listings leave it out, while its files stay and its
        reference_id stays taken (the API knows it); clearing it again is harmless."""
        return self.update(
            job_id,
            expect=FINAL_STATES,
            refusal="so it cannot be cleared yet; cancel it first",
            cleared=True,
        )


def _log_unexpected(future: Future[Any]) -> None:
    exc = future.exception()
    if exc is not None and not isinstance(exc, BridgeError):
        log.error("a queued write to the job store failed", exc_info=exc)
