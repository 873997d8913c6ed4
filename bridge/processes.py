"""Starting and stopping bridge processes: the one place for the CLI (`start`, `stop`,
`submit`) and, through `chamelaion-bridge start`, for the Blender add-on.

A bridge records in `bridge.json` who launched it (`launched_by`, from the starter's
environment). A bridge of another API version is restarted only by whoever launched it
(its jobs are durable in the store); anyone else's is refused with a sentence, so that a
start never pulls the rug from under another program.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge import discovery
from bridge.errors import BridgeError
from chamelaion_client import THIS_API, api_of, speaks_this_api
from chamelaion_client.client import BridgeClient, BridgeUnavailable

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
EXIT_UNREACHABLE = 3  # as the CLI's: the bridge did not answer in time
EXIT_OTHER_VERSION = 10  # a bridge of another API version runs and is not ours to restart


class StartError(BridgeError):
    """A bridge could not be started (or stopped); `code` is the exit status to use."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# How a refusal names whoever wanted a bridge, by the `launched_by` it starts bridges with.
STARTERS = {"cli": "chamelaion-bridge", "blender": "the Blender add-on"}


@dataclass(frozen=True)
class Running:
    """A healthy bridge of this API version, as `start --json` prints it."""

    url: str
    pid: int | None
    version: str
    api_version: int
    api_revision: int
    started: bool  # started by this call, rather than found running


def published_client(folder: Path) -> BridgeClient | None:
    """A client for the bridge `folder`'s bridge.json names, if it proves itself."""
    info = discovery.read_discovery(folder)
    if info is None or not isinstance(info.get("url"), str):
        return None
    client = BridgeClient(info["url"], data_dir=folder)
    try:
        client.health()
    except BridgeUnavailable:
        return None
    return client


def other_version(folder: Path, health: dict[str, Any], needed_by: str) -> StartError:
    """The refusal of a running bridge of another API version that is not ours."""
    info = discovery.read_discovery(folder) or {}
    return StartError(
        EXIT_OTHER_VERSION,
        f"A Chamelaion bridge of API version {api_of(health)} "
        f"(bridge {health.get('version')}, pid {info.get('pid')}) runs for {folder}, and "
        f"{needed_by} needs API version {THIS_API}; stop it with "
        f"'chamelaion-bridge stop --data-dir {folder}' and try again.",
    )


def serve_command(
    folder: Path, *, port: int | None = None, command: Sequence[str] = ()
) -> list[str]:
    """`command` (a custom way to serve, e.g. another installation) or this Python's bridge,
    with the data folder (and port) appended."""
    base = list(command) or [sys.executable, "-m", "bridge", "serve"]
    return [*base, "--data-dir", str(folder), *(["--port", str(port)] if port is not None else [])]


