"""SIGKILL a real bridge process mid-upload, mid-poll and mid-download: every job still
completes exactly once, with one request charged and one result file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bridge import media
from bridge.emulator import RunningEmulator
from chamelaion_client import FINAL_STATES
from chamelaion_client.client import BridgeClient
from tests.bridge.processes import BridgeProcess
from tests.faults import faults_of
from tests.helpers import async_wait_until


@pytest.fixture
async def bridge_proc(tmp_path: Path, emulator: RunningEmulator) -> AsyncIterator[BridgeProcess]:
    proc = BridgeProcess(tmp_path / "data", emulator.base_url)
    yield proc
    await asyncio.to_thread(proc.stop)


async def call(fn: Callable[..., object], *args: object) -> object:
    """Run a blocking client call off the loop, so the in-process emulator keeps serving."""
    return await asyncio.to_thread(fn, *args)


async def state_of(client: BridgeClient, ref: str) -> str:
    return (await call(client.get_job, ref))["state"]  # type: ignore[index]


async def restart_and_finish(
    bridge_proc: BridgeProcess, emulator: RunningEmulator, refs: list[str]
) -> list[dict]:
    await async_wait_until(lambda: emulator.state.in_flight == 0, message="calls to settle")
    client = await call(bridge_proc.start)
    finished = []
    for ref in refs:

        async def final(ref: str = ref) -> dict | None:
            job = await call(client.get_job, ref)
            return job if job["state"] in FINAL_STATES else None

        finished.append(await async_wait_until(final, timeout=40, message=f"{ref} to finish"))
    return finished


def submit(client: BridgeClient, pair: tuple[Path, Path], ref: str) -> dict:
    return client.create_job(
        {"video_path": str(pair[0]), "audio_path": str(pair[1]), "reference_id": ref}
    )


@pytest.mark.parametrize(
    ("fault", "created_while_dead"),
    [("delay", 0), ("delay-after-accept", 1)],
    ids=["before-the-api-accepted", "after-the-api-accepted"],
)
async def test_killed_mid_upload_resumes_without_paying_twice(
    fault: str,
    created_while_dead: int,
    bridge_proc: BridgeProcess,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
) -> None:
    faults_of(emulator).add("generate-with-media", fault, delay=1.0)
    client = await call(bridge_proc.start)
    await call(submit, client, sample_pair, "crash-upload")
    await async_wait_until(lambda: emulator.state.in_flight > 0, message="upload in flight")
    assert await state_of(client, "crash-upload") == "uploading"

    await call(bridge_proc.kill)
    await async_wait_until(lambda: emulator.state.in_flight == 0, message="calls to settle")
    assert emulator.state.stats.requests_created == created_while_dead
    [job] = await restart_and_finish(bridge_proc, emulator, ["crash-upload"])

    assert job["state"] == "completed", job["error"]
    assert media.is_playable_video(Path(job["output_path"]))
    assert emulator.state.stats.generate_by_reference_id["crash-upload"] == 1


async def test_killed_mid_poll_and_mid_download_every_job_completes_exactly_once(
    bridge_proc: BridgeProcess,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    emulator.state.config.processing_seconds = 1.5
    client = await call(bridge_proc.start)
    refs = [f"batch-{n}" for n in range(4)]
    for ref in refs:
        await call(submit, client, sample_pair, ref)

    async def processing() -> bool:
        states = {await state_of(client, ref) for ref in refs}
        return states <= {"submitted", "processing"} and "processing" in states

    await async_wait_until(processing, timeout=30, message="jobs to be processing")
    await call(bridge_proc.kill)

    # Second life: the downloads stall, and the bridge dies again mid-download.
    faults_of(emulator).add("output", "delay", count=-1, delay=2.0)
    client = await call(bridge_proc.start)

    async def downloading() -> bool:
        return "downloading" in {await state_of(client, ref) for ref in refs}

    await async_wait_until(downloading, timeout=30, message="a download in flight")
    await call(bridge_proc.kill)
    faults_of(emulator).rules.clear()

    jobs = await restart_and_finish(bridge_proc, emulator, refs)

    assert [j["state"] for j in jobs] == ["completed"] * 4, [j["error"] for j in jobs]
    assert dict(emulator.state.stats.generate_by_reference_id) == {ref: 1 for ref in refs}
    outputs = sorted(Path(j["output_path"]).name for j in jobs)
    assert outputs == sorted(f"{ref}.mp4" for ref in refs)
    folder = Path(jobs[0]["output_path"]).parent
    assert sorted(p.name for p in folder.iterdir()) == outputs
