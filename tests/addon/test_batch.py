"""Several picture strips as one batch, in real Blender: one job per strip exported by one
background Blender, each take a drop-in, strips without dialogue skipped with a note, the
batch's totals and Retry Failed in the panel, and the billable seconds shown before paying."""

from __future__ import annotations

import dataclasses
import os
import secrets
from pathlib import Path
from typing import Any

import bpy
import pytest

from tests.addon.conftest import (
    ADDON,
    FPS,
    addon_module,
    first_frame_index,
    lipsync,
    row,
    strips,
    sync_until,
    take_of,
)
from tests.faults import faults_of
from tests.helpers import wait_until
from tests.media_samples import make_test_video

pytestmark = pytest.mark.blender
SPACING = 100  # timeline frames between the shots' first frames
TAIL = 10


def offset_of(number: int) -> int:
    """Each shot starts at another frame of the clip, so a take cut wrongly shows."""
    return 4 + 2 * number


def shots(
    scene: Any,
    clip: Path,
    dub: Path,
    count: int,
    silent: tuple[int, ...] = (),
    last: Path | None = None,
) -> list:
    """`count` trimmed movie strips of `clip` (the last one of `last` if given) along channel
    1, each with its dub on channel 3 (none under the shots numbered in `silent`); every strip
    selected, the first shot active."""
    movies = []
    for number in range(1, count + 1):
        start, offset = 10 + (number - 1) * SPACING, offset_of(number)
        source = last if last is not None and number == count else clip
        movie = strips(scene).new_movie(
            f"shot{number}", str(source), channel=1, frame_start=start - offset
        )
        movie.frame_offset_start, movie.frame_offset_end = offset, TAIL
        movies.append(movie)
        if number not in silent:
            strips(scene).new_sound(f"dub{number}", str(dub), channel=3, frame_start=start)
    for strip in strips(scene):
        strip.select = True
    scene.sequence_editor.active_strip = movies[0]
    return movies


def lip_sync_batch(scene: Any) -> str:
    """Lip Sync as a click runs it, under a reference ID base of the test's choosing."""
    return lipsync(scene, f"b-{secrets.token_hex(4)}")


def group_of(reference_id: str) -> Any:
    """The panel's group (batch) that shows this job."""
    batch = addon_module("batch")
    groups = batch.groups(list(addon_module("sync").rows()))
    return next((g for g in groups if any(j["reference_id"] == reference_id for j in g.jobs)), None)


def batch_group(batch_id: str) -> Any:
    groups = addon_module("batch").groups(list(addon_module("sync").rows()))
    return next(g for g in groups if g.batch.get("id") == batch_id)


def sync_through(expected: str, condition: Any, message: str) -> Any:
    """Sync until `condition()`, where a failure report (as the status bar shows it) is the
    expected one: an ERROR report makes the operator raise."""

    def step() -> Any:
        try:
            bpy.ops.sequencer.chamelaion_sync()
        except RuntimeError as exc:
            assert expected in str(exc)
        return condition()

    return wait_until(step, timeout=90, interval=0.05, message=message)


