"""`chamelaion-bridge start` and `stop`: one bridge per data folder, of this API version,
restarted only by whoever launched it."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import bridge
from bridge import discovery
from bridge.daemon import EXIT_BAD_CONFIG, EXIT_DATA_DIR_NOT_WRITABLE
from bridge.processes import EXIT_OTHER_VERSION, stop_bridge
from chamelaion_client import API_REVISION, API_VERSION
from chamelaion_client.client import BridgeClient, BridgeUnavailable
from tests.bridge.processes import (
    OLDER_API,
    OTHER_API,
    OTHER_API_VERSION,
    cli_env,
    one_sentence,
    other_api_bridge,
    run_cli,
    stop,
)


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    """A data folder whose bridge, if any is left, is stopped after the test."""
    data = tmp_path / "data"
    yield data
    stop_bridge(data)


def start(folder: Path, *args: str) -> dict[str, Any]:
    result = run_cli("start", "--data-dir", str(folder), "--json", *args, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_start_starts_one_bridge_and_then_finds_it(folder: Path) -> None:
    first = start(folder)
    assert first["started"] is True and first["api_version"] == bridge.API_VERSION
    assert first["version"] == bridge.__version__
    health = BridgeClient(first["url"], data_dir=folder).health()
    assert health["api_version"] == bridge.API_VERSION
    info = discovery.read_discovery(folder)
    assert info is not None
    assert (info["pid"], info["launched_by"], info["api_version"]) == (first["pid"], "cli", 1)

    again = start(folder)
    assert (again["started"], again["pid"], again["url"]) == (False, first["pid"], first["url"])

    stopped = run_cli("stop", "--data-dir", str(folder))
    assert stopped.returncode == 0 and f"pid {first['pid']}" in stopped.stdout
    with pytest.raises(BridgeUnavailable):
        BridgeClient(first["url"], data_dir=folder).health()
    assert "No Chamelaion bridge is running" in run_cli("stop", "--data-dir", str(folder)).stdout


@pytest.mark.parametrize("api", [OTHER_API, OLDER_API], ids=["other-major", "older-revision"])
def test_start_replaces_its_own_bridge_of_another_api_version(
    folder: Path, api: tuple[int, int]
) -> None:
    old = other_api_bridge(folder, launched_by="cli", api=api)
    try:
        new = start(folder)
        assert old.wait(timeout=20) == 0  # stopped cleanly, its jobs kept in the store
        assert new["started"] is True and new["pid"] != old.pid
        assert (new["api_version"], new["api_revision"]) == (API_VERSION, API_REVISION)
    finally:
        stop(old)


@pytest.mark.parametrize(
    ("command", "api"),
    [(("start",), OTHER_API), (("jobs",), OTHER_API), (("start",), OLDER_API)],
    ids=["start", "jobs", "start-older-revision"],
)
def test_a_bridge_of_another_api_version_that_is_not_ours_is_refused(
    folder: Path, command: tuple[str, ...], api: tuple[int, int]
) -> None:
    old = other_api_bridge(folder, launched_by="someone-else", api=api)
    try:
        result = run_cli(*command, "--data-dir", str(folder))
        assert result.returncode == EXIT_OTHER_VERSION
        sentence = one_sentence(result.stderr)
        assert f"API version {api[0]}.{api[1]} " in sentence and f"pid {old.pid}" in sentence
        assert f"needs API version {API_VERSION}.{API_REVISION};" in sentence
        assert "chamelaion-bridge stop" in sentence
        assert old.poll() is None  # still running: not ours to stop
    finally:
        stop(old)


def test_start_passes_on_the_daemons_exit_code_and_sentence(folder: Path) -> None:
    env = cli_env(CHAMELAION_POLL_INTERVAL="-1")
    result = run_cli("start", "--data-dir", str(folder), env=env)
    assert result.returncode == EXIT_BAD_CONFIG
    assert "poll interval" in one_sentence(result.stderr)


def test_start_refuses_a_data_folder_it_cannot_create(folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_text("a file where the data folder should be")
    result = run_cli("start", "--data-dir", str(folder))
    assert result.returncode == EXIT_DATA_DIR_NOT_WRITABLE
    assert "is not writable" in one_sentence(result.stderr)


@pytest.mark.skipif(os.name == "nt", reason="a POSIX shell script as the serve command")
def test_start_waits_for_a_serve_command_that_runs_the_bridge_as_its_child(
    folder: Path, tmp_path: Path
) -> None:
    """A wrapper script (or Windows' chamelaion-bridge.exe launcher) is not the bridge's own
    process: the bridge it starts is found by its bridge.json all the same."""
    wrapper = tmp_path / "serve.sh"
    wrapper.write_text(f'#!/bin/sh\n"{sys.executable}" -m bridge serve "$@"\n')
    started = start(folder, "--serve-command", f"sh {wrapper}")
    assert started["started"] is True
    info = discovery.read_discovery(folder)
    assert info is not None and started["pid"] == info["pid"]
    assert BridgeClient(started["url"], data_dir=folder).health()["api_version"] == 1


def test_a_serve_command_of_another_api_version_is_refused_and_its_bridge_stopped(
    folder: Path, tmp_path: Path
) -> None:
    serve = tmp_path / "serve_other.py"
    serve.write_text(
        f"import sys, bridge; bridge.API_VERSION = {OTHER_API_VERSION}\n"
        "from bridge.cli import main; sys.exit(main(['serve', *sys.argv[1:]]))\n"
    )
    command = f"{sys.executable} {serve}"
    result = run_cli("start", "--data-dir", str(folder), "--serve-command", command)
    assert result.returncode == EXIT_OTHER_VERSION
    sentence = one_sentence(result.stderr)
    assert f"API version {OTHER_API_VERSION}" in sentence and str(serve) in sentence
    assert stop_bridge(folder) is None  # not left running: trying again would meet it again
