"""The add-on's operators: the pinned `chamelaion_lipsync` and `chamelaion_sync`, and the
per-job actions of the panel."""

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import bpy
from bpy.props import IntProperty

from bridge import discovery
from bridge.errors import InputError
from bridge.jobs import check_reference_id, new_reference_id, safe_reference_id

from . import compat, export, props, sync
from .worker import Request

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def auto_reference_id(strip: Any) -> str:
    """Readable and unique: file name, strip name, UTC time, a random suffix."""
    blend = Path(bpy.data.filepath).stem if bpy.data.filepath else "untitled"
    return new_reference_id(safe_reference_id(f"{blend}-{strip.name}", max_len=36))


def online_problem() -> str | None:
    """The add-on talks only to loopback; another bridge URL needs Blender's online access."""
    url = props.worker_settings().url or discovery.DEFAULT_URL
    if urlparse(url).hostname in LOOPBACK or bpy.app.online_access:
        return None
    return (
        f"The bridge URL {url} is not on this computer and Blender's online access is off; "
        "allow it in Preferences > System > Network or clear the bridge URL."
    )


class SEQUENCER_OT_chamelaion_lipsync(bpy.types.Operator):
    """Send the active movie strip and the dialogue under it to Chamelaion lip sync"""

    bl_idname = "sequencer.chamelaion_lipsync"
    bl_label = "Lip Sync"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = compat.sequencer_scene(context)
        compat.ensure_sequencer_scene(context, scene)
        options = scene.chamelaion
        try:
            if scene.sequence_editor is None:
                raise export.ExportError(
                    "This scene has no strips: add a movie strip and its dubbed dialogue first."
                )
            problem = online_problem()
            if problem:
                raise export.ExportError(problem)
            strip = export.picture_strip(scene)
            reference_id = options.reference_id.strip() or auto_reference_id(strip)
            check_reference_id(reference_id)
            if any(job.reference_id == reference_id for _, job in sync.file_jobs()):
                raise export.ExportError(
                    f"Reference ID '{reference_id}' is already used in this file; "
                    "clear the field or pick another."
                )
            result = export.export(context, scene, strip, reference_id)
        except (export.ExportError, InputError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        body: dict[str, Any] = {
            "video_path": result.video_path,
            "audio_path": result.audio_path,
            "reference_id": reference_id,
            "disable_active_speaker_detection": options.disable_active_speaker_detection,
        }
        if result.video_range:
            body["video_range"] = result.video_range
        if bpy.data.filepath:
            body["output_dir"] = bpy.path.abspath("//chamelaion")
        job = options.jobs.add()
        job.reference_id = reference_id
        job.created = repr(time.time())
        job.source_name, job.source_tag = strip.name, export.tag_of(strip)
        job.frame_start, job.frame_duration = result.frame_start, result.frame_duration
        job.channel, job.fps = result.channel, result.fps
        job.mute_source = options.mute_source
        job.request_body = json.dumps(body)
        options.active_job = len(options.jobs) - 1
        sync.send(scene, job)
        self.report({"INFO"}, f"Lip sync queued as {reference_id}.")
        return {"FINISHED"}


class SEQUENCER_OT_chamelaion_sync(bpy.types.Operator):
    """Update this file's lip-sync jobs from the bridge and import finished takes"""

    bl_idname = "sequencer.chamelaion_sync"
    bl_label = "Sync Lip-Sync Jobs"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        for sentence in sync.tick():
            self.report({"ERROR"}, sentence)
        return {"FINISHED"}


class _JobOperator:
    index: IntProperty(options={"HIDDEN"})

    def job(self, context: bpy.types.Context) -> Any:
        jobs = compat.sequencer_scene(context).chamelaion.jobs
        return jobs[self.index] if 0 <= self.index < len(jobs) else None


class SEQUENCER_OT_chamelaion_cancel(_JobOperator, bpy.types.Operator):
    """Cancel this lip-sync job"""

    bl_idname = "sequencer.chamelaion_cancel"
    bl_label = "Cancel Lip-Sync Job"

    def execute(self, context: bpy.types.Context) -> set[str]:
        job = self.job(context)
        if job is None or job.is_final:
            return {"CANCELLED"}
        if not job.job_id:
            job.state, job.error = "canceled", ""
            return {"FINISHED"}
        sync.worker().submit(Request("cancel", job.job_id, tag=job.job_id))
        return {"FINISHED"}


class SEQUENCER_OT_chamelaion_retry(_JobOperator, bpy.types.Operator):
    """Run this failed or canceled lip-sync job again"""

    bl_idname = "sequencer.chamelaion_retry"
    bl_label = "Retry Lip-Sync Job"

    def execute(self, context: bpy.types.Context) -> set[str]:
        job = self.job(context)
        if job is None or job.state not in ("failed", "canceled"):
            return {"CANCELLED"}
        job.imported, job.warning = False, ""
        if job.job_id:
            sync.worker().submit(Request("retry", job.job_id, tag=job.job_id))
        else:
            sync.send(compat.sequencer_scene(context), job)
        return {"FINISHED"}


class SEQUENCER_OT_chamelaion_select_result(_JobOperator, bpy.types.Operator):
    """Select the take this job put on the timeline"""

    bl_idname = "sequencer.chamelaion_select_result"
    bl_label = "Select Take"

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = compat.sequencer_scene(context)
        job = self.job(context)
        strip = compat.all_strips(scene.sequence_editor).get(job.result_name) if job else None
        if strip is None:
            self.report({"ERROR"}, "That take is not on the timeline any more.")
            return {"CANCELLED"}
        for other in compat.all_strips(scene.sequence_editor):
            other.select = False
        strip.select = True
        scene.sequence_editor.active_strip = strip
        return {"FINISHED"}


classes = (
    SEQUENCER_OT_chamelaion_lipsync,
    SEQUENCER_OT_chamelaion_sync,
    SEQUENCER_OT_chamelaion_cancel,
    SEQUENCER_OT_chamelaion_retry,
    SEQUENCER_OT_chamelaion_select_result,
)
