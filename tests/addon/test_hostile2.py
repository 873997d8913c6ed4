"""The add-on against an editor a second time: rendered takes, deleted strips, a saved
project reopened elsewhere, the bridge down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy
import pytest

from tests.addon.conftest import (
    addon_module,
    lipsync,
    row,
    shot,
    strips,
    sync_until,
    take_of,
)

pytestmark = pytest.mark.blender


def rendered_shot(scene: Any, clip: Path, dub: Path) -> Any:
    movie, _ = shot(scene, clip, dub)
    movie.use_reverse_frames = True
    return movie


def scene_now() -> Any:
    return bpy.context.scene


def test_deleting_a_take_strip_brings_its_shot_back_and_place_take_restores_it(
    fresh: Any, clip: Path, dub: Path
) -> None:
    rendered_shot(fresh, clip, dub)
    ref = lipsync(fresh)
    take = sync_until(lambda: take_of(scene_now(), ref), message="the take")
    strips(fresh).remove(take)  # the editor deletes the take strip to get the original back
    bpy.ops.sequencer.chamelaion_sync()
    assert not strips(fresh)["shot"].mute, "the shot is gone from the render"
    assert row(ref)["state"] == "completed" and ref in addon_module("sync").memory.placed
    assert bpy.ops.sequencer.chamelaion_place_take(reference_id=ref) == {"FINISHED"}
    assert strips(fresh)["shot"].mute and not take_of(fresh, ref).mute
    bpy.ops.sequencer.chamelaion_sync()
    assert strips(fresh)["shot"].mute, "a cover whose take shows stays hidden"


def test_lip_sync_on_a_take_strip_syncs_the_shot_again_as_its_next_take(
    fresh: Any, clip: Path, dub: Path
) -> None:
    rendered_shot(fresh, clip, dub)
    first = lipsync(fresh)
    take = sync_until(lambda: take_of(scene_now(), first), message="take 1")
    strips(fresh)["shot"].select = False
    take.select = True  # the editor clicks the take strip: it sits on top
    fresh.sequence_editor.active_strip = take
    second = lipsync(fresh)
    plan = addon_module("sync").memory.exports[second].task.plan
    assert (plan.placement, plan.source_name) == ("overlay", "shot"), "the take was sent"
    assert sync_until(lambda: take_of(fresh, second), message="take 2") == take
    assert [t.reference_id for t in addon_module("takes").takes_of(take)] == ["", first, second]
    assert strips(fresh)["shot"].mute and not take.mute
