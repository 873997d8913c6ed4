"""`chamelaion-bridge`: run the bridge, and submit and follow jobs through its local API.

Exit status: 0 success, 1 job failed or canceled, 2 usage, 3 bridge unreachable, 4 input
error, 5-9 the daemon's start failures (see bridge.daemon), 10 a bridge of another API
version runs (see bridge.processes), 70 an unexpected error, 130 interrupted, 141 (quietly)
the reader of stdout went away (`| head`). Every failure is one sentence on stderr. `start`,
and `submit` when none runs for the data folder (and CHAMELAION_BRIDGE_URL is not set),
start a bridge in the background; the other commands only report that none runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

import bridge
from bridge import discovery, processes
from bridge.config import ConfigError, api_key_from_env
from bridge.errors import BridgeError, InputError
from bridge.jobs import (
    FINAL_STATES,
    PINNED_JSON_FIELDS,
    State,
    check_input_file,
    check_path,
    check_reference_id,
    check_url,
)
from chamelaion_client import speaks_this_api
from chamelaion_client.client import BridgeClient, BridgeRequestError, BridgeUnavailable

EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INPUT = 4
EXIT_UNEXPECTED = 70
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a reader that went away

TRANSFER_STATES = (State.UPLOADING, State.DOWNLOADING)
POLL_SECONDS = 0.5
# Anything of the form scheme://... is meant as a URL (ftp://, file://), never as a path.
URL_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


class CliError(Exception):
    """A failure to report as one sentence with a given exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help').\n")


# --- finding and starting the bridge -------------------------------------------------------


def _data_dir(args: argparse.Namespace) -> Path:
    return discovery.data_dir(getattr(args, "data_dir", None))


def _not_running(folder: Path) -> CliError:
    flag = f" --data-dir {folder}" if folder != discovery.data_dir() else ""
    return CliError(
        EXIT_UNREACHABLE,
        f"No Chamelaion bridge is running for {folder}; start one with "
        f"'chamelaion-bridge serve{flag}'.",
    )


def running_client(folder: Path) -> BridgeClient | None:
    """A client for the bridge serving `folder`, if one answers; no guessing of default ports.
    One of another API version is refused (StartError): this command would misread it."""
    if not os.environ.get("CHAMELAION_BRIDGE_URL") and discovery.read_discovery(folder) is None:
        return None
    client = BridgeClient(data_dir=folder)
    try:
        health = client.health()
    except BridgeUnavailable:
        return None
    if not speaks_this_api(health):
        raise processes.other_version(folder, health, "chamelaion-bridge")
    _version_note(health.get("version"))
    return client


def _version_note(version: Any) -> None:
    """Say so when the running bridge is another release of the same API version."""
    if version != bridge.__version__:
        print(
            f"Note: the running bridge is version {version} and this command "
            f"{bridge.__version__}; restart the bridge to update it.",
            file=sys.stderr,
        )


def connect(args: argparse.Namespace, *, start: bool = False) -> BridgeClient:
    """The running bridge's client; with `start`, launch one in the background if needed
    (replacing one of another API version that the CLI launched)."""
    folder = _data_dir(args)
    if start and not os.environ.get("CHAMELAION_BRIDGE_URL"):
        running = processes.ensure_bridge(folder, launched_by="cli")
        if running.started:
            print(
                f"Started a Chamelaion bridge in the background at {running.url} "
                f"(log: {folder / discovery.LOG_FILE}).",
                file=sys.stderr,
            )
        else:
            _version_note(running.version)
        return BridgeClient(running.url, data_dir=folder)
    client = running_client(folder)
    if client is None:
        raise _not_running(folder)
    return client


