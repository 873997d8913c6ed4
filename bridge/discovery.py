"""Where the bridge keeps its files: the server's side of the data folder (its private
folders, the lock, the token it creates, `bridge.json` written atomically).

What clients read of the folder (where it is by default, the file names, bridge.json, the
token, the health proof, the loopback names) is written once, in the client package
`chamelaion_client`, and imported here so that the bridge's modules find the whole layout in
one place.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import IO, Any

from chamelaion_client.layout import (
    DEFAULT_PORT,
    DISCOVERY_FILE,
    LOG_FILE,
    LOOPBACK_ADDRESSES,
    TOKEN_FILE,
    data_dir,
    is_loopback_host,
    read_discovery,
    read_token,
)
from chamelaion_client.proofs import health_proof

__all__ = [
    "DEFAULT_PORT",
    "DISCOVERY_FILE",
    "LAUNCHED_BY_ENV",
    "LOCK_FILE",
    "LOG_FILE",
    "LOOPBACK_ADDRESSES",
    "OUTPUT_DIR",
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILES",
    "PRIVATE_FILE_MODE",
    "STORE_FILE",
    "TOKEN_FILE",
    "WORK_DIR",
    "data_dir",
    "health_proof",
    "is_loopback_host",
    "load_or_create_token",
    "make_private_dir",
    "open_private",
    "read_discovery",
    "read_token",
    "secure_data_dir",
    "write_atomic",
    "write_discovery",
]

# Who started a bridge (e.g. "cli", "blender"), passed by the starter in the environment and
# written to bridge.json by the bridge: only its starter restarts it for another API version.
LAUNCHED_BY_ENV = "CHAMELAION_BRIDGE_LAUNCHED_BY"
LOCK_FILE = "bridge.lock"
STORE_FILE = "jobs.sqlite3"
WORK_DIR = "work"
OUTPUT_DIR = "outputs"
# What the data folder holds that no other user may read: the token, the job store (and
# SQLite's companions, which copy the store's mode when SQLite creates them), the log.
PRIVATE_FILES = (
    TOKEN_FILE,
    DISCOVERY_FILE,
    LOG_FILE,
    LOCK_FILE,
    STORE_FILE,
    f"{STORE_FILE}-wal",
    f"{STORE_FILE}-shm",
)
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a small file so readers see the old or the new content, never half of it."""
    # An unpredictable name, created exclusively without following links: in a folder that
    # others can write (a watch folder), nothing they plant there is ever written through.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_private_dir(folder: Path) -> Path:
    """Create `folder` (and its parents) with only this user allowed in; tighten it if it
    exists, since it holds the token that drives the bridge."""
    folder.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    if os.name != "nt":  # Windows folders get their access from the user profile's ACL
        os.chmod(folder, PRIVATE_DIR_MODE)
    return folder


def secure_data_dir(folder: Path) -> None:
    """Make the data folder private, including what an older version left readable.

    The store file is created here, empty, so that SQLite gives its -wal and -shm files
    the same private mode when it creates them.
    """
    for sub in (folder, folder / WORK_DIR, folder / OUTPUT_DIR):
        make_private_dir(sub)
    open_private(folder / STORE_FILE, "ab").close()
    if os.name == "nt":
        return
    for name in PRIVATE_FILES:
        path = folder / name
        if path.is_file() and not path.is_symlink():
            os.chmod(path, PRIVATE_FILE_MODE)


def open_private(path: Path, mode: str = "ab") -> IO[Any]:
    """Open (creating it readable by this user only) a file of the data folder."""
    flags = {"ab": os.O_WRONLY | os.O_APPEND, "a+": os.O_RDWR | os.O_APPEND}[mode]
    fd = os.open(path, flags | os.O_CREAT, PRIVATE_FILE_MODE)
    return os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))


def load_or_create_token(folder: Path) -> str:
    """The bearer token clients must present; created once, readable only by this user."""
    path = folder / TOKEN_FILE
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    make_private_dir(folder)
    token = secrets.token_urlsafe(32)
    write_atomic(path, token, mode=PRIVATE_FILE_MODE)
    return token


def write_discovery(folder: Path, info: dict[str, Any]) -> None:
    write_atomic(folder / DISCOVERY_FILE, json.dumps(info, indent=2), mode=PRIVATE_FILE_MODE)