class Layout:
    """Stands in for the panel's layout (headless Blender draws nothing): what it shows."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def label(self, text: str = "", icon: str = "NONE") -> None:
        self.texts.append(text)

    def operator(self, idname: str, **_: Any) -> Any:
        self.texts.append(idname)
        return type("Properties", (), {})()

    def separator(self) -> None:
        pass

    def box(self) -> Layout:
        return self

    def row(self, **_: Any) -> Layout:
        return self

    def column(self, **_: Any) -> Layout:
        return self


def panel_jobs(scene: Any) -> list[str]:
    layout = Layout()
    panel = addon_module("ui").SEQUENCER_PT_chamelaion
    panel.draw_jobs(layout, bpy.context, scene.sequence_editor)
    return layout.texts


def test_five_strips_make_five_jobs_in_one_export_and_five_drop_in_takes(
    fresh: Any, clip: Path, dub: Path
) -> None:
    movies = shots(fresh, clip, dub, 5)
    background = addon_module("background")
    started = background.BatchExport.started
    base = lip_sync_batch(fresh)
    assert background.BatchExport.started == started + 1  # one copy, one process
    refs = [f"{base}-{n:02d}" for n in range(1, 6)]
    sync_until(lambda: all(take_of(fresh, ref) for ref in refs), timeout=120, message="5 takes")
    for number, (ref, movie) in enumerate(zip(refs, movies, strict=True), 1):
        take = take_of(fresh, ref)
        assert take == movie  # the strip itself shows its own take
        start, duration = 10 + (number - 1) * SPACING, 60 - offset_of(number) - TAIL
        assert (take.channel, take.frame_final_start, take.frame_final_duration) == (
            1,
            start,
            duration,
        )
        assert first_frame_index(Path(bpy.path.abspath(take.filepath))) == offset_of(number)
        assert take["chamelaion_request_id"] == row(ref)["request_id"] != ""
    seconds = sum(60 - offset_of(n) - TAIL for n in range(1, 6)) / FPS
    group = group_of(refs[0])
    assert [j["reference_id"] for j in group.jobs] == refs
    assert group.totals() == pytest.approx(
        {"shots": 5, "seconds": seconds, "done": 5, "running": 0, "failed": 0, "skipped": 0},
        abs=0.01,
    )
    sync = addon_module("sync")
    sync.on_load()  # as after a reopen: the batch comes back from the bridge's rows alone
    assert not sync.memory.rows
    sync_until(
        lambda: (g := group_of(refs[0])) is not None and len(g.jobs) == 5,
        message="the batch from the bridge",
    )
    assert f"5 shots, {seconds:.1f} s billable" in panel_jobs(fresh)
    assert "5 done, 0 running, 0 failed" in panel_jobs(fresh)


@pytest.fixture(scope="session")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Big enough that its render still runs while the jobs before it are handed over."""
    return make_test_video(tmp_path_factory.mktemp("long") / "long.mp4", 240, FPS, (640, 360))


def test_one_background_export_hands_over_each_job_when_whole_and_a_failure_fails_only_it(
    fresh: Any, clip: Path, long_clip: Path, dub: Path, tmp_path: Path
) -> None:
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "batch.blend"))
    fresh.render.resolution_x, fresh.render.resolution_y = 640, 360
    movies = shots(fresh, clip, dub, 3, last=long_clip)
    movies[2].use_reverse_frames = True  # rendered, and for long
    export, background = addon_module("export"), addon_module("background")
    plans = [export.plan(bpy.context, fresh, m, f"whole-{n}") for n, m in enumerate(movies, 1)]
    plans[1] = dataclasses.replace(plans[1], scene="Gone")
    started = background.BatchExport.started
    first, gone, long = background.BatchExport.start(plans).tasks()
    assert background.BatchExport.started == started + 1
    wait_until(lambda: first.poll().stage == "done", timeout=60, message="the first job")
    assert long.poll().stage in ("waiting", "mixing", "rendering")  # the batch goes on
    assert first.process.poll() is None and os.path.isfile(plans[0].audio_path)
    state = wait_until(lambda: (s := gone.poll()).stage == "failed" and s, timeout=60)
    [log] = (tmp_path / "chamelaion").glob("*.log")
    assert log.name.startswith("batch-")  # the batch's log, not the first shot's
    assert state.error == (
        "Preparing strip 'shot2' for lip sync failed: the saved copy has no scene 'Gone' with "
        f"strips; the details are in {log}."
    )
    wait_until(lambda: long.poll().stage == "done", timeout=180, message="the rendered job")
    assert sorted(os.listdir(tmp_path / "chamelaion")) == sorted(
        [log.name, "whole-1.audio.wav", "whole-3.audio.wav", "whole-3.video.mp4"]
    )
    assert not first.work.exists()


