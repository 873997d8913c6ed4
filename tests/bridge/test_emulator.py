"""The emulator answers as the documented Chamelaion API does, over real loopback HTTP.

The `emulator` fixture (tests/bridge/conftest.py) serves it on an ephemeral 127.0.0.1 port.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import av
import chamelaion
import pytest
from aiohttp import web

from bridge import media
from bridge.emulator import EmulatorConfig, RunningEmulator, start_emulator
from tests.faults import faults_of
from tests.helpers import async_wait_until
from tests.media_samples import make_test_audio, make_test_video

KEY = "emulator-key"
AUTH = {"x-api-key": KEY}
FINAL = ("completed", "failed")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A silent source video, a target tone, and a file that is not media at all."""
    folder = tmp_path_factory.mktemp("media")
    junk = folder / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    return {
        "video": make_test_video(folder / "source.mp4", frames=10, fps=10, size=(96, 48)),
        "audio": make_test_audio(folder / "target.wav", seconds=1.0),
        "junk": junk,
    }


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _sdk(emulator: RunningEmulator, **credentials: str) -> chamelaion.AsyncChamelaion:
    """The official SDK on its aiohttp transport, as the bridge uses it."""
    return chamelaion.AsyncChamelaion(
        base_url=emulator.base_url,
        max_retries=0,
        http_client=chamelaion.DefaultAioHttpClient(),
        **(credentials or {"api_key": KEY}),
    )


@pytest.fixture
async def sdk(emulator: RunningEmulator) -> AsyncIterator[chamelaion.AsyncChamelaion]:
    async with _sdk(emulator) as client:
        yield client


def _form(clips: dict[str, Path], video: str = "video", **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("video", clips[video].open("rb"), filename="source.mp4")
    form.add_field("audio", clips["audio"].open("rb"), filename="target.wav")
    for name, value in fields.items():
        form.add_field(name, value)
    return form


async def _upload(
    http: aiohttp.ClientSession, emulator: RunningEmulator, clips: dict[str, Path], **fields: str
) -> str:
    url = emulator.base_url + "/v1/lipsync/generate-with-media"
    async with http.post(url, data=_form(clips, **fields), headers=AUTH) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    assert body["status"] == "success"
    return body["request_id"]


async def _final(
    sdk: chamelaion.AsyncChamelaion, request_id: str
) -> chamelaion.types.lipsync.LipsyncRequest:
    async def done() -> object:
        request = await sdk.lipsync.requests.retrieve(request_id)
        return request if request.status in FINAL else None

    return await async_wait_until(done, timeout=10, message=f"request {request_id} to finish")


async def test_health_needs_no_key_and_says_it_is_an_emulator(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    async with http.get(emulator.base_url + "/health") as response:
        assert response.status == 200
        assert await response.json() == {
            "status": "ok",
            "emulator": True,
            "note": "local stand-in: no real lip sync is done",
        }
    async with _sdk(emulator, api_key="wrong") as client:
        assert (await client.health.check()).status == "ok"


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing authorization header"),
        ({"Authorization": "Bearer"}, "missing token"),
        ({"Authorization": "Basic ZW11bGF0b3Ita2V5"}, "invalid authorization format"),
        ({"Authorization": "Bearer nope"}, "invalid token"),
        ({"x-api-key": "nope"}, "invalid token"),
        ({"x-api-key": ""}, "missing token"),
    ],
)
async def test_auth_errors_are_the_documented_401s(
    emulator: RunningEmulator, http: aiohttp.ClientSession, headers: dict, message: str
) -> None:
    async with http.get(emulator.base_url + "/v1/users/me", headers=headers) as response:
        assert response.status == 401
        assert await response.json() == {"error": message}


async def test_both_key_forms_work_through_the_sdk(emulator: RunningEmulator) -> None:
    for credentials in ({"api_key": KEY}, {"bearer_token": KEY}):
        async with _sdk(emulator, **credentials) as client:
            assert (await client.users.retrieve_current()).name == "emulator token"
    async with _sdk(emulator, api_key="nope") as client:
        with pytest.raises(chamelaion.AuthenticationError, match="invalid token"):
            await client.users.retrieve_current()


