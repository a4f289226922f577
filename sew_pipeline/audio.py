"""Decode (soundfile/libsndfile), resample (soxr), pick channels, and stream long audio as windows.

Every failure is an `ItemError` with one of `errors.ERROR_TYPES`; how decode failures are typed:
- `empty`: zero-length input, zero frames, or an offset/duration window with no samples;
- `unsupported_format`: libsndfile recognises no format and the header is not a container it reads
  (text, random bytes, MP4/AAC...), or a WAV whose codec tag libsndfile cannot decode, or a channel
  index the file does not have;
- `unreadable`: the header names a container libsndfile reads (RIFF/WAVE, FLAC, OGG, MP3, AIFF, AU, CAF)
  but opening or reading fails: the file is truncated or corrupt;
- `non_finite`: NaN/inf samples (only float WAV/AIFF/CAF can hold them);
- `too_long`: the requested window is longer than `max_duration_s`, judged from the header before
  any sample is decoded.
Long files are read in blocks, and resampled per channel with soxr's streaming resampler, so memory
is bounded by the output (`load`) or by one window (`iter_chunks`), never by intermediate copies.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import IO, Any

import numpy as np
import soundfile as sf
import soxr

from sew_pipeline import storage
from sew_pipeline.chunking import Window, conv_frames, plan_windows
from sew_pipeline.errors import ItemError
from sew_pipeline.vad import StreamSegmenter, VadParams

BLOCK_FRAMES = 1 << 16  # input frames decoded per step (8 s at 8 kHz)
_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"FORM", b"fLaC", b"OggS", b".snd", b"caff", b"ID3", b"riff")
# WAV format tags libsndfile decodes: PCM, MS ADPCM, float, A-law, mu-law, IMA ADPCM, GSM, G.721, MP3, extensible.
_WAV_TAGS = {0x0001, 0x0002, 0x0003, 0x0006, 0x0007, 0x0011, 0x0031, 0x0040, 0x0045, 0x0055, 0xFFFE}
_FLOAT_SUBTYPES = {"FLOAT", "DOUBLE"}


def _known_container(head: bytes) -> bool:
    mpeg_sync = len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0
    return head.startswith(_MAGIC) or mpeg_sync


def _wav_codec_tag(head: bytes) -> int | None:
    """Format tag of a RIFF/WAVE 'fmt ' chunk if it lies in the first bytes."""
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        cid, size = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        if cid == b"fmt ":
            return int.from_bytes(head[pos + 8:pos + 10], "little") if pos + 10 <= len(head) else None
        pos += 8 + size + (size & 1)
    return None


def _as_file(data: bytes | bytearray | memoryview | IO[bytes]) -> IO[bytes]:
    return io.BytesIO(bytes(data)) if isinstance(data, (bytes, bytearray, memoryview)) else data


def open_sound(f: IO[bytes], uri: str | None = None) -> sf.SoundFile:
    """Open a seekable binary file with libsndfile; failures become typed ItemErrors."""
    pos = f.tell()
    head = f.read(512)
    f.seek(pos)
    if not head:
        raise ItemError("empty", "zero-length file", uri)
    try:
        return sf.SoundFile(f)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        reason = str(exc).split(": ", 1)[-1]  # drop soundfile's '<_io.BytesIO ...>' prefix
        tag = _wav_codec_tag(head)
        if tag is not None and tag not in _WAV_TAGS:
            raise ItemError("unsupported_format", f"WAV codec tag 0x{tag:04x} is not supported ({reason})", uri) from None
        if _known_container(head):
            raise ItemError("unreadable", f"corrupt or truncated audio file ({reason})", uri) from None
        raise ItemError("unsupported_format", f"not a supported audio format ({reason})", uri) from None


def _frame_range(snd: sf.SoundFile, offset_s: float | None, duration_s: float | None,
                 max_duration_s: float | None, uri: str | None) -> tuple[int, int]:
    """[start, stop) input frames for the requested window; checks empty / too_long from the header."""
    sr, frames = snd.samplerate, snd.frames
    start = int(round((offset_s or 0.0) * sr))
    stop = frames if duration_s is None else min(frames, start + int(round(duration_s * sr)))
    if frames <= 0:
        raise ItemError("empty", "no audio samples", uri)
    if stop <= start:
        raise ItemError("empty", f"window offset={offset_s}s duration={duration_s}s is outside the "
                        f"{frames / sr:.3f}s file", uri)
    seconds = (stop - start) / sr
    if max_duration_s is not None and seconds > max_duration_s:
        raise ItemError("too_long", f"{seconds:.1f}s exceeds max_duration_s={max_duration_s}", uri)
    return start, stop


def _read(snd: sf.SoundFile, n: int, uri: str | None) -> np.ndarray:
    try:
        x = snd.read(n, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise ItemError("unreadable", f"decoding failed ({exc})", uri) from None
    if not np.isfinite(x).all():
        raise ItemError("non_finite", "NaN or infinite sample values", uri)
    return x


def decode(data: bytes | IO[bytes], offset_s: float | None = None, duration_s: float | None = None, *,
           max_duration_s: float | None = None, uri: str | None = None) -> tuple[np.ndarray, int]:
    """Decode bytes or a seekable file into float32 [C, N] at the file's own rate.

    Only the [offset_s, offset_s + duration_s) window is decoded (libsndfile seeks to it).
    """
    with open_sound(_as_file(data), uri) as snd:
        start, stop = _frame_range(snd, offset_s, duration_s, max_duration_s, uri)
        _seek(snd, start, uri)
        x = _read(snd, stop - start, uri)
        if len(x) == 0:
            raise ItemError("empty", "no audio samples could be decoded", uri)
        return np.ascontiguousarray(x.T), snd.samplerate


def _seek(snd: sf.SoundFile, frame: int, uri: str | None) -> None:
    try:
        if snd.seekable():
            snd.seek(frame)
            return
        # Some codecs (GSM 6.10) cannot seek or even tell(); callers only seek right after opening,
        # so skip forward from frame 0 by decoding.
        pos = 0
        while pos < frame:  # skip by decoding, block by block
            got = len(snd.read(min(BLOCK_FRAMES, frame - pos), dtype="float32", always_2d=True))
            if got == 0:
                break
            pos += got
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise ItemError("unreadable", f"cannot seek to frame {frame} ({exc})", uri) from None


def resampled_length(num_samples: int, sr_in: int, sr_out: int) -> int:
    """Output length soxr produces for a whole signal (streaming output is cut/padded to this)."""
    return int(round(num_samples * sr_out / sr_in))


def resample(x: np.ndarray, sr_in: int, sr_out: int = 16000) -> np.ndarray:
    """Resample [C, N] or [N] float audio with soxr (HQ); returns float32 of the same rank."""
    x = np.asarray(x, dtype=np.float32)
    if sr_in == sr_out:
        return x
    y = soxr.resample(x.T, sr_in, sr_out, quality="HQ")
    return np.ascontiguousarray(y.T, dtype=np.float32)


def _channel_ids(num_channels: int, mode: str | int, uri: str | None = None) -> list[int]:
    if isinstance(mode, str) and mode.lstrip("-").isdigit():
        mode = int(mode)
    if mode == "mix":
        return [-1]
    if mode == "split":
        return list(range(num_channels))
    if isinstance(mode, int) and not isinstance(mode, bool):
        if not 0 <= mode < num_channels:
            raise ItemError("unsupported_format", f"channel {mode} requested but the file has "
                            f"{num_channels} channel(s)", uri)
        return [mode]
    raise ValueError(f"channels must be 'mix', 'split' or a channel index, got {mode!r}")


def _pick(x: np.ndarray, ch: int) -> np.ndarray:
    """x is [N, C] (libsndfile layout); -1 is the mean of all channels."""
    return x.mean(axis=1, dtype=np.float32) if ch == -1 else np.ascontiguousarray(x[:, ch])


def select_channels(x: np.ndarray, mode: str | int) -> list[tuple[int, np.ndarray]]:
    """[C, N] -> [(channel, y[N])]: 'mix' -> [(-1, mean)], 'split' -> one per channel, int -> that one."""
    x = np.atleast_2d(x)
    return [(c, _pick(x.T, c)) for c in _channel_ids(x.shape[0], mode)]


def _resampled_blocks(snd: sf.SoundFile, start: int, stop: int, chans: list[int], sr_out: int,
                      uri: str | None) -> Iterator[list[np.ndarray]]:
    """Per-channel float32 blocks at sr_out for input frames [start, stop); their total length per
    channel is exactly resampled_length(stop - start, ...)."""
    sr_in = snd.samplerate
    target = resampled_length(stop - start, sr_in, sr_out)
    streams = [soxr.ResampleStream(sr_in, sr_out, 1, dtype="float32", quality="HQ") if sr_in != sr_out
               else None for _ in chans]
    _seek(snd, start, uri)
    left, done = stop - start, 0

    def emit(outs: list[np.ndarray]) -> list[np.ndarray]:
        nonlocal done
        outs = [o[:target - done] for o in outs]
        done += len(outs[0])
        return outs

    while left > 0:
        x = _read(snd, min(BLOCK_FRAMES, left), uri)
        if len(x) == 0:
            break  # shorter than the header said (e.g. truncated): pad below
        left -= len(x)
        outs = [_pick(x, c) if s is None else s.resample_chunk(_pick(x, c)) for c, s in zip(chans, streams)]
        if len(outs[0]):
            yield emit(outs)
    if streams[0] is not None:
        empty = np.zeros(0, np.float32)
        yield emit([s.resample_chunk(empty, last=True) for s in streams])
    if done == 0:
        raise ItemError("empty", "no audio samples could be decoded", uri)
    if done < target:
        yield emit([np.zeros(target - done, np.float32) for _ in chans])


@dataclass
class _Source:
    snd: sf.SoundFile
    start: int
    stop: int
    chans: list[int]


def _row_source(f: IO[bytes], row: Mapping[str, Any], channels: str | int,
                max_duration_s: float | None, uri: str | None) -> _Source:
    snd = open_sound(f, uri)
    try:
        start, stop = _frame_range(snd, row.get("offset_s"), row.get("duration_s"), max_duration_s, uri)
        return _Source(snd, start, stop, _channel_ids(snd.channels, channels, uri))
    except BaseException:
        snd.close()
        raise


def load(row: Mapping[str, Any], *, storage_options: Mapping[str, Any] | None = None,
         sample_rate: int = 16000, channels: str | int = "mix",
         max_duration_s: float | None = None) -> list[tuple[int, np.ndarray]]:
    """Read a manifest row's audio (audio_uri, optional offset_s/duration_s) as float32 at
    `sample_rate`, one (channel, samples) entry per selected channel; raises ItemError."""
    uri = row.get("audio_uri")
    with storage.open_input(uri, storage_options) as f:
        src = _row_source(f, row, channels, max_duration_s, uri)
        with src.snd:
            n = resampled_length(src.stop - src.start, src.snd.samplerate, sample_rate)
            out = [np.empty(n, np.float32) for _ in src.chans]
            pos = 0
            for blocks in _resampled_blocks(src.snd, src.start, src.stop, src.chans, sample_rate, uri):
                for o, b in zip(out, blocks):
                    o[pos:pos + len(b)] = b
                pos += len(blocks[0])
    return list(zip(src.chans, out))


@dataclass
class Chunk:
    """One window (or speech segment) of one channel, float32 at the target rate; times are in the item's
    timeline (add the row's offset_s for the file's timeline). Segments: `num_windows` is None until the
    channel's last one, which carries the count; a channel with no speech yields one chunk with
    num_windows 0 and no audio."""
    channel: int
    window: Window
    num_windows: int | None
    audio: np.ndarray
    item_num_samples: int
    channels: tuple[int, ...] = (-1,)  # every channel this item yields, in order (known before the first chunk)


def _prescan_finite(src: _Source, uri: str | None) -> None:
    # Float files can hold NaN/inf anywhere: check before yielding any window, so a failing item
    # produces no partial output. Integer PCM and codecs cannot, so they skip this pass.
    if src.snd.subtype not in _FLOAT_SUBTYPES:
        return
    _seek(src.snd, src.start, uri)
    left = src.stop - src.start
    while left > 0:
        x = _read(src.snd, min(BLOCK_FRAMES, left), uri)
        if len(x) == 0:
            break
        left -= len(x)


def iter_chunks(row: Mapping[str, Any], *, window_s: float, overlap_s: float,
                storage_options: Mapping[str, Any] | None = None, sample_rate: int = 16000,
                channels: str | int = "mix", max_duration_s: float | None = None, stride: int = 320,
                align: int = 640, frames_for: Callable[[int], int] | None = None) -> Iterator[Chunk]:
    """Stream a row's audio as `plan_windows` windows (for every selected channel, window by window)
    while holding only about one window plus one block in memory. Raises ItemError; errors found
    only mid-stream (a file corrupt past its header) can come after some chunks were yielded, so a
    consumer should discard an item's chunks when it raises."""
    uri = row.get("audio_uri")
    with storage.open_input(uri, storage_options) as f:
        src = _row_source(f, row, channels, max_duration_s, uri)
        with src.snd:
            _prescan_finite(src, uri)
            total = resampled_length(src.stop - src.start, src.snd.samplerate, sample_rate)
            windows = plan_windows(total, window_s, overlap_s, sr=sample_rate, stride=stride,
                                   align=align, frames_for=frames_for)
            bufs = [np.zeros(0, np.float32) for _ in src.chans]
            chans = tuple(int(c) for c in src.chans)
            base, wi = 0, 0  # base: item sample index of bufs[*][0]
            for blocks in _resampled_blocks(src.snd, src.start, src.stop, src.chans, sample_rate, uri):
                bufs = [np.concatenate([b, o]) for b, o in zip(bufs, blocks)]
                while wi < len(windows) and windows[wi].end <= base + len(bufs[0]):
                    w = windows[wi]
                    for c, b in zip(src.chans, bufs):
                        yield Chunk(c, w, len(windows), b[w.start - base:w.end - base].copy(), total, chans)
                    wi += 1
                    nxt = windows[wi].start if wi < len(windows) else base + len(bufs[0])
                    bufs = [b[nxt - base:] for b in bufs]
                    base = nxt


