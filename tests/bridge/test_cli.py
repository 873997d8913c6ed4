"""The command line as users run it: real processes, a real bridge, the emulator as the API."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import daemon, discovery, media
from bridge.emulator import RunningEmulator, emulator_in_background
from bridge.server import STORE, create_app
from chamelaion_client.client import BridgeClient
from tests.bridge.conftest import bridge_config, fill_the_disk
from tests.bridge.processes import (
    BRIDGE,
    cli_env,
    one_sentence,
    published,
    run_cli,
    serving,
    stop,
)
from tests.helpers import wait_until

COMMANDS = [
    "serve",
    "submit",
    "jobs",
    "status",
    "cancel",
    "retry",
    "watch",
    "emulator",
    "demo",
    "conform",
]


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    """The emulator on its own thread, so blocking subprocess calls cannot stall it."""
    with emulator_in_background() as running:
        yield running


@pytest.fixture(scope="module")
def api_env(emulator: RunningEmulator) -> dict[str, str]:
    return cli_env(CHAMELAION_BASE_URL=emulator.base_url, CHAMELAION_API_KEY="emulator-key")


def test_help_everywhere() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    for name in COMMANDS:
        assert name in top.stdout
        sub = run_cli(name, "--help")
        assert sub.returncode == 0 and f"chamelaion-bridge {name}" in sub.stdout
        assert "--data-dir" in sub.stdout
    version = run_cli("jobs", "--version")
    assert version.returncode == 0 and version.stdout.startswith("chamelaion-bridge ")


@pytest.mark.parametrize(
    "args", [["submit", "only-a-video.mp4"], ["frobnicate"], ["status"], ["jobs", "--colour"]]
)
def test_usage_errors_exit_2_with_one_line(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert "--help" in one_sentence(result.stderr)


def test_serve_needs_an_out_for_each_watch(tmp_path: Path) -> None:
    result = run_cli("serve", "--data-dir", str(tmp_path), "--watch", str(tmp_path))
    assert result.returncode == 2
    assert "--out" in one_sentence(result.stderr)


def test_submit_with_a_missing_file_exits_4(tmp_path: Path, sample_pair: tuple[Path, Path]) -> None:
    missing = tmp_path / "missing.mp4"
    result = run_cli("submit", str(missing), str(sample_pair[1]), "--data-dir", str(tmp_path))
    assert result.returncode == 4
    assert str(missing) in one_sentence(result.stderr)
    assert not (tmp_path / discovery.DISCOVERY_FILE).exists(), "no bridge for a doomed job"


@pytest.mark.parametrize("args", [["jobs"], ["status", "x"], ["cancel", "x"], ["retry", "x"]])
def test_no_bridge_running_says_how_to_start_one(tmp_path: Path, args: list[str]) -> None:
    result = run_cli(*args, "--data-dir", str(tmp_path))
    assert result.returncode == 3
    assert "chamelaion-bridge serve" in one_sentence(result.stderr)


def test_jobs_lists_a_damaged_record_beside_the_readable_ones(
    tmp_path: Path, sample_pair: tuple[Path, Path], api_env: dict[str, str]
) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    video, audio = sample_pair
    with serving(tmp_path / "data", "--port", "0", env=api_env):
        for reference_id in ("whole-1", "broken-1"):
            done = run_cli("submit", str(video), str(audio), "--reference-id", reference_id,
                           "--wait", *data, env=api_env)  # fmt: skip
            assert done.returncode == 0, done.stderr
        with sqlite3.connect(tmp_path / "data" / "jobs.sqlite3") as db:
            db.execute("UPDATE jobs SET data = '[1, 2' WHERE reference_id = 'broken-1'")

        table = run_cli("jobs", *data)
        listing = json.loads(run_cli("jobs", "--json", *data).stdout)
        status = run_cli("status", "broken-1", *data)

    assert table.returncode == 0, table.stderr
    assert re.search(r"whole-1\s+completed\s+100%", table.stdout)
    assert re.search(r"broken-1\s+damaged\s+-\s+-\s+The record of job broken-1 in the job store "
                     r"cannot be read", table.stdout)  # fmt: skip
    assert [job["reference_id"] for job in listing["jobs"]] == ["whole-1"]
    assert [record["reference_id"] for record in listing["damaged"]] == ["broken-1"]
    assert status.returncode != 0 and "cannot be read" in one_sentence(status.stderr)


def test_submit_wait_json_then_jobs_status_cancel_retry(
    tmp_path: Path, sample_pair: tuple[Path, Path], api_env: dict[str, str]
) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    video, audio = sample_pair
    with serving(tmp_path / "data", "--port", "0", env=api_env):
        result = run_cli(
            "submit", str(video), str(audio), "--reference-id", "cli-1", "--out",
            str(tmp_path / "out"), "--wait", "--json", *data, env=api_env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        job = json.loads(result.stdout)
        assert job["state"] == "completed" and job["reference_id"] == "cli-1"
        assert media.is_playable_video(Path(job["output_path"]))
        assert Path(job["output_path"]).parent == tmp_path / "out"

        table = run_cli("jobs", *data)
        assert table.returncode == 0
        assert re.search(r"cli-1\s+completed\s+100%\s+\d+s\s+" + re.escape(job["output_path"]),
                         table.stdout)  # fmt: skip
        status = run_cli("status", job["id"], "--json", *data)
        assert json.loads(status.stdout)["reference_id"] == "cli-1"
        assert "completed" in run_cli("status", "cli-1", *data).stdout

        cancel = run_cli("cancel", "cli-1", *data)
        assert cancel.returncode == 4
        assert "completed" in one_sentence(cancel.stderr)
        retry = run_cli("retry", "nobody", *data)
        assert retry.returncode == 4
        assert "nobody" in one_sentence(retry.stderr)
        duplicate = run_cli("submit", str(video), str(audio), "--reference-id", "cli-1", *data)
        assert duplicate.returncode == 4
        assert "already used" in one_sentence(duplicate.stderr)


def test_a_fixed_key_reaches_the_running_bridge_from_submit_and_retry(
    tmp_path: Path, sample_pair: tuple[Path, Path], api_env: dict[str, str]
) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    video, audio = str(sample_pair[0]), str(sample_pair[1])
    with serving(tmp_path / "data", "--port", "0", env={**api_env, "CHAMELAION_API_KEY": "nope"}):
        refused = run_cli("submit", video, audio, "--reference-id", "old-key", "--wait", *data)
        assert refused.returncode == 1
        assert "refused the API key" in one_sentence(refused.stderr)

        fixed = run_cli(
            "submit", video, audio, "--reference-id", "new-key", "--wait", *data, env=api_env
        )
        assert fixed.returncode == 0, fixed.stderr
        assert one_sentence(fixed.stderr) == (
            "The running bridge now uses the API key from CHAMELAION_API_KEY; 1 job(s) that "
            "failed on its old key can be retried."
        )
        assert "Job new-key completed" in fixed.stdout
        assert "retry the job" in run_cli("status", "old-key", *data).stdout

        retry = run_cli("retry", "old-key", *data, env=api_env)
        assert (retry.returncode, retry.stderr) == (0, "")  # the bridge has this key already
        wait_until(
            lambda: "completed" in run_cli("status", "old-key", *data).stdout,
            timeout=30,
            message="the retried job to complete",
        )


def test_submit_without_wait_and_a_failed_job_exits_1(
    tmp_path: Path, sample_pair: tuple[Path, Path], api_env: dict[str, str]
) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    video, audio = sample_pair
    urls = ["http://127.0.0.1:9/unreachable.mp4", "http://127.0.0.1:9/unreachable.wav"]
    with serving(tmp_path / "data", "--port", "0", env=api_env):
        queued = run_cli("submit", str(video), str(audio), "--reference-id", "quick", *data)
        assert queued.returncode == 0
        assert "Submitted job quick" in queued.stdout
        failed = run_cli("submit", *urls, "--reference-id", "bad-url", "--wait", *data)
    assert failed.returncode == 1
    assert one_sentence(failed.stderr).startswith("Job bad-url failed: ")


def test_submit_starts_a_bridge_when_none_runs(
    tmp_path: Path, sample_pair: tuple[Path, Path], api_env: dict[str, str]
) -> None:
    folder = tmp_path / "data"
    video, audio = sample_pair
    result = run_cli(
        "submit", str(video), str(audio), "--wait", "--data-dir", str(folder), env=api_env
    )
    info = discovery.read_discovery(folder)
    assert info is not None
    try:
        assert result.returncode == 0, result.stderr
        assert "Started a Chamelaion bridge in the background" in result.stderr
        assert "completed" in result.stdout
    finally:
        os.kill(info["pid"], signal.SIGTERM)

    def closed() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", info["port"])) != 0

    wait_until(closed, message="the bridge to let go of its port")
    assert not (folder / discovery.DISCOVERY_FILE).exists()


def test_demo_runs_offline_and_leaves_a_playable_file(tmp_path: Path) -> None:
    result = run_cli("demo", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    match = re.search(r"The finished file is (.+\.mp4)$", result.stdout, re.MULTILINE)
    assert match, result.stdout
    assert media.is_playable_video(Path(match.group(1)))
    assert "not real lip sync" in result.stdout
    assert not (tmp_path / "demo" / "bridge" / discovery.DISCOVERY_FILE).exists(), "bridge left"


def test_emulator_on_a_busy_port_exits_with_the_port_code() -> None:
    with socket.create_server(("127.0.0.1", 0)) as blocker:
        port = blocker.getsockname()[1]
        result = run_cli("emulator", "--port", str(port))
    assert result.returncode == daemon.EXIT_PORT_IN_USE
    assert "already in use" in one_sentence(result.stderr)


def test_watch_turns_a_dropped_pair_into_a_result_and_health_shows_the_folder(
    tmp_path: Path, sample_pair: tuple[Path, Path], api_env: dict[str, str]
) -> None:
    inbox, outbox, folder = tmp_path / "in", tmp_path / "out", tmp_path / "data"
    inbox.mkdir()
    env = {**api_env, "CHAMELAION_WATCH_SETTLE": "0.2"}
    command = [*BRIDGE, "watch", str(inbox), "--out", str(outbox), "--data-dir", str(folder)]
    process = subprocess.Popen(
        [*command, "--port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        info = wait_until(lambda: published(folder, process), timeout=30, message="bridge.json")
        watching = BridgeClient(info["url"], data_dir=folder).health()["watch"]
        assert [(w["in_dir"], w["out_dir"]) for w in watching] == [(str(inbox), str(outbox))]
        shutil.copy(sample_pair[0], inbox / "ep42.mp4")
        shutil.copy(sample_pair[1], inbox / "ep42.wav")
        result = outbox / "ep42.lipsync.mp4"
        wait_until(result.exists, timeout=60, message="the watch folder's result")
        assert media.is_playable_video(result)
        listing = run_cli("jobs", "--data-dir", str(folder)).stdout
        assert f"Watching {inbox} -> {outbox}" in listing
        assert re.search(r"ep42\S*\s+completed", listing), listing
    finally:
        assert stop(process) == 0


def test_submit_wait_outlives_a_bridge_killed_mid_job(
    tmp_path: Path,
    sample_pair: tuple[Path, Path],
    api_env: dict[str, str],
    emulator: RunningEmulator,
) -> None:
    folder = tmp_path / "data"
    video, audio = sample_pair
    command = [*BRIDGE, "submit", str(video), str(audio), "--wait", "--json"]
    command += ["--reference-id", "survivor", "--data-dir", str(folder)]
    emulator.state.config.processing_seconds = 2.0
    env = {**api_env, "CHAMELAION_POLL_INTERVAL": "0.1"}
    submit = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    first = wait_until(lambda: discovery.read_discovery(folder), message="a bridge")
    try:
        client = BridgeClient(first["url"], data_dir=folder)

        def processing() -> bool:
            jobs = client.list_jobs(keys=["survivor"])
            return bool(jobs) and jobs[0]["state"] == "processing"

        wait_until(processing, message="the job to be processing")
        os.kill(first["pid"], signal.SIGKILL)

        out, err = submit.communicate(timeout=60)
        second = discovery.read_discovery(folder)
        assert submit.returncode == 0, err
        job = json.loads(out)
        assert job["state"] == "completed" and Path(job["output_path"]).is_file()
        assert second is not None and second["pid"] != first["pid"]
        assert emulator.state.stats.generate_by_reference_id["survivor"] == 1
    finally:
        emulator.state.config.processing_seconds = 1.0
        if submit.poll() is None:
            submit.kill()
        left = discovery.read_discovery(folder)
        if left and left["pid"] != first["pid"]:
            os.kill(left["pid"], signal.SIGTERM)
            wait_until(lambda: not (folder / discovery.DISCOVERY_FILE).exists())


# --- bad input: one sentence, exit 4, no bridge started, nothing sent -----------------------


@pytest.fixture
def untouched_data(emulator: RunningEmulator, tmp_path: Path) -> Iterator[Path]:
    """A data folder; fails the test if a bridge was left running on it or anything reached
    the API (and stops that bridge, so a failing test leaves no process behind)."""
    before = emulator.state.stats.to_json()
    folder = tmp_path / "data"
    yield folder
    info = discovery.read_discovery(folder)
    if info is not None:
        os.kill(info["pid"], signal.SIGTERM)
    assert info is None, "a bridge was started for a refused job"
    assert emulator.state.stats.to_json() == before


def special_input(tmp_path: Path, kind: str) -> str:
    """A path that is not a plain media file: a FIFO, a symlink loop, a non-UTF-8 name."""
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe.mp4")
        return str(tmp_path / "pipe.mp4")
    if kind == "loop":
        (tmp_path / "a.mp4").symlink_to(tmp_path / "b.mp4")
        (tmp_path / "b.mp4").symlink_to(tmp_path / "a.mp4")
        return str(tmp_path / "a.mp4")
    # A name that is not UTF-8: Python hands it over as a lone surrogate (\udcff).
    (tmp_path / os.fsdecode(b"take\xff.mp4")).write_bytes(b"not empty")
    return str(tmp_path / os.fsdecode(b"take\xff.mp4"))


@pytest.mark.parametrize(
    ("video", "expected"),
    [
        ("ftp://example.com/clip.mp4", "The video URL 'ftp://example.com/clip.mp4' uses ftp://"),
        ("file:///home/me/clip.mp4", "uses file://, which the API cannot fetch"),
        ("http://[::1", "The video URL 'http://[::1' is malformed"),
        ("http://", "The video URL 'http://' names no host"),
        ("fifo", "is a named pipe (FIFO), not a media file"),
        ("loop", "runs into a loop of symbolic links"),
        ("surrogate", "The video path '"),
    ],
)
def test_submit_names_a_bad_input_and_exits_4(
    tmp_path: Path,
    sample_pair: tuple[Path, Path],
    api_env: dict[str, str],
    untouched_data: Path,
    video: str,
    expected: str,
) -> None:
    if "/" not in video:
        video = special_input(tmp_path, video)
    result = run_cli(
        "submit", video, str(sample_pair[1]), "--data-dir", str(untouched_data), env=api_env
    )
    assert result.returncode == 4
    assert expected in one_sentence(result.stderr)


@pytest.mark.parametrize(
    ("reference_id", "expected"),
    [
        ("take-1\n", "reference_id 'take-1\\n' is not allowed"),
        ("take\tone", "reference_id 'take\\tone' is not allowed"),
        ("x" * 129, f"reference_id '{'x' * 40}'... is 129 characters long; use at most 128."),
    ],
)
def test_submit_refuses_a_bad_reference_id(
    tmp_path: Path,
    sample_pair: tuple[Path, Path],
    api_env: dict[str, str],
    untouched_data: Path,
    reference_id: str,
    expected: str,
) -> None:
    video, audio = sample_pair
    result = run_cli(
        "submit", str(video), str(audio), "--reference-id", reference_id,
        "--data-dir", str(untouched_data), env=api_env,
    )  # fmt: skip
    assert result.returncode == 4
    assert one_sentence(result.stderr).startswith(expected)


@pytest.mark.parametrize(
    ("setting", "value"),
    [("CHAMELAION_POLL_INTERVAL", "inf"), ("CHAMELAION_GENERATE_PER_MINUTE", "-5")],
)
def test_submit_reports_a_bridge_that_cannot_start_on_a_bad_setting(
    tmp_path: Path,
    sample_pair: tuple[Path, Path],
    api_env: dict[str, str],
    untouched_data: Path,
    setting: str,
    value: str,
) -> None:
    video, audio = sample_pair
    env = {**api_env, setting: value}
    result = run_cli("submit", str(video), str(audio), "--data-dir", str(untouched_data), env=env)
    assert result.returncode == daemon.EXIT_BAD_CONFIG
    assert one_sentence(result.stderr).startswith(f"{setting}={value!r} is not usable")


def test_watch_refuses_a_bad_setting_with_exit_7(tmp_path: Path, api_env: dict[str, str]) -> None:
    env = {**api_env, "CHAMELAION_POLL_INTERVAL": "nan"}
    result = run_cli(
        "watch", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
        "--data-dir", str(tmp_path / "data"), "--port", "0", env=env,
    )  # fmt: skip
    assert result.returncode == daemon.EXIT_BAD_CONFIG
    assert "CHAMELAION_POLL_INTERVAL='nan' is not usable" in one_sentence(result.stderr)
    assert not (tmp_path / "in").exists() and not (tmp_path / "data").exists()


async def test_submit_to_a_bridge_whose_disk_is_full_says_so_and_exits_4(
    tmp_path: Path,
    sample_pair: tuple[Path, Path],
    emulator: RunningEmulator,
    untouched_data: Path,
    aiohttp_server,  # type: ignore[no-untyped-def]
) -> None:
    folder = untouched_data
    token = discovery.load_or_create_token(folder)
    app = create_app(bridge_config(folder, emulator.base_url), token)
    server = await aiohttp_server(app, host="127.0.0.1")
    jobs_before = fill_the_disk(app[STORE])
    env = cli_env(CHAMELAION_BRIDGE_URL=str(server.make_url("")).rstrip("/"))
    video, audio = sample_pair
    # The bridge runs on this test's loop: the blocking CLI call waits on another thread.
    result = await asyncio.to_thread(
        run_cli, "submit", str(video), str(audio), "--data-dir", str(folder), env=env
    )
    assert result.returncode == 4
    assert one_sentence(result.stderr) == (
        f"The disk holding the bridge's data folder {folder} is full; free some space and "
        "submit again."
    )
    assert len(app[STORE].list()) == jobs_before
