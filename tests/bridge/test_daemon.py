"""`serve` as a real process: bridge.json, token, one bridge per folder, ports, exit codes."""

from __future__ import annotations

import json
import socket
import stat
import urllib.request
from pathlib import Path

import pytest

from bridge import daemon, discovery
from chamelaion_client.client import BridgeClient
from tests.bridge.processes import cli_env, one_sentence, run_cli, serving, stop
from tests.helpers import wait_until


def health(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url + "/v1/health", timeout=5) as response:
        return json.load(response)


def test_serve_publishes_itself_and_a_second_serve_points_to_it(tmp_path: Path) -> None:
    with serving(tmp_path, "--port", "0") as (process, info):
        assert set(info) >= {"pid", "url", "port", "version", "started_at"}
        assert info["url"] == f"http://127.0.0.1:{info['port']}"
        assert health(info["url"])["status"] == "ok"
        token = tmp_path / discovery.TOKEN_FILE
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        assert BridgeClient(data_dir=tmp_path).list_jobs() == []

        second = run_cli("serve", "--data-dir", str(tmp_path), "--port", "0")
        assert second.returncode == 0, second.stderr
        assert "already running" in second.stdout and info["url"] in second.stdout
        assert process.poll() is None
    assert process.returncode == 0
    assert not (tmp_path / discovery.DISCOVERY_FILE).exists()
    assert "listening on" in (tmp_path / discovery.LOG_FILE).read_text()


def hold_default_port() -> socket.socket | None:
    """Listen on 7878 the way another program would (SO_REUSEADDR, as the bridge binds), so
    connections of an earlier bridge lingering in TIME_WAIT do not make the port look taken."""
    try:
        return socket.create_server(("127.0.0.1", discovery.DEFAULT_PORT))
    except OSError:
        return None


def test_busy_default_port_falls_back_to_an_ephemeral_one(tmp_path: Path) -> None:
    try:
        blocker = wait_until(hold_default_port, timeout=5)
    except AssertionError:
        pytest.skip("another program holds port 7878 and may let it go mid-test")
    try:
        with serving(tmp_path) as (_, info):
            assert info["port"] != discovery.DEFAULT_PORT
            assert health(info["url"])["status"] == "ok"
    finally:
        blocker.close()


def test_busy_explicit_port_is_its_own_exit_code(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as blocker:
        port = blocker.getsockname()[1]
        result = run_cli("serve", "--data-dir", str(tmp_path), "--port", str(port))
    assert result.returncode == daemon.EXIT_PORT_IN_USE
    assert f"Port {port}" in one_sentence(result.stderr)


def test_unwritable_data_folder_is_its_own_exit_code(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("serve", "--data-dir", str(blocker / "data"))
    assert result.returncode == daemon.EXIT_DATA_DIR_NOT_WRITABLE
    assert "not writable" in one_sentence(result.stderr)


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--host", "0.0.0.0"], {}, "--host 0.0.0.0 is not allowed"),
        ([], {"CHAMELAION_BASE_URL": "ftp://example.com"}, "CHAMELAION_BASE_URL"),
        ([], {"CHAMELAION_POLL_INTERVAL": "soon"}, "CHAMELAION_POLL_INTERVAL='soon' is not"),
        ([], {"CHAMELAION_POLL_INTERVAL": "-1"}, "CHAMELAION_POLL_INTERVAL='-1' is not usable"),
        ([], {"CHAMELAION_POLL_INTERVAL": "inf"}, "give a poll interval in seconds from 0.05"),
        ([], {"CHAMELAION_POLL_INTERVAL": "1e-9"}, "CHAMELAION_POLL_INTERVAL='1e-9' is not"),
        ([], {"CHAMELAION_RETRY_CAP": "0"}, "CHAMELAION_RETRY_CAP='0' is not usable"),
        ([], {"CHAMELAION_ACCEPT_GRACE": "-1"}, "CHAMELAION_ACCEPT_GRACE='-1' is not usable"),
        ([], {"CHAMELAION_API_KEY": "sk-123\n"}, "CHAMELAION_API_KEY is not usable: a key is"),
        ([], {"CHAMELAION_BEARER_TOKEN": "sk 123"}, "CHAMELAION_BEARER_TOKEN is not usable"),
        ([], {"CHAMELAION_BASE_URL": "http://[::1"}, "'(an unreadable URL)' is not an http(s)"),
        ([], {"CHAMELAION_POLL_INTERVAL": "nan"}, "CHAMELAION_POLL_INTERVAL='nan' is not"),
        ([], {"CHAMELAION_POLL_INTERVAL": "abc"}, "CHAMELAION_POLL_INTERVAL='abc' is not"),
        ([], {"CHAMELAION_GENERATE_PER_MINUTE": "-5"}, "CHAMELAION_GENERATE_PER_MINUTE='-5'"),
        ([], {"CHAMELAION_GENERATE_PER_MINUTE": "abc"}, "a whole number of generate calls"),
        ([], {"CHAMELAION_GENERATE_PER_MINUTE": "1.5"}, "CHAMELAION_GENERATE_PER_MINUTE"),
    ],
)
def test_bad_config_is_its_own_exit_code(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    result = run_cli("serve", "--data-dir", str(tmp_path), "--port", "0", *args, env=cli_env(**env))
    assert result.returncode == daemon.EXIT_BAD_CONFIG
    assert expected in one_sentence(result.stderr)
    assert not (tmp_path / discovery.DISCOVERY_FILE).exists()


def test_a_restarted_bridge_gets_a_fresh_discovery_file_and_keeps_its_token(tmp_path: Path) -> None:
    with serving(tmp_path, "--port", "0") as (first, info):
        token = discovery.read_token(tmp_path)
    assert stop(first) == 0
    with serving(tmp_path, "--port", "0") as (second, again):
        assert again["pid"] == second.pid != info["pid"]
        assert discovery.read_token(tmp_path) == token
        assert BridgeClient(data_dir=tmp_path).list_jobs() == []


def test_watch_folders_cannot_be_added_to_a_running_bridge(tmp_path: Path) -> None:
    with serving(tmp_path / "data", "--port", "0") as (process, _):
        result = run_cli(
            "watch", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
            "--data-dir", str(tmp_path / "data"),
        )  # fmt: skip
        assert result.returncode == daemon.EXIT_ALREADY_RUNNING
        assert "already running" in one_sentence(result.stderr)
        assert process.poll() is None
