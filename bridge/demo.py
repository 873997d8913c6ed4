"""`chamelaion-bridge demo`: the whole round trip on generated sample media.

Without an API key it runs against the built-in emulator, so a new user sees the product
work offline; with CHAMELAION_API_KEY set, the same flow runs against the real API. It
starts its own bridge on its own data folder (`<data dir>/demo/bridge`) and stops it again.
The CLI runs it and lends it its way of showing a job's progress, so the demo does not
import the CLI back.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bridge.emulator import emulator_in_background
from bridge.emulator.samples import make_sample_media
from bridge.jobs import State, new_reference_id
from bridge.processes import spawn_bridge, stop_process
from chamelaion_client.client import BridgeClient

EMULATOR_KEY = "emulator-key"

# Follows a job until it is final, showing its progress; returns the final job.
Follow = Callable[[BridgeClient, dict[str, Any]], dict[str, Any]]


class DemoError(Exception):
    """The demo cannot run; the message is one sentence saying what to do."""


@contextlib.contextmanager
def demo_bridge(folder: Path, env: dict[str, str]) -> Iterator[BridgeClient]:
    """A bridge of our own for the demo, stopped (and waited for) on the way out."""
    process, info = spawn_bridge(folder, env=env, port=0)
    try:
        if info.get("pid") != process.pid:
            raise DemoError(
                f"A demo bridge from an earlier run is still running (pid {info.get('pid')}); "
                "stop it and run the demo again.",
            )
        yield BridgeClient(info["url"], data_dir=folder)
    finally:
        stop_process(process)


def run_demo(data_dir: Path, follow: Follow) -> bool:
    """Make sample media, run one job through a fresh bridge, print where the result is;
    return whether the job completed."""
    folder = data_dir / "demo"
    print(f"Making sample media in {folder / 'media'} ...", flush=True)
    video, audio = make_sample_media(folder / "media")
    env = dict(os.environ)
    env.pop("CHAMELAION_BRIDGE_URL", None)
    real = bool(env.get("CHAMELAION_API_KEY") or env.get("CHAMELAION_BEARER_TOKEN"))
    with contextlib.ExitStack() as stack:
        if real:
            print("CHAMELAION_API_KEY is set: using the real Chamelaion API.", flush=True)
        else:
            emulator = stack.enter_context(emulator_in_background())
            env.pop("CHAMELAION_BEARER_TOKEN", None)
            env.update(CHAMELAION_BASE_URL=emulator.base_url, CHAMELAION_API_KEY=EMULATOR_KEY)
            print(
                f"No CHAMELAION_API_KEY: using the local emulator at {emulator.base_url}.",
                flush=True,
            )
        client = stack.enter_context(demo_bridge(folder / "bridge", env))
        print(f"Bridge running at {client.url}; submitting {video.name} + {audio.name}.")
        job = client.create_job(
            {
                "video_path": str(video),
                "audio_path": str(audio),
                "output_dir": str(folder / "output"),
                "reference_id": new_reference_id("demo"),
            }
        )
        job = follow(client, job)
    if job["state"] != State.COMPLETED:
        print(
            f"The demo job {job['reference_id']} ended {job['state']}: "
            f"{job.get('error') or 'no reason given.'}",
            file=sys.stderr,
        )
        return False
    print(f"Done. The finished file is {job['output_path']}")
    if not real:
        print(
            "It comes from the emulator: your video with the new audio muxed in, not real lip "
            "sync. Set CHAMELAION_API_KEY to run the same demo against the real API."
        )
    return True
