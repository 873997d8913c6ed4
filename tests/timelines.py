"""Test cuts: timecoded source clips and the timelines an editor would export from them.

A `Cut` is a list of clips (which frames of which source, after how much gap); it builds
the OpenTimelineIO timeline and writes it as .otio, CMX 3600 .edl, FCP 7 .xml or .fcpxml
through the same adapters a user's editor output goes through. It also says what a
correct conform must produce (each shot's place, length and first source frame), so a
test compares against the cut, not against the code under test. Shared by the plan's
tests and the conform's end-to-end tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import opentimelineio as otio
from opentimelineio.opentime import RationalTime, TimeRange

from tests.media_samples import make_test_audio, make_test_video

# The rates conform is tested at, by the name an editor gives them.
RATES = {
    "23.976": Fraction(24000, 1001),
    "24": Fraction(24),
    "25": Fraction(25),
    "29.97": Fraction(30000, 1001),
}
START_TIMECODE = "01:00:00:00"
SMALL = (160, 120)


@dataclass(frozen=True)
class Source:
    """A video file whose frames carry their index, tagged with a start timecode."""

    path: Path
    rate: Fraction
    frames: int
    timecode: str | None

    @property
    def timecode_frames(self) -> int:
        """The start timecode as a frame count at the file's rate (0 without one)."""
        if self.timecode is None:
            return 0
        return round(otio.opentime.from_timecode(self.timecode, float(self.rate)).value)


def make_source(
    path: Path,
    frames: int,
    rate: Fraction,
    *,
    timecode: str | None = START_TIMECODE,
    size: tuple[int, int] = SMALL,
    with_audio: bool = True,
) -> Source:
    """Write an indexed H.264 clip (with its own sound) and describe it."""
    make_test_video(path, frames, rate, size, with_audio=with_audio, timecode=timecode)
    return Source(Path(path), Fraction(rate), frames, timecode)


def make_dub(path: Path, seconds: float) -> Path:
    """A speech-like dub (WAV, or the format the suffix names) of `seconds`."""
    return make_test_audio(path, seconds, speech=True)


@dataclass(frozen=True)
class CutClip:
    """One clip of a cut: `frames` frames of `source` from its frame `first`, after a gap."""

    source: Source
    first: int
    frames: int
    gap_before: int = 0
    name: str = ""


@dataclass(frozen=True)
class Expected:
    """What the plan must say of one clip."""

    position: int
    name: str
    record_start: int
    frames: int
    source: Source
    source_first: int


@dataclass(frozen=True)
class Cut:
    """A cut at `rate`: clips on one video track, each after its gap."""

    name: str
    rate: Fraction
    clips: tuple[CutClip, ...]

    @property
    def total_frames(self) -> int:
        return sum(clip.gap_before + clip.frames for clip in self.clips)

    @property
    def seconds(self) -> float:
        return float(self.total_frames / self.rate)

    def expected(self) -> list[Expected]:
        """Each clip's place on the timeline and first source frame, worked out by counting."""
        shots, at = [], 0
        for position, clip in enumerate(self.clips, start=1):
            at += clip.gap_before
            name = self.clip_name(position)
            shots.append(Expected(position, name, at, clip.frames, clip.source, clip.first))
            at += clip.frames
        return shots

    def clip_name(self, position: int) -> str:
        clip = self.clips[position - 1]
        return clip.name or f"{clip.source.path.stem}_{position:02d}"

    def timeline(
        self,
        *,
        relative_to: Path | None = None,
        available_range: bool = True,
        stated_rate: float | None = None,
    ) -> otio.schema.Timeline:
        """The cut as OpenTimelineIO builds it: source ranges in the sources' timecode.

        `relative_to` writes media paths relative to that folder; `available_range=False`
        leaves the file's start to its timecode tag, as an EDL does; `stated_rate` is the
        rate the timeline states, when an editor rounds it (29.97 for 30000/1001).
        """
        rate = stated_rate or float(self.rate)
        timeline = otio.schema.Timeline(name=self.name)
        timeline.global_start_time = RationalTime(0, rate)
        track = otio.schema.Track(name="V1", kind=otio.schema.TrackKind.Video)
        timeline.tracks.append(track)
        for position, clip in enumerate(self.clips, start=1):
            if clip.gap_before:
                track.append(otio.schema.Gap(duration=RationalTime(clip.gap_before, rate)))
            source = clip.source
            path = source.path if relative_to is None else source.path.relative_to(relative_to)
            start = source.timecode_frames
            reference = otio.schema.ExternalReference(
                target_url=str(path),
                available_range=TimeRange(
                    RationalTime(start, float(source.rate)),
                    RationalTime(source.frames, float(source.rate)),
                )
                if available_range
                else None,
            )
            track.append(
                otio.schema.Clip(
                    name=self.clip_name(position),
                    media_reference=reference,
                    source_range=TimeRange(
                        RationalTime(start + clip.first, rate), RationalTime(clip.frames, rate)
                    ),
                )
            )
        return timeline


def write_timeline(timeline: otio.schema.Timeline, path: Path) -> Path:
    """Write a timeline in the format its suffix names (.otio, .edl, .xml, .fcpxml)."""
    otio.adapters.write_to_file(timeline, str(path))
    return Path(path)


def make_sources(folder: Path, rate: Fraction, count: int = 3, frames: int = 48) -> list[Source]:
    """`count` timecoded sources at `rate`, named A001_C001.mp4, A001_C002.mp4, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    return [make_source(folder / f"A001_C{n:03d}.mp4", frames, rate) for n in range(1, count + 1)]


def ten_clip_cut(folder: Path, rate: Fraction, name: str = "ep101") -> Cut:
    """Ten clips from three sources: every source used more than once, gaps between some,
    clips starting at the source's first frame and ending on its last."""
    a, b, c = make_sources(folder / "media", rate)
    clips = (
        CutClip(a, 0, 6),
        CutClip(b, 10, 5),
        CutClip(a, 20, 7, gap_before=3),
        CutClip(c, 3, 4),
        CutClip(b, 30, 18, gap_before=1),  # up to b's last frame
        CutClip(c, 40, 8),  # up to c's last frame
        CutClip(a, 5, 5, gap_before=4),  # overlaps clip 1's frames
        CutClip(b, 0, 3),
        CutClip(c, 12, 9, gap_before=2),
        CutClip(a, 33, 6),
    )
    return Cut(name, rate, clips)


def records_from_the_hour(line: str) -> str:
    """An EDL line, its event's record timecodes moved from hour 00 to hour 01."""
    fields = line.split()
    if not fields or not fields[0].isdigit():
        return line
    return " ".join(fields[:-2] + [f"01{tc[2:]}" for tc in fields[-2:]])
