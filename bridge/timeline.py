"""Read an editor's timeline (anything OpenTimelineIO reads) into a plan of shots to lip-sync.

A shot is one clip of the picture track: which frames of which local file to send, where it
sits on the timeline, and which stretch of the dub goes with it. Every frame number is worked
out with OpenTimelineIO's rational times and rounded once, so nothing drifts at 23.976 or
29.97. A clip that can't be conformed honestly (a transition, an effect, another frame rate,
media that is missing or too short) stays in the plan with a `problem` sentence; the rest go.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import av
import av.error
import opentimelineio as otio
from opentimelineio.opentime import RationalTime

from .errors import InputError, MediaError
from .jobs import check_reference_id, quoted, safe_reference_id
from .media import MediaInfo, check_audio_input, check_video_input

# Adapters whose format carries no frame rate: they are told one (`rate=`) when reading.
RATELESS_ADAPTERS = frozenset({"cmx_3600"})
# Rates at which an EDL is first read only to find its media: every timecode of 24, 25,
# 29.97 (drop frame too) and 30 fps parses at the first, 50 and 59.94/60 at the second.
PROBE_RATES = (30000 / 1001, 60000 / 1001)
# No editor's timeline runs faster: a bigger --rate is a typing mistake.
MAX_RATE = 1000
# NTSC rates are these times 1000/1001; an editor names them to within NTSC_TOLERANCE.
NTSC_BASES = (24, 30, 48, 60, 120)
NTSC_TOLERANCE = 0.01
# Drop-frame timecode exists only at these rates times 1000/1001 (29.97 and 59.94).
DROP_FRAME_BASES = (30, 60)
DROP_FRAME_TIMECODE = re.compile(r"\b\d\d:\d\d:\d\d;\d\d\b")
# Frame rates closer than this are one rate written two ways (23.976 and 24000/1001).
RATE_TOLERANCE = 1e-3
# Characters of the timeline's and the clip's names kept in a reference_id.
ID_NAME_CHARS = 40
DIGEST_CHARS = 8
# Adapters known to read some frame rates wrongly, and what to do instead.
RATE_HINTS = {
    "fcpx_xml": " (its FCPXML adapter reads only whole frame rates: for 23.976 or 29.97 fps "
    "export an .otio or a Final Cut Pro 7 .xml instead)",
}
# A dub ending this close to a shot's end covers it (an audio frame's rounding, not a gap).
DUB_END_TOLERANCE = 0.001


class TimelineError(InputError):
    """One sentence naming the file and the reason: unreadable, no video track, no usable
    clip, unreadable dub (the CLI's exit status 4, as for every InputError)."""


@dataclass(frozen=True)
class Shot:
    """One clip of the picture track: what to send and where its take goes."""

    position: int  # 1-based among the picture track's clips (gaps are not counted)
    name: str
    reference_id: str
    record_start: int  # first frame on the timeline, at `rate`, from the timeline's start
    frames: int
    media_path: str | None  # absolute path of the local media file; None when there is none
    source_first: int  # the media file's own frame index (from its start) on the first frame
    source_rate: float  # the media file's frame rate
    audio_start: float  # seconds into the dub where the shot's sound starts
    problem: str  # '' when the shot can be conformed, else one sentence why not
    rate: float  # the timeline's frame rate
    note: str = ""  # '' or one sentence the editor should know (the dub ends inside it)

    @property
    def usable(self) -> bool:
        return not self.problem

    @property
    def duration_seconds(self) -> float:
        return self.frames / self.rate

    @property
    def video_range(self) -> dict[str, float]:
        """The cut of the media file to send, in the local API's terms."""
        return {
            "start_seconds": self.source_first / self.source_rate,
            "duration_seconds": self.frames / self.source_rate,
        }

    @property
    def audio_range(self) -> dict[str, float]:
        """The stretch of the dub that goes with the shot, in the local API's terms."""
        return {"start_seconds": self.audio_start, "duration_seconds": self.duration_seconds}

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "duration_seconds": self.duration_seconds,
            "video_range": self.video_range,
            "audio_range": self.audio_range,
        }


