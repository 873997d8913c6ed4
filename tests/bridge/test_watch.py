"""Watch folders with real watchdog events, real files, the real engine and the emulator."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bridge.emulator import RunningEmulator
from bridge.watch import WatchFolder
from bridge.watch_pairing import is_ignored_name, scan
from tests.bridge.conftest import EngineFactory
from tests.helpers import async_wait_until

WatchFactory = Callable[..., Awaitable[WatchFolder]]


@pytest.fixture
async def make_watcher(make_engine: EngineFactory) -> AsyncIterator[WatchFactory]:
    """Start watchers (sharing one engine) with short settle times, closed after the test."""
    watchers: list[WatchFolder] = []
    engines = []

    async def factory(in_dir: Path, out_dir: Path, **options: object) -> WatchFolder:
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
    in_dir.mkdir()
    watcher = await make_watcher(in_dir, out_dir)
    drop(sample_pair, in_dir, "ep42")

    await async_wait_until(
        lambda: {"ep42.mp4", "ep42.wav"} <= names(in_dir / "done"), message="inputs in done/"
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
