"""Main-thread cost of a background render (issue 8), in real Blender.

Run with .venv-bpy45/bin/python or .venv-bpy50/bin/python. A --frames long, --size movie
strip played backwards (so it must be rendered: an "overlay" take) is planned and started
with the add-on's export and background modules, imported from this worktree (the add-on is
not installed: nothing here needs its registered classes). While the background Blender
mixes and renders, the main thread calls poll() about --hz times a second, as the add-on's
timer would. Reported: start(), every poll(), both together (p50/p95/max, target p95 <
100 ms), and the wall time from start() to "done".

Run: .venv-bpy45/bin/python bench/bench_render.py [--frames 300] [--size 1920x1080] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "addon")]
# Blender reads its user folders when bpy is imported: a throwaway one.
USER = tempfile.mkdtemp(prefix="chamelaion-bench-render-user-")
os.environ["BLENDER_USER_RESOURCES"] = USER

import bpy  # noqa: E402
from chamelaion_lipsync import background, export  # noqa: E402

from bridge import media  # noqa: E402

FPS = 24
TARGET_MS = 100.0


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "calls": len(ordered),
        "p50": round(statistics.median(ordered), 2),
        "p95": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 2),
        "max": round(ordered[-1], 2),
    }


def edit(folder: Path, frames: int, size: tuple[int, int]) -> tuple[Any, Any]:
    """A saved file with a reversed movie strip and its dub: the take must be rendered."""
    clip = media.make_test_video(folder / "shot.mp4", frames, FPS, size)
    dub = media.make_test_audio(folder / "dub.wav", frames / FPS, speech=True)
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = FPS, 1.0
    scene.render.resolution_x, scene.render.resolution_y = size
    editor = scene.sequence_editor_create()
    movie = editor.strips.new_movie("shot", str(clip), channel=1, frame_start=1)
    movie.use_reverse_frames = True
    editor.strips.new_sound("dub", str(dub), channel=2, frame_start=1).select = True
    editor.active_strip = movie
    bpy.ops.wm.save_as_mainfile(filepath=str(folder / "edit.blend"))
    return scene, movie


def run(frames: int, size: tuple[int, int], hz: float) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="chamelaion-bench-render-"))
    try:
        scene, movie = edit(folder, frames, size)
        began = time.perf_counter()
        plan = export.plan(bpy.context, scene, movie, "bench-render")
        task = background.ExportTask.start(bpy.context, plan)
        start_ms = (time.perf_counter() - began) * 1000
        polls: list[float] = []
        state = task.poll()
        while state.stage not in ("done", "failed", "canceled"):
            time.sleep(1 / hz)
            called = time.perf_counter()
            state = task.poll()
            polls.append((time.perf_counter() - called) * 1000)
        total = time.perf_counter() - began
        if state.stage != "done":
            raise RuntimeError(state.error or state.stage)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "blender": bpy.app.version_string,
        "frames": frames,
        "size": f"{size[0]}x{size[1]}",
        "plan_and_start_ms": round(start_ms, 2),
        "poll_ms": summary(polls),
        "main_thread_ms": summary([start_ms, *polls]),
        "render_seconds": round(total, 2),
        "frames_per_second": round(frames / total, 1),
    }


@contextlib.contextmanager
def blender_quiet() -> Iterator[None]:
    """Blender's own messages ("Info: Saved copy ...") go to file descriptor 1, which must
    carry only the table or the JSON."""
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", default="1920x1080", help="WIDTHxHEIGHT")
    parser.add_argument("--hz", type=float, default=30.0, help="poll() calls per second")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    with blender_quiet():
        result = run(args.frames, (width, height), args.hz)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"Blender {result['blender']}: {args.frames} frames at {result['size']}, rendered")
        print(f"{'main-thread call':<22} {'calls':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
        for name, key in (("poll()", "poll_ms"), ("plan+start and polls", "main_thread_ms")):
            s = result[key]
            print(f"{name:<22} {s['calls']:>6} {s['p50']:>8} {s['p95']:>8} {s['max']:>8}")
        print(f"plan() + start(): {result['plan_and_start_ms']} ms")
        print(
            f"start to done: {result['render_seconds']} s ({result['frames_per_second']} frames/s)"
        )
    ok = result["main_thread_ms"]["p95"] < TARGET_MS and result["plan_and_start_ms"] < TARGET_MS
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        code = main()
    finally:
        shutil.rmtree(USER, ignore_errors=True)
    sys.stdout.flush()
    os._exit(code)  # skips the bpy module's teardown, which can hang
