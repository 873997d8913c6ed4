"""The add-on's operators: the pinned `chamelaion_lipsync` and `chamelaion_sync`, the per-job
actions of the panel and switching a strip's takes."""

from __future__ import annotations

import uuid
from typing import Any

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty

from chamelaion_client import FINAL_STATES, RETRYABLE_STATES
from chamelaion_client.layout import DEFAULT_URL, is_loopback_url

from . import batch, compat, export, props, sync, takes
from .background import BatchExport, ExportTask
from .takes import PlacementProblem
from .worker import Request

OFFICIAL_API = "https://api.chamelaion.com/api"
AUTO_NAME_LENGTH = 36  # of the file and strip names in a made reference_id


def auto_reference_id(strip: Any) -> str:
    """Readable and unique: file and strip names and a random suffix, as free text that the
    bridge spells as a valid id (the job's row then shows the bridge's spelling)."""
    blend = bpy.path.display_name_from_filepath(bpy.data.filepath) or "untitled"
    return f"{blend}-{strip.name}"[:AUTO_NAME_LENGTH] + f"-{uuid.uuid4().hex[:8]}"


def online_problem() -> str | None:
    """Blender's rule for extensions: nothing goes online while online access is off. The
    bridge on loopback is local; the API it talks to (the emulator, or the service) may not be."""
    if compat.online_access():
        return None
    bridge_url = props.worker_settings().url or DEFAULT_URL
    if not is_loopback_url(bridge_url):
        return (
            f"The bridge URL {bridge_url} is not on this computer and Blender's online access "
            "is off; allow it in Preferences > System > Network or clear the bridge URL."
        )
    api = props.worker_settings().api_base or sync.status.get("api_base") or OFFICIAL_API
    if not is_loopback_url(api):
        return (
            "Lip Sync uploads the footage to the Chamelaion service, and Blender's online access "
            "is off; turn on Allow Online Access in Preferences > System > Network (the local "
            "emulator works without it)."
        )
    return None


def request_body(plan: export.ExportPlan, options: Any, strip: Any, cover: Any) -> dict:
    """The bridge job, carrying in `client` all it takes to place the take later and the
    seconds it bills."""
    overlay = plan.placement == "overlay"
    body: dict[str, Any] = {
        "video_path": plan.video_path,
        "audio_path": plan.audio_path,
        "reference_id": plan.reference_id,
        "disable_active_speaker_detection": options.disable_active_speaker_detection,
        "client": {
            "file": sync.file_id(create=True),
            "scene": plan.scene,
            "name": strip.name,
            "placement": plan.placement,
            "source": plan.source_tag,
            "cover": plan.cover_tag if overlay else "",
            "cover_name": cover.name if overlay else "",
            "start": plan.start,
            "end": plan.end,
            "first": plan.start - cover.frame_final_start if overlay else plan.source_first,
            "seconds": round(batch.plan_seconds(plan), 3),
        },
    }
    if plan.video_range:
        body["video_range"] = plan.video_range
    if bpy.data.filepath:
        body["output_dir"] = bpy.path.abspath("//chamelaion")
    return body


def planned(
    context: Any, scene: Any, strip: Any, reference_id: str, rules: batch.Rules | None = None
) -> tuple[export.ExportPlan, dict[str, Any]]:
    """One job on `strip` as it shows its original: its plan and its request. With a batch's
    `rules`, a muted strip is refused and the rules' sounds and movie rates are used."""
    editor = scene.sequence_editor
    options: dict[str, Any] = {}
    if rules is not None:
        rules.check_muted(strip)
        options = {"recorded_rate": True, "sounds": rules.sounds, "effects": rules.effects}
    with takes.original_shown(editor, strip):
        plan = export.plan(context, scene, strip, reference_id, **options)
    cover = takes.find_tagged(editor, plan.cover_tag)
    return plan, request_body(plan, scene.chamelaion, strip, cover)


