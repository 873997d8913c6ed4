"""The engine against the emulator over real HTTP: results, faults, and no double charge."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from aiohttp import web

from bridge import media
from bridge.config import BridgeConfig
from bridge.emulator import RunningEmulator
from bridge.errors import DuplicateReferenceError, InputError
from bridge.jobs import JobSpec, State
from bridge.remote import RemoteAPI
from tests.bridge.conftest import EMULATOR_KEY, EngineFactory, wait_final
from tests.faults import faults_of
from tests.helpers import async_wait_until


def spec_for(pair: tuple[Path, Path], **options: object) -> JobSpec:
    video, audio = pair
    return JobSpec(video_path=str(video), audio_path=str(audio), **options)  # type: ignore[arg-type]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_upload_job_delivers_a_playable_result_and_leaves_inputs_untouched(
    make_engine: EngineFactory, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    before = [(digest(p), p.stat().st_mtime_ns) for p in sample_pair]
    engine = await make_engine()
    job = await engine.submit(spec_for(sample_pair, reference_id="shot-010"))

    done = await wait_final(engine, job.id)

    assert done.state == State.COMPLETED, done.error
    assert Path(done.output_path).name == "shot-010.mp4"
    assert media.is_playable_video(Path(done.output_path))
    assert media.probe(Path(done.output_path)).has_audio
    assert done.progress == 1.0 and done.request_id
    assert [(digest(p), p.stat().st_mtime_ns) for p in sample_pair] == before
    assert emulator.state.stats.generate_by_reference_id == {"shot-010": 1}
    assert not [p for p in Path(done.output_path).parent.iterdir() if p.name.startswith(".")]


async def test_url_inputs_are_submitted_without_upload(
    make_engine: EngineFactory, emulator: RunningEmulator, sample_urls: tuple[str, str]
) -> None:
    engine = await make_engine()
    job = await engine.submit(JobSpec(video_url=sample_urls[0], audio_url=sample_urls[1]))
    done = await wait_final(engine, job.id)
    assert done.state == State.COMPLETED, done.error
    assert emulator.state.stats.calls["generate"] == 1
    assert emulator.state.stats.calls.get("generate-with-media", 0) == 0


async def test_unreachable_url_fails_with_the_apis_reason(
    make_engine: EngineFactory, emulator: RunningEmulator
) -> None:
    engine = await make_engine()
    job = await engine.submit(
        JobSpec(video_url="http://127.0.0.1:9/nope.mp4", audio_url="http://127.0.0.1:9/a.wav")
    )
    done = await wait_final(engine, job.id)
    assert done.state == State.FAILED
    assert "not accessible" in done.error


async def test_rate_limit_forever_makes_the_job_wait_not_fail_or_hammer(
    make_engine: EngineFactory, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    rule = faults_of(emulator).add("generate-with-media", "429", count=-1, retry_after=0.3)
    engine = await make_engine()
    job = await engine.submit(spec_for(sample_pair))
    await async_wait_until(lambda: emulator.state.stats.calls["generate-with-media"] >= 3)

    # Why it waits, for the panel and `jobs` (each new try starts without a note).
    still = await async_wait_until(
        lambda: (j := engine.store.get(job.id)).note and "rate-limiting" in j.note and j
    )
    assert still.state == State.UPLOADING and still.error is None
    # Retry-After of 0.3 s: three tries take at least 0.6 s, so this is no hammering.
    assert emulator.state.stats.calls["generate-with-media"] <= 4

    faults_of(emulator).rules.remove(rule)
    done = await wait_final(engine, job.id)
    assert done.state == State.COMPLETED, done.error
    assert done.note is None
    assert emulator.state.stats.requests_created == 1


@pytest.mark.parametrize("kind", ["drop-after-accept", "500", "502-html", "drop"])
async def test_failed_generate_is_reconciled_never_paid_twice(
    kind: str,
    make_engine: EngineFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
) -> None:
    faults_of(emulator).add("generate-with-media", kind, count=1)
    engine = await make_engine()
    engine_job = await engine.submit(spec_for(sample_pair, reference_id=f"take-{kind}"))
    done = await wait_final(engine, engine_job.id)
    assert done.state == State.COMPLETED, done.error
    assert emulator.state.stats.generate_by_reference_id == {f"take-{kind}": 1}


async def test_wrong_key_fails_once_with_a_sentence_and_no_retry_storm(
    make_engine: EngineFactory, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    secret = "sk-wrong-0123456789"
    engine = await make_engine(key=secret)
    job = await engine.submit(spec_for(sample_pair))
    done = await wait_final(engine, job.id)
    assert done.state == State.FAILED
    assert "refused the API key" in done.error and secret not in done.error
    assert emulator.state.stats.calls["generate-with-media"] == 1
    assert secret not in engine.store.path.read_bytes().decode("latin-1")


async def test_no_key_is_refused_before_anything_is_queued(
    make_engine: EngineFactory, sample_pair: tuple[Path, Path]
) -> None:
    engine = await make_engine(key=None)
    with pytest.raises(InputError, match="No Chamelaion API key"):
        await engine.submit(spec_for(sample_pair))
    assert engine.store.list() == []


async def test_remote_failure_shows_the_apis_message_and_retry_uses_a_new_reference(
    make_engine: EngineFactory, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    faults_of(emulator).fail_next(error_message="no face detected in the video")
    engine = await make_engine()
    job = await engine.submit(spec_for(sample_pair, reference_id="ep1-shot2"))
    failed = await wait_final(engine, job.id)
    assert failed.state == State.FAILED
    assert "no face detected in the video" in failed.error

    retried = await engine.retry("ep1-shot2")
    assert retried.reference_id == "ep1-shot2-r2"
    assert retried.previous_reference_ids == ["ep1-shot2"]
    done = await wait_final(engine, job.id)
    assert done.state == State.COMPLETED, done.error
    assert emulator.state.stats.generate_by_reference_id == {"ep1-shot2": 1, "ep1-shot2-r2": 1}


async def test_completed_without_output_url_fails_readably(
    make_engine: EngineFactory, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    faults_of(emulator).complete_without_output_next()
    engine = await make_engine()
    done = await wait_final(engine, (await engine.submit(spec_for(sample_pair))).id)
    assert done.state == State.FAILED
    assert "gave no output URL" in done.error


@pytest.mark.parametrize("kind", ["404", "drop-midway", "500"])
async def test_broken_download_is_retried_and_never_leaves_a_truncated_file(
    kind: str,
    make_engine: EngineFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
) -> None:
    faults_of(emulator).add("output", kind, count=2)
    engine = await make_engine()
    done = await wait_final(engine, (await engine.submit(spec_for(sample_pair))).id, 40)
    assert done.state == State.COMPLETED, done.error
    result = Path(done.output_path)
    assert media.is_playable_video(result)
    assert [p.name for p in result.parent.iterdir()] == [result.name]
    assert emulator.state.stats.calls["output"] == 3


async def test_existing_result_is_never_overwritten(
    make_engine: EngineFactory, sample_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.mp4").write_bytes(b"the editor's own file")
    engine = await make_engine()
    job = await engine.submit(spec_for(sample_pair, reference_id="keep", output_dir=str(out)))
    done = await wait_final(engine, job.id)
    assert Path(done.output_path) == out / "keep-2.mp4"
    assert (out / "keep.mp4").read_bytes() == b"the editor's own file"


async def test_duplicate_reference_id_is_refused(
    make_engine: EngineFactory, sample_pair: tuple[Path, Path]
) -> None:
    engine = await make_engine()
    await engine.submit(spec_for(sample_pair, reference_id="same"))
    with pytest.raises(DuplicateReferenceError, match="already used"):
        await engine.submit(spec_for(sample_pair, reference_id="same"))


async def test_unusable_output_folder_is_refused_at_submit(
    make_engine: EngineFactory, sample_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    engine = await make_engine()
    with pytest.raises(InputError, match="cannot be used|not writable"):
        await engine.submit(spec_for(sample_pair, output_dir=str(blocker / "out")))


async def test_bad_media_is_refused_before_upload(
    make_engine: EngineFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video")
    engine = await make_engine()
    with pytest.raises(InputError, match="notes.mp4"):
        await engine.submit(JobSpec(video_path=str(fake), audio_path=str(sample_pair[1])))
    assert emulator.state.stats.calls.get("generate-with-media", 0) == 0


async def test_a_restarted_engine_finishes_the_job_without_resubmitting(
    make_engine: EngineFactory, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    emulator.state.config.processing_seconds = 1.0
    first = await make_engine()
    job = await first.submit(spec_for(sample_pair, reference_id="resume-me"))
    await async_wait_until(lambda: first.store.get(job.id).state == State.PROCESSING)
    await first.close()

    second = await make_engine()
    done = await wait_final(second, job.id)
    assert done.state == State.COMPLETED, done.error
    assert emulator.state.stats.generate_by_reference_id == {"resume-me": 1}


async def test_canceled_job_stops_and_can_be_retried_without_a_new_charge(
    make_engine: EngineFactory, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    emulator.state.config.processing_seconds = 1.0
    engine = await make_engine()
    job = await engine.submit(spec_for(sample_pair, reference_id="cancel-me"))
    await async_wait_until(lambda: engine.store.get(job.id).request_id)
    assert (await engine.cancel("cancel-me")).state == State.CANCELED
    retried = await engine.retry(job.id)
    assert retried.state == State.SUBMITTED and retried.reference_id == "cancel-me"
    done = await wait_final(engine, job.id)
    assert done.state == State.COMPLETED, done.error
    assert emulator.state.stats.generate_by_reference_id == {"cancel-me": 1}


async def test_many_jobs_are_polled_with_list_calls_not_one_get_each(
    make_engine: EngineFactory, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    emulator.state.config.processing_seconds = 2.0
    engine = await make_engine()
    jobs = [await engine.submit(spec_for(sample_pair)) for _ in range(12)]
    for job in jobs:
        done = await wait_final(engine, job.id, 60)
        assert done.state == State.COMPLETED, done.error
    calls = emulator.state.stats.calls
    # Every job polled alone at the same pace would take >= 12 GETs per poll round.
    assert calls.get("list", 0) >= 1
    assert calls.get("retrieve", 0) < 12


def test_emulator_key_constant_matches_the_emulator_default() -> None:
    from bridge.emulator import EmulatorConfig

    assert EMULATOR_KEY in EmulatorConfig().api_keys


async def test_input_that_vanishes_before_upload_fails_with_a_sentence(
    make_engine: EngineFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    video = tmp_path / "shot.mp4"
    video.write_bytes(sample_pair[0].read_bytes())
    faults_of(emulator).add("generate-with-media", "429", count=1, retry_after=0.5)
    engine = await make_engine()
    job = await engine.submit(JobSpec(video_path=str(video), audio_path=str(sample_pair[1])))
    await async_wait_until(lambda: emulator.state.stats.calls["generate-with-media"] == 1)
    video.unlink()
    done = await wait_final(engine, job.id)
    assert done.state == State.FAILED
    assert "shot.mp4" in done.error
    assert "does not exist" in done.error or "could not be read" in done.error


@pytest.fixture
def full_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real, tiny file system (tmpfs, 8 KiB): writing a result there runs out of space."""
    folder = tmp_path / "full"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(folder)])
    if mounted.returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs")
    yield folder
    if os.path.ismount(folder):
        subprocess.run(["umount", str(folder)], check=True)


