"""Build the installable Blender extension: the add-on, the bridge and its wheels.

`python build_addon.py` writes one zip per platform
(dist/chamelaion_lipsync-<version>-<os>_<cpu>.zip), made and then checked by Blender's own
extension tool (`blender_ext.py build --split-platforms`, then `validate`); `--platform host`
builds only this machine's (tests).
Downloaded wheels are cached in build/wheels/ so rebuilding is fast.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON = ROOT / "addon" / "chamelaion_lipsync"
BUILD = ROOT / "build"
CACHE = BUILD / "wheels"
# The Python of Blender 4.2 to 5.0; the manifest's blender_version_max follows from it.
PYTHON_VERSION = "3.11"
# Where Blender's extension tool sits inside a bpy wheel (under bpy/<blender version>/).
TOOL = "scripts/addons_core/bl_pkg/cli/blender_ext.py"
# The bpy wheel fetched for its tool when no Blender module is installed here.
TOOL_SOURCE = "bpy==5.0.*"

# Blender platform -> the pip platform tags whose wheels run there (newest last).
PLATFORMS: dict[str, list[str]] = {
    "linux-x64": ["manylinux2014_x86_64"] + [f"manylinux_2_{m}_x86_64" for m in (17, 28)],
    "linux-arm64": ["manylinux2014_aarch64"] + [f"manylinux_2_{m}_aarch64" for m in (17, 28)],
    "windows-x64": ["win_amd64"],
    "macos-arm64": [f"macosx_{v}_0_arm64" for v in (11, 12, 13, 14)] + ["macosx_10_9_universal2"],
    "macos-x64": [f"macosx_10_{m}_x86_64" for m in (9, 12, 13, 15)]
    + [f"macosx_{v}_0_x86_64" for v in (11, 12, 13, 14)]
    + ["macosx_10_9_universal2"],
}


def host_platform() -> str:
    """This machine's Blender platform name, e.g. linux-x64."""
    import platform

    system = {"darwin": "macos"}.get(platform.system().lower(), platform.system().lower())
    machine = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    return f"{system}-{machine}"


def bridge_requirements() -> list[str]:
    """The bridge's runtime dependencies, as pyproject.toml declares them."""
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return list(tomllib.load(fh)["project"]["dependencies"])


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True)


def build_bridge_wheel() -> Path:
    """Build the bridge from this repo (always fresh: it is small and changes often)."""
    out = ROOT / "build" / "bridge-wheel"
    shutil.rmtree(out, ignore_errors=True)
    # setuptools packs all it finds in its staging folder: a module deleted from the source
    # (or renamed) would otherwise ship on in the wheel.
    shutil.rmtree(ROOT / "build" / "lib", ignore_errors=True)
    pip("wheel", "--no-deps", "-w", str(out), str(ROOT))
    return next(out.glob("chamelaion_bridge-*.whl"))


def dependency_wheels(platform: str) -> list[Path]:
    """The bridge's dependency wheels for one platform, downloaded once into the cache."""
    folder = CACHE / platform
    requirements = bridge_requirements()
    stamp = folder / ".requirements"
    wanted = "\n".join(requirements)
    if not (stamp.exists() and stamp.read_text() == wanted):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        tags = [arg for tag in PLATFORMS[platform] for arg in ("--platform", tag)]
        pip(
            "download",
            "--only-binary=:all:",
            "--python-version",
            PYTHON_VERSION,
            "--implementation",
            "cp",
            *tags,
            "-d",
            str(folder),
            *requirements,
        )
        stamp.write_text(wanted)
    return sorted(folder.glob("*.whl"))


def manifest_text(platforms: list[str], wheels: list[str]) -> str:
    """The source manifest with every platform served and all their wheels filled in
    (Blender's tool narrows both to one platform in each zip)."""
    text = (ADDON / "blender_manifest.toml").read_text(encoding="utf-8")
    listed = ",\n".join(f'  "./wheels/{name}"' for name in wheels)
    inserted = (
        f"platforms = [{', '.join(repr(p).replace(chr(39), chr(34)) for p in platforms)}]\n"
        f"wheels = [\n{listed},\n]\n\n[permissions]"
    )
    text = re.sub(r"^# build_addon\.py inserts.*\n\n\[permissions\]", inserted, text, flags=re.M)
    tomllib.loads(text)
    return text