@dataclass(frozen=True)
class Plan:
    """A timeline read for conforming: its picture track's shots, usable or not, in order."""

    path: Path
    name: str
    rate: float
    track_index: int  # index of the picture track in timeline.tracks (bottom = 0)
    track_name: str
    shots: tuple[Shot, ...]
    timeline: otio.schema.Timeline = field(repr=False, compare=False)
    # The timeline's first frame as the editor shows it (drop-frame notation, "01:00:00;00",
    # where the timeline is drop-frame): where the dub starts (+ offset).
    start_timecode: str = ""
    notes: tuple[str, ...] = ()  # sentences the editor should read before paying

    @property
    def usable(self) -> tuple[Shot, ...]:
        return tuple(shot for shot in self.shots if shot.usable)

    @property
    def billable_seconds(self) -> float:
        """What the API bills for the plan: the sum of the durations sent."""
        return sum(shot.duration_seconds for shot in self.usable)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "name": self.name,
            "rate": self.rate,
            "track_index": self.track_index,
            "track_name": self.track_name,
            "start_timecode": self.start_timecode,
            "notes": list(self.notes),
            "shots": [shot.to_json() for shot in self.shots],
            "billable_seconds": self.billable_seconds,
        }


def read_plan(
    path: Path,
    dub: Path,
    *,
    track: str | None = None,
    rate: float | None = None,
    audio_offset: float = 0.0,
) -> Plan:
    """Read TIMELINE and plan one job per clip of its picture track against DUB.

    `track` names the picture track (or `V2`-style, counting video tracks from the bottom);
    by default it is the first video track. `rate` is used only by formats that carry no
    frame rate (a CMX 3600 EDL); without it they are read at the first clip's media's rate.
    The dub starts at the timeline's first frame (an EDL's first event), shifted by
    `audio_offset` seconds. Media paths resolve against the timeline's folder, where an
    offline clip named like a file ("A001_C002.mov") also finds its file. Raises
    TimelineError for a timeline or dub that can't be read, or a plan with no usable shot;
    the dub is checked here because which shots it reaches is part of the plan.
    """
    if rate is not None and not 0 < rate < MAX_RATE:
        raise InputError(f"{rate:g} is not a frame rate; give one such as 25 or 23.976.")
    given = rate
    if rate is not None:
        rate = _ntsc_rate(rate)
    path, dub, media = _absolute(path), _absolute(dub), _MediaFiles()
    timeline, rate, adapter = _read_timeline(path, track, rate, media)
    notes: tuple[str, ...] = ()
    if given is not None and adapter not in RATELESS_ADAPTERS:
        own = f"{path.name} carries its own ({rate:.3f} fps)"
        notes = (f"The rate given ({given:g} fps) is ignored: {own}.",)
    index, picture = _picture_track(timeline, path, track)
    name = timeline.name or path.stem
    hint = RATE_HINTS.get(adapter, "")
    context = _Context(path, name, rate, dub, _dub_seconds(dub), audio_offset, media, hint)
    try:
        shots = tuple(
            _plan_shot(item, position, context)
            for position, item in enumerate(_shot_items(picture), start=1)
        )
    except otio.exceptions.CannotComputeAvailableRangeError:
        raise TimelineError(
            f"The timeline {path} has a clip without a length (no source range and no media "
            "range), so no shot's place can be known; export it again from your editor."
        ) from None
    if not shots:
        raise TimelineError(
            f"The timeline {path} has no clip on its picture track {_track_label(picture)}; "
            "choose another track with --track or export the timeline again."
        )
    if not any(shot.usable for shot in shots):
        first = shots[0]
        raise TimelineError(
            f"The timeline {path} has no clip that can be conformed: of its {len(shots)}, the "
            f"first ({first.position}, {quoted(first.name)}) cannot because {first.problem}"
        )
    start = _start_label(_start_time(timeline, picture, rate), rate, timeline, path, adapter)
    return Plan(path, name, rate, index, picture.name, shots, timeline, start, notes)


# ---------------------------------------------------------------------------------------------
# Reading the timeline


