"""Where a client finds the bridge of a data folder: the folder itself, the `bridge.json` the
running bridge publishes there, the token beside it, and the loopback names it answers on.

The bridge writes these files (bridge.discovery); clients only read them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_PORT = 7878
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
DISCOVERY_FILE = "bridge.json"  # the running bridge's pid, url, port, versions, launched_by
TOKEN_FILE = "token"
LOG_FILE = "bridge.log"
# The only names a bridge listens on or answers to, and the address each one binds.
LOOPBACK_ADDRESSES = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "::1": "::1"}


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The bridge's data folder: the override, `CHAMELAION_BRIDGE_DATA`, else the OS's
    per-user data folder."""
    chosen = override or os.environ.get("CHAMELAION_BRIDGE_DATA")
    if chosen:
        return Path(chosen).expanduser().resolve()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return (base / "chamelaion-bridge").resolve()


def read_discovery(folder: Path) -> dict[str, Any] | None:
    """The running (or last) bridge's bridge.json, None when there is none."""
    try:
        info = json.loads((folder / DISCOVERY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def read_token(folder: Path) -> str | None:
    """The token if the bridge has ever run on this data folder, else None."""
    try:
        return (folder / TOKEN_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def bridge_url(folder: Path | None = None) -> str:
    """`CHAMELAION_BRIDGE_URL`, else the URL the running bridge published, else the default."""
    env = os.environ.get("CHAMELAION_BRIDGE_URL")
    if env:
        return env.rstrip("/")
    info = read_discovery(folder or data_dir())
    if info and isinstance(info.get("url"), str):
        return info["url"].rstrip("/")
    return DEFAULT_URL


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.1, localhost and [::1], with or without a port."""
    try:
        name = urlsplit(f"//{host.strip()}").hostname
    except ValueError:
        return False
    return bool(name) and name.rstrip(".").lower() in LOOPBACK_ADDRESSES


def is_loopback_url(url: str) -> bool:
    """Whether `url` names this computer by a loopback name."""
    try:
        return is_loopback_host(urlsplit(url).netloc)
    except ValueError:
        return False
