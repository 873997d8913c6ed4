"""bridge.timeline: timelines in every format OpenTimelineIO reads, made from timecoded media,
read into plans whose every frame number is checked against the cut that made them."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import opentimelineio as otio
import pytest
from opentimelineio.opentime import RationalTime, TimeRange

from bridge import media
from bridge.errors import InputError
from bridge.jobs import check_reference_id
from bridge.timeline import Plan, TimelineError, read_plan
from tests.media_samples import frame_indices
from tests.timelines import (
    RATES,
    Cut,
    CutClip,
    make_dub,
    make_source,
    records_from_the_hour,
    ten_clip_cut,
    write_timeline,
)

FORMATS = ["otio", "edl", "xml"]
Made = tuple[Path, Cut, Path]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Made]:
    """(folder, ten-clip cut, dub) at a rate, made once per rate for the module."""
    cache: dict[str, Made] = {}

    def make(rate_name: str) -> Made:
        if rate_name not in cache:
            folder = tmp_path_factory.mktemp(f"cut-{rate_name}")
            cut = ten_clip_cut(folder, RATES[rate_name])
            cache[rate_name] = folder, cut, make_dub(folder / "dub.wav", cut.seconds + 1)
        return cache[rate_name]

    return make


def placed(plan: Plan) -> list[tuple[int, str, int, int, str | None, int]]:
    return [
        (s.position, s.name, s.record_start, s.frames, s.media_path, s.source_first)
        for s in plan.shots
    ]


def expected(cut: Cut) -> list[tuple[int, str, int, int, str | None, int]]:
    return [
        (e.position, e.name, e.record_start, e.frames, str(e.source.path), e.source_first)
        for e in cut.expected()
    ]


def problems(plan: Plan) -> dict[int, str]:
    return {shot.position: shot.problem for shot in plan.shots if shot.problem}


# ---------------------------------------------------------------------------------------------
# Every format, every rate: frame exact


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("rate_name", list(RATES))
def test_each_format_at_each_rate_places_every_clip_frame_exactly(
    made: Callable[[str], Made], rate_name: str, suffix: str
) -> None:
    folder, cut, dub = made(rate_name)
    path = write_timeline(cut.timeline(), folder / f"exact.{suffix}")
    plan = read_plan(path, dub)
    assert plan.name == "ep101"
    assert plan.rate == pytest.approx(float(cut.rate), abs=1e-9)
    assert plan.track_index == 0
    assert plan.start_timecode in ("00:00:00:00", "00:00:00;00")
    assert placed(plan) == expected(cut)
    assert problems(plan) == {}
    assert [s.source_rate for s in plan.shots] == pytest.approx([float(cut.rate)] * 10)
    assert [s.audio_start for s in plan.shots] == pytest.approx(
        [float(e.record_start / cut.rate) for e in cut.expected()], abs=1e-9
    )
    assert plan.billable_seconds == pytest.approx(
        float(sum(clip.frames for clip in cut.clips) / cut.rate)
    )


@pytest.mark.parametrize(
    ("suffix", "rate_name"), [("otio", "29.97"), ("xml", "29.97"), ("edl", "25")]
)
def test_a_timeline_starting_at_01_00_00_00_counts_from_its_first_frame(
    made: Callable[[str], Made], suffix: str, rate_name: str
) -> None:
    folder, cut, dub = made(rate_name)
    timeline = cut.timeline()
    timeline.global_start_time = otio.opentime.from_timecode("01:00:00:00", float(cut.rate))
    path = write_timeline(timeline, folder / f"hour.{suffix}")
    if suffix == "edl":  # the writer starts records at 00:00:00:00; editors at the hour
        path.write_text("\n".join(map(records_from_the_hour, path.read_text().splitlines())))
    plan = read_plan(path, dub)
    assert plan.start_timecode == "01:00:00:00"
    assert placed(plan) == expected(cut)
    assert plan.shots[1].audio_start == pytest.approx(float(6 / cut.rate))


@pytest.mark.parametrize("rate_name", ["24", "25"])
def test_fcpxml_at_whole_rates(made: Callable[[str], Made], rate_name: str) -> None:
    folder, cut, dub = made(rate_name)
    plan = read_plan(write_timeline(cut.timeline(), folder / "exact.fcpxml"), dub)
    assert placed(plan) == expected(cut)
    assert problems(plan) == {}


def test_fcpxml_at_2997_is_refused_with_the_format_to_use_instead(
    made: Callable[[str], Made],
) -> None:
    """The FCPXML adapter counts 29.97 fps as 29: the plan says so instead of sending
    frames that drift."""
    folder, cut, dub = made("29.97")
    timeline = cut.timeline(stated_rate=29.97)  # the writer knows no other 29.97
    path = write_timeline(timeline, folder / "ntsc.fcpxml")
    with pytest.raises(TimelineError, match=r"29\.970 fps but the timeline at 29\.000 fps.*\.otio"):
        read_plan(path, dub)


@pytest.mark.parametrize(("rate_name", "stated"), [("23.976", 23.976), ("29.97", 29.97)])
def test_a_rate_stated_rounded_counts_frames_exactly_at_23h(
    rate_name: str, stated: float, tmp_path: Path
) -> None:
    """An editor's 29.97 is 30000/1001: at 23:00:00:00 converting between the two would be
    off by two frames, counting frames at the stated rate is exact."""
    rate = RATES[rate_name]
    source = make_source(tmp_path / "late.mp4", 30, rate, timecode="23:00:00:00")
    cut = Cut("late", rate, (CutClip(source, 20, 6), CutClip(source, 3, 4, gap_before=2)))
    timeline = cut.timeline(stated_rate=stated)
    plan = read_plan(
        write_timeline(timeline, tmp_path / "late.otio"), make_dub(tmp_path / "d.wav", 1)
    )
    assert placed(plan) == expected(cut)
    assert problems(plan) == {}


@pytest.mark.parametrize("rate_name", list(RATES))
def test_each_shots_video_range_cuts_exactly_its_frames_from_the_file(
    made: Callable[[str], Made], rate_name: str, tmp_path: Path
) -> None:
    """Through the EDL (no available range: the files' 01:00:00:00 timecode places the
    sources) down to the cut bridge.media makes for the upload."""
    folder, cut, dub = made(rate_name)
    plan = read_plan(write_timeline(cut.timeline(), folder / "cuts.edl"), dub)
    for shot in (plan.shots[0], plan.shots[4], plan.shots[5], plan.shots[8]):
        start, duration = shot.video_range["start_seconds"], shot.video_range["duration_seconds"]
        sent = media.prepare_video(Path(shot.media_path), tmp_path, (start, duration))
        assert frame_indices(sent) == list(
            range(shot.source_first, shot.source_first + shot.frames)
        )
        assert shot.audio_range == {
            "start_seconds": shot.audio_start,
            "duration_seconds": pytest.approx(float(shot.frames / cut.rate)),
        }


# ---------------------------------------------------------------------------------------------
# Where the source range lands in the file


def test_a_clip_at_01_00_10_00_of_a_file_starting_01_00_00_00_sends_from_10_s(
    tmp_path: Path,
) -> None:
    source = make_source(tmp_path / "take.mp4", 260, Fraction(25))
    cut = Cut("tc", Fraction(25), (CutClip(source, 250, 10),))
    dub = make_dub(tmp_path / "dub.wav", 2)
    edl = write_timeline(cut.timeline(), tmp_path / "tc.edl")
    assert "01:00:10:00 01:00:10:10" in edl.read_text()
    for path in (
        edl,
        write_timeline(cut.timeline(available_range=False), tmp_path / "tc-tag.otio"),
        write_timeline(cut.timeline(), tmp_path / "tc-range.otio"),
    ):
        (shot,) = read_plan(path, dub).shots
        assert (shot.source_first, shot.frames) == (250, 10), path.name
        assert shot.video_range == {"start_seconds": 10.0, "duration_seconds": 0.4}


def test_the_available_range_wins_over_the_files_timecode_and_no_timecode_means_0(
    tmp_path: Path,
) -> None:
    tagged = make_source(tmp_path / "tagged.mp4", 40, Fraction(24))
    untagged = make_source(tmp_path / "untagged.mp4", 40, Fraction(24), timecode=None)
    cut = Cut("tc", Fraction(24), (CutClip(tagged, 30, 5), CutClip(untagged, 7, 5)))
    dub = make_dub(tmp_path / "dub.wav", 1)
    timeline = cut.timeline(available_range=False)
    first = timeline.find_clips()[0]
    first.media_reference.available_range = TimeRange(
        otio.opentime.from_timecode("01:00:01:00", 24), RationalTime(40, 24)
    )
    plan = read_plan(write_timeline(timeline, tmp_path / "ranges.otio"), dub)
    assert [s.source_first for s in plan.shots] == [30 - 24, 7]
    assert problems(plan) == {}


@pytest.mark.parametrize("how", ["relative", "file-url"])
@pytest.mark.parametrize("suffix", FORMATS)
def test_media_paths_relative_to_the_timeline_or_file_urls(
    made: Callable[[str], Made],
    suffix: str,
    how: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder, cut, dub = made("25")
    timeline = cut.timeline(relative_to=folder if how == "relative" else None)
    if how == "file-url":
        for clip in timeline.find_clips():
            clip.media_reference.target_url = Path(clip.media_reference.target_url).as_uri()
    path = write_timeline(timeline, folder / f"{how}.{suffix}")
    if how == "relative":
        assert str(folder) not in path.read_text()
    monkeypatch.chdir(tmp_path)  # elsewhere: only the timeline's folder can resolve them
    plan = read_plan(Path(os.path.relpath(path, tmp_path)), dub)
    assert plan.path == path
    assert placed(plan) == expected(cut)


# ---------------------------------------------------------------------------------------------
# EDLs carry no frame rate


def test_an_edl_is_read_at_the_rate_given_and_says_when_it_is_not_the_medias(
    made: Callable[[str], Made],
) -> None:
    folder, cut, dub = made("23.976")
    path = write_timeline(cut.timeline(), folder / "rate.edl")
    for named in (float(RATES["23.976"]), 23.976, 23.98):  # as Resolve, Premiere, Avid name it
        plan = read_plan(path, dub, rate=named)
        assert placed(plan) == expected(cut) and problems(plan) == {}
    with pytest.raises(TimelineError, match=r"23\.976 fps but the timeline at 24\.000 fps"):
        read_plan(path, dub, rate=24)


def test_an_edl_that_only_names_its_files_finds_them_beside_it(tmp_path: Path) -> None:
    """Resolve and Premiere write '* FROM CLIP NAME: A001_C002.mov' and no path."""
    sources = [make_source(tmp_path / f"A00{n}.mp4", 20, RATES["29.97"]) for n in (1, 2)]
    clips = (CutClip(sources[0], 2, 5, name="A001.mp4"), CutClip(sources[1], 9, 4, name="A002.mp4"))
    cut = Cut("names", RATES["29.97"], clips)
    path = write_timeline(cut.timeline(), tmp_path / "names.edl")
    path.write_text(
        "".join(
            line for line in path.read_text().splitlines(keepends=True) if "FROM CLIP:" not in line
        )
    )
    plan = read_plan(path, make_dub(tmp_path / "dub.wav", 1))
    assert placed(plan) == expected(cut)
    sources[1].path.unlink()
    plan = read_plan(path, make_dub(tmp_path / "dub.wav", 1))
    assert "offline" in plan.shots[1].problem and plan.shots[1].media_path is None


@pytest.mark.parametrize("rate", [0, -25, float("nan"), 2400])
def test_a_rate_that_is_no_frame_rate_is_refused(made: Callable[[str], Made], rate: float) -> None:
    folder, cut, dub = made("25")
    path = write_timeline(cut.timeline(), folder / "badrate.edl")
    with pytest.raises(InputError, match="is not a frame rate; give one such as 25"):
        read_plan(path, dub, rate=rate)


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_an_edls_source_file_comments_name_the_media(tmp_path: Path, how: str) -> None:
    """Resolve and Premiere write '* SOURCE FILE: /path/A001.mov' under each event."""
    sources = [make_source(tmp_path / "media" / f"s{n}.mp4", 20, RATES["25"]) for n in (1, 2)]
    clips = (CutClip(sources[0], 2, 5, name="one"), CutClip(sources[1], 9, 4, name="two"))
    cut = Cut("comments", RATES["25"], clips)
    path = write_timeline(cut.timeline(), tmp_path / "comments.edl")
    named = {str(s.path): str(s.path.relative_to(tmp_path)) for s in sources}
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("* FROM CLIP:"):
            media = line.partition(":")[2].strip()
            line = f"* SOURCE FILE: {media if how == 'absolute' else named[media]}"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")

    plan = read_plan(path, make_dub(tmp_path / "dub.wav", 1))

    assert placed(plan) == expected(cut) and problems(plan) == {}
    sources[1].path.unlink()
    plan = read_plan(path, make_dub(tmp_path / "dub.wav", 1))
    assert plan.shots[1].media_path == str(sources[1].path)
    assert "s2.mp4" in plan.shots[1].problem


def test_an_edl_whose_media_cannot_be_found_says_so_not_that_it_lacks_a_rate(
    tmp_path: Path,
) -> None:
    source = make_source(tmp_path / "gone.mp4", 10, Fraction(25))
    path = write_timeline(
        Cut("lost", Fraction(25), (CutClip(source, 0, 5),)).timeline(), tmp_path / "lost.edl"
    )
    dub = make_dub(tmp_path / "dub.wav", 1)
    source.path.write_text("not a video")
    with pytest.raises(TimelineError, match=rf"{path} carries no frame rate.*--rate"):
        read_plan(path, dub)
    source.path.unlink()
    with pytest.raises(TimelineError) as caught:
        read_plan(path, dub)
    message = str(caught.value)
    assert message.startswith(f"None of the media files of the timeline {path} were found")
    assert str(source.path) in message and "rate" not in message


# ---------------------------------------------------------------------------------------------
# Honest about what can't be conformed


@pytest.mark.parametrize("suffix", ["otio", "edl"])
def test_transitions_speed_changes_freeze_frames_and_effects_are_problems_others_go(
    made: Callable[[str], Made], suffix: str
) -> None:
    folder, cut, dub = made("25")
    timeline = cut.timeline()
    track = timeline.tracks[0]
    clips = list(timeline.find_clips())
    track.insert(
        track.index(clips[1]),
        otio.schema.Transition(
            transition_type=otio.schema.TransitionTypes.SMPTE_Dissolve,
            in_offset=RationalTime(2, 25),
            out_offset=RationalTime(2, 25),
        ),
    )
    clips[3].effects.append(otio.schema.LinearTimeWarp(time_scalar=0.5))
    clips[5].effects.append(otio.schema.FreezeFrame())
    clips[7].effects.append(otio.schema.Effect(effect_name="Gaussian Blur"))
    plan = read_plan(write_timeline(timeline, folder / f"fx.{suffix}"), dub)
    found = problems(plan)
    assert "transition" in found.pop(1) and "transition" in found.pop(2)
    assert "50% speed" in found.pop(4)
    assert "freeze frame" in found.pop(6)
    if suffix == "otio":  # an EDL has no way to say "blur"
        assert "'Gaussian Blur'" in found.pop(8)
    assert found == {}
    usable = [s.position for s in plan.usable]
    assert usable == ([3, 5, 7, 8, 9, 10] if suffix == "edl" else [3, 5, 7, 9, 10])
    assert plan.billable_seconds == pytest.approx(sum(s.frames for s in plan.usable) / 25)
    for shot, wanted in zip(plan.shots[2:], cut.expected()[2:], strict=True):
        assert (shot.record_start, shot.source_first) == (wanted.record_start, wanted.source_first)


def test_a_speed_change_from_an_fcp7_xml_filter_is_a_problem(made: Callable[[str], Made]) -> None:
    folder, cut, dub = made("25")
    path = write_timeline(cut.timeline(), folder / "remap.xml")
    remap = (
        "<filter><effect><name>Time Remap</name><effectid>timeremap</effectid>"
        "<effecttype>motion</effecttype><mediatype>video</mediatype></effect></filter>"
    )
    path.write_text(path.read_text().replace("</clipitem>", f"{remap}</clipitem>", 1))
    plan = read_plan(path, dub)
    assert list(problems(plan)) == [1]
    assert "'Time Remap'" in plan.shots[0].problem


def test_missing_remote_short_or_foreign_rate_media_are_problems(tmp_path: Path) -> None:
    good = make_source(tmp_path / "good.mp4", 20, Fraction(25))
    pal = make_source(tmp_path / "film.mp4", 20, Fraction(24))
    clips = tuple(CutClip(good, 0, 5) for _ in range(4)) + (
        CutClip(pal, 0, 5),
        CutClip(good, 18, 5),
        CutClip(good, 0, 5),
        CutClip(good, 0, 5),
    )
    timeline = Cut("bad", Fraction(25), clips).timeline()
    refs = [clip.media_reference for clip in timeline.find_clips()]
    refs[1].target_url = str(tmp_path / "missing.mp4")
    refs[2].target_url = "https://example.com/A001.mp4"
    (tmp_path / "notes.mp4").write_text("not a video")
    refs[3].target_url = str(tmp_path / "notes.mp4")
    timeline.find_clips()[6].media_reference = otio.schema.GeneratorReference(generator_kind="bars")
    timeline.find_clips()[7].enabled = False
    plan = read_plan(
        write_timeline(timeline, tmp_path / "bad.otio"), make_dub(tmp_path / "d.wav", 2)
    )
    found = problems(plan)
    assert "does not exist" in found.pop(2)
    assert "not a local file" in found.pop(3)
    assert "notes.mp4" in found.pop(4)
    assert "24.000 fps but the timeline at 25.000 fps" in found.pop(5)
    assert "frames 18 to 22 of good.mp4, which has 20" in found.pop(6)
    assert "generated in the editor" in found.pop(7)
    assert "disabled" in found.pop(8)
    assert found == {}
    assert plan.shots[1].media_path == str(tmp_path / "missing.mp4")
    assert plan.shots[2].media_path is None


def test_a_nested_sequence_is_a_problem_not_a_crash(made: Callable[[str], Made]) -> None:
    folder, cut, dub = made("25")
    timeline = cut.timeline()
    timeline.tracks[0].insert(0, otio.schema.Stack(name="compound", children=[]))
    plan = read_plan(write_timeline(timeline, folder / "nested.otio"), dub)
    assert plan.shots[0].name == "compound" and "nested sequence" in plan.shots[0].problem
    assert len(plan.usable) == 10


def test_the_dub_decides_which_shots_have_sound(made: Callable[[str], Made]) -> None:
    folder, cut, dub = made("25")
    path = write_timeline(cut.timeline(), folder / "dub.otio")
    # The dub starts 0.5 s into the timeline: shots before that have no sound to sync to.
    late = read_plan(path, dub, audio_offset=0.5)
    before = [s.position for s in late.shots if "--audio-offset" in s.problem]
    assert before == [e.position for e in cut.expected() if e.record_start < 0.5 * 25]
    assert late.shots[-1].audio_start == pytest.approx(cut.expected()[-1].record_start / 25 - 0.5)
    # A dub that ends 2 s into the cut: later shots have nothing to sync to.
    short = read_plan(path, make_dub(folder / "short.wav", 2.0))
    after = [s.position for s in short.shots if "after the dub ends" in s.problem]
    assert after == [e.position for e in cut.expected() if e.record_start >= 2 * 25]
    assert after and len(short.usable) == 10 - len(after)
    # The shot the dub ends in goes, with a note that the rest of it is silence.
    ends_in = [e for e in cut.expected() if e.record_start < 50 < e.record_start + e.frames]
    notes = {s.position: s.note for s in short.shots if s.note}
    assert (
        list(notes) == [e.position for e in ends_in] and short.shots[ends_in[0].position - 1].usable
    )
    covered = 2.0 - ends_in[0].record_start / 25
    assert notes[ends_in[0].position].startswith(f"the dub ends {covered:.3f} s into its ")
    assert "silence" in notes[ends_in[0].position]
    assert short.to_json()["shots"][ends_in[0].position - 1]["note"] == notes[ends_in[0].position]


# ---------------------------------------------------------------------------------------------
# Tracks


def test_the_picture_track_is_the_first_video_track_or_the_one_named(
    made: Callable[[str], Made], tmp_path: Path
) -> None:
    _, cut, dub = made("25")
    timeline = cut.timeline()
    picture = timeline.tracks[0]
    picture.name = "Picture"
    graphics = picture.deepcopy()
    graphics.name = "Graphics"
    del graphics[1:]
    timeline.tracks.append(graphics)
    timeline.tracks.insert(0, otio.schema.Track(name="A1", kind=otio.schema.TrackKind.Audio))
    path = write_timeline(timeline, tmp_path / "tracks.otio")
    plan = read_plan(path, dub)
    assert (plan.track_index, plan.track_name, len(plan.shots)) == (1, "Picture", 10)
    for name in ("Graphics", "V2"):
        plan = read_plan(path, dub, track=name)
        assert (plan.track_index, plan.track_name, len(plan.shots)) == (2, "Graphics", 1)
    with pytest.raises(
        TimelineError, match=r"no video track named 'Titles'.*'Picture', 'Graphics'"
    ):
        read_plan(path, dub, track="Titles")


# ---------------------------------------------------------------------------------------------
# Timelines and dubs that can't be used: one sentence naming the file


def test_unreadable_timelines_are_one_sentence_naming_the_file(
    made: Callable[[str], Made], tmp_path: Path
) -> None:
    _, _, dub = made("25")
    cases: dict[str, str] = {
        "missing.otio": "does not exist",
        "notes.txt": "of a kind OpenTimelineIO cannot read (.txt)",
        "broken.otio": "cannot be read as otio_json",
        "broken.xml": "cannot be read as fcp_xml",
    }
    (tmp_path / "notes.txt").write_text("cut notes")
    (tmp_path / "broken.otio").write_text('{"OTIO_SCHEMA": "Timeline.1", "tracks": ')
    (tmp_path / "broken.xml").write_text("<xmeml><sequence>")
    for name, reason in cases.items():
        with pytest.raises(TimelineError) as caught:
            read_plan(tmp_path / name, dub)
        message = str(caught.value)
        assert message.startswith(f"The timeline {tmp_path / name} ") and reason in message
        assert message.endswith(".") and "\n" not in message


def test_no_video_track_or_no_usable_clip_is_a_timeline_error(
    made: Callable[[str], Made], tmp_path: Path
) -> None:
    folder, cut, dub = made("25")
    sound_only = otio.schema.Timeline(name="sound")
    sound_only.tracks.append(otio.schema.Track(kind=otio.schema.TrackKind.Audio))
    with pytest.raises(TimelineError, match="has no video track"):
        read_plan(write_timeline(sound_only, tmp_path / "sound.otio"), dub)
    lengthless = cut.timeline()
    lengthless.tracks[0].append(otio.schema.Clip(name="no range"))
    with pytest.raises(TimelineError, match="has a clip without a length"):
        read_plan(write_timeline(lengthless, tmp_path / "lengthless.otio"), dub)
    timeline = cut.timeline()
    for clip in timeline.find_clips():
        clip.media_reference = otio.schema.MissingReference()
    path = write_timeline(timeline, tmp_path / "offline.otio")
    with pytest.raises(TimelineError) as caught:
        read_plan(path, dub)
    assert str(caught.value) == (
        f"The timeline {path} has no clip that can be conformed: of its 10, the first (1, "
        f"'{cut.clip_name(1)}') cannot because its media is offline in the timeline (it names "
        "no file); relink it in your editor and export again, or put the file named like the "
        "clip beside the timeline."
    )


def test_a_clip_of_no_frames_is_a_problem_of_the_plan(
    made: Callable[[str], Made], tmp_path: Path
) -> None:
    folder, cut, dub = made("25")
    timeline = cut.timeline()
    empty = timeline.find_clips()[3]
    empty.source_range = TimeRange(empty.source_range.start_time, RationalTime(0, 25))
    plan = read_plan(write_timeline(timeline, tmp_path / "empty.otio"), dub)
    assert problems(plan) == {
        4: "it has no frames on the timeline (zero length); remove it or export again."
    }
    assert plan.shots[3].frames == 0 and len(plan.usable) == 9


def test_a_dub_that_is_no_audio_is_a_timeline_error_naming_the_dub(
    made: Callable[[str], Made], tmp_path: Path
) -> None:
    folder, cut, _ = made("25")
    path = write_timeline(cut.timeline(), folder / "nodub.otio")
    (tmp_path / "dub.wav").write_text("not audio")
    for dub in (tmp_path / "none.wav", tmp_path / "dub.wav"):
        with pytest.raises(TimelineError, match=rf"^The dub is unusable: .*{dub.name}"):
            read_plan(path, dub)


# ---------------------------------------------------------------------------------------------
# reference_ids


def test_reference_ids_are_stable_valid_and_change_only_for_the_shot_re_cut(
    made: Callable[[str], Made],
) -> None:
    folder, cut, dub = made("25")
    path = write_timeline(cut.timeline(), folder / "ids.otio")
    first, again = read_plan(path, dub), read_plan(path, dub)
    ids = [s.reference_id for s in first.shots]
    assert ids == [s.reference_id for s in again.shots]
    assert len(set(ids)) == 10 and all(check_reference_id(i) == i for i in ids)
    assert ids[2].startswith("ep101-003-A001_C001_03-")
    # Slip shot 3 by a frame (same place, other source frames): only its id changes.
    slipped = replace(
        cut,
        clips=tuple(
            replace(c, first=c.first + 1) if n == 2 else c for n, c in enumerate(cut.clips)
        ),
    )
    recut = read_plan(write_timeline(slipped.timeline(), folder / "ids.otio"), dub)
    changed = [
        n for n, (a, b) in enumerate(zip(ids, recut.shots, strict=True), 1) if a != b.reference_id
    ]
    assert changed == [3]
    # Another dub is another job for every shot.
    other = make_dub(folder / "dub-v2.wav", cut.seconds + 1)
    assert not set(ids) & {s.reference_id for s in read_plan(path, other).shots}


def test_a_dub_or_source_replaced_at_the_same_path_gives_new_reference_ids(
    tmp_path: Path,
) -> None:
    a, b = (make_source(tmp_path / f"{n}.mp4", 12, Fraction(25)) for n in "ab")
    cut = Cut("replaced", Fraction(25), (CutClip(a, 0, 5), CutClip(b, 2, 6)))
    path = write_timeline(cut.timeline(), tmp_path / "replaced.otio")
    dub = make_dub(tmp_path / "dub.wav", 1)

    def ids() -> list[str]:
        return [shot.reference_id for shot in read_plan(path, dub).shots]

    first = ids()
    assert ids() == first  # the same untouched files: the same jobs
    make_dub(dub, 1.5)  # the dub re-rendered under the same name
    redubbed = ids()
    assert not set(redubbed) & set(first)
    stat = b.path.stat()
    os.utime(b.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # b replaced
    relinked = ids()
    assert relinked[0] == redubbed[0] and relinked[1] != redubbed[1]


def test_reference_ids_of_long_foreign_names_stay_valid(tmp_path: Path) -> None:
    source = make_source(tmp_path / "s.mp4", 10, Fraction(25))
    long_name = "Ärger im Studio " * 20
    cut = Cut(long_name, Fraction(25), (CutClip(source, 0, 5, name="日本 " + long_name),))
    plan = read_plan(
        write_timeline(cut.timeline(), tmp_path / "long.otio"), make_dub(tmp_path / "d.wav", 1)
    )
    (shot,) = plan.shots
    assert check_reference_id(shot.reference_id) == shot.reference_id
    assert len(shot.reference_id) <= 128 and shot.reference_id.startswith("Aerger-im-Studio")


# ---------------------------------------------------------------------------------------------
# JSON


def test_the_plan_as_json(made: Callable[[str], Made]) -> None:
    folder, cut, dub = made("29.97")
    plan = read_plan(write_timeline(cut.timeline(), folder / "json.otio"), dub)
    data = json.loads(json.dumps(plan.to_json()))
    assert data["billable_seconds"] == pytest.approx(plan.billable_seconds)
    assert data["name"] == "ep101" and data["path"] == str(plan.path)
    shot = data["shots"][4]
    assert shot["reference_id"] == plan.shots[4].reference_id
    assert shot["video_range"]["start_seconds"] == pytest.approx(30 * 1001 / 30000)
    assert shot["audio_range"]["duration_seconds"] == pytest.approx(18 * 1001 / 30000)
    assert "timeline" not in data
