"""Filing a watch folder's outcomes: the result's JSON record, or failed/<stem>.error.txt,
then the inputs moved to done/ or failed/ (which is also how the watcher tells "handled"
from "dropped again"), then the job remembered as handled in the store.

In that order, inputs in done/ or failed/ always have their record beside them, and a
watcher killed halfway redoes the (idempotent) rest on restart. The file work runs in a
thread: the folder may be a network share.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bridge.discovery import write_atomic
from bridge.files import numbered_names
from bridge.jobs import Job, State, now_iso
from bridge.watch_pairing import DONE_DIR, FAILED_DIR, Pair
from bridge.watch_state import Stage, WatchState, stem_of

log = logging.getLogger("bridge.watch")


class OutcomeFiler:
    """Files what became of each stem of one watch folder, once per job."""

    def __init__(self, state: WatchState) -> None:
        self.state = state

    def job_changed(self, job: Job) -> None:
        """A store listener (called on the loop): file a job of this folder once it is final."""
        if job.origin != self.state.origin:
            return
        self.state.remember(job)
        self.file_if_due(job)

    def file_pending(self) -> None:
        """File outcomes that could not be filed before (the folder was away, a disk full)."""
        for job in list(self.state.latest.values()):
            self.file_if_due(job)

    def file_if_due(self, job: Job) -> None:
        state = self.state
        if job.is_final and job.id not in state.handled and job.id not in state.finishing:
            state.spawn(self.finish(job))

    async def finish(self, job: Job) -> None:
        """Write the outcome files, then move the inputs away, then remember it is handled."""
        state = self.state
        if job.id in state.finishing:
            return
        state.finishing.add(job.id)
        stem = stem_of(job)
        try:
            async with state.lock:
                tracked = state.tracked.get(stem)
                if tracked is not None:
                    tracked.stage = Stage.FINISHING
                done = job.state == State.COMPLETED and job.output_path
                where = DONE_DIR if done else FAILED_DIR
                record = self._record(stem, job, where)
                if done:
                    await asyncio.to_thread(self._file_done, stem, job, record)
                    state.counts["done"] += 1
                    state.say(stem, f"done: {job.output_path}")
                else:
                    reason = job.error or "The job was canceled before it finished."
                    await asyncio.to_thread(self._file_failed, stem, job, reason, record)
                    state.counts["failed"] += 1
                    state.say(stem, f"failed: {reason}")
                await state.store.run(state.store.mark_watch_handled, job.id)
                state.handled.add(job.id)
                state.problems.clear(f"{state.origin}:filing")
                state.tracked.pop(stem, None)
        except OSError as exc:
            # Typically the folder went offline: filed on a later scan, once it can be.
            self._cannot_file(stem, exc)
        finally:
            state.finishing.discard(job.id)

    async def refuse(self, stem: str, pair: Pair, reason: str) -> None:
        """A pair that never became a job: straight to failed/ with the reason."""
        state = self.state
        async with state.lock:
            details = {"inputs": [str(p) for p in pair.members]}
            state.tracked.pop(stem, None)  # looked at again by the next scan if this fails
            try:
                await asyncio.to_thread(self._file_refused, stem, pair.members, reason, details)
            except OSError as exc:
                self._cannot_file(stem, exc)
                return
            state.counts["failed"] += 1
            state.say(stem, f"failed: {reason}")

    def _cannot_file(self, stem: str, exc: OSError) -> None:
        state = self.state
        where = f"{exc.filename}: " if exc.filename else ""
        log.warning("watch %s: cannot file the outcome of %s yet (%s)", state.in_dir, stem, exc)
        state.problems.report(
            f"{state.origin}:filing",
            f"The outcome of {stem} cannot be filed in {state.in_dir} yet ({where}"
            f"{exc.strerror or exc}); it is tried again.",
        )

    def _record(self, stem: str, job: Job, where: str) -> dict[str, Any]:
        tracked = self.state.tracked.get(stem)
        return {
            "stem": stem,
            "reference_id": job.reference_id,
            "request_id": job.request_id,
            "job_id": job.id,
            "state": str(job.state),
            "output": job.output_path,
            "inputs": {
                "video": job.video_path or job.video_url,
                "audio": job.audio_path or job.audio_url,
                "moved_to": str(self.state.in_dir / where),
            },
            "options": {
                "disable_active_speaker_detection": job.disable_active_speaker_detection,
                "model": job.model,
            },
            "timings": {
                "detected_at": tracked.detected_at if tracked else None,
                "created_at": job.created_at,
                "finished_at": job.updated_at,
                "states": self.state.timeline.get(job.id, {}),
            },
        }

    # ----- blocking file work (run in a thread) -------------------------------------------

    def _file_done(self, stem: str, job: Job, record: dict[str, Any]) -> None:
        _write_json(Path(job.output_path or "").with_suffix(".json"), record)
        self._move_inputs(stem, job, DONE_DIR)

    def _file_failed(self, stem: str, job: Job, reason: str, record: dict[str, Any]) -> None:
        self._write_error(stem, reason, record)
        self._move_inputs(stem, job, FAILED_DIR)

    def _file_refused(
        self, stem: str, members: Sequence[Path], reason: str, details: dict[str, Any]
    ) -> None:
        self._write_error(stem, reason, details)
        self._move(members, FAILED_DIR)

    def _move_inputs(self, stem: str, job: Job, where: str) -> None:
        in_dir = self.state.in_dir
        folder = in_dir / stem
        if folder.is_dir():
            members = [folder]
        else:
            names = (job.video_path, job.audio_path, str(in_dir / f"{stem}.json"))
            members = [Path(p) for p in names if p]
        self._move([p for p in members if p.exists()], where)

    def _move(self, members: Sequence[Path], where: str) -> None:
        """Move files (or a pair's sub-folder) into done/ or failed/, never over another."""
        target = _own_folder(self.state.in_dir / where)
        for path in members:
            for candidate in numbered_names(target / path.name):
                if candidate.exists():
                    continue
                with contextlib.suppress(FileNotFoundError):  # moved before a crash
                    os.rename(path, candidate)
                break

    def _write_error(self, stem: str, reason: str, details: dict[str, Any]) -> None:
        in_dir = self.state.in_dir
        folder = _own_folder(in_dir / FAILED_DIR)
        text = (
            f"{stem} was not lip-synced. {reason} Its files were moved to {folder}; fix the "
            f"problem, then move them back into {in_dir} to try again.\n"
        )
        write_atomic(folder / f"{stem}.error.txt", text)
        _write_json(
            folder / f"{stem}.error.json",
            {
                **details,
                "stem": stem,
                "error": reason,
                "inputs_moved_to": str(folder),
                "failed_at": now_iso(),
            },
        )


def _own_folder(path: Path) -> Path:
    """done/ or failed/, made if missing; never a link someone made to send the inputs and
    the records elsewhere."""
    path.mkdir(exist_ok=True)
    if path.is_symlink():
        raise OSError(errno.ELOOP, "it is a symbolic link; make it a plain folder", str(path))
    return path


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")
