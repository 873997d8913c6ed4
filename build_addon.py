"""Build the installable Blender extension zip: the add-on, the bridge and its wheels.

`python build_addon.py` writes dist/chamelaion_lipsync-<version>.zip for every platform the
bundled wheels serve; `--platform linux-x64` builds a smaller zip for one platform (tests).
Downloaded wheels are cached in build/wheels/ so rebuilding is fast.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON = ROOT / "addon" / "chamelaion_lipsync"
CACHE = ROOT / "build" / "wheels"
PYTHON_VERSION = "3.11"

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
    """The source manifest with the platforms served and the bundled wheels filled in."""
    text = (ADDON / "blender_manifest.toml").read_text(encoding="utf-8")
    listed = ",\n".join(f'  "./wheels/{name}"' for name in wheels)
    inserted = (
        f"platforms = [{', '.join(repr(p).replace(chr(39), chr(34)) for p in platforms)}]\n"
        f"wheels = [\n{listed},\n]\n\n[permissions]"
    )
    text = re.sub(r"^# build_addon\.py inserts.*\n\n\[permissions\]", inserted, text, flags=re.M)
    tomllib.loads(text)
    return text


def build(platforms: list[str], dist: Path) -> Path:
    """Write the extension zip and return its path."""
    version = tomllib.loads((ADDON / "blender_manifest.toml").read_text())["version"]
    wheels: dict[str, Path] = {}
    bridge = build_bridge_wheel()
    wheels[bridge.name] = bridge
    for platform in platforms:
        for wheel in dependency_wheels(platform):
            wheels.setdefault(wheel.name, wheel)
    suffix = "" if set(platforms) == set(PLATFORMS) else "-" + "-".join(platforms)
    dist.mkdir(parents=True, exist_ok=True)
    target = dist / f"chamelaion_lipsync-{version}{suffix}.zip"
    tmp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(ADDON.rglob("*")):
            relative = path.relative_to(ADDON)
            if path.is_dir() or "__pycache__" in relative.parts:
                continue
            if relative.name == "blender_manifest.toml":
                zf.writestr(str(relative), manifest_text(platforms, sorted(wheels)))
            else:
                zf.write(path, str(relative))
        for name, path in sorted(wheels.items()):
            zf.write(path, f"wheels/{name}", compress_type=zipfile.ZIP_STORED)
    tmp.replace(target)
    return target


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
    target = build(platforms, args.dist)
    size = target.stat().st_size / 1e6
    print(f"{target} ({size:.1f} MB; platforms: {', '.join(platforms)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
