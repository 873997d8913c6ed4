"""Plan what a lip-sync job sends for the active picture strip, on the main thread and fast.

A take is a drop-in replacement. A movie strip whose timing is 1:1 with its file is not
rendered: the bridge cuts the source by `video_range` and the strip later switches to the
take ("switch"). Anything else is rendered raw in a background Blender (background.py) and
the take sits above the strip that shows it ("overlay"). Held frames are never sent.
"""

from __future__ import annotations

import os
import re
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


@dataclass(frozen=True)
class ExportPlan:
    """Everything a job and the later placement of its take need, fixed when Lip Sync runs."""

    reference_id: str
    scene: str  # the scene's name
    source_tag: str  # tag_of(the selected picture strip)
    source_name: str
    placement: str  # "switch" (the strip itself shows the take) | "overlay" (a strip above)
    cover_tag: str  # tag_of(the strip an overlay take sits directly above); source's for switch
    cover_channel: int
    start: int  # timeline frames [start, end) the take covers: content, never held frames
    end: int
    fps: float
    source_first: int  # switch: the file's frame index shown at `start`; 0 for overlay
    video_path: str  # switch: the movie file; overlay: where the render will be written
    audio_path: str  # where the mixdown will be written
    video_range: dict[str, float] | None  # switch: the bridge's cut of video_path
    warning: str  # '' or a sentence for the editor
    sounds: tuple[str, ...] = ()  # the dialogue's sound strips, by name
    picture: tuple[str, ...] = ()  # overlay: the cover first, then every strip feeding it
    check_rate: float = 0.0  # switch: the rate taken from Blender's record, checked by the export


def tag_of(strip: Any) -> str:
    """Our own uuid on the strip, created on first use (strip names change)."""
    if not strip.get(TAG):
        strip[TAG] = uuid.uuid4().hex
    return strip[TAG]


def own_tag(editor: Any, strip: Any) -> str:
    """tag_of, made new when another strip carries the same one (a duplicate copies custom
    properties): a job names one strip, the one it was made for."""
    tag = tag_of(strip)
    if any(other.get(TAG) == tag and other != strip for other in compat.all_strips(editor)):
        strip[TAG] = tag = uuid.uuid4().hex
    return tag


def file_stem(name: str) -> str:
    """`name` (a job's name, which may be a strip's free text) fit for a file name on any
    system: the characters no file name may hold become '_', and leading dots go."""
    return re.sub(r'[\\/:*?"<>|\x00-\x1f]', "_", name).lstrip(".") or "job"


def export_folder(reference_id: str) -> Path:
    """`//chamelaion/` beside the saved .blend, else a temporary folder."""
    if bpy.data.filepath:
        folder = Path(bpy.path.abspath("//chamelaion"))
    else:
        folder = Path(tempfile.gettempdir()) / "chamelaion-blender" / file_stem(reference_id)
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


def one_input_effects(editor: Any) -> list[Any]:
    """Every effect strip with one input (what effect_chain looks through)."""
    return [s for s in compat.all_strips(editor) if getattr(s, "input_count", 0) == 1]


def effect_chain(editor: Any, strip: Any, effects: list[Any] | None = None) -> list[Any]:
    """The unmuted one-input effects stacked on `strip` (a speed effect on it, a transform on
    that ...), lowest first; where two share an input, the one on the higher channel.
    `effects`: one_input_effects(editor), when it is known already (a batch reads it once)."""
    effects = one_input_effects(editor) if effects is None else effects
    chain: list[Any] = []
    current = strip
    while True:
        above = [e for e in effects if not e.mute and e.input_1 == current and e not in chain]
        if not above:
            return chain
        current = max(above, key=lambda e: e.channel)
        chain.append(current)


def fed_by(strip: Any) -> list[Any]:
    """`strip` and every strip it takes pixels from (effect inputs, recursively)."""
    found = [strip]
    for name in ("input_1", "input_2"):
        source = getattr(strip, name, None)
        if source is not None:
            found.extend(fed_by(source))
    return found