def test_a_strip_without_dialogue_is_skipped_with_a_note_and_the_others_go(
    fresh: Any, clip: Path, dub: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    shots(fresh, clip, dub, 3, silent=(2,))
    base = lip_sync_batch(fresh)
    note = (
        "Strip 'shot2' was skipped: no sound under the picture strip: add the dubbed dialogue "
        "as a sound strip over it (and select it), then run Lip Sync again."
    )
    assert f"Warning: {note}" in capfd.readouterr().out  # the status bar's report
    sent = [f"{base}-01", f"{base}-03"]
    sync_until(lambda: all(take_of(fresh, ref) for ref in sent), timeout=90, message="2 takes")
    assert not row(f"{base}-02") and take_of(fresh, f"{base}-02") is None
    group = group_of(sent[0])
    assert group.batch["skipped"] == [note]
    assert group.totals()["shots"] == 2 and group.totals()["skipped"] == 1
    shown = panel_jobs(fresh)
    assert "2 done, 0 running, 0 failed, 1 skipped" in shown
    assert any(line.startswith("Strip 'shot2' was skipped") for line in shown)


def test_a_strip_whose_file_changed_rate_fails_alone_and_syncs_on_its_own(
    fresh: Any, clip: Path, dub: Path, tmp_path: Path
) -> None:
    """A batch takes each movie's rate from Blender's record (opening 50 files would hold up
    the click); a strip pointed at a file of another rate since is caught by the export."""
    movies = shots(fresh, clip, dub, 3)
    faster = make_test_video(tmp_path / "faster.mp4", 60, 30, (128, 64))
    movies[1].filepath = str(faster)
    base = lip_sync_batch(fresh)
    refs = [f"{base}-{n:02d}" for n in range(1, 4)]
    sync_through(
        "plays at 30 fps",
        lambda: take_of(fresh, refs[0]) and take_of(fresh, refs[2]),
        message="the other two takes",
    )
    assert row(refs[1])["state"] == "failed"
    assert row(refs[1])["error"].startswith(
        "Preparing strip 'shot2' for lip sync failed: its file plays at 30 fps, not the 24 fps "
        "Blender noted when the strip was made (its file was changed since); run Lip Sync on "
        "this strip alone, which reads the file itself; the details are in "
    )
    for strip in strips(fresh):
        strip.select = strip in (movies[1], fresh.sequence_editor.strips["dub2"])
    fresh.sequence_editor.active_strip = movies[1]
    fresh.chamelaion.reference_id = alone = f"{base}-alone"
    try:
        assert bpy.ops.sequencer.chamelaion_lipsync() == {"FINISHED"}
    finally:
        fresh.chamelaion.reference_id = ""
    take = sync_until(lambda: take_of(fresh, alone), timeout=90, message="the take on its own")
    assert take.frame_final_start == movies[1].frame_final_start
    scene = reopen(tmp_path / "rate.blend")  # the failure never reached the bridge: kept
    sync_until(
        lambda: (group := group_of(refs[0])) is not None and len(group.jobs) == 3,
        message="the batch after the reopen",
    )
    assert "2 done, 0 running, 1 failed" in panel_jobs(scene)


def test_a_batch_where_no_strip_has_dialogue_is_refused(fresh: Any, clip: Path, dub: Path) -> None:
    shots(fresh, clip, dub, 2, silent=(1, 2))
    with pytest.raises(RuntimeError, match="None of the 2 selected strips can be sent"):
        bpy.ops.sequencer.chamelaion_lipsync()
    assert not list(addon_module("sync").memory.exports)


def test_a_failed_job_of_a_batch_fails_alone_and_retry_failed_lands_it(
    fresh: Any, clip: Path, dub: Path, emulator: Any
) -> None:
    faults_of(emulator).fail_next(1, "no face found")
    movies = shots(fresh, clip, dub, 3)
    base = lip_sync_batch(fresh)
    refs = [f"{base}-{n:02d}" for n in range(1, 4)]
    sync_through(
        "no face found",
        lambda: (t := group_of(refs[0]).totals())["failed"] == 1 and t["done"] == 2,
        message="two takes and one failure",
    )
    failed = next(r for r in refs if row(r)["state"] == "failed")
    assert "no face found" in row(failed)["error"] and take_of(fresh, failed) is None
    shown = panel_jobs(fresh)
    assert "2 done, 0 running, 1 failed" in shown
    assert "sequencer.chamelaion_retry_failed" in shown
    batch_id = group_of(refs[0]).batch["id"]
    assert bpy.ops.sequencer.chamelaion_retry_failed(batch_id=batch_id) == {"FINISHED"}
    movie = movies[refs.index(failed)]
    # The API failed its request: the bridge retries it under a new reference_id.
    sync_until(
        lambda: movie.get("chamelaion_reference_id", "").startswith(f"{failed}-r"),
        timeout=90,
        message="the retried take",
    )
    number = refs.index(failed) + 1
    assert (movie.frame_final_start, movie.frame_final_duration) == (
        10 + (number - 1) * SPACING,
        60 - offset_of(number) - TAIL,
    )
    assert first_frame_index(Path(bpy.path.abspath(movie.filepath))) == offset_of(number)
    assert batch_group(batch_id).totals()["done"] == 3
    assert "sequencer.chamelaion_retry_failed" not in panel_jobs(fresh)
    with pytest.raises(RuntimeError, match="no failed or canceled job"):
        bpy.ops.sequencer.chamelaion_retry_failed(batch_id=batch_id)


def test_the_billable_seconds_are_shown_before_sending_and_a_big_batch_asks_first(
    fresh: Any, clip: Path, dub: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    batch = addon_module("batch")
    shots(fresh, clip, dub, 4)
    seconds = sum(60 - offset_of(n) - TAIL for n in range(1, 5)) / FPS
    layout = Layout()
    addon_module("ui").SEQUENCER_PT_chamelaion.draw_selection(layout, fresh, fresh.sequence_editor)
    assert layout.texts == [f"4 shots selected, {seconds:.1f} s billable"]
    limit = bpy.context.preferences.addons[ADDON].preferences.confirm_above
    assert limit == 300.0
    assert batch.needs_confirmation(4, limit + 0.1, limit)
    assert not batch.needs_confirmation(4, limit, limit)
    assert not batch.needs_confirmation(1, limit * 10, limit)  # one shot never asks
    assert batch.confirmation(4, seconds) == (
        f"Send 4 shots, {seconds:.1f} s of billable media, to Chamelaion lip sync?"
    )
    base = lip_sync_batch(fresh)
    report = f"4 shots queued, {seconds:.1f} s of billable media."
    assert report in capfd.readouterr().out
    sync_until(
        lambda: all(take_of(fresh, f"{base}-{n:02d}") for n in range(1, 5)),
        timeout=90,
        message="4 takes",
    )


def reopen(path: Path) -> Any:
    """Save the file and open it again in this Blender session; its scene."""
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.open_mainfile(filepath=str(path))
    return bpy.context.scene


def test_a_shot_canceled_while_exporting_stays_in_its_batch_and_retry_failed_exports_it(
    fresh: Any, clip: Path, dub: Path, tmp_path: Path
) -> None:
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "cancel.blend"))
    shots(fresh, clip, dub, 3)
    base = lip_sync_batch(fresh)
    refs = [f"{base}-{n:02d}" for n in range(1, 4)]
    assert bpy.ops.sequencer.chamelaion_cancel(reference_id=refs[1]) == {"FINISHED"}
    sync_until(lambda: take_of(fresh, refs[0]) and take_of(fresh, refs[2]), message="2 takes")
    assert row(refs[1])["state"] == "canceled" and take_of(fresh, refs[1]) is None
    shown = panel_jobs(fresh)
    assert any(text.startswith("3 shots") for text in shown)
    assert "2 done, 0 running, 1 failed" in shown
    scene = reopen(tmp_path / "cancel.blend")
    sync_until(
        lambda: (group := group_of(refs[0])) is not None and len(group.jobs) == 3,
        message="the batch after the reopen",
    )
    shown = panel_jobs(scene)
    assert "2 done, 0 running, 1 failed" in shown
    assert row(refs[1])["state"] == "canceled"
    assert "sequencer.chamelaion_retry_failed" in shown
    batch_id = group_of(refs[0]).batch["id"]
    assert bpy.ops.sequencer.chamelaion_retry_failed(batch_id=batch_id) == {"FINISHED"}
    take = sync_until(lambda: take_of(scene, refs[1]), timeout=90, message="the retried take")
    assert take.name == "shot2"  # the strip itself shows it, in place
    assert (take.frame_final_start, take.frame_final_duration) == (
        10 + SPACING,
        60 - offset_of(2) - TAIL,
    )
    assert first_frame_index(Path(bpy.path.abspath(take.filepath))) == offset_of(2)
    assert "3 done, 0 running, 0 failed" in panel_jobs(scene)


