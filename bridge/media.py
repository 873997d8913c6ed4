"""Probe, check and prepare media with PyAV, so a bad file is refused before an upload is paid.

Everything streams packet by packet: memory does not grow with the file's size. Outputs are
written to a temporary name beside their destination and renamed into place when complete.
"""

from __future__ import annotations

import heapq
import math
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.packet import Packet
from av.stream import Disposition
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from .errors import MediaError
from .jobs import check_input_file

# Video codecs the API takes inside an MP4 as they are (bytes sent unchanged).
MP4_VIDEO_CODECS = frozenset({"h264", "hevc", "mpeg4", "av1"})
# Audio the API takes as it is: file suffix -> FFmpeg demuxer name.
UPLOADABLE_AUDIO = {".wav": "wav", ".mp3": "mp3"}
X264_OPTIONS = {"crf": "17", "preset": "veryfast"}
# Channel layouts to assume for an unnamed layout of N channels.
DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 8: "7.1"}
# Packets read while looking for the first decodable video frame before giving up.
FIRST_FRAME_PACKET_LIMIT = 300
# How far before a cut's start to seek, so audio and the keyframe before it are included.
SEEK_MARGIN_SECONDS = 1.0


@dataclass(frozen=True)
class MediaInfo:
    """What a media file holds; `frames` is estimated from the duration when not stored."""

    path: Path
    format_name: str
    duration: float | None
    has_video: bool
    has_audio: bool
    fps: Fraction | None
    frames: int | None
    width: int | None
    height: int | None
    video_codec: str | None
    audio_codec: str | None
    sample_rate: int | None


# ---------------------------------------------------------------------------------------------
# Probing and checking


def probe(path: Path) -> MediaInfo:
    """Describe a media file without decoding it; MediaError says what is wrong and what to do."""
    path = Path(path)
    with _open(path) as container:
        return _info(path, container)


def check_video_input(path: Path) -> MediaInfo:
    """Refuse a video input that has no video stream or whose first frame does not decode."""
    path = Path(path)
    with _open(path) as container:
        info = _info(path, container)
        if not info.has_video:
            raise MediaError(
                f"The file {path} has no video stream; choose a video file such as an MP4."
            )
        if _first_video_frame(container) is None:
            raise MediaError(
                f"The video in {path} cannot be decoded (the file may be damaged or cut short); "
                "export it again as an MP4 and choose the new file."
            )
    return info


def check_audio_input(path: Path) -> MediaInfo:
    """Refuse an audio input that has no audio stream."""
    info = probe(path)
    if not info.has_audio:
        raise MediaError(
            f"The file {info.path} has no audio stream; choose an audio file such as a WAV or MP3."
        )
    return info


def check_inputs(video: Path, audio: Path) -> tuple[MediaInfo, MediaInfo]:
    """Check both inputs of a job quickly (a few packets at most), including two videos given."""
    video_info = check_video_input(video)
    audio_info = probe(audio)
    if audio_info.has_video:
        raise MediaError(
            f"Both inputs are videos ({video_info.path.name} and {audio_info.path.name}); "
            "give the dubbed dialogue as a WAV or MP3 file for the audio input."
        )
    return video_info, check_audio_input(audio)


def is_playable_video(path: Path) -> bool:
    """Whether a file (e.g. a downloaded result) decodes at its start and reaches its stated end."""
    try:
        with _open(Path(path)) as container:
            stream = _video_stream(container)
            if stream is None or _first_video_frame(container) is None:
                return False
            return _reaches_its_end(container, stream)
    except (MediaError, av.error.FFmpegError, OSError):
        return False


def _open(path: Path) -> InputContainer:
    """Open a file for reading, turning every failure into one sentence about that file."""
    check_input_file(path)
    try:
        return av.open(str(path), "r")
    except PermissionError:
        raise MediaError(
            f"The file {path} cannot be read (permission denied); check its permissions."
        ) from None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError):
        raise MediaError(
            f"The file {path} is not a video or audio file that can be read (it may be damaged "
            "or of another kind); choose an MP4 video or a WAV or MP3 audio file."
        ) from None


