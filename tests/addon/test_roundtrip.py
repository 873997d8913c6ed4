"""End to end in real Blender: the add-on starts the real bridge, which talks to the emulator."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import bpy
import pytest

from bridge import discovery
from bridge.processes import stop_process
from chamelaion_client.client import BridgeClient
from chamelaion_client.proofs import key_fingerprint
from tests.addon.conftest import (
    ADDON,
    EMULATOR_KEY,
    USER_RESOURCES,
    addon_module,
    configure,
    first_frame_index,
    lipsync,
    row,
    shot,
    sync_until,
    take_of,
)
from tests.faults import faults_of
from tests.helpers import impostor, plant_stale_discovery, wait_until

pytestmark = pytest.mark.blender
ROOT = Path(__file__).resolve().parents[2]


def test_trimmed_strip_switches_to_its_take_in_place(fresh: Any, clip: Path, dub: Path) -> None:
    movie, sound = shot(fresh, clip, dub, start=10, offset=6, tail=10)
    ref = lipsync(fresh)
    take = sync_until(lambda: take_of(fresh, ref), message="the take")
    assert take == movie  # the strip itself shows the take: same channel, grades, stack place
    assert (take.channel, take.frame_final_start, take.frame_final_duration) == (1, 10, 44)
    assert take["chamelaion_request_id"] == row(ref)["request_id"] != ""
    assert first_frame_index(Path(bpy.path.abspath(take.filepath))) == 6
    assert not movie.mute and sound.channel == 3
    assert row(ref)["state"] == "completed" and not row(ref)["warning"]


def test_two_takes_and_the_original_switch_on_one_strip(
    fresh: Any, clip: Path, dub: Path, tmp_path: Path
) -> None:
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "takes.blend"))
    scene = bpy.context.scene
    movie, _ = shot(scene, clip, dub)
    first, second = lipsync(scene), lipsync(scene)
    takes = addon_module("takes")
    sync_until(
        lambda: {first, second} <= takes.references_in(scene.sequence_editor), message="2 takes"
    )
    assert [t.reference_id for t in takes.takes_of(movie)][0] == ""
    assert movie.filepath.startswith("//chamelaion/")
    assert (tmp_path / "chamelaion" / Path(movie.filepath).name).is_file()
    assert bpy.ops.sequencer.chamelaion_switch_take(index=0) == {"FINISHED"}
    assert Path(bpy.path.abspath(movie.filepath)) == clip and "chamelaion_reference_id" not in movie
    assert (movie.frame_final_start, movie.frame_final_duration) == (10, 44)
    index = [t.reference_id for t in takes.takes_of(movie)].index(first)
    assert bpy.ops.sequencer.chamelaion_switch_take(index=index) == {"FINISHED"}
    assert movie["chamelaion_reference_id"] == first
    assert (movie.frame_final_start, movie.frame_final_duration) == (10, 44)
    assert first_frame_index(Path(bpy.path.abspath(movie.filepath))) == 6


def test_failed_remote_job_shows_the_api_message(
    fresh: Any, clip: Path, dub: Path, emulator: Any
) -> None:
    faults_of(emulator).fail_next(1, "video URL is not accessible")
    shot(fresh, clip, dub)
    ref = lipsync(fresh)
    with pytest.raises(RuntimeError, match="failed: .*video URL is not accessible"):
        sync_until(lambda: row(ref).get("state") == "failed", message="the job to fail")
    assert "video URL is not accessible" in row(ref)["error"]
    assert take_of(fresh, ref) is None


def test_bridge_down_gives_a_readable_error(
    fresh: Any, clip: Path, dub: Path, bridge_data: Path, emulator: Any, tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    configure(tmp_path, emulator.base_url, auto_start=False, url=f"http://127.0.0.1:{port}")
    try:
        shot(fresh, clip, dub)
        ref = lipsync(fresh)
        with pytest.raises(RuntimeError, match="not answering"):
            sync_until(lambda: row(ref).get("state") == "failed", message="the error")
        assert f"127.0.0.1:{port} is not answering" in row(ref)["error"]
    finally:
        configure(bridge_data, emulator.base_url)


REOPEN = """
import json, os, sys
sys.path.insert(0, {root!r})
import bpy, addon_utils
addon_utils.enable({addon!r}, default_set=True)
prefs = bpy.context.preferences.addons[{addon!r}].preferences
prefs.data_dir, prefs.api_base, prefs.api_key = {data!r}, {base!r}, "emulator-key"
bpy.ops.wm.open_mainfile(filepath={blend!r})
from tests.helpers import impostor, plant_stale_discovery, wait_until
scene = bpy.context.scene
def landed():
    bpy.ops.sequencer.chamelaion_sync()
    return [s for s in scene.sequence_editor.strips if s.get("chamelaion_reference_id")]
