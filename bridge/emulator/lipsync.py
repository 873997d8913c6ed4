"""The emulator's stand-in for lip sync: THIS DOES NO REAL LIP SYNC.

The "result" is the source video with the target audio muxed in, so a round trip can be
seen working offline and checked (same picture, new sound).
"""

from __future__ import annotations

from pathlib import Path

from bridge import media


def mux_audio(video: Path, audio: Path, out: Path) -> None:
    """The video stream copied (re-encoded only if an MP4 cannot hold it), the audio replaced
    (AAC) and cut to the video's length."""
    video, audio = Path(video), Path(audio)
    info = media.check_video_input(video)
    media.check_audio_input(audio)
    copyable = info.video_codec in media.MP4_VIDEO_CODECS
    media.write_mp4(video, audio, Path(out), first=0, count=None, copy_video=copyable)