def _read_timeline(
    path: Path, track: str | None, rate: float | None, media: _MediaFiles
) -> tuple[otio.schema.Timeline, float, str]:
    """The timeline as its adapter reads it, its frame rate and the adapter's name."""
    adapter = _adapter_for(path)
    if adapter.name not in RATELESS_ADAPTERS:
        timeline = _read(path, adapter)
        return timeline, _timeline_rate(timeline, path, track), adapter.name
    if rate is None:
        rate = _first_media_rate(path, adapter, track, media)
    return _read(path, adapter, rate=rate), rate, adapter.name


def _adapter_for(path: Path) -> otio.adapters.Adapter:
    if not path.is_file():
        raise TimelineError(f"The timeline {path} does not exist or is not a file; check the path.")
    try:
        return otio.adapters.from_filepath(str(path))
    except otio.exceptions.OTIOError:
        raise TimelineError(
            f"The timeline {path} is of a kind OpenTimelineIO cannot read "
            f"({path.suffix or 'no extension'}); export it as .otio, CMX 3600 .edl, "
            "Final Cut Pro 7 .xml or .fcpxml."
        ) from None


def _read(path: Path, adapter: otio.adapters.Adapter, **options: Any) -> otio.schema.Timeline:
    """Read with the adapter; any failure of a third-party parser becomes one sentence."""
    try:
        result = adapter.read_from_file(str(path), **options)
    except Exception as exc:  # adapters raise anything from KeyError to their own errors
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise TimelineError(
            f"The timeline {path} cannot be read as {adapter.name} ({reason}); export it "
            "again from your editor."
        ) from None
    if isinstance(result, otio.schema.Timeline):
        return result
    if not isinstance(result, otio.schema.SerializableCollection):
        raise TimelineError(
            f"The file {path} holds a {result.schema_name()}, not a timeline; export the "
            "sequence itself from your editor."
        )
    timelines = list(result.find_children(descended_from_type=otio.schema.Timeline))
    if len(timelines) != 1:
        names = ", ".join(quoted(t.name) for t in timelines) or "none"
        raise TimelineError(
            f"The file {path} holds {len(timelines)} timelines ({names}), not one; export "
            "just the sequence to conform."
        )
    return timelines[0]


def _timeline_rate(timeline: otio.schema.Timeline, path: Path, track: str | None) -> float:
    """The rate the timeline counts frames at: its start time's, else its first item's."""
    if timeline.global_start_time is not None:
        return timeline.global_start_time.rate
    _, picture = _picture_track(timeline, path, track)
    for item in picture:
        if not isinstance(item, otio.schema.Transition):
            return item.duration().rate
    raise TimelineError(f"The timeline {path} has an empty picture track; nothing to conform.")


def _first_media_rate(
    path: Path, adapter: otio.adapters.Adapter, track: str | None, media: _MediaFiles
) -> float:
    """The frame rate of the first clip's local media, for a format that has none."""
    _, picture = _picture_track(_probe_read(path, adapter), path, track)
    found, first_missing = False, ""
    for item in _shot_items(picture):
        if not isinstance(item, otio.schema.Clip):
            continue
        local = _local_media(item, path.parent)
        if not isinstance(local, Path) or not local.is_file():
            where = str(local) if isinstance(local, Path) else f"{quoted(item.name)} names no file"
            first_missing = first_missing or where
            continue
        found, info = True, media.info(local)
        if isinstance(info, MediaInfo) and info.fps:
            return float(info.fps)
    if not found and first_missing:
        raise TimelineError(
            f"None of the media files of the timeline {path} were found (the first: "
            f"{first_missing}); put them where the timeline names them or beside "
            "it, and run the same command again."
        )
    raise TimelineError(
        f"The timeline {path} carries no frame rate and none of its clips' media files could "
        "be read to take it from; give the rate with --rate (e.g. --rate 25)."
    )