def hand_over_key(client: BridgeClient) -> BridgeClient:
    """Give the running bridge the environment's API key when it has none or another one
    (say, one the API refused): a fixed key needs no restart."""
    api_key, auth = api_key_from_env()
    if not api_key.value:
        return client
    answer = client.hand_over_key(api_key.value, auth)
    if answer is not None:
        variable = "CHAMELAION_API_KEY" if auth == "x-api-key" else "CHAMELAION_BEARER_TOKEN"
        retryable = answer.get("jobs_updated") or 0
        tail = (
            f"; {retryable} job(s) that failed on its old key can be retried" if retryable else ""
        )
        print(f"The running bridge now uses the API key from {variable}{tail}.", file=sys.stderr)
    return client


# --- following a job ----------------------------------------------------------------------


class Progress:
    """Shows a job moving: a redrawn bar on a terminal, or one line per state change."""

    def __init__(self, stream: TextIO, *, bar: bool) -> None:
        self.stream, self.bar, self.last, self.last_note = stream, bar, "", ""

    def show(self, job: dict[str, Any]) -> None:
        state, note = job["state"], job.get("note") or ""
        if self.bar:
            fraction = min(max(float(job.get("progress") or 0.0), 0.0), 1.0)
            if note:
                detail = note
            elif state in TRANSFER_STATES:
                filled = round(fraction * 30)
                detail = f"[{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%}"
            else:
                detail = "waiting for Chamelaion" if state in ("submitted", "processing") else ""
            line = f"{job['reference_id']}  {state:<11} {detail}"
            self.stream.write(f"\r{line[:120]}".ljust(121))
            self.stream.flush()
        else:
            if state != self.last:
                self.stream.write(f"{job['reference_id']}: {state}\n")
            if note and note != self.last_note:
                self.stream.write(f"{job['reference_id']}: {note}\n")
            self.stream.flush()
        self.last, self.last_note = state, note

    def done(self) -> None:
        if self.bar and self.last:
            self.stream.write("\n")
            self.stream.flush()


def follow(
    client: BridgeClient,
    job: dict[str, Any],
    progress: Progress | None,
    reconnect: Callable[[], BridgeClient] | None = None,
) -> dict[str, Any]:
    """Poll the job until it is final, showing progress on the way.

    With `reconnect`, a bridge that dies meanwhile (a crash, a kill) is found or started
    again: the job lives in the data folder's store and resumes where it stood.
    """
    try:
        while True:
            if progress:
                progress.show(job)
            if job["state"] in FINAL_STATES:
                return job
            time.sleep(POLL_SECONDS)
            try:
                job = client.get_job(job["id"])
            except BridgeUnavailable:
                if reconnect is None:
                    raise
                client = reconnect()
    finally:
        if progress:
            progress.done()


def _final_status(job: dict[str, Any]) -> int:
    """Exit status for a final job, after saying what went wrong, if anything did."""
    if job["state"] == State.COMPLETED:
        return 0
    if job["state"] == State.FAILED:
        print(
            f"Job {job['reference_id']} failed: {job.get('error') or 'no reason given.'}",
            file=sys.stderr,
        )
    else:
        print(f"Job {job['reference_id']} was canceled.", file=sys.stderr)
    return EXIT_JOB_FAILED


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


# --- commands -----------------------------------------------------------------------------


def _input_field(kind: str, value: str) -> tuple[str, str]:
    """The request field for one input, refused here as the bridge would (before starting one)."""
    if URL_LIKE.match(value):
        return f"{kind}_url", check_url(kind, value)
    path = os.path.abspath(os.path.expanduser(check_path(f"{kind} path", value)))
    check_input_file(Path(path))
    return f"{kind}_path", path


def cmd_submit(args: argparse.Namespace) -> int:
    body: dict[str, Any] = dict(
        [_input_field("video", args.video), _input_field("audio", args.audio)]
    )
    if args.reference_id is not None:
        body["reference_id"] = check_reference_id(args.reference_id)
    if args.no_active_speaker:
        body["disable_active_speaker_detection"] = True
    if args.model:
        body["model"] = args.model
    if args.out:
        body["output_dir"] = os.path.abspath(os.path.expanduser(args.out))
    client = hand_over_key(connect(args, start=True))
    job = client.create_job(body)
    if not args.wait:
        if args.json:
            _print_json(job)
        else:
            print(
                f"Submitted job {job['reference_id']}; follow it with "
                f"'chamelaion-bridge status {job['reference_id']}'."
            )
        return 0
    progress = Progress(sys.stderr, bar=True) if sys.stderr.isatty() else None
    job = follow(client, job, progress, reconnect=lambda: connect(args, start=True))
    if args.json:
        _print_json(job)
    elif job["state"] == State.COMPLETED:
        print(f"Job {job['reference_id']} completed: {job['output_path']}")
    return _final_status(job)


