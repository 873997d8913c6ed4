"""A real bridge process (`python -m bridge serve`) for tests that kill or restart it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from bridge import discovery
from bridge.client import BridgeClient, BridgeUnavailable
from tests.helpers import wait_until


class BridgeProcess:
    """Starts `serve` on a data folder and talks to it through the real client."""

    def __init__(self, data_dir: Path, api_base: str, api_key: str | None = "emulator-key"):
        self.data_dir = data_dir
        self.env = {
            **os.environ,
            "CHAMELAION_BRIDGE_DATA": str(data_dir),
            "CHAMELAION_BASE_URL": api_base,
            "CHAMELAION_POLL_INTERVAL": "0.1",
        }
        self.env.pop("CHAMELAION_BRIDGE_URL", None)
        self.env.pop("CHAMELAION_BEARER_TOKEN", None)
        if api_key:
            self.env["CHAMELAION_API_KEY"] = api_key
        else:
            self.env.pop("CHAMELAION_API_KEY", None)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BridgeClient:
        """Start and wait until this process answers health on the URL it published."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "--port", "0"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        pid = self.proc.pid

        def healthy() -> BridgeClient | None:
            assert self.proc is not None and self.proc.poll() is None, self.stderr()
            info = discovery.read_discovery(self.data_dir)
            if not info or info.get("pid") != pid:
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
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def stderr(self) -> str:
        if self.proc is None or self.proc.stderr is None or self.proc.poll() is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")
