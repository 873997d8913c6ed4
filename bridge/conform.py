"""`chamelaion-bridge conform`: every shot of a timeline lip-synced through the running bridge,
and the timeline written back with a "Lip Sync" track of the takes.

Each usable shot becomes one job of the bridge, under the shot's stable reference_id (the
same cut gives the same id) and with the conform's id as `client.file`: one listing call
follows every shot, and running the same command again (after a kill, a crash, `--no-wait`)
adopts the jobs that exist instead of submitting them again, so nothing is charged twice;
with --retry-failed the adopted jobs that failed or were canceled are retried through the
bridge (a completed one never is).
The plan comes from `bridge.timeline`; OUT is written by `bridge.conform_output`. The CLI
lends its way of reaching the bridge.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import opentimelineio as otio

from bridge import conform_output
from bridge.conform_output import Missing, Outcome, Take
from bridge.errors import InputError
from bridge.jobs import FINAL_STATES, State
from bridge.timeline import Plan, Shot, read_plan
from chamelaion_client import RETRYABLE_STATES
from chamelaion_client.client import BridgeClient, BridgeRequestError, BridgeUnavailable

EXIT_ALL_DONE = 0
EXIT_SHOT_FAILED = 1
POLL_SECONDS = 0.5
TABLE_WIDTH = 120  # a terminal's progress line, padded so a shorter one covers it
LIPSYNC_SUFFIX = ".lipsync"
RETRY_HINT = "run the same command with --retry-failed to send it again."

Connect = Callable[[], BridgeClient]


class ConformRefused(InputError):
    """The plan bills more than --max-seconds: exit 4, nothing sent."""


@dataclass(frozen=True)
class ConformOptions:
    """The command line's request, paths absolute."""

    timeline: Path
    dub: Path
    out: Path | None = None
    track: str | None = None
    audio_offset: float = 0.0
    rate: float | None = None
    max_seconds: float | None = None
    dry_run: bool = False
    no_wait: bool = False
    json: bool = False
    retry_failed: bool = False

    @property
    def out_path(self) -> Path:
        """OUT, by default `<timeline stem>.lipsync.otio` beside the timeline."""
        return self.out or self.timeline.with_name(f"{self.timeline.stem}{LIPSYNC_SUFFIX}.otio")

    @property
    def takes_dir(self) -> Path:
        """The folder of the takes beside OUT: OUT without its extension, ending in .lipsync."""
        stem = self.out_path.stem
        return self.out_path.with_name(stem if stem.endswith(LIPSYNC_SUFFIX) else stem + ".lipsync")


def conform_id(plan: Plan) -> str:
    """The `client.file` of a timeline's jobs: stable across runs, as its reference_ids are."""
    return "conform-" + hashlib.sha256(plan.name.encode("utf-8")).hexdigest()[:16]


# --- the plan ------------------------------------------------------------------------------


def load_plan(options: ConformOptions) -> Plan:
    """Read and check the plan; an InputError (exit 4) when it is not to be run: TimelineError
    (unreadable, no usable shot), ConformRefused, or OutputError (OUT's format can't hold it)."""
    plan = read_plan(
        options.timeline,
        options.dub,
        track=options.track,
        rate=options.rate,
        audio_offset=options.audio_offset,
    )
    if options.max_seconds is not None and plan.billable_seconds > options.max_seconds:
        raise ConformRefused(
            f"The plan of {options.timeline} bills {plan.billable_seconds:.3f} s, more than "
            f"--max-seconds {options.max_seconds:g}; nothing was submitted: raise the limit or "
            "conform a shorter cut."
        )
    if options.out_path.resolve() == options.timeline.resolve():
        raise conform_output.OutputError(
            f"--out names the timeline {options.timeline} itself; write the result to another "
            "file so the cut stays as it was exported."
        )
    conform_output.check_writable(plan, options.out_path)
    return plan


def _record_timecode(plan: Plan, frames: int) -> str:
    """Where a frame of the plan sits on the editor's timeline, in its notation (drop frame
    when the start is written "01:00:00;00")."""
    start = plan.start_timecode or "00:00:00:00"
    at = otio.opentime.from_timecode(start, plan.rate) + otio.opentime.RationalTime(
        frames, plan.rate
    )
    return str(otio.opentime.to_timecode(at, plan.rate, ";" in start))


