"""Several picture strips as one batch: which strips, their billable seconds, when to ask
before sending, and the batch's record in each job's `client` (the bridge keeps it as given,
so the panel rebuilds the batch from the bridge's rows after undo or a reopen)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from chamelaion_client import FINAL_STATES, RETRYABLE_STATES

from . import compat, export, takes
from .takes import PlacementProblem

DEFAULT_CONFIRM_ABOVE = 300.0  # billable seconds
NOTES_BYTES = 8192  # the skipped strips' sentences in each job's record (one is <= 16 KiB)
NOTE_LENGTH = 300


def selected_pictures(editor: Any) -> list[Any]:
    """The selected picture strips of the level the editor shows, as the originals Lip Sync
    runs on (a take strip stands for the strip it covers), each once, in timeline order. A
    take strip whose shot is gone stays itself: the batch skips it with its sentence."""
    level = editor.meta_stack[-1].strips if len(editor.meta_stack) else compat.strips(editor)
    chosen = [s for s in level if s.select and s.type in export.PICTURE_TYPES]
    found: dict[int, Any] = {}
    for strip in sorted(chosen, key=lambda s: (s.frame_final_start, s.channel)):
        try:
            original = takes.original_of(editor, strip)
        except PlacementProblem:
            original = strip
        found.setdefault(original.as_pointer(), original)
    return list(found.values())


MUTED = (
    "It is muted (or its channel, or a meta strip around it, is); unmute it to send it, or "
    "leave it out of the selection."
)


@dataclass
class Rules:
    """What a batch checks of each shot before it plans it, read from the editor once and
    cheap (no file is opened), so the panel's estimate counts the strips the batch sends. A
    movie whose file is missing is only found by Lip Sync itself."""

    editor: Any
    fps: float
    sounds: export.Sounds
    effects: list[Any]

    @classmethod
    def of(cls, scene: Any, shots: list[Any]) -> Rules:
        editor = scene.sequence_editor
        return cls(
            editor,
            compat.scene_fps(scene),
            export.Sounds.of(editor, shots),
            export.one_input_effects(editor),
        )

    def check_muted(self, strip: Any) -> None:
        """A muted strip is not sent; a cover muted by the take strip over it is not muted."""
        if not export.unmuted(self.editor, strip, self.sounds.held_by, not strip.get(takes.HIDDEN)):
            raise export.ExportError(MUTED)

    def frames(self, shot: Any) -> int:
        """The frames the shot's job would send, or ExportError / PlacementProblem saying why
        it is skipped."""
        strip = takes.original_of(self.editor, shot)
        self.check_muted(strip)
        rate = export.recorded_fps(strip, self.fps)
        span = export.reach(self.editor, strip, rate, self.fps, self.effects)
        self.sounds.under(self.editor, strip, span.start, span.end)
        return span.end - span.start


@dataclass(frozen=True)
class Estimate:
    shots: int  # that would be sent
    seconds: float  # billable
    skipped: int


def estimate(scene: Any, strips: list[Any]) -> Estimate:
    """What sending these strips as a batch would send and bill, by the batch's own skip rules
    but without opening any file: cheap enough for the panel. Lip Sync reports the exact sum."""
    rules = Rules.of(scene, strips)
    frames: list[int] = []
    for strip in strips:
        try:
            frames.append(rules.frames(strip))
        except (export.ExportError, PlacementProblem):
            continue
    return Estimate(len(frames), sum(frames) / rules.fps, len(strips) - len(frames))


def selection_text(found: Estimate) -> str:
    """The panel's line about what Lip Sync would send now."""
    if not found.skipped:
        return f"{found.shots} shots selected, {found.seconds:.1f} s billable"
    shots = f"{found.shots} shot" + ("" if found.shots == 1 else "s")
    return f"{shots} to send, {found.seconds:.1f} s billable, {found.skipped} skipped"


def plan_seconds(plan: export.ExportPlan) -> float:
    """The seconds a job sends, which the API bills."""
    return (plan.end - plan.start) / plan.fps


def needs_confirmation(shots: int, seconds: float, limit: float) -> bool:
    """A batch (two shots or more) above the preference's limit asks first; one shot never."""
    return shots > 1 and seconds > limit


def confirmation(shots: int, seconds: float) -> str:
    return f"Send {shots} shots, {seconds:.1f} s of billable media, to Chamelaion lip sync?"


def skip_note(strip: Any, reason: str) -> str:
    """Why a strip of the batch was left out, naming it."""
    return f"Strip '{strip.name}' was skipped: {reason[:1].lower()}{reason[1:]}"


def record(label: str, skipped: list[str]) -> dict[str, Any]:
    """The batch's part of each job's `client` record: its id, its label, how many strips it
    skipped and their sentences (as many as fit a small budget, so every job carries them)."""
    notes = [note[:NOTE_LENGTH] for note in skipped]
    while notes and len(json.dumps(notes)) > NOTES_BYTES:
        notes.pop()
    return {"id": uuid.uuid4().hex, "label": label, "skipped": notes, "skipped_count": len(skipped)}


def label_now() -> str:
    return time.strftime("%d %b %H:%M:%S")


@dataclass
class Group:
    """The panel's rows of one batch (or one single job), in the order they are shown."""

    batch: dict[str, Any]
    jobs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def boxed(self) -> bool:
        """A batch is one box when it has two jobs or more, or a strip it skipped."""
        return bool(self.batch) and (len(self.jobs) > 1 or bool(self.batch.get("skipped_count")))

    def totals(self) -> dict[str, Any]:
        """Shots, billable seconds, done, running, failed (canceled counts too) and skipped."""
        states = [job.get("state", "") for job in self.jobs]
        return {
            "shots": len(self.jobs),
            "seconds": sum(float(job_client(job).get("seconds", 0.0)) for job in self.jobs),
            "done": states.count("completed"),
            "running": sum(state not in FINAL_STATES for state in states),
            "failed": sum(state in RETRYABLE_STATES for state in states),
            "skipped": int(self.batch.get("skipped_count", 0)),
        }


def job_client(job: dict[str, Any]) -> dict[str, Any]:
    client = job.get("client")
    return client if isinstance(client, dict) else {}


def batch_of(job: dict[str, Any]) -> dict[str, Any]:
    found = job_client(job).get("batch")
    return found if isinstance(found, dict) and found.get("id") else {}


def groups(jobs: list[dict[str, Any]]) -> list[Group]:
    """The rows grouped by batch, each group where its first row is and its jobs in timeline
    order; single jobs alone."""
    result: list[Group] = []
    by_id: dict[str, Group] = {}
    for job in jobs:
        batch = batch_of(job)
        group = by_id.get(batch.get("id", ""))
        if group is None:
            group = Group(batch)
            result.append(group)
            if batch:
                by_id[batch["id"]] = group
        group.jobs.append(job)
    for group in result:
        group.jobs.sort(key=lambda job: int(batch_of(job).get("shot", 0)))
    return result
