"""Starts the bundled bridge when none answers, detached from Blender.

Polls start it at most every 5 s; a click starts it again at once when the last start has
ended (its cause may be fixed by now). A child still starting is never joined by a second.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bridge
from bridge import discovery
from bridge.client import BridgeClient, BridgeUnavailable

if TYPE_CHECKING:
    from .worker import Settings

SPAWN_INTERVAL = 5.0
HEALTH_DEADLINE = 20.0


def bridge_command(settings: Settings) -> list[str]:
    """The preference's command, else Blender's own Python running the bundled bridge."""
    if settings.command.strip():
        return [*shlex.split(settings.command), "--data-dir", str(settings.data_dir)]
    return [sys.executable, "-m", "bridge", "serve", "--data-dir", str(settings.data_dir)]


def child_environment(settings: Settings) -> dict[str, str]:
    """The bridge's environment: the key travels here, never on the command line or a log."""
    env = dict(os.environ)
    site = str(Path(bridge.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [site, env.get("PYTHONPATH")]))
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
        self.failures: dict[Path, str] = {}  # why the last start failed, per data folder
        self._lock = threading.Lock()

    def ensure_running(
        self,
        settings: Settings,
        client: Callable[[], BridgeClient],
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
        client: Callable[[], BridgeClient],
        stop: threading.Event,
        at_once: bool,
    ) -> str | None:
        with self._lock:
            problem = self._spawn_if_due(settings, at_once)
        if problem:
            return problem
        deadline = time.monotonic() + HEALTH_DEADLINE
        while time.monotonic() < deadline and not stop.is_set():
            try:
                client().health()
                return None
            except BridgeUnavailable:
                pass
            code = self._our_exit_code(settings)
            if code is not None:
                return self._exit_sentence(settings, code)
            stop.wait(0.1)
        log = settings.data_dir / discovery.LOG_FILE
        return f"The Chamelaion bridge did not answer within {HEALTH_DEADLINE:.0f} s; see {log}."

    def _our_exit_code(self, settings: Settings) -> int | None:
        """The exit status of the child we started for this data folder, None while it runs;
        a child started for another folder (before the preferences changed) says nothing."""
        if self.serving != settings.data_dir or self.process is None:
            return None
        return self.process.poll()

    def _spawn_if_due(self, settings: Settings, at_once: bool) -> str | None:
        if self.serving == settings.data_dir and (
            self._our_exit_code(settings) is None
            or (not at_once and time.monotonic() - self.started_at < SPAWN_INTERVAL)
        ):
            return None  # running or starting, or (for a poll) ended less than 5 s ago
        try:
            discovery.make_private_dir(settings.data_dir)
            log = discovery.open_private(settings.data_dir / discovery.LOG_FILE)
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
        try:
            with log:
                self.process = subprocess.Popen(
                    bridge_command(settings),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
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

    @staticmethod
    def _exit_sentence(settings: Settings, code: int) -> str:
        log = settings.data_dir / discovery.LOG_FILE
        try:
            lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            lines = []
        detail = lines[-1].strip().rstrip(".") if lines else f"exit code {code}"
        return f"The Chamelaion bridge stopped at start ({detail}); see {log}."
