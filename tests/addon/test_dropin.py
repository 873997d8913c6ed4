"""A take is a drop-in replacement: with the emulator's identity lip sync, placing the take
changes no pixel of the edit's final render beyond codec noise, whatever the edit holds.

Each edit renders sampled frames before Lip Sync (with their neighbours, so a shifted take
shows) and after the take is placed, and compares them. The worst difference per edit goes
to build/test-reports/dropin-<Blender version>.json and to the test output."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import bpy
import pytest

from tests.addon import frames
from tests.addon.conftest import FPS, sync_until
from tests.addon.edits import EDITS, HEIGHT, WIDTH, Media, build
from tests.media_samples import make_test_video

pytestmark = pytest.mark.blender
ROOT = Path(__file__).resolve().parents[2]
VERSION = "{}.{}".format(*bpy.app.version[:2])
CLIP_FRAMES = 60


def png_frames(clip: Path, folder: Path) -> list[Path]:
    """The clip as numbered PNG files, for the image-sequence edit."""
    with av.open(str(clip)) as source, av.open(str(folder / "f%03d.png"), "w", "image2") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "rgb24"
        for frame in source.decode(video=0):
            for packet in stream.encode(frame.reformat(format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return sorted(folder.glob("f*.png"))


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory, dub: Path) -> Media:
    folder = tmp_path_factory.mktemp("dropin-media")
    clip = make_test_video(folder / "shot.mp4", CLIP_FRAMES, FPS, (WIDTH, HEIGHT))
    images = png_frames(clip, folder)
    assert len(images) == CLIP_FRAMES
    return Media(clip, images, dub)


class Report:
    """The worst difference per edit of this run, rewritten after every edit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.edits: dict[str, dict[str, Any]] = {}

    def record(self, name: str, entry: dict[str, Any]) -> None:
        self.edits[name] = entry
        compared = [e["worst"] for e in self.edits.values() if e["worst"] is not None]
        body = {
            "blender": bpy.app.version_string,
            "limit": frames.LIMIT,
            "unit": "mean absolute difference per channel, 1/255",
            "worst": max(compared, default=None),
            "passed": sorted(n for n, e in self.edits.items() if e["passed"]),
            "failed": sorted(n for n, e in self.edits.items() if not e["passed"]),
            "not_compared": sorted(n for n, e in self.edits.items() if e["worst"] is None),
            "edits": self.edits,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(body, indent=2) + "\n")


@pytest.fixture(scope="session")
def report() -> Report:
    return Report(ROOT / "build" / "test-reports" / f"dropin-{VERSION}.json")


def take_of(scene: Any, reference_id: str) -> Any | None:
    """The strip showing the take, wherever the add-on put it (inside metas too)."""
    editor = scene.sequence_editor
    everything = editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all
    return next((s for s in everything if s.get("chamelaion_reference_id") == reference_id), None)


def lip_sync(scene: Any, reference_id: str) -> Any:
    """Run Lip Sync as the editor would and wait until the take is placed."""
    scene.chamelaion.reference_id = reference_id
    assert bpy.ops.sequencer.chamelaion_lipsync() == {"FINISHED"}
    return sync_until(lambda: take_of(scene, reference_id), message=f"the take {reference_id}")


@pytest.fixture
def outcome(
    request: pytest.FixtureRequest, report: Report, capsys: pytest.CaptureFixture[str]
) -> Iterator[dict[str, Any]]:
    """What the test found, recorded and printed however it ends."""
    name = request.node.callspec.params["name"]
    found: dict[str, Any] = {"passed": False, "worst": None, "error": None, "frames": []}
    yield found
    report.record(name, found)
    worst = "not compared" if found["worst"] is None else f"{found['worst']:.2f}/255"
    with capsys.disabled():
        verdict = "pass" if found["passed"] else "FAIL"
        print(f"\n[dropin {VERSION}] {name}: worst {worst} ({verdict})", end="")


@pytest.mark.parametrize("name", list(EDITS))
def test_the_take_changes_no_pixel_of_the_render(
    name: str, fresh: Any, media: Media, tmp_path: Path, outcome: dict[str, Any]
) -> None:
    made = build(name, fresh, media)
    before = frames.capture(fresh, frames.neighbourhood(made.frames), tmp_path / "before")
    assert frames.moves(before, made.frames), f"edit {name} shows no moving picture"
    final_percentage = fresh.render.resolution_percentage
    if made.preview_percentage:
        fresh.render.resolution_percentage = made.preview_percentage
    try:
        lip_sync(fresh, f"dropin-{name}-{secrets.token_hex(4)}")
    except (AssertionError, RuntimeError) as exc:
        outcome["error"] = f"no take: {str(exc).strip()}"
        raise
    if made.preview_percentage:
        fresh.render.resolution_percentage = final_percentage  # back to full size to deliver
    after = frames.capture(fresh, made.frames, tmp_path / "after")
    matches = [frames.match(f, after[f], before) for f in made.frames]
    outcome["worst"] = max(m.same for m in matches)
    outcome["frames"] = [{**vars(m), "ok": m.ok} for m in matches]
    outcome["passed"] = passed = all(m.ok for m in matches)
    assert passed, f"placing the take changed the render (limit {frames.LIMIT}/255):\n" + "\n".join(
        str(m) for m in matches
    )