take = wait_until(landed, timeout=60, interval=0.05)[0]
print("RESULT " + json.dumps({{"start": take.frame_final_start,
    "duration": take.frame_final_duration, "channel": take.channel,
    "reference_id": take["chamelaion_reference_id"]}}))
"""


def test_reopened_file_gets_the_result_of_a_job_still_running(
    fresh: Any, clip: Path, dub: Path, tmp_path: Path, emulator: Any, bridge_data: Path
) -> None:
    config = emulator.state.config
    config.processing_seconds = 3.0
    try:
        blend = tmp_path / "reopen.blend"
        bpy.ops.wm.save_as_mainfile(filepath=str(blend))
        scene = bpy.context.scene
        shot(scene, clip, dub)
        reference_id = lipsync(scene)
        sync_until(
            lambda: row(reference_id).get("state") in ("submitted", "processing"),
            message="a running job",
        )
        bpy.ops.wm.save_mainfile()
        bpy.ops.wm.read_homefile(use_empty=True)
    finally:
        config.processing_seconds = 0.3
    script = REOPEN.format(
        root=str(ROOT),
        addon=ADDON,
        data=str(bridge_data),
        base=emulator.base_url,
        blend=str(blend),
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "BLENDER_USER_RESOURCES": USER_RESOURCES},
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout + done.stderr
    take = json.loads(lines[0][len("RESULT ") :])
    assert take == {"start": 10, "duration": 44, "channel": 1, "reference_id": reference_id}


def test_a_key_entered_after_the_bridge_started_reaches_it(
    fresh: Any, clip: Path, dub: Path, bridge_data: Path, emulator: Any, tmp_path: Path
) -> None:
    data = tmp_path / "keyless"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAMELAION_")}
    env["CHAMELAION_BASE_URL"] = emulator.base_url
    keyless = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--data-dir", str(data), "--port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    info = wait_until(lambda: discovery.read_discovery(data), message="the keyless bridge")
    configure(data, emulator.base_url)  # the editor has since entered the key
    try:
        shot(fresh, clip, dub)
        ref = lipsync(fresh)
        assert sync_until(lambda: take_of(fresh, ref), message="the take")
        assert keyless.poll() is None  # the same bridge took the key: no restart
        health = BridgeClient(info["url"], data_dir=data).health()
        assert health["api_key_fingerprint"] == key_fingerprint(
            discovery.read_token(data), EMULATOR_KEY
        )
    finally:
        configure(bridge_data, emulator.base_url)
        stop_process(keyless)
        stray = discovery.read_discovery(data)  # one started instead, if the test failed
        if stray:
            os.kill(stray["pid"], signal.SIGTERM)


def test_a_corrected_key_reaches_the_bridge_and_retry_lands_the_take(
    fresh: Any, clip: Path, dub: Path, bridge_data: Path, emulator: Any
) -> None:
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.api_key = "a-key-with-a-typo"
    try:
        shot(fresh, clip, dub)
        ref = lipsync(fresh)
        with pytest.raises(RuntimeError, match="refused the API key"):
            sync_until(lambda: row(ref).get("state") == "failed", message="the refused key")
        assert "refused the API key" in row(ref)["error"]
    finally:
        prefs.api_key = EMULATOR_KEY  # the editor fixes the key in Preferences
    assert bpy.ops.sequencer.chamelaion_retry(reference_id=ref) == {"FINISHED"}
    take = sync_until(lambda: take_of(fresh, ref), message="the take after retry")
    assert (take.frame_final_start, take.frame_final_duration) == (10, 44)
    assert row(ref)["state"] == "completed" and not row(ref)["error"]


def test_a_stale_bridge_json_never_gets_the_token_and_a_real_bridge_takes_the_job(
    fresh: Any, clip: Path, dub: Path, bridge_data: Path, emulator: Any, tmp_path: Path
) -> None:
    data = tmp_path / "stale"
    with impostor() as stranger:
        token = plant_stale_discovery(data, stranger.url, stranger.port)
        configure(data, emulator.base_url)
        try:
            shot(fresh, clip, dub)
            ref = lipsync(fresh)
            assert sync_until(lambda: take_of(fresh, ref), message="the take")
            info = discovery.read_discovery(data)
            assert info["url"] != stranger.url and discovery.read_token(data) == token
        finally:
            configure(bridge_data, emulator.base_url)
            running = discovery.read_discovery(data) or {}
            if running.get("url") not in (None, stranger.url):
                os.kill(running["pid"], signal.SIGTERM)
                wait_until(lambda: not discovery.read_discovery(data), message="bridge stop")
    assert stranger.seen, "the add-on did knock at the stale address"
    assert {(s.method, s.path.split("?")[0]) for s in stranger.seen} == {("GET", "/v1/health")}
    assert all("Authorization" not in s.headers and token not in str(s) for s in stranger.seen)
