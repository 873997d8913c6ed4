"""Run the exports (mixdown, render) of a batch of jobs in one background Blender, never on
the main thread.

The main thread only saves one copy of the file and starts one process; poll() reads the small
status file the process rewrites, cancel() skips a job or stops the process. Outputs appear
whole or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
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


def batch_log(plans: list[ExportPlan], label: str) -> Path:
    """A batch's one log, named after the batch (its label, as the panel shows it), not after
    its first shot: beside the jobs' files of a saved file, else in the temporary folder that
    holds each job's own."""
    folder = Path(plans[0].audio_path).parent
    if not bpy.data.filepath:
        folder = folder.parent
    name = re.sub(r"\W+", "-", label or time.strftime("%d %b %H:%M:%S")).strip("-")
    return folder / f"batch-{name}-{uuid.uuid4().hex[:4]}.log"


def job_spec(plan: ExportPlan) -> dict[str, Any]:
    """What export_script.py needs of one job."""
    video = {"video": None, "video_partial": None}
    if plan.placement == "overlay":
        video = {"video": plan.video_path, "video_partial": partial(plan.video_path)}
    return {
        "scene": plan.scene,
        "start": plan.start,
        "end": plan.end,
        "sounds": list(plan.sounds),
        "picture": list(plan.picture),
        "audio": plan.audio_path,
        "audio_partial": partial(plan.audio_path),
        "check_rate": {"strip": plan.source_name, "fps": plan.check_rate}
        if plan.check_rate
        else None,
        **video,
    }