def _probe_read(path: Path, adapter: otio.adapters.Adapter) -> otio.schema.Timeline:
    """The timeline read at a rate its timecodes fit, only to find its media files."""
    for probe_rate in PROBE_RATES[:-1]:
        try:
            return adapter.read_from_file(str(path), rate=probe_rate, ignore_timecode_mismatch=True)
        except Exception:  # timecodes that don't fit this rate: the next one may do
            continue
    return _read(path, adapter, rate=PROBE_RATES[-1], ignore_timecode_mismatch=True)


def _start_time(
    timeline: otio.schema.Timeline, picture: otio.schema.Track, rate: float
) -> RationalTime:
    """The record time of the timeline's first frame: its global start time, or for an EDL
    the first event's record in (which the CMX 3600 adapter keeps as the track's negative
    start, placing that event at frame 0)."""
    if timeline.global_start_time is not None:
        return timeline.global_start_time
    trimmed = picture.source_range
    if trimmed is not None and trimmed.start_time.value < 0:
        return -trimmed.start_time
    return RationalTime(0, rate)


def _start_label(
    start: RationalTime, rate: float, timeline: otio.schema.Timeline, path: Path, adapter: str
) -> str:
    """The timeline's first frame in the notation its editor shows (display only).

    A drop-frame FCP 7 XML states its true frame count, as does an EDL written with ";"
    timecodes; the CMX 3600 adapter ignores `FCM: DROP FRAME` and reads colon timecodes as
    non-drop, so such an EDL's own label is that reading with a semicolon.
    """
    non_drop = otio.opentime.to_timecode(start, rate, False)
    if not any(_same_rate(rate, base * 1000 / 1001) for base in DROP_FRAME_BASES):
        return non_drop
    if adapter == "fcp_xml":
        shown = timeline.metadata.get("fcp_xml", {}).get("timecode", {})
        if shown.get("displayformat") == "DF":
            return otio.opentime.to_timecode(start, rate, True)
    if adapter in RATELESS_ADAPTERS:
        text = path.read_text(errors="replace")
        if DROP_FRAME_TIMECODE.search(text):  # "01:00:00;00": read as drop frame already
            return otio.opentime.to_timecode(start, rate, True)
        fcm = next((ln.upper() for ln in text.splitlines() if ln.upper().startswith("FCM")), "")
        if "DROP" in fcm and "NON-DROP" not in fcm:
            return f"{non_drop[:8]};{non_drop[9:]}"
    return non_drop


def _picture_track(
    timeline: otio.schema.Timeline, path: Path, track: str | None
) -> tuple[int, otio.schema.Track]:
    """(index in timeline.tracks, track): the first video track, or the one named `track`."""
    videos = [
        (index, item)
        for index, item in enumerate(timeline.tracks)
        if isinstance(item, otio.schema.Track) and item.kind == otio.schema.TrackKind.Video
    ]
    if not videos:
        raise TimelineError(f"The timeline {path} has no video track; nothing to conform.")
    if track is None:
        return videos[0]
    for index, item in videos:
        if item.name == track:
            return index, item
    if track[:1] in "Vv" and track[1:].isdigit() and 1 <= int(track[1:]) <= len(videos):
        return videos[int(track[1:]) - 1]
    names = ", ".join(_track_label(item) for _, item in videos)
    raise TimelineError(
        f"The timeline {path} has no video track named {quoted(track)}; its video tracks are "
        f"{names} (name one with --track, or count from the bottom: V1, V2, ...)."
    )


def _track_label(track: otio.schema.Track) -> str:
    return quoted(track.name) if track.name else "(unnamed)"


def _shot_items(track: otio.schema.Track) -> Iterator[otio.core.Item]:
    """Every item of the track that shows picture: clips and nested sequences, not gaps."""
    for item in track:
        if isinstance(item, otio.core.Item) and not isinstance(item, otio.schema.Gap):
            yield item


# ---------------------------------------------------------------------------------------------
# Planning one shot


@dataclass(frozen=True)
class _Context:
    """What every shot of one plan is measured against."""

    path: Path
    name: str
    rate: float
    dub: Path
    dub_seconds: float | None
    audio_offset: float
    media: _MediaFiles
    rate_hint: str  # said after a frame rate mismatch the adapter may have caused


