"""A job's audio_range: the dub cut sample-exactly to 16-bit PCM WAV (silence past its end),
refused as video_range is (its bad values are test_server's cases beside video_range's), and a
different range never reuses another range's cut."""

from __future__ import annotations

import wave
from pathlib import Path

import av
import pytest
from aiohttp.test_utils import TestClient

from bridge import media, preparing
from bridge.errors import MediaError
from bridge.server import ENGINE
from tests.bridge.conftest import AUTH, error_of, wait_final
from tests.media_samples import make_test_audio, make_test_video

RATE = 8000
SIZE = (96, 48)


def counting_wav(path: Path, samples: int, channels: int = 1, rate: int = RATE) -> Path:
    """A 16-bit WAV whose every sample tells its own index (mod 30000), channel c adding c."""
    frames = bytearray()
    for index in range(samples):
        for channel in range(channels):
            frames += ((index % 30000) + channel).to_bytes(2, "little", signed=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(frames))
    return path


def samples_of(path: Path) -> tuple[int, int, list[int]]:
    """A WAV's rate, channels and samples (interleaved)."""
    with wave.open(str(path), "rb") as wav:
        assert wav.getsampwidth() == 2
        data = wav.readframes(wav.getnframes())
        rate, channels = wav.getframerate(), wav.getnchannels()
    values = [
        int.from_bytes(data[i : i + 2], "little", signed=True) for i in range(0, len(data), 2)
    ]
    return rate, channels, values


def test_a_range_is_cut_sample_exactly(tmp_path: Path) -> None:
    dub = counting_wav(tmp_path / "dub.wav", 3 * RATE)
    cut = media.prepare_audio(dub, tmp_path / "work", audio_range=(1.001, 24 / 23.976))
    rate, channels, values = samples_of(cut)
    first, count = round(1.001 * RATE), round(24 / 23.976 * RATE)
    assert (rate, channels, len(values)) == (RATE, 1, count) == (RATE, 1, 8008)
    assert values == list(range(first, first + count))
    assert cut.parent == tmp_path / "work" and dub.stat().st_size == 2 * 3 * RATE + 44


def test_stereo_keeps_its_channels_apart(tmp_path: Path) -> None:
    dub = counting_wav(tmp_path / "dub.wav", 2 * RATE, channels=2)
    rate, channels, values = samples_of(
        media.prepare_audio(dub, tmp_path / "work", audio_range=(0.5, 0.25))
    )
    assert (rate, channels) == (RATE, 2)
    assert values[0::2] == list(range(4000, 6000)) and values[1::2] == list(range(4001, 6001))


def test_a_range_past_the_end_is_padded_with_silence(tmp_path: Path) -> None:
    dub = counting_wav(tmp_path / "dub.wav", RATE)
    _, _, values = samples_of(media.prepare_audio(dub, tmp_path / "work", audio_range=(0.75, 1.0)))
    assert len(values) == RATE
    assert values[: RATE // 4] == list(range(6000, 8000)) and set(values[RATE // 4 :]) == {0}


def test_a_compressed_dub_is_cut_to_pcm_at_its_own_rate(tmp_path: Path) -> None:
    dub = make_test_audio(tmp_path / "dub.flac", 2.0, rate=48000, speech=True)
    whole = samples_of(media.prepare_audio(dub, tmp_path / "all"))[2]
    rate, _, values = samples_of(media.prepare_audio(dub, tmp_path / "cut", audio_range=(0.5, 1.0)))
    assert rate == 48000 and values == whole[24000:72000]


def test_the_range_of_an_audio_track_in_a_video_file_is_cut_too(tmp_path: Path) -> None:
    clip = make_test_video(tmp_path / "clip.mov", 25, 25, SIZE, with_audio=True, container="mov")
    rate, _, values = samples_of(media.prepare_audio(clip, tmp_path, audio_range=(0.2, 0.4)))
    assert len(values) == round(0.4 * rate)


def test_a_range_after_the_end_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    dub = counting_wav(tmp_path / "dub.wav", RATE)
    with pytest.raises(MediaError, match=r"dub\.wav starts at 1\.5 s, after the end of the audio"):
        media.prepare_audio(dub, tmp_path / "work", audio_range=(1.5, 1.0))
    with pytest.raises(MediaError, match="at least one sample"):
        media.prepare_audio(dub, tmp_path / "work", audio_range=(0.0, 0.00001))
    assert not (tmp_path / "work").exists() or list((tmp_path / "work").iterdir()) == []


def test_another_range_is_another_preparation(tmp_path: Path) -> None:
    video = make_test_video(tmp_path / "clip.mp4", 25, 25, SIZE)
    dub = counting_wav(tmp_path / "dub.wav", 2 * RATE)
    work = tmp_path / "work"
    first = preparing.prepare(video, dub, work, None, None, audio_range=(0.0, 0.5))
    assert preparing.load(work, None, (0.0, 0.5)) == first
    assert preparing.load(work, None, (0.5, 0.5)) is None
    assert preparing.load(work, None, None) is None
    second = preparing.prepare(video, dub, work, None, None, audio_range=(0.5, 0.5))
    assert second.audio != first.audio and samples_of(second.audio)[2][0] == 4000


async def test_audio_range_needs_a_local_audio_file(
    api: TestClient,
) -> None:
    body = {
        "video_url": "https://example.com/v.mp4",
        "audio_url": "https://example.com/a.wav",
        "audio_range": {"start_seconds": 0, "duration_seconds": 1},
    }
    message = await error_of(await api.post("/v1/jobs", json=body, headers=AUTH), 400)
    assert message == "audio_range works with audio_path only, not with audio_url."


async def test_the_api_sends_the_cut_and_shows_the_range(
    api: TestClient,
    tmp_path: Path,
) -> None:
    video = make_test_video(tmp_path / "clip.mp4", 75, 25, SIZE)
    dub = counting_wav(tmp_path / "dub.wav", 4 * RATE)
    audio_range = {"start_seconds": 2.5, "duration_seconds": 1.0}
    body = {"video_path": str(video), "audio_path": str(dub), "audio_range": audio_range}
    response = await api.post("/v1/jobs", json=body, headers=AUTH)
    assert response.status == 201, await response.text()
    job = await response.json()
    assert job["audio_range"] == audio_range
    done = await wait_final(api.server.app[ENGINE], job["id"])
    assert done.state == "completed", done.error
    # The emulator muxes what it got: one second of the dub under three of picture.
    with av.open(done.output_path) as take:
        seconds = take.streams.audio[0].duration * take.streams.audio[0].time_base
    assert float(seconds) == pytest.approx(1.0, abs=0.05)