async def test_a_full_output_disk_makes_the_job_wait_then_finish_by_itself(
    make_engine: EngineFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
    full_disk: Path,
) -> None:
    engine = await make_engine()
    job = await engine.submit(spec_for(sample_pair, output_dir=str(full_disk)))

    def waiting_on_the_disk():  # type: ignore[no-untyped-def]
        current = engine.store.get(job.id)
        return current.note and f"The disk holding {full_disk} is full" in current.note

    await async_wait_until(waiting_on_the_disk, timeout=30, message="a note about the disk")
    current = engine.store.get(job.id)
    assert current.state == State.DOWNLOADING and current.error is None
    assert any("is full" in problem for problem in engine.problems.sentences())
    await async_wait_until(lambda: list(full_disk.iterdir()) == [], message="no partial file")

    subprocess.run(["umount", str(full_disk)], check=True)  # the editor frees space
    done = await wait_final(engine, job.id, timeout=90)
    assert done.state == State.COMPLETED, done.error
    assert [p.name for p in full_disk.iterdir()] == [Path(done.output_path).name]
    assert media.is_playable_video(Path(done.output_path))
    assert emulator.state.stats.requests_created == 1


@pytest.mark.parametrize(
    ("variable", "header"),
    [("CHAMELAION_API_KEY", "x-api-key"), ("CHAMELAION_BEARER_TOKEN", "Authorization")],
)
async def test_both_documented_key_variables_send_their_header_form(
    variable: str, header: str, monkeypatch: pytest.MonkeyPatch, aiohttp_server, tmp_path: Path
) -> None:
    seen: list[dict[str, str]] = []

    async def me(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"name": "studio key"})

    app = web.Application()
    app.router.add_get("/api/v1/users/me", me)
    server = await aiohttp_server(app, host="127.0.0.1")
    for name in ("CHAMELAION_API_KEY", "CHAMELAION_BEARER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "k-123")
    monkeypatch.setenv("CHAMELAION_BASE_URL", str(server.make_url("/api")))
    config = BridgeConfig.from_env(tmp_path)
    remote = RemoteAPI(config.api_base, config.api_key, auth=config.api_auth)
    try:
        assert await remote.check_key() == "studio key"
    finally:
        await remote.close()
    expected = "k-123" if header == "x-api-key" else "Bearer k-123"
    assert seen[0][header] == expected


async def test_an_api_stricter_than_documented_still_gets_every_job_done(
    make_engine: EngineFactory, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    """Another implementation of the API may refuse our page size of 100 and want the key
    on its own result URLs: the bridge falls back to the documented default and sends it."""
    emulator.state.config.max_list_limit = 20
    emulator.state.config.reject_large_limit = True
    emulator.state.config.outputs_need_auth = True
    emulator.state.config.processing_seconds = 1.0
    engine = await make_engine()
    jobs = [await engine.submit(spec_for(sample_pair)) for _ in range(4)]
    for job in jobs:
        done = await wait_final(engine, job.id)
        assert done.state == State.COMPLETED, done.error
    assert emulator.state.stats.downloads == 4
    assert emulator.state.stats.calls["list"] >= 2  # the refused page, then default-sized ones