def _plan_shot(item: otio.core.Item, position: int, ctx: _Context) -> Shot:
    """The shot for one item; what is wrong with it goes into `problem`."""
    record_start = _frames(item.range_in_parent().start_time, ctx.rate)
    frames = _frames(item.trimmed_range().duration, ctx.rate)
    audio_start = RationalTime(record_start, ctx.rate).to_seconds() - ctx.audio_offset
    source = _source_of(item, frames, ctx) if isinstance(item, otio.schema.Clip) else _NO_SOURCE
    sent = [
        source.path,
        _stamp(source.path),
        source.first,
        frames,
        source.rate,
        str(ctx.dub),
        _stamp(ctx.dub),
        audio_start,
        ctx.rate,
    ]
    return Shot(
        position=position,
        name=item.name,
        reference_id=_reference_id(ctx.name, position, item.name, sent),
        record_start=record_start,
        frames=frames,
        media_path=source.path,
        source_first=source.first,
        source_rate=source.rate or ctx.rate,
        audio_start=audio_start,
        problem=(
            _item_problem(item)
            or _length_problem(frames)
            or source.problem
            or _timing_problem(audio_start, ctx)
        ),
        rate=ctx.rate,
        note=_coverage_note(audio_start, frames / ctx.rate, ctx),
    )


@dataclass(frozen=True)
class _Source:
    """Which frames of which file a clip shows, or why that can't be known or sent."""

    path: str | None
    first: int = 0
    rate: float = 0.0  # 0 when unknown
    problem: str = ""


_NO_SOURCE = _Source(None)


def _source_of(clip: otio.schema.Clip, frames: int, ctx: _Context) -> _Source:
    media = _local_media(clip, ctx.path.parent)
    if isinstance(media, str):
        return _Source(None, problem=media)
    info = ctx.media.info(media)
    if isinstance(info, str):
        return _Source(str(media), problem=info)
    if not info.fps:
        return _Source(
            str(media), problem=f"the frame rate of {media.name} is unknown; re-export it."
        )
    fps = float(info.fps)
    first = _source_first(clip, fps, ctx.media.timecode(media))
    if isinstance(first, str):
        return _Source(str(media), rate=fps, problem=first)
    return _Source(str(media), first, fps, _source_problem(first, frames, info, ctx))


def _length_problem(frames: int) -> str:
    """A clip of no frames (an editor's leftover) has nothing to lip-sync."""
    if frames > 0:
        return ""
    return "it has no frames on the timeline (zero length); remove it or export again."


def _item_problem(item: otio.core.Item) -> str:
    """Why the item's picture is not simply frames of one file, or ''."""
    if not isinstance(item, otio.schema.Clip):
        return (
            "it is a nested sequence (compound clip), not a clip; flatten it in your editor "
            "to conform its shots."
        )
    if not item.enabled:
        return "it is disabled on the timeline, so nobody sees it; enable it to conform it."
    for effect in item.effects:
        if isinstance(effect, otio.schema.FreezeFrame):
            return "it is a freeze frame, which a lip sync cannot follow."
        if isinstance(effect, otio.schema.LinearTimeWarp):
            return (
                f"it plays at {effect.time_scalar:.0%} speed; render the speed change into a "
                "new media file to conform it."
            )
        kind = "time effect" if isinstance(effect, otio.schema.TimeEffect) else "effect"
        label = effect.effect_name or effect.name or "unnamed"
        return f"it carries the {kind} {quoted(label)}, which the take would not have."
    neighbours = item.parent().neighbors_of(item)
    for neighbour in neighbours:
        if isinstance(neighbour, otio.schema.Transition):
            kind = neighbour.transition_type or "transition"
            return (
                f"a transition ({kind}) overlaps it, so its first or last frames mix with "
                "another shot."
            )
    return ""


def _timing_problem(audio_start: float, ctx: _Context) -> str:
    """Why the dub has no sound for a shot starting `audio_start` seconds into it, or ''."""
    if audio_start < 0:
        return (
            f"it starts {-audio_start:.3f} s before the dub does; give --audio-offset to say "
            "where the dub starts on the timeline."
        )
    if ctx.dub_seconds is not None and audio_start >= ctx.dub_seconds:
        return (
            f"it starts at {audio_start:.3f} s, after the dub ends ({ctx.dub_seconds:.3f} s); "
            "check the dub or --audio-offset."
        )
    return ""


