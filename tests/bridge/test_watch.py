"""Watch folders with real watchdog events, real files, the real engine and the emulator."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bridge import media
from bridge import watch as watch_module
from bridge.emulator import EmulatorConfig, RunningEmulator, start_emulator
from bridge.store import Store
from bridge.watch import WatchFolder
from bridge.watch_pairing import is_ignored_name, scan
from tests.bridge.conftest import EngineFactory, fill_the_disk, free_the_disk
from tests.bridge.processes import start_watch_process
from tests.faults import faults_of
from tests.helpers import async_wait_until

WatchFactory = Callable[..., Awaitable[WatchFolder]]


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[RunningEmulator]:
    """A quick emulator that returns a stock clip: these tests are about files, not pixels."""
    running = await start_emulator(
        EmulatorConfig(
            queued_seconds=0.05,
            processing_seconds=0.1,
            storage_dir=tmp_path / "emu",
            process_media=False,
        )
    )
    yield running
    await running.close()


@pytest.fixture
async def make_watcher(make_engine: EngineFactory) -> AsyncIterator[WatchFactory]:
    """Start watchers (sharing one engine) with short settle times, closed after the test."""
    watchers: list[WatchFolder] = []
    engines = []

    async def factory(in_dir: Path, out_dir: Path, **options: object) -> WatchFolder:
        in_dir.mkdir(parents=True, exist_ok=True)
        if not engines:
            engines.append(await make_engine())
        settings = {"settle": 0.3, "give_up": 1.0, "rescan": 1.0, **options}
        watcher = WatchFolder(in_dir, out_dir, engines[0], engines[0].store, **settings)
        await watcher.start()
        watchers.append(watcher)
        return watcher

    yield factory
    for watcher in watchers:
        await watcher.close()


def drop(pair: tuple[Path, Path], folder: Path, stem: str) -> tuple[Path, Path]:
    """Copy a sample pair into a folder under a new stem, the way a pipeline would."""
    folder.mkdir(parents=True, exist_ok=True)
    video, audio = folder / f"{stem}.mp4", folder / f"{stem}.wav"
    shutil.copyfile(pair[0], video)
    shutil.copyfile(pair[1], audio)
    return video, audio


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


async def test_a_dropped_pair_becomes_one_result_with_its_record(
    tmp_path: Path,
    make_watcher: WatchFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
) -> None:
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    watcher = await make_watcher(in_dir, out_dir)
    drop(sample_pair, in_dir, "ep42")

    await async_wait_until(
        lambda: {"ep42.mp4", "ep42.wav"} <= names(in_dir / "done") and watcher.status()["done"],
        message="inputs in done/",
    )

    assert names(out_dir) == {"ep42.lipsync.mp4", "ep42.lipsync.json"}
    record = json.loads((out_dir / "ep42.lipsync.json").read_text())
    assert record["reference_id"].startswith("ep42-") and record["request_id"]
    assert record["inputs"]["video"] == str(in_dir / "ep42.mp4")
    assert record["timings"]["states"]["completed"]
    assert emulator.state.stats.generate_by_reference_id == {record["reference_id"]: 1}
    assert names(in_dir) == {"done"}
    assert watcher.status() | {"done": 1, "failed": 0, "online": True} == watcher.status()


def test_temporary_and_own_names_are_ignored() -> None:
    ignored = [
        ".ep1.mp4",
        "ep1.mp4~",
        "~ep1.wav",
        "ep1.mp4.part",
        "ep1.wav.tmp",
        "ep1.mp4.crdownload",
        "ep1.mp4.partial",
        "ep1.mp4.a1b2c3.partial",
        ".syncthing.ep1.mp4.tmp",
        "~syncthing~ep1.mp4.tmp",
        "ep1.mp4.rclonelink",
        "ep1.lipsync.mp4",
        "ep1.lipsync-2.mp4",
        "ep1.lipsync.json",
        "ep1.error.txt",
    ]
    assert [n for n in ignored if not is_ignored_name(n)] == []
    assert not is_ignored_name("ep1.mp4") and not is_ignored_name("ep1.json")


def test_pairing_by_stem_and_by_sub_folder(tmp_path: Path) -> None:
    for name in ("a.mp4", "a.wav", "b.mov", "c.flac", "c.json", "x.txt", "a.mp4.part"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "shot").mkdir()
    for name in ("take.mkv", "dub.m4a", "notes.txt"):
        (tmp_path / "shot" / name).write_bytes(b"x")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "z.mp4").write_bytes(b"x")

    pairs = scan(tmp_path)

    assert sorted(pairs) == ["a", "b", "c", "shot"]
    assert pairs["a"].missing() is None and pairs["a"].members == [
        tmp_path / "a.mp4",
        tmp_path / "a.wav",
    ]
    assert pairs["b"].missing() == "its audio" and pairs["c"].missing() == "its video"
    assert pairs["shot"].missing() is None and pairs["shot"].members == [tmp_path / "shot"]


async def test_many_pairs_dropped_at_once_give_one_result_and_one_submission_each(
    tmp_path: Path,
    make_watcher: WatchFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
) -> None:
    count = int(os.environ.get("WATCH_TEST_PAIRS", "200"))
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    staging = tmp_path / "staging"
    for i in range(count):
        drop(sample_pair, staging, f"ep{i:03d}")
    await make_watcher(in_dir, out_dir)
    for item in staging.iterdir():  # renames: the whole batch lands within milliseconds
        item.rename(in_dir / item.name)

    await async_wait_until(
        lambda: len(names(in_dir / "done")) == 2 * count, timeout=120, message="all pairs done"
    )

    results = sorted(p.name for p in out_dir.glob("*.lipsync.mp4"))
    assert results == [f"ep{i:03d}.lipsync.mp4" for i in range(count)]
    assert emulator.state.stats.requests_created == count
    assert set(emulator.state.stats.generate_by_reference_id.values()) == {1}


async def test_a_slow_writer_is_never_submitted_half_written(
    tmp_path: Path,
    make_watcher: WatchFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
) -> None:
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    watcher = await make_watcher(in_dir, out_dir)
    shutil.copyfile(sample_pair[1], in_dir / "slow.wav")
    data = sample_pair[0].read_bytes()
    chunk = max(1, len(data) // 20)
    with open(in_dir / "slow.mp4", "wb") as out:
        for start in range(0, len(data), chunk):
            out.write(data[start : start + chunk])
            out.flush()
            await asyncio.sleep(0.1)  # the writer's pace (shorter than the settle time)
            assert watcher.store.list_by_origin(watcher.origin) == []

    await async_wait_until(lambda: "slow.mp4" in names(in_dir / "done"), message="inputs filed")

    assert (out_dir / "slow.lipsync.mp4").exists()
    (job,) = watcher.store.list_by_origin(watcher.origin)
    assert job.state == "completed"
    assert (in_dir / "done" / "slow.mp4").read_bytes() == data
    assert emulator.state.stats.requests_created == 1


async def test_a_text_file_named_like_a_video_fails_with_a_reason(
    tmp_path: Path,
    make_watcher: WatchFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
) -> None:
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    await make_watcher(in_dir, out_dir)
    (in_dir / "fake.mp4").write_text("this is a shot list, not a video\n")
    shutil.copyfile(sample_pair[1], in_dir / "fake.wav")

    failed = in_dir / "failed"
    expected = {"fake.mp4", "fake.wav", "fake.error.txt", "fake.error.json"}
    # The error record is written first, then the inputs move: wait for the whole outcome.
    await async_wait_until(
        lambda: failed.is_dir() and names(failed) == expected, message="the pair in failed/"
    )
    text = (failed / "fake.error.txt").read_text()
    assert "fake.mp4" in text and "move them back" in text and text.count("\n") == 1
    assert json.loads((failed / "fake.error.json").read_text())["error"] in text
    assert names(out_dir) == set()
    assert emulator.state.stats.requests_created == 0


async def test_one_half_waits_for_the_other(
    tmp_path: Path,
    make_watcher: WatchFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.watch")
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    watcher = await make_watcher(in_dir, out_dir)
    shutil.copyfile(sample_pair[0], in_dir / "half.mp4")

    await async_wait_until(
        lambda: "half waiting for its audio" in caplog.text, message="the waiting log line"
    )
    assert watcher.status()["waiting"] == 1
    assert watcher.store.list_by_origin(watcher.origin) == []
    assert names(in_dir) == {"half.mp4"}

    shutil.copyfile(sample_pair[1], in_dir / "half.wav")
    await async_wait_until(lambda: (out_dir / "half.lipsync.mp4").exists(), message="result")
    assert caplog.text.count("half waiting for its audio") == 1


async def test_a_sidecar_with_urls_submits_by_url_with_its_options(
    tmp_path: Path,
    make_watcher: WatchFactory,
    emulator: RunningEmulator,
    sample_urls: tuple[str, str],
) -> None:
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    watcher = await make_watcher(in_dir, out_dir)
    sidecar = {
        "video_url": sample_urls[0],
        "audio_url": sample_urls[1],
        "reference_id": "remote-take-7",
        "disable_active_speaker_detection": True,
    }
    (in_dir / "remote.json").write_text(json.dumps(sidecar))

    await async_wait_until(lambda: "remote.json" in names(in_dir / "done"), message="filed")

    record = json.loads((out_dir / "remote.lipsync.json").read_text())
    assert record["reference_id"] == "remote-take-7"
    assert record["inputs"]["video"] == sidecar["video_url"]
    assert record["options"]["disable_active_speaker_detection"] is True
    assert emulator.state.stats.calls["generate"] == 1
    assert emulator.state.stats.calls["generate-with-media"] == 0
    assert names(in_dir / "done") == {"remote.json"}
    assert media.is_playable_video(out_dir / "remote.lipsync.mp4")
    assert watcher.status()["done"] == 1


async def test_results_inside_the_watch_folder_are_never_ingested(
    tmp_path: Path,
    make_watcher: WatchFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
) -> None:
    in_dir = tmp_path / "in"
    out_dir = in_dir / "results"
    watcher = await make_watcher(in_dir, out_dir)
    drop(sample_pair, in_dir, "first")
    await async_wait_until(lambda: (out_dir / "first.lipsync.json").exists(), message="first")
    (out_dir / "first.wav").write_bytes(sample_pair[1].read_bytes())  # a stray file in OUT

    drop(sample_pair, in_dir, "second")
    await async_wait_until(lambda: "second.wav" in names(in_dir / "done"), message="second")

    assert len(watcher.store.list_by_origin(watcher.origin)) == 2
    assert emulator.state.stats.requests_created == 2
    assert names(in_dir) == {"done", "results"}


async def test_a_pair_moved_back_from_failed_is_retried_and_numbered_results_never_overwrite(
    tmp_path: Path,
    make_watcher: WatchFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
) -> None:
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    await make_watcher(in_dir, out_dir)
    faults_of(emulator).fail_next(1, "no face found")
    drop(sample_pair, in_dir, "shot")
    failed = in_dir / "failed"
    await async_wait_until(
        lambda: {"shot.mp4", "shot.wav", "shot.error.txt"} <= names(failed), message="failure"
    )
    assert "no face found" in (failed / "shot.error.txt").read_text()

    for name in ("shot.mp4", "shot.wav"):
        (failed / name).rename(in_dir / name)
    await async_wait_until(lambda: "shot.wav" in names(in_dir / "done"), message="retry")

    drop(sample_pair, in_dir, "shot")
    await async_wait_until(lambda: len(names(in_dir / "done")) == 4, message="again")
    assert names(out_dir) >= {"shot.lipsync.mp4", "shot.lipsync-2.mp4"}
    assert names(in_dir / "done") == {"shot.mp4", "shot.wav", "shot-2.mp4", "shot-2.wav"}
    assert emulator.state.stats.requests_created == 3


@pytest.mark.parametrize("poll", [False, True], ids=["events", "polling"])
async def test_a_vanishing_folder_goes_offline_and_resumes_when_it_returns(
    poll: bool,
    tmp_path: Path,
    make_watcher: WatchFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    share = tmp_path / "share"
    in_dir, out_dir = share / "in", tmp_path / "out"
    in_dir.mkdir(parents=True)
    watcher = await make_watcher(in_dir, out_dir, rescan=0.2, poll=poll)
    await async_wait_until(lambda: watcher.status()["online"], message="online")
    assert watcher.status()["polling"] is poll

    share.rename(tmp_path / "unmounted")
    await async_wait_until(lambda: not watcher.status()["online"], message="offline")
    said = f"The watch folder {in_dir} cannot be read (No such file or directory); waiting"
    assert any(problem.startswith(said) for problem in watcher.problems.sentences())
    assert said in caplog.text

    (tmp_path / "unmounted").rename(share)
    await async_wait_until(lambda: watcher.status()["online"], message="back online")
    assert watcher.problems.sentences() == []
    drop(sample_pair, in_dir, "back")
    await async_wait_until(lambda: (out_dir / "back.lipsync.mp4").exists(), message="result")


async def test_a_watcher_killed_mid_batch_resumes_without_submitting_any_pair_twice(
    tmp_path: Path, sample_pair: tuple[Path, Path]
) -> None:
    emulator = await start_emulator(
        EmulatorConfig(
            queued_seconds=0.3,
            processing_seconds=0.6,
            storage_dir=tmp_path / "emu",
            process_media=False,
        )
    )
    in_dir, out_dir, data_dir = tmp_path / "in", tmp_path / "out", tmp_path / "data"
    count = 12
    for i in range(count):
        drop(sample_pair, in_dir, f"reel{i:02d}")
    stats = emulator.state.stats
    first = start_watch_process(in_dir, out_dir, data_dir, emulator.base_url)
    second = None
    try:
        await async_wait_until(
            lambda: stats.requests_created >= 3, timeout=60, message="the batch to be underway"
        )
        first.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait, 10)
        assert len(names(in_dir / "done")) < 2 * count, "the kill came too late to test a thing"

        # The restarted watcher polls, as it would on a network share.
        second = start_watch_process(in_dir, out_dir, data_dir, emulator.base_url, "--poll")
        await async_wait_until(
            lambda: len(names(in_dir / "done")) == 2 * count, timeout=90, message="all pairs"
        )
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                await asyncio.to_thread(proc.wait, 10)
        await emulator.close()

    assert stats.requests_created == count
    assert set(stats.generate_by_reference_id.values()) == {1}
    results = sorted(p.name for p in out_dir.glob("*.mp4"))
    assert results == [f"reel{i:02d}.lipsync.mp4" for i in range(count)]
    assert len(list(out_dir.glob("*.lipsync.json"))) == count
    store = Store(data_dir / "jobs.sqlite3")
    jobs = store.list_by_origin(f"watch:{in_dir}")
    store.close()
    assert [job.state for job in jobs] == ["completed"] * count


async def test_an_outcome_reached_while_the_folder_is_offline_is_filed_when_it_returns(
    tmp_path: Path,
    make_watcher: WatchFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
) -> None:
    emulator.state.config.queued_seconds = 1.0  # room to unmount the share mid-job
    share = tmp_path / "share"
    in_dir, out_dir = share / "in", tmp_path / "out"
    in_dir.mkdir(parents=True)
    watcher = await make_watcher(in_dir, out_dir, rescan=0.2)
    drop(sample_pair, in_dir, "late")
    await async_wait_until(
        lambda: [
            job
            for job in watcher.store.list_by_origin(watcher.origin)
            if job.state in ("submitted", "processing")
        ],
        message="the upload to be done",
    )

    share.rename(tmp_path / "unmounted")
    await async_wait_until(lambda: (out_dir / "late.lipsync.mp4").exists(), message="result")
    await async_wait_until(lambda: not watcher.status()["online"], message="offline")
    assert watcher.status()["done"] == 0

    (tmp_path / "unmounted").rename(share)
    await async_wait_until(lambda: watcher.status()["done"] == 1, message="filed")
    assert names(in_dir / "done") == {"late.mp4", "late.wav"}
    assert (out_dir / "late.lipsync.json").exists()
    assert emulator.state.stats.requests_created == 1


async def test_an_unreadable_sidecar_fails_its_pair_and_the_fixed_one_is_picked_up(
    tmp_path: Path,
    make_watcher: WatchFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
) -> None:
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    watcher = await make_watcher(in_dir, out_dir)
    drop(sample_pair, in_dir, "shot")
    (in_dir / "shot.json").write_text('{"reference_id": "take-1",')
    failed = in_dir / "failed"
    expected = {"shot.mp4", "shot.wav", "shot.json", "shot.error.txt", "shot.error.json"}
    await async_wait_until(lambda: names(failed) == expected, message="the pair in failed/")
    assert "The sidecar shot.json is not valid JSON" in (failed / "shot.error.txt").read_text()
    assert watcher.store.list_by_origin(watcher.origin) == []
    assert emulator.state.stats.calls == {}

    # The user fixes the sidecar and moves the pair back: no restart needed.
    (failed / "shot.json").write_text('{"reference_id": "take-1"}')
    for name in ("shot.mp4", "shot.wav", "shot.json"):
        (failed / name).rename(in_dir / name)
    await async_wait_until(lambda: "shot.json" in names(in_dir / "done"), message="filed")
    assert json.loads((out_dir / "shot.lipsync.json").read_text())["reference_id"] == "take-1"
    assert emulator.state.stats.generate_by_reference_id == {"take-1": 1}


@pytest.mark.parametrize(
    ("video_url", "expected"),
    [
        ("http://[::1", "The video URL 'http://[::1' is malformed"),
        ("http://", "The video URL 'http://' names no host"),
        ("ftp://example.com/clip.mp4", "uses ftp://, which the API cannot fetch"),
    ],
)
async def test_a_sidecar_with_a_bad_url_fails_and_the_fixed_one_is_picked_up(
    tmp_path: Path,
    make_watcher: WatchFactory,
    emulator: RunningEmulator,
    sample_urls: tuple[str, str],
    video_url: str,
    expected: str,
) -> None:
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    watcher = await make_watcher(in_dir, out_dir)
    sidecar = {"video_url": video_url, "audio_url": sample_urls[1]}
    (in_dir / "remote.json").write_text(json.dumps(sidecar))
    failed = in_dir / "failed"
    await async_wait_until(
        lambda: names(failed) == {"remote.json", "remote.error.txt", "remote.error.json"},
        message="the sidecar in failed/",
    )
    assert expected in (failed / "remote.error.txt").read_text()
    assert watcher.store.list_by_origin(watcher.origin) == []
    assert emulator.state.stats.calls == {}

    (failed / "remote.json").write_text(json.dumps({**sidecar, "video_url": sample_urls[0]}))
    (failed / "remote.json").rename(in_dir / "remote.json")
    await async_wait_until(lambda: "remote.json" in names(in_dir / "done"), message="filed")
    assert media.is_playable_video(out_dir / "remote.lipsync.mp4")
    assert emulator.state.stats.requests_created == 1


async def test_a_sidecar_rewritten_while_its_pair_waits_is_the_one_used(
    tmp_path: Path,
    make_watcher: WatchFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.watch")
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    await make_watcher(in_dir, out_dir)
    shutil.copyfile(sample_pair[0], in_dir / "half.mp4")
    (in_dir / "half.json").write_text('{"reference_id": ')
    await async_wait_until(
        lambda: "half waiting for its audio" in caplog.text, message="the waiting log line"
    )

    (in_dir / "half.json").write_text('{"reference_id": "half-take"}')
    shutil.copyfile(sample_pair[1], in_dir / "half.wav")
    await async_wait_until(lambda: "half.json" in names(in_dir / "done"), message="filed")
    assert json.loads((out_dir / "half.lipsync.json").read_text())["reference_id"] == "half-take"
    assert names(in_dir) == {"done"}


def test_a_link_leading_out_of_the_watch_folder_is_noted_and_one_inside_is_not(
    tmp_path: Path,
) -> None:
    in_dir, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    (in_dir / "library").mkdir(parents=True)
    elsewhere.mkdir()
    for folder in (in_dir / "library", elsewhere):
        (folder / "real.mp4").write_bytes(b"x")
    (in_dir / "inside.mp4").symlink_to(in_dir / "library" / "real.mp4")
    (in_dir / "outside.mp4").symlink_to(elsewhere / "real.mp4")
    (in_dir / "linked").symlink_to(elsewhere, target_is_directory=True)

    pairs = scan(in_dir)

    assert pairs["inside"].problem() is None
    assert "outside.mp4 leads through a symbolic link to" in (pairs["outside"].problem() or "")
    assert "linked/real.mp4 leads through a symbolic link" in (pairs["linked"].problem() or "")
    assert all(pair.problem() is None for pair in scan(in_dir, follow_symlinks=True).values())


async def test_an_input_linking_out_of_the_watch_folder_goes_to_failed_untouched(
    tmp_path: Path,
    make_watcher: WatchFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
) -> None:
    in_dir, out_dir, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    secret_video, _ = drop(sample_pair, elsewhere, "private")
    before = secret_video.read_bytes()
    await make_watcher(in_dir, out_dir)
    (in_dir / "ep1.mp4").symlink_to(secret_video)
    shutil.copyfile(sample_pair[1], in_dir / "ep1.wav")
    (in_dir / "ep2").symlink_to(elsewhere, target_is_directory=True)

    failed = in_dir / "failed"
    expected = {"ep1.mp4", "ep1.wav", "ep1.error.txt", "ep1.error.json", "ep2", "ep2.error.txt"}
    await async_wait_until(lambda: expected <= names(failed), message="both in failed/")

    reason = (failed / "ep1.error.txt").read_text()
    assert f"ep1.mp4 leads through a symbolic link to {secret_video}, outside" in reason
    assert "--follow-symlinks" in reason and reason.count("\n") == 1
    assert "ep2/private.mp4 leads through a symbolic link" in (failed / "ep2.error.txt").read_text()
    assert (failed / "ep1.mp4").is_symlink() and (failed / "ep2").is_symlink()
    assert secret_video.read_bytes() == before and names(elsewhere) == {
        "private.mp4",
        "private.wav",
    }
    assert names(in_dir) == {"failed"} and names(out_dir) == set()
    assert emulator.state.stats.requests_created == 0


async def test_follow_symlinks_accepts_inputs_linking_out_of_the_watch_folder(
    tmp_path: Path, emulator: RunningEmulator, sample_pair: tuple[Path, Path]
) -> None:
    in_dir, out_dir, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    video, audio = drop(sample_pair, elsewhere, "shared")
    in_dir.mkdir()
    (in_dir / "ep3.mp4").symlink_to(video)
    (in_dir / "ep3.wav").symlink_to(audio)
    process = start_watch_process(
        in_dir, out_dir, tmp_path / "data", emulator.base_url, "--follow-symlinks"
    )
    try:
        await async_wait_until(
            lambda: (out_dir / "ep3.lipsync.json").exists(), timeout=60, message="the result"
        )
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 10)
    assert names(in_dir / "done") == {"ep3.mp4", "ep3.wav"}
    assert names(elsewhere) == {"shared.mp4", "shared.wav"}
    assert emulator.state.stats.requests_created == 1


async def test_the_watch_loop_outlives_an_unexpected_error_and_says_so(
    tmp_path: Path,
    make_watcher: WatchFactory,
    emulator: RunningEmulator,
    sample_pair: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failures = {"left": 3}

    def flaky_scan(*args, **kwargs):  # type: ignore[no-untyped-def]
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("a bug in a scan")
        return scan(*args, **kwargs)

    monkeypatch.setattr(watch_module, "scan", flaky_scan)
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    watcher = await make_watcher(in_dir, out_dir, rescan=0.2)
    await async_wait_until(
        lambda: any("failed (RuntimeError)" in p for p in watcher.problems.sentences()),
        message="the failure in health",
    )

    drop(sample_pair, in_dir, "after")
    await async_wait_until(lambda: (out_dir / "after.lipsync.mp4").exists(), message="result")
    assert failures["left"] == 0 and watcher.problems.sentences() == []


async def test_a_failed_folder_that_is_a_link_receives_nothing(
    tmp_path: Path, make_watcher: WatchFactory, emulator: RunningEmulator
) -> None:
    in_dir, out_dir, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "projects"
    in_dir.mkdir()
    elsewhere.mkdir()
    (in_dir / "failed").symlink_to(elsewhere, target_is_directory=True)
    (in_dir / "bad.mp4").write_text("not a video")
    (in_dir / "bad.wav").write_text("not audio")
    watcher = await make_watcher(in_dir, out_dir)

    await async_wait_until(
        lambda: any("is a symbolic link" in p for p in watcher.problems.sentences()),
        message="the refusal in health",
    )
    assert names(elsewhere) == set()
    assert {"bad.mp4", "bad.wav"} <= names(in_dir)


@pytest.mark.usefixtures("emulator")
async def test_a_pair_dropped_while_the_data_disk_is_full_is_submitted_once_there_is_room(
    make_watcher: WatchFactory, sample_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    watcher = await make_watcher(tmp_path / "in", out_dir, rescan=0.2)
    fill_the_disk(watcher.store)
    drop(sample_pair, watcher.in_dir, "roomless")
    await async_wait_until(
        lambda: any("is full" in p for p in watcher.problems.sentences()),
        message="the full disk in health",
    )
    assert not any("Filing an outcome" in p for p in watcher.problems.sentences())

    free_the_disk(watcher.store)
    await async_wait_until(
        lambda: (out_dir / "roomless.lipsync.mp4").exists(), message="the result"
    )
    assert len(await watcher.steps.list_by_origin(watcher.origin)) == 1
