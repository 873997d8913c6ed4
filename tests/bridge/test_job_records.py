"""The bridge as the record of a client's jobs: client data kept verbatim, jobs listed by
file, finished jobs cleared from the listings (over real HTTP, the emulator as the API)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.emulator import RunningEmulator, emulator_in_background
from bridge.jobs import MAX_CLIENT_BYTES, JobSpec
from bridge.server import STORE
from chamelaion_client import FINAL_STATES
from chamelaion_client.client import BridgeRequestError
from tests.bridge.conftest import AUTH, error_of, job_body
from tests.bridge.processes import BridgeProcess, run_cli
from tests.helpers import async_wait_until, wait_until

CLIENT = {"file": "f3a9-Blend_1", "scene": "Shot 12 – Café", "channel": 4, "take": [1, 2.5]}


async def listed(api: TestClient, *params: tuple[str, str]) -> list[str]:
    """The listed jobs' reference_ids, sorted (jobs made in the same millisecond come in
    any order)."""
    response = await api.get("/v1/jobs", params=list(params), headers=AUTH)
    assert response.status == 200, await response.text()
    return sorted(job["reference_id"] for job in (await response.json())["jobs"])


async def final(api: TestClient, key: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        job = await (await api.get(f"/v1/jobs/{key}", headers=AUTH)).json()
        return job if job["state"] in FINAL_STATES else None

    return await async_wait_until(done, message=f"job {key} to finish")


async def test_client_data_comes_back_verbatim_and_is_null_when_not_given(
    api: TestClient, sample_pair: tuple[Path, Path]
) -> None:
    body = job_body(sample_pair, reference_id="with-client", client=CLIENT)
    created = await (await api.post("/v1/jobs", json=body, headers=AUTH)).json()
    assert created["client"] == CLIENT and created["cleared"] is False
    fetched = await (await api.get(f"/v1/jobs/{created['id']}", headers=AUTH)).json()
    assert fetched["client"] == CLIENT
    plain = job_body(sample_pair, reference_id="without-client")
    assert (await (await api.post("/v1/jobs", json=plain, headers=AUTH)).json())["client"] is None


def sized_client(size: int) -> dict[str, str]:
    """A client object whose compact JSON is exactly `size` bytes."""
    empty = len(json.dumps({"pad": ""}, separators=(",", ":")))
    return {"pad": "x" * (size - empty)}


async def test_client_data_of_exactly_16_kib_is_taken(
    api: TestClient, sample_pair: tuple[Path, Path]
) -> None:
    client = sized_client(MAX_CLIENT_BYTES)
    body = job_body(sample_pair, client=client)
    response = await api.post("/v1/jobs", json=body, headers=AUTH)
    assert response.status == 201 and (await response.json())["client"] == client


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        ([1, 2], "client must be a JSON object (or left out)."),
        ("f3a9", "client must be a JSON object (or left out)."),
        (sized_client(MAX_CLIENT_BYTES + 1), "client is 16385 bytes as JSON; keep it to 16384"),
        ({"file": ""}, "client.file must be a string of 1-64 letters, digits, '_' or '-'."),
        ({"file": "a" * 65}, "client.file must be a string of 1-64"),
        ({"file": "my file"}, "client.file must be a string of 1-64"),
        ({"file": "../x"}, "client.file must be a string of 1-64"),
        ({"file": "ab\n"}, "client.file must be a string of 1-64"),
        ({"file": 42}, "client.file must be a string of 1-64"),
        ({"file": None}, "client.file must be a string of 1-64"),
    ],
)
async def test_bad_client_data_is_refused_with_a_sentence(
    api: TestClient,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
    client: Any,
    expected: str,
) -> None:
    body = job_body(sample_pair, client=client)
    assert expected in await error_of(await api.post("/v1/jobs", json=body, headers=AUTH), 400)
    assert await listed(api) == [] and emulator.state.stats.calls == {}


async def test_client_data_with_nan_is_refused(
    api: TestClient, sample_pair: tuple[Path, Path]
) -> None:
    video, audio = sample_pair
    raw = (
        f'{{"video_path": {json.dumps(str(video))}, "audio_path": {json.dumps(str(audio))}, '
        '"client": {"file": "f1", "offset": NaN}}'
    )
    response = await api.post("/v1/jobs", data=raw, headers=AUTH)
    assert "not NaN or Infinity" in await error_of(response, 400)
    assert await listed(api) == []


async def test_jobs_are_listed_by_file_together_with_the_other_filters(
    api: TestClient, sample_pair: tuple[Path, Path]
) -> None:
    store = api.server.app[STORE]
    for reference_id, file in [("a-1", "fileA"), ("b-1", "fileB"), ("a-2", "fileA"), ("n", None)]:
        client = {"file": file} if file else {"scene": "no file"}
        store.create(JobSpec(**job_body(sample_pair), reference_id=reference_id, client=client))
    assert await listed(api, ("file", "fileA")) == ["a-1", "a-2"]
    assert await listed(api, ("file", "fileB")) == ["b-1"]
    assert await listed(api, ("file", "fileC")) == []
    assert await listed(api, ("file", "fileA"), ("reference_id", "a-2")) == ["a-2"]
    assert await listed(api, ("file", "fileA"), ("reference_id", "b-1")) == []
    assert await listed(api, ("file", "fileA"), ("state", "queued")) == ["a-1", "a-2"]
    assert await listed(api, ("file", "fileA"), ("state", "completed")) == []
    assert await listed(api) == ["a-1", "a-2", "b-1", "n"]
    bad = await api.get("/v1/jobs", params={"file": "a/b"}, headers=AUTH)
    assert await error_of(bad, 400) == (
        "The file filter must be a string of 1-64 letters, digits, '_' or '-'."
    )


async def test_a_running_job_cannot_be_cleared_until_it_is_canceled(
    api: TestClient, sample_pair: tuple[Path, Path]
) -> None:
    store = api.server.app[STORE]
    store.create(JobSpec(**job_body(sample_pair), reference_id="still-queued"))
    message = await error_of(await api.delete("/v1/jobs/still-queued", headers=AUTH), 409)
    assert message == "Job still-queued is queued, so it cannot be cleared yet; cancel it first."
    assert await listed(api) == ["still-queued"]
    assert (await api.post("/v1/jobs/still-queued/cancel", headers=AUTH)).status == 200
    cleared = await api.delete("/v1/jobs/still-queued", headers=AUTH)
    assert cleared.status == 200 and (await cleared.json())["cleared"] is True
    assert await listed(api) == []
    unknown = await api.delete("/v1/jobs/nobody", headers=AUTH)
    assert "nobody" in await error_of(unknown, 404)


async def test_a_cleared_job_leaves_the_listings_but_keeps_its_files_and_reference_id(
    api: TestClient, sample_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    body = job_body(
        sample_pair, reference_id="done-1", output_dir=str(tmp_path / "out"), client=CLIENT
    )
    created = await (await api.post("/v1/jobs", json=body, headers=AUTH)).json()
    done = await final(api, "done-1")
    assert done["state"] == "completed"
    response = await api.delete(f"/v1/jobs/{created['id']}", headers=AUTH)
    assert response.status == 200
    assert (await response.json())["cleared"] is True
    again = await api.delete("/v1/jobs/done-1", headers=AUTH)
    assert again.status == 200 and (await again.json())["cleared"] is True

    assert await listed(api) == [] and await listed(api, ("file", CLIENT["file"])) == []
    assert await listed(api, ("reference_id", "done-1")) == []
    shown = await (await api.get("/v1/jobs/done-1", headers=AUTH)).json()
    assert shown["cleared"] is True and shown["client"] == CLIENT
    assert Path(shown["output_path"]).is_file()
    assert all(path.is_file() for path in sample_pair)
    reuse = await api.post(
        "/v1/jobs", json=job_body(sample_pair, reference_id="done-1"), headers=AUTH
    )
    assert "already used" in await error_of(reuse, 409)


async def test_a_cleared_job_that_is_retried_is_listed_again(
    api: TestClient, sample_pair: tuple[Path, Path]
) -> None:
    store = api.server.app[STORE]
    store.create(JobSpec(**job_body(sample_pair), reference_id="comes-back"))
    await api.post("/v1/jobs/comes-back/cancel", headers=AUTH)
    await api.delete("/v1/jobs/comes-back", headers=AUTH)
    assert await listed(api) == []
    retried = await (await api.post("/v1/jobs/comes-back/retry", headers=AUTH)).json()
    assert retried["cleared"] is False
    assert await listed(api) == ["comes-back"]
    assert (await final(api, "comes-back"))["state"] == "completed"


@pytest.fixture(scope="module")
def threaded_emulator() -> Iterator[RunningEmulator]:
    """The emulator on its own thread, so the blocking client cannot stall it."""
    with emulator_in_background() as running:
        yield running


def test_the_client_lists_by_file_clears_and_a_restart_keeps_jobs_cleared(
    threaded_emulator: RunningEmulator, sample_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    data, config = tmp_path / "data", threaded_emulator.state.config
    bridge = BridgeProcess(data, threaded_emulator.base_url)
    try:
        client = bridge.start()
        mine = client.create_job(job_body(sample_pair, reference_id="mine", client=CLIENT))
        client.create_job(job_body(sample_pair, reference_id="theirs", client={"file": "other"}))
        for key in ("mine", "theirs"):
            wait_until(lambda k=key: client.get_job(k)["state"] == "completed", message=key)
        assert [job["id"] for job in client.list_jobs(file=CLIENT["file"])] == [mine["id"]]

        config.processing_seconds = 60.0
        client.create_job(job_body(sample_pair, reference_id="busy"))
        with pytest.raises(BridgeRequestError, match="cancel it first") as refused:
            client.clear("busy")
        assert refused.value.status == 409
        assert client.clear("mine")["cleared"] is True
        bridge.stop()

        client = bridge.start()
        assert client.get_job("mine")["cleared"] is True
        assert client.list_jobs(file=CLIENT["file"]) == []
        assert [job["reference_id"] for job in client.list_jobs()] == ["theirs", "busy"]
        jobs = run_cli("jobs", "--json", "--data-dir", str(data), env=bridge.env)
        assert [job["reference_id"] for job in json.loads(jobs.stdout)["jobs"]] == [
            "theirs",
            "busy",
        ]
    finally:
        config.processing_seconds = 1.0
        bridge.stop()
