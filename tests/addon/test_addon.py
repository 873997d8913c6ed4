"""The add-on in real Blender: install from the zip, refusals, export and import placement."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

import bpy
import pytest

from tests.addon.conftest import FPS, shot, strips

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
    with pytest.raises(RuntimeError, match="Select a movie strip"):
        bpy.ops.sequencer.chamelaion_lipsync()
    assert len(fresh.chamelaion.jobs) == 0


def test_missing_source_file_is_refused(fresh: Any, clip: Path, dub: Path, tmp_path: Path) -> None:
    copy = tmp_path / "gone.mp4"
    shutil.copyfile(clip, copy)
    shot(fresh, copy, dub)
    copy.unlink()
    with pytest.raises(RuntimeError, match="source file of strip 'shot' is missing"):
        bpy.ops.sequencer.chamelaion_lipsync()


def test_frame_rate_mismatch_is_refused_with_the_fix(fresh: Any, clip: Path, dub: Path) -> None:
    fresh.render.fps = 25
    shot(fresh, clip, dub)
    with pytest.raises(RuntimeError, match="24 fps but the scene is 25 fps.*set the scene"):
        bpy.ops.sequencer.chamelaion_lipsync()


def test_untouched_strip_sends_its_visible_range_without_render(
    fresh: Any, clip: Path, dub: Path
) -> None:
    from bl_ext.user_default.chamelaion_lipsync import export

    movie, _ = shot(fresh, clip, dub, start=10, offset=6, tail=10)
    result = export.export(bpy.context, fresh, movie, "range-test")
    assert not result.rendered and result.video_path == str(clip)
    assert result.video_range == pytest.approx(
        {"start_seconds": 6 / FPS, "duration_seconds": 44 / FPS}
    )
    assert (result.frame_start, result.frame_duration) == (10, 44)
    assert Path(result.audio_path).stat().st_size > 44 / FPS * 48000 * 2 * 0.9


def test_transformed_strip_is_rendered_over_its_range(
    fresh: Any, clip: Path, dub: Path, tmp_path: Path
) -> None:
    from bl_ext.user_default.chamelaion_lipsync import export

    fresh.render.resolution_x, fresh.render.resolution_y = 128, 64
    movie, _ = shot(fresh, clip, dub, start=10, offset=6, tail=10)
    movie.color_saturation = 0.5
    result = export.export(bpy.context, fresh, movie, "render-test")
    assert result.rendered and result.video_range is None
    import av

    with av.open(result.video_path) as container:
        frames = [media_index(f) for f in container.decode(video=0)]
    assert len(frames) == 44 and frames[0] == 6
    assert (fresh.frame_start, movie.mute) == (1, False)


def media_index(frame: Any) -> int:
    from bridge import media

    return media.frame_index_of(frame)


def add_job(scene: Any, movie: Any, output: Path, reference_id: str) -> Any:
    from bl_ext.user_default.chamelaion_lipsync import export

    job = scene.chamelaion.jobs.add()
    job.reference_id, job.request_id = reference_id, "req-1"
    job.source_name, job.source_tag = movie.name, export.tag_of(movie)
    job.frame_start, job.frame_duration = movie.frame_final_start, movie.frame_final_duration
    job.channel, job.output_path = movie.channel, str(output)
    return job


def test_take_skips_an_occupied_channel_and_moves_nothing(
    fresh: Any, clip: Path, dub: Path, tmp_path: Path
) -> None:
    from bl_ext.user_default.chamelaion_lipsync import importer

    movie, sound = shot(fresh, clip, dub)
    blocker = strips(fresh).new_sound("music", str(dub), channel=2, frame_start=30)
    before = {s.name: (s.channel, s.frame_final_start, s.frame_final_end) for s in strips(fresh)}
    take = tmp_path / "take.mp4"
    from bridge import media

    media.make_test_video(take, 44, FPS, (128, 64))
    strip, warning = importer.import_result(fresh, add_job(fresh, movie, take, "take-a"))
    assert warning == ""
    assert strip.channel == 4  # 2 is busy over the range, 3 holds the dialogue
    assert (strip.frame_final_start, strip.frame_final_duration) == (10, 44)
    assert strip["chamelaion_reference_id"] == "take-a" and "take-a" in strip.name
    after = {s.name: (s.channel, s.frame_final_start, s.frame_final_end) for s in strips(fresh)}
    assert {k: after[k] for k in before} == before
    assert blocker.channel == 2 and sound.channel == 3


def test_jobs_persist_in_the_saved_file(fresh: Any, clip: Path, dub: Path, tmp_path: Path) -> None:
    movie, _ = shot(fresh, clip, dub)
    add_job(fresh, movie, tmp_path / "none.mp4", "persisted-1")
    path = tmp_path / "edit.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=str(path))
    jobs = bpy.context.scene.chamelaion.jobs
    assert [j.reference_id for j in jobs] == ["persisted-1"]
    assert (jobs[0].frame_start, jobs[0].frame_duration) == (10, 44)
