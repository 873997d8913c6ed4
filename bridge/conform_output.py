"""Writing a conform's result: the input timeline plus a "Lip Sync" video track directly above
the picture track, each take at exactly its shot's place, through OpenTimelineIO's adapters.

A shot without a take (failed, or one that could not be conformed) is a gap of the same
length whose marker names why, so the editor sees where and why at a glance. OUT is written
whole or not at all: to a temporary name beside it, then renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import opentimelineio as otio

from bridge.errors import InputError

if TYPE_CHECKING:
    from bridge.timeline import Plan, Shot

TRACK_NAME = "Lip Sync"
METADATA_KEY = "chamelaion"


@dataclass(frozen=True)
class Take:
    """A shot's lip-synced take: the file and the ids that tie it to its job."""

    path: Path
    reference_id: str
    request_id: str | None


@dataclass(frozen=True)
class Missing:
    """Why a shot has no take: one sentence, shown as the gap's marker."""

    reason: str
    reference_id: str = ""
    request_id: str | None = None


Outcome = Take | Missing


class OutputError(InputError):
    """OUT cannot be written: its format can't hold the result (exit 4 before any job) or
    its disk refused it (exit 4 after waiting; the jobs stay for the same command again)."""


def adapter_for(out: Path) -> str:
    """The OpenTimelineIO adapter that writes OUT's format; OutputError for an unknown one."""
    try:
        adapter = otio.adapters.from_filepath(str(out))
    except otio.exceptions.OTIOError:
        suffixes = sorted(
            f".{suffix}"
            for name in otio.adapters.available_adapter_names()
            for suffix in otio.adapters.from_name(name).suffixes
        )
        raise OutputError(
            f"OpenTimelineIO writes no format with the extension of {out.name}; name the "
            f"output with one of {', '.join(suffixes)} (.otio keeps everything)."
        ) from None
    return adapter.name


def lipsync_timeline(plan: Plan, outcomes: Mapping[int, Outcome]) -> otio.schema.Timeline:
    """A copy of the plan's timeline with the "Lip Sync" track above its picture track.

    `outcomes` maps a shot's position to its take or to why it has none; a shot missing
    from it (not conformed yet) is a plain gap, a shot with a problem a gap naming it.
    """
    timeline = plan.timeline.deepcopy()
    track = otio.schema.Track(name=TRACK_NAME, kind=otio.schema.TrackKind.Video)
    # Shown through the picture track's own trim (an EDL read at the hour has one), so a
    # take sits at its shot's frame whether a reader goes by the track's times or the stack's.
    track.source_range = timeline.tracks[plan.track_index].source_range
    cursor = 0
    for shot in sorted(plan.shots, key=lambda s: s.record_start):
        if shot.record_start > cursor:
            track.append(otio.schema.Gap(source_range=_frames(0, shot.record_start - cursor, plan)))
        outcome = outcomes.get(shot.position)
        if outcome is None and shot.problem:
            outcome = Missing(shot.problem, shot.reference_id)
        track.append(_item(shot, outcome, plan))
        cursor = max(cursor, shot.record_start + shot.frames)
    timeline.tracks.insert(plan.track_index + 1, track)
    return timeline


def _frames(start: int, count: int, plan: Plan) -> otio.opentime.TimeRange:
    return otio.opentime.TimeRange(
        otio.opentime.RationalTime(start, plan.rate), otio.opentime.RationalTime(count, plan.rate)
    )


def _item(shot: Shot, outcome: Outcome | None, plan: Plan) -> otio.core.Item:
    """The take's clip at the shot's length, or a gap of that length (with the reason)."""
    whole = _frames(0, shot.frames, plan)
    if isinstance(outcome, Take):
        reference = otio.schema.ExternalReference(
            target_url=str(outcome.path.resolve()), available_range=whole
        )
        clip = otio.schema.Clip(name=shot.name, media_reference=reference, source_range=whole)
        clip.metadata[METADATA_KEY] = {
            "reference_id": outcome.reference_id,
            "request_id": outcome.request_id,
        }
        return clip
    gap = otio.schema.Gap(source_range=whole)
    if isinstance(outcome, Missing):
        gap.markers.append(
            otio.schema.Marker(
                name=outcome.reason, marked_range=whole, color=otio.schema.MarkerColor.RED
            )
        )
        gap.metadata[METADATA_KEY] = {
            "reference_id": outcome.reference_id or shot.reference_id,
            "request_id": outcome.request_id,
            "error": outcome.reason,
        }
    return gap


def check_writable(plan: Plan, out: Path) -> None:
    """Render the would-be result (all gaps) and write it to a scratch file beside OUT, then
    drop it: a format that cannot hold it (a CMX 3600 EDL has one video track) or a folder
    that can't be written is refused before anything is paid."""
    scratch = _scratch_name(out)
    try:
        _write(lipsync_timeline(plan, {}), scratch, out)
    except OSError as exc:
        raise _write_error(out, exc) from None
    finally:
        _drop(scratch)


def write_output(plan: Plan, outcomes: Mapping[int, Outcome], out: Path) -> Path:
    """Write OUT whole or not at all: through our own file handle to a temporary name,
    flushed to the disk, then renamed over OUT; a failure leaves an earlier OUT untouched."""
    scratch = _scratch_name(out)
    try:
        _write(lipsync_timeline(plan, outcomes), scratch, out)
        os.replace(scratch, out)
    except OSError as exc:
        raise _write_error(out, exc) from None
    finally:
        _drop(scratch)
    return out


def _write(timeline: otio.schema.Timeline, path: Path, out: Path) -> None:
    """Write the timeline in OUT's format to `path`, every byte of it on the disk.

    OpenTimelineIO's own file writer does not report a full disk, so a format that renders
    to a string is written through our handle (a short write raises); bundles (.otioz,
    .otiod) are written by their adapter, which raises through Python's file calls.
    """
    adapter = adapter_for(out)
    try:
        if not otio.adapters.from_name(adapter).has_feature("write_to_string"):
            otio.adapters.write_to_file(timeline, str(path), adapter_name=adapter)
            return
        text = otio.adapters.write_to_string(timeline, adapter_name=adapter)
    except OSError:
        raise
    except Exception as exc:  # adapters raise anything from OTIOError to AttributeError
        raise OutputError(
            f"{out.name} cannot hold the result as {adapter} ({_detail(exc)}); name the "
            "output .otio instead, which keeps everything."
        ) from None
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _write_error(out: Path, exc: OSError) -> OutputError:
    """A failed write as one sentence; the jobs are kept, so the same command writes OUT."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(
            f"The disk holding {out.parent} is full, so {out.name} was not written; free "
            "space and run the same command again."
        )
    return OutputError(
        f"{out} cannot be written ({exc.strerror or _detail(exc)}); choose another --out or "
        "make its folder writable, and run the same command again."
    )


def _drop(scratch: Path) -> None:
    """Remove a scratch file if it is there (a read-only folder never got one)."""
    with contextlib.suppress(OSError):
        scratch.unlink(missing_ok=True)


def _scratch_name(out: Path) -> Path:
    """A hidden name beside OUT that keeps its extension (the adapters look at it)."""
    return out.with_name(f".{out.stem}.{uuid.uuid4().hex[:8]}.part{out.suffix}")


def _detail(exc: Exception) -> str:
    return " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
