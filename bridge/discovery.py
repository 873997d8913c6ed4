"""Where the bridge keeps its files and how clients find it.

Shared by the daemon and the CLI, so both agree on the data folder, the token and
`bridge.json` without talking to each other first. The Blender add-on reads the same layout
through its own `local_api` (it imports nothing from `bridge`): change both together.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sys
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

# Who started a bridge (e.g. "cli", "blender"), passed by the starter in the environment and
# written to bridge.json by the bridge: only its starter restarts it for another API version.
LAUNCHED_BY_ENV = "CHAMELAION_BRIDGE_LAUNCHED_BY"
# The only names a bridge listens on or answers to, and the address each one binds.
LOOPBACK_ADDRESSES = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "::1": "::1"}
DEFAULT_PORT = 7878
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
DISCOVERY_FILE = "bridge.json"
TOKEN_FILE = "token"
LOG_FILE = "bridge.log"
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


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The bridge's data folder: the override, `CHAMELAION_BRIDGE_DATA`, else the OS's
    per-user data folder."""
    if override:
        return Path(override).expanduser().resolve()
    env = os.environ.get("CHAMELAION_BRIDGE_DATA")
    if env:
        return Path(env).expanduser().resolve()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return (base / "chamelaion-bridge").resolve()


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.1, localhost and [::1], with or without a port."""
    try:
        name = urlsplit(f"//{host.strip()}").hostname
    except ValueError:
        return False
    return bool(name) and name.rstrip(".").lower() in LOOPBACK_ADDRESSES


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


def health_proof(token: str, challenge: str, port: int) -> str:
    """What the real bridge answers to a client's health challenge: only the token's holder
    can compute it, and the listening port in it stops a stranger relaying a real answer."""
    message = f"{challenge}:{port}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def read_token(folder: Path) -> str | None:
    """The token if the bridge has ever run on this data folder, else None."""
    try:
        return (folder / TOKEN_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def write_discovery(folder: Path, info: dict[str, Any]) -> None:
    write_atomic(folder / DISCOVERY_FILE, json.dumps(info, indent=2), mode=PRIVATE_FILE_MODE)


def read_discovery(folder: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((folder / DISCOVERY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def bridge_url(folder: Path | None = None) -> str:
    """`CHAMELAION_BRIDGE_URL`, else the URL the running bridge published, else the default."""
    env = os.environ.get("CHAMELAION_BRIDGE_URL")
    if env:
        return env.rstrip("/")
    info = read_discovery(folder or data_dir())
    if info and isinstance(info.get("url"), str):
        return info["url"].rstrip("/")
    return DEFAULT_URL