def _info(path: Path, container: InputContainer) -> MediaInfo:
    """Build a MediaInfo from an open container's headers."""
    video = _video_stream(container)
    audio = _audio_stream(container)
    if video is None and audio is None:
        raise MediaError(
            f"The file {path} holds neither video nor audio; choose an MP4 video or a WAV or "
            "MP3 audio file."
        )
    duration = container.duration / av.time_base if container.duration else None
    fps = _fps(video) if video is not None else None
    frames = None
    if video is not None:
        frames = video.frames or None
        stream_duration = _stream_seconds(video) or duration
        if frames is None and fps and stream_duration:
            frames = math.floor(stream_duration * fps + 0.01)
    return MediaInfo(
        path=path,
        format_name=container.format.name,
        duration=duration,
        has_video=video is not None,
        has_audio=audio is not None,
        fps=fps,
        frames=frames,
        width=video.codec_context.width if video is not None else None,
        height=video.codec_context.height if video is not None else None,
        video_codec=video.codec_context.name if video is not None else None,
        audio_codec=audio.codec_context.name if audio is not None else None,
        sample_rate=audio.codec_context.sample_rate if audio is not None else None,
    )


def _stream_seconds(stream: av.stream.Stream) -> float | None:
    """A stream's own duration: from its header, else Matroska's DURATION tag."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION", "")
    hours, _, rest = tag.partition(":")
    minutes, _, seconds = rest.partition(":")
    try:
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def _video_stream(container: InputContainer) -> VideoStream | None:
    """The first real video stream; cover art in an MP3 or M4A is not video."""
    for stream in container.streams.video:
        if not stream.disposition & Disposition.attached_pic:
            return stream
    return None


def _audio_stream(container: InputContainer) -> AudioStream | None:
    """The first audio stream, if any."""
    return container.streams.audio[0] if container.streams.audio else None


def _layout_name(stream: AudioStream) -> str:
    """A named channel layout: WAV and FLAC often leave it unnamed, which AAC refuses."""
    layout = stream.layout
    if not layout.name.endswith("channels"):
        return layout.name
    return DEFAULT_LAYOUTS.get(layout.nb_channels, "stereo")


def _fps(stream: VideoStream) -> Fraction | None:
    """The stream's frame rate as FFmpeg best knows it."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else None


def _first_video_frame(container: InputContainer) -> VideoFrame | None:
    """Decode just enough packets to get the first frame, or None if none decodes."""
    stream = _video_stream(container)
    if stream is None:
        return None
    try:
        for count, packet in enumerate(container.demux(stream)):
            for frame in packet.decode():
                return frame
            if count >= FIRST_FRAME_PACKET_LIMIT:
                return None
    except (av.error.FFmpegError, OSError):
        return None
    return None


def _reaches_its_end(container: InputContainer, stream: VideoStream) -> bool:
    """Decode from the last keyframe on: a file cut short stops before its stated end."""
    expected = _stream_seconds(stream)
    if not expected:
        return True
    start = stream.start_time or 0
    container.seek(start + int(expected / stream.time_base), stream=stream, backward=True)
    reached, frames = 0.0, 0
    for packet in container.demux(stream):
        if packet.is_corrupt:
            return False
        if packet.pts is not None:
            end = (packet.pts - start + (packet.duration or 0)) * stream.time_base
            reached = max(reached, float(end))
        frames += len(packet.decode())
    fps = _fps(stream)
    tolerance = float(2 / fps) if fps else 0.1
    return frames > 0 and reached >= expected - tolerance


# ---------------------------------------------------------------------------------------------
# Preparing uploads