def _coverage_note(audio_start: float, seconds: float, ctx: _Context) -> str:
    """Say so when the dub ends inside the shot: its rest is sent as silence."""
    if ctx.dub_seconds is None or not 0 <= audio_start < ctx.dub_seconds:
        return ""
    covered = ctx.dub_seconds - audio_start
    if covered >= seconds - DUB_END_TOLERANCE:
        return ""
    return (
        f"the dub ends {covered:.3f} s into its {seconds:.3f} s, so the rest is sent as "
        "silence; check the dub or --audio-offset."
    )


def _local_media(item: otio.schema.Clip, folder: Path) -> Path | str:
    """The absolute path of the clip's local media file, or a sentence why there is none."""
    ref = item.media_reference
    if isinstance(ref, otio.schema.GeneratorReference):
        return "it is generated in the editor (a title, colour or bars), not a video file."
    if isinstance(ref, otio.schema.ImageSequenceReference):
        return "its media is an image sequence; render it to a video file and relink it."
    if not isinstance(ref, otio.schema.ExternalReference) or not ref.target_url:
        named = _source_file_comment(item, folder)
        if named is not None and named.is_file():
            return named
        offline = (
            "its media is offline in the timeline (it names no file); relink it in your editor "
            "and export again, or put the file named like the clip beside the timeline."
        )
        return _file_named_by(item, folder) or named or offline
    url = ref.target_url
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            return f"its media {quoted(url, 80)} is on another machine; use a local copy."
        local = Path(url2pathname(unquote(parts.path)))
    elif len(parts.scheme) > 1:
        return f"its media {quoted(url, 80)} is not a local file; download it and relink."
    else:
        local = Path(url)  # a plain path (a one-letter "scheme" is a Windows drive)
    return _absolute(folder / local)


def _source_file_comment(clip: otio.schema.Clip, folder: Path) -> Path | None:
    """The file an EDL event's `* SOURCE FILE: PATH` comment names (Resolve and Premiere
    write it), relative ones against the timeline's folder; None without one."""
    comments = clip.metadata.get("cmx_3600", {}).get("comments", [])
    for comment in comments:
        key, _, value = str(comment).partition(":")
        if key.strip().upper() == "SOURCE FILE" and value.strip():
            return _absolute(folder / value.strip())
    return None


def _file_named_by(clip: otio.schema.Clip, folder: Path) -> Path | None:
    """The file beside the timeline that an offline clip is named after, if there is one.

    EDLs from Resolve and Premiere name each clip's file ("A001_C002.mov") but give no
    path, so OpenTimelineIO leaves the clip offline; an editor keeps them together.
    """
    name = clip.name.strip()
    if not Path(name).suffix or Path(name).name != name:
        return None
    candidate = folder / name
    return _absolute(candidate) if candidate.is_file() else None


class _MediaFiles:
    """Each media file of a plan probed once (sources are often used many times)."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[MediaInfo | str, str | None]] = {}

    def info(self, path: Path) -> MediaInfo | str:
        """What the file holds, or a sentence why it is not a readable video."""
        return self._probe(path)[0]

    def timecode(self, path: Path) -> str | None:
        """The file's own start timecode, if it has one."""
        return self._probe(path)[1]

    def _probe(self, path: Path) -> tuple[MediaInfo | str, str | None]:
        if path not in self._seen:
            try:
                self._seen[path] = check_video_input(path), _start_timecode(path)
            except MediaError as exc:
                self._seen[path] = _lowered(str(exc)), None
        return self._seen[path]


def _start_timecode(path: Path) -> str | None:
    """The file's own start timecode (e.g. "01:00:00:00"), from its video stream or container."""
    try:
        with av.open(str(path)) as container:
            for stream in container.streams:
                if stream.metadata.get("timecode"):
                    return stream.metadata["timecode"]
            return container.metadata.get("timecode") or None
    except (av.error.FFmpegError, OSError):
        return None


