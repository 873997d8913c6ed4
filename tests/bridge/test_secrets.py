"""The API key never reaches the log, the store, a job's JSON or an error message."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bridge.emulator import EmulatorConfig, start_emulator
from tests.bridge.processes import BridgeProcess
from tests.helpers import async_wait_until

SECRET = "sk-live-7f3a9c2e-never-show-me"


@pytest.mark.parametrize("accepted", [True, False], ids=["good-key", "refused-key"])
async def test_key_stays_out_of_every_file_and_answer(
    accepted: bool, tmp_path: Path, sample_pair: tuple[Path, Path]
) -> None:
    keys = frozenset({SECRET if accepted else "another-key"})
    emulator = await start_emulator(
        EmulatorConfig(api_keys=keys, queued_seconds=0.05, processing_seconds=0.1)
    )
    proc = BridgeProcess(tmp_path / "data", emulator.base_url, api_key=SECRET)
    try:
        client = await asyncio.to_thread(proc.start)
        health = await asyncio.to_thread(client.health)
        assert health["api_key_configured"] is True
        body = {"video_path": str(sample_pair[0]), "audio_path": str(sample_pair[1])}
        job = await asyncio.to_thread(client.create_job, body)

        async def final() -> dict | None:
            current = await asyncio.to_thread(client.get_job, job["id"])
            return current if current["state"] in ("completed", "failed") else None

        done = await async_wait_until(final, timeout=30)
        assert done["state"] == ("completed" if accepted else "failed")
        if not accepted:
            assert "refused the API key" in done["error"]
        answers = json.dumps([health, done, await asyncio.to_thread(client.list_jobs)])
    finally:
        await asyncio.to_thread(proc.stop)
        await emulator.close()

    assert SECRET not in answers
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"key found in {path.name}"
