"""Preparing a job's inputs for upload, once per job: converted or cut copies in its work folder.

Converting a large MOV (ProRes, MJPEG) can take minutes, so the result is kept, with a
manifest, across retries and restarts of the bridge. It is reused only while the inputs are
unchanged (size and mtime) and were cut to the same ranges: an input edited after it was
checked is checked again before anything is paid for, and another range is another cut.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bridge import media
from bridge.discovery import write_atomic

MANIFEST = "prepared.json"
Signature = tuple[str, int, int]  # (path, size, mtime_ns)
Range = tuple[float, float] | None  # (start_seconds, duration_seconds) of a cut, or all of it


def signature(path: Path) -> Signature:
    info = os.stat(path)
    return (str(path), info.st_size, info.st_mtime_ns)


def _current(paths: tuple[Signature, ...]) -> bool:
    """Whether every file still has the size and mtime it had when it was looked at."""
    try:
        return all(signature(Path(sig[0])) == sig for sig in paths)
    except OSError:
        return False


@dataclass(frozen=True)
class Checked:
    """The submit-time check of both inputs, with the files' signatures at that moment."""

    sources: tuple[Signature, Signature]
    video: media.MediaInfo
    audio: media.MediaInfo

    def still_valid(self) -> bool:
        return _current(self.sources)


def check(video: Path, audio: Path) -> Checked:
    """Check both inputs (a few packets each); the signatures are taken first, so an edit
    made during the check shows as a change later."""
    try:
        sources = (signature(video), signature(audio))
    except OSError:
        media.check_inputs(video, audio)  # says in a sentence what is wrong with which file
        raise
    video_info, audio_info = media.check_inputs(video, audio)
    return Checked(sources, video_info, audio_info)


@dataclass(frozen=True)
class Prepared:
    """The files to upload and the inputs they were made from."""

    video: Path
    audio: Path
    sources: tuple[Signature, Signature]
    ranges: tuple[Range, Range] = (None, None)

    def still_valid(self) -> bool:
        """The inputs are unchanged and the prepared files are still there."""
        return self.video.is_file() and self.audio.is_file() and _current(self.sources)


def _range(value: list[float] | None) -> Range:
    return None if value is None else (float(value[0]), float(value[1]))


def load(workdir: Path, video_range: Range = None, audio_range: Range = None) -> Prepared | None:
    """What an earlier run prepared for this job, if it can still be used as it is: the
    inputs unchanged and cut to these very ranges."""
    try:
        data = json.loads((workdir / MANIFEST).read_text(encoding="utf-8"))
        ranges = data.get("ranges", [None, None])
        prepared = Prepared(
            Path(data["video"]),
            Path(data["audio"]),
            (tuple(data["sources"][0]), tuple(data["sources"][1])),  # type: ignore[arg-type]
            (_range(ranges[0]), _range(ranges[1])),
        )
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    if prepared.ranges != (video_range, audio_range):
        return None
    return prepared if prepared.still_valid() else None


def prepare(
    video: Path,
    audio: Path,
    workdir: Path,
    video_range: Range,
    checked: Checked | None,
    progress: Callable[[float], None] | None = None,
    audio_range: Range = None,
) -> Prepared:
    """Check (unless `checked` still holds), convert or cut what the API cannot take as it
    is, and record the outcome in the work folder. Blocking: run it in a thread."""
    if checked is None or not checked.still_valid():
        checked = check(video, audio)
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    prepared = Prepared(
        media.prepare_video(video, workdir, video_range, checked.video, progress),
        media.prepare_audio(audio, workdir, checked.audio, audio_range),
        checked.sources,
        (video_range, audio_range),
    )
    manifest = {
        "video": str(prepared.video),
        "audio": str(prepared.audio),
        "sources": [list(sig) for sig in prepared.sources],
        "ranges": [list(r) if r is not None else None for r in prepared.ranges],
    }
    write_atomic(workdir / MANIFEST, json.dumps(manifest), mode=0o600)
    return prepared