def export_again(context: Any, jobs: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """Jobs whose export failed or was canceled (nothing reached the bridge) planned again
    from their strips as they are now, under the same reference IDs and in the same batch,
    and exported by one background Blender; how many went, and why the others could not."""
    again: list[tuple[export.ExportPlan, dict[str, Any]]] = []
    problems: list[str] = []
    for job in jobs:
        client = job["client"]
        scene = bpy.data.scenes.get(client.get("scene", ""))
        editor = scene.sequence_editor if scene is not None else None
        strip = takes.find_tagged(editor, client.get("source", "")) if editor else None
        if strip is None:
            problems.append(
                f"Strip '{client.get('name', '')}' of job {job['reference_id']} is no longer "
                "in the file, so it cannot be exported again; run Lip Sync on the strip now."
            )
            continue
        try:
            plan, body = planned(context, scene, strip, job["reference_id"])
        except (export.ExportError, PlacementProblem) as exc:
            problems.append(str(exc))
            continue
        body["client"]["batch"] = client.get("batch", {})
        again.append((plan, body))
    if again:
        label = again[0][1]["client"]["batch"].get("label", "")
        tasks = BatchExport.start([plan for plan, _ in again], label).tasks()
        for (plan, body), task in zip(again, tasks, strict=True):
            sync.start_job(plan.reference_id, task, body)
    return len(again), problems


def check_scene(scene: Any) -> None:
    """What every Lip Sync needs before any strip is looked at."""
    if scene.sequence_editor is None:
        raise export.ExportError(
            "This scene has no strips: add a movie strip and its dubbed dialogue first."
        )
    problem = online_problem()
    if problem:
        raise export.ExportError(problem)


def check_unused(reference_id: str) -> None:
    if reference_id in sync.known_references():
        raise export.ExportError(
            f"Reference ID '{reference_id}' is already used in this file; "
            "clear the field or pick another."
        )


def confirm_above() -> float:
    prefs = props.preferences()
    return prefs.confirm_above if prefs else batch.DEFAULT_CONFIRM_ABOVE


class SEQUENCER_OT_chamelaion_lipsync(bpy.types.Operator):
    """Send the active picture strip and the dialogue under it to Chamelaion lip sync; with
    several picture strips selected, each one as a shot of one batch"""

    bl_idname = "sequencer.chamelaion_lipsync"
    bl_label = "Lip Sync"
    bl_options = {"REGISTER", "UNDO"}

    def invoke(self, context: bpy.types.Context, event: Any) -> set[str]:
        """A batch above the preference's limit of billable seconds asks first."""
        scene = compat.sequencer_scene(context)
        shots = batch.selected_pictures(scene.sequence_editor) if scene.sequence_editor else []
        if len(shots) < 2:
            return self.execute(context)
        found = batch.estimate(scene, shots)
        if batch.needs_confirmation(len(shots), found.seconds, confirm_above()):
            return context.window_manager.invoke_confirm(
                self,
                event,
                title="Lip Sync",
                message=batch.confirmation(found.shots, found.seconds),
                confirm_text="Send",
            )
        return self.execute(context)

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = compat.sequencer_scene(context)
        compat.ensure_sequencer_scene(context, scene)
        try:
            check_scene(scene)
            shots = batch.selected_pictures(scene.sequence_editor)
            if len(shots) > 1:
                return self.send_batch(context, scene, shots)
            return self.send_one(context, scene)
        except (export.ExportError, PlacementProblem) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}

    def send_one(self, context: Any, scene: Any) -> set[str]:
        """The active strip as one job."""
        strip = takes.original_of(scene.sequence_editor, export.picture_strip(scene))
        reference_id = scene.chamelaion.reference_id.strip() or auto_reference_id(strip)
        check_unused(reference_id)
        plan, body = planned(context, scene, strip, reference_id)
        task = ExportTask.start(context, plan)
        sync.start_job(reference_id, task, body)
        sync.keep_file_id()
        if plan.warning:
            self.report({"WARNING"}, plan.warning)
        self.report({"INFO"}, f"Lip sync of '{strip.name}' queued as {reference_id}.")
        return {"FINISHED"}

    def send_batch(self, context: Any, scene: Any, shots: list[Any]) -> set[str]:
        """One job per strip with dialogue under it, exported by one background Blender; a
        strip that cannot be sent is skipped with its sentence and the others go."""
        editor = scene.sequence_editor
        base = scene.chamelaion.reference_id.strip()
        jobs: list[tuple[export.ExportPlan, dict[str, Any]]] = []
        skipped: list[str] = []
        numbered = [f"{base}-{number:02d}" if base else "" for number in range(1, len(shots) + 1)]
        for reference_id in filter(None, numbered):
            check_unused(reference_id)  # before anything is planned: the batch is refused
        rules = batch.Rules.of(scene, shots)
        for shot, reference_id in zip(shots, numbered, strict=True):
            try:
                strip = takes.original_of(editor, shot)
                reference_id = reference_id or auto_reference_id(strip)
                jobs.append(planned(context, scene, strip, reference_id, rules))
            except (export.ExportError, PlacementProblem) as exc:
                skipped.append(batch.skip_note(shot, str(exc)))
        for note in skipped:
            self.report({"WARNING"}, note)
        if not jobs:
            raise export.ExportError(
                f"None of the {len(shots)} selected strips can be sent (each is explained "
                "above); fix them and run Lip Sync again."
            )
        label = batch.label_now()
        record = batch.record(label, skipped)
        tasks = BatchExport.start([plan for plan, _ in jobs], label).tasks()
        for number, ((plan, body), task) in enumerate(zip(jobs, tasks, strict=True), 1):
            body["client"]["batch"] = {**record, "shot": number}
            sync.start_job(plan.reference_id, task, body)
            if plan.warning:
                self.report({"WARNING"}, plan.warning)
        sync.keep_file_id()
        seconds = sum(batch.plan_seconds(plan) for plan, _ in jobs)
        self.report(
            {"INFO"},
            f"Lip sync batch {label}: {len(jobs)} shots queued, {seconds:.1f} s of billable "
            f"media" + (f", {len(skipped)} skipped." if skipped else "."),
        )
        return {"FINISHED"}


