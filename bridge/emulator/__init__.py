"""A local stand-in for the Chamelaion lip-sync API: the offline default behind
`chamelaion-bridge demo` and `chamelaion-bridge emulator`, and the tests' peer.

THIS DOES NO REAL LIP SYNC. It implements the documented API (../shared/chamelaion-api.md:
endpoints, auth, validation messages, the request lifecycle) so the bridge can be run and
tested without the real service; its "result" is the source video with the target audio
muxed in (`lipsync.mux_audio`). `GET /api/health` says so (`"emulator": true`).

A part of its own: no production module imports it at load time (the CLI imports it inside
the two commands). Parts: `state` (requests and their lifecycle), `app` (the aiohttp app),
`serving` (running it), `lipsync` (the stand-in), `samples` (sample media for the demo).
Tests change its behaviour (faults, forced outcomes) through `EmulatorState.hooks` only.
"""

from bridge.emulator.app import ENDPOINT, ENDPOINTS, NOT_FOUND, STATE, create_emulator_app
from bridge.emulator.serving import (
    RunningEmulator,
    emulator_in_background,
    run_emulator,
    start_emulator,
)
from bridge.emulator.state import EmulatorConfig, EmulatorHooks, EmulatorState, LipsyncRecord

__all__ = [
    "ENDPOINT",
    "ENDPOINTS",
    "NOT_FOUND",
    "STATE",
    "EmulatorConfig",
    "EmulatorHooks",
    "EmulatorState",
    "LipsyncRecord",
    "RunningEmulator",
    "create_emulator_app",
    "emulator_in_background",
    "run_emulator",
    "start_emulator",
]