def movie_fps(strip: Any, fps: float, recorded: bool = False) -> float:
    """The movie's own rate, after refusing a missing file; the scene's rate for other strips.
    Reading it opens the file (~2.5 ms); `recorded` takes the rate Blender noted when the
    strip was made instead (stale if its path was changed since: the export checks it)."""
    if strip.type != "MOVIE":
        return fps
    path = bpy.path.abspath(strip.filepath)
    if not os.path.isfile(path):
        raise ExportError(
            f"The source file of strip '{strip.name}' is missing ({path}); "
            "relink it (Strip > Movie > File) and try again."
        )
    return recorded_fps(strip, fps) if recorded else strip.fps


def recorded_fps(strip: Any, fps: float) -> float:
    """The movie's rate as Blender noted it when the strip was made (no file is opened); the
    scene's rate for other strips."""
    if strip.type != "MOVIE":
        return fps
    return (strip.elements[0].orig_fps if len(strip.elements) else 0.0) or strip.fps


def is_one_to_one(strip: Any, chain: list[Any], rate: float, fps: float) -> bool:
    """True when timeline frame n shows file frame n + constant: the bridge can cut the file.
    Retiming keys are only counted (adding one headless crashes Blender)."""
    return (
        strip.type == "MOVIE"
        and len(strip.retiming_keys) == 0
        and not any(effect.type == "SPEED" for effect in chain)
        and not strip.use_reverse_frames
        and strip.strobe <= 1.0
        and abs(rate - fps) < 1e-3
    )


def rate_warning(strip: Any, rate: float, fps: float) -> str:
    """A movie at another rate than the scene is rendered as Blender plays it: say so."""
    if rate <= 0 or abs(rate - fps) < 1e-3:
        return ""
    return (
        f"Strip '{strip.name}' is {rate:g} fps in a {fps:g} fps scene, so the picture is sent "
        f"as Blender plays it (one movie frame per scene frame); set the scene to {rate:g} fps "
        "(Output Properties > Format) to send the movie itself."
    )


def content_range(strip: Any, cover: Any) -> tuple[int, int, str]:
    """The visible frames that show content, not a held first or last frame, within what the
    cover shows; with a sentence naming the held frames left out."""
    first, last = round(strip.frame_start), round(strip.frame_start) + strip.frame_duration
    shown = (
        max(strip.frame_final_start, cover.frame_final_start),
        min(strip.frame_final_end, cover.frame_final_end),
    )
    start, end = max(shown[0], first), min(shown[1], last)
    if start >= end:
        raise ExportError(
            f"Strip '{strip.name}' shows only held still frames ({shown[0]}-{shown[1] - 1}); "
            "trim it so moving picture is visible, then run Lip Sync again."
        )
    held = [(a, b) for a, b in ((shown[0], start), (end, shown[1])) if a < b]
    if not held:
        return start, end, ""
    spans = " and ".join(f"{a}-{b - 1}" if b - a > 1 else str(a) for a, b in held)
    return start, end, f"Frames {spans} hold a still and are not sent."


def unmuted(editor: Any, strip: Any, held_by: dict[str, Any], itself: bool = True) -> bool:
    """Not muted itself (checked only with `itself`), nor its channel, nor any meta around it."""
    while strip is not None:
        if (itself and strip.mute) or compat.channel_of(editor, strip, held_by).mute:
            return False
        strip, itself = held_by.get(strip.name), True
    return True


def own_files(strip: Any) -> set[str]:
    """The movie files the picture is made of: their sound is the original, not the dub."""
    if strip.type == "MOVIE":
        return {os.path.normpath(bpy.path.abspath(strip.filepath))}
    if strip.type == "META":
        return {path for child in strip.strips for path in own_files(child)}
    return set()


