"""A bad network day and a bad disk day: transient faults only delay jobs, nothing else fails
them, loops never die, and a request the API forgot is failed with a sentence, not hung."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from bridge import media, preparing, remote
from bridge.emulator import RunningEmulator
from bridge.jobs import Job, JobSpec, State
from bridge.store import Store
from tests.bridge.conftest import EngineFactory, wait_final
from tests.faults import faults_of
from tests.helpers import async_wait_until
from tests.media_samples import make_test_video


def spec_for(video: Path, audio: Path, **options: object) -> JobSpec:
    return JobSpec(video_path=str(video), audio_path=str(audio), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("endpoint", "kind"),
    [
        ("list", "drop"),  # the "did the API already take it?" lookup, then polling
        ("list", "502-html"),
        ("retrieve", "500"),  # polling one request and fetching a fresh result link
        ("retrieve", "429"),
        ("output", "drop-midway"),  # the download itself
        ("output", "500"),
    ],
)
async def test_every_api_call_outlasts_a_run_of_transient_faults(
    endpoint: str,
    kind: str,
    make_engine: EngineFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
) -> None:
    # The generate answer is lost, so the bridge must look the reference_id up before
    # anything else; then twelve faults in a row at the endpoint under test (more than any
    # attempt cap the bridge ever had).
    faults_of(emulator).add("generate-with-media", "drop-after-accept", count=1)
    faults_of(emulator).add(endpoint, kind, count=12, retry_after=0.05)
    engine = await make_engine()
    job = await engine.submit(spec_for(*sample_pair, reference_id=f"shot-{endpoint}-{kind}"))

    done = await wait_final(engine, job.id, timeout=60)

    assert done.state == State.COMPLETED, done.error
    assert faults_of(emulator).fired[kind] == 12
    assert emulator.state.stats.generate_by_reference_id == {f"shot-{endpoint}-{kind}": 1}
    assert media.is_playable_video(Path(done.output_path))
    assert done.note is None and engine.problems.sentences() == []


async def test_a_waiting_job_says_why_and_since_when(
    make_engine: EngineFactory, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    rule = faults_of(emulator).add("generate-with-media", "502-html", count=-1)
    engine = await make_engine()
    job = await engine.submit(spec_for(*sample_pair))

    def noted() -> Job | None:
        current = engine.store.get(job.id)
        return current if current.note else None

    waiting = await async_wait_until(noted, message="a note on the waiting job")
    assert waiting.state == State.UPLOADING and waiting.error is None
    assert waiting.note.startswith("Waiting to submit the job: The Chamelaion API had a server")
    assert "HTML error page" in waiting.note and "Waiting since " in waiting.note
    assert any("HTML error page" in p for p in engine.problems.sentences())

    faults_of(emulator).rules.remove(rule)
    done = await wait_final(engine, job.id)
    assert done.state == State.COMPLETED and done.note is None
    assert engine.problems.sentences() == []


async def test_a_request_the_api_forgot_fails_with_a_sentence_and_retry_sends_it_again(
    make_engine: EngineFactory, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    emulator.state.config.processing_seconds = 30.0
    engine = await make_engine(forget_after=1.0)
    job = await engine.submit(spec_for(*sample_pair, reference_id="scene-4"))
    await async_wait_until(
        lambda: engine.store.get(job.id).state == State.PROCESSING, message="processing"
    )

    await emulator.state.reset()  # the API restarted and lost its state
    emulator.state.config.processing_seconds = 0.2
    failed = await wait_final(engine, job.id, timeout=30)

    assert failed.state == State.FAILED
    assert failed.error.startswith(
        f"The Chamelaion API no longer knows request {failed.request_id} (it has answered"
    )
    assert "retry the job to send it again as a new request, which is charged again" in failed.error
    await engine.retry(job.id)
    done = await wait_final(engine, job.id)
    assert done.state == State.COMPLETED, done.error
    assert done.reference_id == "scene-4-r2" and done.previous_reference_ids == ["scene-4"]
    assert emulator.state.stats.generate_by_reference_id == {"scene-4-r2": 1}


class FillableStore(Store):
    """A store on a disk that can fill up: while `full`, every write fails as SQLite fails on
    a full disk ("database or disk is full", SQLITE_FULL); reads still work."""

    full = False

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self.full:
            with self._sqlite():
                error = sqlite3.OperationalError("database or disk is full")
                error.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
                raise error
        with super()._transaction() as db:
            yield db


async def test_a_full_data_disk_stalls_jobs_and_they_finish_once_space_is_back(
    make_engine: EngineFactory, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    emulator.state.config.processing_seconds = 1.0
    engine = await make_engine(store_class=FillableStore)
    store = engine.store
    assert isinstance(store, FillableStore)
    jobs = [await engine.submit(spec_for(*sample_pair)) for _ in range(3)]
    await async_wait_until(
        lambda: all(store.get(j.id).state == State.PROCESSING for j in jobs), message="running"
    )

    store.full = True
    # The remote requests complete meanwhile; recording that fails, again and again.
    await async_wait_until(
        lambda: any("database or disk is full" in p for p in engine.problems.sentences()),
        timeout=30,
        message="the full disk in health",
    )
    assert all(store.get(j.id).state == State.PROCESSING for j in jobs)
    assert not engine._poller.done()  # noqa: SLF001 - the poller must have lived through it
    # Each job says why it waits, although its record cannot take the note.
    for job in jobs:
        note = await async_wait_until(
            lambda job=job: engine.view(store.get(job.id))["note"], message="a note"
        )
        assert note.startswith("Waiting to record what the Chamelaion API says: The bridge ")
        assert "database or disk is full" in note

    store.full = False  # space freed: no restart, no retry
    for job in jobs:
        done = await wait_final(engine, job.id, timeout=60)
        assert done.state == State.COMPLETED, done.error
    assert emulator.state.stats.requests_created == 3
    await async_wait_until(lambda: engine.problems.sentences() == [], message="problems gone")


async def test_one_damaged_job_record_hides_no_other_job(
    make_engine: EngineFactory, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    engine = await make_engine()
    good = await engine.submit(spec_for(*sample_pair, reference_id="good-1"))
    bad = await engine.submit(spec_for(*sample_pair, reference_id="bad-1"))
    await wait_final(engine, good.id)
    await wait_final(engine, bad.id)
    with sqlite3.connect(engine.store.path) as db:
        db.execute('UPDATE jobs SET data = \'{"state": "teleporting"\' WHERE id = ?', (bad.id,))

    jobs, damaged = engine.store.listing()

    assert [job.reference_id for job in jobs] == ["good-1"]
    assert [d.reference_id for d in damaged] == ["bad-1"]
    assert "cannot be read" in damaged[0].error and "other jobs are unaffected" in damaged[0].error


async def test_a_conversion_shows_progress_and_happens_once_across_retries_and_restarts(
    make_engine: EngineFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mov = make_test_video(tmp_path / "take.mov", 200, container="mov")
    conversions: list[Path] = []
    real_prepare = media.prepare_video

    def counting_prepare(path: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        conversions.append(path)
        return real_prepare(path, *args, **kwargs)

    monkeypatch.setattr(media, "prepare_video", counting_prepare)
    notes: list[str] = []
    faults_of(emulator).add("generate-with-media", "500", count=2)
    stuck = faults_of(emulator).add("generate-with-media", "429", count=-1, retry_after=0.05)
    first = await make_engine()
    first.store.subscribe(lambda job: job.note and notes.append(job.note))
    job = await first.submit(spec_for(mov, sample_pair[1]))
    await async_wait_until(lambda: faults_of(emulator).fired["429"] >= 2, message="429s")
    await first.close()  # the bridge stops while the upload keeps being refused

    faults_of(emulator).rules.remove(stuck)
    second = await make_engine()
    done = await wait_final(second, job.id)

    assert done.state == State.COMPLETED, done.error
    assert conversions == [mov]  # once, across two failed uploads and a restart
    assert any(n.startswith("Preparing the video for upload: converting,") for n in notes)
    assert any("% done" in n for n in notes)
    assert emulator.state.stats.requests_created == 1


async def test_an_input_changed_after_it_was_prepared_is_prepared_again_before_paying(
    make_engine: EngineFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    mov = make_test_video(tmp_path / "take.mov", 50, container="mov")
    stuck = faults_of(emulator).add("generate-with-media", "429", count=-1, retry_after=0.05)
    engine = await make_engine()
    job = await engine.submit(spec_for(mov, sample_pair[1]))
    manifest = engine.config.work_dir / job.id / preparing.MANIFEST
    await async_wait_until(manifest.exists, message="the prepared upload")
    await async_wait_until(lambda: faults_of(emulator).fired["429"], message="a refused try")

    make_test_video(mov, 75, container="mov")  # the editor re-exports the take
    faults_of(emulator).rules.remove(stuck)
    done = await wait_final(engine, job.id)

    assert done.state == State.COMPLETED, done.error
    assert media.probe(Path(done.output_path)).frames == 75


async def test_links_planted_at_the_result_names_are_never_followed(
    make_engine: EngineFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious")
    for name in ("shot-9.mp4", "shot-9-2.mp4"):
        (out / name).symlink_to(victim)
    engine = await make_engine()
    job = await engine.submit(spec_for(*sample_pair, reference_id="shot-9", output_dir=str(out)))

    done = await wait_final(engine, job.id)

    assert done.state == State.COMPLETED, done.error
    assert victim.read_text() == "precious"
    assert done.output_path == str(out / "shot-9-3.mp4")
    assert sorted(p.name for p in out.iterdir()) == ["shot-9-2.mp4", "shot-9-3.mp4", "shot-9.mp4"]
    assert all((out / n).is_symlink() for n in ("shot-9.mp4", "shot-9-2.mp4"))


async def test_an_expired_result_link_is_replaced_by_a_fresh_one(
    make_engine: EngineFactory, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    faults_of(emulator).add("output", "404", count=2)
    engine = await make_engine()
    job = await engine.submit(spec_for(*sample_pair))

    done = await wait_final(engine, job.id)

    assert done.state == State.COMPLETED, done.error
    assert faults_of(emulator).fired["404"] == 2
    assert emulator.state.stats.calls["retrieve"] >= 2  # a fresh link asked for each time
    assert emulator.state.stats.requests_created == 1


async def test_a_result_that_stays_unplayable_fails_with_a_sentence_and_costs_nothing_to_retry(
    make_engine: EngineFactory, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    held = faults_of(emulator).add("output", "500", count=-1)
    engine = await make_engine()
    job = await engine.submit(spec_for(*sample_pair, reference_id="garbled"))
    await async_wait_until(
        lambda: engine.store.get(job.id).state == State.DOWNLOADING, message="downloading"
    )
    made = emulator.state.requests[engine.store.get(job.id).request_id].output_path
    good = made.read_bytes()
    made.write_bytes(b"\0" * len(good))  # the storage serves a damaged file
    faults_of(emulator).rules.remove(held)

    failed = await wait_final(engine, job.id)

    assert failed.state == State.FAILED
    assert failed.error.startswith(
        "The result could not be downloaded (the file that arrives is not a playable video, "
        "4 times from fresh links); retry the job later to download it again (no new charge)"
    )
    assert [p.name for p in engine.config.output_dir.iterdir()] == []
    made.write_bytes(good)
    await engine.retry(job.id)
    done = await wait_final(engine, job.id)
    assert done.state == State.COMPLETED, done.error
    assert emulator.state.stats.generate_by_reference_id == {"garbled": 1}


async def test_a_gateway_timeout_while_the_api_takes_the_upload_later_is_never_paid_twice(
    make_engine: EngineFactory, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    # A proxy answers 504 at once; the API behind it takes the upload 1.5 s later.
    faults_of(emulator).add("generate-with-media", "accept-late", delay=1.5)
    engine = await make_engine(accept_grace=10.0)
    job = await engine.submit(spec_for(*sample_pair, reference_id="late-take"))

    def waiting() -> str | None:
        return engine.store.get(job.id).note

    note = await async_wait_until(
        lambda: (waiting() or "").find("has not shown yet") >= 0 and waiting(),
        message="the wait for the late request",
    )
    assert "it is sent again only if the API still does not know it at" in note
    done = await wait_final(engine, job.id)

    assert done.state == State.COMPLETED, done.error
    assert emulator.state.stats.generate_by_reference_id == {"late-take": 1}
    assert emulator.state.stats.calls["generate-with-media"] == 1


async def test_an_older_request_under_the_same_reference_id_is_never_adopted(
    make_engine: EngineFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """The API accepts duplicate reference_ids: one made elsewhere (another machine, a data
    folder since deleted) is someone else's video, not this job's."""
    elsewhere = await make_engine(data_dir=tmp_path / "other-machine")
    first = await elsewhere.submit(spec_for(*sample_pair, reference_id="shot010"))
    old = await wait_final(elsewhere, first.id)
    emulator.state.requests[old.request_id].created_at -= timedelta(hours=1)  # made last hour
    other_clip = make_test_video(tmp_path / "other.mp4", 30, size=(128, 96))
    faults_of(emulator).add("generate-with-media", "500", count=1)  # makes the job look it up
    engine = await make_engine(data_dir=tmp_path / "here")
    job = await engine.submit(spec_for(other_clip, sample_pair[1], reference_id="shot010"))

    done = await wait_final(engine, job.id)

    assert done.state == State.COMPLETED, done.error
    assert done.request_id != old.request_id
    assert media.probe(Path(done.output_path)).width == 128


async def test_a_bug_in_the_remote_wrapper_reaches_the_log_with_its_traceback(
    make_engine: EngineFactory,
    sample_pair: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_audio_type(path: Path) -> str:  # a programming error inside bridge.remote
        return path.suffix + 1  # type: ignore[operator, no-any-return]

    monkeypatch.setattr(remote, "_audio_type", broken_audio_type)
    caplog.set_level(logging.INFO)  # what bridge.log (a handler on the root logger) gets
    engine = await make_engine()
    job = await engine.submit(spec_for(*sample_pair, reference_id="bug"))
    failed = await wait_final(engine, job.id)

    assert failed.state == State.FAILED
    assert failed.error == (
        "Unexpected error talking to the Chamelaion API (TypeError); details are in bridge.log."
    )
    (logged,) = [r for r in caplog.records if r.exc_info and r.exc_info[0] is TypeError]
    assert logged.levelno == logging.ERROR
    assert "Traceback (most recent call last)" in caplog.text
    assert "in broken_audio_type" in caplog.text and "return path.suffix + 1" in caplog.text
