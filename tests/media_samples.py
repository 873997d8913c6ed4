"""Test media: clips whose frames carry their index, tones and speech-like audio in the
containers and formats a user may hand in. Shared by tests/bridge, tests/addon and bench/.

The writers are the demo's own (`bridge.emulator.samples`); this module adds the formats
only tests need and reads the frame index back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
from av.video.frame import VideoFrame

from bridge.emulator.samples import (
    INDEX_BAND_HEIGHT,
    INDEX_BITS,
    make_sample_audio,
    make_sample_media,
    make_sample_video,
)

__all__ = [
    "frame_index_of",
    "frame_indices",
    "make_sample_media",
    "make_test_audio",
    "make_test_video",
]

CONTAINER_FORMATS = {"mp4": "mp4", "mov": "mov", "mkv": "matroska", "m4v": "mp4"}
# File suffix -> (FFmpeg container format, codec).
AUDIO_FORMATS = {
    ".wav": ("wav", "pcm_s16le"),
    ".flac": ("flac", "flac"),
    ".m4a": ("ipod", "aac"),
    ".aac": ("adts", "aac"),
    ".mp3": ("mp3", "libmp3lame"),
    ".ogg": ("ogg", "libopus"),
}


def make_test_video(
    path: Path, frames: int, *args: Any, container: str = "mp4", **options: Any
) -> Path:
    """The demo's indexed clip (`make_sample_video`'s arguments), in the container a file
    suffix names: mp4, mov, mkv or m4v."""
    return make_sample_video(
        path, frames, *args, container_format=CONTAINER_FORMATS[container], **options
    )


def make_test_audio(
    path: Path, seconds: float, rate: int = 48000, channels: int = 1, speech: bool = False
) -> Path:
    """Write a tone (or a speech-like signal) in the format the suffix names (.wav, .flac, ...)."""
    container_format, codec = AUDIO_FORMATS[Path(path).suffix.lower()]
    return make_sample_audio(
        path,
        seconds,
        rate=rate,
        channels=channels,
        speech=speech,
        container_format=container_format,
        codec=codec,
    )


def frame_index_of(frame: VideoFrame) -> int:
    """Read back the index a sample video wrote into a frame (its band of bits)."""
    gray = frame.reformat(format="gray")
    plane = gray.planes[0]
    data = bytes(plane)
    block = gray.width // INDEX_BITS
    row = (INDEX_BAND_HEIGHT // 2) * plane.line_size
    index = 0
    for bit in range(INDEX_BITS):
        centre = row + bit * block + block // 2
        sample = data[centre - 2 : centre + 3]
        index = index * 2 + (sum(sample) / len(sample) > 125)
    return index


def frame_indices(path: Path) -> list[int]:
    """The index each decoded frame of a video carries, in presentation order: a cut or a
    take made from indexed sources shows which source frames it holds."""
    with av.open(str(path)) as container:
        return [frame_index_of(frame) for frame in container.decode(video=0)]