def _source_first(item: otio.schema.Clip, fps: float, timecode: str | None) -> int | str:
    """The file's frame index shown on the clip's first frame, or a sentence why unknown.

    The clip's source range is in the media's time: mapped onto the file through the
    reference's available range when given, else the file's start timecode, else 0.
    """
    available = item.media_reference.available_range
    if available is not None:
        origin = _frames(available.start_time, fps)
    else:
        try:
            origin = _frames(otio.opentime.from_timecode(timecode, fps), fps) if timecode else 0
        except ValueError:
            return (
                f"its media's start timecode {quoted(timecode)} does not fit its "
                f"{fps:.3f} fps; fix the file's timecode or export an .otio."
            )
    return _frames(item.trimmed_range().start_time, fps) - origin


def _source_problem(first: int, frames: int, info: MediaInfo, ctx: _Context) -> str:
    """Why frames [first, first + frames) of the file can't be sent as the shot, or ''."""
    fps = float(info.fps)
    if not _same_rate(fps, ctx.rate):
        return (
            f"its media runs at {fps:.3f} fps but the timeline at {ctx.rate:.3f} fps"
            f"{ctx.rate_hint}, so the take would not match the shot frame for frame; conform "
            "it at the timeline's rate first."
        )
    if first < 0 or (info.frames is not None and first + frames > info.frames):
        return (
            f"it uses frames {first} to {first + frames - 1} of {info.path.name}, which has "
            f"{info.frames} (0 to {(info.frames or 0) - 1}); relink it to the right file."
        )
    return ""


def _dub_seconds(dub: Path) -> float | None:
    """The dub's length in seconds; TimelineError when it is no readable audio."""
    try:
        return check_audio_input(dub).duration
    except MediaError as exc:
        raise TimelineError(f"The dub is unusable: {_lowered(str(exc))}") from None


# ---------------------------------------------------------------------------------------------
# Numbers and names


def _absolute(path: Path) -> Path:
    """An absolute path without `..` (symbolic links are left as the user named them)."""
    return Path(os.path.abspath(path))


def _ntsc_rate(rate: float) -> float:
    """A rate as an editor names it, exact: 23.98 and 23.976 are 24000/1001, 29.97 30000/1001."""
    for whole in NTSC_BASES:
        ntsc = whole * 1000 / 1001
        if abs(rate - ntsc) < NTSC_TOLERANCE:
            return ntsc
    return rate


def _same_rate(a: float, b: float) -> bool:
    return abs(a - b) < RATE_TOLERANCE


def _frames(time: RationalTime, rate: float) -> int:
    """A time as a whole number of frames at `rate`, rounded once.

    A time already counted at (nearly) `rate` keeps its count: rescaling a 23:00:00:00
    timecode between the 29.97 an editor writes and 30000/1001 would move it by two frames.
    """
    value = time.value if _same_rate(time.rate, rate) else time.value_rescaled_to(rate)
    return round(value)


def _reference_id(timeline: str, position: int, name: str, sent: list[Any]) -> str:
    """`<timeline>-<position>-<clip>-<digest>`: the same for the same cut, dub and ranges.

    Running the same conform again gives the same ids (its jobs are adopted, nothing is
    charged twice); a re-cut shot, another source range or another dub gives a new one, and
    so does a dub or media file replaced at the same path (its size or mtime changed).
    """
    digest = hashlib.sha256(json.dumps(sent).encode()).hexdigest()[:DIGEST_CHARS]
    timeline_part, clip_part = (
        safe_reference_id(t, max_len=ID_NAME_CHARS) for t in (timeline, name)
    )
    return check_reference_id(f"{timeline_part}-{position:03d}-{clip_part}-{digest}")


def _stamp(path: str | Path | None) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file: a file replaced at the same path is another input."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _lowered(sentence: str) -> str:
    """A sentence made the tail of another: first letter lowered unless a path or acronym."""
    head = sentence[:2]
    return sentence if head[:1] in "/\\" or head.isupper() else sentence[:1].lower() + sentence[1:]
