"""Real Blender (the bpy wheel) with the extension installed from the zip build_addon.py
makes, a real bridge started by the add-on, and the emulator on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Blender reads its user folders when bpy is imported: point them at a throwaway folder
# (the bench chooses it itself, before it imports bpy).
USER_RESOURCES = os.environ.get("CHAMELAION_BLENDER_USER") or tempfile.mkdtemp(
    prefix="chamelaion-blender-user-"
)
os.environ["BLENDER_USER_RESOURCES"] = USER_RESOURCES

try:
    import bpy
except ImportError:  # the plain .venv has no Blender: these tests run in .venv-bpyXX
    bpy = None
    collect_ignore_glob = ["test_*.py"]

from bridge import discovery  # noqa: E402
from bridge.emulator import EmulatorConfig, RunningEmulator, emulator_in_background  # noqa: E402
from tests.helpers import wait_until  # noqa: E402
from tests.media_samples import frame_index_of, make_test_audio, make_test_video  # noqa: E402

ADDON = "bl_ext.user_default.chamelaion_lipsync"
EMULATOR_KEY = "emulator-key"
FPS = 24


_exit_status = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the process once pytest is done (reports written): Blender's audio device thread
    can deadlock the bpy module's exit, which would hang the suite after its last test."""
    if bpy is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status)


@pytest.fixture(scope="session")
def addon_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import build_addon

    return build_addon.build([build_addon.host_platform()], tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    storage = tmp_path_factory.mktemp("emulator")
    config = EmulatorConfig(queued_seconds=0.05, processing_seconds=0.3, storage_dir=storage)
    with emulator_in_background(config) as running:
        yield running


@pytest.fixture(scope="session")
def bridge_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bridge-data")


@pytest.fixture(scope="session")
def addon(addon_zip: Path, emulator: RunningEmulator, bridge_data: Path) -> Iterator[Any]:
    """The extension installed from the zip and enabled, pointed at the emulator."""
    import addon_utils

    result = bpy.ops.extensions.package_install_files(
        filepath=str(addon_zip), repo="user_default", enable_on_install=True
    )
    assert result == {"FINISHED"}
    module = addon_utils.enable(ADDON, default_set=True)
    assert module is not None
    configure(bridge_data, emulator.base_url)
    yield module
    sync = __import__(f"{ADDON}.sync", fromlist=["sync"])
    sync.stop_worker()
    # The bridge outlives Blender on purpose (it may have jobs); the tests' one must not.
    info = discovery.read_discovery(bridge_data)
    if info:
        with contextlib.suppress(ProcessLookupError):
            os.kill(info["pid"], signal.SIGTERM)
        wait_until(lambda: not discovery.read_discovery(bridge_data), message="bridge to stop")


def configure(data_dir: Path, base_url: str, auto_start: bool = True, url: str = "") -> None:
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.data_dir = str(data_dir)
    prefs.api_base = base_url
    prefs.api_key = EMULATOR_KEY
    prefs.auto_start = auto_start
    prefs.bridge_url = url


@pytest.fixture
def fresh(addon: Any) -> Any:
    """An empty, unsaved file whose scene runs at the test fps."""
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = FPS, 1.0
    scene.sequence_editor_create()
    if hasattr(bpy.context.workspace, "sequencer_scene"):  # 5.0: as the UI has it (else
        bpy.context.workspace.sequencer_scene = scene  # strip modifiers crash the process)
    return scene


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 frames at 24 fps whose pixels carry their frame index."""
    folder = tmp_path_factory.mktemp("media")
    return make_test_video(folder / "shot.mp4", 60, FPS, (128, 64), with_audio=True)


@pytest.fixture(scope="session")
def dub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dub")
    return make_test_audio(folder / "dub.wav", 3.0, speech=True)


def strips(scene: Any) -> Any:
    editor = scene.sequence_editor
    return editor.strips if hasattr(editor, "strips") else editor.sequences


def shot(scene: Any, clip: Path, dub: Path, start: int = 10, offset: int = 6, tail: int = 10):
    """A movie strip whose first visible frame is `start`, trimmed at both ends, with the
    dubbed dialogue selected under it; the movie strip is active."""
    movie = strips(scene).new_movie("shot", str(clip), channel=1, frame_start=start - offset)
    movie.frame_offset_start = offset
    movie.frame_offset_end = tail
    sound = strips(scene).new_sound("dub", str(dub), channel=3, frame_start=start)
    for strip in strips(scene):
        strip.select = False
    sound.select = movie.select = True
    scene.sequence_editor.active_strip = movie
    return movie, sound


def sync_until(condition: Any, timeout: float = 60.0, message: str = "") -> Any:
    """Run chamelaion_sync until `condition()` holds, as the timer would."""

    def step() -> Any:
        bpy.ops.sequencer.chamelaion_sync()
        return condition()

    return wait_until(step, timeout=timeout, interval=0.05, message=message)


def first_frame_index(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame_index_of(frame)


def addon_module(name: str) -> Any:
    """One of the installed add-on's modules (e.g. "sync", "takes")."""
    import importlib

    return importlib.import_module(f"{ADDON}.{name}")


def lipsync(scene: Any, reference_id: str = "") -> str:
    """Run Lip Sync on the active strip under a reference_id of the test's choosing."""
    import secrets

    reference_id = reference_id or f"t-{secrets.token_hex(4)}"
    scene.chamelaion.reference_id = reference_id
    try:
        # As a click in the UI does: an undo step after the operator.
        assert bpy.ops.sequencer.chamelaion_lipsync("EXEC_DEFAULT", True) == {"FINISHED"}
    finally:
        scene.chamelaion.reference_id = ""
    return reference_id


def row(reference_id: str) -> dict[str, Any]:
    """The panel's row of a job (exports, local failures and the bridge's jobs)."""
    found = [r for r in addon_module("sync").rows() if r["reference_id"] == reference_id]
    return found[0] if found else {}


def take_of(scene: Any, reference_id: str) -> Any:
    """The strip showing this take, once placed."""
    editor = scene.sequence_editor
    every = editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all
    return next((s for s in every if s.get("chamelaion_reference_id") == reference_id), None)


def new_effect(scene: Any, name: str, kind: str, channel: int, start: int, end: int) -> Any:
    """An effect strip over [start, end) (5.0 takes a length, 4.5 an end frame)."""
    collection = strips(scene)
    try:
        return collection.new_effect(
            name, kind, channel=channel, frame_start=start, length=end - start
        )
    except TypeError:
        return collection.new_effect(name, kind, channel=channel, frame_start=start, frame_end=end)
