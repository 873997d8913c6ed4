"""A strip's takes: the original (take 0) and each lip-synced result, and switching between them.

A take is a drop-in replacement. A movie strip whose timing is 1:1 with its file switches its
own file to the take, so its modifiers, transform, grades, effects and place in the stack all
stay. Anything rendered gets a take strip directly above the strip it covers, with that
strip's look copied; the covered strip is muted while a take shows.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import bpy

from . import compat
from .export import TAG

TAKES = "chamelaion_takes"  # JSON list of Take on the strip that shows takes
ACTIVE = "chamelaion_take"  # the index shown; 0 is the original (or, on a take strip, the cover)
COVER = "chamelaion_cover"  # on a take strip: the tag of the strip it covers
HIDDEN = "chamelaion_hidden"  # on a cover: muted because its take strip shows a take
REFERENCE = "chamelaion_reference_id"
REQUEST = "chamelaion_request_id"
MAX_CHANNEL = 128

LOOK = (
    "blend_type",
    "blend_alpha",
    "color_saturation",
    "color_multiply",
    "use_flip_x",
    "use_flip_y",
)
# A keyframe's settings, the handle types before the handles they would recompute.
KEY_SETTINGS = (
    "interpolation",
    "easing",
    "back",
    "amplitude",
    "period",
    "handle_left_type",
    "handle_right_type",
    "co",
    "handle_left",
    "handle_right",
)


class PlacementProblem(Exception):
    """The take cannot be placed now; one sentence saying why and what to do."""


@dataclass
class Take:
    """One file a strip can show; `first` is the original frame its first frame shows."""

    filepath: str
    first: int
    length: int = 0  # frames of content it shows (the original's: between its animation offsets)
    reference_id: str = ""
    request_id: str = ""
    animation_start: int = 0
    animation_end: int = 0
    stream_index: int = 0
    absolute: str = ""  # `filepath` resolved when recorded: a Save As elsewhere strands "//"

    def path(self) -> str:
        """As recorded while it finds the file (a relative path follows a moved project), else
        the absolute one (Blender remaps the strip's own path on Save As, not this record)."""
        if self.absolute and not os.path.isfile(bpy.path.abspath(self.filepath)):
            return self.absolute
        return self.filepath


def takes_of(strip: Any) -> list[Take]:
    raw = strip.get(TAKES)
    return [Take(**item) for item in json.loads(raw)] if raw else []


def active_index(strip: Any) -> int:
    return int(strip.get(ACTIVE, 0))


def references_in(editor: Any) -> set[str]:
    """Every reference_id some strip of this editor holds as a take."""
    found: set[str] = set()
    for strip in compat.all_strips(editor):
        if strip.get(TAKES):
            found.update(take.reference_id for take in takes_of(strip) if take.reference_id)
    return found


def find_tagged(editor: Any, tag: str) -> Any | None:
    return next((s for s in compat.all_strips(editor) if tag and s.get(TAG) == tag), None)


def find_source(editor: Any, tag: str, name: str) -> Any | None:
    """The tagged strip, else an untagged strip of that name (an undo of Lip Sync takes the
    tag away with it); that strip gets its tag back."""
    strip = find_tagged(editor, tag)
    if strip is None:
        strip = compat.all_strips(editor).get(name)
        if strip is None or strip.get(TAG):
            return None
        strip[TAG] = tag
    return strip


def take_strip_over(editor: Any, cover_tag: str) -> Any | None:
    return next((s for s in compat.all_strips(editor) if s.get(COVER) == cover_tag), None)


def holder(editor: Any) -> Any | None:
    """The strip whose takes the panel offers: the active one, or the take strip over it."""
    active = editor.active_strip
    if active is None:
        return None
    if active.get(TAKES):
        return active
    return take_strip_over(editor, active.get(TAG, ""))


def showing(editor: Any, reference_id: str) -> Any | None:
    """The strip that holds this take (shown or not)."""
    for strip in compat.all_strips(editor):
        if strip.get(TAKES) and any(t.reference_id == reference_id for t in takes_of(strip)):
            return strip
    return None


def _save(strip: Any, takes: list[Take], index: int) -> None:
    strip[TAKES] = json.dumps([asdict(take) for take in takes])
    strip[ACTIVE] = index
    take = takes[index] if index < len(takes) else None
    if take is not None and take.reference_id:
        strip[REFERENCE], strip[REQUEST] = take.reference_id, take.request_id
    else:
        for key in (REFERENCE, REQUEST):
            if key in strip:
                del strip[key]


def _origin(editor: Any, strip: Any, takes: list[Take]) -> int:
    """The timeline frame the takes' `first` counts from; it moves with the strip.

    For a strip showing its own takes it is where the original file's frame 0 sits now; for a
    take strip it is the first visible frame of the strip it covers.
    """
    if strip.get(COVER):
        return int(cover_of(editor, strip).frame_final_start)
    shown = takes[active_index(strip)]
    return int(strip.frame_start) - int(strip.animation_offset_start) - shown.first


def cover_of(editor: Any, strip: Any) -> Any:
    """The strip a take strip covers; a sentence when the editor deleted it."""
    cover = find_tagged(editor, strip[COVER])
    if cover is None:
        raise PlacementProblem(
            f"The strip that take strip '{strip.name}' covered is gone; delete the take strip."
        )
    return cover


def original_of(editor: Any, strip: Any) -> Any:
    """The strip Lip Sync runs on: a take strip stands for the strip it covers, so its own
    picture is synced again, never a take."""
    return cover_of(editor, strip) if strip.get(COVER) else strip


def _show_file(strip: Any, take: Take, origin: int) -> None:
    """Make `strip` show `take` with every original frame at its place and the same handles;
    a file that is gone is refused before anything changes (Blender would show black)."""
    path = take.path()
    if not os.path.isfile(bpy.path.abspath(path)):
        what = f"take {take.reference_id}" if take.reference_id else f"strip '{strip.name}'"
        raise PlacementProblem(
            f"The file of {what} is missing ({bpy.path.abspath(path)}); put it back, or show "
            "another take."
        )
    start, end = strip.frame_final_start, strip.frame_final_end
    if strip.filepath != path:  # each assignment reopens the movie: only if new
        colorspace = strip.colorspace_settings.name
        strip.filepath = path
        strip.colorspace_settings.name = colorspace
    strip.stream_index = take.stream_index
    strip.animation_offset_start = take.animation_start
    strip.animation_offset_end = take.animation_end
    content_start = origin + take.first + take.animation_start
    _move_content(strip, content_start)
    # The handle setters (not frame_offset_*) also bring the effects fed by it along.
    if start >= strip.frame_final_end:
        strip.frame_final_end = end
    strip.frame_final_start, strip.frame_final_end = start, end


def _move_content(strip: Any, content_start: int) -> None:
    """Slide the strip's content to start at `content_start`, as Blender's Slip does: the
    frame_start setter drags the strip's keyframes along, so they are moved back (plain data:
    the Slip operator itself can crash a Blender whose workspace shows no sequencer scene)."""
    delta = int(content_start - strip.frame_start)
    if delta == 0:
        return
    strip.frame_start = content_start
    for _, curve in compat.strip_curves(strip.id_data, strip):
        for point in curve.keyframe_points:
            for position in (point.co, point.handle_left, point.handle_right):
                position.x -= delta
        curve.update()


@contextlib.contextmanager
def only_selected(*chosen: Any) -> Iterator[None]:
    """`chosen` selected (the first active) for an operator on the strip's scene; the
    editor's selection is restored afterwards."""
    scene = chosen[0].id_data
    editor = scene.sequence_editor
    selected = [s for s in compat.all_strips(editor) if s.select]
    active = editor.active_strip
    try:
        for strip in selected:
            strip.select = False
        for strip in chosen:
            strip.select = True
        editor.active_strip = chosen[0]
        with compat.scene_override(bpy.context, scene):
            yield
    finally:
        for strip in chosen:
            strip.select = False
        for strip in selected:
            strip.select = True
        editor.active_strip = active


def switch(editor: Any, strip: Any, index: int) -> None:
    """Show take `index` (0 = the original) on a strip that has takes."""
    takes = takes_of(strip)
    if not 0 <= index < len(takes):
        raise PlacementProblem(f"Strip '{strip.name}' has no take {index}.")
    origin = _origin(editor, strip, takes)
    if strip.get(COVER):
        if index > 0:
            _show_file(strip, takes[index], origin)
        strip.mute = index == 0
        cover = cover_of(editor, strip)
        cover.mute = cover[HIDDEN] = index > 0
    else:
        _show_file(strip, takes[index], origin)
    _save(strip, takes, index)


def show_orphaned_covers(editor: Any) -> None:
    """A cover muted for a take strip the editor deleted shows again (else its shot would
    vanish from the render); the take waits for Place Take."""
    for strip in compat.all_strips(editor):
        if strip.get(HIDDEN) and take_strip_over(editor, strip.get(TAG, "")) is None:
            strip.mute = strip[HIDDEN] = False


@contextlib.contextmanager
def original_shown(editor: Any, strip: Any) -> Iterator[None]:
    """While inside, a strip that switched its file to a take shows its original again: Lip
    Sync on it sends the source footage (not a re-encoded take) over all it shows, and the new
    take counts its frames from the original like every other take."""
    index = 0 if strip.get(COVER) else active_index(strip)
    if index:
        switch(editor, strip, 0)
    try:
        yield
    finally:
        if index:
            switch(editor, strip, index)


def uncovered(editor: Any, strip: Any, take: Take) -> str:
    """A sentence when the strip shows frames the original has and the take lacks (held
    frames were holds before, and stay holds)."""
    takes = takes_of(strip)
    origin, original = _origin(editor, strip, takes), takes[0]
    content = (
        origin + original.animation_start,
        origin + original.animation_start + original.length,
    )
    start, end = max(strip.frame_final_start, content[0]), min(strip.frame_final_end, content[1])
    take_start, take_end = origin + take.first, origin + take.first + take.length
    gaps = [(start, min(end, take_start)), (max(start, take_end), end)]
    gaps = [(a, b) for a, b in gaps if a < b]
    if not gaps:
        return ""
    frames = ", ".join(f"{a}-{b - 1}" for a, b in gaps)
    return (
        f"Strip '{strip.name}' now shows frames {frames} that take {take.reference_id} does not "
        "cover (they hold its first or last frame); run Lip Sync again to sync them."
    )


def add_to_source(editor: Any, source: Any, take: Take) -> str:
    """Switch a 1:1 movie strip to a new take; returns a warning sentence or ''."""
    takes = takes_of(source)
    if not takes:
        takes = [
            Take(
                filepath=source.filepath,
                absolute=os.path.normpath(bpy.path.abspath(source.filepath)),
                first=0,
                length=int(source.frame_duration),
                animation_start=int(source.animation_offset_start),
                animation_end=int(source.animation_offset_end),
                stream_index=int(source.stream_index),
            )
        ]
        _save(source, takes, 0)
    takes.append(take)
    source[TAKES] = json.dumps([asdict(t) for t in takes])
    switch(editor, source, len(takes) - 1)
    return uncovered(editor, source, take)


def add_over_cover(scene: Any, cover: Any, take: Take, name: str) -> Any:
    """Put a rendered take directly above the strip it covers, with the cover's look; its
    `first` counts from the cover's first visible frame."""
    editor = scene.sequence_editor
    strip = take_strip_over(editor, cover[TAG])
    if strip is None:
        strip = _new_take_strip(scene, cover, take, name)
        takes = [Take(filepath="", first=0), take]
    else:
        takes = [*takes_of(strip), take]
    strip[TAKES] = json.dumps([asdict(t) for t in takes])
    switch(editor, strip, len(takes) - 1)
    return strip


def _new_take_strip(scene: Any, cover: Any, take: Take, name: str) -> Any:
    editor = scene.sequence_editor
    channel = cover.channel + 1
    low, high = cover.frame_final_start, cover.frame_final_end
    siblings = _siblings(editor, cover)
    busy = [
        s
        for s in siblings
        if s.channel == channel and s.frame_final_start < high and s.frame_final_end > low
    ]
    if busy or channel > MAX_CHANNEL:
        what = f"strip '{busy[0].name}'" if busy else "nothing (it is the last channel)"
        raise PlacementProblem(
            f"The take of '{cover.name}' goes on channel {channel} directly above it, which holds "
            f"{what} over frames {low}-{high - 1}; make room there and click Place Take."
        )
    strip = siblings.new_movie(
        name=name[:63], filepath=take.filepath, channel=channel, frame_start=low + take.first
    )
    strip[COVER] = cover[TAG]
    strip.frame_offset_start = low - strip.frame_start
    strip.frame_offset_end = strip.frame_start + strip.frame_duration - high
    try:
        _copy_look(scene, cover, strip)
    except (RuntimeError, TypeError, AttributeError, ValueError) as exc:
        siblings.remove(strip)  # no half-made take strip left to block the next try
        raise PlacementProblem(
            f"The take of '{cover.name}' could not take on its look ({exc}); click Place Take "
            "to try again."
        ) from None
    return strip


def _siblings(editor: Any, strip: Any) -> Any:
    """The strip collection `strip` lives in (top level or inside a meta)."""
    meta = compat.holders(editor).get(strip.name)
    return compat.strips(meta if meta is not None else editor)


def _copy_look(scene: Any, source: Any, target: Any) -> None:
    """The cover's blend, colour, transform, crop and modifiers, so the take looks like it."""
    for name in LOOK:
        setattr(target, name, getattr(source, name))
    for group in ("transform", "crop"):
        copy_from, copy_to = getattr(source, group), getattr(target, group)
        for prop in copy_from.bl_rna.properties:
            if not prop.is_readonly and prop.identifier != "rna_type":
                setattr(copy_to, prop.identifier, getattr(copy_from, prop.identifier))
    if len(source.modifiers):
        _copy_modifiers(source, target)
    for setting, curve in compat.strip_curves(scene, source):
        if setting in LOOK or setting.startswith(compat.LOOK_GROUPS):
            _copy_curve(scene, curve, target, setting)


def _copy_curve(scene: Any, curve: Any, target: Any, setting: str) -> None:
    """Animate `setting` of `target` as `curve` does (a fade, a push-in): the take strip sits
    at the cover's frames, so every key keeps its frame."""
    points = curve.keyframe_points
    group, _, name = setting.rpartition(".")  # keyframe_insert takes no nested path
    owner = target.path_resolve(group) if group else target
    index = curve.array_index if hasattr(getattr(owner, name), "__len__") else -1
    owner.keyframe_insert(name, index=index, frame=points[0].co.x)
    copy = next(
        c
        for s, c in compat.strip_curves(scene, target)
        if s == setting and c.array_index == curve.array_index
    )
    copy.keyframe_points.add(len(points) - len(copy.keyframe_points))
    for source, point in zip(points, copy.keyframe_points, strict=True):
        for name in KEY_SETTINGS:
            setattr(point, name, getattr(source, name))
    copy.extrapolation = curve.extrapolation
    copy.update()


def _copy_modifiers(source: Any, target: Any) -> None:
    """Blender's own modifier copy (it knows every modifier's curves and wheels)."""
    with only_selected(source, target):
        bpy.ops.sequencer.strip_modifier_copy(type="REPLACE")
