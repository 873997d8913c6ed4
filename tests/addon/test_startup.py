"""Starting the bridge from Blender as a fresh install meets it: a status line that is true,
a data folder that cannot be used, a failed start whose cause was fixed, a stale bridge.json
that names another program."""

from __future__ import annotations

import contextlib
import functools
import importlib
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import bpy
import pytest

from bridge import discovery
from bridge.processes import stop_bridge, stop_process
from chamelaion_client import API_REVISION, API_VERSION
from tests.addon.conftest import ADDON, configure, lipsync, row, shot, sync_until, take_of
from tests.bridge.processes import OLDER_API, OTHER_API, OTHER_API_VERSION, other_api_bridge
from tests.helpers import plant_stale_discovery, wait_until

pytestmark = pytest.mark.blender


def module(name: str) -> Any:
    """One of the installed add-on's modules (the zip's copy, not the worktree's)."""
    return importlib.import_module(f"{ADDON}.{name}")


@pytest.fixture
def data(tmp_path: Path, emulator: Any, bridge_data: Path) -> Iterator[Path]:
    """A data folder of the test's own; afterwards the bridge the add-on started for the
    test is stopped and the preferences point at the session's bridge again."""
    yield tmp_path / "data"
    configure(bridge_data, emulator.base_url)
    launcher = module("sync").worker().launcher
    if launcher.process is not None and launcher.serving.is_relative_to(tmp_path.resolve()):
        stop_process(launcher.process)  # `start`, if it still runs
        stop_bridge(launcher.serving)  # and the detached bridge it started


def answer_of(kind: str, payload: Any = None) -> Any:
    """Send one request through the add-on's worker and return its answer; every answer
    that arrives meanwhile is applied, as the sync tick does."""
    sync, worker = module("sync"), module("sync").worker()
    answers: list[Any] = []

    def arrived() -> list[Any]:
        for result in worker.drain():
            sync.apply(result, [])
            answers.append(result)
        return [a for a in answers if a.request.kind == kind and not worker.busy(kind)]

    wait_until(lambda: not worker.busy(kind), message=f"earlier {kind} requests")
    arrived()
    answers.clear()
    worker.submit(module("worker").Request(kind, payload))
    return wait_until(arrived, message=f"the {kind} answer")[-1]


def health_status() -> str:
    """The status line after a health check, as the panel shows it."""
    answer_of("health")
    return module("sync").status["text"]


def lip_sync_fails(scene: Any, match: str) -> str:
    """Click Lip Sync and return the job's reference_id once it failed with a sentence
    matching `match`."""
    ref = lipsync(scene)
    with pytest.raises(RuntimeError, match=match):
        sync_until(lambda: row(ref).get("state") == "failed", message="the failure")
    return ref


def retry_lands_the_take(scene: Any, ref: str) -> Any:
    assert bpy.ops.sequencer.chamelaion_retry(reference_id=ref) == {"FINISHED"}
    take = sync_until(lambda: take_of(scene, ref), message="the take after the retry")
    assert row(ref)["state"] == "completed" and not row(ref).get("error")
    return take


def test_a_fresh_install_says_the_bridge_starts_with_the_next_lip_sync(
    fresh: Any, clip: Path, dub: Path, data: Path, emulator: Any
) -> None:
    configure(data, emulator.base_url, auto_start=True)
    status = health_status()
    assert status == (
        "The Chamelaion bridge is not running yet; it starts by itself with the next Lip Sync "
        f"(data folder {data})."
    )
    assert not (data / discovery.DISCOVERY_FILE).exists()  # a status check starts nothing
    shot(fresh, clip, dub)
    ref = lipsync(fresh)
    assert sync_until(lambda: take_of(fresh, ref), message="the take")
    status = health_status()
    assert status.startswith("Bridge ") and status.endswith(" running (API key set)")


def test_with_auto_start_off_the_status_says_how_to_start_the_bridge(
    fresh: Any, data: Path, emulator: Any
) -> None:
    configure(data, emulator.base_url, auto_start=False)
    assert health_status() == (
        f"No Chamelaion bridge has started with the data folder {data} yet; turn on 'Start the "
        "bridge when needed' in the add-on preferences or run 'chamelaion-bridge serve'."
    )


def test_a_data_folder_that_cannot_be_created_is_named_and_a_fix_works_at_once(
    fresh: Any, clip: Path, dub: Path, data: Path, emulator: Any
) -> None:
    blocker = data.parent / "blocker"
    blocker.write_text("a file where the data folder's parent should be")
    folder = blocker / "data"
    configure(folder, emulator.base_url)
    shot(fresh, clip, dub)
    ref = lip_sync_fails(fresh, "cannot be created or written")
    expected = (
        f"The bridge's data folder {folder} cannot be created or written (Not a directory); "
        "choose another 'Bridge data folder' in the add-on preferences or make this one "
        "writable."
    )
    assert row(ref)["error"] == expected
    assert health_status() == expected  # until the next click, the status says why

    blocker.unlink()  # the editor fixes it
    retry_lands_the_take(fresh, ref)
    assert (folder / discovery.DISCOVERY_FILE).is_file()