def selection_line(scene: Any) -> list[str]:
    """The panel's line about what Lip Sync would send now."""
    layout = Layout()
    panel = addon_module("ui").SEQUENCER_PT_chamelaion
    panel.draw_selection(layout, scene, scene.sequence_editor)
    return layout.texts


def sent_seconds(*numbers: int) -> float:
    return sum(60 - offset_of(n) - TAIL for n in numbers) / FPS


class AskingWindowManager:
    """Stands in for the window manager (headless Blender has no window to ask in)."""

    def __init__(self) -> None:
        self.asked: dict[str, Any] | None = None

    def invoke_confirm(self, operator: Any, event: Any, **question: Any) -> set[str]:
        self.asked = question
        return {"RUNNING_MODAL"}


def asks(scene: Any, limit: float, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any] | None:
    """What a click on Lip Sync asks first with this confirmation limit (None: it sends)."""
    prefs = bpy.context.preferences.addons[ADDON].preferences
    window_manager = AskingWindowManager()
    context = type("Context", (), {"window_manager": window_manager})()
    monkeypatch.setattr(addon_module("compat"), "sequencer_scene", lambda _context: scene)
    operator = addon_module("operators").SEQUENCER_OT_chamelaion_lipsync
    sender = type("Operator", (), {"execute": lambda self, context: {"FINISHED"}})()
    before, prefs.confirm_above = prefs.confirm_above, limit
    try:
        operator.invoke(sender, context, None)
    finally:
        prefs.confirm_above = before
    return window_manager.asked