def prepare_video(
    path: Path,
    workdir: Path,
    video_range: tuple[float, float] | None = None,
    checked: MediaInfo | None = None,
    progress: Callable[[float], None] | None = None,
) -> Path:
    """Return the file to upload: an MP4 as it is, anything else (or a range) as H.264 MP4.

    `video_range` is (start_seconds, duration_seconds); the cut holds exactly the frames
    round(start * fps) up to but excluding round(start * fps) + round(duration * fps).
    `checked` is check_video_input's answer when the caller has just had it: checking again
    costs a decode, a noticeable share of a fast upload. `progress(fraction)` hears how far
    a conversion is (it can take minutes for a large MOV).
    """
    path = Path(path)
    info = checked or check_video_input(path)
    if video_range is None and _is_uploadable_mp4(info):
        return path
    if not info.fps:
        raise MediaError(
            f"The frame rate of {path} is unknown; export it again as an MP4 with a fixed "
            "frame rate."
        )
    first, count = 0, None
    if video_range is not None:
        start, duration = video_range
        first, count = round(start * info.fps), round(duration * info.fps)
        if start < 0 or count < 1:
            raise MediaError(
                f"The range to send from {path} (start {start:g} s, duration {duration:g} s) "
                "is empty or negative; select a range of at least one frame."
            )
    suffix = f".f{first}-{first + count}" if count is not None else ""
    out = Path(workdir) / f"{path.stem}{suffix}.upload.mp4"
    write_mp4(path, path, out, first=first, count=count, copy_video=False, progress=progress)
    return out


def prepare_audio(
    path: Path,
    workdir: Path,
    checked: MediaInfo | None = None,
    audio_range: tuple[float, float] | None = None,
) -> Path:
    """Return the file to upload: a WAV or MP3 as it is, any other audio (or a range) as
    16-bit PCM WAV at the source's rate and channels.

    `audio_range` is (start_seconds, duration_seconds); the cut holds exactly the samples
    round(start * rate) up to but excluding that plus round(duration * rate), silence where
    it runs past the end of the file. `checked` is check_audio_input's answer when the
    caller has just had it.
    """
    path = Path(path)
    info = checked or check_audio_input(path)
    demuxer = UPLOADABLE_AUDIO.get(path.suffix.lower())
    if audio_range is None and demuxer is not None and demuxer in info.format_name.split(","):
        return path
    with ExitStack() as stack:
        source = stack.enter_context(_open(path))
        stream = _audio_stream(source)
        rate, layout = stream.codec_context.sample_rate, _layout_name(stream)
        first, count = 0, None
        if audio_range is not None:
            first, count = _audio_window_of(path, info, rate, audio_range)
        suffix = f".s{first}-{first + count}" if count is not None else ""
        out = Path(workdir) / f"{path.stem}{suffix}.upload.wav"
        tmp = stack.enter_context(atomic_path(out))
        target = stack.enter_context(av.open(str(tmp), "w", format="wav"))
        pcm = target.add_stream("pcm_s16le", rate=rate, layout=layout)
        span = math.inf if count is None else count / rate
        pieces = _audio_window(source, stream, first / rate, span, "s16")
        if count is not None:
            pieces = _padded(pieces, count, rate, layout)
        for _, packet in _encoded_audio(pcm, pieces):
            target.mux(packet)
    return out


def _audio_window_of(
    path: Path, info: MediaInfo, rate: int, audio_range: tuple[float, float]
) -> tuple[int, int]:
    """The first sample and the number of samples a range covers; MediaError for one that
    is empty or starts after the end of the audio (nothing of the file would be sent)."""
    start, duration = audio_range
    first, count = round(start * rate), round(duration * rate)
    if start < 0 or count < 1:
        raise MediaError(
            f"The range to send from {path} (start {start:g} s, duration {duration:g} s) "
            "is empty or negative; select a range of at least one sample."
        )
    if info.duration is not None and first >= round(info.duration * rate):
        raise MediaError(
            f"The range to send from {path} starts at {start:g} s, after the end of the "
            f"audio ({info.duration:g} s); select a range inside the file or a longer dub."
        )
    return first, count


SILENCE_CHUNK = 4096


def _padded(
    pieces: Iterator[av.AudioFrame], count: int, rate: int, layout: str
) -> Iterator[av.AudioFrame]:
    """The 16-bit frames of a window, then silence up to `count` samples where it ended early."""
    position = 0
    for piece in pieces:
        position += piece.samples
        yield piece
    yield from _silence(position, count - position, rate, layout)


