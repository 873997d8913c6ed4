"""A new API key reaches a running bridge (PUT /v1/api-key): no restart, no job lost, and
the key itself never shows anywhere; health only shows a fingerprint keyed by the token."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge import discovery
from bridge.config import Secret
from bridge.emulator import EmulatorConfig, RunningEmulator, start_emulator
from bridge.jobs import JobSpec
from bridge.server import create_app
from bridge.store import Store
from chamelaion_client.client import BridgeClient
from chamelaion_client.proofs import key_fingerprint
from tests.bridge.conftest import (
    AUTH,
    EMULATOR_KEY,
    TOKEN,
    EngineFactory,
    bridge_config,
    error_of,
    job_body,
    wait_final,
)
from tests.bridge.processes import BridgeProcess
from tests.helpers import async_wait_until

RIGHT_KEY = "sk-right-4b1d9e-do-not-print"
WRONG_KEY = "sk-wrong-88c0aa-do-not-print"
KEY_REPLACED = (
    "The Chamelaion API refused the previous API key; a new key has been set since: retry the job."
)


async def job_when(client: BridgeClient, key: str, *states: str) -> dict[str, Any] | None:
    job = await asyncio.to_thread(client.get_job, key)
    return job if job["state"] in states else None


async def test_a_refused_key_replaced_at_runtime_lets_retry_finish_the_job(
    tmp_path: Path, sample_pair: tuple[Path, Path]
) -> None:
    emulator = await start_emulator(
        EmulatorConfig(
            api_keys=frozenset({RIGHT_KEY}),
            queued_seconds=0.05,
            processing_seconds=0.1,
            storage_dir=tmp_path / "emu",
        )
    )
    data = tmp_path / "data"
    proc = BridgeProcess(data, emulator.base_url, api_key=WRONG_KEY)
    try:
        client = await asyncio.to_thread(proc.start)
        token = discovery.read_token(data)
        before = await asyncio.to_thread(client.health)
        assert before["api_key_fingerprint"] == key_fingerprint(token, WRONG_KEY)

        job = await asyncio.to_thread(client.create_job, job_body(sample_pair))
        failed = await async_wait_until(lambda: job_when(client, job["id"], "failed"))
        assert "refused the API key" in failed["error"]

        answer = await asyncio.to_thread(client.set_api_key, RIGHT_KEY)
        assert answer["jobs_updated"] == 1
        assert await asyncio.to_thread(client.hand_over_key, RIGHT_KEY) is None  # has it now
        after = await asyncio.to_thread(client.health)
        assert after["api_key_fingerprint"] == key_fingerprint(token, RIGHT_KEY)
        told = await asyncio.to_thread(client.get_job, job["id"])
        assert (told["state"], told["error"]) == ("failed", KEY_REPLACED)

        await asyncio.to_thread(client.retry, job["id"])
        done = await async_wait_until(lambda: job_when(client, job["id"], "completed", "failed"))
        assert done["state"] == "completed", done["error"]
        assert Path(done["output_path"]).is_file()
        answers = json.dumps(
            [before, after, answer, failed, told, done, await asyncio.to_thread(client.list_jobs)]
        )
    finally:
        await asyncio.to_thread(proc.stop)
        await emulator.close()

    assert "refused the API key" in (data / discovery.LOG_FILE).read_text()  # the log is there
    for secret in (RIGHT_KEY, WRONG_KEY):
        assert secret not in answers
        for path in data.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), f"key found in {path.name}"


@pytest.fixture
async def keyless(aiohttp_client: Any, tmp_path: Path, emulator: RunningEmulator) -> TestClient:
    """A bridge started without a key, over real HTTP on loopback."""
    config = bridge_config(tmp_path / "data", emulator.base_url, key=None)
    return await aiohttp_client(create_app(config, TOKEN))


async def health_of(api: TestClient) -> dict[str, Any]:
    return await (await api.get("/v1/health")).json()


@pytest.mark.parametrize("auth", ["x-api-key", "bearer"])
async def test_a_bridge_started_without_a_key_takes_one_and_runs_jobs(
    keyless: TestClient, sample_pair: tuple[Path, Path], auth: str
) -> None:
    health = await health_of(keyless)
    assert (health["api_key_configured"], health["api_key_fingerprint"]) == (False, None)
    refused = await keyless.post("/v1/jobs", json=job_body(sample_pair), headers=AUTH)
    assert "No Chamelaion API key is set" in await error_of(refused, 400)

    body = {"api_key": EMULATOR_KEY, "auth": auth}
    answer = await keyless.put("/v1/api-key", json=body, headers=AUTH)
    assert answer.status == 200
    assert await answer.json() == {
        "api_key_configured": True,
        "api_key_fingerprint": key_fingerprint(TOKEN, EMULATOR_KEY),
        "jobs_updated": 0,
    }
    assert (await health_of(keyless))["api_key_fingerprint"] == key_fingerprint(TOKEN, EMULATOR_KEY)
    created = await keyless.post("/v1/jobs", json=job_body(sample_pair), headers=AUTH)
    assert created.status == 201
    job_id = (await created.json())["id"]

    async def final() -> dict[str, Any] | None:
        job = await (await keyless.get(f"/v1/jobs/{job_id}", headers=AUTH)).json()
        return job if job["state"] in ("completed", "failed") else None

    assert (await async_wait_until(final))["state"] == "completed"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"api_key": ', "The request body is not valid JSON."),
        ([RIGHT_KEY], "The request body must be a JSON object."),
        ({"api_key": RIGHT_KEY, RIGHT_KEY: 1}, "The body may hold only api_key and auth."),
        ({}, "api_key must be a string"),
        ({"api_key": ""}, "api_key must be a string"),
        ({"api_key": 42}, "api_key must be a string"),
        ({"api_key": RIGHT_KEY + "\n"}, "api_key must be a string"),
        ({"api_key": "sk two words"}, "api_key must be a string"),
        ({"api_key": RIGHT_KEY, "auth": "basic"}, "auth must be one of x-api-key, bearer."),
    ],
)
async def test_a_bad_key_body_is_a_400_that_never_quotes_the_key(
    keyless: TestClient, body: Any, expected: str
) -> None:
    payload = {"data": body} if isinstance(body, bytes) else {"json": body}
    response = await keyless.put("/v1/api-key", headers=AUTH, **payload)
    message = await error_of(response, 400)
    assert message.startswith(expected) and RIGHT_KEY not in message
    assert (await health_of(keyless))["api_key_configured"] is False


async def test_setting_the_key_needs_the_token(keyless: TestClient) -> None:
    response = await keyless.put("/v1/api-key", json={"api_key": RIGHT_KEY})
    assert "token" in await error_of(response, 401)
    assert (await health_of(keyless))["api_key_configured"] is False


async def test_a_running_job_goes_on_under_the_new_key(
    make_engine: EngineFactory, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    emulator.state.config.api_keys = frozenset({EMULATOR_KEY, RIGHT_KEY})
    emulator.state.config.processing_seconds = 1.0
    engine = await make_engine()
    video, audio = sample_pair
    job = await engine.submit(JobSpec(video_path=str(video), audio_path=str(audio)))
    await async_wait_until(lambda: engine.store.get(job.id).state == "processing")
    emulator.state.config.api_keys = frozenset({RIGHT_KEY})  # the old key is revoked
    assert await engine.set_api_key(Secret(RIGHT_KEY), "x-api-key") == 0
    assert (await wait_final(engine, job.id)).state == "completed"


async def test_jobs_failed_for_want_of_a_key_say_retry_works_once_one_is_set(
    make_engine: EngineFactory, tmp_path: Path, sample_pair: tuple[Path, Path]
) -> None:
    video, audio = sample_pair
    store = Store(tmp_path / "data" / "jobs.sqlite3")
    queued = store.create(JobSpec(video_path=str(video), audio_path=str(audio)))
    store.close()
    engine = await make_engine(key=None)  # resumes the queued job, without a key
    assert "No Chamelaion API key is set" in (await wait_final(engine, queued.id)).error
    assert await engine.set_api_key(Secret(EMULATOR_KEY), "x-api-key") == 1
    assert engine.store.get(queued.id).error == (
        "The bridge had no API key when this job ran; a key has been set since: retry the job."
    )
    await engine.retry(queued.id)
    assert (await wait_final(engine, queued.id)).state == "completed"
