"""The extension as it is shared: one zip per platform, built and validated by Blender's own
extension tool, saying what it uploads, refused by Blenders whose Python its compiled wheels
don't serve, and small enough to send."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import bpy
import pytest

import build_addon

pytestmark = pytest.mark.blender

# The largest zip (linux-x64) measures 42.6 MB, 36 MB of it PyAV with its FFmpeg. 50 MB keeps
# it a file any chat, mail relay or Git host takes, and fails the build when a wrong wheel
# (another platform's, a second Python's) slips in.
MAX_ZIP_BYTES = 50_000_000

# Run by a Blender that knows nothing of this repository: it installs the zip, enables the
# add-on and says where the add-on's client of the local API came from.
INSTALL_AND_ENABLE = """
import os, sys, bpy, addon_utils
zip_path = sys.argv[1]
done = bpy.ops.extensions.package_install_files(
    filepath=zip_path, repo="user_default", enable_on_install=True
)
assert done == {"FINISHED"}, done
assert addon_utils.enable("bl_ext.user_default.chamelaion_lipsync", default_set=True)
import chamelaion_client.client
print(chamelaion_client.client.__file__, flush=True)
os._exit(0)  # the bpy module's own exit can hang on its audio thread
"""


@pytest.fixture(scope="module")
def zips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every platform's zip (a few seconds once build/wheels/ holds the wheels)."""
    return build_addon.build_zips(list(build_addon.PLATFORMS), tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    """Blender's extension tool, loaded as a module to ask it what Blender would accept."""
    spec = importlib.util.spec_from_file_location("blender_ext", build_addon.blender_ext_tool())
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def manifest_of(path: Path) -> dict[str, Any]:
    """The manifest Blender reads from a zip: the platform section the tool generated wins."""
    with zipfile.ZipFile(path) as zf:
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
    manifest.update(manifest.pop("build")["generated"])
    return manifest


def refusal(tool: ModuleType, path: Path, blender: tuple[int, int, int], python: str) -> str:
    """Why Blender `blender` with Python `python` would refuse to install the zip ('' = it
    installs), by the check Blender itself runs (bl_pkg: Python versions from the wheels)."""
    manifest = manifest_of(path)
    versions = tool.python_versions_from_wheels(manifest["wheels"])
    reasons: list[str] = []
    tool.repository_filter_skip(
        {**manifest, "python_versions": [".".join(map(str, v)) for v in versions]},
        filter_blender_version=blender,
        filter_platform=manifest["platforms"][0],
        filter_python_version=(*map(int, python.split(".")), 0),
        skip_message_fn=reasons.append,
        error_fn=lambda error: reasons.append(str(error)),
    )
    return " ".join(reasons)


def test_one_zip_per_platform_passes_blender_validation(zips: dict[str, Path]) -> None:
    assert sorted(zips) == sorted(build_addon.PLATFORMS)
    for platform, path in zips.items():
        assert path.name.startswith("chamelaion_lipsync-")
        assert path.name.endswith(f"-{platform.replace('-', '_')}.zip")
        done = subprocess.run(
            [sys.executable, str(build_addon.blender_ext_tool()), "validate", str(path)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Success parsing TOML" in done.stdout


def test_each_zip_lists_exactly_the_wheels_it_carries_for_its_platform(
    tool: ModuleType, zips: dict[str, Path]
) -> None:
    for platform, path in zips.items():
        manifest = manifest_of(path)
        with zipfile.ZipFile(path) as zf:
            carried = {f"./{n}" for n in zf.namelist() if n.startswith("wheels/")}
        assert manifest["platforms"] == [platform]
        assert set(manifest["wheels"]) == carried
        assert (
            tool.paths_filter_wheels_by_platform(manifest["wheels"], platform)
            == (manifest["wheels"])
        )
        names = [Path(w).name.split("-")[0].lower() for w in manifest["wheels"]]
        assert len(names) == len(set(names)), f"{platform} carries two builds of one package"
        assert {"chamelaion_bridge", "pydantic_core", "av", "aiohttp"} <= set(names)


def test_permissions_say_that_media_is_uploaded_to_chamelaion(zips: dict[str, Path]) -> None:
    for path in zips.values():
        permissions = manifest_of(path)["permissions"]
        assert set(permissions) == {"network", "files"}
        assert re.search(r"uploads .*footage.*dialogue.* Chamelaion", permissions["network"], re.I)
        assert re.search(r"export.*import", permissions["files"], re.I)


def test_blender_refuses_the_zip_where_its_compiled_wheels_cannot_run(
    tool: ModuleType, zips: dict[str, Path]
) -> None:
    for path in zips.values():
        assert tool.python_versions_from_wheels(manifest_of(path)["wheels"]) == {(3, 11)}
        for blender in ((4, 2, 0), (4, 5, 3), (5, 0, 1)):
            assert refusal(tool, path, blender, "3.11") == ""
        # Blender 5.1 runs Python 3.13: refused by blender_version_max, whatever its Python.
        assert "must be less than the maximum version (5.1.0)" in refusal(
            tool, path, (5, 1, 0), "3.11"
        )
        assert "isn't compatible" in refusal(tool, path, (5, 0, 1), "3.13")


def test_the_running_blender_accepts_its_platforms_zip(
    tool: ModuleType, zips: dict[str, Path]
) -> None:
    host = zips[build_addon.host_platform()]
    python = "{}.{}".format(*sys.version_info[:2])
    assert refusal(tool, host, tuple(bpy.app.version), python) == ""


def test_each_zip_is_small_enough_to_share(
    zips: dict[str, Path], record_testsuite_property: Any
) -> None:
    sizes = {platform: path.stat().st_size for platform, path in zips.items()}
    for platform, size in sizes.items():
        record_testsuite_property(f"zip_megabytes_{platform}", f"{size / 1e6:.1f}")
    assert max(sizes.values()) <= MAX_ZIP_BYTES, sizes


def test_the_installed_add_on_finds_its_client_of_the_bridge_in_the_zip(
    zips: dict[str, Path], tmp_path: Path
) -> None:
    """The add-on imports nothing from `bridge`; the client it speaks the local API with
    (`chamelaion_client`) travels in the bundled bridge wheel, so a plain install has it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["BLENDER_USER_RESOURCES"] = str(tmp_path / "blender-user")
    done = subprocess.run(
        [sys.executable, "-c", INSTALL_AND_ENABLE, str(zips[build_addon.host_platform()])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = Path(done.stdout.strip().splitlines()[-1])
    assert found.is_relative_to(tmp_path / "blender-user"), found