class SEQUENCER_OT_chamelaion_sync(bpy.types.Operator):
    """Update this file's lip-sync jobs from the bridge and place finished takes"""

    bl_idname = "sequencer.chamelaion_sync"
    bl_label = "Sync Lip-Sync Jobs"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        for level, sentence in sync.tick():
            self.report({level}, sentence)
        return {"FINISHED"}


class SEQUENCER_OT_chamelaion_report(bpy.types.Operator):
    """Show a lip-sync message in the status bar"""

    bl_idname = "sequencer.chamelaion_report"
    bl_label = "Lip-Sync Message"
    bl_options = {"INTERNAL"}

    level: EnumProperty(items=[("ERROR", "Error", ""), ("WARNING", "Warning", "")])
    message: StringProperty()

    def execute(self, context: bpy.types.Context) -> set[str]:
        self.report({self.level}, self.message)
        return {"FINISHED"}


class _JobOperator:
    reference_id: StringProperty(options={"HIDDEN"})


class SEQUENCER_OT_chamelaion_cancel(_JobOperator, bpy.types.Operator):
    """Cancel this lip-sync job (a request the service already runs is still billed)"""

    bl_idname = "sequencer.chamelaion_cancel"
    bl_label = "Cancel Lip-Sync Job"

    def execute(self, context: bpy.types.Context) -> set[str]:
        export_job = sync.memory.exports.get(self.reference_id)
        if export_job is not None:
            export_job.task.cancel()
            return {"FINISHED"}
        if self.reference_id in sync.memory.sending:
            # The worker serves in order: this reaches the bridge after the job's create.
            sync.worker().submit(Request("cancel", self.reference_id, tag=self.reference_id))
            return {"FINISHED"}
        job = sync.memory.rows.get(self.reference_id)
        if job is None or job.get("state") in FINAL_STATES:
            return {"CANCELLED"}
        sync.worker().submit(Request("cancel", job["id"], tag=self.reference_id))
        return {"FINISHED"}


class SEQUENCER_OT_chamelaion_retry(_JobOperator, bpy.types.Operator):
    """Run this failed or canceled lip-sync job again"""

    bl_idname = "sequencer.chamelaion_retry"
    bl_label = "Retry Lip-Sync Job"

    def execute(self, context: bpy.types.Context) -> set[str]:
        problem = sync.retry(self.reference_id)
        if problem:
            self.report({"ERROR"}, problem)
            return {"CANCELLED"}
        return {"FINISHED"}