def _silence(position: int, samples: int, rate: int, layout: str) -> Iterator[av.AudioFrame]:
    """`samples` of 16-bit silence in frames of at most SILENCE_CHUNK, from `position`."""
    while samples > 0:
        size = min(samples, SILENCE_CHUNK)
        frame = av.AudioFrame(format="s16", layout=layout, samples=size)
        frame.planes[0].update(bytes(2 * frame.layout.nb_channels * size))
        frame.sample_rate, frame.pts = rate, position
        frame.time_base = Fraction(1, rate)
        position, samples = position + size, samples - size
        yield frame


def _is_uploadable_mp4(info: MediaInfo) -> bool:
    """Whether the API takes this file as it is."""
    return (
        info.path.suffix.lower() == ".mp4"
        and "mp4" in info.format_name.split(",")
        and info.video_codec in MP4_VIDEO_CODECS
    )


@contextmanager
def atomic_path(out: Path) -> Iterator[Path]:
    """Yield a temporary path beside `out`; rename it into place only if the block succeeds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def write_mp4(
    video_path: Path,
    audio_path: Path,
    out: Path,
    *,
    first: int,
    count: int | None,
    copy_video: bool,
    progress: Callable[[float], None] | None = None,
) -> None:
    """Write an MP4 of video frames [first, first+count) of one file plus the matching audio.

    The audio comes from `audio_path` (which may be the video file itself) and covers the
    same span of time as the video written, measured from each file's own start.
    """
    with ExitStack() as stack:
        vin = stack.enter_context(_open(video_path))
        ain = stack.enter_context(_open(audio_path))
        vstream, astream = _video_stream(vin), _audio_stream(ain)
        fps = _fps(vstream)
        tmp = stack.enter_context(atomic_path(out))
        output = stack.enter_context(av.open(str(tmp), "w", format="mp4"))
        if copy_video:
            ostream = output.add_stream_from_template(vstream)
            video_packets = _copied_packets(vin, vstream, ostream)
        else:
            ostream = _add_h264_stream(output, vstream, fps)
            video_packets = _encoded_video_packets(vin, vstream, ostream, fps, first, count)
        packet_streams = [video_packets]
        span = _video_duration(vin, vstream) if count is None else float(count / fps)
        if astream is not None:
            offset = float(first / fps)
            if audio_path == video_path:
                # The same file: audio is aligned to the video stream's start, not its own.
                offset += _start_seconds(vstream) - _start_seconds(astream)
            ostream_audio = output.add_stream(
                "aac", rate=astream.codec_context.sample_rate, layout=_layout_name(astream)
            )
            aac = _audio_window(ain, astream, offset, span, "flt")
            packet_streams.append(_encoded_audio(ostream_audio, aac))
        wrote_video = False
        for at, packet in heapq.merge(*packet_streams, key=lambda item: item[0]):
            wrote_video = wrote_video or packet.stream is ostream
            output.mux(packet)
            if progress is not None and span > 0 and math.isfinite(span):
                progress(min(max(at / span, 0.0), 1.0))
        if not wrote_video:
            raise MediaError(
                f"The range to send from {video_path} starts after the end of the video; "
                "select a range inside the clip."
            )


def _add_h264_stream(output: OutputContainer, source: VideoStream, fps: Fraction) -> VideoStream:
    """An H.264 yuv420p stream at the source's size (rounded down to even) and frame rate."""
    stream = output.add_stream("libx264", rate=fps, options=dict(X264_OPTIONS))
    stream.width = source.codec_context.width // 2 * 2
    stream.height = source.codec_context.height // 2 * 2
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = 1 / fps
    return stream


def _start_seconds(stream: av.stream.Stream) -> float:
    """When a stream starts on its file's timeline."""
    return float(stream.start_time * stream.time_base) if stream.start_time else 0.0


def _video_duration(container: InputContainer, stream: VideoStream) -> float:
    """The video stream's duration, else the file's."""
    seconds = _stream_seconds(stream)
    if seconds:
        return seconds
    return container.duration / av.time_base if container.duration else math.inf


def _seek_before(container: InputContainer, stream: av.stream.Stream, seconds: float) -> None:
    """Seek to a keyframe a little before `seconds` (from the stream's start), if worth it."""
    target = seconds - SEEK_MARGIN_SECONDS
    if target > 0:
        offset = int(target / stream.time_base) + (stream.start_time or 0)
        container.seek(offset, stream=stream, backward=True)