VIDEO = {"type": "video", "url": "http://127.0.0.1:9/v.mp4"}
AUDIO = {"type": "audio", "url": "http://127.0.0.1:9/a.wav"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "invalid request body"),
        ({"inputs": "nope"}, "invalid request body"),
        ({"inputs": [VIDEO, {"type": "audio"}]}, "invalid request body"),
        ({"inputs": [VIDEO, AUDIO], "reference_id": 5}, "invalid request body"),
        (
            {"inputs": [VIDEO, AUDIO, {"type": "image", "url": "x"}]},
            'input type must be "video" or "audio"',
        ),
        ({"inputs": [AUDIO]}, "expected exactly one video input"),
        ({"inputs": [VIDEO, VIDEO, AUDIO]}, "expected exactly one video input"),
        ({"inputs": [VIDEO]}, "expected exactly one audio input"),
    ],
)
async def test_generate_validation_errors(
    emulator: RunningEmulator, http: aiohttp.ClientSession, body: object, message: str
) -> None:
    url = emulator.base_url + "/v1/lipsync/generate"
    kwargs = {"data": body, "headers": {**AUTH, "Content-Type": "application/json"}}
    if not isinstance(body, str):
        kwargs = {"json": body, "headers": AUTH}
    async with http.post(url, **kwargs) as response:
        assert response.status == 400
        assert await response.json() == {"error": message}
    assert emulator.state.requests == {}


async def test_content_type_errors(emulator: RunningEmulator, http: aiohttp.ClientSession) -> None:
    base = emulator.base_url + "/v1/lipsync"
    async with http.post(base + "/generate", data=b"x", headers=AUTH) as response:
        assert (response.status, await response.json()) == (
            400,
            {"error": "content-type must be application/json"},
        )
    async with http.post(base + "/generate-with-media", json={}, headers=AUTH) as response:
        assert (response.status, await response.json()) == (
            400,
            {"error": "content-type must be multipart/form-data"},
        )


@pytest.mark.parametrize(
    ("missing", "fields", "message"),
    [
        ("video", {}, "video file is required"),
        ("audio", {}, "audio file is required"),
        (None, {"model": "lipsync-1"}, 'model must be "lipsync-2"'),
        (None, {"disable_active_speaker_detection": "maybe"}, "invalid request body"),
    ],
)
async def test_upload_validation_errors(
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    clips: dict[str, Path],
    missing: str | None,
    fields: dict[str, str],
    message: str,
) -> None:
    form = aiohttp.FormData()
    for name in {"video", "audio"} - {missing}:
        form.add_field(name, clips[name].open("rb"), filename=clips[name].name)
    for name, value in fields.items():
        form.add_field(name, value)
    url = emulator.base_url + "/v1/lipsync/generate-with-media"
    async with http.post(url, data=form, headers=AUTH) as response:
        assert response.status == 400
        assert await response.json() == {"error": message}
    assert emulator.state.requests == {}
    assert list((emulator.state.storage / "work").iterdir()) == []


async def test_upload_runs_the_lifecycle_and_the_result_has_the_target_audio(
    emulator: RunningEmulator,
    sdk: chamelaion.AsyncChamelaion,
    http: aiohttp.ClientSession,
    clips: dict[str, Path],
    tmp_path: Path,
) -> None:
    with clips["video"].open("rb") as video, clips["audio"].open("rb") as audio:
        created = await sdk.lipsync.generate_with_media(
            video=("source.mp4", video, "video/mp4"),
            audio=("target.wav", audio, "audio/wav"),
            reference_id="shot-1",
            disable_active_speaker_detection=True,
        )
    seen: list[str] = []

    async def finished() -> object:
        request = await sdk.lipsync.requests.retrieve(created.request_id)
        if not seen or seen[-1] != request.status:
            seen.append(request.status)
        return request if request.status in FINAL else None

    request = await async_wait_until(finished, timeout=10, interval=0.01)
    assert seen == ["queued", "processing", "completed"]
    assert request.id == created.request_id and request.reference_id == "shot-1"
    assert request.created_at <= request.started_at <= request.finished_at
    assert request.created_at.utcoffset().total_seconds() == 0
    assert request.output_url == f"{emulator.url}/files/{request.id}.mp4"

    async with http.get(request.output_url) as response:
        assert response.status == 200
        assert response.content_type == "video/mp4"
        result = tmp_path / "result.mp4"
        result.write_bytes(await response.read())
        assert response.content_length == result.stat().st_size
    assert media.is_playable_video(result)
    with av.open(str(result)) as container:
        assert container.streams.video and container.streams.audio
        audio = container.streams.audio[0]
        assert float(audio.duration * audio.time_base) == pytest.approx(1.0, abs=0.1)
    by_reference = await sdk.lipsync.requests.retrieve("shot-1")
    assert by_reference.id == request.id
    assert emulator.state.stats.generate_by_reference_id == {"shot-1": 1}
    assert emulator.state.stats.downloads == 1


