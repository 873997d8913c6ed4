"""Sample media for the demo and the emulator: an H.264 test pattern and a speech-like tone.

Each frame carries its own index as a band of bits across the top (the tests read it back
to check frame-exact cuts), so a sample is also a ruler for alignment.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
from av.audio.stream import AudioStream
from av.packet import Packet
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from bridge.media import atomic_path

# Frame indices are written as bits in a band of blocks across the top of the picture.
INDEX_BITS = 12
INDEX_BAND_HEIGHT = 24


def make_sample_media(
    folder: Path,
    seconds: float = 3.0,
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
    name: str = "sample",
) -> tuple[Path, Path]:
    """Write <name>.mp4 (test pattern with a tone) and <name>.wav (speech-like) for demos."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / f"{name}.mp4"
    audio = folder / f"{name}.wav"
    make_sample_video(video, round(seconds * fps), fps, size, with_audio=True)
    make_sample_audio(audio, seconds, speech=True)
    return video, audio


def make_sample_video(
    path: Path,
    frames: int,
    fps: int | Fraction = 25,
    size: tuple[int, int] = (320, 240),
    *,
    with_audio: bool = False,
    container_format: str = "mp4",
    keyframe_interval: int = 250,
    timecode: str | None = None,
) -> Path:
    """Write an H.264 clip (in an FFmpeg container format) whose frames carry their index,
    tagged with a start `timecode` ("01:00:00:00") when given, as cameras tag theirs."""
    width, height = size
    if width < INDEX_BITS * 8 or height < INDEX_BAND_HEIGHT * 2 or frames >= 2**INDEX_BITS:
        raise ValueError("sample video must be at least 96x48 and shorter than 4096 frames")
    path = Path(path)
    fps = Fraction(fps)
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format=container_format) as out:
        stream = out.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = 1 / fps
        stream.codec_context.gop_size = keyframe_interval
        if timecode is not None:
            stream.metadata["timecode"] = timecode
        audio = None
        if with_audio:
            audio = out.add_stream("aac", rate=48000, layout="mono")
        packets = [_pattern_packets(stream, frames, fps)]
        if audio is not None:
            packets.append(_tone_packets(audio, float(frames / fps), speech=False))
        for _, packet in heapq.merge(*packets, key=lambda item: item[0]):
            out.mux(packet)
    return path


def make_sample_audio(
    path: Path,
    seconds: float,
    *,
    rate: int = 48000,
    channels: int = 1,
    speech: bool = False,
    container_format: str = "wav",
    codec: str = "pcm_s16le",
) -> Path:
    """Write a 440 Hz tone (or a speech-like signal), a WAV unless told another format."""
    path = Path(path)
    layout = "mono" if channels == 1 else "stereo"
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        for _, packet in _tone_packets(stream, seconds, speech=speech):
            out.mux(packet)
    return path


def _pattern_packets(
    stream: VideoStream, frames: int, fps: Fraction
) -> Iterator[tuple[float, Packet]]:
    """Encode moving bars under a band of index bits, one frame at a time."""
    width, height = stream.width, stream.height
    block = width // INDEX_BITS
    ramp = bytes(16 + (x * 219 // width) for x in range(width)) * 2
    chroma = (width // 2) * (height // 2)
    for index in range(frames):
        band_row = bytearray(width)
        for bit in range(INDEX_BITS):
            on = index >> (INDEX_BITS - 1 - bit) & 1
            band_row[bit * block : (bit + 1) * block] = bytes([235 if on else 16]) * block
        shift = index * 4 % width
        bars = ramp[shift : shift + width]
        luma = bytes(band_row) * INDEX_BAND_HEIGHT + bars * (height - INDEX_BAND_HEIGHT)
        frame = VideoFrame(width=width, height=height, format="yuv420p")
        _fill_plane(frame.planes[0], luma, width)
        _fill_plane(frame.planes[1], bytes([(64 + index * 3) % 256]) * chroma, width // 2)
        _fill_plane(frame.planes[2], bytes([(192 - index * 2) % 256]) * chroma, width // 2)
        frame.pts = index
        frame.time_base = 1 / fps
        for packet in stream.encode(frame):
            yield float(packet.dts * packet.time_base), packet
    for packet in stream.encode(None):
        yield float(packet.dts * packet.time_base), packet


def _fill_plane(plane: av.video.plane.VideoPlane, data: bytes, width: int) -> None:
    """Copy tightly packed rows into a plane whose rows may be padded."""
    if plane.line_size == width:
        plane.update(data)
        return
    padding = bytes(plane.line_size - width)
    plane.update(b"".join(data[i : i + width] + padding for i in range(0, len(data), width)))


def _tone_packets(
    stream: AudioStream, seconds: float, speech: bool
) -> Iterator[tuple[float, Packet]]:
    """Encode a 440 Hz tone, or syllable-like bursts of a voiced sound, in 1024-sample frames."""
    rate = stream.codec_context.sample_rate
    channels = stream.layout.nb_channels
    total = round(seconds * rate)
    for start in range(0, total, 1024):
        samples = min(1024, total - start)
        values = array("h")
        for n in range(start, start + samples):
            t = n / rate
            if speech:
                pitch = 150 + 40 * math.sin(2 * math.pi * 0.7 * t)
                envelope = abs(math.sin(2 * math.pi * 2.5 * t)) ** 2
                voice = sum(math.sin(2 * math.pi * pitch * k * t) / k for k in (1, 2, 3, 4))
                value = 0.3 * envelope * voice
            else:
                value = 0.3 * math.sin(2 * math.pi * 440 * t)
            values.extend([int(value * 32767)] * channels)
        frame = av.AudioFrame(format="s16", layout=stream.layout.name, samples=samples)
        frame.planes[0].update(values.tobytes())
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        for packet in stream.encode(frame):
            yield float(packet.pts * packet.time_base), packet
    for packet in stream.encode(None):
        yield float(packet.pts * packet.time_base), packet
