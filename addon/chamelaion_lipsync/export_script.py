"""Mix the dialogue down and render the raw picture of a batch's jobs, one after the other,
inside one background Blender.

Run by background.py as `blender --background COPY --python export_script.py -- SPEC` (or by
the Python that has the `bpy` module, which opens COPY itself). It works on a saved copy of
the editor's file, so it may change anything; only bpy and the add-on's compat module are
imported (never the bridge). Progress goes to a small JSON status file (one entry per
job) rewritten atomically; a job's outputs are written under temporary names and renamed into
place once both are whole, so each job can go to the bridge as soon as its own files are.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import bpy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compat  # noqa: E402 (a sibling file, importable once its folder is on the path)

# The cover's own look, set to "no change": the take copies it back on the timeline.
NEUTRAL = {
    "color_saturation": 1.0,
    "color_multiply": 1.0,
    "use_flip_x": False,
    "use_flip_y": False,
    "blend_alpha": 1.0,
    "blend_type": "REPLACE",
}
NEUTRAL_TRANSFORM = {
    "offset_x": 0.0,
    "offset_y": 0.0,
    "rotation": 0.0,
    "scale_x": 1.0,
    "scale_y": 1.0,
}
NEUTRAL_CROP = {"min_x": 0, "max_x": 0, "min_y": 0, "max_y": 0}
NEUTRAL_VIEW = {
    "look": "None",
    "exposure": 0.0,
    "gamma": 1.0,
    "use_curve_mapping": False,
    "use_white_balance": False,
}
REPLACE_TRIES = 50


class Failure(Exception):
    """One sentence saying what went wrong in here."""


class Status:
    """The status file the main thread polls: per job its stage, frames done and total, error."""

    def __init__(self, path: str, count: int) -> None:
        self.path = path
        self.jobs: list[dict[str, Any]] = [{} for _ in range(count)]

    def write(self, index: int, stage: str, done: int = 0, total: int = 0, error: str = "") -> None:
        self.jobs[index] = {"stage": stage, "done": done, "total": total, "error": error}
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"jobs": self.jobs}, fh)
        for _ in range(REPLACE_TRIES - 1):
            try:
                os.replace(tmp, self.path)
                return
            except PermissionError:  # Windows, while the main thread is reading the file
                time.sleep(0.01)
        os.replace(tmp, self.path)


def remove(*paths: str | None) -> None:
    for path in paths:
        if path and os.path.exists(path):
            os.remove(path)


def shift_to_zero(editor: Any, start: int) -> int:
    """Move every strip so a range starting before frame 0 (where a scene cannot start) starts
    at 0; returns the shift. Latest first, so no strip ever overlaps another and gets pushed
    to another channel; effect strips with inputs follow their inputs."""
    shift = max(0, -start)
    if not shift:
        return 0
    top = list(compat.strips(editor))
    before = {s.name: (s.channel, s.frame_final_start) for s in top}
    for strip in sorted(top, key=lambda s: s.frame_final_start, reverse=True):
        if getattr(strip, "input_1", None) is None:
            strip.frame_start += shift
    if any((s.channel, s.frame_final_start - shift) != before[s.name] for s in top):
        raise Failure("Blender could not move the strips to render frames before frame 0")
    return shift


def show_only(editor: Any, names: list[str], muted: dict[str, bool], contents: bool) -> None:
    """Unmute `names`, the metas around them and their channels; mute every other strip.
    With `contents`, what is inside a kept meta stays as the editor left it."""
    held_by = compat.holders(editor)
    keep = {*names, *(meta for name in names for meta in metas_around(name, held_by))}
    for strip in compat.all_strips(editor):
        if strip.name in keep:
            strip.mute = False
            compat.channel_of(editor, strip, held_by).mute = False
        elif contents and any(meta in names for meta in metas_around(strip.name, held_by)):
            strip.mute = muted[strip.name]
        else:
            strip.mute = True


def metas_around(name: str, held_by: dict[str, Any]) -> list[str]:
    """The names of the metas a strip sits in, innermost first."""
    found = []
    while (holder := held_by.get(name)) is not None:
        name = holder.name
        found.append(name)
    return found


def neutralise(scene: Any, cover: Any) -> None:
    """The cover's own modifiers, transform, crop, colour, flips, opacity and blend off, and
    the F-curves that would animate them back muted."""
    for name, value in NEUTRAL.items():
        if hasattr(cover, name):
            setattr(cover, name, value)
    for modifier in cover.modifiers:
        modifier.mute = True
    for group, values in (("transform", NEUTRAL_TRANSFORM), ("crop", NEUTRAL_CROP)):
        if hasattr(cover, group):
            for name, value in values.items():
                setattr(getattr(cover, group), name, value)
    for setting, curve in compat.strip_curves(scene, cover):  # timing curves stay
        if setting in NEUTRAL or setting.startswith(compat.LOOK_GROUPS):
            curve.mute = True


def raw_size(scene: Any, cover: Any) -> tuple[int, int]:
    """The size of the cover's picture before its transform: the media's own for movies,
    images, clips and camera scene strips; the scene's canvas for metas, effects, masks."""
    render = scene.render
    size = (render.resolution_x, render.resolution_y)
    if cover.type in ("MOVIE", "IMAGE"):
        size = (cover.elements[0].orig_width, cover.elements[0].orig_height)
    elif cover.type == "MOVIECLIP" and cover.clip is not None:
        size = tuple(cover.clip.size)
    elif cover.type == "SCENE" and cover.scene_input == "CAMERA" and cover.scene is not None:
        inner = cover.scene.render
        percent = inner.resolution_percentage
        size = (inner.resolution_x * percent // 100, inner.resolution_y * percent // 100)
    return size if all(size) else (render.resolution_x, render.resolution_y)


def set_range(scene: Any, start: int, end: int) -> None:
    """What both the mixdown and the render cover; a preview range would override it."""
    scene.frame_start, scene.frame_end, scene.frame_step = start, end - 1, 1
    scene.use_preview_range = False


def set_output(scene: Any, size: tuple[int, int], path: str) -> None:
    """Full size, no stamp, no compositing, no dither, the Standard view: the pixels as the
    sequencer makes them, in an H.264 MP4."""
    render = scene.render
    render.resolution_x, render.resolution_y = size
    render.resolution_percentage = 100
    render.use_border = False
    render.use_stamp = False
    render.use_compositing = False
    render.use_sequencer = True
    render.use_multiview = False
    render.dither_intensity = 0.0
    render.frame_map_old = render.frame_map_new = 100
    render.use_file_extension = False
    render.filepath = path
    scene.display_settings.display_device = "sRGB"
    view = scene.view_settings
    view.view_transform = "Standard"
    for name, value in NEUTRAL_VIEW.items():
        if hasattr(view, name):
            setattr(view, name, value)
    render.image_settings.color_management = "FOLLOW_SCENE"
    compat.set_ffmpeg_output(scene)


def mixdown(scene: Any, path: str) -> None:
    """16-bit PCM WAV; accuracy 16 ends within a sample or so of the range (the default
    overshoots by ~13 ms)."""
    with compat.scene_override(bpy.context, scene):
        result = bpy.ops.sound.mixdown(
            filepath=path,
            check_existing=False,
            relative_path=False,
            container="WAV",
            codec="PCM",
            format="S16",
            accuracy=16,
        )
    if "FINISHED" not in result or not os.path.isfile(path):
        raise Failure("Blender could not mix the dialogue down to a WAV file")


def abandon(*paths: str | None) -> None:
    """The editor's Blender quit or crashed: nobody waits for these files, nor for the copy."""
    remove(*paths)
    os._exit(3)


def render(scene: Any, path: str, total: int, report: Any, parent: int, doomed: list[str]) -> None:
    """Render the scene's range to `path`, reporting each frame; stop when Blender is gone."""
    written = [0]

    def frame_written(*_args: Any) -> None:
        if os.getppid() != parent:
            abandon(*doomed)
        written[0] += 1
        report("rendering", written[0], total)

    bpy.app.handlers.render_write.append(frame_written)
    try:
        with compat.scene_override(bpy.context, scene):
            bpy.ops.render.render(animation=True, scene=scene.name)
    finally:
        bpy.app.handlers.render_write.remove(frame_written)
    if written[0] != total or not os.path.isfile(path):
        raise Failure(f"Blender rendered {written[0]} of {total} frames")


def open_copy(path: str) -> None:
    """The saved copy as it was saved (a job before may have changed the one in memory)."""
    bpy.ops.wm.open_mainfile(filepath=path, load_ui=False)


def check_rate(editor: Any, strip: str, fps: float) -> None:
    """The bridge cuts the file at the rate the job was planned with, which Blender's record
    gave (reading it from the file on the main thread costs a batch too much time)."""
    found = compat.all_strips(editor).get(strip)
    if found is not None and abs(found.fps - fps) > 1e-3:
        raise Failure(
            f"its file plays at {found.fps:g} fps, not the {fps:g} fps Blender noted when the "
            "strip was made (its file was changed since); run Lip Sync on this strip alone, "
            "which reads the file itself"
        )


def export(spec: dict[str, Any], job: dict[str, Any], report: Any) -> bool:
    """Move a range before frame 0 to 0, mix the dub, render the picture; True when the file
    in memory now differs from the copy in more than what the next job sets anyway."""
    scene = bpy.data.scenes.get(job["scene"])
    if scene is None or scene.sequence_editor is None:
        raise Failure(f"the saved copy has no scene '{job['scene']}' with strips")
    workspace = bpy.context.workspace
    if hasattr(workspace, "sequencer_scene"):  # 5.0's sequencer operators act on this scene
        workspace.sequencer_scene = scene
    editor = scene.sequence_editor
    if job.get("check_rate"):
        check_rate(editor, **job["check_rate"])
    muted = {s.name: s.mute for s in compat.all_strips(editor)}
    shift = shift_to_zero(editor, job["start"])
    start, end = job["start"] + shift, job["end"] + shift
    set_range(scene, start, end)
    report("mixing")
    show_only(editor, job["sounds"], muted, contents=False)
    mixdown(scene, job["audio_partial"])
    if job["video"]:
        report("rendering", 0, end - start)
        show_only(editor, job["picture"], muted, contents=True)
        cover = compat.all_strips(editor)[job["picture"][0]]
        neutralise(scene, cover)
        set_output(scene, raw_size(scene, cover), job["video_partial"])
        doomed = [spec["copy"], job["audio_partial"], job["video_partial"]]
        render(scene, job["video_partial"], end - start, report, spec["parent_pid"], doomed)
        os.replace(job["video_partial"], job["video"])
    os.replace(job["audio_partial"], job["audio"])
    return bool(shift or job["video"])


def run(spec: dict[str, Any], status: Status) -> bool:
    """Each job in turn on the copy, reopened after a job that changed it; a job that fails
    (or that the editor canceled) stops no other. True when every job ran through."""
    stale = os.path.normpath(bpy.data.filepath) != os.path.normpath(spec["copy"])
    all_done = True
    for index, job in enumerate(spec["jobs"]):
        if os.getppid() != spec["parent_pid"]:
            abandon(spec["copy"])
        if os.path.exists(f"{spec['cancel_prefix']}{index}"):
            status.write(index, "canceled")
            continue

        def report(stage: str, done: int = 0, total: int = 0, index: int = index) -> None:
            status.write(index, stage, done, total)

        report("mixing")
        try:
            if stale:
                open_copy(spec["copy"])
            stale = export(spec, job, report)
        except Exception as exc:  # every failure becomes that job's one sentence
            traceback.print_exc()
            remove(job["audio_partial"], job.get("video_partial"))
            status.write(index, "failed", error=str(exc) or type(exc).__name__)
            stale, all_done = True, False
            continue
        status.write(index, "done")
    return all_done


def main() -> int:
    spec = json.loads(Path(sys.argv[sys.argv.index("--") + 1]).read_text(encoding="utf-8"))
    status = Status(spec["status"], len(spec["jobs"]))
    try:
        return 0 if run(spec, status) else 1
    finally:
        remove(spec["copy"])


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # a plain exit can hang in the bpy module's teardown after a render
