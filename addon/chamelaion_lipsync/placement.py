"""Put a finished job's take where its source is now, from the job's own record (the bridge
keeps it), so a take lands after undo, a reopen or a move of the source."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bpy

from . import compat, takes
from .takes import PlacementProblem, Take


def scene_of(tag: str, scene_name: str) -> Any | None:
    """The scene holding the tagged strip (scenes get renamed), else the one of that name."""
    for scene in bpy.data.scenes:
        if scene.sequence_editor and takes.find_tagged(scene.sequence_editor, tag):
            return scene
    return bpy.data.scenes.get(scene_name)


def strip_path(output: Path) -> str:
    """Relative to the .blend when the take sits beside it, so the project moves whole."""
    if bpy.data.filepath and Path(bpy.data.filepath).parent in output.parents:
        return bpy.path.relpath(str(output))
    return str(output)


def place(job: dict[str, Any]) -> tuple[Any, str]:
    """Place the take of a completed job; returns the strip showing it and a warning or ''."""
    client = job.get("client") or {}
    output = Path(job.get("output_path") or "")
    name = client.get("name", "?")
    if not output.is_file():
        raise PlacementProblem(
            f"The take file {output} is missing; put it back and click Place Take, or run "
            "Lip Sync again (a finished job cannot fetch its result twice)."
        )
    overlay = client.get("placement") == "overlay"
    tag = client["cover"] if overlay else client["source"]
    scene = scene_of(tag, client.get("scene", ""))
    editor = scene.sequence_editor if scene else None
    name_then = client.get("cover_name" if overlay else "name", "")
    tagged = takes.find_source(editor, tag, name_then) if editor is not None else None
    if tagged is None:
        raise PlacementProblem(
            f"Strip '{name}' that this take replaces is gone from the file; undo its deletion "
            "and click Place Take."
        )
    length = int(client["end"]) - int(client["start"])
    take = Take(
        filepath=strip_path(output),
        absolute=str(output),
        first=int(client["first"]),
        length=length,
        reference_id=job["reference_id"],
        request_id=job.get("request_id") or "",
    )
    if not overlay:
        if tagged.type != "MOVIE":
            raise PlacementProblem(f"Strip '{name}' is no longer a movie strip.")
        warning = takes.add_to_source(editor, tagged, take)
        strip = tagged
    else:
        strip = takes.add_over_cover(scene, tagged, take, name=job["reference_id"])
        warning = ""
    return strip, " ".join(filter(None, [warning, check_take(scene, strip, length)]))


def check_take(scene: Any, strip: Any, length: int) -> str:
    """A sentence when the take's file would not line up with what was sent."""
    fps, take_fps = compat.scene_fps(scene), strip.fps  # reading fps opens the file: once
    problems = []
    if take_fps and abs(take_fps - fps) > 1e-3:
        problems.append(f"it is {take_fps:g} fps, the scene {fps:g} fps")
    if strip.frame_duration != length:
        problems.append(f"it is {strip.frame_duration} frames long, {length} were sent")
    if not problems:
        return ""
    path = os.path.basename(strip.filepath)
    return f"Take {path} may not line up: {'; '.join(problems)}."
