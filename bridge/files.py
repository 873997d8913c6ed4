"""Putting result files in place: whole or not at all, and never over an existing file."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from bridge.errors import BridgeError, InputError, LocalProblem

_UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f]')
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {
    f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)
}


def safe_filename(name: str) -> str:
    """A file name valid on Windows, macOS and Linux (no separators, no reserved names)."""
    cleaned = _UNSAFE.sub("_", name).strip(" .") or "result"
    stem, dot, suffix = cleaned.partition(".")
    if stem.upper() in _WINDOWS_RESERVED:
        cleaned = f"_{stem}{dot}{suffix}"
    return cleaned[:200]


def numbered_names(dest: Path) -> Iterator[Path]:
    """dest, then stem-2.ext, stem-3.ext, ... for picking a name that is still free."""
    yield dest
    stem = dest.name[: -len(dest.suffix)] if dest.suffix else dest.name
    n = 2
    while True:
        yield dest.with_name(f"{stem}-{n}{dest.suffix}")
        n += 1


def part_path(folder: Path, stem: str) -> Path:
    """An unpredictable temporary name in `folder`, hidden, for a file still being written."""
    return folder / f".{safe_filename(stem)[:60]}.{secrets.token_hex(8)}.part"


def open_exclusive(path: Path) -> IO[bytes]:
    """Create `path` and open it for writing; FileExistsError if anything is there already.

    Exclusive and without following links, so nothing someone else planted under that name
    (a symlink to a file of theirs or ours) is ever written through.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags | getattr(os, "O_BINARY", 0), 0o666)
    return os.fdopen(fd, "wb")


def link_into_place(tmp: Path, dest: Path) -> bool:
    """Atomically publish `tmp` as `dest` unless `dest` exists; True if it was published.

    A hard link never replaces an existing file, and the finished file appears at once.
    The caller removes `tmp` afterwards; until then both names point at the same file,
    which is how a restarted bridge tells that the publish already happened.
    """
    try:
        os.link(tmp, dest, follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError:
        # File systems without hard links: an exclusive create claims the name, then the
        # finished file is moved over our own empty placeholder.
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        os.close(fd)
        os.replace(tmp, dest)
    return True


def remove_leftover(path: Path) -> None:
    """Remove a temporary file that is no longer needed; one that cannot go stays, hidden
    and named *.part, rather than fail what is already done."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def has_other_names(path: Path) -> bool:
    """Whether a file has been hard-linked elsewhere (published) besides `path`."""
    try:
        return os.lstat(path).st_nlink > 1
    except OSError:
        return False


def is_published(tmp: Path, dest: Path) -> bool:
    """Whether `dest` is already the published copy of `tmp` (same file on disk, no links)."""
    try:
        return os.path.samestat(os.lstat(tmp), os.lstat(dest))
    except OSError:
        return False


def folder_error(folder: Path, exc: OSError) -> BridgeError:
    """A folder that is full or away only makes a job wait; one that refuses us fails it."""
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return InputError(folder_problem(folder, exc))
    if exc.errno == errno.ENOSPC:
        return LocalProblem(
            f"The disk holding {folder} is full; free some space and the job goes on by itself."
        )
    return LocalProblem(
        f"The output folder {folder} cannot be written right now ({exc.strerror or exc}); "
        "the job goes on once it can."
    )


def folder_problem(folder: Path, exc: OSError) -> str:
    """Why an output folder cannot take a job's result, as a sentence for the user."""
    if exc.errno == errno.ENOSPC:
        return f"The disk holding {folder} is full; free some space and retry the job."
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EROFS):
        return f"The output folder {folder} is not writable; choose another output folder."
    return f"The output folder {folder} cannot be used ({exc.strerror}); choose another one."


def check_output_dir(folder: Path) -> None:
    """Make sure a job's results can be written to `folder` (made if missing); InputError if
    not. Blocking (a network share may be slow): run it in a thread."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(folder_problem(folder, exc)) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(
            f"The output folder {folder} is not writable; choose another output folder."
        )
