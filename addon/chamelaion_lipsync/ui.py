"""The Sequencer sidebar's "Lip Sync" tab: the bridge's status, Lip Sync (with what a batch of
the selected strips would bill), the active strip's takes and this file's jobs, a batch's jobs
in one box with its totals, each sentence shown whole."""

from __future__ import annotations

import textwrap
import time
from typing import Any

import bpy

from chamelaion_client import FINAL_STATES, RETRYABLE_STATES

from . import batch, compat, sync, takes

STATE_ICONS = {
    "completed": "CHECKMARK",
    "failed": "ERROR",
    "canceled": "CANCEL",
}
PIXELS_PER_CHARACTER = 7


def elapsed(job: dict[str, Any]) -> str:
    start = sync.created_seconds(job)
    if not start:
        return ""
    seconds = max(0, int(time.time() - start))
    return f"{seconds // 60}:{seconds % 60:02d}"


def sentence(layout: Any, context: Any, text: str, icon: str) -> None:
    """A whole sentence, wrapped to the sidebar's width (a label alone would clip it)."""
    width = max(24, int(context.region.width / PIXELS_PER_CHARACTER)) if context.region else 60
    column = layout.column(align=True)
    for number, line in enumerate(textwrap.wrap(text, width)):
        column.label(text=line, icon=icon if number == 0 else "BLANK1")


def state_text(job: dict[str, Any]) -> str:
    state = job.get("state", "")
    if state in ("uploading", "mixing", "rendering"):
        state += f" {float(job.get('progress') or 0.0):.0%}"
    return f"{state}  {elapsed(job)}" if state not in FINAL_STATES else state


class SEQUENCER_PT_chamelaion(bpy.types.Panel):
    bl_label = "Chamelaion Lip Sync"
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "Lip Sync"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        scene = compat.sequencer_scene(context)
        options = scene.chamelaion
        sentence(layout, context, sync.status["text"], "CHECKMARK" if sync.status["ok"] else "INFO")
        col = layout.column()
        col.prop(options, "disable_active_speaker_detection")
        col.prop(options, "reference_id")
        layout.operator("sequencer.chamelaion_lipsync", icon="SPEAKER")
        editor = scene.sequence_editor
        if editor is not None:
            self.draw_selection(layout, scene, editor)
            self.draw_takes(layout, editor)
        self.draw_jobs(layout, context, editor)

    @staticmethod
    def draw_selection(layout: Any, scene: Any, editor: Any) -> None:
        """What Lip Sync would send as a batch now, before anything is paid."""
        shots = batch.selected_pictures(editor)
        if len(shots) > 1:
            layout.label(text=batch.selection_text(batch.estimate(scene, shots)), icon="INFO")

    @staticmethod
    def draw_takes(layout: Any, editor: Any) -> None:
        strip = takes.holder(editor)
        if strip is None:
            return
        layout.separator()
        layout.label(text=f"Takes of '{strip.name}'")
        column = layout.column(align=True)
        shown = takes.active_index(strip)
        for index, take in enumerate(takes.takes_of(strip)):
            text = take.reference_id or "Original"
            op = column.operator(
                "sequencer.chamelaion_switch_take", text=text, depress=index == shown
            )
            op.index = index

    @staticmethod
    def draw_jobs(layout: Any, context: Any, editor: Any) -> None:
        jobs = list(sync.rows())
        if not jobs:
            return
        held = takes.references_in(editor) if editor else set()
        layout.separator()
        layout.label(text="Jobs in this file")
        for group in batch.groups(jobs):
            if group.boxed:
                draw_batch(layout.box(), context, group, held)
            else:
                draw_job(layout.box(), context, group.jobs[0], held)
        row = layout.row(align=True)
        row.operator("sequencer.chamelaion_sync", text="Refresh", icon="FILE_REFRESH")
        row.operator("sequencer.chamelaion_clear_finished", icon="TRASH")


def totals_text(totals: dict[str, Any]) -> tuple[str, str]:
    """The batch's two lines of totals."""
    size = f"{totals['shots']} shots, {totals['seconds']:.1f} s billable"
    counts = f"{totals['done']} done, {totals['running']} running, {totals['failed']} failed"
    if totals["skipped"]:
        counts += f", {totals['skipped']} skipped"
    return size, counts


def draw_batch(box: Any, context: Any, group: batch.Group, held: set[str]) -> None:
    """One batch: its label and totals, the strips it skipped, Retry Failed, then its jobs."""
    totals = group.totals()
    size, counts = totals_text(totals)
    box.label(text=f"Batch {group.batch.get('label', '')}", icon="SEQ_STRIP_DUPLICATE")
    box.label(text=size)
    box.label(text=counts)
    for note in group.batch.get("skipped", []):
        sentence(box, context, note, "INFO")
    if totals["failed"]:
        op = box.operator("sequencer.chamelaion_retry_failed", icon="FILE_REFRESH")
        op.batch_id = group.batch["id"]
    for job in group.jobs:
        draw_job(box.box(), context, job, held)


def draw_job(box: Any, context: Any, job: dict[str, Any], held: set[str]) -> None:
    """One job's row: its state, its sentences and what can be done with it."""
    ref, state = job["reference_id"], job.get("state", "")
    head = box.row()
    head.label(text=ref, icon=STATE_ICONS.get(state, "TIME"))
    head.label(text=state_text(job))
    for text in (job.get("error"), job.get("problem"), job.get("warning")):
        if text:
            sentence(box, context, text, "ERROR")
    if job.get("note") and state not in FINAL_STATES:
        sentence(box, context, job["note"], "INFO")
    actions = box.row(align=True)
    if state not in FINAL_STATES:
        actions.operator("sequencer.chamelaion_cancel", text="Cancel").reference_id = ref
    if state in RETRYABLE_STATES and not job.get("local"):
        actions.operator("sequencer.chamelaion_retry", text="Retry").reference_id = ref
    if state == "completed" and ref in held:
        op = actions.operator("sequencer.chamelaion_select_take", text="Select Take")
        op.reference_id = ref
    elif state == "completed" and ref in sync.memory.placed:
        op = actions.operator("sequencer.chamelaion_place_take", text="Place Take")
        op.reference_id = ref
