"""The export side of Lip Sync in real Blender: what a job sends (plan) and the background
Blender that mixes the dialogue down and renders the raw picture (ExportTask)."""

from __future__ import annotations

import dataclasses
import os
import wave
from array import array
from pathlib import Path
from typing import Any

import av
import bpy
import numpy
import pytest

from tests.addon.conftest import FPS, shot, strips
from tests.helpers import wait_until
from tests.media_samples import frame_index_of, make_test_video

pytestmark = pytest.mark.blender
RATE = 48000


@pytest.fixture
def lipsync(addon: Any) -> Any:
    """The installed add-on's export and background modules."""
    from bl_ext.user_default.chamelaion_lipsync import background, export

    return dataclasses.make_dataclass("Modules", ["export", "background"])(export, background)


@pytest.fixture
def scene(fresh: Any, tmp_path: Path) -> Any:
    """The fresh file saved in the test's folder: exports land in its `chamelaion/`."""
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "edit.blend"))
    return fresh


@pytest.fixture(scope="session")
def frames(tmp_path_factory: pytest.TempPathFactory, clip: Path) -> Path:
    """The test clip as a numbered PNG sequence (img001.png is clip frame 0)."""
    folder = tmp_path_factory.mktemp("frames")
    with (
        av.open(str(clip)) as source,
        av.open(str(folder / "img%03d.png"), "w", format="image2") as out,
    ):
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = 128, 64, "rgb24"
        for frame in source.decode(video=0):
            for packet in stream.encode(frame.reformat(format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return folder


@pytest.fixture(scope="session")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Big enough that its render is still running when a test cancels it."""
    folder = tmp_path_factory.mktemp("long")
    return make_test_video(folder / "long.mp4", 240, FPS, (640, 360))


@pytest.fixture(scope="session")
def click(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s of silence with a 10 ms burst at exactly 1.0 s."""
    path = tmp_path_factory.mktemp("click") / "click.wav"
    samples = array("h", bytes(2 * 3 * RATE))
    for i in range(RATE, RATE + RATE // 100):
        samples[i] = 20000
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(RATE)
        fh.writeframes(samples.tobytes())
    return path


def finish(task: Any) -> Any:
    """Wait for the background export to end; it must have succeeded."""
    state = wait_until(
        lambda: (s := task.poll()).stage in ("done", "failed", "canceled") and s,
        timeout=120,
        message="the background export",
    )
    assert (state.stage, state.error) == ("done", "")
    return state


def frame_indices(path: str) -> list[int]:
    with av.open(path) as container:
        return [frame_index_of(f) for f in container.decode(video=0)]


def rgb_frames(path: Path | str) -> list[numpy.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24").astype(int) for f in container.decode(video=0)]


def wav(path: str) -> tuple[float, float | None]:
    """A mixdown's length in seconds and where its first loud sample is (None: silent)."""
    with wave.open(path) as fh:
        rate, channels, count = fh.getframerate(), fh.getnchannels(), fh.getnframes()
        samples = array("h", fh.readframes(count))
    loud = next((i for i, v in enumerate(samples) if abs(v) > 5000), None)
    return count / rate, None if loud is None else loud // channels / rate


def use_sequencer(scene: Any) -> None:
    """Headless 5.0 wants the workspace's sequencer scene before sequencer operators."""
    workspace = bpy.context.workspace
    if hasattr(workspace, "sequencer_scene"):
        workspace.sequencer_scene = scene


def overlay(scene: Any, name: str, kind: str, channel: int, start: int, length: int) -> Any:
    """An effect strip without inputs (5.0 takes a length where 4.x took the end frame)."""
    span = {"length": length} if bpy.app.version >= (5, 0) else {"frame_end": start + length}
    return strips(scene).new_effect(name, kind, channel=channel, frame_start=start, **span)


def settings(owner: Any) -> dict[str, Any]:
    """Every plain property of an RNA struct, comparable."""
    values = {}
    for prop in owner.bl_rna.properties:
        if prop.identifier == "rna_type" or prop.type in ("POINTER", "COLLECTION"):
            continue
        value = getattr(owner, prop.identifier)
        values[prop.identifier] = (
            value if isinstance(value, str | int | float | set) else tuple(value)
        )
    return values


def editor_settings(scene: Any) -> dict[str, Any]:
    render = scene.render
    return {
        "render": settings(render),
        "image_settings": settings(render.image_settings),
        "ffmpeg": settings(render.ffmpeg),
        "view": settings(scene.view_settings),
        "scene": (scene.frame_start, scene.frame_end, scene.frame_current),
        "strips": {s.name: (s.mute, s.channel, s.frame_final_start) for s in strips(scene)},
    }


def test_untouched_trimmed_strip_is_cut_by_the_bridge_and_only_the_dub_is_mixed(
    lipsync: Any, scene: Any, clip: Path, dub: Path
) -> None:
    movie, _ = shot(scene, clip, dub, start=10, offset=6, tail=10)
    plan = lipsync.export.plan(bpy.context, scene, movie, "switch-1")
    assert plan.placement == "switch" and plan.cover_tag == plan.source_tag
    assert (plan.start, plan.end, plan.source_first, plan.warning) == (10, 54, 6, "")
    assert plan.video_path == str(clip) and plan.cover_channel == 1
    assert plan.video_range == pytest.approx(
        {"start_seconds": 6 / FPS, "duration_seconds": 44 / FPS}
    )
    assert not os.path.exists(plan.audio_path)
    task = lipsync.background.ExportTask.start(bpy.context, plan)
    finish(task)
    seconds, first_sound = wav(plan.audio_path)
    assert seconds == pytest.approx(44 / FPS, abs=0.002) and first_sound is not None
    assert os.listdir(Path(plan.audio_path).parent) == [Path(plan.audio_path).name]


def test_held_frames_are_left_out_so_picture_and_sound_match(
    lipsync: Any, scene: Any, clip: Path, dub: Path
) -> None:
    movie, sound = shot(scene, clip, dub, start=10, offset=0, tail=0)
    movie.frame_offset_start, movie.frame_offset_end = -5, -7  # 5 held frames, 7 after
    sound.frame_start = 5
    assert (movie.frame_final_start, movie.frame_final_end) == (5, 77)
    plan = lipsync.export.plan(bpy.context, scene, movie, "holds-1")
    assert (plan.placement, plan.start, plan.end, plan.source_first) == ("switch", 10, 70, 0)
    assert plan.video_range == pytest.approx({"start_seconds": 0, "duration_seconds": 60 / FPS})
    assert plan.warning == "Frames 5-9 and 70-76 hold a still and are not sent."
    finish(lipsync.background.ExportTask.start(bpy.context, plan))
    assert wav(plan.audio_path)[0] == pytest.approx(60 / FPS, abs=0.002)


def test_a_strip_showing_only_held_frames_is_refused(
    lipsync: Any, scene: Any, clip: Path, dub: Path
) -> None:
    movie, _ = shot(scene, clip, dub, start=10, offset=0, tail=0)
    movie.frame_offset_end = -20
    movie.frame_offset_start = 62  # past the last of its 60 frames: only the held one shows
    with pytest.raises(lipsync.export.ExportError, match="shows only held still frames"):
        lipsync.export.plan(bpy.context, scene, movie, "held-only")


def test_a_movie_at_another_rate_is_sent_as_blender_plays_it_with_a_warning(
    lipsync: Any, scene: Any, clip: Path, dub: Path
) -> None:
    scene.render.fps = 25
    scene.render.resolution_x, scene.render.resolution_y = 128, 64
    movie, _ = shot(scene, clip, dub, start=10, offset=6, tail=10)
    plan = lipsync.export.plan(bpy.context, scene, movie, "rate-1")
    assert (plan.placement, plan.start, plan.end, plan.fps) == ("overlay", 10, 54, 25)
    assert plan.warning.startswith("Strip 'shot' is 24 fps in a 25 fps scene, so the picture")
    finish(lipsync.background.ExportTask.start(bpy.context, plan))
    assert frame_indices(plan.video_path) == list(range(6, 50))
    assert wav(plan.audio_path)[0] == pytest.approx(44 / 25, abs=0.002)


def test_a_range_before_frame_zero_keeps_picture_and_sound_aligned(
    lipsync: Any, scene: Any, clip: Path, click: Path
) -> None:
    scene.render.resolution_x, scene.render.resolution_y = 128, 64
    movie, sound = shot(scene, clip, click, start=-30, offset=0, tail=0)
    sound.frame_start = -40  # its burst, 1 s in, sounds at frame -16
    untouched = lipsync.export.plan(bpy.context, scene, movie, "before-zero-cut")
    assert (untouched.start, untouched.end, untouched.source_first) == (-30, 30, 0)
    movie.use_reverse_frames = True
    plan = lipsync.export.plan(bpy.context, scene, movie, "before-zero")
    assert (plan.placement, plan.start, plan.end) == ("overlay", -30, 30)
    finish(lipsync.background.ExportTask.start(bpy.context, plan))
    assert frame_indices(plan.video_path) == list(range(59, -1, -1))
    seconds, burst = wav(plan.audio_path)
    assert seconds == pytest.approx(60 / FPS, abs=0.002)
    assert burst == pytest.approx(14 / FPS, abs=0.002)
    assert (movie.frame_final_start, sound.frame_final_start, scene.frame_start) == (-30, -40, 1)


def test_a_meta_strip_sends_its_picture_and_the_dialogue_inside_it(
    lipsync: Any, scene: Any, clip: Path, dub: Path
) -> None:
    scene.render.resolution_x, scene.render.resolution_y = 128, 64
    movie, sound = shot(scene, clip, dub, start=10, offset=6, tail=10)
    sound.frame_offset_end = 28  # all three end with the picture, at frame 54
    own = strips(scene).new_sound("shot-sound", str(clip), channel=4, frame_start=4)
    own.frame_offset_start, own.frame_offset_end = 6, 10
    overlay(scene, "subtitle", "COLOR", channel=6, start=10, length=44)
    for strip in strips(scene):
        strip.select = strip in (movie, sound, own)
    use_sequencer(scene)
    with bpy.context.temp_override(scene=scene):
        assert bpy.ops.sequencer.meta_make() == {"FINISHED"}
    meta = scene.sequence_editor.active_strip
    assert meta.type == "META" and (meta.frame_final_start, meta.frame_final_end) == (10, 54)
    meta.select = False
    plan = lipsync.export.plan(bpy.context, scene, meta, "meta-1")
    assert (plan.placement, plan.start, plan.end) == ("overlay", 10, 54)
    assert plan.sounds == (sound.name,) and plan.picture == (meta.name,)
    finish(lipsync.background.ExportTask.start(bpy.context, plan))
    assert frame_indices(plan.video_path) == list(range(6, 50))
    assert wav(plan.audio_path)[1] is not None


def test_an_image_sequence_renders_its_raw_picture_whatever_the_output_settings(
    lipsync: Any, scene: Any, frames: Path, clip: Path, dub: Path
) -> None:
    render = scene.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = 320, 160, 50
    scene.view_settings.view_transform = "AgX"
    scene.view_settings.look = "AgX - Punchy"
    render.use_stamp = True
    images = strips(scene).new_image("images", str(frames / "img001.png"), 1, frame_start=10)
    for index in range(2, 61):
        images.elements.append(f"img{index:03d}.png")
    images.transform.offset_x, images.transform.scale_x = 40, 0.5
    images.use_flip_x, images.blend_alpha = True, 0.5
    images.crop.min_x = 20
    images.keyframe_insert("blend_alpha", frame=10)
    use_sequencer(scene)
    images.modifiers.new("grade", "BRIGHT_CONTRAST").bright = 40
    strips(scene).new_sound("dub", str(dub), channel=3, frame_start=10)
    scene.sequence_editor.active_strip = images
    plan = lipsync.export.plan(bpy.context, scene, images, "images-1")
    assert (plan.placement, plan.start, plan.end, plan.cover_tag) == (
        "overlay",
        10,
        70,
        plan.source_tag,
    )
    finish(lipsync.background.ExportTask.start(bpy.context, plan))
    rendered = rgb_frames(plan.video_path)
    assert [f.shape for f in rendered[:1]] == [(64, 128, 3)]  # the images' size, not the canvas
    assert frame_indices(plan.video_path) == list(range(60))
    source = rgb_frames(clip)
    for index in (0, 30, 59):
        assert numpy.abs(rendered[index] - source[index]).mean() < 3  # no AgX, look or fade
        assert numpy.abs(rendered[index][-16:] - source[index][-16:]).mean() < 3  # no stamp


def test_a_retimed_and_transformed_movie_renders_its_timing_not_its_look(
    lipsync: Any, scene: Any, clip: Path, dub: Path
) -> None:
    scene.render.resolution_x, scene.render.resolution_y = 128, 64
    movie, _ = shot(scene, clip, dub, start=10, offset=0, tail=0)
    speed = strips(scene).new_effect("speed", "SPEED", channel=2, frame_start=10, input1=movie)
    speed.speed_control, speed.speed_factor = "MULTIPLY", 2.0
    speed.transform.rotation, speed.color_multiply = 0.3, 0.5
    speed.blend_alpha = 0.4
    speed.keyframe_insert("blend_alpha", frame=10)
    overlay(scene, "grade", "ADJUSTMENT", channel=5, start=10, length=60).color_multiply = 0.2
    plan = lipsync.export.plan(bpy.context, scene, movie, "speed-1")
    assert plan.placement == "overlay" and plan.source_tag != plan.cover_tag
    assert plan.cover_tag == speed["chamelaion_uuid"] and plan.cover_channel == 2
    assert plan.picture == (speed.name, movie.name)
    finish(lipsync.background.ExportTask.start(bpy.context, plan))
    rendered = rgb_frames(plan.video_path)
    source = rgb_frames(clip)
    assert frame_indices(plan.video_path)[:25] == list(range(0, 50, 2))
    assert numpy.abs(rendered[10] - source[20]).mean() < 3


def test_the_editors_settings_and_strips_are_left_exactly_as_they_were(
    lipsync: Any, scene: Any, clip: Path, dub: Path, tmp_path: Path
) -> None:
    (tmp_path / "media").mkdir()
    local = tmp_path / "media" / "shot.mp4"
    local.write_bytes(clip.read_bytes())
    render = scene.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = 128, 64, 50
    render.image_settings.file_format = "PNG"
    render.filepath, render.use_stamp = "//renders/final_", True
    scene.view_settings.view_transform = "AgX"
    scene.frame_start, scene.frame_end = 3, 200
    movie, _ = shot(scene, local, dub, start=10, offset=6, tail=10)
    movie.filepath = "//media/shot.mp4"  # the copy is saved elsewhere: it must still find it
    movie.use_reverse_frames = True
    before = editor_settings(scene)
    plan = lipsync.export.plan(bpy.context, scene, movie, "settings-1")
    assert plan.video_path == str(tmp_path / "chamelaion" / "settings-1.video.mp4")
    finish(lipsync.background.ExportTask.start(bpy.context, plan))
    assert frame_indices(plan.video_path) == list(range(53, 9, -1))
    assert editor_settings(scene) == before
    assert movie.filepath == "//media/shot.mp4"
    assert sorted(os.listdir(tmp_path / "chamelaion")) == [
        "settings-1.audio.wav",
        "settings-1.video.mp4",
    ]


def test_cancel_stops_the_render_and_leaves_no_files(
    lipsync: Any, scene: Any, long_clip: Path, dub: Path
) -> None:
    scene.render.resolution_x, scene.render.resolution_y = 640, 360
    movie, _ = shot(scene, long_clip, dub, start=1, offset=0, tail=0)
    movie.use_reverse_frames = True
    plan = lipsync.export.plan(bpy.context, scene, movie, "cancel-1")
    task = lipsync.background.ExportTask.start(bpy.context, plan)
    wait_until(lambda: task.poll().stage == "rendering", timeout=60, message="rendering")
    task.cancel()
    assert task.poll().stage == "canceled"
    assert task.process.poll() not in (None, 0)  # stopped, not finished
    assert os.listdir(Path(plan.video_path).parent) == []
    assert not task.work.exists()


def test_a_background_failure_is_one_sentence_with_the_log(
    lipsync: Any, scene: Any, clip: Path, dub: Path
) -> None:
    movie, _ = shot(scene, clip, dub)
    movie.use_reverse_frames = True
    plan = lipsync.export.plan(bpy.context, scene, movie, "failing-1")
    task = lipsync.background.ExportTask.start(bpy.context, dataclasses.replace(plan, scene="Gone"))
    state = wait_until(lambda: (s := task.poll()).stage == "failed" and s, timeout=60)
    log = Path(plan.audio_path).with_suffix(".log")
    assert state.error == (
        "Preparing strip 'shot' for lip sync failed: the saved copy has no scene 'Gone' with "
        f"strips; the details are in {log}."
    )
    assert os.listdir(log.parent) == [log.name] and not task.work.exists()