@dataclass(frozen=True)
class Sounds:
    """The sound strips a dub may come from, read once: a batch asks for each of its shots."""

    strips: list[tuple[Any, str]]  # each with its file, absolute and normalised
    held_by: dict[str, Any]
    only_selected: bool = False  # a batch where the editor selected sound strips

    @classmethod
    def of(cls, editor: Any, pictures: list[Any] | None = None) -> Sounds:
        """Every sound strip; with the batch's `pictures`, a selected sound strip that is not
        one of their own sounds makes every shot take its dub from the selected ones only."""
        found = [
            (s, os.path.normpath(bpy.path.abspath(s.sound.filepath)))
            for s in compat.all_strips(editor)
            if s.type == "SOUND" and s.sound is not None
        ]
        own = {path for picture in pictures or () for path in own_files(picture)}
        only = pictures is not None and any(s.select and path not in own for s, path in found)
        return cls(found, compat.holders(editor), only)

    def under(self, editor: Any, picture: Any, start: int, end: int) -> list[Any]:
        """The dub over [start, end): the selected sound strips there, else every audible one
        (not in a batch with selected sound strips); found inside metas too, never the
        picture's own sound."""
        own = own_files(picture)
        under = [
            s
            for s, path in self.strips
            if path not in own and s.frame_final_start < end and s.frame_final_end > start
        ]
        chosen = [s for s in under if s.select]
        if under and not chosen and self.only_selected:
            raise ExportError(
                "None of the selected sound strips is under it; select its dubbed dialogue too "
                "(or no sound strip, to send what is audible there), then run Lip Sync again."
            )
        chosen = chosen or [s for s in under if unmuted(editor, s, self.held_by)]
        if not chosen:
            raise ExportError(
                "No sound under the picture strip: add the dubbed dialogue as a sound strip over "
                "it (and select it), then run Lip Sync again."
            )
        return chosen


@dataclass(frozen=True)
class Reach:
    """What a strip's job covers: whether the bridge can cut its file, the strip whose picture
    is sent, and the timeline frames [start, end)."""

    switch: bool
    cover: Any
    start: int
    end: int
    held: str  # '' or the sentence naming held frames left out


def reach(editor: Any, strip: Any, rate: float, fps: float, effects: list[Any] | None) -> Reach:
    chain = effect_chain(editor, strip, effects)
    switch = is_one_to_one(strip, chain, rate, fps)
    cover = strip if switch or not chain else chain[-1]
    return Reach(switch, cover, *content_range(strip, cover))


def plan(
    context: Any,
    scene: Any,
    strip: Any,
    reference_id: str,
    recorded_rate: bool = False,
    sounds: Sounds | None = None,
    effects: list[Any] | None = None,
) -> ExportPlan:
    """Check the strip and the dialogue and fix the job's numbers; writes nothing but the
    export folder (and our tag on the strips). `recorded_rate`: see movie_fps (a batch of 50
    files would open each on the main thread); `sounds` and `effects`: read once for a batch."""
    if strip.type not in PICTURE_TYPES:
        raise ExportError(
            f"Strip '{strip.name}' is not a picture; select a movie strip and run Lip Sync again."
        )
    editor = scene.sequence_editor
    fps = compat.scene_fps(scene)
    rate = movie_fps(strip, fps, recorded_rate)
    span = reach(editor, strip, rate, fps, effects)
    switch, cover, start, end = span.switch, span.cover, span.start, span.end
    dub = (sounds or Sounds.of(editor)).under(editor, strip, start, end)
    folder = export_folder(reference_id)
    common = {
        "reference_id": reference_id,
        "scene": scene.name,
        "source_tag": own_tag(editor, strip),
        "source_name": strip.name,
        "cover_tag": own_tag(editor, cover),
        "cover_channel": cover.channel,
        "start": start,
        "end": end,
        "fps": fps,
        "audio_path": str(folder / f"{file_stem(reference_id)}.audio.wav"),
        "warning": " ".join(w for w in (span.held, rate_warning(strip, rate, fps)) if w),
        "sounds": tuple(s.name for s in dub),
        "picture": tuple(dict.fromkeys(s.name for s in fed_by(cover))),
    }
    if not switch:
        video = str(folder / f"{file_stem(reference_id)}.video.mp4")
        return ExportPlan(
            placement="overlay", source_first=0, video_path=video, video_range=None, **common
        )
    first = start - round(strip.frame_start) + strip.animation_offset_start
    return ExportPlan(
        placement="switch",
        source_first=first,
        video_path=os.path.normpath(bpy.path.abspath(strip.filepath)),
        video_range={"start_seconds": first / fps, "duration_seconds": (end - start) / fps},
        check_rate=rate if recorded_rate else 0.0,
        **common,
    )
