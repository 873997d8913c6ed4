"""bridge.media on real files generated per test: refusals, frame-exact cuts, conversions, mux."""

from __future__ import annotations

import hashlib
import shutil
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest
from av.stream import Disposition

from bridge import media
from bridge.emulator.lipsync import mux_audio
from bridge.errors import MediaError
from tests.media_samples import frame_indices, make_sample_media, make_test_audio, make_test_video

SIZE = (128, 96)


def stream_durations(path: Path) -> dict[str, float]:
    """Each stream's duration in seconds, by kind."""
    with av.open(str(path)) as container:
        return {
            stream.type: float(stream.duration * stream.time_base) for stream in container.streams
        }


def digest(path: Path) -> tuple[str, int]:
    """A file's content hash and mtime, to prove it was left alone."""
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """A 2 s, 25 fps MP4 with audio whose frames carry their index."""
    return make_test_video(tmp_path / "clip.mp4", 50, 25, SIZE, with_audio=True)


@pytest.fixture
def speech(tmp_path: Path) -> Path:
    """A 2 s speech-like WAV."""
    return make_test_audio(tmp_path / "speech.wav", 2.0, speech=True)


# --- refusals: one sentence naming the file and what to do ---------------------------------


def test_missing_file_is_named_with_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.mp4"
    with pytest.raises(MediaError, match=r"nowhere\.mp4 does not exist; check the path"):
        media.probe(missing)


def test_empty_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(MediaError, match=r"empty\.mp4 is empty \(0 bytes\); export or copy"):
        media.check_video_input(empty)