def spawn_bridge(
    folder: Path,
    *,
    env: dict[str, str] | None = None,
    port: int | None = None,
    command: Sequence[str] = (),
    launched_by: str | None = None,
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start a bridge detached, its output in the data folder's log, and wait for its health;
    return it and bridge.json (which may name another process when one ran already).

    The bridge is the one that publishes a bridge.json other than the one found before: a
    `command` may run it as a child (a wrapper script, Windows' .exe launchers), so its pid
    need not be the process's. The daemon's exit status and last log line become a
    StartError when it stops at start.
    """
    log_path = folder / discovery.LOG_FILE
    try:
        discovery.make_private_dir(folder)
        discovery.open_private(log_path).close()
    except OSError as exc:
        from bridge.daemon import not_writable  # the daemon's own sentence and exit code

        refusal = not_writable(folder, exc)
        raise StartError(refusal.code, str(refusal)) from None
    child_env = dict(os.environ if env is None else env)
    if launched_by:
        child_env[discovery.LAUNCHED_BY_ENV] = launched_by
    detach: dict[str, Any] = (
        {"creationflags": subprocess.CREATE_NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP}
        if os.name == "nt"
        else {"start_new_session": True}
    )
    stale = discovery.read_discovery(folder)
    try:
        with discovery.open_private(log_path) as log:
            process = subprocess.Popen(
                serve_command(folder, port=port, command=command),
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                close_fds=True,
                **detach,
            )
    except OSError as exc:
        raise StartError(
            EXIT_UNREACHABLE, f"Could not start the Chamelaion bridge ({exc.strerror or exc})."
        ) from None
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        code = process.poll()
        info = discovery.read_discovery(folder)
        if info and (info != stale or code == 0):
            try:
                BridgeClient(info["url"], data_dir=folder).health()
                return process, info
            except BridgeUnavailable:
                pass
        if code not in (None, 0):
            raise StartError(
                code, _last_line(log_path) or f"The bridge could not start; see {log_path}."
            )
        time.sleep(0.1)
    process.terminate()
    raise StartError(
        EXIT_UNREACHABLE, f"The bridge did not answer within {START_TIMEOUT:.0f} s; see {log_path}."
    )


def stop_process(process: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM (the bridge's clean shutdown), SIGKILL only if that takes too long; the
    exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def stop_bridge(folder: Path, timeout: float = STOP_TIMEOUT) -> dict[str, Any] | None:
    """Stop the bridge serving `folder` (SIGTERM: jobs stay in the store) and wait until it
    let go of the folder; its bridge.json, or None when none runs.

    Only a bridge that proves it holds the folder's token is signalled, so a stale
    bridge.json never gets an unrelated process (one that reused the pid) killed.
    """
    if published_client(folder) is None:
        return None
    info = discovery.read_discovery(folder) or {}
    pid = info.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return info
    except OSError as exc:
        raise StartError(
            EXIT_UNREACHABLE,
            f"Cannot stop the Chamelaion bridge (pid {pid}) for {folder} "
            f"({exc.strerror or exc}); stop it from the account that started it.",
        ) from None
    deadline = time.monotonic() + timeout
    while not _folder_free(folder):
        if time.monotonic() > deadline:
            raise StartError(
                EXIT_UNREACHABLE,
                f"The Chamelaion bridge (pid {pid}) for {folder} did not stop within "
                f"{timeout:.0f} s; see {folder / discovery.LOG_FILE}.",
            )
        time.sleep(0.1)
    return info


def _folder_free(folder: Path) -> bool:
    """Whether no bridge holds the folder's lock (the OS drops it when a bridge exits)."""
    from bridge.daemon import acquire_lock  # aiohttp: only when really stopping one

    lock = acquire_lock(folder)
    if lock is None:
        return False
    lock.close()
    return True


def ensure_bridge(
    folder: Path,
    *,
    launched_by: str,
    env: dict[str, str] | None = None,
    command: Sequence[str] = (),
) -> Running:
    """A healthy bridge of this API version for `folder`: the running one, else a new one.

    A bridge of another API version is stopped and replaced when `launched_by` launched it,
    else refused (StartError EXIT_OTHER_VERSION); so is one that `command` serves, which is
    stopped again rather than left to be met by the next start."""
    client = published_client(folder)
    if client is not None:
        health = client.health()
        if speaks_this_api(health):
            return _running(folder, client.url, health, started=False)
        if (discovery.read_discovery(folder) or {}).get("launched_by") != launched_by:
            raise other_version(folder, health, STARTERS.get(launched_by, launched_by))
        stop_bridge(folder)
    _, info = spawn_bridge(folder, env=env, command=command, launched_by=launched_by)
    client = BridgeClient(info["url"], data_dir=folder)
    health = client.health()
    if not speaks_this_api(health):
        if info.get("launched_by") != launched_by:  # another starter's, started meanwhile
            raise other_version(folder, health, STARTERS.get(launched_by, launched_by))
        stop_bridge(folder)  # what `command` serves: starting it again would not help
        raise StartError(
            EXIT_OTHER_VERSION,
            f"The bridge that '{shlex.join(serve_command(folder, command=command))}' started "
            f"speaks API version {api_of(health)}, and "
            f"{STARTERS.get(launched_by, launched_by)} needs API version {THIS_API}; "
            "use a bridge command of this release, or none.",
        )
    return _running(folder, client.url, health, started=True)


def _running(folder: Path, url: str, health: dict[str, Any], *, started: bool) -> Running:
    info = discovery.read_discovery(folder) or {}
    return Running(
        url=url,
        pid=info.get("pid"),
        version=str(health.get("version")),
        api_version=int(health["api_version"]),
        api_revision=int(health["api_revision"]),
        started=started,
    )


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""