def write_spec(plans: list[ExportPlan], work: Path, copy: Path) -> Path:
    """The batch as JSON beside the copy; a file `cancel-N` there tells the process to skip
    job N."""
    spec = {
        "copy": str(copy),
        "status": str(work / "status.json"),
        "cancel_prefix": str(work / "cancel-"),
        "parent_pid": os.getpid(),
        "jobs": [job_spec(plan) for plan in plans],
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


FINAL = ("done", "failed", "canceled")


class BatchExport:
    """A batch's exports in one background Blender, one job after the other: one saved copy,
    one process. Each job is final as soon as the process has moved past it (its files are
    whole then), so it can go to the bridge while the others are still being made."""

    started = 0  # processes started in this session (one per batch)

    def __init__(
        self, plans: list[ExportPlan], process: subprocess.Popen[bytes], work: Path, log: Path
    ) -> None:
        self.plans = plans
        self.process = process
        self.work = work
        self.log_path = log
        self.status_path = work / "status.json"
        self.final: dict[int, TaskState] = {}
        self._seen: tuple[int, int, int] | None = None
        self._jobs: list[dict[str, Any]] = []

    @classmethod
    def start(cls, plans: list[ExportPlan], label: str = "") -> BatchExport:
        """Save one copy of the file and start one background export of every plan on it;
        fast, and the editor's own settings are never touched. `label`: the batch's, which
        names its log (a single job's log is named after the job)."""
        log = log_of(plans[0]) if len(plans) == 1 else batch_log(plans, label)
        work = Path(tempfile.mkdtemp(prefix=f"chamelaion-{file_stem(plans[0].reference_id)}-"))
        try:
            outputs = [path for plan in plans for path in outputs_of(plan)]
            remove([*outputs, *map(partial, outputs)])  # "done" must never see an older file
            copy = work / "copy.blend"
            save_copy(copy)
            process = spawn(command(copy, write_spec(plans, work, copy)), log, work)
        except OSError as exc:
            shutil.rmtree(work, ignore_errors=True)
            raise ExportError(
                f"The background export could not start ({exc.strerror or exc}); "
                "check that the export folder is writable and try again."
            ) from exc
        except ExportError:
            shutil.rmtree(work, ignore_errors=True)
            raise
        cls.started += 1
        return cls(plans, process, work, log)

    def tasks(self) -> list[ExportTask]:
        return [ExportTask(self, index) for index in range(len(self.plans))]

    def read_status(self) -> list[dict[str, Any]]:
        """The jobs' entries of the status file, read again only when it changed."""
        try:
            info = self.status_path.stat()
            seen = (info.st_ino, info.st_mtime_ns, info.st_size)  # each write is a new file
            if seen != self._seen:
                jobs = json.loads(self.status_path.read_text(encoding="utf-8"))["jobs"]
                self._seen, self._jobs = seen, jobs
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return self._jobs

    def poll(self, index: int) -> TaskState:
        """Where job `index` is, without waiting; its first final answer is kept."""
        if index in self.final:
            return self.final[index]
        code = self.process.poll()
        jobs = self.read_status()
        entry = jobs[index] if index < len(jobs) else {}
        if code is not None:
            for other in range(len(self.plans)):
                if other not in self.final:
                    self.settle(other, jobs[other] if other < len(jobs) else {}, code)
            self.close()
            return self.final[index]
        moved_on = any(later.get("stage") for later in jobs[index + 1 :])
        if entry.get("stage") in FINAL and moved_on:
            return self.settle(index, entry, None)
        return self.running(index, entry, jobs)

    def settle(self, index: int, entry: dict[str, Any], code: int | None) -> TaskState:
        """Job `index` is over: done when its files are whole, else failed with a sentence."""
        plan = self.plans[index]
        if entry.get("stage") == "done" and all(map(os.path.isfile, outputs_of(plan))):
            return self.finish(index, TaskState("done", 1.0))
        reason = entry.get("error") or last_line(self.log_path) or f"exit status {code}"
        error = (
            f"Preparing strip '{plan.source_name}' for lip sync failed: "
            f"{reason.rstrip('.')}; the details are in {self.log_path}."
        )
        return self.finish(index, TaskState("failed", 0.0, error))

    def running(self, index: int, entry: dict[str, Any], jobs: list[dict[str, Any]]) -> TaskState:
        """ "saving" until the process reports (it is still loading the copy), "waiting" while
        it works on the jobs before; a final stage while the process lives means Blender is
        closing: the last stage, at 100 %."""
        stage = entry.get("stage")
        if stage in FINAL:
            overlay = self.plans[index].placement == "overlay"
            return TaskState("rendering" if overlay else "mixing", 1.0)
        if stage == "rendering":
            done, total = entry.get("done", 0), max(1, entry.get("total", 1))
            return TaskState("rendering", MIXING_SHARE + (1 - MIXING_SHARE) * done / total)
        if stage == "mixing":
            return TaskState("mixing", MIXING_SHARE)
        return TaskState("waiting" if any(j.get("stage") for j in jobs) else "saving", 0.0)

    def cancel(self, index: int) -> None:
        """Job `index` is skipped (the process is stopped when no other job is left); nothing
        to do once it is final (a finished job's outputs belong to the caller)."""
        if index in self.final:
            return
        if any(other not in self.final for other in range(len(self.plans)) if other != index):
            (self.work / f"cancel-{index}").touch()
            self.finish(index, TaskState("canceled", 0.0))
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.finish(index, TaskState("canceled", 0.0))
        self.close()

    def finish(self, index: int, state: TaskState) -> TaskState:
        """Keep the job's final state; its partial outputs go, and its outputs unless done."""
        self.final[index] = state
        outputs = outputs_of(self.plans[index])
        remove([*map(partial, outputs), *(outputs if state.stage != "done" else [])])
        return state

    def close(self) -> None:
        """Every job is final and the process gone: the copy and status go, and the log
        unless it explains a failure; a canceled job's outputs written meanwhile go too."""
        shutil.rmtree(self.work, ignore_errors=True)
        for index, state in self.final.items():
            if state.stage == "canceled":
                remove(outputs_of(self.plans[index]))
        if all(state.stage != "failed" for state in self.final.values()):
            remove([str(self.log_path)])


class ExportTask:
    """One job's export, running in its batch's background Blender: poll() from a timer."""

    def __init__(self, batch: BatchExport, index: int) -> None:
        self.batch = batch
        self.index = index

    @classmethod
    def start(cls, context: Any, plan: ExportPlan) -> ExportTask:
        """A batch of one."""
        return BatchExport.start([plan]).tasks()[0]

    @property
    def plan(self) -> ExportPlan:
        return self.batch.plans[self.index]

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.batch.process

    @property
    def work(self) -> Path:
        return self.batch.work

    @property
    def log_path(self) -> Path:
        return self.batch.log_path

    @property
    def outputs(self) -> list[str]:
        return outputs_of(self.plan)

    def poll(self) -> TaskState:
        return self.batch.poll(self.index)

    def cancel(self) -> None:
        self.batch.cancel(self.index)
