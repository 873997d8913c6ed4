"""Every change of a job's state, by name: the one place the job state machine is written.

Each step is one store transaction with the states it may start from (`expect`), run on the
store's writer thread so the event loop never waits on SQLite. The engine's parts and the
watch folder change jobs only through these steps; the states themselves are `jobs.State`.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from bridge.errors import DuplicateReferenceError
from bridge.files import remove_leftover
from bridge.jobs import (
    ACTIVE_STATES,
    Job,
    JobSpec,
    State,
    now_iso,
    numbered_reference_ids,
    reference_base,
)
from bridge.store import DamagedJob, Store

# The states in which the engine itself takes a job on, and those the poller watches.
DRIVEN_STATES = frozenset({State.QUEUED, State.UPLOADING, State.DOWNLOADING})
SENDABLE_STATES = frozenset({State.QUEUED, State.UPLOADING})
POLLED_STATES = frozenset({State.SUBMITTED, State.PROCESSING})
RETRYABLE_STATES = frozenset({State.FAILED, State.CANCELED})
# Remote outcomes after which a retry needs a new request (and is charged again).
RESUBMIT_AFTER = frozenset({"failed", "forgotten"})


class Transitions:
    """The named steps of a job's life in one store; every one is awaited off the loop."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def _step(self, job_id: str, expect: frozenset[State] | None, **changes: Any) -> Job:
        return await self.store.run(self.store.update, job_id, expect=expect, **changes)

    async def _enter(
        self, job_id: str, expect: frozenset[State] | None, state: State, **changes: Any
    ) -> Job:
        """A step into a new stage, which starts with no progress and nothing to wait on."""
        return await self._step(job_id, expect, state=state, progress=0.0, note=None, **changes)

    # ----- reading (through the same writer, so a read sees every write before it) -----

    async def get(self, key: str) -> Job | None:
        return await self.store.run(self.store.get, key)

    async def list(self, states: Sequence[State]) -> list[Job]:
        return await self.store.run(self.store.list, states=[str(s) for s in states])

    async def listing(self, **filters: Any) -> tuple[list[Job], list[DamagedJob]]:
        return await self.store.run(self.store.listing, **filters)

    async def list_by_origin(self, origin: str) -> list[Job]:
        return await self.store.run(self.store.list_by_origin, origin)

    # ----- the steps ---------------------------------------------------------------------

    async def create(self, spec: JobSpec) -> Job:
        """A new job, queued."""
        return await self.store.run(self.store.create, spec)

    async def mark_uploading(self, job: Job) -> Job:
        """About to call a generate endpoint: recorded first, so a crash there is adopted
        by reference_id on restart instead of paid twice."""
        return await self._enter(
            job.id,
            SENDABLE_STATES,
            State.UPLOADING,
            submit_started=True,
            unsettled_since=now_iso(),
            attempts=job.attempts + 1,
        )

    async def upload_refused(self, job_id: str) -> Job:
        """The API clearly said no to the upload: nothing is pending there any more."""
        return await self._step(job_id, frozenset({State.UPLOADING}), unsettled_since=None)

    async def accepted(self, job_id: str, request_id: str) -> Job:
        """The API holds a request for the job: the poller takes it from here."""
        return await self._enter(
            job_id, SENDABLE_STATES, State.SUBMITTED, request_id=request_id, unsettled_since=None
        )

    async def remote_moved(self, job: Job, remote_status: str) -> Job:
        """The API reports a new status of a polled request (queued or processing)."""
        state = State.SUBMITTED if remote_status == "queued" else State.PROCESSING
        if job.state == State.PROCESSING:
            state = State.PROCESSING
        return await self._step(
            job.id, POLLED_STATES, state=state, remote_status=remote_status, note=None
        )

    async def start_download(self, job_id: str, remote_status: str) -> Job:
        """The API finished the request: the result is to be fetched."""
        return await self._enter(
            job_id, POLLED_STATES, State.DOWNLOADING, remote_status=remote_status
        )

    async def record_part(self, job_id: str, part_path: str) -> Job:
        """The temporary file a download is about to create (removed after a crash)."""
        return await self._step(job_id, frozenset({State.DOWNLOADING}), part_path=part_path)

    async def link_lost(self, job_id: str) -> Job:
        """The API offers no result link now: poll the request again."""
        return await self._step(
            job_id, frozenset({State.DOWNLOADING}), state=State.PROCESSING, remote_status=None
        )

    async def claim_output(self, job_id: str, output_path: str) -> Job:
        """The name the result is about to be published under (recorded before the link)."""
        return await self._step(job_id, frozenset({State.DOWNLOADING}), output_path=output_path)

    async def complete(self, job_id: str, part: Path) -> Job:
        """The result is in place under its output_path; its temporary name `part` goes
        before anyone sees the job completed."""
        return await self._step(
            job_id,
            None,
            state=State.COMPLETED,
            progress=1.0,
            error=None,
            note=None,
            part_path=None,
            after_commit=lambda: remove_leftover(part),
        )

    async def fail(self, job_id: str, error: str, **changes: Any) -> Job:
        """A definite failure, said in one sentence."""
        return await self._step(
            job_id, ACTIVE_STATES, state=State.FAILED, error=error, note=None, **changes
        )

    async def cancel(self, job_id: str) -> Job:
        """The user stopped the job (the store refuses it for a final job)."""
        return await self._enter(job_id, None, State.CANCELED)

    async def resume_polling(self, job_id: str) -> Job:
        """A retry of a job whose request the API still has: poll and download again."""
        return await self._step(
            job_id,
            RETRYABLE_STATES,
            state=State.SUBMITTED,
            error=None,
            progress=0.0,
            remote_status=None,
        )

    async def requeue(self, job: Job) -> Job:
        """A retry from the start; after a request the API failed or forgot, under a fresh
        reference_id (`-r2`, `-r3`…) the API never saw."""
        changes: dict[str, Any] = {"error": None, "progress": 0.0}
        if not job.request_id:
            return await self._step(job.id, RETRYABLE_STATES, state=State.QUEUED, **changes)
        changes |= {
            "previous_reference_ids": [*job.previous_reference_ids, job.reference_id],
            "request_id": None,
            "remote_status": None,
            "submit_started": False,
            "unsettled_since": None,
        }
        first = len(job.previous_reference_ids) + 2
        for reference_id in numbered_reference_ids(reference_base(job.reference_id), first):
            try:
                return await self._step(
                    job.id,
                    RETRYABLE_STATES,
                    state=State.QUEUED,
                    reference_id=reference_id,
                    **changes,
                )
            except DuplicateReferenceError:
                continue  # another job holds that one: the next number
        raise AssertionError("numbered_reference_ids never ends")

    async def rekeyed(self, job_id: str, error: str) -> Job:
        """A job that failed on the old API key now says that a retry works."""
        return await self._step(job_id, frozenset({State.FAILED}), error=error)

    async def clear(self, job_id: str) -> Job:
        """A final job put away (see Store.clear)."""
        return await self.store.run(self.store.clear, job_id)

    # ----- notes and progress: queued without waiting, best effort -----------------------

    async def note(self, job_id: str, note: str | None, expect: frozenset[State]) -> Job | None:
        """Why an unfinished job waits (None once it goes on); written only when it changes,
        since every write is an event to every subscriber."""
        return await self.store.run(self._note_if_changed, job_id, note, expect)

    def _note_if_changed(
        self, job_id: str, note: str | None, expect: frozenset[State]
    ) -> Job | None:
        job = self.store.get(job_id)
        if job is None or job.note == note:
            return job
        return self.store.update(job_id, note=note, expect=expect)

    def queue_note(self, job_id: str, note: str, expect: frozenset[State]) -> Future[Any]:
        """A note from a worker thread (a conversion's progress), queued behind earlier writes."""
        return self.store.submit(self.store.update, job_id, note=note, expect=expect)

    def progress(self, job_id: str, fraction: float, state: State) -> Future[Any]:
        """A transfer's progress; queued behind earlier writes, so it never lands after the
        step that ends the transfer (its `expect` then just refuses it)."""
        return self.store.submit(
            self.store.update, job_id, progress=round(fraction, 4), expect=frozenset({state})
        )
