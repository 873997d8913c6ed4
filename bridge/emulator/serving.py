"""Serving the emulator on a loopback port: inside a running loop, on a thread of its own for
callers that block, or in the foreground for `chamelaion-bridge emulator`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from bridge.emulator.app import STATE, create_emulator_app
from bridge.emulator.state import EmulatorConfig, EmulatorState

T = TypeVar("T")


@dataclass
class RunningEmulator:
    """An emulator serving on a real loopback port."""

    url: str
    app: web.Application
    runner: web.AppRunner
    site: web.TCPSite
    loop: asyncio.AbstractEventLoop

    @property
    def base_url(self) -> str:
        return self.url + "/api"

    @property
    def state(self) -> EmulatorState:
        return self.app[STATE]

    async def close(self) -> None:
        await self.runner.cleanup()

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on the emulator's loop from another thread (emulator_in_background)."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout=30)


async def start_emulator(
    config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> RunningEmulator:
    """Serve the emulator on `host:port` (0: an ephemeral port) inside the running loop."""
    app = create_emulator_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = runner.addresses[0][1]
    return RunningEmulator(
        f"http://{host}:{bound_port}", app, runner, site, asyncio.get_running_loop()
    )


@contextlib.contextmanager
def emulator_in_background(
    config: EmulatorConfig | None = None,
) -> Iterator[RunningEmulator]:
    """The emulator on an ephemeral loopback port, served by a loop on its own thread, for
    callers that block (the demo, Blender's main thread, subprocess-driving tests)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="emulator", daemon=True)
    thread.start()
    try:
        emulator = asyncio.run_coroutine_threadsafe(start_emulator(config), loop).result(timeout=30)
        try:
            yield emulator
        finally:
            asyncio.run_coroutine_threadsafe(emulator.close(), loop).result(timeout=30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def run_emulator(
    port: int = 7879, host: str = "127.0.0.1", config: EmulatorConfig | None = None
) -> None:
    """Serve until Ctrl+C or SIGTERM, after printing the base_url and the key to use.

    OSError (e.g. the port is taken) propagates: the CLI turns it into its sentence.
    """
    config = config or EmulatorConfig()

    async def serve() -> None:
        emulator = await start_emulator(config, host, port)
        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print(
            f"Chamelaion emulator (a local stand-in: no real lip sync) at {emulator.base_url}\n"
            f"Use: CHAMELAION_BASE_URL={emulator.base_url} "
            f"CHAMELAION_API_KEY={sorted(config.api_keys)[0]}",
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            await emulator.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
