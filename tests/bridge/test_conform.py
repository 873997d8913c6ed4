"""`chamelaion-bridge conform` end to end: cuts made with OpenTimelineIO from timecoded media,
conformed by the real command against a real bridge and the emulator over real HTTP, and the
written timeline read back with OpenTimelineIO. The emulator returns the uploaded picture, so
each take's frames must be exactly the source frames the shot uses."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import opentimelineio as otio
import pytest

from bridge.conform import ConformOptions, ShotProgress, plan_lines, run_conform
from bridge.emulator import EmulatorConfig, LipsyncRecord, RunningEmulator, emulator_in_background
from bridge.timeline import read_plan
from chamelaion_client.client import BridgeClient, BridgeUnavailable
from tests.bridge.processes import (
    BRIDGE,
    BridgeProcess,
    cli_env,
    one_sentence,
    run_cli,
    serving,
)
from tests.faults import faults_of
from tests.helpers import wait_until
from tests.media_samples import frame_indices
from tests.timelines import (
    RATES,
    Cut,
    make_dub,
    make_source,
    records_from_the_hour,
    ten_clip_cut,
    write_timeline,
)

FAILED_SENTENCE = "The face could not be tracked in this shot."


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    """The emulator on its own thread; requests take a second, as many at once as asked."""
    config = EmulatorConfig(queued_seconds=0.05, processing_seconds=1.0)
    with emulator_in_background(config) as running:
        yield running


@pytest.fixture(scope="module")
def env(emulator: RunningEmulator) -> dict[str, str]:
    return cli_env(
        CHAMELAION_BASE_URL=emulator.base_url,
        CHAMELAION_API_KEY="emulator-key",
        CHAMELAION_POLL_INTERVAL="0.1",
        CHAMELAION_GENERATE_PER_MINUTE="0",
        CHAMELAION_ACCEPT_GRACE="1",
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Iterator[Path]:
    """One real bridge for the module (conform finds it through the data folder)."""
    folder = tmp_path_factory.mktemp("bridge")
    with serving(folder, "--port", "0", env=env):
        yield folder


@pytest.fixture(autouse=True)
def fresh_emulator(emulator: RunningEmulator) -> RunningEmulator:
    """Each test counts only its own API calls."""
    emulator.run(emulator.state.reset())
    return emulator


def conform(
    data_dir: Path, env: dict[str, str], *args: str | Path
) -> subprocess.CompletedProcess[str]:
    return run_cli("conform", *map(str, args), "--data-dir", str(data_dir), env=env)


def cut_files(
    folder: Path, rate: str = "25", *, effect: tuple[int, otio.schema.Effect] | None = None
) -> tuple[Cut, Path, Path]:
    """The ten-clip cut at `rate` written as cut.otio (clip N carrying `effect` = (N, effect)),
    and a dub as long as the cut."""
    cut = ten_clip_cut(folder, RATES[rate])
    timeline = cut.timeline()
    if effect is not None:
        position, applied = effect
        clip = next(c for c in timeline.find_clips() if c.name == cut.clip_name(position))
        clip.effects.append(applied)
    path = write_timeline(timeline, folder / "cut.otio")
    return cut, path, make_dub(folder / "dub.wav", cut.seconds)


def lipsync_track(out: Path) -> tuple[otio.schema.Track, otio.schema.Track]:
    """OUT read back: its picture track and its "Lip Sync" track, checked to sit right above
    it and to show the same stretch of time."""
    timeline = otio.adapters.read_from_file(str(out))
    names = [track.name for track in timeline.tracks]
    assert names.count("Lip Sync") == 1, names
    index = names.index("Lip Sync")
    video = otio.schema.TrackKind.Video
    picture = next(i for i, track in enumerate(timeline.tracks) if track.kind == video)
    assert index == picture + 1 and timeline.tracks[index].kind == video
    lipsync, picture_track = timeline.tracks[index], timeline.tracks[picture]
    assert lipsync.source_range == picture_track.source_range
    return picture_track, lipsync


def place(item: otio.core.Item, rate: Fraction) -> tuple[int, int]:
    """(first frame on the timeline, frames) of an item of a track, at `rate`."""
    shown = item.range_in_parent()
    return shown.start_time.to_frames(float(rate)), shown.duration.to_frames(float(rate))


def assert_conformed(out: Path, cut: Cut) -> list[otio.schema.Clip]:
    """Every shot of the cut has its take on the Lip Sync track at its place, frame for frame."""
    picture, track = lipsync_track(out)
    clips = [item for item in track if isinstance(item, otio.schema.Clip)]
    shown = [item for item in picture if isinstance(item, otio.schema.Clip)]
    expected = cut.expected()
    assert len(clips) == len(expected)
    for clip, original, shot in zip(clips, shown, expected, strict=True):
        assert place(clip, cut.rate) == place(original, cut.rate), shot.name
        assert place(clip, cut.rate) == (shot.record_start, shot.frames), shot.name
        take = Path(clip.media_reference.target_url)
        assert take.is_absolute() and take.parent == out.with_suffix("")
        assert clip.source_range.start_time.value == 0
        assert clip.source_range.duration.to_frames(float(cut.rate)) == shot.frames
        first = shot.source_first
        assert frame_indices(take) == list(range(first, first + shot.frames)), shot.name
        ids = clip.metadata["chamelaion"]
        assert ids["reference_id"] and ids["request_id"]
    gaps = [item for item in track if isinstance(item, otio.schema.Gap)]
    assert all(not gap.markers for gap in gaps)
    return clips


@pytest.mark.parametrize(
    ("suffix", "rate"),
    [
        ("otio", "23.976"),
        ("otio", "24"),
        ("otio", "25"),
        ("otio", "29.97"),
        ("edl", "25"),
        ("xml", "23.976"),
    ],
)
def test_a_cut_is_conformed_frame_exactly(
    tmp_path: Path,
    data_dir: Path,
    env: dict[str, str],
    fresh_emulator: RunningEmulator,
    suffix: str,
    rate: str,
) -> None:
    cut = ten_clip_cut(tmp_path, RATES[rate])
    timeline = cut.timeline(available_range=suffix != "edl")
    timeline.global_start_time = otio.opentime.from_timecode("01:00:00:00", float(cut.rate))
    path = write_timeline(timeline, tmp_path / f"{cut.name}.{suffix}")
    if suffix == "edl":  # the writer starts records at 00:00:00:00, editors at the hour
        path.write_text("\n".join(map(records_from_the_hour, path.read_text().splitlines())))
    dub = make_dub(tmp_path / "dub.wav", cut.seconds + 0.5)

    result = conform(data_dir, env, path, "--audio", dub)

    assert result.returncode == 0, result.stderr
    out = tmp_path / f"{cut.name}.lipsync.otio"
    assert f"Wrote {out}: 10 of 10 shot(s)" in result.stdout
    clips = assert_conformed(out, cut)
    charged = fresh_emulator.state.stats.generate_by_reference_id
    assert sorted(charged) == sorted(c.metadata["chamelaion"]["reference_id"] for c in clips)
    assert set(charged.values()) == {1}


def test_failed_and_unconformable_shots_are_gaps_with_their_reason(
    tmp_path: Path, data_dir: Path, env: dict[str, str], fresh_emulator: RunningEmulator
) -> None:
    cut, path, dub = cut_files(tmp_path, effect=(7, otio.schema.LinearTimeWarp(time_scalar=2.0)))

    def fail_shot_four(record: LipsyncRecord) -> None:
        if "-004-" in (record.reference_id or ""):
            record.status, record.error_message, record.output_url = "failed", "x", None

    fresh_emulator.state.hooks.finishers.append(fail_shot_four)
    out = tmp_path / "result.otio"
    result = conform(data_dir, env, path, "--audio", dub, "--out", out, "--json")

    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    failed, skipped = report["shots"][3], report["shots"][6]
    assert failed["state"] == "failed" and failed["take"] is None and failed["error"]
    assert skipped["state"] == "skipped" and "speed" in skipped["error"]
    told = f"Shot 4 ({failed['name']}) has no take: {failed['error'].rstrip('.')}; run the same"
    assert f"{told} command with --retry-failed to send it again.\n" in result.stderr
    assert f"Shot 7 ({skipped['name']}) was skipped: {skipped['error']}\n" in result.stderr
    assert result.stderr.count(": completed\n") == 8  # one line per shot and state
    assert f"[10/10] {cut.clip_name(10)} (" in result.stderr  # the track's clips, not the jobs
    assert result.stderr.count(f"({failed['reference_id']}): failed: {failed['error']}\n") == 1
    assert report["out"] == str(out) and report["takes_dir"] == str(tmp_path / "result.lipsync")
    assert [job["position"] for job in report["jobs"]] == [1, 2, 3, 4, 5, 6, 8, 9, 10]
    assert len(fresh_emulator.state.stats.generate_by_reference_id) == 9
    _, track = lipsync_track(out)
    marked = [item for item in track if isinstance(item, otio.schema.Gap) and item.markers]
    assert len(marked) == 2
    expected = cut.expected()
    for gap, shot, wanted in zip(marked, (failed, skipped), expected[3:7:3], strict=True):
        assert place(gap, cut.rate) == (wanted.record_start, wanted.frames)
        assert [marker.name for marker in gap.markers] == [shot["error"]]
    clips = [item.name for item in track if isinstance(item, otio.schema.Clip)]
    assert len(clips) == 8 and failed["name"] not in clips and skipped["name"] not in clips


def test_a_skipped_shot_is_counted_and_makes_the_exit_1_and_a_short_dub_is_noted(
    tmp_path: Path, data_dir: Path, env: dict[str, str], fresh_emulator: RunningEmulator
) -> None:
    cut, path, dub = cut_files(tmp_path, effect=(2, otio.schema.FreezeFrame()))
    make_dub(dub, cut.seconds - 0.1)  # ends inside the last shot

    planned = conform(data_dir, env, path, "--audio", dub, "--dry-run")
    result = conform(data_dir, env, path, "--audio", dub)

    assert planned.returncode == 0, planned.stderr
    last = planned.stdout.splitlines()[-3]
    assert last.lstrip().startswith("10 ") and "(note: the dub ends " in last
    assert result.returncode == 1, result.stderr
    out = tmp_path / "cut.lipsync.otio"
    assert f"Wrote {out}: 9 of 10 shot(s) lip-synced" in result.stdout
    assert "1 skipped (see the markers)" in result.stdout and "failed" not in result.stdout
    assert f"Shot 2 ({cut.clip_name(2)}) was skipped: it is a freeze frame" in result.stderr
    assert len(fresh_emulator.state.stats.generate_by_reference_id) == 9


def test_dry_run_and_limits_submit_nothing(
    tmp_path: Path, data_dir: Path, env: dict[str, str], fresh_emulator: RunningEmulator
) -> None:
    cut = ten_clip_cut(tmp_path, RATES["29.97"])
    timeline = cut.timeline()
    timeline.global_start_time = otio.opentime.from_timecode("01:00:00:00", float(cut.rate))
    path = write_timeline(timeline, tmp_path / "cut.otio")
    dub = make_dub(tmp_path / "dub.wav", cut.seconds)
    billable = sum(shot.frames for shot in cut.expected()) / float(cut.rate)

    text = conform(data_dir, env, path, "--audio", dub, "--dry-run")
    plan = json.loads(conform(data_dir, env, path, "--audio", dub, "--dry-run", "--json").stdout)
    over = conform(data_dir, env, path, "--audio", dub, "--max-seconds", f"{billable - 0.1:.3f}")
    edl_out = conform(data_dir, env, path, "--audio", dub, "--out", tmp_path / "cut.edl")
    itself = conform(data_dir, env, path, "--audio", dub, "--out", path)

    assert text.returncode == 0, text.stderr
    assert f"Billable: {billable:.3f} s for 10 shot(s)." in text.stdout
    assert "01:00:00:06 +5f (frames 6-10)" in text.stdout  # shot 2's place on the timeline
    assert plan["plan"]["billable_seconds"] == pytest.approx(billable)
    assert {shot["state"] for shot in plan["shots"]} == {"planned"}
    assert [s["frames"] for s in plan["plan"]["shots"]] == [s.frames for s in cut.expected()]
    assert over.returncode == 4 and str(path) in one_sentence(over.stderr)
    assert "--max-seconds" in over.stderr
    assert edl_out.returncode == 4 and "cut.edl" in one_sentence(edl_out.stderr)
    assert itself.returncode == 4 and "itself" in one_sentence(itself.stderr)
    assert fresh_emulator.state.stats.calls == {}
    client = BridgeClient(data_dir=data_dir)
    assert [job for job in client.list_jobs() if str(tmp_path) in job["audio_path"]] == []
    assert not (tmp_path / "cut.lipsync.otio").exists()


def test_a_rerun_with_another_out_says_where_the_adopted_takes_are(
    tmp_path: Path, data_dir: Path, env: dict[str, str], fresh_emulator: RunningEmulator
) -> None:
    cut, path, dub = cut_files(tmp_path, "24")
    first = conform(data_dir, env, path, "--audio", dub, "--out", tmp_path / "a.otio")
    assert first.returncode == 0, first.stderr

    again = conform(data_dir, env, path, "--audio", dub, "--out", tmp_path / "b.otio")

    assert again.returncode == 0, again.stderr
    assert again.stdout.endswith(f"; takes in {tmp_path / 'a.lipsync'}.\n")
    assert not (tmp_path / "b.lipsync").exists()
    _, track = lipsync_track(tmp_path / "b.otio")
    takes = {Path(c.media_reference.target_url).parent for c in track.find_clips()}
    assert takes == {tmp_path / "a.lipsync"}
    assert len(fresh_emulator.state.stats.generate_by_reference_id) == 10


def test_rate_and_out_mistakes_are_said_plainly(
    tmp_path: Path, data_dir: Path, env: dict[str, str], fresh_emulator: RunningEmulator
) -> None:
    cut, path, dub = cut_files(tmp_path)

    not_fps = conform(data_dir, env, path, "--audio", dub, "--rate", "abc", "--dry-run")
    ignored = conform(data_dir, env, path, "--audio", dub, "--rate", "30", "--dry-run")
    folder = conform(data_dir, env, path, "--audio", dub, "--out", f"{tmp_path}/")

    assert not_fps.returncode == 2
    assert "'abc' is not a frame rate in fps, such as 25 or 23.976" in one_sentence(not_fps.stderr)
    assert ignored.returncode == 0 and "Billable:" in ignored.stdout
    assert ignored.stderr == (
        "Note: The rate given (30 fps) is ignored: cut.otio carries its own (25.000 fps).\n"
    )
    assert folder.returncode == 4
    assert one_sentence(folder.stderr) == (
        f"--out names the folder {tmp_path}; give the file to write, such as "
        f"{tmp_path / 'cut.lipsync.otio'}."
    )
    assert fresh_emulator.state.stats.calls == {}


def test_what_used_to_crash_is_one_sentence_or_quiet(
    tmp_path: Path, data_dir: Path, env: dict[str, str], fresh_emulator: RunningEmulator
) -> None:
    cut = ten_clip_cut(tmp_path, RATES["25"])
    edl = write_timeline(cut.timeline(available_range=False), tmp_path / "cut.edl")
    dub = make_dub(tmp_path / "dub.wav", cut.seconds)
    holds_a_clip = tmp_path / "clip.otio"
    otio.adapters.write_to_file(next(iter(cut.timeline().find_clips())), str(holds_a_clip))
    read, write = os.pipe()
    os.close(read)  # `| head` that has already gone away

    as_xml = conform(data_dir, env, edl, "--audio", dub, "--out", tmp_path / "cut.xml")
    a_clip = conform(data_dir, env, holds_a_clip, "--audio", dub, "--dry-run")
    piped = subprocess.run(
        [*BRIDGE, "conform", str(edl), "--audio", str(dub), "--dry-run", "--json"],
        env=env,
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    os.close(write)

    assert as_xml.returncode == 4 and "cut.xml cannot hold the result" in one_sentence(
        as_xml.stderr
    )
    assert a_clip.returncode == 4
    assert one_sentence(a_clip.stderr) == (
        f"The file {holds_a_clip} holds a Clip, not a timeline; export the sequence itself "
        "from your editor."
    )
    assert piped.returncode == 141 and piped.stderr == ""
    assert fresh_emulator.state.stats.calls == {}


@pytest.mark.parametrize("interruption", ["sigkill", "no-wait"])
def test_an_interrupted_conform_run_again_charges_nothing_twice(
    tmp_path: Path,
    data_dir: Path,
    env: dict[str, str],
    fresh_emulator: RunningEmulator,
    interruption: str,
) -> None:
    cut, path, dub = cut_files(tmp_path, "24")
    command = ["conform", str(path), "--audio", str(dub), "--data-dir", str(data_dir)]
    client = BridgeClient(data_dir=data_dir)

    def ours() -> list[dict[str, Any]]:
        return [job for job in client.list_jobs() if job["audio_path"] == str(dub)]

    if interruption == "sigkill":
        first = subprocess.Popen([*BRIDGE, *command], env=env, stdout=subprocess.PIPE)
        wait_until(lambda: ours(), message="the conform to submit a shot")
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
        assert first.returncode == -signal.SIGKILL
    else:
        submitted = run_cli(*command, "--no-wait", env=env)
        assert submitted.returncode == 0, submitted.stderr
        assert "Submitted 10 shot(s) of cut.otio (0 already known)" in submitted.stdout
        assert len(ours()) == 10
    out = tmp_path / "cut.lipsync.otio"
    assert not out.exists()

    again = run_cli(*command, env=env)

    assert again.returncode == 0, again.stderr
    assert_conformed(out, cut)
    charged = fresh_emulator.state.stats.generate_by_reference_id
    assert len(charged) == 10 and set(charged.values()) == {1}
    assert len(ours()) == 10


def test_a_bridge_killed_while_submitting_is_started_again_and_nothing_charged_twice(
    tmp_path: Path, emulator: RunningEmulator, fresh_emulator: RunningEmulator
) -> None:
    cut, path, dub = cut_files(tmp_path)
    bridge = BridgeProcess(tmp_path / "bridge", emulator.base_url)
    bridge.env["CHAMELAION_GENERATE_PER_MINUTE"] = "0"

    class DiesOnTheThirdShot(BridgeClient):
        """The bridge takes the third shot and is killed before it answers."""

        def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
            job = super().create_job(body)
            if "-003-" in body["reference_id"]:
                bridge.kill()
                raise BridgeUnavailable("The bridge went away.")
            return job

    connections: list[BridgeClient] = []

    def connect() -> BridgeClient:
        client = bridge.start()
        if not connections:
            client = DiesOnTheThirdShot(url=client.url, data_dir=bridge.data_dir)
        connections.append(client)
        return client

    try:
        status = run_conform(
            ConformOptions(timeline=path, dub=dub), connect, io.StringIO(), io.StringIO()
        )
        jobs = connections[-1].list_jobs()
    finally:
        bridge.stop()

    assert status == 0 and len(connections) == 2
    assert_conformed(tmp_path / "cut.lipsync.otio", cut)
    assert len(jobs) == 10
    charged = fresh_emulator.state.stats.generate_by_reference_id
    assert len(charged) == 10 and set(charged.values()) == {1}


def test_a_rerun_with_retry_failed_sends_the_failed_shot_again_and_no_other(
    tmp_path: Path, data_dir: Path, env: dict[str, str], fresh_emulator: RunningEmulator
) -> None:
    cut, path, dub = cut_files(tmp_path)
    out = tmp_path / "cut.lipsync.otio"
    faults_of(fresh_emulator).fail_next(1, "No face was found.")
    charged = fresh_emulator.state.stats.generate_by_reference_id

    first = conform(data_dir, env, path, "--audio", dub, "--json")
    again = conform(data_dir, env, path, "--audio", dub)

    assert first.returncode == again.returncode == 1, again.stderr
    failed = [shot for shot in json.loads(first.stdout)["shots"] if shot["state"] == "failed"]
    assert len(failed) == 1 and "No face was found" in failed[0]["error"]
    for run in (first, again):  # the rerun without the flag adopts the failed job as it is
        told = [line for line in run.stderr.splitlines() if "has no take" in line]
        assert len(told) == 1 and f"({failed[0]['name']})" in told[0]
        assert told[0].endswith("; run the same command with --retry-failed to send it again.")
    after_first = dict(charged)
    assert len(after_first) == 10 and set(after_first.values()) == {1}

    sent = conform(data_dir, env, path, "--audio", dub, "--retry-failed", "--no-wait")
    retried = conform(data_dir, env, path, "--audio", dub, "--retry-failed")

    assert sent.returncode == 0, sent.stderr
    assert "Submitted 0 shot(s) of cut.otio (10 already known, 1 of them retried)" in sent.stdout
    assert retried.returncode == 0, retried.stderr
    assert "has no take" not in retried.stderr
    assert_conformed(out, cut)
    fresh = {ref: count for ref, count in charged.items() if ref not in after_first}
    assert len(fresh) == 1 and set(fresh.values()) == {1}  # the failed shot, once, anew
    assert {ref: charged[ref] for ref in after_first} == after_first  # no other shot again
    assert conform(data_dir, env, path, "--audio", dub, "--retry-failed").returncode == 0
    assert len(charged) == 11 and set(charged.values()) == {1}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_progress_is_one_line_of_counts(
    tmp_path: Path, data_dir: Path, fresh_emulator: RunningEmulator
) -> None:
    cut, path, dub = cut_files(tmp_path)
    options = ConformOptions(timeline=path, dub=dub)
    stdout, terminal = io.StringIO(), Terminal()

    status = run_conform(options, lambda: BridgeClient(data_dir=data_dir), stdout, terminal)

    assert status == 0
    shown = terminal.getvalue()
    assert shown.startswith("\rShots: 10 queued") and shown.endswith("\n")
    assert shown.count("\n") == 1 and "\rShots: 10 completed" in shown
    assert stdout.getvalue().startswith(f"Wrote {options.out_path}: 10 of 10 shot(s)")


def test_a_waiting_shots_note_is_shown_when_it_changes(tmp_path: Path) -> None:
    cut, path, dub = cut_files(tmp_path)
    plan = read_plan(path, dub)
    full = "Waiting to download the result: The disk holding /takes is full; free some space."
    lines, terminal = io.StringIO(), Terminal()
    for stream, table in ((lines, False), (terminal, True)):
        progress = ShotProgress(stream, plan, table=table)
        job = {"id": "j1", "reference_id": "r1", "state": "downloading", "note": None}
        for note in (None, full, full, None):
            progress.update({1: dict(job, note=note)})
        progress.update({1: dict(job, state="completed")})
        progress.done()

    where = f"[1/10] {cut.clip_name(1)} (r1)"
    assert lines.getvalue().splitlines() == [
        f"{where}: downloading",
        f"{where}: {full}",
        f"{where}: completed",
    ]
    assert f"\rShots: 1 downloading; {full}" in terminal.getvalue()
    assert terminal.getvalue().count("\r") == 4  # the note came and went, then completed


def drop_frame_edl(folder: Path) -> Path:
    """An EDL as Avid writes it at 29.97 drop frame: `FCM: DROP FRAME`, colon timecodes."""
    source = make_source(folder / "a.mp4", 30, RATES["29.97"], timecode=None)
    path = folder / "df.edl"
    path.write_text(
        "TITLE: df\nFCM: DROP FRAME\n\n"
        "001  AX       V     C        00:00:00:00 00:00:00:06 01:00:00:00 01:00:00:06\n"
        f"* FROM CLIP: {source.path}\n"
        "002  AX       V     C        00:00:00:10 00:00:00:15 01:00:00:06 01:00:00:11\n"
        f"* FROM CLIP: {source.path}\n"
    )
    return path


@pytest.mark.parametrize("kind", ["xml", "edl-semicolons", "edl-fcm", "otio"])
def test_drop_frame_timelines_show_drop_frame_timecode(tmp_path: Path, kind: str) -> None:
    cut = ten_clip_cut(tmp_path, RATES["29.97"])
    timeline = cut.timeline()
    start = "01:00:00;00" if kind == "xml" else "01:00:00:00"
    timeline.global_start_time = otio.opentime.from_timecode(start, float(cut.rate))
    if kind == "xml":  # as Premiere writes a drop-frame sequence
        timeline.metadata["fcp_xml"] = {
            "timecode": {"displayformat": "DF", "rate": {"ntsc": "TRUE", "timebase": "30"}}
        }
    if kind == "edl-fcm":
        path = drop_frame_edl(tmp_path)
    else:
        path = write_timeline(timeline, tmp_path / f"cut.{kind.split('-')[0]}")
    if kind == "edl-semicolons":  # OpenTimelineIO writes ';' at 29.97, records from 00:00:00
        path.write_text("\n".join(map(records_from_the_hour, path.read_text().splitlines())))
    plan = read_plan(path, make_dub(tmp_path / "dub.wav", cut.seconds))
    later = replace(plan, shots=(replace(plan.shots[1], record_start=1800),))

    lines = plan_lines(plan)

    if kind == "otio":  # an .otio says nothing of drop frame: non-drop, as before
        assert plan.start_timecode == "01:00:00:00" and "01:00:00:06 +5f" in lines[2]
        assert "01:01:00:00 +5f" in plan_lines(later)[1]
        return
    assert plan.start_timecode == "01:00:00;00" and "from 01:00:00;00" in lines[0]
    assert "01:00:00;06 +5f (frames 6-10)" in lines[2]
    assert "01:01:00;02 +5f (frames 1800-1804)" in plan_lines(later)[1]  # ;00 and ;01 dropped
