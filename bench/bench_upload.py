"""Upload benchmark (issue 2, Performance): a big file through the bridge against `curl -F`.

Measures, in one run on one emulator:
- throughput of `POST /v1/jobs` on a real `chamelaion-bridge serve` process, from the POST
  until the job is seen `submitted` (the emulator has accepted the whole multipart upload;
  the job is polled every 20 ms, as clients do, so that is the timing's resolution),
  against `curl -F video=@… -F audio=@…` sending the same files to the same emulator's
  generate-with-media endpoint; target: bridge/curl >= 0.9 at the big size;
- the bridge process's peak RSS over that same span (VmHWM, reset just before the POST via
  /proc/<pid>/clear_refs); target: under 100 MB and within 10 MB across sizes.

The emulator runs in its own process with process_media=False (it reads and discards the
upload), so its CPU and memory are not the bridge's. Every bridge run uses a fresh bridge
process so one run's heap does not carry into the next. All files live in one temporary
folder (on the disk of --tmp-dir) that is deleted at the end.

Run: .venv/bin/python bench/bench_upload.py [--sizes-mib 100,1024] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.media_samples

from bench_cli import parse_bench_args, run_bench  # noqa: E402

from bridge import discovery, media  # noqa: E402
from bridge.processes import StartError, spawn_bridge, stop_process  # noqa: E402
from chamelaion_client.client import BridgeClient  # noqa: E402
from tests.media_samples import make_test_audio, make_test_video  # noqa: E402

API_KEY = "emulator-key"
MB = 1_000_000
MIB = 1 << 20
START_TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
FOLLOW_EVERY = 0.02  # job polling period while timing a bridge upload (its resolution)
# The emulator in a process of its own; argv: port queued_seconds processing_seconds storage.
EMULATOR_CODE = """
import sys
from pathlib import Path
from bridge.emulator import EmulatorConfig, run_emulator
port, queued, processing, storage = sys.argv[1:5]
run_emulator(port=int(port), config=EmulatorConfig(
    process_media=False, queued_seconds=float(queued), processing_seconds=float(processing),
    storage_dir=Path(storage)))
