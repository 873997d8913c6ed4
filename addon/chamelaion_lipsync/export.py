"""Turn the active picture strip and the dialogue into the two files a job needs.

An untouched movie strip is not rendered: the bridge cuts its source by `video_range`.
Anything else is rendered by Blender over exactly the strip's visible frames.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpy

from . import compat

PICTURE_TYPES = {"MOVIE", "IMAGE", "SCENE", "META", "MOVIECLIP", "MASK"}
TAG = "chamelaion_uuid"


class ExportError(Exception):
    """Why this strip cannot be sent, as one sentence for the editor."""


@dataclass
class Export:
    video_path: str
    audio_path: str
    video_range: dict[str, float] | None
    frame_start: int
    frame_duration: int
    channel: int
    fps: float
    rendered: bool


def tag_of(strip: Any) -> str:
    """Our own uuid on the strip, created on first use (strip names change)."""
    if not strip.get(TAG):
        strip[TAG] = uuid.uuid4().hex
    return strip[TAG]


def export_folder(reference_id: str) -> Path:
    """`//chamelaion/` beside the saved .blend, else a temporary folder."""
    if bpy.data.filepath:
        folder = Path(bpy.path.abspath("//chamelaion"))
    else:
        folder = Path(tempfile.gettempdir()) / "chamelaion-blender" / reference_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def picture_strip(scene: Any) -> Any:
    """The active strip if it is a picture, else a sentence telling what to select."""
    editor = scene.sequence_editor
    strip = editor.active_strip if editor else None
    if strip is None or strip.type not in PICTURE_TYPES:
        raise ExportError(
            "Select a movie strip and make it active (click it last), then run Lip Sync again."
        )
    return strip


def effects_on(editor: Any, strip: Any) -> list[Any]:
    """Effect strips that take `strip` as an input, directly or through other effects."""
    found: list[Any] = []
    frontier = [strip]
    candidates = [s for s in compat.all_strips(editor) if hasattr(s, "input_1")]
    while frontier:
        current = frontier.pop()
        for effect in candidates:
            inputs = (getattr(effect, "input_1", None), getattr(effect, "input_2", None))
            if current in inputs and effect not in found and not effect.mute:
                found.append(effect)
                frontier.append(effect)
    return found


def is_untouched(editor: Any, strip: Any, scene: Any, movie_fps: float) -> bool:
    """True when the bridge can cut the source file itself and get the same picture."""
    if strip.type != "MOVIE" or len(strip.modifiers) or effects_on(editor, strip):
        return False
    t, c = strip.transform, strip.crop
    return (
        (t.offset_x, t.offset_y, t.rotation) == (0, 0, 0)
        and (t.scale_x, t.scale_y) == (1, 1)
        and (c.min_x, c.max_x, c.min_y, c.max_y) == (0, 0, 0, 0)
        and getattr(strip, "speed_factor", 1.0) == 1.0
        and strip.color_saturation == 1.0
        and strip.color_multiply == 1.0
        and not (strip.use_flip_x or strip.use_flip_y or strip.use_reverse_frames)
        and strip.strobe <= 1.0
        and abs(movie_fps - compat.scene_fps(scene)) < 1e-3
    )


def check_source(strip: Any, scene: Any) -> float:
    """Refuse a missing source or a frame-rate mismatch with the fix in the sentence; returns
    the movie's fps (reading it opens the file, so read it once)."""
    movie_fps = 0.0
    if strip.type == "MOVIE":
        path = bpy.path.abspath(strip.filepath)
        if not os.path.isfile(path):
            raise ExportError(
                f"The source file of strip '{strip.name}' is missing ({path}); "
                "relink it (Strip > Movie > File) and try again."
            )
        movie_fps, fps = strip.fps, compat.scene_fps(scene)
        if movie_fps > 0 and abs(movie_fps - fps) > 1e-3:
            raise ExportError(
                f"Strip '{strip.name}' is {movie_fps:g} fps but the scene is {fps:g} fps, so "
                "picture and dubbed sound would drift; set the scene's frame rate to "
                f"{movie_fps:g} (Output Properties > Format) or use a {fps:g} fps copy."
            )
    return movie_fps