def test_a_failed_start_is_tried_again_at_once_on_the_next_click(
    fresh: Any, clip: Path, dub: Path, data: Path, emulator: Any, monkeypatch: Any
) -> None:
    # However long polls wait between starts, a click after a fix must not wait at all.
    monkeypatch.setattr(module("launcher"), "SPAWN_INTERVAL", 3600.0)
    monkeypatch.setattr(module("compat"), "online_access", lambda: True)  # allowed online
    configure(data, "ftp://api.example.com")
    shot(fresh, clip, dub)
    ref = lip_sync_fails(fresh, "stopped at start")
    error = row(ref)["error"]
    assert "CHAMELAION_BASE_URL 'ftp://api.example.com' is not an http(s) URL" in error
    launcher = module("sync").worker().launcher
    failed = launcher.process
    assert failed.returncode == 7

    poll = answer_of("list", "a-file-id")  # a poll does not start the bridge again
    assert poll.error == error and launcher.process is failed

    bpy.context.preferences.addons[ADDON].preferences.api_base = emulator.base_url
    retry_lands_the_take(fresh, ref)
    # `start` ran again and ended once its bridge answered (the bridge runs on, detached).
    assert launcher.process is not failed and launcher.process.poll() == 0
    assert module("client").Client(data_dir=data).health()["status"] == "ok"


@pytest.fixture
def plain_http_server(tmp_path: Path) -> Iterator[tuple[ThreadingHTTPServer, list[str]]]:
    """`python -m http.server` on an ephemeral port (it answers POST with 501), recording
    each request line."""
    seen: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's name)
            seen.append(self.requestline)

    (tmp_path / "site").mkdir()
    handler = functools.partial(Handler, directory=str(tmp_path / "site"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = Thread(target=server.serve_forever, name="http.server", daemon=True)
    thread.start()
    try:
        yield server, seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_stale_bridge_json_naming_a_plain_http_server_leads_to_a_fresh_bridge(
    fresh: Any,
    clip: Path,
    dub: Path,
    data: Path,
    emulator: Any,
    plain_http_server: tuple[ThreadingHTTPServer, list[str]],
) -> None:
    server, seen = plain_http_server
    port = server.server_address[1]
    stale_url = f"http://127.0.0.1:{port}"
    with pytest.raises(urllib.error.HTTPError) as refused:  # what the issue ran into
        urllib.request.urlopen(urllib.request.Request(f"{stale_url}/v1/jobs", b"{}"), timeout=5)
    assert refused.value.code == 501
    seen.clear()
    token = plant_stale_discovery(data, stale_url, port)
    configure(data, emulator.base_url)
    shot(fresh, clip, dub)
    ref = lipsync(fresh)
    assert sync_until(lambda: take_of(fresh, ref), message="the take")
    assert row(ref)["state"] == "completed" and not row(ref).get("error")
    info = discovery.read_discovery(data)
    assert info["url"] != stale_url and discovery.read_token(data) == token
    assert seen and all(line.startswith("GET /v1/health?challenge=") for line in seen)


@contextlib.contextmanager
def other_api_bridge_and_a_shot(
    scene: Any,
    clip: Path,
    dub: Path,
    data: Path,
    emulator: Any,
    launched_by: str,
    api: tuple[int, int] = OTHER_API,
) -> Iterator[subprocess.Popen[str]]:
    """A bridge of another API `api` running for `data`, launched by `launched_by`, and a
    shot ready for Lip Sync with the preferences on `data`; the bridge is stopped after."""
    old = other_api_bridge(data, launched_by=launched_by, api=api)
    try:
        configure(data, emulator.base_url)
        shot(scene, clip, dub)
        yield old
    finally:
        stop_process(old)


# An older revision is what an extension update meets: the bridge it launched before still runs.
@pytest.mark.parametrize("api", [OTHER_API, OLDER_API], ids=["other-major", "older-revision"])
def test_its_own_bridge_of_another_api_version_is_restarted_and_keeps_its_jobs(
    fresh: Any, clip: Path, dub: Path, data: Path, emulator: Any, api: tuple[int, int]
) -> None:
    with other_api_bridge_and_a_shot(fresh, clip, dub, data, emulator, "blender", api) as old:
        ref = lipsync(fresh)
        assert sync_until(lambda: take_of(fresh, ref), message="the take")
        assert old.wait(timeout=20) == 0  # stopped cleanly by `start`, not killed
        info = discovery.read_discovery(data)
        api_now = (info["api_version"], info["api_revision"])
        assert api_now == (API_VERSION, API_REVISION) and info["launched_by"] == "blender"
        assert info["pid"] != old.pid


def test_someone_elses_bridge_of_another_api_version_is_refused_with_a_sentence(
    fresh: Any, clip: Path, dub: Path, data: Path, emulator: Any
) -> None:
    with other_api_bridge_and_a_shot(fresh, clip, dub, data, emulator, "cli") as old:
        status = health_status()  # before any click: what runs, not "starts by itself"
        assert f"speaks API version {OTHER_API_VERSION}" in status, status
        ref = lip_sync_fails(fresh, f"API version {OTHER_API_VERSION}")
        error = row(ref)["error"]
        assert f"pid {old.pid}" in error and "chamelaion-bridge stop --data-dir" in error
        assert error.count(". ") == 0 and error.endswith(".")
        assert old.poll() is None  # still running: not the add-on's to stop