async def test_optional_fields_are_left_out_not_null(
    emulator: RunningEmulator, http: aiohttp.ClientSession, clips: dict[str, Path]
) -> None:
    request_id = await _upload(http, emulator, clips)
    async with http.get(f"{emulator.base_url}/v1/lipsync/requests/{request_id}", headers=AUTH) as r:
        body = await r.json()
    assert set(body) == {"id", "created_at", "status"}
    assert body["created_at"].endswith("Z")


async def test_undecodable_upload_fails_with_a_reason(
    emulator: RunningEmulator,
    sdk: chamelaion.AsyncChamelaion,
    http: aiohttp.ClientSession,
    clips: dict[str, Path],
) -> None:
    request_id = await _upload(http, emulator, clips, video="junk")
    request = await _final(sdk, request_id)
    assert (request.status, request.error_message, request.output_url) == (
        "failed",
        "video could not be decoded",
        None,
    )
    assert list((emulator.state.storage / "work").iterdir()) == []


async def test_unknown_request_is_404(
    emulator: RunningEmulator, sdk: chamelaion.AsyncChamelaion
) -> None:
    with pytest.raises(chamelaion.NotFoundError, match="lipsync request not found"):
        await sdk.lipsync.requests.retrieve("no-such-reference")


async def test_list_paginates_filters_and_clamps(
    tmp_path: Path, http: aiohttp.ClientSession, clips: dict[str, Path]
) -> None:
    config = EmulatorConfig(
        queued_seconds=0, processing_seconds=0, max_list_limit=3, storage_dir=tmp_path
    )
    emulator = await start_emulator(config)
    try:
        ids = [await _upload(http, emulator, clips, reference_id=f"ref-{i}") for i in range(5)]
        url = emulator.base_url + "/v1/lipsync/requests"
        async with _sdk(emulator) as sdk:
            page = await sdk.lipsync.requests.list(limit=2, offset=1)
            assert [r.id for r in page.data] == ids[1:3]
            assert (page.pagination.limit, page.pagination.offset, page.pagination.total) == (
                2,
                1,
                5,
            )
            clamped = await sdk.lipsync.requests.list(limit=50)
            assert (len(clamped.data), clamped.pagination.limit) == (3, 3)
            default = await sdk.lipsync.requests.list()
            assert default.pagination.limit == 3 and default.pagination.offset == 0
            only = await sdk.lipsync.requests.list(reference_id="ref-3")
            assert [r.id for r in only.data] == [ids[3]] and only.pagination.total == 1
            none = await sdk.lipsync.requests.list(reference_id="ref-9")
            assert none.data == [] and none.pagination.total == 0
        for query in ("limit=0", "offset=-1", "limit=abc"):
            async with http.get(f"{url}?{query}", headers=AUTH) as response:
                assert response.status == 400
                assert "must be an integer" in (await response.json())["error"]
    finally:
        await emulator.close()


@pytest.fixture
async def media_server(clips: dict[str, Path]) -> AsyncIterator[str]:
    """A plain file server standing in for the public URLs of URL mode."""
    app = web.Application()
    app.router.add_static("/", clips["video"].parent)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_url_mode_fetches_the_inputs(
    emulator: RunningEmulator, sdk: chamelaion.AsyncChamelaion, media_server: str
) -> None:
    created = await sdk.lipsync.generate(
        inputs=[
            {"type": "audio", "url": f"{media_server}/target.wav"},
            {"type": "video", "url": f"{media_server}/source.mp4"},
        ],
        reference_id="by-url",
    )
    request = await _final(sdk, created.request_id)
    assert request.status == "completed" and request.output_url
    assert emulator.state.stats.generate_by_reference_id == {"by-url": 1}


@pytest.mark.parametrize("broken", ["video", "audio"])
async def test_unreachable_url_is_accepted_then_fails(
    emulator: RunningEmulator, sdk: chamelaion.AsyncChamelaion, media_server: str, broken: str
) -> None:
    urls = {"video": f"{media_server}/source.mp4", "audio": f"{media_server}/target.wav"}
    urls[broken] = f"{media_server}/missing" if broken == "audio" else "http://127.0.0.1:9/x.mp4"
    created = await sdk.lipsync.generate(
        inputs=[{"type": kind, "url": url} for kind, url in urls.items()]
    )
    request = await _final(sdk, created.request_id)
    assert (request.status, request.error_message) == ("failed", f"{broken} URL is not accessible")