def iter_segments(row: Mapping[str, Any], *, params: VadParams, storage_options: Mapping[str, Any] | None = None,
                  sample_rate: int = 16000, channels: str | int = "split", max_duration_s: float | None = None,
                  stride: int = 320, align: int = 640, frames_for: Callable[[int], int] | None = None
                  ) -> Iterator[Chunk]:
    """Stream a row's audio as speech segments per channel (sew_pipeline.vad), each a whole model input whose
    frames are all kept. Each channel's latest segment is held back until the next one or the end of the file,
    so its last one can carry the count. Memory: per channel one open segment (or the VAD's warm-up) plus one
    block. Raises ItemError, possibly after some segments (as iter_chunks)."""
    uri = row.get("audio_uri")
    frames_for = frames_for or conv_frames
    with storage.open_input(uri, storage_options) as f:
        src = _row_source(f, row, channels, max_duration_s, uri)
        with src.snd:
            _prescan_finite(src, uri)
            total = resampled_length(src.stop - src.start, src.snd.samplerate, sample_rate)
            chans = tuple(int(c) for c in src.chans)
            vads = [StreamSegmenter(params, sample_rate, stride, align) for _ in chans]
            held: list[Chunk | None] = [None] * len(chans)
            counts = [0] * len(chans)

            def chunk(k: int, seg, num: int | None) -> Chunk:
                frame = seg.start // stride
                w = Window(counts[k], seg.start, seg.end, frame, frame + frames_for(seg.end - seg.start), stride)
                counts[k] += 1
                return Chunk(chans[k], w, num, seg.audio, total, chans)

            def speech() -> Iterator[tuple[int, Any]]:  # (channel position, segment), as the file decodes
                for blocks in _resampled_blocks(src.snd, src.start, src.stop, src.chans, sample_rate, uri):
                    for k, (vad, block) in enumerate(zip(vads, blocks)):
                        yield from ((k, seg) for seg in vad.push(block))
                for k, vad in enumerate(vads):
                    yield from ((k, seg) for seg in vad.finish())

            for k, seg in speech():
                if held[k] is not None:
                    yield held[k]
                held[k] = chunk(k, seg, None)
            for k, last in enumerate(held):
                if last is None:  # no speech on this channel: one row says so
                    yield Chunk(chans[k], Window(0, 0, 0, 0, 0, stride), 0, np.zeros(0, np.float32), total, chans)
                else:
                    yield replace(last, num_windows=counts[k])
