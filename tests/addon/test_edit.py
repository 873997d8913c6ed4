"""The add-on in a real edit: undo and redo never lose a job or its take, finished jobs can be
cleared, and nothing goes online while Blender's online access is off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy
import pytest

from tests.addon.conftest import (
    ADDON,
    addon_module,
    lipsync,
    row,
    shot,
    strips,
    sync_until,
    take_of,
)
from tests.faults import faults_of
from tests.helpers import wait_until

pytestmark = pytest.mark.blender


def scene_now() -> Any:
    """After an undo every old reference is stale: look the scene up again."""
    return bpy.context.scene


def test_undoing_another_edit_after_lip_sync_keeps_the_job_and_its_take(
    fresh: Any, clip: Path, dub: Path
) -> None:
    shot(fresh, clip, dub)
    bpy.ops.ed.undo_push(message="the edit")
    ref = lipsync(fresh)
    strips(fresh)["dub"].channel = 5  # another edit while the job runs ...
    bpy.ops.ed.undo_push(message="move the dialogue")
    bpy.ops.ed.undo()  # ... undone
    assert strips(scene_now())["dub"].channel == 3
    take = sync_until(lambda: take_of(scene_now(), ref), message="the take after an undo")
    assert take.name == "shot" and row(ref)["state"] == "completed"


def test_undoing_lip_sync_itself_keeps_the_job_and_its_take_lands(
    fresh: Any, clip: Path, dub: Path
) -> None:
    shot(fresh, clip, dub)
    bpy.ops.ed.undo_push(message="the edit")
    ref = lipsync(fresh)
    bpy.ops.ed.undo()  # Ctrl+Z right after Lip Sync: the strip loses its tag, the job stays
    assert row(ref), "the job is still listed"
    take = sync_until(lambda: take_of(scene_now(), ref), message="the take")
    assert (take.name, take.frame_final_start, take.frame_final_duration) == ("shot", 10, 44)


def test_undoing_the_placement_leaves_the_take_one_click_away(
    fresh: Any, clip: Path, dub: Path
) -> None:
    shot(fresh, clip, dub)
    bpy.ops.ed.undo_push(message="the edit")
    ref = lipsync(fresh)
    sync_until(lambda: take_of(scene_now(), ref), message="the take")
    bpy.ops.ed.undo()  # the placement is an undo step of its own
    movie = strips(scene_now())["shot"]
    assert take_of(scene_now(), ref) is None and "chamelaion_takes" not in movie
    bpy.ops.sequencer.chamelaion_sync()
    assert take_of(scene_now(), ref) is None, "an undone placement is not forced back"
    assert bpy.ops.sequencer.chamelaion_place_take(reference_id=ref) == {"FINISHED"}
    assert take_of(scene_now(), ref) == strips(scene_now())["shot"]
    bpy.ops.ed.undo()
    bpy.ops.ed.redo()
    assert take_of(scene_now(), ref) is not None


def test_clearing_finished_jobs_keeps_their_takes_and_files(
    fresh: Any, clip: Path, dub: Path
) -> None:
    shot(fresh, clip, dub)
    ref = lipsync(fresh)
    take = sync_until(lambda: take_of(fresh, ref), message="the take")
    output = Path(bpy.path.abspath(take.filepath))
    assert bpy.ops.sequencer.chamelaion_clear_finished() == {"FINISHED"}
    sync_until(lambda: not row(ref), message="the row to go")
    assert output.is_file() and take_of(fresh, ref) == take


def test_with_online_access_off_the_service_is_refused_and_the_emulator_is_not(
    fresh: Any, clip: Path, dub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(addon_module("compat"), "online_access", lambda: False)
    prefs = bpy.context.preferences.addons[ADDON].preferences
    emulator_base = prefs.api_base
    shot(fresh, clip, dub)
    prefs.api_base = "https://api.chamelaion.com/api"
    try:
        with pytest.raises(RuntimeError, match="online access is off; turn on Allow Online"):
            bpy.ops.sequencer.chamelaion_lipsync()
    finally:
        prefs.api_base = emulator_base
    ref = lipsync(fresh)  # the emulator on this computer needs no online access
    assert sync_until(lambda: take_of(fresh, ref), message="the take")


def test_a_strip_name_with_umlauts_gives_a_readable_reference_id(
    fresh: Any, clip: Path, dub: Path
) -> None:
    movie, _ = shot(fresh, clip, dub)
    movie.name = "Ärger"
    assert bpy.ops.sequencer.chamelaion_lipsync() == {"FINISHED"}
    sync = addon_module("sync")
    # The add-on sends the names as they are; the bridge answers with the id it spelled.
    made = sync_until(
        lambda: [ref for ref in sync.memory.rows if "-Aerger-" in ref], message="the job"
    )
    assert not any("Ärger" in ref for ref in sync.known_references())
    assert bpy.ops.sequencer.chamelaion_cancel(reference_id=made[0]) == {"FINISHED"}


def test_the_timer_reports_failures_and_outlives_an_exception(
    fresh: Any, clip: Path, dub: Path, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync = addon_module("sync")
    faults_of(emulator).fail_next(1, "video URL is not accessible")
    shot(fresh, clip, dub)
    ref = lipsync(fresh)
    shown: list[tuple[str, str]] = []
    monkeypatch.setattr(sync, "report", lambda level, sentence: shown.append((level, sentence)))
    wait_until(lambda: sync.timer() and row(ref).get("state") == "failed", message="the failure")
    assert any(
        level == "ERROR"
        and sentence.startswith(f"Lip sync {ref} failed: ")
        and "video URL is not accessible" in sentence
        for level, sentence in shown
    )

    def broken(*_args: Any) -> Any:
        raise ValueError("a bug in one pass")

    monkeypatch.setattr(sync, "tick", broken)
    assert sync.timer() in (sync.POLL_ACTIVE, sync.POLL_IDLE)  # Blender keeps calling it