def plan_lines(plan: Plan) -> list[str]:
    """The plan as a person reads it: each shot's place, source range, or why it can't go."""
    usable = len(plan.usable)
    lines = [
        f'{plan.path.name}: track "{plan.track_name}" at {plan.rate:g} fps from '
        f"{_record_timecode(plan, 0)}, {len(plan.shots)} shot(s), {usable} to lip-sync"
        + (f", {len(plan.shots) - usable} that cannot be" if usable < len(plan.shots) else "")
        + "."
    ]
    for shot in plan.shots:
        place = (
            f"{_record_timecode(plan, shot.record_start)} +{shot.frames}f "
            f"(frames {shot.record_start}-{shot.record_start + shot.frames - 1})"
        )
        if shot.problem:
            what = f"cannot be conformed: {shot.problem}"
        else:
            video, audio = shot.video_range, shot.audio_range
            what = (
                f"{Path(shot.media_path or '').name} from {video['start_seconds']:.3f} s for "
                f"{video['duration_seconds']:.3f} s; dub from {audio['start_seconds']:.3f} s"
            )
        note = f" (note: {shot.note})" if shot.note and shot.usable else ""
        lines.append(f"  {shot.position:>3}  {shot.name[:24]:<24}  {place:<34}  {what}{note}")
    lines.append(f"Billable: {plan.billable_seconds:.3f} s for {usable} shot(s).")
    return lines


# --- submitting and adopting ---------------------------------------------------------------


def _job_body(shot: Shot, options: ConformOptions, file_id: str, plan: Plan) -> dict[str, Any]:
    return {
        "video_path": shot.media_path,
        "audio_path": str(options.dub),
        "video_range": shot.video_range,
        "audio_range": shot.audio_range,
        "reference_id": shot.reference_id,
        "output_dir": str(options.takes_dir),
        "client": {
            "file": file_id,
            "conform": {"timeline": str(plan.path), "position": shot.position, "name": shot.name},
        },
    }


def _known_jobs(client: BridgeClient, file_id: str) -> dict[str, dict[str, Any]]:
    """This conform's jobs by every reference_id they had (a retried job gets a new one)."""
    known: dict[str, dict[str, Any]] = {}
    for job in client.list_jobs(file=file_id):
        for reference_id in (job["reference_id"], *job.get("previous_reference_ids", [])):
            known.setdefault(reference_id, job)
    return known


@dataclass
class Submission:
    """Each usable shot's job (by position), or why it has none, and the client that made
    them (another one when the bridge had to be found or started again meanwhile)."""

    jobs: dict[int, dict[str, Any]]
    refused: dict[int, Missing]
    adopted: int
    client: BridgeClient
    retried: int = 0


def submit_plan(
    client: BridgeClient, plan: Plan, options: ConformOptions, connect: Connect
) -> Submission:
    """Adopt the jobs that exist (retrying the failed and canceled ones with --retry-failed),
    submit the others; a shot the bridge refuses (a source that vanished) is noted with the
    bridge's sentence and the others go on. A bridge that dies meanwhile is found or started
    again and its jobs adopted anew, so a shot whose answer was lost is adopted, not charged
    twice."""
    result = Submission({}, {}, 0, client)
    while True:
        try:
            _submit_rest(plan, options, result)
            return result
        except BridgeUnavailable:
            result.client = connect()


def _submit_rest(plan: Plan, options: ConformOptions, result: Submission) -> None:
    """Submit or adopt every usable shot that has no job in `result` yet."""
    file_id = conform_id(plan)
    client = result.client
    known = _known_jobs(client, file_id)
    for shot in plan.usable:
        if shot.position in result.jobs or shot.position in result.refused:
            continue
        body = _job_body(shot, options, file_id, plan)
        job = known.get(shot.reference_id)
        try:
            if job is None:
                try:
                    result.jobs[shot.position] = client.create_job(body)
                    continue
                except BridgeRequestError as exc:
                    if exc.status != 409:
                        raise
                    job = client.get_job(shot.reference_id)
            if options.retry_failed and job["state"] in RETRYABLE_STATES:
                job = _retried(client, job)
                result.retried += 1
        except BridgeRequestError as exc:
            if not _refusal(exc):
                raise
            result.refused[shot.position] = Missing(str(exc), shot.reference_id)
            continue
        result.jobs[shot.position] = job
        result.adopted += 1


def _refusal(exc: BridgeRequestError) -> bool:
    """Whether the bridge refused this shot's request for a reason of its own (say, a source
    that vanished), not for one that stops every shot (a wrong token, its own error)."""
    return 400 <= exc.status < 500 and exc.status not in (401, 403)


def _retried(client: BridgeClient, job: dict[str, Any]) -> dict[str, Any]:
    """The job sent again by the bridge's own retry (which never pays twice for a request
    the API completed); as it is now when another client retried it first (409)."""
    try:
        return client.retry(job["id"])
    except BridgeRequestError as exc:
        if exc.status != 409:
            raise
        return client.get_job(job["id"])


# --- waiting -------------------------------------------------------------------------------


