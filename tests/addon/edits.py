"""The edits of the drop-in suite: each builds, in an empty scene, a shot as an editor would
cut and dress it, and says which strip Lip Sync runs on and which frames to compare."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpy

from tests.addon.conftest import shot, strips

WIDTH, HEIGHT = 320, 240
SHOT = (10, 31, 53)  # first, middle and last visible frame of the default shot


@dataclass(frozen=True)
class Media:
    """The footage every edit cuts from."""

    clip: Path  # WIDTH x HEIGHT at 24 fps, 60 frames, each carrying its index
    frames: list[Path]  # the same clip as numbered PNG files
    dub: Path  # 3 s of dialogue


@dataclass(frozen=True)
class Edit:
    """One built edit: what Lip Sync runs on and what must look the same afterwards."""

    picture: Any  # the strip Lip Sync runs on
    frames: tuple[int, ...]  # the frames whose final render must not change
    preview_percentage: int | None = None  # the editor previews at this % while clicking


Builder = Callable[[Any, Media], Edit]
EDITS: dict[str, Builder] = {}


def edit(name: str) -> Callable[[Builder], Builder]:
    """Register a builder under the name its test id shows."""

    def register(builder: Builder) -> Builder:
        EDITS[name] = builder
        return builder

    return register


def prepare(scene: Any) -> None:
    """An editor's scene: output at the clip's size as 8-bit RGB PNG, Standard view, and (in
    5.0, where each workspace has its own) the workspace's sequencer scene is this one."""
    render = scene.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = WIDTH, HEIGHT, 100
    render.use_sequencer = True
    render.image_settings.file_format = "PNG"
    render.image_settings.color_mode = "RGB"
    render.image_settings.color_depth = "8"
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    workspace = bpy.context.workspace
    if workspace is not None and hasattr(workspace, "sequencer_scene"):
        workspace.sequencer_scene = scene


def build(name: str, scene: Any, media: Media) -> Edit:
    """Build the named edit in an empty scene and select as the editor would before clicking
    Lip Sync: the picture strip active, the dub selected, nothing else."""
    prepare(scene)
    made = EDITS[name](scene, media)
    editor = scene.sequence_editor
    for strip in strips(scene):
        strip.select = strip == made.picture or strip.type == "SOUND"
    editor.active_strip = made.picture
    return made


def add_effect(
    scene: Any, name: str, kind: str, channel: int, span: tuple[int, int], **inputs: Any
) -> Any:
    """An effect strip over frames [start, end) (5.0 takes a length, earlier an end frame)."""
    start, end = span
    extent = {"length": end - start} if bpy.app.version >= (5, 0) else {"frame_end": end}
    return strips(scene).new_effect(name, kind, channel, start, **extent, **inputs)


def over(strip: Any) -> tuple[int, int]:
    return strip.frame_final_start, strip.frame_final_end


def grade(strip: Any, bright: float = 6.0, contrast: float = 12.0) -> None:
    modifier = strip.modifiers.new("grade", "BRIGHT_CONTRAST")
    modifier.bright, modifier.contrast = bright, contrast


@edit("plain-trimmed")
def plain(scene: Any, media: Media) -> Edit:
    movie, _ = shot(scene, media.clip, media.dub)
    return Edit(movie, SHOT)


@edit("strip-modifiers")
def modifiers(scene: Any, media: Media) -> Edit:
    movie, _ = shot(scene, media.clip, media.dub)
    balance = movie.modifiers.new("balance", "COLOR_BALANCE").color_balance
    balance.lift, balance.gamma, balance.gain = (1.05, 1.0, 0.95), (1.0, 1.1, 1.0), (1.3, 1.0, 0.8)
    curves = movie.modifiers.new("curves", "CURVES").curve_mapping
    curves.curves[3].points.new(0.5, 0.65)
    curves.update()
    grade(movie, bright=8, contrast=20)
    movie.color_saturation, movie.color_multiply = 1.4, 0.9
    return Edit(movie, SHOT)


@edit("own-transform-crop-flip")
def transformed(scene: Any, media: Media) -> Edit:
    movie, _ = shot(scene, media.clip, media.dub)
    movie.channel = 2
    add_effect(scene, "backdrop", "COLOR", 1, (1, 80)).color = (0.05, 0.1, 0.4)
    movie.transform.scale_x = movie.transform.scale_y = 0.75
    movie.transform.offset_x, movie.transform.offset_y = 24, -12
    movie.transform.rotation = math.radians(6)
    movie.crop.min_x, movie.crop.max_y = 16, 10
    movie.use_flip_x = True
    return Edit(movie, SHOT)


@edit("opacity-add-over-colour")
def added(scene: Any, media: Media) -> Edit:
    movie, _ = shot(scene, media.clip, media.dub)
    movie.channel = 2
    add_effect(scene, "backdrop", "COLOR", 1, (1, 80)).color = (0.25, 0.1, 0.3)
    movie.blend_type, movie.blend_alpha = "ADD", 0.6
    return Edit(movie, SHOT)


