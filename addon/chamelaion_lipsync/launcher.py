"""Starts the bundled bridge when none answers, detached from Blender, at most every 5 s."""

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
        self._lock = threading.Lock()

    def ensure_running(
        self,
        settings: Settings,
        client: Callable[[], BridgeClient],
        stop: threading.Event,
    ) -> str | None:
        """Start the bridge if needed and wait for its health; None when it answers."""
        with self._lock:
            problem = self._spawn_if_due(settings)
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

    def _spawn_if_due(self, settings: Settings) -> str | None:
        if self.serving == settings.data_dir and (
            self._our_exit_code(settings) is None
            or time.monotonic() - self.started_at < SPAWN_INTERVAL
        ):
            return None  # running, or started (and ended) less than SPAWN_INTERVAL ago
        discovery.make_private_dir(settings.data_dir)
        log_path = settings.data_dir / discovery.LOG_FILE
        extra: dict[str, Any] = {}
        if sys.platform == "win32":
            extra["creationflags"] = subprocess.CREATE_NO_WINDOW | subprocess.DETACHED_PROCESS
        else:
            extra["start_new_session"] = True
        try:
            with discovery.open_private(log_path) as log:
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
