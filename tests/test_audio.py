"""Decoding every supported format, channels, resampling, windows of long audio, and typed errors."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sew_pipeline import audio
from sew_pipeline.chunking import plan_windows
from sew_pipeline.errors import ItemError
from tests.support.paths import LIBRISPEECH_ROOT


def tone(freq: float, seconds: float, sr: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode(x: np.ndarray, sr: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def peak_hz(y: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.argmax(spec) * sr / len(y))


def rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))


LOSSLESS = [("WAV", "PCM_U8", 16000, 1 / 64), ("WAV", "PCM_16", 16000, 1e-4), ("WAV", "PCM_24", 16000, 1e-6),
            ("WAV", "PCM_32", 16000, 1e-8), ("WAV", "FLOAT", 16000, 0.0), ("WAV", "DOUBLE", 16000, 0.0),
            ("FLAC", "PCM_16", 16000, 1e-4), ("FLAC", "PCM_24", 16000, 1e-6)]
LOSSY = [("WAV", "ULAW", 8000), ("WAV", "ALAW", 8000), ("WAV", "GSM610", 8000), ("WAV", "IMA_ADPCM", 16000),
         ("OGG", "VORBIS", 16000), ("OGG", "OPUS", 48000), ("MP3", "MPEG_LAYER_III", 16000)]


@pytest.mark.parametrize("fmt,subtype,sr,tol", LOSSLESS, ids=[f"{f}-{s}" for f, s, *_ in LOSSLESS])
def test_lossless_formats_decode_to_the_written_samples(fmt, subtype, sr, tol):
    x = tone(440, 1.0, sr)
    y, got_sr = audio.decode(encode(x, sr, fmt, subtype))
    assert got_sr == sr and y.dtype == np.float32 and y.shape == (1, len(x))
    assert np.max(np.abs(y[0] - x)) <= tol


@pytest.mark.parametrize("fmt,subtype,sr", LOSSY, ids=[f"{f}-{s}" for f, s, _ in LOSSY])
def test_lossy_formats_decode_with_frequency_and_level_kept(fmt, subtype, sr):
    if subtype in ("OPUS", "MPEG_LAYER_III") and subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} lacks {subtype}")
    x = tone(440, 1.0, sr)
    y, got_sr = audio.decode(encode(x, sr, fmt, subtype))
    assert got_sr == sr and y.dtype == np.float32 and y.shape[0] == 1
    assert abs(y.shape[1] - len(x)) < 0.1 * sr  # codecs may pad/trim a frame
    body = y[0, sr // 5: -sr // 5]  # skip codec warm-up and tail
    assert abs(peak_hz(body, sr) - 440) < 5
    assert rms(body) == pytest.approx(0.5 / np.sqrt(2), rel=0.15)


@pytest.mark.parametrize("flac", sorted(LIBRISPEECH_ROOT.rglob("*.flac")), ids=lambda p: p.stem)
def test_librispeech_fixtures_decode_sample_exact(flac: Path):
    ref, sr = sf.read(flac, dtype="float32")
    y, got_sr = audio.decode(flac.read_bytes(), uri=str(flac))
    assert got_sr == sr == 16000
    np.testing.assert_array_equal(y[0], ref)
    [(channel, loaded)] = audio.load({"audio_uri": str(flac)}, storage_options={})
    assert channel == -1
    np.testing.assert_array_equal(loaded, ref)  # 16 kHz in, 16 kHz out: no resampling at all


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16")])
def test_offset_and_duration_read_only_that_window(fmt, subtype):
    sr = 16000
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 3 * sr).astype(np.float32)
    data = encode(x, sr, fmt, subtype)
    full, _ = audio.decode(data)
    part, _ = audio.decode(data, offset_s=1.25, duration_s=0.5)
    np.testing.assert_array_equal(part, full[:, 20000:28000])
    tail, _ = audio.decode(data, offset_s=2.5, duration_s=10.0)  # clipped at the end of file
    np.testing.assert_array_equal(tail, full[:, 40000:])


def write_call(tmp_path: Path, seconds: float = 4.0) -> tuple[Path, np.ndarray]:
    """8 kHz G.711 mu-law stereo call: caller = 1 kHz at 0.5, agent = 300 Hz at 0.25."""
    sr = 8000
    x = np.stack([tone(1000, seconds, sr, 0.5), tone(300, seconds, sr, 0.25)], axis=1)
    path = tmp_path / "call.wav"
    sf.write(path, x, sr, subtype="ULAW")
    return path, x


def test_mulaw_stereo_call_resamples_to_16k_and_splits_into_channels(tmp_path):
    path, x = write_call(tmp_path)
    items = audio.load({"audio_uri": str(path)}, storage_options={}, channels="split")
    assert [c for c, _ in items] == [0, 1]
    for (_, y), freq, amp in zip(items, (1000, 300), (0.5, 0.25)):
        assert y.dtype == np.float32 and len(y) == 2 * len(x)  # exactly 16 kHz
        body = y[1600:-1600]
        assert abs(peak_hz(body, 16000) - freq) < 2
        assert rms(body) == pytest.approx(amp / np.sqrt(2), rel=0.02)
    [(ch, mixed)] = audio.load({"audio_uri": str(path)}, storage_options={}, channels="mix")
    assert ch == -1 and rms(mixed[1600:-1600]) == pytest.approx(np.sqrt(0.25**2 + 0.125**2) / np.sqrt(2), rel=0.03)
    [(ch, agent)] = audio.load({"audio_uri": str(path)}, storage_options={}, channels=1)
    assert ch == 1 and np.array_equal(agent, items[1][1])


def test_streamed_load_equals_one_shot_resample(tmp_path):
    path, _ = write_call(tmp_path, seconds=20.0)  # > BLOCK_FRAMES, so several blocks
    native, sr = audio.decode(path.read_bytes())
    one_shot = audio.resample(native, sr, 16000)
    items = audio.load({"audio_uri": str(path)}, storage_options={}, channels="split")
    for c, y in items:
        np.testing.assert_allclose(y, one_shot[c], atol=1e-6)


def test_select_channels_modes():
    x = np.stack([np.ones(4, np.float32), 3 * np.ones(4, np.float32)])
    [(c, m)] = audio.select_channels(x, "mix")
    assert c == -1 and np.allclose(m, 2.0)
    assert [c for c, _ in audio.select_channels(x, "split")] == [0, 1]
    [(c, y)] = audio.select_channels(x, 1)
    assert c == 1 and np.allclose(y, 3.0)
    with pytest.raises(ItemError) as e:
        audio.select_channels(x, 2)
    assert e.value.error_type == "unsupported_format"


def test_iter_chunks_windows_match_loaded_audio_and_stay_bounded(tmp_path):
    path, _ = write_call(tmp_path, seconds=30.0)
    row = {"audio_uri": str(path)}
    loaded = dict(audio.load(row, storage_options={}, channels="split"))
    chunks = list(audio.iter_chunks(row, storage_options={}, channels="split", window_s=8.0, overlap_s=2.0))
    windows = plan_windows(len(loaded[0]), 8.0, 2.0)
    assert len(chunks) == 2 * len(windows) and {c.num_windows for c in chunks} == {len(windows)}
    for ch in chunks:
        assert ch.window == windows[ch.window.index]
        np.testing.assert_array_equal(ch.audio, loaded[ch.channel][ch.window.start:ch.window.end])
        assert len(ch.audio) <= 8 * 16000


def test_offset_row_is_resampled_window(tmp_path):
    path, _ = write_call(tmp_path)
    [(_, y)] = audio.load({"audio_uri": str(path), "offset_s": 1.0, "duration_s": 2.0}, storage_options={}, channels=0)
    assert len(y) == 32000


# ---- every error type -----------------------------------------------------------------------------------

def expect_error(error_type: str, fn, *args, **kwargs) -> ItemError:
    with pytest.raises(ItemError) as e:
        fn(*args, **kwargs)
    assert e.value.error_type == error_type, e.value.message
    return e.value


def test_missing_local_file(tmp_path):
    err = expect_error("missing", audio.load, {"audio_uri": str(tmp_path / "nope.flac")}, storage_options={})
    assert "nope.flac" in err.message
    expect_error("missing", audio.load, {"audio_uri": None}, storage_options={})


def test_empty_inputs(tmp_path):
    (tmp_path / "zero.wav").write_bytes(b"")
    err = expect_error("empty", audio.load, {"audio_uri": str(tmp_path / "zero.wav")}, storage_options={})
    assert "zero.wav" in err.message
    expect_error("empty", audio.decode, encode(np.zeros(0, np.float32), 16000, "WAV", "PCM_16"))
    expect_error("empty", audio.decode, encode(tone(440, 1, 16000), 16000, "WAV", "PCM_16"), offset_s=5.0)


def test_non_finite_samples_are_an_error_and_stream_nothing(tmp_path):
    x = tone(440, 1.0, 16000)
    x[8000] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    expect_error("non_finite", audio.decode, path.read_bytes())
    expect_error("non_finite", audio.load, {"audio_uri": str(path)}, storage_options={})
    got = []
    with pytest.raises(ItemError) as e:
        for chunk in audio.iter_chunks({"audio_uri": str(path)}, storage_options={}, window_s=0.2, overlap_s=0.08):
            got.append(chunk)
    assert e.value.error_type == "non_finite" and got == []  # checked before the first window


def test_too_long_is_judged_from_the_header(tmp_path):
    path, _ = write_call(tmp_path, seconds=4.0)
    err = expect_error("too_long", audio.load, {"audio_uri": str(path)}, storage_options={}, max_duration_s=3.0)
    assert "max_duration_s=3.0" in err.message
    [(_, y)] = audio.load({"audio_uri": str(path), "duration_s": 2.0}, storage_options={}, max_duration_s=3.0)
    assert len(y) == 32000  # the requested window is what counts


def test_unsupported_format(tmp_path):
    err = expect_error("unsupported_format", audio.decode, b"id,text\n1,hello\n" * 50, uri="s3://b/notes.csv")
    assert "s3://b/notes.csv" in err.message
    wav = bytearray(encode(tone(440, 0.5, 16000), 16000, "WAV", "PCM_16"))
    wav[20:22] = (0x0161).to_bytes(2, "little")  # WMA codec tag in a valid RIFF/WAVE header
    expect_error("unsupported_format", audio.decode, bytes(wav))
    expect_error("unsupported_format", audio.decode, b"\x00\x00\x00\x20ftypM4A " + bytes(4000))  # AAC/MP4


def test_unreadable_corrupt_known_containers():
    flac = encode(tone(440, 0.5, 16000), 16000, "FLAC", "PCM_16")
    wav = encode(tone(440, 0.5, 16000), 16000, "WAV", "PCM_16")
    rng = np.random.default_rng(1)
    expect_error("unreadable", audio.decode, flac[:20])  # truncated inside the header
    expect_error("unreadable", audio.decode, flac[:4] + rng.bytes(3000))
    expect_error("unreadable", audio.decode, wav[:12] + rng.bytes(3000))
    expect_error("unreadable", audio.decode, b"RIFF")


def test_offset_in_unseekable_codec_skips_by_decoding():
    data = encode(tone(440, 2.0, 8000), 8000, "WAV", "GSM610")  # libsndfile cannot seek GSM 6.10
    full, _ = audio.decode(data)
    part, _ = audio.decode(data, offset_s=0.5, duration_s=1.0)
    np.testing.assert_array_equal(part, full[:, 4000:12000])


def test_split_of_mono_file_is_channel_zero(tmp_path):
    path = tmp_path / "mono.flac"
    sf.write(path, tone(440, 0.5, 16000), 16000)
    [(c, y)] = audio.load({"audio_uri": str(path)}, storage_options={}, channels="split")
    assert c == 0 and len(y) == 8000
