"""bridge.conform_output: OUT is written whole or not at all, and a disk or adapter that
refuses it is one sentence (exit 4) that leaves an earlier OUT as it was."""

from __future__ import annotations

import builtins
import errno
from fractions import Fraction
from pathlib import Path
from typing import Any

import opentimelineio as otio
import pytest

from bridge import conform_output
from bridge.conform_output import Missing, OutputError, check_writable, write_output
from bridge.timeline import Plan, read_plan
from tests.timelines import Cut, CutClip, make_dub, make_source, write_timeline


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    folder = tmp_path_factory.mktemp("cut")
    source = make_source(folder / "a.mp4", 12, Fraction(25))
    cut = Cut("short", Fraction(25), (CutClip(source, 0, 5), CutClip(source, 6, 4)))
    path = write_timeline(cut.timeline(), folder / "short.otio")
    return read_plan(path, make_dub(folder / "dub.wav", 1))


def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file the module opens for writing is /dev/full: its writes come up short."""

    def opened(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        return builtins.open("/dev/full" if "w" in mode else file, mode, *args, **kwargs)

    monkeypatch.setattr(conform_output, "open", opened, raising=False)


def test_a_full_disk_is_one_sentence_and_the_earlier_out_stays(
    plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "cut.lipsync.otio"
    write_output(plan, {1: Missing("first run", "id-1")}, out)
    earlier = out.read_bytes()
    full_disk(monkeypatch)

    with pytest.raises(OutputError) as caught:
        write_output(plan, {}, out)

    assert str(caught.value) == (
        f"The disk holding {tmp_path} is full, so {out.name} was not written; free space and "
        "run the same command again."
    )
    assert out.read_bytes() == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_a_failed_flush_to_the_disk_writes_nothing(
    plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(conform_output.os, "fsync", fsync)
    out = tmp_path / "cut.xml"
    with pytest.raises(OutputError, match="is full, so cut.xml was not written"):
        write_output(plan, {}, out)
    assert list(tmp_path.iterdir()) == []


def test_what_is_written_reads_back_whole(plan: Plan, tmp_path: Path) -> None:
    out = write_output(plan, {}, tmp_path / "cut.lipsync.otio")
    timeline = otio.adapters.read_from_file(str(out))
    names = [track.name for track in timeline.tracks]
    assert names == ["V1", conform_output.TRACK_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_a_read_only_folder_is_refused_before_anything_is_paid(
    plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a read-only mount even removing a file that was never made fails (EROFS)."""

    def read_only(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(conform_output, "open", read_only, raising=False)
    monkeypatch.setattr(Path, "unlink", read_only)
    out = tmp_path / "cut.otio"
    with pytest.raises(OutputError) as caught:
        check_writable(plan, out)
    assert str(caught.value) == (
        f"{out} cannot be written (Read-only file system); choose another --out or make its "
        "folder writable, and run the same command again."
    )
