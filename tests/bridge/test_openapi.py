"""The running bridge keeps the contract in bridge/openapi.json: every documented route is
answered and served, nothing undocumented is served, and every answer (success or error)
is valid against the document's schemas."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator

import bridge
from bridge.emulator import RunningEmulator
from bridge.errors import StoreError
from bridge.jobs import FINAL_STATES as BRIDGE_FINAL_STATES
from bridge.jobs import State
from bridge.server import OPENAPI_PATH, STORE, create_app
from chamelaion_client import FINAL_STATES, RETRYABLE_STATES
from chamelaion_client.proofs import health_proof
from tests.bridge.conftest import bridge_config, running_emulator
from tests.helpers import async_wait_until

TOKEN = "contract-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOCUMENT: dict[str, Any] = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
METHODS = ("get", "put", "post", "delete", "patch")


def operations() -> set[tuple[str, str]]:
    """(METHOD, path template) of every documented operation."""
    return {
        (method.upper(), path)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in METHODS
    }


def deref(node: dict[str, Any]) -> dict[str, Any]:
    """A `#/components/...` reference followed to what it names."""
    while "$ref" in node:
        target: Any = DOCUMENT
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def schema_for(method: str, path: str, status: int, content_type: str) -> dict[str, Any]:
    responses = DOCUMENT["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answered {status}, which is undocumented"
    content = deref(responses[str(status)])["content"]
    assert content_type in content, f"{method} {path} {status} answered {content_type}"
    # The document's components travel along, so that its `#/components/...` refs resolve.
    return {**content[content_type]["schema"], "components": DOCUMENT["components"]}


def assert_valid(schema: dict[str, Any], value: Any) -> None:
    """Fail with the first violation only (the whole schema would drown it)."""
    errors = sorted(Draft202012Validator(schema).iter_errors(value), key=lambda e: e.path)
    assert not errors, f"{list(errors[0].absolute_path)}: {errors[0].message}"


@dataclass
class Contract:
    """Calls the bridge by path template and checks each answer against the document."""

    client: TestClient
    answered: set[tuple[str, str]] = field(default_factory=set)
    statuses: set[int] = field(default_factory=set)

    async def call(
        self,
        method: str,
        path: str,
        *,
        key: str = "",
        auth: bool = True,
        expect: int,
        **kwargs: Any,
    ) -> Any:
        headers = {**(AUTH if auth else {}), **kwargs.pop("headers", {})}
        url = path.replace("{key}", key)
        response = await self.client.request(method, url, headers=headers, **kwargs)
        body = await self.check(method, path, response)
        assert response.status == expect, body
        return body

    async def check(self, method: str, path: str, response: ClientResponse) -> Any:
        content_type = response.content_type
        schema = schema_for(method, path, response.status, content_type)
        body = None
        if content_type == "application/json":  # the event stream is checked event by event
            body = await response.json()
            assert_valid(schema, body)
        self.answered.add((method, path))
        self.statuses.add(response.status)
        return body


@pytest.fixture
async def slow_emulator(tmp_path: Path) -> AsyncIterator[RunningEmulator]:
    """An emulator that keeps requests processing, so jobs stay cancelable for the test."""
    async with running_emulator(tmp_path / "emu", processing_seconds=60) as running:
        yield running


@pytest.fixture
async def contract(aiohttp_server, aiohttp_client, tmp_path, slow_emulator) -> Contract:  # type: ignore[no-untyped-def]
    config = bridge_config(tmp_path / "data", slow_emulator.base_url)
    server = await aiohttp_server(create_app(config, TOKEN), host="127.0.0.1")
    return Contract(await aiohttp_client(server))


def test_the_document_and_the_router_name_the_same_routes(tmp_path: Path) -> None:
    app = create_app(bridge_config(tmp_path, "http://127.0.0.1:9"), TOKEN)
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert served == operations()


def test_the_job_states_clients_know_are_the_contracts_and_the_bridges() -> None:
    documented = set(DOCUMENT["components"]["schemas"]["State"]["enum"])
    assert documented == set(State)
    assert FINAL_STATES == BRIDGE_FINAL_STATES and RETRYABLE_STATES < FINAL_STATES


def test_the_documents_version_is_the_api_version_and_revision_health_reports() -> None:
    assert DOCUMENT["info"]["version"] == f"{bridge.API_VERSION}.{bridge.API_REVISION}.0"


async def test_every_route_answers_as_documented(
    contract: Contract, sample_pair: tuple[Path, Path]
) -> None:
    video, audio = (str(p) for p in sample_pair)
    call = contract.call

    health = await call("GET", "/v1/health", auth=False, expect=200, params={"challenge": "c1"})
    assert (health["api_version"], health["api_revision"]) == (1, bridge.API_REVISION)
    port = contract.client.server.port
    assert health["proof"] == health_proof(TOKEN, "c1", port)
    await call("GET", "/v1/health", auth=False, expect=403, headers={"Host": "evil.example"})
    assert await call("GET", "/v1/openapi", expect=200) == DOCUMENT
    await call("GET", "/v1/jobs", auth=False, expect=401)

    events = await contract.client.get("/v1/events", headers=AUTH)
    await contract.check("GET", "/v1/events", events)
    assert await events.content.readline() == b": connected\n"

    body = {"video_path": video, "audio_path": audio, "client": {"file": "f1", "take": 1}}
    job = await call("POST", "/v1/jobs", expect=201, json={**body, "reference_id": "Ärger 1"})
    assert job["reference_id"] == "Aerger-1" and job["client"] == body["client"]
    event = await asyncio.wait_for(_next_event(events), timeout=20)
    assert_valid(schema_for("GET", "/v1/jobs/{key}", 200, "application/json"), event)
    events.close()
    await call("POST", "/v1/jobs", expect=409, json={**body, "reference_id": "Aerger-1"})
    await call("POST", "/v1/jobs", expect=400, json={**body, "reference_id": "😀"})
    await call("POST", "/v1/jobs", expect=400, json={"video_path": video})

    listing = await call("GET", "/v1/jobs", expect=200, params={"file": "f1", "state": "queued"})
    assert all(j["state"] == "queued" for j in listing["jobs"])
    await call("GET", "/v1/jobs", expect=400, params={"state": "sleeping"})
    await call("GET", "/v1/jobs", expect=400, params={"file": "no/slash"})
    by_ref = await call("GET", "/v1/jobs", expect=200, params={"reference_id": "Aerger-1"})
    assert [j["id"] for j in by_ref["jobs"]] == [job["id"]]

    await call("GET", "/v1/jobs/{key}", key="Aerger-1", expect=200)
    await call("GET", "/v1/jobs/{key}", key="nobody", expect=404)
    await async_wait_until(
        lambda: _state(contract, job["id"], "processing"), message="the job to run"
    )
    await call("DELETE", "/v1/jobs/{key}", key=job["id"], expect=409)
    await call("POST", "/v1/jobs/{key}/retry", key=job["id"], expect=409)
    await call("POST", "/v1/jobs/{key}/cancel", key="nobody", expect=404)
    canceled = await call("POST", "/v1/jobs/{key}/cancel", key=job["id"], expect=200)
    assert canceled["state"] == "canceled"
    await call("POST", "/v1/jobs/{key}/cancel", key=job["id"], expect=409)
    await call("POST", "/v1/jobs/{key}/retry", key="nobody", expect=404)
    await call("DELETE", "/v1/jobs/{key}", key="nobody", expect=404)
    assert (await call("DELETE", "/v1/jobs/{key}", key=job["id"], expect=200))["cleared"]
    assert (await call("POST", "/v1/jobs/{key}/retry", key=job["id"], expect=200))["state"]

    answer = await call("PUT", "/v1/api-key", expect=200, json={"api_key": "another-key"})
    assert answer["jobs_updated"] == 0 and "another-key" not in json.dumps(answer)
    await call("PUT", "/v1/api-key", expect=400, json={"api_key": "has space"})

    assert contract.answered == operations()
    assert {200, 201, 400, 401, 403, 404, 409} <= contract.statuses


async def _next_event(response: ClientResponse) -> dict[str, Any]:
    """The next job change on an open event stream (comments are heartbeats)."""
    while True:
        line = (await response.content.readline()).decode()
        if line.startswith("data:"):
            return json.loads(line[5:])


async def _state(contract: Contract, job_id: str, state: str) -> bool:
    response = await contract.client.get(f"/v1/jobs/{job_id}", headers=AUTH)
    return (await contract.check("GET", "/v1/jobs/{key}", response))["state"] == state


@pytest.mark.parametrize("disk_full", [False, True])
async def test_a_store_that_cannot_be_used_answers_as_documented_on_every_route(
    contract: Contract,
    sample_pair: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    disk_full: bool,
) -> None:
    store = contract.client.server.app[STORE]

    async def unusable(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("The bridge cannot use its job store.", disk_full=disk_full)

    monkeypatch.setattr(store, "run", unusable)
    status = 507 if disk_full else 503
    video, audio = (str(p) for p in sample_pair)
    body = {"video_path": video, "audio_path": audio}
    await contract.call("POST", "/v1/jobs", expect=status, json=body)
    await contract.call("GET", "/v1/jobs", expect=status)
    for method, path in [
        ("GET", "/v1/jobs/{key}"),
        ("DELETE", "/v1/jobs/{key}"),
        ("POST", "/v1/jobs/{key}/cancel"),
        ("POST", "/v1/jobs/{key}/retry"),
    ]:
        await contract.call(method, path, key="any-job", expect=status)
    await contract.call("PUT", "/v1/api-key", expect=status, json={"api_key": "another-key"})
