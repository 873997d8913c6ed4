"""Run a job's export (mixdown, render) in a background Blender, never on the main thread.

The main thread only saves a copy of the file and starts the process; poll() reads the small
status file the process rewrites, cancel() stops it. Outputs appear whole or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpy

from .export import ExportError, ExportPlan, file_stem

SCRIPT = Path(__file__).with_name("export_script.py")
MIXING_SHARE = 0.05  # of the progress bar, when a render follows


@dataclass(frozen=True)
class TaskState:
    stage: str  # "saving" | "mixing" | "rendering" | "done" | "failed" | "canceled"
    progress: float
    error: str = ""


def partial(path: str) -> str:
    """Where an output is written until it is whole: `x.audio.partial.wav` for `x.audio.wav`."""
    stem, suffix = os.path.splitext(path)
    return f"{stem}.partial{suffix}"


@contextlib.contextmanager
def no_file_preview() -> Any:
    """Saving the copy in the UI would render a thumbnail; the copy needs none."""
    prefs = bpy.context.preferences
    paths, dirty = prefs.filepaths, prefs.is_dirty
    before = paths.file_preview_type
    paths.file_preview_type = "NONE"
    try:
        yield
    finally:
        paths.file_preview_type = before
        prefs.is_dirty = dirty


def save_copy(path: Path) -> None:
    """The file as it is in memory, relative paths rewritten to stay valid from `path`."""
    with no_file_preview():
        result = bpy.ops.wm.save_as_mainfile(
            filepath=str(path), copy=True, relative_remap=True, compress=False
        )
    if "FINISHED" not in result:
        raise ExportError(f"Blender could not save a copy of this file to {path} for the export.")


def command(copy: Path, spec: Path) -> list[str]:
    """Blender itself with a clean setup; the `bpy` module (tests) has no binary, so its
    Python runs the script, which opens the copy."""
    if bpy.app.binary_path:
        return [
            bpy.app.binary_path,
            "--background",
            "--factory-startup",
            str(copy),
            "--python-exit-code",
            "1",
            "--python",
            str(SCRIPT),
            "--",
            str(spec),
        ]
    return [sys.executable, str(SCRIPT), "--", str(spec)]


def outputs_of(plan: ExportPlan) -> list[str]:
    """The files a task writes (a "switch" plan's video is the editor's own movie)."""
    if plan.placement == "overlay":
        return [plan.audio_path, plan.video_path]
    return [plan.audio_path]


def remove(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def log_of(plan: ExportPlan) -> Path:
    """The process' output, beside the job's files: kept when it explains a failure."""
    return Path(plan.audio_path).with_suffix(".log")


def write_spec(plan: ExportPlan, work: Path, copy: Path) -> Path:
    """What export_script.py needs, as JSON beside the copy."""
    video = {"video": None, "video_partial": None}
    if plan.placement == "overlay":
        video = {"video": plan.video_path, "video_partial": partial(plan.video_path)}
    spec = {
        "copy": str(copy),
        "status": str(work / "status.json"),
        "scene": plan.scene,
        "start": plan.start,
        "end": plan.end,
        "sounds": list(plan.sounds),
        "picture": list(plan.picture),
        "audio": plan.audio_path,
        "audio_partial": partial(plan.audio_path),
        "parent_pid": os.getpid(),
        **video,
    }
    path = work / "spec.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def spawn(args: list[str], log: Path, work: Path) -> subprocess.Popen[bytes]:
    """Start the process with its output in `log`, without a console window on Windows."""
    env = dict(os.environ)
    if not bpy.app.binary_path:  # keep the user's add-ons out of the bpy module's Blender
        env["BLENDER_USER_RESOURCES"] = str(work / "user")
    flags = subprocess.CREATE_NO_WINDOW if sys.platform == "win32" else 0
    with open(log, "wb") as out:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            creationflags=flags,
        )


def last_line(path: Path) -> str:
    """The last non-empty line of a log, read from its end (logs can be long)."""
    with contextlib.suppress(OSError), open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 4096))
        lines = [line.strip() for line in fh.read().decode("utf-8", "replace").splitlines()]
        return next((line for line in reversed(lines) if line), "")
    return ""


class ExportTask:
    """One job's export running in a background Blender: start(), then poll() from a timer."""

    def __init__(self, plan: ExportPlan, process: subprocess.Popen[bytes], work: Path) -> None:
        self.plan = plan
        self.process = process
        self.work = work
        self.status_path = work / "status.json"
        self.log_path = log_of(plan)
        self.final: TaskState | None = None

    @property
    def outputs(self) -> list[str]:
        return outputs_of(self.plan)

    @classmethod
    def start(cls, context: Any, plan: ExportPlan) -> ExportTask:
        """Save a copy of the file and start the background export on it; fast, and the
        editor's own settings are never touched."""
        work = Path(tempfile.mkdtemp(prefix=f"chamelaion-{file_stem(plan.reference_id)}-"))
        try:
            outputs = outputs_of(plan)
            remove([*outputs, *map(partial, outputs)])  # "done" must never see an older file
            copy = work / "copy.blend"
            save_copy(copy)
            process = spawn(command(copy, write_spec(plan, work, copy)), log_of(plan), work)
        except OSError as exc:
            shutil.rmtree(work, ignore_errors=True)
            raise ExportError(
                f"The background export could not start ({exc.strerror or exc}); "
                "check that the export folder is writable and try again."
            ) from exc
        except ExportError:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return cls(plan, process, work)

    def read_status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def poll(self) -> TaskState:
        """Where the export is, without waiting; the first final answer is kept."""
        if self.final is not None:
            return self.final
        code = self.process.poll()
        status = self.read_status()
        if code is None:
            return self.running(status)
        if code == 0 and status.get("stage") == "done" and all(map(os.path.isfile, self.outputs)):
            return self.finish(TaskState("done", 1.0))
        reason = status.get("error") or last_line(self.log_path) or f"exit status {code}"
        error = (
            f"Preparing strip '{self.plan.source_name}' for lip sync failed: "
            f"{reason.rstrip('.')}; the details are in {self.log_path}."
        )
        return self.finish(TaskState("failed", 0.0, error))

    def running(self, status: dict[str, Any]) -> TaskState:
        """ "saving" until the process reports (it is still loading the copy); a status of
        "done" while the process lives means Blender is closing: the last stage, at 100 %."""
        stage = status.get("stage")
        if stage == "done":
            return TaskState("rendering" if self.plan.placement == "overlay" else "mixing", 1.0)
        if stage == "rendering":
            done, total = status.get("done", 0), max(1, status.get("total", 1))
            return TaskState("rendering", MIXING_SHARE + (1 - MIXING_SHARE) * done / total)
        if stage == "mixing":
            return TaskState("mixing", MIXING_SHARE)
        return TaskState("saving", 0.0)

    def cancel(self) -> None:
        """Stop the process and remove everything it wrote; nothing to do once poll() gave a
        final state (a finished task's outputs belong to the caller)."""
        if self.final is not None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.finish(TaskState("canceled", 0.0))

    def finish(self, state: TaskState) -> TaskState:
        """Clean up once: the copy and status always; partial outputs unless done; the
        log unless it explains a failure; finished outputs when canceled."""
        self.final = state
        shutil.rmtree(self.work, ignore_errors=True)
        doomed = [partial(path) for path in self.outputs]
        if state.stage != "failed":
            doomed.append(str(self.log_path))
        if state.stage != "done":
            doomed.extend(self.outputs)
        remove(doomed)
        return state