def test_text_file_named_mp4_is_not_media(tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("these are my notes, not a video\n" * 40)
    with pytest.raises(MediaError, match=r"notes\.mp4 is not a video or audio file") as caught:
        media.probe(fake)
    assert "choose an MP4 video or a WAV or MP3 audio file" in str(caught.value)


def test_wav_renamed_mp4_has_no_video_stream(tmp_path: Path, speech: Path) -> None:
    renamed = tmp_path / "dialogue.mp4"
    shutil.copy(speech, renamed)
    with pytest.raises(MediaError) as caught:
        media.check_video_input(renamed)
    assert str(caught.value) == (
        f"The file {renamed} has no video stream; choose a video file such as an MP4."
    )


def test_audio_only_mp4_has_no_video_stream(tmp_path: Path) -> None:
    audio_only = make_test_audio(tmp_path / "voice.m4a", 1.0)
    as_mp4 = tmp_path / "voice.mp4"
    audio_only.rename(as_mp4)
    with pytest.raises(MediaError, match=r"voice\.mp4 has no video stream"):
        media.check_inputs(as_mp4, as_mp4)


def test_silent_video_as_audio_input_has_no_audio(tmp_path: Path) -> None:
    silent = make_test_video(tmp_path / "silent.mp4", 5, 25, SIZE)
    with pytest.raises(MediaError) as caught:
        media.check_audio_input(silent)
    assert str(caught.value) == (
        f"The file {silent} has no audio stream; choose an audio file such as a WAV or MP3."
    )


def test_two_videos_are_refused_with_the_fix(tmp_path: Path, clip: Path) -> None:
    dubbed = make_test_video(tmp_path / "dubbed.mp4", 5, 25, SIZE, with_audio=True)
    with pytest.raises(MediaError) as caught:
        media.check_inputs(clip, dubbed)
    assert str(caught.value) == (
        "Both inputs are videos (clip.mp4 and dubbed.mp4); give the dubbed dialogue as a WAV "
        "or MP3 file for the audio input."
    )


def test_good_inputs_are_described(clip: Path, speech: Path) -> None:
    video, audio = media.check_inputs(clip, speech)
    assert (video.has_video, video.has_audio, video.frames, video.fps) == (True, True, 50, 25)
    assert (video.width, video.height, video.video_codec) == (*SIZE, "h264")
    assert video.duration == pytest.approx(2.0, abs=0.05)
    assert (audio.has_video, audio.has_audio, audio.sample_rate) == (False, True, 48000)
    assert audio.audio_codec == "pcm_s16le"


def test_mp3_with_cover_art_is_audio_not_a_second_video(tmp_path: Path, clip: Path) -> None:
    song = tmp_path / "dialogue.mp3"
    with av.open(str(song), "w", format="mp3") as out:
        sound = out.add_stream("libmp3lame", rate=44100, layout="mono")
        cover = out.add_stream("mjpeg")
        cover.width, cover.height, cover.pix_fmt = 64, 64, "yuvj420p"
        cover.disposition = Disposition.attached_pic
        picture = av.VideoFrame(width=64, height=64, format="yuvj420p")
        for packet in [*cover.encode(picture), *cover.encode(None)]:
            out.mux(packet)
        silence = av.AudioFrame(format="s16", layout="mono", samples=22050)
        silence.planes[0].update(bytes(44100))
        silence.sample_rate, silence.pts = 44100, 0
        for packet in [*sound.encode(silence), *sound.encode(None)]:
            out.mux(packet)
    _, audio = media.check_inputs(clip, song)
    assert (audio.has_audio, audio.has_video) == (True, False)
    assert media.prepare_audio(song, tmp_path / "work") == song


# --- video preparation ---------------------------------------------------------------------


def test_mp4_without_range_is_sent_as_it_is(tmp_path: Path, clip: Path) -> None:
    before = digest(clip)
    workdir = tmp_path / "work"
    assert media.prepare_video(clip, workdir) == clip
    assert digest(clip) == before
    assert not workdir.exists() or not any(workdir.iterdir())


def test_range_is_cut_frame_exactly_with_its_audio(tmp_path: Path, clip: Path) -> None:
    before = digest(clip)
    cut = media.prepare_video(clip, tmp_path / "work", video_range=(0.4, 1.0))
    assert frame_indices(cut) == list(range(10, 35))
    info = media.probe(cut)
    assert (info.fps, info.frames, info.has_audio) == (25, 25, True)
    assert stream_durations(cut)["audio"] == pytest.approx(1.0, abs=0.03)
    assert digest(clip) == before
    assert [p.name for p in cut.parent.iterdir()] == [cut.name]


def test_cut_of_ntsc_rate_mov_keeps_the_rate(tmp_path: Path) -> None:
    rate = Fraction(30000, 1001)
    source = make_test_video(tmp_path / "take.mov", 90, rate, SIZE, container="mov")
    cut = media.prepare_video(source, tmp_path / "work", video_range=(1.0, 0.5))
    assert frame_indices(cut) == list(range(30, 45))
    assert media.probe(cut).fps == rate


def test_cut_deep_in_a_clip_seeks_and_still_starts_on_the_right_frame(tmp_path: Path) -> None:
    source = make_test_video(
        tmp_path / "long.mkv", 150, 25, SIZE, with_audio=True, container="mkv", keyframe_interval=10
    )
    cut = media.prepare_video(source, tmp_path / "work", video_range=(4.52, 0.4))
    assert frame_indices(cut) == list(range(113, 123))
    assert stream_durations(cut)["audio"] == pytest.approx(0.4, abs=0.03)


def test_range_reaching_past_the_end_stops_at_the_last_frame(tmp_path: Path, clip: Path) -> None:
    cut = media.prepare_video(clip, tmp_path / "work", video_range=(1.6, 5.0))
    assert frame_indices(cut) == list(range(40, 50))


def test_range_after_the_end_is_refused_and_leaves_nothing(tmp_path: Path, clip: Path) -> None:
    workdir = tmp_path / "work"
    with pytest.raises(MediaError, match="starts after the end of the video"):
        media.prepare_video(clip, workdir, video_range=(10.0, 1.0))
    assert list(workdir.iterdir()) == []


def test_empty_range_is_refused(tmp_path: Path, clip: Path) -> None:
    with pytest.raises(MediaError, match="select a range of at least one frame"):
        media.prepare_video(clip, tmp_path, video_range=(0.5, 0.01))


@pytest.mark.parametrize("container", ["mov", "mkv"])
def test_other_containers_become_playable_mp4(tmp_path: Path, container: str) -> None:
    source = make_test_video(
        tmp_path / f"take.{container}", 30, 25, SIZE, with_audio=True, container=container
    )
    assert media.probe(source).frames == 30
    before = digest(source)
    out = media.prepare_video(source, tmp_path / "work")
    assert out.suffix == ".mp4" and out.parent == tmp_path / "work"
    info = media.probe(out)
    assert "mp4" in info.format_name.split(",")
    assert (info.video_codec, info.audio_codec, info.fps) == ("h264", "aac", 25)
    assert frame_indices(out) == list(range(30))
    assert media.is_playable_video(out)
    assert digest(source) == before


# --- audio preparation ---------------------------------------------------------------------


def test_wav_and_mp3_are_sent_as_they_are(tmp_path: Path, speech: Path) -> None:
    mp3 = make_test_audio(tmp_path / "speech.mp3", 1.0)
    assert media.prepare_audio(speech, tmp_path / "work") == speech
    assert media.prepare_audio(mp3, tmp_path / "work") == mp3


@pytest.mark.parametrize(("suffix", "rate", "channels"), [(".flac", 44100, 2), (".m4a", 48000, 1)])
def test_other_audio_becomes_16_bit_wav(
    tmp_path: Path, suffix: str, rate: int, channels: int
) -> None:
    source = make_test_audio(tmp_path / f"line{suffix}", 1.5, rate, channels)
    out = media.prepare_audio(source, tmp_path / "work")
    assert out.suffix == ".wav"
    with av.open(str(out)) as container:
        stream = container.streams.audio[0]
        assert (container.format.name, stream.codec_context.name) == ("wav", "pcm_s16le")
        assert (stream.codec_context.sample_rate, stream.layout.nb_channels) == (rate, channels)
        samples = sum(frame.samples for frame in container.decode(stream))
    assert samples / rate == pytest.approx(1.5, abs=0.05)


# --- the emulator's mux, playability, sample media -----------------------------------------


def test_mux_copies_the_picture_and_takes_the_new_audio_for_the_videos_length(
    tmp_path: Path, clip: Path
) -> None:
    long_line = make_test_audio(tmp_path / "long.wav", 3.5, speech=True)
    out = tmp_path / "results" / "synced.mp4"
    mux_audio(clip, long_line, out)
    info = media.probe(out)
    assert (info.has_video, info.has_audio, info.audio_codec) == (True, True, "aac")
    durations = stream_durations(out)
    assert durations["video"] == pytest.approx(2.0, abs=0.01)
    assert durations["audio"] == pytest.approx(2.0, abs=0.03)
    with av.open(str(clip)) as a, av.open(str(out)) as b:
        original = [bytes(p) for p in a.demux(video=0) if p.size]
        copied = [bytes(p) for p in b.demux(video=0) if p.size]
    assert copied == original
    assert [p.name for p in out.parent.iterdir()] == ["synced.mp4"]


def remux_faststart(source: Path, out: Path) -> Path:
    """Copy a clip's video into an MP4 whose index comes first, as streaming services send."""
    with (
        av.open(str(source)) as inp,
        av.open(str(out), "w", format="mp4", options={"movflags": "faststart"}) as outp,
    ):
        stream = outp.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                outp.mux(packet)
    return out


def test_truncated_or_bogus_files_are_not_playable(tmp_path: Path, clip: Path) -> None:
    assert media.is_playable_video(clip)
    truncated = tmp_path / "partial.mp4"
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    assert not media.is_playable_video(truncated)
    faststart = remux_faststart(clip, tmp_path / "faststart.mp4")
    assert media.is_playable_video(faststart)
    truncated.write_bytes(faststart.read_bytes()[: faststart.stat().st_size * 95 // 100])
    assert not media.is_playable_video(truncated)
    text = tmp_path / "error.mp4"
    text.write_text('{"error": "expired"}')
    assert not media.is_playable_video(text)
    assert not media.is_playable_video(tmp_path / "missing.mp4")


def test_sample_media_is_quick_and_carries_frame_indices(tmp_path: Path) -> None:
    started = time.monotonic()
    video, audio = make_sample_media(tmp_path / "demo")
    assert time.monotonic() - started < 2.0
    assert (video.name, audio.name) == ("sample.mp4", "sample.wav")
    assert frame_indices(video) == list(range(75))
    checked_video, checked_audio = media.check_inputs(video, audio)
    assert checked_video.has_audio and checked_video.fps == 25
    assert checked_audio.duration == pytest.approx(3.0, abs=0.01)