def sound_strips(scene: Any, picture: Any) -> list[Any]:
    """The dialogue: selected sound strips, else every audible one; never the movie's own."""
    own = bpy.path.abspath(picture.filepath) if picture.type == "MOVIE" else None
    sounds = [
        s
        for s in compat.strips(scene.sequence_editor)
        if s.type == "SOUND" and not (own and s.sound and bpy.path.abspath(s.sound.filepath) == own)
    ]
    chosen = [s for s in sounds if s.select] or [s for s in sounds if not s.mute]
    start, end = picture.frame_final_start, picture.frame_final_end
    audible = [s for s in chosen if s.frame_final_start < end and s.frame_final_end > start]
    if not audible:
        raise ExportError(
            "No sound under the picture strip: add the dubbed dialogue as a sound strip over "
            "it (and select it), then run Lip Sync again."
        )
    return audible


def mixdown(context: Any, scene: Any, keep: list[Any], start: int, end: int, path: Path) -> None:
    """Mix only `keep` over [start, end) to 16-bit PCM WAV, then restore the scene."""
    keep_names = {s.name for s in keep}
    sounds = [s for s in compat.all_strips(scene.sequence_editor) if s.type == "SOUND"]
    saved_mute = {s.name: s.mute for s in sounds}
    saved_range = (scene.frame_start, scene.frame_end)
    try:
        for s in sounds:
            s.mute = s.name not in keep_names
        scene.frame_start, scene.frame_end = start, end - 1
        with compat.scene_override(context, scene):
            result = bpy.ops.sound.mixdown(
                filepath=str(path),
                check_existing=False,
                relative_path=False,
                container="WAV",
                codec="PCM",
                format="S16",
                accuracy=16,
            )
        if "FINISHED" not in result:
            raise ExportError("Blender could not mix the dialogue down to a WAV file.")
    finally:
        for s in sounds:
            s.mute = saved_mute[s.name]
        scene.frame_start, scene.frame_end = saved_range


def render_picture(context: Any, scene: Any, strip: Any, start: int, end: int, path: Path) -> None:
    """Render just this strip (and the effects on it) over [start, end) to an H.264 MP4."""
    editor = scene.sequence_editor
    keep = {strip.name, *(e.name for e in effects_on(editor, strip))}
    everything = list(compat.all_strips(editor))
    saved_mute = {s.name: s.mute for s in everything}
    render = scene.render
    saved = (scene.frame_start, scene.frame_end, render.filepath, render.use_sequencer)
    settings = render.image_settings
    saved_format = (getattr(settings, "media_type", None), settings.file_format)
    try:
        for s in everything:
            s.mute = s.name not in keep and s.type != "META"
        scene.frame_start, scene.frame_end = start, end - 1
        render.filepath = str(path)
        render.use_sequencer = True
        render.use_file_extension = False
        compat.set_ffmpeg_output(scene)
        with compat.scene_override(context, scene):
            bpy.ops.render.render(animation=True, scene=scene.name)
    finally:
        for s in everything:
            s.mute = saved_mute[s.name]
        scene.frame_start, scene.frame_end, render.filepath, render.use_sequencer = saved
        if saved_format[0] is not None:
            settings.media_type = saved_format[0]
        settings.file_format = saved_format[1]
    if not path.is_file():
        raise ExportError(f"Blender did not render strip '{strip.name}'; see the console.")


def export(context: Any, scene: Any, strip: Any, reference_id: str) -> Export:
    """Write the job's inputs; the untouched case writes only the audio."""
    movie_fps = check_source(strip, scene)
    start, duration = int(strip.frame_final_start), int(strip.frame_final_duration)
    end = start + duration
    fps = compat.scene_fps(scene)
    folder = export_folder(reference_id)
    sounds = sound_strips(scene, strip)
    audio = folder / f"{reference_id}.audio.wav"
    mixdown(context, scene, sounds, start, end, audio)
    if is_untouched(scene.sequence_editor, strip, scene, movie_fps):
        first = round(strip.frame_offset_start) + round(getattr(strip, "animation_offset_start", 0))
        return Export(
            video_path=bpy.path.abspath(strip.filepath),
            audio_path=str(audio),
            video_range={"start_seconds": first / fps, "duration_seconds": duration / fps},
            frame_start=start,
            frame_duration=duration,
            channel=strip.channel,
            fps=fps,
            rendered=False,
        )
    video = folder / f"{reference_id}.video.mp4"
    render_picture(context, scene, strip, start, end, video)
    return Export(str(video), str(audio), None, start, duration, strip.channel, fps, True)
