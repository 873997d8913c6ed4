"""The few API differences between Blender 4.2 LTS and 5.0, in one place."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import bpy


def strips(editor: Any) -> Any:
    """Top-level strips of a sequence editor (`strips` since 4.4, `sequences` before)."""
    return editor.strips if hasattr(editor, "strips") else editor.sequences


def all_strips(editor: Any) -> Any:
    """Every strip, meta contents included."""
    return editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all


def sequencer_scene(context: Any) -> Any:
    """The scene the Sequencer shows: 5.0 has one per workspace, older versions the active."""
    workspace = getattr(context, "workspace", None)
    scene = getattr(workspace, "sequencer_scene", None) if workspace else None
    return scene or context.scene


def ensure_sequencer_scene(context: Any, scene: Any) -> None:
    """Headless 5.0 needs the workspace's sequencer scene set before sequencer operators run."""
    workspace = getattr(context, "workspace", None)
    if getattr(workspace, "sequencer_scene", False) is None:
        workspace.sequencer_scene = scene


def set_ffmpeg_output(scene: Any) -> None:
    """8-bit RGB H.264 in MP4 at high quality, no sound, one file; 5.0 wants media_type set
    before file_format accepts FFMPEG."""
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):
        settings.media_type = "VIDEO"
    settings.file_format = "FFMPEG"
    settings.color_mode = "RGB"
    settings.color_depth = "8"
    ffmpeg = scene.render.ffmpeg
    ffmpeg.format = "MPEG4"
    ffmpeg.codec = "H264"
    ffmpeg.constant_rate_factor = "HIGH"
    ffmpeg.ffmpeg_preset = "GOOD"
    ffmpeg.use_autosplit = False
    ffmpeg.audio_codec = "NONE"


def holders(editor: Any) -> dict[str, Any]:
    """Strip name -> the meta strip that directly holds it (top-level strips are absent)."""
    metas = [strip for strip in all_strips(editor) if strip.type == "META"]
    return {child.name: meta for meta in metas for child in meta.strips}


def channel_of(editor: Any, strip: Any, held_by: dict[str, Any]) -> Any:
    """The channel a strip sits in: its meta's own channels inside a meta."""
    holder = held_by.get(strip.name)
    return (holder.channels if holder is not None else editor.channels)[strip.channel]


def fcurves(owner: Any) -> list[Any]:
    """The F-curves animating `owner` (layered actions since 4.4, the only kind in 5.0)."""
    animation = owner.animation_data
    action = animation.action if animation else None
    if action is None:
        return []
    if not hasattr(action, "layers"):
        return list(action.fcurves)
    return [
        curve
        for layer in action.layers
        for strip in layer.strips
        for bag in strip.channelbags
        if bag.slot == animation.action_slot
        for curve in bag.fcurves
    ]


LOOK_GROUPS = ("transform.", "crop.", "modifiers[")  # a strip's animatable look, by path


def strip_curves(scene: Any, strip: Any) -> list[tuple[str, Any]]:
    """(setting, F-curve) for each curve animating `strip`, the setting's path from the strip."""
    prefix = strip.path_from_id() + "."
    return [
        (curve.data_path.removeprefix(prefix), curve)
        for curve in fcurves(scene)
        if curve.data_path.startswith(prefix)
    ]


@contextlib.contextmanager
def scene_override(context: Any, scene: Any) -> Iterator[None]:
    """Run operators against `scene` whatever the window shows; 5.0's sequencer operators act
    on the workspace's sequencer scene, so that is `scene` meanwhile too."""
    workspace = getattr(context, "workspace", None)
    switch = hasattr(workspace, "sequencer_scene") and workspace.sequencer_scene != scene
    shown = workspace.sequencer_scene if switch else None
    if switch:  # also when it shows none: 5.0's operators crash on a missing one
        workspace.sequencer_scene = scene
    try:
        with context.temp_override(scene=scene):
            yield
    finally:
        if switch:
            workspace.sequencer_scene = shown


def scene_fps(scene: Any) -> float:
    return scene.render.fps / scene.render.fps_base


def online_access() -> bool:
    """Blender's "Allow Online Access" (one place, so tests can stand in for the user)."""
    return bool(getattr(bpy.app, "online_access", True))
