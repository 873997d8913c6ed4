"""The local HTTP API over real HTTP on 127.0.0.1, with a real engine talking to the emulator."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from bridge.emulator import RunningEmulator
from bridge.jobs import JobSpec
from bridge.server import STORE
from tests.bridge.conftest import (
    AUTH,
    EMULATOR_KEY,
    TOKEN,
    assert_nothing_created,
    error_of,
    fill_the_disk,
    free_the_disk,
    job_body,
)
from tests.helpers import async_wait_until


async def test_health_needs_no_token_and_never_shows_the_key(api: TestClient) -> None:
    response = await api.get("/v1/health")
    assert response.status == 200
    text = await response.text()
    assert EMULATOR_KEY not in text
    body = json.loads(text)
    assert body["status"] == "ok"
    assert body["api_key_configured"] is True
    assert body["emulator"] is True
    assert body["api_base"].startswith("http://127.0.0.1:")


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]
)
async def test_everything_else_needs_the_token(api: TestClient, headers: dict[str, str]) -> None:
    assert "token" in await error_of(await api.get("/v1/jobs", headers=headers), 401)
    assert (await api.get("/v1/jobs", headers=AUTH)).status == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:7878", "192.168.1.5:7878", ""])
async def test_foreign_host_is_refused(api: TestClient, host: str) -> None:
    response = await api.get("/v1/health", headers={"Host": host})
    assert "127.0.0.1" in await error_of(response, 403)


@pytest.mark.parametrize("host", ["localhost", "localhost:7878", "[::1]:7878", "127.0.0.1"])
async def test_loopback_hosts_are_accepted(api: TestClient, host: str) -> None:
    assert (await api.get("/v1/jobs", headers={**AUTH, "Host": host})).status == 200


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "null", "http://127.0.0.1.evil.example"]
)
async def test_foreign_origin_is_refused_even_with_the_token(api: TestClient, origin: str) -> None:
    response = await api.get("/v1/jobs", headers={**AUTH, "Origin": origin})
    await error_of(response, 403)


async def test_loopback_origin_is_accepted(api: TestClient) -> None:
    response = await api.get("/v1/jobs", headers={**AUTH, "Origin": "http://localhost:3000"})
    assert response.status == 200


async def test_malformed_json_is_refused(api: TestClient) -> None:
    response = await api.post("/v1/jobs", data=b'{"video_path": ', headers=AUTH)
    assert await error_of(response, 400) == "The request body is not valid JSON."


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"colour": "blue"}, "Unknown field(s) colour"),
        ({"video_path": None}, "Give exactly one of video_path or video_url"),
        ({"audio_path": None}, "Give exactly one of audio_path or audio_url"),
        ({"reference_id": "../.."}, "reference_id"),
        ({"output_dir": "/tmp/../etc"}, "output_dir"),
        ({"video_path": "relative.mp4"}, "absolute path"),
    ],
)
async def test_bad_job_requests_get_one_sentence(
    api: TestClient, sample_pair: tuple[Path, Path], change: dict[str, Any], expected: str
) -> None:
    body = {k: v for k, v in {**job_body(sample_pair), **change}.items() if v is not None}
    message = await error_of(await api.post("/v1/jobs", json=body, headers=AUTH), 400)
    assert expected in message
    assert (await (await api.get("/v1/jobs", headers=AUTH)).json())["jobs"] == []


async def test_missing_input_file_is_a_400(api: TestClient, tmp_path: Path) -> None:
    body = {"video_path": str(tmp_path / "nope.mp4"), "audio_path": str(tmp_path / "nope.wav")}
    message = await error_of(await api.post("/v1/jobs", json=body, headers=AUTH), 400)
    assert "nope.mp4" in message


async def test_a_job_runs_to_completion_and_filters_find_it(
    api: TestClient, sample_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    body = job_body(sample_pair, reference_id="shot-1", output_dir=str(tmp_path / "out"))
    response = await api.post("/v1/jobs", json=body, headers=AUTH)
    assert response.status == 201
    created = await response.json()
    assert created["reference_id"] == "shot-1" and created["state"] == "queued"

    async def completed() -> dict[str, Any] | None:
        job = await (await api.get("/v1/jobs/shot-1", headers=AUTH)).json()
        return job if job["state"] == "completed" else None

    job = await async_wait_until(completed, message="the job to complete")
    assert Path(job["output_path"]).is_file()
    assert Path(job["output_path"]).parent == tmp_path / "out"

    by_ref = await api.get("/v1/jobs", params=[("reference_id", "shot-1")], headers=AUTH)
    assert [j["id"] for j in (await by_ref.json())["jobs"]] == [created["id"]]
    by_id = await api.get("/v1/jobs", params=[("reference_id", created["id"])], headers=AUTH)
    assert [j["reference_id"] for j in (await by_id.json())["jobs"]] == ["shot-1"]
    queued = await api.get("/v1/jobs", params=[("state", "queued")], headers=AUTH)
    assert (await queued.json())["jobs"] == []
    bad_state = await api.get("/v1/jobs", params=[("state", "done")], headers=AUTH)
    assert "Unknown state 'done'" in await error_of(bad_state, 400)

    duplicate = await api.post(
        "/v1/jobs", json=job_body(sample_pair, reference_id="shot-1"), headers=AUTH
    )
    assert "already used" in await error_of(duplicate, 409)
    assert "completed" in await error_of(
        await api.post("/v1/jobs/shot-1/cancel", headers=AUTH), 409
    )


async def test_cancel_and_unknown_jobs(api: TestClient, sample_pair: tuple[Path, Path]) -> None:
    store = api.server.app[STORE]
    job = store.create(JobSpec(**job_body(sample_pair), reference_id="to-cancel"))
    response = await api.post("/v1/jobs/to-cancel/cancel", headers=AUTH)
    assert response.status == 200
    assert (await response.json())["state"] == "canceled"
    assert store.get(job.id).state == "canceled"
    assert "canceled" in await error_of(
        await api.post(f"/v1/jobs/{job.id}/cancel", headers=AUTH), 409
    )
    assert "nobody" in await error_of(await api.get("/v1/jobs/nobody", headers=AUTH), 404)
    assert "nobody" in await error_of(await api.post("/v1/jobs/nobody/retry", headers=AUTH), 404)


async def test_unknown_routes_and_methods_answer_json(api: TestClient) -> None:
    assert "/v2/things" in await error_of(await api.get("/v2/things", headers=AUTH), 404)
    assert "POST" in await error_of(await api.delete("/v1/jobs", headers=AUTH), 405)


async def read_event(response: ClientResponse, reference_id: str) -> dict[str, Any]:
    """The next `data:` event about `reference_id`, skipping comments and other jobs."""
    while True:
        line = (await asyncio.wait_for(response.content.readline(), 20)).decode().strip()
        if line.startswith("data:"):
            job = json.loads(line[5:])
            if job["reference_id"] == reference_id:
                return job


async def open_events(api: TestClient) -> ClientResponse:
    response = await api.get("/v1/events", headers=AUTH)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert await asyncio.wait_for(response.content.readline(), 5) == b": connected\n"
    return response


async def test_events_stream_job_changes(api: TestClient, sample_pair: tuple[Path, Path]) -> None:
    store = api.server.app[STORE]
    listeners_before = len(store._listeners)
    events = await open_events(api)
    await api.post("/v1/jobs", json=job_body(sample_pair, reference_id="sse-1"), headers=AUTH)
    states = [(await read_event(events, "sse-1"))["state"]]
    while states[-1] != "completed":
        states.append((await read_event(events, "sse-1"))["state"])
    assert states[0] == "queued"
    assert {"uploading", "submitted"} <= set(states)
    events.close()
    await async_wait_until(
        lambda: len(store._listeners) == listeners_before,
        message="the closed stream to stop listening to the store",
    )


async def test_events_from_another_thread_arrive(
    api: TestClient, sample_pair: tuple[Path, Path]
) -> None:
    events = await open_events(api)
    store = api.server.app[STORE]
    spec = JobSpec(**job_body(sample_pair), reference_id="from-thread")
    await asyncio.to_thread(store.create, spec)
    job = await read_event(events, "from-thread")
    assert job["state"] == "queued"
    assert EMULATOR_KEY not in json.dumps(job)


# --- bad input: one sentence, no job, nothing sent to the API -------------------------------

GOOD_AUDIO_URL = "http://127.0.0.1:9/dub.wav"


def url_body(video_url: str) -> dict[str, Any]:
    return {"video_url": video_url, "audio_url": GOOD_AUDIO_URL}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"reference_id": "take-1\n"}, "reference_id 'take-1\\n' is not allowed"),
        ({"reference_id": "take\x07one"}, "reference_id 'take\\x07one' is not allowed"),
        ({"reference_id": "take\u200bone"}, "is not allowed"),
        ({"reference_id": "r" * 200}, "is 200 characters long; use at most 128."),
        ({"video_range": {"start_seconds": float("nan"), "duration_seconds": 1}}, "finite"),
        ({"video_range": {"start_seconds": 0, "duration_seconds": float("inf")}}, "finite"),
        ({"video_range": {"start_seconds": 1e12, "duration_seconds": 1}}, "7 days"),
        ({"video_range": {"start_seconds": 10**400, "duration_seconds": 1}}, "7 days"),
        ({"video_range": {"start_seconds": 0, "duration_seconds": 0}}, "above 0"),
        ({"video_range": {"start_seconds": 0, "duration_seconds": 86400 * 30}}, "7 days"),
        ({"audio_range": {"start_seconds": 0}}, "audio_range must be an object with exactly"),
        ({"audio_range": {"start_seconds": -1, "duration_seconds": 1}}, "audio_range needs"),
        ({"audio_range": {"start_seconds": 0, "duration_seconds": 0}}, "above 0"),
        ({"audio_range": {"start_seconds": 0, "duration_seconds": 1e9}}, "7 days"),
        ({"audio_range": [0, 1]}, "audio_range must be an object"),
        ({"video_path": "/media/shot\x00.mp4"}, "contains a NUL byte"),
        ({"audio_path": "/media/dub\ud800.wav"}, "not valid text (a lone surrogate"),
        ({"output_dir": "/out\x00put"}, "The output folder '/out\\x00put' contains a NUL"),
    ],
)
async def test_bad_values_are_refused_before_anything_is_created(
    api: TestClient,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
    change: dict[str, Any],
    expected: str,
) -> None:
    body = {**job_body(sample_pair), **change}
    message = await error_of(await api.post("/v1/jobs", json=body, headers=AUTH), 400)
    assert expected in message
    await assert_nothing_created(api, emulator)


async def test_a_long_reference_id_is_quoted_in_part(
    api: TestClient, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    body = job_body(sample_pair, reference_id="a" * 39 + "b" * 161)
    message = await error_of(await api.post("/v1/jobs", json=body, headers=AUTH), 400)
    assert f"'{'a' * 39}b'..." in message and "bb" not in message
    await assert_nothing_created(api, emulator)


async def test_nan_written_as_a_json_literal_is_refused(
    api: TestClient, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    video, audio = sample_pair
    raw = (
        f'{{"video_path": {json.dumps(str(video))}, "audio_path": {json.dumps(str(audio))}, '
        '"video_range": {"start_seconds": NaN, "duration_seconds": Infinity}}'
    )
    response = await api.post("/v1/jobs", data=raw, headers=AUTH)
    assert "finite numbers of seconds" in await error_of(response, 400)
    await assert_nothing_created(api, emulator)


@pytest.mark.parametrize(
    ("video_url", "expected"),
    [
        ("http://[::1", "The video URL 'http://[::1' is malformed"),
        ("http://[::1]:99999/clip.mp4", "is malformed"),
        ("http://exa\nmple.com/clip.mp4", "is malformed"),
        ("http://", "The video URL 'http://' names no host"),
        ("http:///clip.mp4", "names no host"),
        ("ftp://example.com/clip.mp4", "uses ftp://, which the API cannot fetch"),
        ("file:///home/me/clip.mp4", "uses file://, which the API cannot fetch"),
        ("example.com/clip.mp4", "has no scheme"),
    ],
)
async def test_urls_the_api_cannot_fetch_are_named_as_such(
    api: TestClient, emulator: RunningEmulator, video_url: str, expected: str
) -> None:
    response = await api.post("/v1/jobs", json=url_body(video_url), headers=AUTH)
    assert expected in await error_of(response, 400)
    await assert_nothing_created(api, emulator)


async def test_a_fifo_is_named_and_does_not_hang_the_probe(
    api: TestClient, emulator: RunningEmulator, sample_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    body = {**job_body(sample_pair), "video_path": str(fifo)}
    async with asyncio.timeout(15):  # opening the FIFO to probe it would block for ever
        response = await api.post("/v1/jobs", json=body, headers=AUTH)
    assert f"The file {fifo} is a named pipe (FIFO)" in await error_of(response, 400)
    await assert_nothing_created(api, emulator)


async def test_a_symlink_loop_is_named(
    api: TestClient, emulator: RunningEmulator, sample_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    loop = tmp_path / "dub.wav"
    (tmp_path / "other.wav").symlink_to(loop)
    loop.symlink_to(tmp_path / "other.wav")
    body = {**job_body(sample_pair), "audio_path": str(loop)}
    message = await error_of(await api.post("/v1/jobs", json=body, headers=AUTH), 400)
    assert f"The path {loop} runs into a loop of symbolic links" in message
    await assert_nothing_created(api, emulator)


async def test_a_full_data_disk_is_a_507_naming_the_folder(
    api: TestClient, emulator: RunningEmulator, sample_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    store = api.server.app[STORE]
    before = fill_the_disk(store)
    body = job_body(sample_pair, reference_id="no-room")
    message = await error_of(await api.post("/v1/jobs", json=body, headers=AUTH), 507)
    assert message == (
        f"The disk holding the bridge's data folder {tmp_path / 'data'} is full; free some "
        "space and submit again."
    )
    assert len((await (await api.get("/v1/jobs", headers=AUTH)).json())["jobs"]) == before
    assert emulator.state.stats.calls == {}

    free_the_disk(store)
    assert (await api.post("/v1/jobs", json=body, headers=AUTH)).status == 201
