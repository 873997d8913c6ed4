"""Render single frames of an edit's final render to PNG and compare them, for the drop-in
suite: a take is a drop-in replacement when the render after it is placed matches the render
before, frame for frame."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import bpy
import numpy as np

LIMIT = 2.0  # mean absolute difference per channel, in 1/255 steps: codec noise, no more


def render_frame(scene: Any, frame: int, path: Path) -> np.ndarray:
    """The scene's own final render of `frame` (its sequencer, resolution %, colour management,
    stamp, output format), as 8-bit pixels; only the output path is borrowed for the still."""
    scene.frame_set(frame)
    filepath = scene.render.filepath
    scene.render.filepath = str(path)
    try:
        assert bpy.ops.render.render(write_still=True) == {"FINISHED"}
    finally:
        scene.render.filepath = filepath
    return read_png(path)


def read_png(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def capture(scene: Any, frames: Iterable[int], folder: Path) -> dict[int, np.ndarray]:
    """Render each frame once; the scene's current frame is left as it was."""
    folder.mkdir(parents=True, exist_ok=True)
    current = scene.frame_current
    try:
        return {f: render_frame(scene, f, folder / f"frame{f:+05d}.png") for f in sorted(frames)}
    finally:
        scene.frame_set(current)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """The worst channel's mean absolute difference, in 1/255 steps (inf if sizes differ)."""
    if a.shape != b.shape:
        return float("inf")
    per_channel = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=(0, 1))
    return float(per_channel.max())


@dataclass(frozen=True)
class Match:
    """How one frame rendered after the take was placed compares with the before-renders of
    the same frame and of its neighbours (a shifted take matches a neighbour better)."""

    frame: int
    same: float
    previous: float
    following: float

    @property
    def shifted(self) -> bool:
        return self.same > min(self.previous, self.following)

    @property
    def ok(self) -> bool:
        return self.same < LIMIT and not self.shifted

    def __str__(self) -> str:
        verdict = "ok" if self.ok else ("SHIFTED" if self.shifted else "CHANGED")
        return (
            f"frame {self.frame}: {self.same:.2f}/255 from its render before Lip Sync "
            f"(frame {self.frame - 1}: {self.previous:.2f}, frame {self.frame + 1}: "
            f"{self.following:.2f}) {verdict}"
        )


def neighbourhood(frames: Iterable[int]) -> set[int]:
    """The frames to render before Lip Sync: each sampled frame and its two neighbours."""
    return {f + step for f in frames for step in (-1, 0, 1)}


def moves(before: dict[int, np.ndarray], frames: Iterable[int]) -> bool:
    """True when some sampled frame differs from a neighbour beyond the limit, so that a take
    shifted by a frame would show; an edit that does not move could not catch one."""
    return any(difference(before[f], before[f + step]) >= LIMIT for f in frames for step in (-1, 1))


def match(frame: int, after: np.ndarray, before: dict[int, np.ndarray]) -> Match:
    return Match(
        frame,
        difference(after, before[frame]),
        difference(after, before[frame - 1]),
        difference(after, before[frame + 1]),
    )