def test_the_estimate_and_the_question_count_only_the_strips_the_batch_sends(
    fresh: Any, clip: Path, dub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shots(fresh, clip, dub, 3, silent=(3,))
    seconds = sent_seconds(1, 2)
    assert selection_line(fresh) == [f"2 shots to send, {seconds:.1f} s billable, 1 skipped"]
    assert asks(fresh, seconds + 0.5, monkeypatch) is None  # all three would be above
    assert asks(fresh, seconds - 0.5, monkeypatch) == {
        "title": "Lip Sync",
        "message": f"Send 2 shots, {seconds:.1f} s of billable media, to Chamelaion lip sync?",
        "confirm_text": "Send",
    }
    monkeypatch.undo()
    base = lip_sync_batch(fresh)
    sent = [f"{base}-01", f"{base}-02"]
    sync_until(lambda: all(take_of(fresh, ref) for ref in sent), timeout=90, message="2 takes")
    assert sum(job["client"]["seconds"] for job in group_of(sent[0]).jobs) == pytest.approx(
        seconds, abs=0.01
    )


def test_muted_strips_and_strips_on_a_muted_channel_are_skipped_and_not_billed(
    fresh: Any, clip: Path, dub: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    movies = shots(fresh, clip, dub, 3)
    movies[1].mute = True
    movies[2].channel = 6
    fresh.sequence_editor.channels[6].mute = True
    seconds = sent_seconds(1)
    assert selection_line(fresh) == [f"1 shot to send, {seconds:.1f} s billable, 2 skipped"]
    base = lip_sync_batch(fresh)
    out = capfd.readouterr().out
    for name in ("shot2", "shot3"):
        assert (
            f"Warning: Strip '{name}' was skipped: it is muted (or its channel, or a meta strip "
            "around it, is); unmute it to send it, or leave it out of the selection." in out
        )
    assert f"1 shots queued, {seconds:.1f} s of billable media, 2 skipped." in out
    sync_until(lambda: take_of(fresh, f"{base}-01"), message="the unmuted shot's take")
    assert not row(f"{base}-02") and not row(f"{base}-03")


def test_with_sound_strips_selected_a_shot_without_one_under_it_is_skipped(
    fresh: Any, clip: Path, dub: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Not the music that happens to play there: the editor chose the dialogue."""
    movies = shots(fresh, clip, dub, 2, silent=(2,))
    music = strips(fresh).new_sound("music", str(dub), channel=4, frame_start=SPACING)
    music.select = False
    seconds = sent_seconds(1)
    assert selection_line(fresh) == [f"1 shot to send, {seconds:.1f} s billable, 1 skipped"]
    base = lip_sync_batch(fresh)
    assert (
        "Warning: Strip 'shot2' was skipped: none of the selected sound strips is under it; "
        "select its dubbed dialogue too (or no sound strip, to send what is audible there), "
        "then run Lip Sync again." in capfd.readouterr().out
    )
    sync_until(lambda: take_of(fresh, f"{base}-01"), message="the first shot's take")
    assert not row(f"{base}-02")
    for strip in strips(fresh):  # no sound strip selected: the music is what plays there
        strip.select = strip in movies
    assert selection_line(fresh) == [f"2 shots selected, {sent_seconds(1, 2):.1f} s billable"]


def test_a_shot_whose_take_strip_covers_it_is_not_skipped_as_muted(
    fresh: Any, clip: Path, dub: Path
) -> None:
    """A rendered take mutes the strip it covers; selecting the shots again sends that strip."""
    movies = shots(fresh, clip, dub, 2)
    movies[0].use_reverse_frames = True  # rendered: its take is a strip above it
    base = lip_sync_batch(fresh)
    refs = [f"{base}-01", f"{base}-02"]
    sync_until(lambda: all(take_of(fresh, ref) for ref in refs), timeout=90, message="2 takes")
    assert take_of(fresh, refs[0]) != movies[0] and movies[0].mute
    for strip in strips(fresh):
        strip.select = True
    assert selection_line(fresh) == [f"2 shots selected, {sent_seconds(1, 2):.1f} s billable"]
