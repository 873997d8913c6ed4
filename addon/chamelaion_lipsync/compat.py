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
    """H.264 MP4 output; 5.0 wants media_type set before file_format accepts FFMPEG."""
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):
        settings.media_type = "VIDEO"
    settings.file_format = "FFMPEG"
    ffmpeg = scene.render.ffmpeg
    ffmpeg.format = "MPEG4"
    ffmpeg.codec = "H264"
    ffmpeg.constant_rate_factor = "HIGH"
    ffmpeg.audio_codec = "NONE"


@contextlib.contextmanager
def scene_override(context: Any, scene: Any) -> Iterator[None]:
    """Run operators against `scene` whatever the window shows."""
    with context.temp_override(scene=scene):
        yield


def scene_fps(scene: Any) -> float:
    return scene.render.fps / scene.render.fps_base


def blend_saved() -> bool:
    return bool(bpy.data.filepath)