@pytest.mark.parametrize(
    ("kind", "retry_after", "status", "body"),
    [
        ("429", 2, 429, {"error": "rate limit exceeded"}),
        ("429", None, 429, {"error": "rate limit exceeded"}),
        ("500", None, 500, {"error": "internal error"}),
        ("401", None, 401, {"error": "unauthorized"}),
        ("404", None, 404, {"error": "lipsync request not found"}),
        ("412", None, 412, {"error": "token limit reached"}),
    ],
)
async def test_error_faults_answer_once_then_recover(
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    kind: str,
    retry_after: float | None,
    status: int,
    body: dict,
) -> None:
    faults_of(emulator).add("users", kind, retry_after=retry_after)
    url = emulator.base_url + "/v1/users/me"
    async with http.get(url, headers=AUTH) as response:
        assert (response.status, await response.json()) == (status, body)
        assert response.headers.get("Retry-After") == (None if retry_after is None else "2")
    async with http.get(url, headers=AUTH) as response:
        assert response.status == 200
    assert emulator.state.stats.calls["users"] == 2


async def test_502_is_an_nginx_html_page(
    emulator: RunningEmulator, http: aiohttp.ClientSession, clips: dict[str, Path]
) -> None:
    faults_of(emulator).add("generate-with-media", "502-html")
    url = emulator.base_url + "/v1/lipsync/generate-with-media"
    async with http.post(url, data=_form(clips), headers=AUTH) as response:
        assert response.status == 502
        assert response.content_type == "text/html"
        assert "502 Bad Gateway" in await response.text()
    assert emulator.state.requests == {}