"""
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ----- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_bytes(pid: int, key: str) -> int:
    """A /proc/<pid>/status memory field (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak_rss(pid: int) -> bool:
    """Make VmHWM start again from the current RSS; False where the kernel refuses."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Emulator:
    """`bridge.emulator` in its own process, media processing off (uploads are discarded)."""

    def __init__(self, storage: Path, queued_seconds: float, processing_seconds: float) -> None:
        self.storage = storage
        self.settings = (queued_seconds, processing_seconds)
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> Emulator:
        port = free_port()
        queued, processing = self.settings
        self.storage.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", EMULATOR_CODE, str(port), str(queued), str(processing)]
            + [str(self.storage)],
            stdout=subprocess.PIPE,
            stderr=(self.storage / "emulator.log").open("w"),
            text=True,
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
        if "emulator" not in line:
            stop_process(self.proc)
            raise RuntimeError(
                f"the emulator did not start: {(self.storage / 'emulator.log').read_text()}"
            )
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    @property
    def base_url(self) -> str:
        return self.url + "/api"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stats(self) -> dict[str, Any]:
        with NO_PROXY.open(self.url + "/_emulator/stats", timeout=10) as response:
            return json.load(response)


class Bridge:
    """`python -m bridge serve` as a real process on its own data folder, against `api_base`."""

    def __init__(self, data_dir: Path, api_base: str) -> None:
        self.data_dir = data_dir
        self.api_base = api_base
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token = ""

    def __enter__(self) -> Bridge:
        """Started the way `chamelaion-bridge submit` starts one (detached, logging)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAMELAION_")}
        env |= {"CHAMELAION_BASE_URL": self.api_base, "CHAMELAION_API_KEY": API_KEY}
        try:
            self.proc, info = spawn_bridge(self.data_dir, env=env, port=0)
        except StartError as exc:
            raise RuntimeError(f"the bridge did not start: {exc}") from None
        self.url, self.token = info["url"], discovery.read_token(self.data_dir) or ""
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def client(self) -> BridgeClient:
        return BridgeClient(self.url, self.token, timeout=60.0)

    def log_tail(self, lines: int = 5) -> str:
        path = self.data_dir / discovery.LOG_FILE
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""


def follow_job(
    client: BridgeClient, job_id: str, until: set[str], timeout: float
) -> tuple[dict[str, float], dict[str, Any]]:
    """When the job was first seen in each state, polling as the add-on and the CLI do."""
    deadline = time.monotonic() + timeout
    seen: dict[str, float] = {}
    while True:
        job = client.get_job(job_id)
        seen.setdefault(job["state"], time.perf_counter())
        if job["state"] in until:
            return seen, job
        if time.monotonic() > deadline:
            raise RuntimeError(f"the job is still {job['state']} after {timeout:.0f}s")
        time.sleep(FOLLOW_EVERY)


def machine() -> dict[str, Any]:
    """Where and when the figures were measured."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


# ----- inputs ------------------------------------------------------------------------------


def padded_mp4(seed: Path, out: Path, size: int) -> Path:
    """`seed` followed by one MP4 `free` box up to `size` bytes: still a valid, probing MP4."""
    data = seed.read_bytes()
    box = size - len(data)
    header = (
        struct.pack(">I4s", box, b"free")
        if box < 2**32
        else struct.pack(">I4sQ", 1, b"free", box)  # 64-bit "largesize" box
    )
    if box < len(header):
        raise ValueError(f"{size} bytes is too small to pad {seed.name} ({len(data)} bytes)")
    zeros = memoryview(bytes(8 * MIB))
    with out.open("wb") as fh:
        fh.write(data)
        fh.write(header)
        left = box - len(header)
        while left:
            left -= fh.write(zeros[: min(left, len(zeros))])
    return out


def make_inputs(folder: Path, sizes_mib: list[int]) -> tuple[dict[int, Path], Path]:
    """A padded MP4 of each size (MiB) and one short WAV; each checked as the bridge will."""
    seed = make_test_video(folder / "seed.mp4", 25, 25, (320, 240))
    audio = make_test_audio(folder / "dialogue.wav", 3.0, speech=True)
    videos = {}
    for size in sizes_mib:
        videos[size] = padded_mp4(seed, folder / f"video-{size}MiB.mp4", size * MIB)
        media.check_inputs(videos[size], audio)
    seed.unlink()
    return videos, audio


# ----- runs --------------------------------------------------------------------------------


@dataclass
class Run:
    client: str  # "curl" or "bridge"
    round: int
    size_mib: int
    bytes: int
    seconds: float
    emulator_cpu_seconds: float
    client_cpu_seconds: float = 0.0  # curl's or the bridge process's
    # Bridge only: POST answered 201 (inputs checked, job stored), upload began (uploading).
    accepted_seconds: float | None = None
    upload_started_seconds: float | None = None
    bridge_idle_rss_mb: float | None = None
    bridge_peak_rss_mb: float | None = None
    peak_since: str | None = None  # "submit" (VmHWM reset at the POST) or "process start"

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.seconds

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"mb_per_s": round(self.mb_per_s, 1)}


def curl_upload(
    emulator: Emulator, video: Path, audio: Path, size_mib: int, n: int, round_no: int
) -> Run:
    """`curl -F` straight to the emulator's generate-with-media endpoint."""
    command = [
        "curl",
        "-sS",
        "-H",
        f"x-api-key: {API_KEY}",
        "-F",
        f"video=@{video};type=video/mp4",
        "-F",
        f"audio=@{audio};type=audio/wav",
        "-F",
        f"reference_id=bench-curl-{n}",
        emulator.base_url + "/v1/lipsync/generate-with-media",
    ]
    cpu = cpu_seconds(emulator.pid)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0 or '"request_id"' not in done.stdout:
        raise RuntimeError(f"curl upload failed: {done.stderr.strip() or done.stdout.strip()}")
    return Run(
        "curl",
        round_no,
        size_mib,
        video.stat().st_size + audio.stat().st_size,
        seconds,
        emulator_cpu_seconds=cpu_seconds(emulator.pid) - cpu,
        client_cpu_seconds=after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime,
    )


def bridge_upload(
    emulator: Emulator, folder: Path, video: Path, audio: Path, size_mib: int, n: int, round_no: int
) -> Run:
    """A fresh bridge process; POST /v1/jobs until the job is `submitted`, watching its RSS."""
    with Bridge(folder / f"bridge-{n}", emulator.base_url) as bridge:
        try:
            idle = status_bytes(bridge.pid, "VmRSS")
            reset = reset_peak_rss(bridge.pid)
            cpu, emulator_cpu = cpu_seconds(bridge.pid), cpu_seconds(emulator.pid)
            started = time.perf_counter()
            job = bridge.client.create_job(
                {
                    "video_path": str(video),
                    "audio_path": str(audio),
                    "reference_id": f"bench-bridge-{n}",
                }
            )
            accepted = time.perf_counter()
            seen, job = follow_job(bridge.client, job["id"], {"submitted", "failed"}, 600)
            if job["state"] != "submitted":
                raise RuntimeError(f"the bridge upload failed: {job['error']}")
            return Run(
                "bridge",
                round_no,
                size_mib,
                video.stat().st_size + audio.stat().st_size,
                seen["submitted"] - started,
                emulator_cpu_seconds=cpu_seconds(emulator.pid) - emulator_cpu,
                client_cpu_seconds=cpu_seconds(bridge.pid) - cpu,
                bridge_idle_rss_mb=idle / MB,
                bridge_peak_rss_mb=status_bytes(bridge.pid, "VmHWM") / MB,
                peak_since="submit" if reset else "process start",
                accepted_seconds=accepted - started,
                upload_started_seconds=seen.get("uploading", accepted) - started,
            )
        except Exception as exc:
            raise RuntimeError(f"{exc}\nbridge log:\n{bridge.log_tail()}") from exc


def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    if not args.json:
        print(f"files in {folder}; each bridge run is a fresh `bridge serve` process\n")
        print(HEADER, flush=True)
    videos, audio = make_inputs(folder, args.sizes_mib)
    runs: list[Run] = []
    with Emulator(folder / "emulator", queued_seconds=3600, processing_seconds=1) as emulator:
        n = 0
        for round_no in range(args.rounds):
            for size, video in videos.items():
                clients = ["curl", "bridge"] if round_no % 2 == 0 else ["bridge", "curl"]
                for client in clients:
                    n += 1
                    runs.append(
                        curl_upload(emulator, video, audio, size, n, round_no)
                        if client == "curl"
                        else bridge_upload(emulator, folder, video, audio, size, n, round_no)
                    )
                    if not args.json:
                        print(_row(runs[-1]), flush=True)
    return summarize(args, runs)


def summarize(args: argparse.Namespace, runs: list[Run]) -> dict[str, Any]:
    """Per size: median and best throughput per client, the median of the per-round
    bridge/curl ratios (each round runs both back to back, so load from other work on the
    machine hits both), and the highest peak RSS of the bridge runs."""
    sizes: dict[str, Any] = {}
    for size in args.sizes_mib:
        of = {c: [r for r in runs if r.size_mib == size and r.client == c] for c in CLIENTS}
        rates = {c: [r.mb_per_s for r in of[c]] for c in CLIENTS}
        ratios = [b.mb_per_s / c.mb_per_s for b, c in zip(of["bridge"], of["curl"], strict=True)]
        sizes[str(size)] = {
            "curl_mb_per_s_median": round(statistics.median(rates["curl"]), 1),
            "bridge_mb_per_s_median": round(statistics.median(rates["bridge"]), 1),
            "curl_mb_per_s_best": round(max(rates["curl"]), 1),
            "bridge_mb_per_s_best": round(max(rates["bridge"]), 1),
            "ratio_median": round(statistics.median(ratios), 3),
            "ratio_of_bests": round(max(rates["bridge"]) / max(rates["curl"]), 3),
            "bridge_upload_phase_mb_per_s_median": round(
                statistics.median(
                    r.bytes / MB / (r.seconds - (r.upload_started_seconds or 0))
                    for r in of["bridge"]
                ),
                1,
            ),
            "bridge_overhead_before_upload_s_median": round(
                statistics.median(r.upload_started_seconds or 0 for r in of["bridge"]), 3
            ),
            "cpu_seconds_per_gib_median": {
                c: round(statistics.median(r.client_cpu_seconds for r in of[c]) * 1024 / size, 2)
                for c in CLIENTS
            },
            "bridge_peak_rss_mb": round(max(r.bridge_peak_rss_mb or 0 for r in of["bridge"]), 1),
            "bridge_idle_rss_mb": round(max(r.bridge_idle_rss_mb or 0 for r in of["bridge"]), 1),
        }
    big = sizes[str(max(args.sizes_mib))]
    peaks = [s["bridge_peak_rss_mb"] for s in sizes.values()]
    return {
        "machine": machine(),
        "parameters": {"sizes_mib": args.sizes_mib, "rounds": args.rounds},
        "runs": [r.to_json() for r in runs],
        "sizes": sizes,
        "targets": {
            "throughput_ratio_median_at_largest_size": {
                "value": big["ratio_median"],
                "target": ">= 0.9",
                "met": big["ratio_median"] >= 0.9,
            },
            "bridge_peak_rss_mb_max": {
                "value": max(peaks),
                "target": "< 100",
                "met": max(peaks) < 100,
            },
            "bridge_peak_rss_mb_spread": {
                "value": round(max(peaks) - min(peaks), 1),
                "target": "<= 10",
                "met": max(peaks) - min(peaks) <= 10,
            },
        },
    }


# ----- output ------------------------------------------------------------------------------

CLIENTS = ("curl", "bridge")
HEADER = (
    f"{'size':>9} {'client':<7} {'seconds':>8} {'MB/s':>7} {'to 201 s':>9} {'to upload s':>12} "
    f"{'peak RSS MB':>12} {'idle RSS MB':>12} {'client CPU s':>13} {'emul. CPU s':>12}"
)


def _row(run: Run) -> str:
    def num(value: float | None, width: int, digits: int = 1) -> str:
        return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"

    return (
        f"{run.size_mib:>5} MiB {run.client:<7} {run.seconds:>8.2f} {run.mb_per_s:>7.1f} "
        f"{num(run.accepted_seconds, 9, 3)} {num(run.upload_started_seconds, 12, 3)} "
        f"{num(run.bridge_peak_rss_mb, 12)} {num(run.bridge_idle_rss_mb, 12)} "
        f"{num(run.client_cpu_seconds, 13, 2)} {num(run.emulator_cpu_seconds, 12, 2)}"
    )


def print_summary(result: dict[str, Any]) -> None:
    print("\nper size (MB = 10^6 bytes; ratio = median of the per-round bridge/curl ratios):")
    print(
        f"{'size':>9} {'curl MB/s':>10} {'bridge MB/s':>12} {'ratio':>6} "
        f"{'ratio of bests':>15} {'peak RSS MB':>12}"
    )
    for size, row in result["sizes"].items():
        print(
            f"{size:>5} MiB {row['curl_mb_per_s_median']:>10.1f} "
            f"{row['bridge_mb_per_s_median']:>12.1f} {row['ratio_median']:>6.3f} "
            f"{row['ratio_of_bests']:>15.3f} {row['bridge_peak_rss_mb']:>12.1f}"
        )
    for name, target in result["targets"].items():
        verdict = "met" if target["met"] else "NOT MET"
        print(f"{name}: {target['value']} (target {target['target']}) {verdict}")


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes-mib",
        type=lambda s: sorted({int(x) for x in s.split(",")}),
        default=[100, 1024],
        help="video sizes in MiB, comma-separated (default 100,1024; the ratio target is "
        "judged at the largest)",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="runs per size and client (default 5)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_bench_args(__doc__, add_options, argv)
    if shutil.which("curl") is None:
        print("curl is not installed; install it (apt-get install curl) and run again.")
        return 2
    result = run_bench(args, measure, print_summary)
    return 0 if all(t["met"] for t in result["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
