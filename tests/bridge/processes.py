"""Run the real `python -m bridge` as a subprocess, the way users and the add-on do."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bridge
from bridge import discovery
from bridge.processes import stop_process
from chamelaion_client.client import BridgeClient, BridgeUnavailable
from tests.helpers import wait_until

BRIDGE = [sys.executable, "-m", "bridge"]
OTHER_API_VERSION = 99
OTHER_API = (OTHER_API_VERSION, 1)  # another major version: clients would break
# The same major version one revision short: a bridge older than its clients.
OLDER_API = (bridge.API_VERSION, bridge.API_REVISION - 1)


def cli_env(**extra: str) -> dict[str, str]:
    """This environment without any CHAMELAION_* setting of the developer's, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAMELAION_")}
    return {**env, **extra}


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BRIDGE, *args], env=env or cli_env(), capture_output=True, text=True, timeout=timeout
    )


def one_sentence(stderr: str) -> str:
    """The single line a failing command wrote to stderr (no traceback, no usage dump)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].endswith("."), lines[0]
    return lines[0]


def stop(process: subprocess.Popen[Any]) -> int:
    """SIGTERM, then the exit status (SIGKILL only if it does not stop in time)."""
    return stop_process(process)


def published(folder: Path, process: subprocess.Popen[Any]) -> dict[str, Any] | None:
    """bridge.json once `process` has written it; fails at once if the process died."""
    if process.poll() is not None:
        raise AssertionError(f"bridge exited {process.returncode}: {process.stderr.read()}")
    info = discovery.read_discovery(folder)
    return info if info and info.get("pid") == process.pid else None


@contextmanager
def serving(
    folder: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """A real bridge on `folder`, stopped afterwards; yields it and its bridge.json."""
    process = subprocess.Popen(
        [*BRIDGE, "serve", "--data-dir", str(folder), *args],
        env=env or cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        info = wait_until(lambda: published(folder, process), timeout=30, message="bridge.json")
        yield process, info
    finally:
        stop(process)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


class BridgeProcess:
    """A bridge on one data folder that a test can SIGKILL and start again, like a crash."""

    def __init__(self, data_dir: Path, api_base: str, api_key: str | None = "emulator-key"):
        self.data_dir = data_dir
        extra = {
            "CHAMELAION_BASE_URL": api_base,
            "CHAMELAION_POLL_INTERVAL": "0.1",
            # The emulator shows a request the moment it takes it: no need to give it 90 s
            # after an upload a kill cut off before the job is sent again.
            "CHAMELAION_ACCEPT_GRACE": "1",
        }
        if api_key:
            extra["CHAMELAION_API_KEY"] = api_key
        self.env = cli_env(**extra)
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> BridgeClient:
        """Start `serve` and return a client once this very process answers its health."""
        self.process = subprocess.Popen(
            [*BRIDGE, "serve", "--data-dir", str(self.data_dir), "--port", "0"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        process = self.process

        def healthy() -> BridgeClient | None:
            info = published(self.data_dir, process)
            if info is None:
                return None
            client = BridgeClient(url=info["url"], data_dir=self.data_dir)
            try:
                client.health()
            except BridgeUnavailable:
                return None
            return client

        return wait_until(healthy, timeout=30, message="the bridge to answer")

    def kill(self) -> None:
        """SIGKILL: no cleanup runs, exactly like a crash or a power cut."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            if self.process.stderr is not None:
                self.process.stderr.close()


def start_watch_process(
    in_dir: Path,
    out_dir: Path,
    data_dir: Path,
    api_base: str,
    *options: str,
    poll_interval: float = 0.1,
    settle: float = 0.3,
) -> subprocess.Popen[str]:
    """`python -m bridge watch IN --out OUT` as a real process, the way a studio runs it
    (against the emulator, which has no rate limit: generate calls are not paced)."""
    env = cli_env(
        CHAMELAION_BASE_URL=api_base,
        CHAMELAION_API_KEY="emulator-key",
        CHAMELAION_POLL_INTERVAL=str(poll_interval),
        CHAMELAION_WATCH_SETTLE=str(settle),
        CHAMELAION_GENERATE_PER_MINUTE="0",
        CHAMELAION_ACCEPT_GRACE="1",
    )
    command = [*BRIDGE, "watch", str(in_dir), "--out", str(out_dir)]
    command += ["--data-dir", str(data_dir), "--port", "0", *options]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )


def other_api_bridge(
    folder: Path,
    launched_by: str,
    env: dict[str, str] | None = None,
    api: tuple[int, int] = OTHER_API,
) -> subprocess.Popen[str]:
    """A bridge speaking API `api` (version, revision: this very code with the constants
    changed), recorded as launched by `launched_by`; returns once it published bridge.json."""
    code = (
        f"import sys, bridge; bridge.API_VERSION, bridge.API_REVISION = {api}; "
        "from bridge.cli import main; sys.exit(main(['serve', *sys.argv[1:]]))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, "--data-dir", str(folder), "--port", "0"],
        env={**(env or cli_env()), discovery.LAUNCHED_BY_ENV: launched_by},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: published(folder, process), timeout=30, message="the other bridge")
    return process
