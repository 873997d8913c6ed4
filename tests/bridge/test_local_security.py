"""Local security: a private data folder, the token only for our own bridge, no credentials
of CHAMELAION_BASE_URL in health or the log. Real processes, as users run them."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import daemon, discovery
from bridge.emulator import RunningEmulator, emulator_in_background
from chamelaion_client.client import BridgeClient, BridgeUnavailable
from tests.bridge.processes import cli_env, one_sentence, run_cli, serving
from tests.helpers import impostor, plant_stale_discovery, wait_until

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX modes")


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    """The emulator on its own thread, so blocking subprocess calls cannot stall it."""
    with emulator_in_background() as running:
        yield running


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leave_an_old_open_data_folder(folder: Path) -> str:
    """What an older bridge, killed mid-run, left: a store with its -wal and -shm, a token,
    a log, a lock and bridge.json, all readable by everyone."""
    (folder / "work").mkdir(parents=True)
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys, pathlib; from bridge.store import Store; "
            "Store(pathlib.Path(sys.argv[1])); os.kill(os.getpid(), 9)",
            str(folder / discovery.STORE_FILE),
        ],
        env=cli_env(),
    )
    assert killed.returncode == -signal.SIGKILL
    token = "an-old-token"
    (folder / discovery.TOKEN_FILE).write_text(token)
    for name in (discovery.LOG_FILE, discovery.LOCK_FILE, discovery.DISCOVERY_FILE):
        (folder / name).write_text("")
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return token


@posix_only
@pytest.mark.parametrize("left_open", [False, True], ids=["new-folder", "older-version"])
def test_the_data_folder_and_all_it_holds_are_private(left_open: bool, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    token = leave_an_old_open_data_folder(folder) if left_open else None
    if left_open:
        assert {f"{discovery.STORE_FILE}-wal", f"{discovery.STORE_FILE}-shm"} <= {
            p.name for p in folder.iterdir()
        }, "the setup must leave SQLite's companions behind"

    with serving(folder, "--port", "0"):
        assert BridgeClient(data_dir=folder).list_jobs() == []  # the store is in use
        held = {p.relative_to(folder).as_posix(): mode(p) for p in [folder, *folder.rglob("*")]}

    assert {*discovery.PRIVATE_FILES, ".", "work", "outputs"} <= held.keys()
    loose = {name: oct(m) for name, m in held.items() if m & 0o077}
    assert loose == {}, "readable by other users"
    assert held["."] == held["work"] == held["outputs"] == 0o700
    if token:
        assert discovery.read_token(folder) == token, "the token survives the tightening"


def test_a_stale_bridge_json_never_gets_the_token_and_submit_starts_a_real_bridge(
    tmp_path: Path, sample_pair: tuple[Path, Path], emulator: RunningEmulator
) -> None:
    folder = tmp_path / "data"
    env = cli_env(CHAMELAION_BASE_URL=emulator.base_url, CHAMELAION_API_KEY="emulator-key")
    data = ["--data-dir", str(folder)]
    with impostor() as stranger:
        token = plant_stale_discovery(folder, stranger.url, stranger.port)

        jobs = run_cli("jobs", *data, env=env)
        assert jobs.returncode == 3
        assert "No Chamelaion bridge is running" in one_sentence(jobs.stderr)

        video, audio = sample_pair
        submit = run_cli("submit", str(video), str(audio), "--wait", "--json", *data, env=env)
        started = discovery.read_discovery(folder)
        try:
            assert submit.returncode == 0, submit.stderr
            assert json.loads(submit.stdout)["state"] == "completed"
            assert started is not None and started["url"] != stranger.url
        finally:
            if started and started["url"] != stranger.url:
                os.kill(started["pid"], signal.SIGTERM)
                wait_until(lambda: not discovery.read_discovery(folder), message="bridge stop")

    assert stranger.seen, "the clients did knock at the stale address"
    assert {(s.method, s.path.split("?")[0]) for s in stranger.seen} == {("GET", "/v1/health")}
    for request in stranger.seen:
        assert "Authorization" not in request.headers
        assert token not in str(request)


def test_a_client_refuses_a_stranger_with_a_sentence_and_sends_it_nothing(
    tmp_path: Path,
) -> None:
    with impostor() as stranger:
        token = plant_stale_discovery(tmp_path, stranger.url, stranger.port)
        client = BridgeClient(data_dir=tmp_path)
        for call in (client.health, client.list_jobs, lambda: client.create_job({"x": 1})):
            with pytest.raises(BridgeUnavailable, match="not the Chamelaion bridge of"):
                call()
    assert [s.method for s in stranger.seen] == ["GET"] * 3
    assert all(token not in str(s) for s in stranger.seen)


def test_our_bridge_proves_itself_once_per_client(tmp_path: Path) -> None:
    with serving(tmp_path, "--port", "0"):
        client = BridgeClient(data_dir=tmp_path)
        health = client.health()
        assert health["api_version"] == 1 and len(health["proof"]) == 64
        assert client.list_jobs() == []
        # A client told another token must not trust the real bridge either.
        wrong = BridgeClient(data_dir=tmp_path, token="someone-elses-token")
        with pytest.raises(BridgeUnavailable, match="does not hold this data folder's token"):
            wrong.list_jobs()


SECRETS = ("s3cret-user", "s3cret-pass", "s3cret-query", "s3cret-param")


def test_credentials_in_the_base_url_show_nowhere(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:9/api;token={SECRETS[3]}?key={SECRETS[2]}&region=eu"
    env = cli_env(CHAMELAION_BASE_URL=base, CHAMELAION_API_KEY="k")
    with serving(tmp_path, "--port", "0", env=env):
        health = BridgeClient(data_dir=tmp_path).health()
    assert health["api_base"] == "http://127.0.0.1:9/api;token=***?key=***&region=***"
    log = (tmp_path / discovery.LOG_FILE).read_text()
    assert "listening on" in log and "http://127.0.0.1:9/api;token=***" in log
    assert not [s for s in SECRETS if s in log or s in json.dumps(health)]

    # A user name and password cannot work (the key is a header): refused at start, unshown.
    userinfo = run_cli(
        "serve", "--data-dir", str(tmp_path), "--port", "0",
        env=cli_env(CHAMELAION_BASE_URL=f"http://{SECRETS[0]}:{SECRETS[1]}@127.0.0.1:9/api"),
    )  # fmt: skip
    assert userinfo.returncode == daemon.EXIT_BAD_CONFIG
    sentence = one_sentence(userinfo.stderr)
    assert "'http://***@127.0.0.1:9/api' carries a user name or password" in sentence
    assert not [s for s in SECRETS if s in sentence]

    bad = run_cli(
        "serve", "--data-dir", str(tmp_path), "--port", "0",
        env=cli_env(CHAMELAION_BASE_URL=f"ftp://{SECRETS[0]}:{SECRETS[1]}@example.com/x"),
    )  # fmt: skip
    assert bad.returncode == daemon.EXIT_BAD_CONFIG
    sentence = one_sentence(bad.stderr)
    assert "ftp://***@example.com/x" in sentence
    assert not [s for s in SECRETS if s in sentence]