@edit("blur-effect-on-it")
def blurred(scene: Any, media: Media) -> Edit:
    movie, _ = shot(scene, media.clip, media.dub)
    blur = add_effect(scene, "blur", "GAUSSIAN_BLUR", 2, over(movie), input1=movie)
    blur.size_x = blur.size_y = 3
    return Edit(movie, SHOT)


@edit("adjustment-layer-brightness")
def adjusted(scene: Any, media: Media) -> Edit:
    movie, _ = shot(scene, media.clip, media.dub)
    layer = add_effect(scene, "grade", "ADJUSTMENT", 2, (1, 80))
    grade(layer, bright=30, contrast=0)
    return Edit(movie, SHOT)


@edit("subtitle-above")
def subtitled(scene: Any, media: Media) -> Edit:
    movie, _ = shot(scene, media.clip, media.dub)
    text = add_effect(scene, "subtitle", "TEXT", 2, over(movie))
    text.text = "Where were you?"
    text.font_size, text.location = 24, (0.5, 0.1)
    text.use_box, text.box_color = True, (0.0, 0.0, 0.0, 0.6)
    return Edit(movie, SHOT)


@edit("colour-multiply-above")
def multiplied(scene: Any, media: Media) -> Edit:
    movie, _ = shot(scene, media.clip, media.dub)
    tint = add_effect(scene, "warm", "COLOR", 2, (1, 80))
    tint.color, tint.blend_type = (1.0, 0.75, 0.5), "MULTIPLY"
    return Edit(movie, SHOT)


@edit("colour-low-opacity-above")
def tinted(scene: Any, media: Media) -> Edit:
    movie, _ = shot(scene, media.clip, media.dub)
    tint = add_effect(scene, "cool", "COLOR", 2, (1, 80))
    tint.color, tint.blend_type, tint.blend_alpha = (0.1, 0.4, 1.0), "ALPHA_OVER", 0.25
    return Edit(movie, SHOT)


@edit("hold-before-content")
def hold_before(scene: Any, media: Media) -> Edit:
    movie, sound = shot(scene, media.clip, media.dub, start=10, offset=0, tail=10)
    movie.frame_offset_start = -8  # frames 2-9 hold the first frame
    sound.frame_start = movie.frame_final_start
    return Edit(movie, (4, 10, 30, 59))


@edit("hold-after-content")
def hold_after(scene: Any, media: Media) -> Edit:
    movie, _ = shot(scene, media.clip, media.dub, start=10, offset=6, tail=-12)
    return Edit(movie, (10, 40, 63, 70))  # the content ends at 63, holds to 75


@edit("starts-before-frame-0")
def before_zero(scene: Any, media: Media) -> Edit:
    movie, _ = shot(scene, media.clip, media.dub, start=-16, offset=4, tail=10)
    return Edit(movie, (-8, 0, 1, 29))


@edit("graded-starts-before-frame-0")
def graded_before_zero(scene: Any, media: Media) -> Edit:
    made = before_zero(scene, media)
    grade(made.picture)
    return made


@edit("graded-at-50-percent")
def half_size(scene: Any, media: Media) -> Edit:
    movie, _ = shot(scene, media.clip, media.dub)
    grade(movie)
    scene.render.resolution_percentage = 50
    return Edit(movie, SHOT)


@edit("graded-previewed-at-50-percent")
def previewed_at_half_size(scene: Any, media: Media) -> Edit:
    movie, _ = shot(scene, media.clip, media.dub)
    grade(movie)
    return Edit(movie, SHOT, preview_percentage=50)  # the final render is at 100 %


@edit("graded-in-agx-punchy")
def agx(scene: Any, media: Media) -> Edit:
    movie, _ = shot(scene, media.clip, media.dub)
    grade(movie)
    scene.view_settings.view_transform = "AgX"
    scene.view_settings.look = "AgX - Punchy"
    return Edit(movie, SHOT)


@edit("graded-with-stamp-note")
def stamped(scene: Any, media: Media) -> Edit:
    movie, _ = shot(scene, media.clip, media.dub)
    grade(movie)
    render = scene.render
    render.use_stamp = render.use_stamp_note = True
    render.stamp_note_text = "TEMP DUB - not for air"
    for field in ("date", "time", "render_time", "memory", "hostname", "camera", "lens"):
        setattr(render, f"use_stamp_{field}", False)  # they differ between two renders
    return Edit(movie, SHOT)


@edit("meta-strip")
def meta(scene: Any, media: Media) -> Edit:
    movie, _ = shot(scene, media.clip, media.dub)
    for strip in strips(scene):
        strip.select = strip == movie
    assert bpy.ops.sequencer.meta_make() == {"FINISHED"}  # Ctrl+G, as the editor groups
    group = scene.sequence_editor.active_strip
    group.name = "scene 4"
    return Edit(group, SHOT)


@edit("image-sequence")
def image_sequence(scene: Any, media: Media) -> Edit:
    images = strips(scene).new_image("frames", str(media.frames[0]), 1, 4)
    for path in media.frames[1:]:
        images.elements.append(path.name)
    images.frame_offset_start, images.frame_offset_end = 6, 10
    strips(scene).new_sound("dub", str(media.dub), channel=3, frame_start=10)
    return Edit(images, SHOT)
