"""A bad network day end to end: a real bridge process, the emulator answering with errors and
dropping connections, SIGKILLs of the bridge and a 30 s outage; every job still completes on
its own, each charged once, each result byte for byte what the API made."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import discovery
from bridge.emulator import RunningEmulator
from chamelaion_client import FINAL_STATES, RETRYABLE_STATES
from chamelaion_client.client import BridgeClient, BridgeUnavailable
from tests.bridge.conftest import emulator_thread
from tests.bridge.processes import BRIDGE, BridgeProcess, cli_env
from tests.faults import faults_of, go_offline, go_online
from tests.helpers import wait_until

JOBS = 20
KILLS = 3
OUTAGE_SECONDS = 30.0
# First matching rule that fires wins: 35 % of all calls get an error answer and 25 % (more on
# generate and download calls) a dropped connection, among them answers lost after a request
# was accepted and downloads cut midway.
SOAK_FAULTS = [
    ("any", "500", 0.12),
    ("any", "502-html", 0.12 / 0.88),
    ("any", "429", 0.11 / 0.76),
    ("generate-with-media", "drop-after-accept", 0.2),
    ("output", "drop-midway", 0.2),
    ("any", "drop", 0.25 / 0.65),
]
ERROR_KINDS = ("500", "502-html", "429")
DROP_KINDS = ("drop", "drop-after-accept", "drop-midway")


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[RunningEmulator]:
    with emulator_thread(tmp_path / "emulator", queued_seconds=0.2, processing_seconds=2.0) as em:
        yield em


def jobs_of(bridge: BridgeProcess, client: BridgeClient) -> tuple[BridgeClient, list[dict]]:
    """The jobs, through whichever bridge process serves the folder now."""
    try:
        return client, client.list_jobs()
    except BridgeUnavailable:
        info = discovery.read_discovery(bridge.data_dir) or {}
        fresh = BridgeClient(url=info.get("url"), data_dir=bridge.data_dir)
        return fresh, fresh.list_jobs()


def test_twenty_jobs_survive_faults_and_three_kills_with_no_manual_retry(
    tmp_path: Path, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    kills_at = sorted(rng.uniform(0.3, 6.0) for _ in range(KILLS))
    for endpoint, kind, probability in SOAK_FAULTS:
        faults_of(emulator).add(endpoint, kind, count=-1, probability=probability)
    out = tmp_path / "out"
    bridge = BridgeProcess(tmp_path / "data", emulator.base_url)
    # Production backoff, but at most 5 s between tries: at 50 % failed calls a job's tries
    # fail six times in a row now and then, and a 60 s cap would make the soak take minutes.
    bridge.env |= {
        "CHAMELAION_POLL_INTERVAL": "0.2",
        "CHAMELAION_GENERATE_PER_MINUTE": "0",
        "CHAMELAION_RETRY_CAP": "5",
    }
    client = bridge.start()
    video, audio = sample_pair
    started = time.monotonic()
    try:
        for n in range(1, JOBS + 1):
            body = {"video_path": str(video), "audio_path": str(audio), "output_dir": str(out)}
            client.create_job(body | {"reference_id": f"soak-{n:02}"})
        for moment in kills_at:  # crashes at random moments; the editor starts it again
            wait_until(lambda m=moment: time.monotonic() - started >= m, timeout=30)
            bridge.kill()
            client = bridge.start()

        def all_final() -> list[dict] | None:
            nonlocal client
            client, jobs = jobs_of(bridge, client)
            final = all(job["state"] in FINAL_STATES for job in jobs)
            return jobs if final else None

        jobs = wait_until(all_final, timeout=600, interval=0.5, message="every job to finish")
    finally:
        bridge.stop()
    wall = time.monotonic() - started

    stats = emulator.state.stats
    calls, faults = sum(stats.calls.values()), faults_of(emulator).fired
    errors, drops = sum(faults[k] for k in ERROR_KINDS), sum(faults[k] for k in DROP_KINDS)
    print(
        f"\nsoak (seed {seed}): {JOBS} jobs, {KILLS} SIGKILLs at {[round(k, 1) for k in kills_at]}"
        f" s, {calls} API calls, {errors} error answers ({errors / calls:.0%}), {drops} dropped "
        f"connections ({drops / calls:.0%}), faults {dict(faults)}, generate calls per "
        f"reference_id {sorted(set(stats.generate_by_reference_id.values()))}, {wall:.1f} s"
    )
    assert [job["state"] for job in jobs] == ["completed"] * JOBS, [
        (job["reference_id"], job["error"]) for job in jobs if job["state"] != "completed"
    ]
    assert stats.generate_by_reference_id == {f"soak-{n:02}": 1 for n in range(1, JOBS + 1)}
    for job in jobs:
        made = emulator.state.requests[job["request_id"]].output_path
        assert Path(job["output_path"]).read_bytes() == made.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == [f"soak-{n:02}.mp4" for n in range(1, 21)]
    assert errors / calls >= 0.25 and drops / calls >= 0.18  # the day really was bad


def test_submit_wait_outlasts_a_30_second_outage_of_the_api(
    tmp_path: Path, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    emulator.state.config.processing_seconds = 3.0
    folder = tmp_path / "data"
    env = cli_env(CHAMELAION_BASE_URL=emulator.base_url, CHAMELAION_API_KEY="emulator-key")
    env |= {"CHAMELAION_POLL_INTERVAL": "0.2"}

    def submit(reference_id: str) -> subprocess.Popen[str]:
        command = [*BRIDGE, "submit", *map(str, sample_pair), "--wait", "--json"]
        command += ["--reference-id", reference_id, "--data-dir", str(folder)]
        return subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    polling, uploading = submit("polled-through-it"), None
    info = wait_until(lambda: discovery.read_discovery(folder), message="the bridge")
    client = BridgeClient(info["url"], data_dir=folder)

    def state_of(reference_id: str) -> str | None:
        jobs = client.list_jobs(keys=[reference_id])
        return jobs[0]["state"] if jobs else None

    try:
        wait_until(lambda: state_of("polled-through-it") == "processing", message="processing")
        faults_of(emulator).add("generate-with-media", "delay", delay=2.0)
        uploading = submit("uploaded-through-it")
        wait_until(lambda: emulator.state.in_flight > 0, message="an upload in flight")
        emulator.run(go_offline(emulator))
        outage_ends = time.monotonic() + OUTAGE_SECONDS

        def outage_over_with_jobs_waiting() -> bool:
            jobs = client.list_jobs()
            assert all(job["state"] not in RETRYABLE_STATES for job in jobs), jobs
            return time.monotonic() >= outage_ends

        wait_until(outage_over_with_jobs_waiting, timeout=OUTAGE_SECONDS + 10, interval=1.0)
        notes = [job.get("note") or "" for job in client.list_jobs()]
        assert all(note.startswith("Waiting to") and "since" in note for note in notes), notes
        assert client.health()["problems"]  # and the bridge says what is wrong
        emulator.run(go_online(emulator))

        for process in (polling, uploading):
            out, err = process.communicate(timeout=180)  # type: ignore[union-attr]
            assert process.returncode == 0, err
            assert json.loads(out)["state"] == "completed"
        assert emulator.state.stats.generate_by_reference_id == {
            "polled-through-it": 1,
            "uploaded-through-it": 1,
        }
    finally:
        for process in (polling, uploading):
            if process is not None and process.poll() is None:
                process.kill()
        left = discovery.read_discovery(folder)
        if left:
            os.kill(left["pid"], signal.SIGTERM)
            wait_until(lambda: not (folder / discovery.DISCOVERY_FILE).exists())
