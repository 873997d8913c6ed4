"""What a watch folder holds: which names count, which files form a pair, and their options.

Pure filesystem reading, no asyncio and no job store, so the rules that decide what is
submitted can be tested (and reasoned about) on their own.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.errors import InputError
from bridge.jobs import check_options

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".m4v"})
AUDIO_SUFFIXES = frozenset({".wav", ".mp3", ".flac", ".m4a"})
SIDECAR_SUFFIX = ".json"
DONE_DIR = "done"
FAILED_DIR = "failed"
RESULT_SUFFIX = ".lipsync.mp4"
SIDECAR_OPTIONS = frozenset(
    {"reference_id", "disable_active_speaker_detection", "model", "video_url", "audio_url"}
)

# Names that belong to a copy in progress (browsers, Syncthing, rclone, editors) or to us.
_TEMP_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial", ".download", ".!sync")
_OWN_OUTPUT = re.compile(r"\.(lipsync(-\d+)?\.(mp4|json)|error\.(txt|json))$", re.IGNORECASE)


def is_ignored_name(name: str) -> bool:
    """True for hidden, temporary and partial names, and for the watcher's own outputs."""
    lower = name.lower()
    return (
        lower.startswith((".", "~"))
        or lower.endswith("~")
        or lower.endswith(_TEMP_SUFFIXES)
        or ".rclone" in lower
        or lower.startswith("~syncthing~")
        or bool(_OWN_OUTPUT.search(lower))
    )


def kind_of(name: str) -> str | None:
    suffix = os.path.splitext(name)[1].lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in AUDIO_SUFFIXES:
        return "audio"
    if suffix == SIDECAR_SUFFIX:
        return "sidecar"
    return None


FileSig = tuple[str, int, int]  # (path, size, mtime_ns)


@dataclass
class Pair:
    """The files found under one stem: top-level `<stem>.*` files or a sub-folder `<stem>/`."""

    stem: str
    folder: Path | None = None
    videos: list[Path] = field(default_factory=list)
    audios: list[Path] = field(default_factory=list)
    sidecars: list[Path] = field(default_factory=list)
    signature: list[FileSig] = field(default_factory=list)
    mixed: bool = False  # both a sub-folder and top-level files use this stem
    outside: list[tuple[Path, str]] = field(default_factory=list)  # (member, real target)

    @property
    def members(self) -> list[Path]:
        """What moves to done/ or failed/: the sub-folder, or the top-level files."""
        if self.folder is not None and not self.mixed:
            return [self.folder]
        return [*self.videos, *self.audios, *self.sidecars]

    @property
    def video(self) -> Path | None:
        return self.videos[0] if len(self.videos) == 1 else None

    @property
    def audio(self) -> Path | None:
        return self.audios[0] if len(self.audios) == 1 else None

    @property
    def sidecar(self) -> Path | None:
        return self.sidecars[0] if len(self.sidecars) == 1 else None

    def problem(self) -> str | None:
        """A reason this stem can never become a job as it stands (the user must act)."""
        where = f"the folder {self.stem}/" if self.folder and not self.mixed else self.stem
        if self.mixed:
            return (
                f"Both a sub-folder {self.stem}/ and files named {self.stem}.* are in the watch "
                "folder; keep only one of them."
            )
        if self.outside:
            path, target = min(self.outside)
            name = f"{self.stem}/{path.name}" if path.parent == self.folder else path.name
            return (
                f"{name} leads through a symbolic link to {target}, outside the watch folder; "
                "copy the file in instead, or start the watcher with --follow-symlinks."
            )
        for kind, found in (("video", self.videos), ("audio", self.audios)):
            if len(found) > 1:
                names = ", ".join(sorted(p.name for p in found))
                return f"{where} has {len(found)} {kind} files ({names}); keep exactly one."
        if len(self.sidecars) > 1:
            return f"{where} has {len(self.sidecars)} JSON sidecars; keep exactly one."
        return None

    def missing(self) -> str | None:
        """What a waiting pair still lacks, or None when it has both halves locally."""
        if self.video and self.audio:
            return None
        if not self.videos and not self.audios and self.sidecar:
            return "its media (or video_url and audio_url in the sidecar)"
        return "its video" if not self.videos else "its audio" if not self.audios else None


def scan(
    in_dir: Path, skip: frozenset[Path] = frozenset(), *, follow_symlinks: bool = False
) -> dict[str, Pair]:
    """All stems in `in_dir` (one level of sub-folders), never inside done/, failed/ or `skip`.

    Unless `follow_symlinks`, a file that leads outside `in_dir` through a symbolic link is
    noted in its pair's `outside`: whoever can drop a link there must not make the bridge
    upload (or move) files from elsewhere. Raises OSError when the folder itself cannot be
    listed (e.g. an unmounted share).
    """
    pairs: dict[str, Pair] = {}
    root = None if follow_symlinks else os.path.realpath(in_dir)
    with os.scandir(in_dir) as entries:
        for entry in entries:
            if is_ignored_name(entry.name):
                continue
            try:
                if entry.is_dir():
                    if entry.name in (DONE_DIR, FAILED_DIR) or Path(entry.path) in skip:
                        continue
                    _scan_subfolder(Path(entry.path), pairs, root)
                elif entry.is_file() and kind_of(entry.name):
                    stem, _ = os.path.splitext(entry.name)
                    _add(pairs.setdefault(stem, Pair(stem)), entry, root)
            except OSError:
                continue  # vanished between listing and looking: the next scan decides
    return pairs


def _scan_subfolder(folder: Path, pairs: dict[str, Pair], root: str | None) -> None:
    pair = pairs.setdefault(folder.name, Pair(folder.name))
    if pair.videos or pair.audios or pair.sidecars:
        pair.mixed = True
    pair.folder = folder
    with os.scandir(folder) as entries:
        for entry in entries:
            if not is_ignored_name(entry.name) and entry.is_file():
                _add(pair, entry, root)


def _add(pair: Pair, entry: os.DirEntry[str], root: str | None) -> None:
    """Count `entry` in `pair`; `root` is the real watch folder when links must stay in it."""
    kind = kind_of(entry.name)
    if kind is None:
        return
    if pair.folder is not None and Path(entry.path).parent != pair.folder:
        pair.mixed = True
    if root is not None:
        target = os.path.realpath(entry.path)
        if os.path.commonpath([root, target]) != root:
            pair.outside.append((Path(entry.path), target))
    info = entry.stat()
    {"video": pair.videos, "audio": pair.audios, "sidecar": pair.sidecars}[kind].append(
        Path(entry.path)
    )
    pair.signature.append((entry.path, info.st_size, info.st_mtime_ns))


def read_sidecar(path: Path) -> dict[str, Any]:
    """The options a sidecar sets; InputError (one sentence) when it is not usable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(
            f"The sidecar {path.name} is not valid JSON ({exc}); fix it or remove it."
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"The sidecar {path.name} must hold a JSON object of options.")
    check_options(
        data,
        SIDECAR_OPTIONS,
        SIDECAR_OPTIONS - {"disable_active_speaker_detection"},
        unknown=f"The sidecar {path.name} has unknown option(s)",
        where=f"In the sidecar {path.name}, ",
    )
    return data