async def test_fault_counts_groups_and_forever(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    faults_of(emulator).add("requests", "500", count=2)
    faults_of(emulator).add("any", "429", count=-1)
    statuses = []
    for path in ("/v1/lipsync/requests", "/v1/lipsync/requests/x", "/v1/users/me", "/health"):
        async with http.get(emulator.base_url + path, headers=AUTH) as response:
            statuses.append(response.status)
    assert statuses == [500, 500, 429, 429]
    assert [r.count for r in faults_of(emulator).rules] == [0, -1]


async def test_delay_fault_slows_one_answer(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    faults_of(emulator).add("users", "delay", delay=0.3)
    started = time.monotonic()
    async with http.get(emulator.base_url + "/v1/users/me", headers=AUTH) as response:
        assert response.status == 200
    assert time.monotonic() - started >= 0.3


async def test_drop_reads_the_upload_then_hangs_up_without_creating(
    emulator: RunningEmulator, http: aiohttp.ClientSession, clips: dict[str, Path]
) -> None:
    faults_of(emulator).add("generate-with-media", "drop")
    url = emulator.base_url + "/v1/lipsync/generate-with-media"
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.post(url, data=_form(clips, reference_id="r"), headers=AUTH):
            pass
    assert emulator.state.requests == {}
    assert emulator.state.stats.calls["generate-with-media"] == 1


async def test_drop_after_accept_is_the_double_charge_trap(
    emulator: RunningEmulator, sdk: chamelaion.AsyncChamelaion, clips: dict[str, Path]
) -> None:
    faults_of(emulator).add("generate-with-media", "drop-after-accept")
    with (
        clips["video"].open("rb") as video,
        clips["audio"].open("rb") as audio,
        pytest.raises(chamelaion.APIConnectionError),
    ):
        await sdk.lipsync.generate_with_media(video=video, audio=audio, reference_id="trap")
    found = await sdk.lipsync.requests.list(reference_id="trap")
    assert found.pagination.total == 1
    assert emulator.state.stats.generate_by_reference_id == {"trap": 1}
    assert (await _final(sdk, found.data[0].id)).status == "completed"


async def test_drop_midway_sends_half_the_output(
    emulator: RunningEmulator,
    sdk: chamelaion.AsyncChamelaion,
    http: aiohttp.ClientSession,
    clips: dict[str, Path],
) -> None:
    request = await _final(sdk, await _upload(http, emulator, clips))
    faults_of(emulator).add("output", "drop-midway")
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(request.output_url) as response:
            assert response.content_length > 0
            await response.read()
    async with http.get(request.output_url) as response:
        assert len(await response.read()) == response.content_length
    assert emulator.state.stats.downloads == 2


async def test_token_limit_through_the_sdk(
    emulator: RunningEmulator, sdk: chamelaion.AsyncChamelaion
) -> None:
    faults_of(emulator).add("generate", "412")
    with pytest.raises(chamelaion.APIStatusError, match="token limit reached") as caught:
        await sdk.lipsync.generate(inputs=[VIDEO, AUDIO])
    assert caught.value.status_code == 412
    assert emulator.state.requests == {}


async def test_job_outcomes_fail_and_complete_without_output(
    emulator: RunningEmulator,
    sdk: chamelaion.AsyncChamelaion,
    http: aiohttp.ClientSession,
    clips: dict[str, Path],
) -> None:
    faults_of(emulator).fail_next(error_message="face not found")
    faults_of(emulator).complete_without_output_next()
    first, second, third = [await _upload(http, emulator, clips) for _ in range(3)]
    failed = await _final(sdk, first)
    assert (failed.status, failed.error_message, failed.output_url) == (
        "failed",
        "face not found",
        None,
    )
    bare = await _final(sdk, second)
    assert (bare.status, bare.output_url, bare.error_message) == ("completed", None, None)
    assert (await _final(sdk, third)).output_url


async def test_stats_and_reset_controls_for_out_of_process_runs(
    emulator: RunningEmulator,
    sdk: chamelaion.AsyncChamelaion,
    http: aiohttp.ClientSession,
    clips: dict[str, Path],
) -> None:
    control = emulator.url + "/_emulator"
    faults = faults_of(emulator)
    faults.add("retrieve", "429", retry_after=1.5)
    faults.fail_next(error_message="boom")
    request_id = await _upload(http, emulator, clips, reference_id="ctl")
    with pytest.raises(chamelaion.RateLimitError):
        await sdk.lipsync.requests.retrieve(request_id)
    assert (await _final(sdk, request_id)).error_message == "boom"
    async with http.get(control + "/stats") as response:
        stats = await response.json()
    assert stats["calls"]["generate-with-media"] == 1
    assert stats["calls"]["retrieve"] >= 2
    assert stats["generate_by_reference_id"] == {"ctl": 1}
    assert (stats["requests_created"], stats["downloads"]) == (1, 0)
    async with http.post(control + "/reset") as response:
        assert response.status == 200
    async with http.get(control + "/stats") as response:
        assert (await response.json())["requests_created"] == 0
    assert emulator.state.requests == {}
    assert faults_of(emulator) is not faults and faults_of(emulator).rules == []


@pytest.mark.parametrize(
    ("endpoint", "kind"), [("nowhere", "500"), ("users", "9"), ("users", "drop-midway")]
)
async def test_a_fault_that_cannot_happen_is_refused(
    emulator: RunningEmulator, endpoint: str, kind: str
) -> None:
    with pytest.raises(ValueError, match="unknown|does not apply"):
        faults_of(emulator).add(endpoint, kind)


async def test_unprocessed_uploads_stream_and_complete_with_a_tiny_video(
    tmp_path: Path, http: aiohttp.ClientSession, clips: dict[str, Path]
) -> None:
    big = tmp_path / "big.mp4"
    with big.open("wb") as out:
        out.truncate(64 << 20)
    config = EmulatorConfig(
        queued_seconds=0, processing_seconds=0, process_media=False, storage_dir=tmp_path / "emu"
    )
    emulator = await start_emulator(config)
    try:
        form = aiohttp.FormData()
        form.add_field("video", big.open("rb"), filename="big.mp4")
        form.add_field("audio", clips["audio"].open("rb"), filename="target.wav")
        tracemalloc.start()
        try:
            url = emulator.base_url + "/v1/lipsync/generate-with-media"
            async with http.post(url, data=form, headers=AUTH) as response:
                request_id = (await response.json())["request_id"]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 16 << 20, f"upload of 64 MiB peaked at {peak >> 20} MiB"
        async with _sdk(emulator) as sdk:
            request = await _final(sdk, request_id)
        async with http.get(request.output_url) as response:
            result = tmp_path / "result.mp4"
            result.write_bytes(await response.read())
        assert media.is_playable_video(result) and result.stat().st_size < 10_000
    finally:
        await emulator.close()


def test_run_emulator_prints_where_and_which_key_then_serves_until_sigterm() -> None:
    code = "from bridge.emulator import run_emulator; run_emulator(port=0)"
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        banner = process.stdout.readline() + process.stdout.readline()
        assert "no real lip sync" in banner and "CHAMELAION_API_KEY=emulator-key" in banner
        base_url = banner.split("CHAMELAION_BASE_URL=")[1].split()[0]
        with urllib.request.urlopen(base_url + "/health", timeout=5) as response:
            assert json.load(response)["emulator"] is True
    finally:
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=10) == 0