class ShotProgress:
    """One line per shot state change and per new note (why a job waits: a full disk, a 429,
    an outage), or on a terminal one redrawn line of counts and the latest note."""

    def __init__(self, stream: TextIO, plan: Plan, *, table: bool) -> None:
        self.stream, self.table = stream, table
        self.shots = {shot.position: shot for shot in plan.usable}
        self.count = len(plan.shots)  # positions count every clip of the track, usable or not
        self.states: dict[int, str] = {}
        self.notes: dict[int, str] = {}

    def update(self, jobs: Mapping[int, Mapping[str, Any]]) -> None:
        """Show what changed since the last round: lines, or the counts redrawn once."""
        moved = {p for p, job in jobs.items() if self.states.get(p) != job["state"]}
        noted = {p for p, job in jobs.items() if self.notes.get(p, "") != (job.get("note") or "")}
        self.states.update({p: jobs[p]["state"] for p in moved})
        self.notes.update({p: jobs[p].get("note") or "" for p in noted})
        if not moved and not noted:
            return
        if self.table:
            counts = Counter(self.states.values())
            line = ", ".join(f"{counts[s]} {s}" for s in State if counts[s])
            latest = next((self.notes[p] for p in sorted(noted) if self.notes[p]), "")
            line += f"; {latest}" if latest else ""
            self.stream.write(f"\rShots: {line}"[:TABLE_WIDTH].ljust(TABLE_WIDTH))
        else:
            for position in sorted(moved | noted):
                job = jobs[position]
                self.stream.write(
                    self._lines(position, job, moved=position in moved, noted=position in noted)
                )
        self.stream.flush()

    def _lines(self, position: int, job: Mapping[str, Any], *, moved: bool, noted: bool) -> str:
        """The shot's new state (with a failed job's error) and its new note, one line each."""
        shot, state, note = self.shots[position], job["state"], job.get("note")
        where = f"[{position}/{self.count}] {shot.name} ({job['reference_id']})"
        error = f": {job.get('error')}" if state == State.FAILED and job.get("error") else ""
        lines = [f"{where}: {state}{error}\n"] if moved else []
        lines += [f"{where}: {note}\n"] if noted and note else []
        return "".join(lines)

    def done(self) -> None:
        if self.table and self.states:
            self.stream.write("\n")
            self.stream.flush()


def wait_for(
    client: BridgeClient,
    plan: Plan,
    jobs: dict[int, dict[str, Any]],
    progress: ShotProgress,
    connect: Connect,
) -> dict[int, dict[str, Any]]:
    """Poll the conform's jobs with one listing call a round until all are final. A bridge
    that dies meanwhile is found or started again (the jobs live in its store)."""
    file_id = conform_id(plan)
    try:
        while True:
            progress.update(jobs)
            waiting = [p for p, job in jobs.items() if job["state"] not in FINAL_STATES]
            if not waiting:
                return jobs
            time.sleep(POLL_SECONDS)
            try:
                # The job's id ties it to its shot, whatever its reference_id became (retry).
                seen = {job["id"]: job for job in client.list_jobs(file=file_id)}
                for position in waiting:
                    job_id = jobs[position]["id"]
                    # A job adopted from elsewhere may lack this conform's file id.
                    jobs[position] = seen.get(job_id) or client.get_job(job_id)
            except BridgeUnavailable:
                client = connect()
    finally:
        progress.done()


def outcome_of(job: Mapping[str, Any]) -> Outcome:
    """A final job as the output track shows it: its take, or why there is none."""
    reference_id, request_id = job["reference_id"], job.get("request_id")
    if job["state"] == State.COMPLETED:
        path = Path(job.get("output_path") or "")
        if job.get("output_path") and path.is_file():
            return Take(path, reference_id, request_id)
        return Missing(
            f"The take of job {reference_id} is no longer at {path}; put it back there "
            "and run the same conform again.",
            reference_id,
            request_id,
        )
    if job["state"] == State.CANCELED:
        return Missing(f"Job {reference_id} was canceled.", reference_id, request_id)
    return Missing(
        job.get("error") or f"Job {reference_id} failed without a reason.",
        reference_id,
        request_id,
    )


# --- the command ---------------------------------------------------------------------------


def _report(
    plan: Plan,
    options: ConformOptions,
    jobs: Mapping[int, Mapping[str, Any]],
    outcomes: Mapping[int, Outcome],
    out: Path | None,
) -> dict[str, Any]:
    """What --json prints: the plan, each shot's result, the jobs, OUT and the takes folder."""
    shots = []
    for shot in plan.shots:
        outcome, job = outcomes.get(shot.position), jobs.get(shot.position)
        if shot.problem:
            state = "skipped"
        elif job is not None:
            state = job["state"]
        else:
            state = "refused" if outcome is not None else "planned"
        shots.append(
            {
                "position": shot.position,
                "name": shot.name,
                "reference_id": shot.reference_id,
                "state": state,
                "take": str(outcome.path) if isinstance(outcome, Take) else None,
                "error": outcome.reason if isinstance(outcome, Missing) else shot.problem or None,
                "note": shot.note or None,
            }
        )
    return {
        "plan": plan.to_json(),
        "out": str(out) if out else None,
        "takes_dir": str(options.takes_dir),
        "take_folders": _take_folders(outcomes),
        "shots": shots,
        "jobs": [dict(jobs[p], position=p) for p in sorted(jobs)],
    }


