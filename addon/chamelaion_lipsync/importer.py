"""Put a finished take on the timeline: same first frame and length as the source, on the
lowest channel above it that is free over that range. Nothing else moves."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import bpy

from . import compat
from .export import TAG

MAX_CHANNEL = 128


class ImportProblem(Exception):
    """The result cannot be placed; one sentence for the panel."""


def find_source(scene: Any, job: Any) -> Any | None:
    """The source strip by our uuid tag, else by its name at queue time."""
    editor = scene.sequence_editor
    if editor is None:
        return None
    for strip in compat.all_strips(editor):
        if job.source_tag and strip.get(TAG) == job.source_tag:
            return strip
    return compat.all_strips(editor).get(job.source_name)


def free_channel(scene: Any, above: int, start: int, end: int) -> int:
    """The lowest channel above `above` with nothing overlapping [start, end)."""
    busy = {
        s.channel
        for s in compat.strips(scene.sequence_editor)
        if s.frame_final_start < end and s.frame_final_end > start
    }
    for channel in range(above + 1, MAX_CHANNEL + 1):
        if channel not in busy:
            return channel
    raise ImportProblem(f"No free channel above channel {above} for frames {start}-{end - 1}.")


def keep_with_blend(path: Path) -> str:
    """Copy the result into `//chamelaion/` when the file is saved, and return the path the
    strip should use (relative when possible so the project stays portable)."""
    if not bpy.data.filepath:
        return str(path)
    folder = Path(bpy.path.abspath("//chamelaion"))
    target = folder / path.name
    if path.resolve() != target.resolve():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)
    return bpy.path.relpath(str(target))


def import_result(scene: Any, job: Any) -> tuple[Any, str]:
    """Add the take; returns the new strip and a warning sentence ('' when all matches)."""
    output = Path(job.output_path)
    if not output.is_file():
        raise ImportProblem(f"The result file {output} is missing; retry the job.")
    if scene.sequence_editor is None:
        scene.sequence_editor_create()
    source = find_source(scene, job)
    start, duration = job.frame_start, job.frame_duration
    above = source.channel if source else job.channel
    channel = free_channel(scene, above, start, start + duration)
    filepath = keep_with_blend(output)
    strip = compat.strips(scene.sequence_editor).new_movie(
        name=job.reference_id[:63], filepath=filepath, channel=channel, frame_start=int(start)
    )
    strip["chamelaion_reference_id"] = job.reference_id
    strip["chamelaion_request_id"] = job.request_id
    warning = check_take(scene, strip, duration)
    if strip.frame_final_duration > duration:
        strip.frame_final_duration = duration
    if source is not None and job.mute_source:
        source.mute = True
    return strip, warning


def check_take(scene: Any, strip: Any, duration: int) -> str:
    """Report a take that would not line up with its source."""
    fps = compat.scene_fps(scene)
    problems = []
    if strip.fps and abs(strip.fps - fps) > 1e-3:
        problems.append(f"it is {strip.fps:g} fps, the scene {fps:g} fps")
    if strip.frame_final_duration != duration:
        problems.append(f"it is {strip.frame_final_duration} frames long, the source {duration}")
    if not problems:
        return ""
    return f"Take '{strip.name}' may not line up: {'; '.join(problems)}."
