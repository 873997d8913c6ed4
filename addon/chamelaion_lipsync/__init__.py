"""Chamelaion Lip Sync for Blender's Video Sequence Editor.

UI, export and import only: the bundled bridge (a local daemon) owns every job, so the
editor keeps working, and a file closed meanwhile gets its takes when it opens again.
"""

from __future__ import annotations

import bpy

from . import operators, props, sync, ui

_classes = (*operators.classes, ui.SEQUENCER_PT_chamelaion)


def register() -> None:
    props.register()
    for cls in _classes:
        bpy.utils.register_class(cls)
    bpy.app.handlers.load_post.append(sync.on_load)
    bpy.app.timers.register(sync.timer, first_interval=1.0, persistent=True)


def unregister() -> None:
    if bpy.app.timers.is_registered(sync.timer):
        bpy.app.timers.unregister(sync.timer)
    if sync.on_load in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(sync.on_load)
    sync.stop_worker()
    for cls in reversed(_classes):
        bpy.utils.unregister_class(cls)
    props.unregister()
