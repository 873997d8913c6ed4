"""Starts the bundled bridge when none answers, detached from Blender.

The bridge's own `start` command does the starting (the same code as the CLI's): it reuses
a healthy bridge of this API version, restarts one this add-on launched of another version,
refuses anyone else's with a sentence, and exits once the bridge answers. Polls run it at
most every 5 s; a click runs it again at once when the last one has ended (its cause may be
fixed by now). A start still running is never joined by a second.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chamelaion_client.client import BridgeUnavailable
from chamelaion_client.layout import LOG_FILE

from .client import Client

if TYPE_CHECKING:
    from .worker import Settings

SPAWN_INTERVAL = 5.0
START_REFUSED = 10  # `start`'s exit status when a bridge of another API version, not ours, runs
HEALTH_DEADLINE = 40.0  # `start` itself gives the bridge 30 s to answer
LAUNCHED_BY = "blender"  # how bridges this add-on starts are recorded in bridge.json


def bridge_command(settings: Settings) -> list[str]:
    """Blender's own Python running the bundled bridge's `start`; the preference's command,
    if set, is what `start` runs to serve (with '--data-dir' appended)."""
    command = [sys.executable, "-m", "bridge", "start", "--data-dir", str(settings.data_dir)]
    command += ["--json", "--launched-by", LAUNCHED_BY]
    if settings.command.strip():
        command += ["--serve-command", settings.command.strip()]
    return command


def bundled_bridge_site() -> str | None:
    """The folder that holds the bundled `bridge` package, found without importing it."""
    spec = importlib.util.find_spec("bridge")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(next(iter(spec.submodule_search_locations))).resolve().parent)


def child_environment(settings: Settings) -> dict[str, str]:
    """The bridge's environment: the key travels here, never on the command line or a log."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [bundled_bridge_site(), env.get("PYTHONPATH")])
    )
    env["CHAMELAION_BRIDGE_DATA"] = str(settings.data_dir)
    if settings.api_key:
        env["CHAMELAION_API_KEY"] = settings.api_key
    if settings.api_base:
        env["CHAMELAION_BASE_URL"] = settings.api_base
    return env


class Launcher:
    """Remembers the child it started so it neither starts two nor waits on a dead one."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.serving: Path | None = None  # the data folder of the child we started
        self.started_at = float("-inf")
        self.said: str | None = None  # what the last `start` wrote to stderr, once it ended
        self.failures: dict[Path, str] = {}  # why the last start failed, per data folder
        self._lock = threading.Lock()

    def ensure_running(
        self,
        settings: Settings,
        client: Callable[[], Client],
        stop: threading.Event,
        *,
        at_once: bool = False,
    ) -> str | None:
        """Start the bridge if needed and wait for its health; None when it answers, else
        the sentence saying why not. `at_once` (a click) ignores the 5 s between starts."""
        problem = self._start_and_wait(settings, client, stop, at_once)
        if problem:
            self.failures[settings.data_dir] = problem
        else:
            self.failures.pop(settings.data_dir, None)
        return problem

    def _start_and_wait(
        self,
        settings: Settings,
        client: Callable[[], Client],
        stop: threading.Event,
        at_once: bool,
    ) -> str | None:
        with self._lock:
            problem = self._spawn_if_due(settings, at_once)
        if problem:
            return problem
        deadline = time.monotonic() + HEALTH_DEADLINE
        while time.monotonic() < deadline and not stop.is_set():
            code = self._our_exit_code(settings)  # before health: `start` ends once it answers
            try:
                client().health()
                return None
            except BridgeUnavailable as exc:
                if code == 0:
                    return str(exc)  # started, yet not the bridge the preferences name
            if code is not None:
                return self._exit_sentence(settings, code)
            stop.wait(0.1)
        log = settings.data_dir / LOG_FILE
        return f"The Chamelaion bridge did not answer within {HEALTH_DEADLINE:.0f} s; see {log}."

    def _our_exit_code(self, settings: Settings) -> int | None:
        """The exit status of the child we started for this data folder, None while it runs;
        a child started for another folder (before the preferences changed) says nothing."""
        if self.serving != settings.data_dir or self.process is None:
            return None
        code = self.process.poll()
        if code is not None and self.said is None:
            _, err = self.process.communicate()  # it has ended: this does not wait
            self.said = err.decode("utf-8", errors="replace")
        return code

    def _spawn_if_due(self, settings: Settings, at_once: bool) -> str | None:
        if self.serving == settings.data_dir and (
            self._our_exit_code(settings) is None
            or (not at_once and time.monotonic() - self.started_at < SPAWN_INTERVAL)
        ):
            return None  # running or starting, or (for a poll) ended less than 5 s ago
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
            os.close(os.open(settings.data_dir / LOG_FILE, flags, 0o600))
        except OSError as exc:
            return (
                f"The bridge's data folder {settings.data_dir} cannot be created or written "
                f"({exc.strerror or exc}); choose another 'Bridge data folder' in the add-on "
                "preferences or make this one writable."
            )
        extra: dict[str, Any] = {}
        if sys.platform == "win32":
            extra["creationflags"] = subprocess.CREATE_NO_WINDOW | subprocess.DETACHED_PROCESS
        else:
            extra["start_new_session"] = True
        self.said = None
        try:
            self.process = subprocess.Popen(
                bridge_command(settings),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,  # `start` prints a line of JSON or one sentence
                stderr=subprocess.PIPE,
                env=child_environment(settings),
                close_fds=True,
                **extra,
            )
        except OSError as exc:
            return (
                f"Could not start the Chamelaion bridge ({exc.strerror or exc}); check the "
                "bridge command in the add-on preferences."
            )
        self.started_at = time.monotonic()
        self.serving = settings.data_dir
        return None

    def _exit_sentence(self, settings: Settings, code: int) -> str:
        """What `start` said when it failed (the daemon's own sentence when that stopped)."""
        log = settings.data_dir / LOG_FILE
        lines = (self.said or "").strip().splitlines()
        if code == START_REFUSED and lines:
            return lines[-1].strip()  # says what runs and how to stop it
        detail = lines[-1].strip().rstrip(".") if lines else f"exit code {code}"
        return f"The Chamelaion bridge stopped at start ({detail}); see {log}."
