"""The add-on against an editor who does what editors do: Lip Sync again on a strip that shows
a take, Save As elsewhere, delete takes' files, Cancel at any moment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy
import pytest

from chamelaion_client import FINAL_STATES
from tests.addon.conftest import (
    addon_module,
    first_frame_index,
    lipsync,
    row,
    shot,
    strips,
    sync_until,
    take_of,
)
from tests.helpers import wait_until

pytestmark = pytest.mark.blender


def shown_at(strip: Any, frame: int) -> int:
    """The clip frame index the strip shows at timeline `frame` (its file carries them)."""
    path = Path(bpy.path.abspath(strip.filepath))
    offset = frame - int(strip.frame_start) + strip.animation_offset_start
    return first_frame_index(path) + offset


def test_lip_sync_on_a_strip_showing_a_take_sends_the_original_and_lands_in_sync(
    fresh: Any, clip: Path, dub: Path
) -> None:
    movie, _ = shot(fresh, clip, dub, start=10, offset=6, tail=10)
    first = lipsync(fresh)
    sync_until(lambda: take_of(fresh, first), message="take 1")
    movie.frame_offset_end -= 5  # the editor opens the shot 5 frames longer, then syncs again
    second = lipsync(fresh)
    plan = addon_module("sync").memory.exports[second].task.plan
    assert (plan.video_path, plan.start, plan.end, plan.source_first) == (str(clip), 10, 59, 6)
    sync_until(lambda: take_of(fresh, second), message="take 2")
    assert (movie.frame_final_start, movie.frame_final_end) == (10, 59)
    assert shown_at(movie, 10) == 6 and shown_at(movie, 58) == 54
    assert row(second)["warning"] == ""
    original = addon_module("takes").takes_of(movie)[0]
    assert (original.reference_id, Path(original.filepath)) == ("", clip)


def test_after_save_as_in_another_folder_the_original_and_the_take_switch_back(
    fresh: Any, clip: Path, dub: Path, tmp_path: Path
) -> None:
    project, versions = tmp_path / "project", tmp_path / "project" / "versions"
    (project / "media").mkdir(parents=True)
    versions.mkdir()
    footage = project / "media" / "shot.mp4"
    footage.write_bytes(clip.read_bytes())
    bpy.ops.wm.save_as_mainfile(filepath=str(project / "edit.blend"))
    scene = bpy.context.scene
    movie, _ = shot(scene, footage, dub)
    movie.filepath = "//media/shot.mp4"
    ref = lipsync(scene)
    take_file = Path(bpy.path.abspath(sync_until(lambda: take_of(scene, ref)).filepath))
    bpy.ops.wm.save_as_mainfile(filepath=str(versions / "edit_v2.blend"))
    movie = bpy.context.scene.sequence_editor.active_strip
    assert bpy.ops.sequencer.chamelaion_switch_take(index=0) == {"FINISHED"}
    assert Path(bpy.path.abspath(movie.filepath)).resolve() == footage
    assert bpy.ops.sequencer.chamelaion_switch_take(index=1) == {"FINISHED"}
    assert Path(bpy.path.abspath(movie.filepath)).resolve() == take_file
    assert shown_at(movie, 10) == 6


def test_a_take_file_gone_before_placing_says_a_fix_the_panel_offers(
    fresh: Any, clip: Path, dub: Path
) -> None:
    shot(fresh, clip, dub)
    bpy.ops.ed.undo_push(message="the edit")
    ref = lipsync(fresh)
    take_file = Path(bpy.path.abspath(sync_until(lambda: take_of(fresh, ref)).filepath))
    bpy.ops.ed.undo()  # the placement waits for Place Take ...
    kept = take_file.read_bytes()
    take_file.unlink()  # ... and meanwhile its file is deleted
    with pytest.raises(RuntimeError, match="is missing; put it back and click Place Take"):
        bpy.ops.sequencer.chamelaion_place_take(reference_id=ref)
    assert "put it back and click Place Take" in row(ref)["problem"]
    take_file.write_bytes(kept)
    assert bpy.ops.sequencer.chamelaion_place_take(reference_id=ref) == {"FINISHED"}
    assert take_of(bpy.context.scene, ref) is not None and not row(ref)["problem"]


def test_switching_to_a_take_whose_file_is_gone_is_refused_and_the_shot_stays(
    fresh: Any, clip: Path, dub: Path
) -> None:
    movie, _ = shot(fresh, clip, dub)
    ref = lipsync(fresh)
    take_file = Path(bpy.path.abspath(sync_until(lambda: take_of(fresh, ref)).filepath))
    assert bpy.ops.sequencer.chamelaion_switch_take(index=0) == {"FINISHED"}
    take_file.unlink()
    with pytest.raises(RuntimeError, match=f"The file of take {ref} is missing"):
        bpy.ops.sequencer.chamelaion_switch_take(index=1)
    assert Path(movie.filepath) == clip and "chamelaion_reference_id" not in movie
    assert (movie.frame_final_start, movie.frame_final_end, shown_at(movie, 10)) == (10, 54, 6)


def test_lip_sync_again_with_the_original_gone_says_so_and_keeps_the_take(
    fresh: Any, clip: Path, dub: Path, tmp_path: Path
) -> None:
    footage = tmp_path / "shot.mp4"
    footage.write_bytes(clip.read_bytes())
    movie, _ = shot(fresh, footage, dub)
    ref = lipsync(fresh)
    take_file = Path(bpy.path.abspath(sync_until(lambda: take_of(fresh, ref)).filepath))
    footage.unlink()
    with pytest.raises(
        RuntimeError, match=f"^Error: The file of strip 'shot' is missing \\({footage}\\)"
    ):
        bpy.ops.sequencer.chamelaion_lipsync()
    assert Path(movie.filepath) == take_file and movie["chamelaion_reference_id"] == ref


def test_cancel_while_the_job_is_being_sent_cancels_it(
    fresh: Any, clip: Path, dub: Path, emulator: Any
) -> None:
    sync = addon_module("sync")
    shot(fresh, clip, dub)
    emulator.state.config.processing_seconds = 3.0
    try:
        ref = lipsync(fresh)

        def sending() -> bool:
            sync.follow_exports([])  # the export finishes and its job goes to the bridge
            return row(ref).get("state") == "sending"

        wait_until(sending, timeout=60, message="the job on its way to the bridge")
        assert bpy.ops.sequencer.chamelaion_cancel(reference_id=ref) == {"FINISHED"}
        sync_until(lambda: row(ref).get("state") in FINAL_STATES, message="the job to end")
    finally:
        emulator.state.config.processing_seconds = 0.3
    assert row(ref)["state"] == "canceled" and take_of(fresh, ref) is None


def duplicate(scene: Any, strip: Any) -> Any:
    """Shift+D on `strip`, as in the Sequencer (the copy carries its custom properties)."""
    for other in strips(scene):
        other.select = other == strip
    area = bpy.context.window.screen.areas[-1]
    area.type = "SEQUENCE_EDITOR"
    region = next(r for r in area.regions if r.type == "WINDOW")
    with bpy.context.temp_override(scene=scene, area=area, region=region):
        assert bpy.ops.sequencer.duplicate() == {"FINISHED"}
    return next(s for s in strips(scene) if s.select and s != strip)


def test_a_duplicated_shot_gets_its_own_take_and_the_original_keeps_its_own(
    fresh: Any, clip: Path, dub: Path
) -> None:
    movie, _ = shot(fresh, clip, dub)
    first = lipsync(fresh)
    sync_until(lambda: take_of(fresh, first), message="the original's take")
    copy = duplicate(fresh, movie)  # the same shot used again later in the edit
    copy.frame_start += 100
    copy.channel = 1
    sound = strips(fresh).new_sound("dub 2", str(dub), channel=3, frame_start=110)
    for strip in strips(fresh):
        strip.select = strip in (copy, sound)
    fresh.sequence_editor.active_strip = copy
    second = lipsync(fresh)
    assert sync_until(lambda: take_of(fresh, second), message="the copy's take") == copy
    assert movie["chamelaion_reference_id"] == first
    assert (copy.frame_final_start, copy.frame_final_end, shown_at(copy, 110)) == (110, 154, 6)


def test_a_rendered_take_lands_with_its_grade_while_the_sequencer_shows_another_scene(
    fresh: Any, clip: Path, dub: Path
) -> None:
    movie, _ = shot(fresh, clip, dub)
    movie.use_reverse_frames = True  # rendered: the take strip copies the cover's modifiers
    movie.modifiers.new("grade", "BRIGHT_CONTRAST").bright = 30
    ref = lipsync(fresh)
    other = bpy.data.scenes.new("Other")  # the editor turns to another scene meanwhile
    other.sequence_editor_create()
    strips(other).new_sound("music", str(dub), channel=1, frame_start=1).select = True
    bpy.context.window.scene = other
    if hasattr(bpy.context.workspace, "sequencer_scene"):
        bpy.context.workspace.sequencer_scene = other
    take = sync_until(lambda: take_of(fresh, ref), message="the take")
    assert [m.bright for m in take.modifiers] == [30] and not row(ref)["problem"]
    assert [len(s.modifiers) for s in strips(other)] == [0]
    if hasattr(bpy.context.workspace, "sequencer_scene"):
        assert bpy.context.workspace.sequencer_scene == other


def test_clear_finished_keeps_a_take_that_waits_for_place_take(
    fresh: Any, clip: Path, dub: Path
) -> None:
    shot(fresh, clip, dub)
    bpy.ops.ed.undo_push(message="the edit")
    ref = lipsync(fresh)
    sync_until(lambda: take_of(fresh, ref), message="the take")
    bpy.ops.ed.undo()  # the placement is undone: the take waits for Place Take
    assert bpy.ops.sequencer.chamelaion_clear_finished() == {"FINISHED"}
    sync_until(lambda: not addon_module("sync").worker().busy("clear"), message="the clear")
    bpy.ops.sequencer.chamelaion_sync()
    assert row(ref)["state"] == "completed", "a take nobody placed stays on the list"
    assert bpy.ops.sequencer.chamelaion_place_take(reference_id=ref) == {"FINISHED"}
    assert bpy.ops.sequencer.chamelaion_clear_finished() == {"FINISHED"}
    sync_until(lambda: not row(ref), message="the placed take's row to go")