def _age(created_at: str) -> str:
    try:
        seconds = (datetime.now(UTC) - datetime.fromisoformat(created_at)).total_seconds()
    except ValueError:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(int(seconds), 0)}s"


def _progress_text(job: dict[str, Any]) -> str:
    if job["state"] == State.COMPLETED:
        return "100%"
    if job["state"] in TRANSFER_STATES:
        return f"{float(job.get('progress') or 0):.0%}"
    return "-"


def _watch_line(folder: dict[str, Any]) -> str:
    counts = ", ".join(f"{folder.get(k, 0)} {k}" for k in ("waiting", "running", "done", "failed"))
    offline = "" if folder.get("online", True) else " (folder not reachable)"
    return f"Watching {folder['in_dir']} -> {folder['out_dir']}: {counts}{offline}"


def cmd_jobs(args: argparse.Namespace) -> int:
    client = connect(args)
    listing, health = client.listing(), client.health()
    jobs, damaged = listing["jobs"], listing.get("damaged", [])
    watching, problems = health.get("watch", []), health.get("problems", [])
    if args.json:
        extra = {"watch": watching} if watching else {}
        _print_json({"jobs": jobs, "damaged": damaged, "problems": problems, **extra})
        return 0
    for problem in problems:
        print(f"Problem: {problem}")
    for folder in watching:
        print(_watch_line(folder))
    if not jobs and not damaged:
        print("No jobs yet.")
        return 0
    rows = [("REFERENCE_ID", "STATE", "PROGRESS", "AGE", "OUTPUT / ERROR")]
    rows += [
        (
            job["reference_id"],
            job["state"],
            _progress_text(job),
            _age(job["created_at"]),
            job.get("error") or job.get("note") or job.get("output_path") or "",
        )
        for job in jobs
    ]
    rows += [(record["reference_id"], "damaged", "-", "-", record["error"]) for record in damaged]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[4]
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    job = connect(args).get_job(args.id)
    if args.json:
        _print_json(job)
        return 0
    for name in (*PINNED_JSON_FIELDS, "note"):
        value = _progress_text(job) if name == "progress" else job.get(name)
        if value not in (None, ""):
            print(f"{name + ':':<14}{value}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    job = connect(args).cancel(args.id)
    print(f"Job {job['reference_id']} is {job['state']}.")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    job = hand_over_key(connect(args)).retry(args.id)
    print(f"Job {job['reference_id']} is {job['state']} again.")
    return 0


def _serve(args: argparse.Namespace, watch_folders: list[tuple[Path, Path]]) -> int:
    from bridge.config import BridgeConfig
    from bridge.daemon import EXIT_BAD_CONFIG, serve

    try:
        config = BridgeConfig.from_env(
            getattr(args, "data_dir", None),
            host=args.host,
            port=args.port,
            watch_poll=getattr(args, "poll", False) or None,
            watch_follow_symlinks=getattr(args, "follow_symlinks", False) or None,
        )
    except ConfigError as exc:
        raise CliError(EXIT_BAD_CONFIG, str(exc)) from None
    return serve(config, fixed_port=args.port is not None, watch_folders=watch_folders)


def _folder_arg(value: str) -> Path:
    return Path(os.path.abspath(os.path.expanduser(value)))


def cmd_serve(args: argparse.Namespace) -> int:
    ins, outs = args.watch or [], args.out or []
    if len(ins) != len(outs):
        raise CliError(EXIT_USAGE, "Give one --out OUT_DIR for each --watch IN_DIR.")
    return _serve(args, list(zip(ins, outs, strict=True)))


def cmd_start(args: argparse.Namespace) -> int:
    folder = _data_dir(args)
    running = processes.ensure_bridge(
        folder, launched_by=args.launched_by, command=shlex.split(args.serve_command or "")
    )
    if args.json:
        _print_json(dataclasses.asdict(running))
    else:
        done = "Started" if running.started else "Found"
        print(
            f"{done} Chamelaion bridge {running.version} at {running.url} (pid {running.pid}, "
            f"data folder {folder})."
        )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    folder = _data_dir(args)
    info = processes.stop_bridge(folder)
    if info is None:
        print(f"No Chamelaion bridge is running for {folder}.")
    else:
        print(f"Stopped the Chamelaion bridge at {info.get('url')} (pid {info.get('pid')}).")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    return _serve(args, [(args.in_dir, args.out)])


def cmd_emulator(args: argparse.Namespace) -> int:
    from bridge.daemon import EXIT_PORT_IN_USE
    from bridge.emulator import run_emulator

    try:
        run_emulator(port=args.port)
    except OSError as exc:
        raise CliError(
            EXIT_PORT_IN_USE,
            f"The emulator cannot listen on port {args.port} "
            f"({'already in use' if exc.errno == errno.EADDRINUSE else exc.strerror}); "
            "choose another with --port.",
        ) from None
    return 0


def cmd_conform(args: argparse.Namespace) -> int:
    from bridge.conform import LIPSYNC_SUFFIX, ConformOptions, run_conform

    if args.out and (args.out.endswith(("/", os.sep)) or os.path.isdir(args.out)):
        folder = _folder_arg(args.out)
        raise CliError(
            EXIT_INPUT,
            f"--out names the folder {folder}; give the file to write, such as "
            f"{folder / (Path(args.timeline).stem + LIPSYNC_SUFFIX + '.otio')}.",
        )
    options = ConformOptions(
        timeline=Path(os.path.abspath(os.path.expanduser(args.timeline))),
        dub=Path(os.path.abspath(os.path.expanduser(args.audio))),
        out=_folder_arg(args.out) if args.out else None,
        track=args.track,
        audio_offset=args.audio_offset,
        rate=args.rate,
        max_seconds=args.max_seconds,
        dry_run=args.dry_run,
        no_wait=args.no_wait,
        json=args.json,
        retry_failed=args.retry_failed,
    )
    try:
        return run_conform(options, lambda: hand_over_key(connect(args, start=True)))
    except KeyboardInterrupt:
        raise CliError(
            EXIT_INTERRUPTED,
            "Interrupted; the shots already submitted go on in the bridge: run the same "
            "command again to adopt them and write the timeline.",
        ) from None


def _finite(value: str, what: str) -> float:
    """A finite number; `what` names it in the usage error (argparse type helper)."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{value!r} is not {what}")
    return number


def _seconds(value: str) -> float:
    """A finite number of seconds (argparse type)."""
    return _finite(value, "a number of seconds")


def _fps(value: str) -> float:
    """A frame rate above 0 in frames per second (argparse type)."""
    number = _finite(value, "a frame rate in fps, such as 25 or 23.976")
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a frame rate above 0 fps")
    return number


def cmd_demo(args: argparse.Namespace) -> int:
    from bridge.demo import DemoError, run_demo

    def show(client: BridgeClient, job: dict[str, Any]) -> dict[str, Any]:
        return follow(client, job, Progress(sys.stdout, bar=sys.stdout.isatty()))

    try:
        completed = run_demo(_data_dir(args), show)
    except DemoError as exc:
        raise CliError(EXIT_JOB_FAILED, str(exc)) from None
    return 0 if completed else EXIT_JOB_FAILED


# --- parser -------------------------------------------------------------------------------


def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument(
        "--data-dir",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="the bridge's data folder (default: $CHAMELAION_BRIDGE_DATA or the user data folder)",
    )
    common.add_argument(
        "--version", action="version", version=f"chamelaion-bridge {bridge.__version__}"
    )
    parser = Parser(
        prog="chamelaion-bridge",
        description="Lip-sync jobs through the Chamelaion API, for Blender, folders and scripts.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Any, help_text: str) -> Parser:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(func=handler)
        return sub

    def server_options(sub: Parser) -> None:
        sub.add_argument("--host", help="loopback address to listen on (default 127.0.0.1)")
        sub.add_argument(
            "--port", type=int, help="port (default 7878, else a free one if 7878 is taken)"
        )

    serve = command("serve", cmd_serve, "run the bridge in the foreground")
    server_options(serve)
    serve.add_argument(
        "--watch",
        action="append",
        type=_folder_arg,
        metavar="IN_DIR",
        help="watch this folder for video+audio pairs (repeatable)",
    )
    serve.add_argument(
        "--out",
        action="append",
        type=_folder_arg,
        metavar="OUT_DIR",
        help="where results of the matching --watch folder go",
    )

    start = command(
        "start",
        cmd_start,
        "start a bridge in the background unless one of this API version runs; print its URL",
    )
    start.add_argument(
        "--json", action="store_true", help="print url, pid, version, api_version, api_revision"
    )
    start.add_argument(
        "--launched-by",
        default="cli",
        metavar="NAME",
        help="who starts it (recorded in bridge.json): a running bridge of another API version "
        "is restarted only when NAME launched it (default: cli)",
    )
    start.add_argument(
        "--serve-command",
        metavar="COMMAND",
        help="how to run the bridge instead of this one's 'serve' (--data-dir is appended)",
    )
    command("stop", cmd_stop, "stop the bridge of the data folder (its jobs stay)")

    submit = command("submit", cmd_submit, "submit a lip-sync job")
    submit.add_argument("video", metavar="VIDEO", help="MP4 file or http(s) URL of the video")
    submit.add_argument("audio", metavar="AUDIO", help="WAV/MP3 file or http(s) URL of the audio")
    submit.add_argument("--reference-id", metavar="ID", help="your id for the job (unique)")
    submit.add_argument(
        "--no-active-speaker",
        action="store_true",
        help="sync the largest face instead of detecting the active speaker",
    )
    submit.add_argument("--model", help="model name (only lipsync-2)")
    submit.add_argument("--out", metavar="DIR", help="folder for the result file")
    submit.add_argument("--wait", action="store_true", help="return when the job is finished")
    submit.add_argument("--json", action="store_true", help="print the job as JSON")

    jobs = command("jobs", cmd_jobs, "list jobs")
    jobs.add_argument("--json", action="store_true", help="print JSON")
    status = command("status", cmd_status, "show one job")
    status.add_argument("id", metavar="ID", help="job id or reference_id")
    status.add_argument("--json", action="store_true", help="print JSON")
    command("cancel", cmd_cancel, "cancel a job").add_argument("id", metavar="ID")
    command("retry", cmd_retry, "retry a failed or canceled job").add_argument("id", metavar="ID")

    watch = command("watch", cmd_watch, "run a bridge that watches a folder (foreground)")
    watch.add_argument("in_dir", metavar="IN_DIR", type=_folder_arg)
    watch.add_argument("--out", metavar="OUT_DIR", type=_folder_arg, required=True)
    server_options(watch)
    for sub in (serve, watch):
        sub.add_argument(
            "--poll",
            action="store_true",
            help="watch folders by polling (for network shares that miss file events)",
        )
        sub.add_argument(
            "--follow-symlinks",
            action="store_true",
            help="accept watch-folder inputs that are symbolic links to files outside the "
            "folder (refused by default)",
        )

    emulator = command("emulator", cmd_emulator, "run the local API emulator (no real lip sync)")
    emulator.add_argument("--port", type=int, default=7879, help="port (default 7879)")

    command("demo", cmd_demo, "the whole round trip on sample media (offline without a key)")

    conform = command(
        "conform",
        cmd_conform,
        "lip-sync every clip of an editor's timeline (.otio, CMX 3600 .edl, FCP 7 .xml, "
        '.fcpxml) against its dub and write the timeline back with a "Lip Sync" track of '
        "the takes; running it again adopts the jobs it made (nothing is charged twice). "
        "Exit 0 when every shot of the picture track completed, 1 when any failed or was "
        "skipped (OUT is still written, a marker on each; after failures, run it again with "
        "--retry-failed), 4 for a timeline that cannot be read or has no usable clip, a plan "
        "over --max-seconds, or an OUT that cannot be written (the jobs stay: run the same "
        "command again)",
    )
    conform.add_argument("timeline", metavar="TIMELINE", help="the timeline file")
    conform.add_argument(
        "--audio", required=True, metavar="DUB", help="the dub of the whole timeline (audio file)"
    )
    conform.add_argument(
        "--out",
        metavar="OUT",
        help="the timeline to write; its extension names the format (default: "
        "<TIMELINE stem>.lipsync.otio beside TIMELINE); takes go to the folder "
        "<OUT without extension>.lipsync beside it",
    )
    conform.add_argument(
        "--track",
        metavar="NAME",
        help="the picture track by name, or V1, V2, ... from the bottom (default: the first "
        "video track)",
    )
    conform.add_argument(
        "--audio-offset",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="where the dub starts on the timeline, in seconds from its first frame (default 0)",
    )
    conform.add_argument(
        "--rate",
        type=_fps,
        metavar="FPS",
        help="frame rate of a timeline that carries none (a CMX 3600 EDL; default: the first "
        "clip's media's rate); other formats carry their own, so it is ignored there (a note "
        "says so)",
    )
    conform.add_argument(
        "--max-seconds",
        type=_seconds,
        metavar="N",
        help="refuse a plan that bills more than N media seconds (exit 4, nothing submitted)",
    )
    conform.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (shots, source ranges, places, billable seconds); submit nothing",
    )
    conform.add_argument(
        "--no-wait",
        action="store_true",
        help="submit and return; run the same command again to wait and write OUT",
    )
    conform.add_argument(
        "--json", action="store_true", help="print the plan (and the jobs and OUT) as JSON"
    )
    conform.add_argument(
        "--retry-failed",
        action="store_true",
        help="retry the shots whose jobs failed or were canceled (through the bridge's retry; "
        "a completed shot is never sent again), then wait as usual",
    )
    return parser


def _refusal_status(http_status: int) -> int:
    """Exit status for the bridge refusing a request: 4 when the user can fix it (bad input,
    a full disk: 507), 3 when the bridge cannot be used (wrong token, its own errors)."""
    if http_status == 507 or (400 <= http_status < 500 and http_status not in (401, 403)):
        return EXIT_INPUT
    return EXIT_UNREACHABLE


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
        sys.stdout.flush()  # a reader gone away shows here, not at the interpreter's exit
        return status
    except (CliError, processes.StartError) as exc:
        print(exc, file=sys.stderr)
        return exc.code
    except ConfigError as exc:
        from bridge.daemon import EXIT_BAD_CONFIG

        print(exc, file=sys.stderr)
        return EXIT_BAD_CONFIG
    except BridgeUnavailable as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNREACHABLE
    except BridgeRequestError as exc:
        print(exc, file=sys.stderr)
        return _refusal_status(exc.status)
    except KeyboardInterrupt:
        print("Interrupted; jobs already submitted go on in the bridge.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`... --json | head`): stop quietly, as `cat` would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except BridgeError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INPUT if isinstance(exc, InputError) else EXIT_UNEXPECTED
    except Exception as exc:
        detail = " ".join(str(exc).split())
        print(
            f"chamelaion-bridge {args.command} stopped on an unexpected error "
            f"({type(exc).__name__}: {detail}); please report it.",
            file=sys.stderr,
        )
        return EXIT_UNEXPECTED
