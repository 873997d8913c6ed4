"""What the add-on stores: per-scene options (in the .blend) and the preferences. Jobs are
the bridge's record, so that undo cannot take them away."""

import os
from pathlib import Path

import bpy
from bpy.props import BoolProperty, FloatProperty, PointerProperty, StringProperty

from chamelaion_client import layout

from .batch import DEFAULT_CONFIRM_ABOVE
from .worker import Settings


class ChamelaionSceneSettings(bpy.types.PropertyGroup):
    disable_active_speaker_detection: BoolProperty(
        name="Largest face",
        description="Sync the largest face instead of detecting the active speaker",
    )
    reference_id: StringProperty(
        name="Reference ID",
        description="Optional; left empty, a unique one is made from the file and strip names. "
        "The bridge spells it as a valid id (letters, digits, '.', '_', '-')",
    )


class ChamelaionPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    api_key: StringProperty(
        name="API key",
        subtype="PASSWORD",
        description="Your Chamelaion API key; empty uses CHAMELAION_API_KEY from the environment",
    )
    auto_start: BoolProperty(
        name="Start the bridge when needed",
        default=True,
        description="Start the bundled bridge when none answers",
    )
    data_dir: StringProperty(
        name="Bridge data folder",
        subtype="DIR_PATH",
        description="Where the bridge keeps jobs, results and its log; empty = the default",
    )
    bridge_url: StringProperty(
        name="Bridge URL", description="Empty: found through the data folder's bridge.json"
    )
    api_base: StringProperty(
        name="API base URL", description="Empty: the official service (or CHAMELAION_BASE_URL)"
    )
    bridge_command: StringProperty(
        name="Bridge command",
        description="Empty: Blender's Python runs the bundled bridge. Else the command that "
        "serves a bridge (e.g. 'chamelaion-bridge serve'): the bundled bridge's 'start' runs it "
        "with '--data-dir' appended and waits until it answers",
    )

    confirm_above: FloatProperty(
        name="Confirm batches above",
        default=DEFAULT_CONFIRM_ABOVE,
        min=0.0,
        unit="TIME_ABSOLUTE",
        description="A Lip Sync of several strips that would bill more media seconds than "
        "this asks before it sends anything",
    )

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.prop(self, "api_key")
        layout.prop(self, "confirm_above")
        layout.prop(self, "auto_start")
        layout.prop(self, "data_dir")
        layout.prop(self, "bridge_url")
        layout.prop(self, "api_base")
        layout.prop(self, "bridge_command")


def preferences() -> ChamelaionPreferences | None:
    addon = bpy.context.preferences.addons.get(__package__)
    return addon.preferences if addon else None


def worker_settings() -> Settings:
    """Copy the preferences into the plain values the worker thread may read."""
    prefs = preferences()
    folder = prefs.data_dir if prefs and prefs.data_dir else None
    return Settings(
        data_dir=layout.data_dir(bpy.path.abspath(folder) if folder else None),
        url=(prefs.bridge_url.strip() if prefs else "") or os.environ.get("CHAMELAION_BRIDGE_URL"),
        auto_start=prefs.auto_start if prefs else True,
        api_base=prefs.api_base.strip() if prefs else "",
        api_key=prefs.api_key.strip() if prefs else "",
        command=prefs.bridge_command if prefs else "",
    )


def log_path() -> Path:
    return worker_settings().data_dir / layout.LOG_FILE


classes = (ChamelaionSceneSettings, ChamelaionPreferences)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.chamelaion = PointerProperty(type=ChamelaionSceneSettings)


def unregister() -> None:
    del bpy.types.Scene.chamelaion
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
