"""Fixtures for the bridge: a real emulator on 127.0.0.1, real media files, a real engine."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from bridge.config import BridgeConfig, Secret
from bridge.emulator import EmulatorConfig, RunningEmulator, emulator_in_background, start_emulator
from bridge.engine import Engine
from bridge.errors import StoreError
from bridge.jobs import Job, JobSpec
from bridge.server import create_app
from bridge.store import Store
from tests.helpers import async_wait_until
from tests.media_samples import make_sample_media

EMULATOR_KEY = "emulator-key"
TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="session")
def sample_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 1 s sample video (with its own sound) and a dubbed WAV; tests must not modify them."""
    folder = tmp_path_factory.mktemp("media")
    return make_sample_media(folder, seconds=1.0, fps=25, size=(160, 120))


@pytest.fixture
async def sample_urls(sample_pair: tuple[Path, Path], aiohttp_server) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """The sample pair served over HTTP on 127.0.0.1, for URL-mode jobs."""
    app = web.Application()
    app.router.add_static("/media", sample_pair[0].parent)
    server = await aiohttp_server(app, host="127.0.0.1")
    video, audio = (str(server.make_url(f"/media/{p.name}")) for p in sample_pair)
    return video, audio


@contextlib.asynccontextmanager
async def running_emulator(
    storage: Path, processing_seconds: float = 0.2
) -> AsyncIterator[RunningEmulator]:
    """An emulator whose requests are queued briefly and processed for `processing_seconds`."""
    running = await start_emulator(
        EmulatorConfig(
            queued_seconds=0.05, processing_seconds=processing_seconds, storage_dir=storage
        )
    )
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[RunningEmulator]:
    async with running_emulator(tmp_path / "emu") as running:
        yield running


@contextlib.contextmanager
def emulator_thread(storage: Path, **settings: Any) -> Iterator[RunningEmulator]:
    """The emulator on a loop of its own, in a thread: for a bridge in another process, or
    a test that times the callbacks of its own loop."""
    with emulator_in_background(EmulatorConfig(storage_dir=storage, **settings)) as running:
        yield running


def bridge_config(
    data_dir: Path, base_url: str, key: str | None = EMULATOR_KEY, **overrides: Any
) -> BridgeConfig:
    """A config with quick polling and retries, so tests finish in a second, not a minute."""
    settings: dict[str, Any] = {
        "poll_interval": 0.05,
        "max_poll_interval": 0.3,
        "retry_base": 0.05,
        "retry_cap": 0.5,
        "accept_grace": 0.3,
        "generate_per_minute": 0,  # the emulator has no rate limit; 200-pair batches at once
    }
    return BridgeConfig(
        data_dir=data_dir, api_base=base_url, api_key=Secret(key), **(settings | overrides)
    )


@pytest.fixture
async def api(aiohttp_client: Any, tmp_path: Path, emulator: RunningEmulator) -> TestClient:
    """The local API over real HTTP on 127.0.0.1, its engine talking to the emulator."""
    config = bridge_config(tmp_path / "data", emulator.base_url)
    return await aiohttp_client(create_app(config, TOKEN))


def job_body(pair: tuple[Path, Path], **extra: Any) -> dict[str, Any]:
    video, audio = pair
    return {"video_path": str(video), "audio_path": str(audio), **extra}


async def error_of(response: ClientResponse, status: int) -> str:
    """The response's one-sentence error, after checking its status and JSON shape."""
    assert response.status == status, await response.text()
    body = await response.json()
    assert set(body) == {"error"}
    assert body["error"].endswith(".") and "\n" not in body["error"]
    return body["error"]


async def assert_nothing_created(api: TestClient, emulator: RunningEmulator) -> None:
    """No job in the bridge and not one call to the API: a refusal cost nothing."""
    assert (await (await api.get("/v1/jobs", headers=AUTH)).json())["jobs"] == []
    assert emulator.state.stats.calls == {}


EngineFactory = Callable[..., Awaitable[Engine]]


@pytest.fixture
async def make_engine(tmp_path: Path, emulator: RunningEmulator) -> AsyncIterator[EngineFactory]:
    """Start engines on a shared data folder (a second one models a restarted bridge)."""
    engines: list[tuple[Engine, Store]] = []

    async def factory(
        key: str | None = EMULATOR_KEY,
        data_dir: Path | None = None,
        store_class: type[Store] = Store,
        **overrides: Any,
    ) -> Engine:
        config = bridge_config(data_dir or tmp_path / "data", emulator.base_url, key, **overrides)
        store = store_class(config.store_path)
        engine = Engine(config, store)
        await engine.start()
        engines.append((engine, store))
        return engine

    yield factory
    for engine, store in engines:
        await engine.close()
        store.close()


async def wait_final(engine: Engine, job_id: str, timeout: float = 20.0) -> Job:
    """The job once it is completed, failed or canceled."""

    def final() -> Job | None:
        job = engine.store.get(job_id)
        return job if job is not None and job.is_final else None

    return await async_wait_until(final, timeout=timeout, message=f"job {job_id} to finish")


def fill_the_disk(store: Store) -> int:
    """Make the store's disk "full" for real: SQLite may grow no further, and the pages it has
    are filled with jobs. Returns how many jobs that took; undo with `free_the_disk`."""
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    for count in range(10_000):
        try:
            store.create(JobSpec(video_path="/in/v.mp4", audio_path="/in/a.wav"))
        except StoreError:
            return count
    raise AssertionError("the store never filled up")


def free_the_disk(store: Store) -> None:
    store._db.execute("PRAGMA max_page_count = 1073741823")