class SEQUENCER_OT_chamelaion_retry_failed(bpy.types.Operator):
    """Run this batch's failed and canceled jobs again"""

    bl_idname = "sequencer.chamelaion_retry_failed"
    bl_label = "Retry Failed"

    batch_id: StringProperty(options={"HIDDEN"})

    def execute(self, context: bpy.types.Context) -> set[str]:
        failed = [
            job
            for job in sync.rows()
            if batch.batch_of(job).get("id") == self.batch_id
            and job.get("state") in RETRYABLE_STATES
        ]
        sent = [job for job in failed if not job.get("local")]
        retried = [job for job in sent if sync.retry(job["reference_id"]) is None]
        try:
            exported, problems = export_again(context, [j for j in failed if j.get("local")])
        except export.ExportError as exc:
            exported, problems = 0, [str(exc)]
        for problem in problems:
            self.report({"WARNING"}, problem)
        count = len(retried) + exported
        if not count:
            self.report(
                {"ERROR"},
                "This batch has no failed or canceled job that can be sent again; run Lip Sync "
                "on its strips to export them anew.",
            )
            return {"CANCELLED"}
        self.report({"INFO"}, f"Retrying {count} of the batch's jobs.")
        return {"FINISHED"}


class SEQUENCER_OT_chamelaion_place_take(_JobOperator, bpy.types.Operator):
    """Place this finished take where its source strip is now"""

    bl_idname = "sequencer.chamelaion_place_take"
    bl_label = "Place Take"

    def execute(self, context: bpy.types.Context) -> set[str]:
        job = sync.memory.rows.get(self.reference_id)
        if job is None or job.get("state") != "completed":
            self.report({"ERROR"}, "Only a completed job has a take to place.")
            return {"CANCELLED"}
        news: sync.News = []
        placed = sync.place(job, news)
        for level, sentence in news:
            self.report({level}, sentence)
        if not placed:
            return {"CANCELLED"}
        return {"FINISHED"}


class SEQUENCER_OT_chamelaion_select_take(_JobOperator, bpy.types.Operator):
    """Select the strip that holds this take"""

    bl_idname = "sequencer.chamelaion_select_take"
    bl_label = "Select Take"

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = compat.sequencer_scene(context)
        editor = scene.sequence_editor
        strip = takes.showing(editor, self.reference_id) if editor else None
        if strip is None:
            self.report({"ERROR"}, "That take is not on the timeline; click Place Take.")
            return {"CANCELLED"}
        for other in compat.all_strips(editor):
            other.select = False
        strip.select = True
        editor.active_strip = strip
        return {"FINISHED"}


class SEQUENCER_OT_chamelaion_switch_take(bpy.types.Operator):
    """Show this take on the active strip (take 0 is the original)"""

    bl_idname = "sequencer.chamelaion_switch_take"
    bl_label = "Switch Take"
    bl_options = {"REGISTER", "UNDO"}

    index: IntProperty(min=0)

    def execute(self, context: bpy.types.Context) -> set[str]:
        scene = compat.sequencer_scene(context)
        strip = takes.holder(scene.sequence_editor) if scene.sequence_editor else None
        if strip is None:
            self.report({"ERROR"}, "Make a strip with lip-sync takes active first.")
            return {"CANCELLED"}
        try:
            takes.switch(scene.sequence_editor, strip, self.index)
        except PlacementProblem as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


class SEQUENCER_OT_chamelaion_clear_finished(bpy.types.Operator):
    """Remove this file's finished jobs from the list; their takes and files stay"""

    bl_idname = "sequencer.chamelaion_clear_finished"
    bl_label = "Clear Finished"

    def execute(self, context: bpy.types.Context) -> set[str]:
        sync.forget_unsent()
        held = sync.held_references()  # a take no strip holds waits for Place Take: kept
        for job in sync.memory.rows.values():
            state = job.get("state")
            if state in FINAL_STATES and (state != "completed" or job["reference_id"] in held):
                sync.worker().submit(Request("clear", job["id"], tag=job["reference_id"]))
        return {"FINISHED"}


classes = (
    SEQUENCER_OT_chamelaion_lipsync,
    SEQUENCER_OT_chamelaion_sync,
    SEQUENCER_OT_chamelaion_report,
    SEQUENCER_OT_chamelaion_cancel,
    SEQUENCER_OT_chamelaion_retry,
    SEQUENCER_OT_chamelaion_retry_failed,
    SEQUENCER_OT_chamelaion_place_take,
    SEQUENCER_OT_chamelaion_select_take,
    SEQUENCER_OT_chamelaion_switch_take,
    SEQUENCER_OT_chamelaion_clear_finished,
)