def blender_ext_tool() -> Path:
    """Blender's extension tool, a standalone script inside every bpy wheel: this Python's
    Blender module, else one of this repository's Blender venvs (scripts/bootstrap_blender.sh),
    else extracted once from a downloaded bpy wheel into build/."""
    spec = find_spec("bpy")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if found := sorted(Path(folder).glob(f"*/{TOOL}")):
            return found[-1]
    venvs = sorted(ROOT.glob(f".venv-bpy*/lib/python*/site-packages/bpy/*/{TOOL}"))
    if venvs:
        return venvs[-1]
    cached = BUILD / "blender-ext" / "blender_ext.py"
    if not cached.exists():
        print(f"Fetching Blender's extension tool from the {TOOL_SOURCE} wheel (once)...")
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
            python = ("--python-version", PYTHON_VERSION)
            pip("download", "--no-deps", "--only-binary=:all:", *python, "-d", tmp, TOOL_SOURCE)
            with zipfile.ZipFile(next(Path(tmp).glob("bpy-*.whl"))) as wheel:
                member = next(n for n in wheel.namelist() if n.endswith(TOOL))
                cached.write_bytes(wheel.read(member))
    return cached


def run_tool(tool: Path, *args: str) -> None:
    """Run Blender's extension tool; its own report is the explanation when it refuses."""
    done = subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True)
    if done.returncode != 0:
        report = (done.stdout + done.stderr).strip()
        raise RuntimeError(f"Blender's extension tool refused to {args[0]} the extension: {report}")


def stage(folder: Path, platforms: list[str], wheels: dict[str, Path]) -> Path:
    """The extension's source tree as Blender's tool wants it: the add-on, ./wheels/ and a
    manifest that lists them. Wheels are hard links into the cache where the disk allows."""
    shutil.copytree(ADDON, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "blender_manifest.toml").write_text(
        manifest_text(platforms, sorted(wheels)), encoding="utf-8"
    )
    (folder / "wheels").mkdir()
    for name, path in wheels.items():
        try:
            (folder / "wheels" / name).hardlink_to(path)
        except OSError:
            shutil.copyfile(path, folder / "wheels" / name)
    return folder


def zip_name(platform: str) -> str:
    """The name Blender's tool gives a platform's zip: <id>-<version>-<os>_<cpu>.zip."""
    manifest = tomllib.loads((ADDON / "blender_manifest.toml").read_text(encoding="utf-8"))
    return f"{manifest['id']}-{manifest['version']}-{platform.replace('-', '_')}.zip"


def build_zips(platforms: list[str], dist: Path) -> dict[str, Path]:
    """Build one extension zip per platform with Blender's tool, validate each with it, and
    return them by platform."""
    tool = blender_ext_tool()
    bridge = build_bridge_wheel()
    wheels = {bridge.name: bridge}
    for platform in platforms:
        for wheel in dependency_wheels(platform):
            wheels.setdefault(wheel.name, wheel)
    dist.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BUILD, prefix="extension-") as tmp:
        source = stage(Path(tmp) / ADDON.name, platforms, wheels)
        run_tool(
            tool,
            "build",
            "--split-platforms",
            "--source-dir",
            str(source),
            "--output-dir",
            str(dist),
        )
    zips = {platform: dist / zip_name(platform) for platform in platforms}
    for path in zips.values():
        run_tool(tool, "validate", str(path))
    return zips


def build(platforms: list[str], dist: Path) -> Path:
    """Build the zips for `platforms` and return the first one's (tests build just one)."""
    return build_zips(platforms, dist)[platforms[0]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--platform",
        action="append",
        choices=[*PLATFORMS, "host"],
        help="build for these platforms only (repeatable; 'host' = this machine)",
    )
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="output folder")
    args = parser.parse_args(argv)
    platforms = [host_platform() if p == "host" else p for p in args.platform or PLATFORMS]
    for path in build_zips(platforms, args.dist).values():
        print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