def run_conform(
    options: ConformOptions,
    connect: Connect,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    """The whole command; its exit status. TimelineError and ConformRefused (exit 4) come
    out before anything is submitted."""
    plan = load_plan(options)
    for note in plan.notes:
        stderr.write(f"Note: {note}\n")
    if options.dry_run:
        if options.json:
            report = _report(plan, options, {}, {}, None)
            json.dump({**report, "out": str(options.out_path)}, stdout, indent=2)
            stdout.write("\n")
        else:
            stdout.write("\n".join([*plan_lines(plan), "Nothing was submitted (--dry-run)."]))
            stdout.write("\n")
        return EXIT_ALL_DONE
    submission = submit_plan(connect(), plan, options, connect)
    jobs = submission.jobs
    if options.no_wait:
        return _submitted_only(plan, options, submission, stdout)
    progress = ShotProgress(stderr, plan, table=stderr.isatty())
    jobs = wait_for(submission.client, plan, jobs, progress, connect)
    outcomes: dict[int, Outcome] = {p: outcome_of(job) for p, job in jobs.items()}
    outcomes.update(submission.refused)
    out = conform_output.write_output(plan, outcomes, options.out_path)
    if options.json:
        json.dump(_report(plan, options, jobs, outcomes, out), stdout, indent=2)
        stdout.write("\n")
    else:
        stdout.write(_summary(plan, outcomes, out))
    for shot in plan.shots:
        outcome = outcomes.get(shot.position)
        if shot.problem:
            stderr.write(f"Shot {shot.position} ({shot.name}) was skipped: {shot.problem}\n")
        elif isinstance(outcome, Missing):
            line = f"Shot {shot.position} ({shot.name}) has no take: {outcome.reason}"
            if jobs.get(shot.position, {}).get("state") in RETRYABLE_STATES:
                line = f"{line.rstrip('.')}; {RETRY_HINT}"
            stderr.write(line + "\n")
    return EXIT_ALL_DONE if _all_completed(plan, outcomes) else EXIT_SHOT_FAILED


def _all_completed(plan: Plan, outcomes: Mapping[int, Outcome]) -> bool:
    """Exit 0 only when every shot of the picture track has its take: a skipped shot did not
    complete any more than a failed one did."""
    return all(isinstance(outcomes.get(shot.position), Take) for shot in plan.shots)


def _summary(plan: Plan, outcomes: Mapping[int, Outcome], out: Path) -> str:
    """The last line: how many of the track's shots have a take, how many have a marker, and
    where the takes are (the jobs' folders: adopted ones may sit beside an earlier OUT)."""
    synced = sum(isinstance(outcome, Take) for outcome in outcomes.values())
    failed = sum(isinstance(outcome, Missing) for outcome in outcomes.values())
    skipped = sum(not shot.usable for shot in plan.shots)
    counts = [f"{failed} failed"] * bool(failed) + [f"{skipped} skipped"] * bool(skipped)
    marked = f", {', '.join(counts)} (see the markers)" if counts else ""
    folders = _take_folders(outcomes)
    others = f" and {len(folders) - 1} other folder(s)" if len(folders) > 1 else ""
    where = f"; takes in {folders[0]}{others}" if folders else ""
    return (
        f"Wrote {out}: {synced} of {len(plan.shots)} shot(s) lip-synced on the track "
        f'"{conform_output.TRACK_NAME}"{marked}{where}.\n'
    )


def _take_folders(outcomes: Mapping[int, Outcome]) -> list[str]:
    """The folders the takes are in, the fullest first."""
    counts = Counter(str(o.path.parent) for o in outcomes.values() if isinstance(o, Take))
    return [folder for folder, _ in counts.most_common()]


def _submitted_only(
    plan: Plan, options: ConformOptions, submission: Submission, stdout: TextIO
) -> int:
    """--no-wait: say what was submitted; OUT is written by a later run that waits."""
    if options.json:
        report = _report(plan, options, submission.jobs, dict(submission.refused), None)
        json.dump(report, stdout, indent=2)
        stdout.write("\n")
    else:
        fresh = len(submission.jobs) - submission.adopted
        retried = f", {submission.retried} of them retried" if submission.retried else ""
        stdout.write(
            f"Submitted {fresh} shot(s) of {plan.path.name} ({submission.adopted} already "
            f"known{retried}); run the same command again without --no-wait to wait and "
            f"write {options.out_path}.\n"
        )
    return EXIT_SHOT_FAILED if submission.refused else EXIT_ALL_DONE