def _decoded(container: InputContainer, stream: av.stream.Stream) -> Iterator[av.frame.Frame]:
    """Decode one stream packet by packet."""
    for packet in container.demux(stream):
        yield from packet.decode()


def _copied_packets(
    source: InputContainer, stream: VideoStream, target: VideoStream
) -> Iterator[tuple[float, Packet]]:
    """The video packets as they are, with their decode time for interleaving."""
    for packet in source.demux(stream):
        if packet.dts is None:
            continue
        time = float(packet.dts * packet.time_base)
        packet.stream = target
        yield time, packet


def _encoded_video_packets(
    source: InputContainer,
    stream: VideoStream,
    target: VideoStream,
    fps: Fraction,
    first: int,
    count: int | None,
) -> Iterator[tuple[float, Packet]]:
    """Frames first..first+count-1 re-encoded at a constant rate; gaps repeat the last frame."""
    end = math.inf if count is None else first + count
    origin = stream.start_time
    _seek_before(source, stream, float(first / fps))
    written, previous = 0, None

    def emit(frame: VideoFrame) -> Iterator[tuple[float, Packet]]:
        nonlocal written
        out = frame.reformat(width=target.width, height=target.height, format="yuv420p")
        out.pts = written
        out.time_base = target.codec_context.time_base
        written += 1
        for packet in target.encode(out):
            yield float(packet.dts * packet.time_base), packet

    for position, frame in enumerate(_decoded(source, stream)):
        if frame.pts is None:
            index = position
        else:
            if origin is None:
                origin = frame.pts
            index = round((frame.pts - origin) * stream.time_base * fps)
        if index >= end:
            break
        if index >= first:
            while previous is not None and first + written < index:
                yield from emit(previous)
            yield from emit(frame)
        previous = frame
    for packet in target.encode(None):
        yield float(packet.dts * packet.time_base), packet


def _encoded_audio(
    target: AudioStream, pieces: Iterator[av.AudioFrame]
) -> Iterator[tuple[float, Packet]]:
    """Each packet `target` encodes from the frames, then its encoder's tail, with the time
    (in seconds) each one starts at, for merging with another stream's packets."""
    for piece in pieces:
        for packet in target.encode(piece):
            yield float(packet.pts * packet.time_base), packet
    for packet in target.encode(None):
        yield float(packet.pts * packet.time_base), packet


def _audio_window(
    source: InputContainer,
    stream: AudioStream,
    offset: float,
    span: float,
    sample_format: str,
) -> Iterator[av.AudioFrame]:
    """The stream's samples from `offset` seconds (after its start) for `span` seconds, as
    packed frames in `sample_format`, each stamped with its first sample's place in the
    window; it ends early where the stream does."""
    rate = stream.codec_context.sample_rate
    window_start = round(offset * rate)
    window_end = window_start + round(span * rate) if math.isfinite(span) else math.inf
    _seek_before(source, stream, offset)
    resampler = av.AudioResampler(format=sample_format, layout=_layout_name(stream), rate=rate)
    origin = stream.start_time or 0
    position = None
    for frame in _decoded(source, stream):
        if frame.pts is not None:
            position = round((frame.pts - origin) * stream.time_base * rate)
        elif position is None:
            position = 0
        for packed in resampler.resample(frame):
            begin, stop = position, position + packed.samples
            position = stop
            lo, hi = max(begin, window_start), min(stop, window_end)
            if hi > lo:
                piece = _slice_audio(packed, lo - begin, hi - begin)
                piece.pts = lo - window_start
                yield piece
        if position >= window_end:
            break


def _slice_audio(frame: av.AudioFrame, start: int, stop: int) -> av.AudioFrame:
    """Samples [start, stop) of a packed frame, as a new frame of the same format."""
    if start == 0 and stop == frame.samples:
        return frame
    width = frame.format.bytes * frame.layout.nb_channels
    piece = av.AudioFrame(format=frame.format.name, layout=frame.layout.name, samples=stop - start)
    piece.planes[0].update(bytes(frame.planes[0])[start * width : stop * width])
    piece.sample_rate = frame.sample_rate
    piece.time_base = Fraction(1, frame.sample_rate)
    return piece
