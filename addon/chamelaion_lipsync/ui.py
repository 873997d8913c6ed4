"""The Sequencer sidebar's "Lip Sync" tab."""

from __future__ import annotations

import time

import bpy

from . import compat, sync

STATE_ICONS = {
    "completed": "CHECKMARK",
    "failed": "ERROR",
    "canceled": "CANCEL",
}


def elapsed(job: bpy.types.PropertyGroup) -> str:
    try:
        start = float(job.created)
        end = float(job.finished) if job.finished else time.time()
    except ValueError:
        return ""
    seconds = max(0, int(end - start))
    return f"{seconds // 60}:{seconds % 60:02d}"


class SEQUENCER_PT_chamelaion(bpy.types.Panel):
    bl_label = "Chamelaion Lip Sync"
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "Lip Sync"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        scene = compat.sequencer_scene(context)
        options = scene.chamelaion
        row = layout.row()
        row.label(text=sync.status["text"], icon="CHECKMARK" if sync.status["ok"] else "INFO")
        col = layout.column()
        col.prop(options, "disable_active_speaker_detection")
        col.prop(options, "mute_source")
        col.prop(options, "reference_id")
        layout.operator("sequencer.chamelaion_lipsync", icon="SPEAKER")
        if not options.jobs:
            return
        layout.separator()
        layout.label(text="Jobs in this file")
        for index, job in reversed(list(enumerate(options.jobs))):
            box = layout.box()
            head = box.row()
            head.label(text=job.reference_id, icon=STATE_ICONS.get(job.state, "TIME"))
            state = job.state
            if job.state == "uploading":
                state += f" {job.progress:.0%}"
            if job.state == "completed" and not job.imported:
                state += ", importing"
            head.label(text=f"{state}  {elapsed(job)}")
            for text in (job.error, job.warning):
                if text:
                    box.label(text=text, icon="ERROR")
            if job.note and not job.is_final:
                box.label(text=job.note, icon="INFO")
            actions = box.row(align=True)
            if not job.is_final:
                actions.operator("sequencer.chamelaion_cancel", text="Cancel").index = index
            if job.state in ("failed", "canceled"):
                actions.operator("sequencer.chamelaion_retry", text="Retry").index = index
            if job.result_name:
                op = actions.operator("sequencer.chamelaion_select_result", text="Select Take")
                op.index = index
        layout.operator("sequencer.chamelaion_sync", text="Refresh", icon="FILE_REFRESH")
