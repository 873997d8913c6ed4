"""The add-on in real Blender: install from the zip, refusals, and placing takes (from a
finished job's record, the way the bridge hands it back)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

import bpy
import pytest

from tests.addon.conftest import FPS, addon_module, lipsync, new_effect, shot, strips
from tests.media_samples import make_test_video

pytestmark = pytest.mark.blender


def test_zip_installs_with_its_wheels_and_pinned_operators(addon: Any, addon_zip: Path) -> None:
    with zipfile.ZipFile(addon_zip) as zf:
        manifest = zf.read("blender_manifest.toml").decode()
        names = zf.namelist()
    assert 'id = "chamelaion_lipsync"' in manifest and "platforms = [" in manifest
    assert any(n.startswith("wheels/chamelaion_bridge-") for n in names)
    assert any(n.startswith("wheels/pydantic_core-") for n in names)
    assert hasattr(bpy.ops.sequencer, "chamelaion_lipsync")
    assert hasattr(bpy.ops.sequencer, "chamelaion_sync")


def test_no_movie_strip_selected_is_refused(fresh: Any, dub: Path) -> None:
    sound = strips(fresh).new_sound("dub", str(dub), channel=1, frame_start=1)
    fresh.sequence_editor.active_strip = sound
    before = set(addon_module("sync").known_references())
    with pytest.raises(RuntimeError, match="Select a movie strip"):
        bpy.ops.sequencer.chamelaion_lipsync()
    assert addon_module("sync").known_references() == before


def test_missing_source_file_is_refused(fresh: Any, clip: Path, dub: Path, tmp_path: Path) -> None:
    copy = tmp_path / "gone.mp4"
    shutil.copyfile(clip, copy)
    shot(fresh, copy, dub)
    copy.unlink()
    with pytest.raises(RuntimeError, match="source file of strip 'shot' is missing"):
        bpy.ops.sequencer.chamelaion_lipsync()


def test_a_frame_rate_mismatch_is_sent_as_blender_plays_it_with_the_fix_said(
    fresh: Any, clip: Path, dub: Path
) -> None:
    fresh.render.fps = 25
    shot(fresh, clip, dub)
    ref = lipsync(fresh)
    plan = addon_module("sync").memory.exports[ref].task.plan
    assert plan.placement == "overlay"  # rendered one movie frame per scene frame
    assert "24 fps in a 25 fps scene" in plan.warning and "set the scene to 24 fps" in plan.warning
    addon_module("sync").memory.exports.pop(ref).task.cancel()


def finished_job(scene: Any, source: Any, output: Path, ref: str, **client: Any) -> dict:
    """The bridge's record of a completed job on `source`'s visible range, as sent."""
    record = {
        "file": "test-file",
        "scene": scene.name,
        "name": source.name,
        "placement": "switch",
        "source": addon_module("export").tag_of(source),
        "cover": "",
        "cover_name": "",
        "start": source.frame_final_start,
        "end": source.frame_final_end,
        "first": source.frame_final_start - int(source.frame_start),
    }
    record.update(client)
    return {
        "id": f"job-{ref}",
        "reference_id": ref,
        "request_id": f"req-{ref}",
        "state": "completed",
        "output_path": str(output),
        "client": record,
    }


def rendered_job(scene: Any, cover: Any, output: Path, ref: str) -> dict:
    """A finished job whose take was rendered for `cover` (44 frames from its first one)."""
    tag = addon_module("export").tag_of(cover)
    job = finished_job(
        scene, cover, output, ref, placement="overlay", cover=tag, cover_name=cover.name, first=0
    )
    make_test_video(output, 44, FPS, (128, 64))
    return job


def layout(scene: Any) -> dict[str, tuple]:
    return {
        s.name: (s.channel, s.frame_final_start, s.frame_final_end, s.mute) for s in strips(scene)
    }


def test_a_take_switches_the_strip_and_keeps_its_grades_overlays_and_place(
    fresh: Any, clip: Path, dub: Path, tmp_path: Path
) -> None:
    movie, _ = shot(fresh, clip, dub, start=10, offset=6, tail=10)
    grade = movie.modifiers.new("grade", "BRIGHT_CONTRAST")
    grade.bright = 30
    movie.transform.offset_x, movie.blend_alpha = 12, 0.8
    text = new_effect(fresh, "subtitle", "TEXT", 2, 10, 40)
    before = layout(fresh)
    take = tmp_path / "take.mp4"
    make_test_video(take, 44, FPS, (128, 64))
    strip, warning = addon_module("placement").place(finished_job(fresh, movie, take, "sw-1"))
    assert strip == movie and warning == ""
    assert Path(movie.filepath) == take and movie["chamelaion_reference_id"] == "sw-1"
    assert layout(fresh) == before and text.channel == 2
    assert [m.name for m in movie.modifiers] == ["grade"] and movie.transform.offset_x == 12
    assert movie.blend_alpha == pytest.approx(0.8)


def test_a_source_moved_while_its_job_ran_gets_the_take_where_it_is_now(
    fresh: Any, clip: Path, dub: Path, tmp_path: Path
) -> None:
    movie, _ = shot(fresh, clip, dub, start=10, offset=6, tail=10)
    job = finished_job(fresh, movie, tmp_path / "take.mp4", "moved-1")
    make_test_video(Path(job["output_path"]), 44, FPS, (128, 64))
    movie.frame_start += 7  # the editor slides the shot while the job runs
    strip, warning = addon_module("placement").place(job)
    assert (strip.frame_final_start, strip.frame_final_end) == (17, 61) and warning == ""
    assert strip.frame_start == 17  # the take's first frame is the one sent for frame 10


def test_a_source_trimmed_wider_while_its_job_ran_says_which_frames_the_take_lacks(
    fresh: Any, clip: Path, dub: Path, tmp_path: Path
) -> None:
    movie, _ = shot(fresh, clip, dub, start=10, offset=6, tail=10)
    job = finished_job(fresh, movie, tmp_path / "take.mp4", "wider-1")
    make_test_video(Path(job["output_path"]), 44, FPS, (128, 64))
    movie.frame_offset_end = 5
    _, warning = addon_module("placement").place(job)
    assert (movie.frame_final_start, movie.frame_final_end) == (10, 59)
    assert "frames 54-58" in warning and "run Lip Sync again" in warning


def test_hold_frames_stay_holds_of_the_take(
    fresh: Any, clip: Path, dub: Path, tmp_path: Path
) -> None:
    movie, _ = shot(fresh, clip, dub, start=10, offset=0, tail=10)
    movie.frame_offset_start = -4  # frames 6-9 hold the first frame
    job = finished_job(fresh, movie, tmp_path / "take.mp4", "hold-1", start=10, first=0)
    make_test_video(Path(job["output_path"]), 50, FPS, (128, 64))
    addon_module("placement").place(job)
    assert (movie.frame_final_start, movie.frame_final_end) == (6, 60)
    assert movie.frame_offset_start == -4 and movie.frame_start == 10


def test_a_rendered_take_sits_directly_above_its_cover_with_its_look(
    fresh: Any, clip: Path, dub: Path, tmp_path: Path
) -> None:
    movie, _ = shot(fresh, clip, dub, start=10, offset=6, tail=10)
    movie.color_saturation, movie.blend_type = 0.5, "ADD"
    movie.modifiers.new("grade", "BRIGHT_CONTRAST").bright = 30
    job = rendered_job(fresh, movie, tmp_path / "r.mp4", "ov-1")
    strip, _ = addon_module("placement").place(job)
    assert (strip.channel, strip.frame_final_start, strip.frame_final_end) == (2, 10, 54)
    assert (strip.color_saturation, strip.blend_type) == (0.5, "ADD")
    assert [m.bright for m in strip.modifiers] == [30] and movie.mute and not strip.mute
    fresh.sequence_editor.active_strip = movie  # the covered strip offers its takes too
    assert bpy.ops.sequencer.chamelaion_switch_take(index=0) == {"FINISHED"}
    assert strip.mute and not movie.mute


def test_a_take_without_room_is_explained_and_placed_later(
    fresh: Any, clip: Path, dub: Path, tmp_path: Path
) -> None:
    movie, _ = shot(fresh, clip, dub, start=10, offset=6, tail=10)
    blocker = new_effect(fresh, "sub", "TEXT", 2, 20, 30)
    job = rendered_job(fresh, movie, tmp_path / "r.mp4", "late-1")
    sync = addon_module("sync")
    sync.memory.rows["late-1"] = job
    news: list[tuple[str, str]] = []
    assert not sync.place(job, news)
    assert "channel 2 directly above it, which holds strip 'sub'" in news[0][1]
    strips(fresh).remove(blocker)
    assert bpy.ops.sequencer.chamelaion_place_take(reference_id="late-1") == {"FINISHED"}
    assert addon_module("takes").showing(fresh.sequence_editor, "late-1").channel == 2
    del sync.memory.rows["late-1"]


def test_a_take_whose_look_cannot_be_copied_leaves_nothing_half_made(
    fresh: Any, clip: Path, dub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    movie, _ = shot(fresh, clip, dub, start=10, offset=6, tail=10)
    movie.modifiers.new("grade", "BRIGHT_CONTRAST")
    job = rendered_job(fresh, movie, tmp_path / "r.mp4", "look-1")
    takes = addon_module("takes")

    def refused(*_args: Any) -> None:
        raise RuntimeError("Operator bpy.ops.sequencer.strip_modifier_copy.poll() failed")

    before = layout(fresh)
    monkeypatch.setattr(takes, "_copy_modifiers", refused)
    with pytest.raises(takes.PlacementProblem, match="could not take on its look"):
        addon_module("placement").place(job)
    assert layout(fresh) == before  # no take strip left over channel 2
    monkeypatch.undo()
    strip, _ = addon_module("placement").place(job)
    assert strip.channel == 2 and [m.name for m in strip.modifiers] == ["grade"]
