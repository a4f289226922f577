"""Speech segments of one channel, found while the audio streams past: an energy detector with hysteresis.

Why energy and not a model VAD: benchmarks/vad_choice.py on a generated 10-minute call with the other party's
echo at -24 dB (README, "Choosing the VAD"): this detector got 94.9 % of 10 ms frames right and called 0.7 % of
echo-only frames speech, at ~7,000 audio-s/s per core; silero-vad 6.2.3 64.1 % / 79.9 % at 82 audio-s/s and
webrtcvad (mode 3) 90.4 % / 14.5 %: both hear a far-end echo as speech, which on a call channel is exactly what
must not be sent to the model.

Rule: a 20 ms frame is speech when its energy is `threshold_db` above the channel's noise floor (the 10th
percentile of its frame energies up to a second past the frame, or its first WARMUP_S; so the segments do not
depend on how the audio is cut into blocks, and a channel must be silent at least ~10 % of the time, as call
channels are) and above `min_level_dbfs`. Speech frames less than `min_silence_s` apart join one segment;
segments with less than `min_speech_s` of speech frames are dropped; each keeps `padding_s` of audio either side (never reaching
into the previous segment); a segment reaching `max_segment_s` is cut at its quietest frame in the second half
of that length. Memory: the open segment plus `padding_s`, or the first `WARMUP_S` while the floor is first
estimated; never the whole channel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WARMUP_S = 10.0            # audio seen before the first decision (the first noise-floor estimate)
STEP_S = 1.0               # frames are decided a second at a time, the floor from the frames up to then
FLOOR_PERCENTILE = 10.0
_BINS = np.arange(-130.0, 10.5, 0.5)  # frame-energy histogram (dBFS) for the running percentile


@dataclass(frozen=True)
class VadParams:
    """The detector's settings (config.SegmentationConfig holds them for a job)."""
    threshold_db: float = 15.0
    min_level_dbfs: float = -60.0
    min_speech_s: float = 0.2
    min_silence_s: float = 0.3
    padding_s: float = 0.2
    max_segment_s: float = 20.0


@dataclass(frozen=True)
class Segment:
    """Samples [start, end) of the channel (starts on multiples of `align`) and their audio."""
    start: int
    end: int
    audio: np.ndarray


class StreamSegmenter:
    """push(samples) → segments complete so far; finish() → the rest. Samples at `sr`, any block sizes."""

    def __init__(self, params: VadParams = VadParams(), sr: int = 16000, frame: int = 320, align: int = 640):
        self.p, self.frame, self.align = params, frame, align
        fs = frame / sr
        self.silence_frames = max(1, round(params.min_silence_s / fs))
        self.min_frames = max(1, round(params.min_speech_s / fs))
        self.pad = int(round(params.padding_s * sr))
        self.max_len = int(params.max_segment_s * sr) // align * align
        self.warmup, self.step = int(WARMUP_S / fs), max(1, int(STEP_S / fs))
        self.counted = 0                                          # frames in the floor histogram
        self.buf, self.base = np.zeros(0, np.float32), 0          # audio from sample `base` on
        self.db, self.db_base = np.zeros(0), 0                    # frame energies from frame `db_base` on
        self.hist = np.zeros(len(_BINS) + 1, np.int64)
        self.frames = self.decided = 0
        self.open: int | None = None   # first speech frame of the open segment
        self.last_on = 0               # last speech frame of the open segment
        self.seg_start = 0             # start sample of the open segment (padded onset or a cut)
        self.cut_start = False         # the open segment continues one cut at max_segment_s
        self.on_frames = 0             # speech frames in the open segment
        self.prev_end = 0
        self.ready: list[tuple[int, int]] = []  # closed (start, end) waiting for audio up to end

    # ------------------------------------------------------------------ input
    def push(self, x: np.ndarray) -> list[Segment]:
        self.buf = np.concatenate([self.buf, np.asarray(x, np.float32)])
        n = (self.base + len(self.buf)) // self.frame - self.frames
        if n > 0:
            lo = self.frames * self.frame - self.base
            block = self.buf[lo:lo + n * self.frame].reshape(n, self.frame).astype(np.float64)
            self.db = np.concatenate([self.db, 10 * np.log10(np.mean(block ** 2, axis=1) + 1e-13)])
            self.frames += n
        while max(self.warmup, self.decided + self.step) <= self.frames:
            self._decide(self.decided + self.step, max(self.warmup, self.decided + self.step))
        return self._emit(final=False)

    def finish(self) -> list[Segment]:
        self._decide(self.frames, self.frames)
        if self.open is not None:
            self._close()
        return self._emit(final=True)

    # ------------------------------------------------------------------ decisions
    def _floor(self, upto: int) -> float:
        """The noise floor from the energies of frames [0, upto)."""
        new = self.db[self.counted - self.db_base:upto - self.db_base]
        self.hist += np.bincount(np.searchsorted(_BINS, new), minlength=len(self.hist))
        self.counted = max(self.counted, upto)
        cum = np.cumsum(self.hist)
        k = int(np.searchsorted(cum, cum[-1] * FLOOR_PERCENTILE / 100.0))
        return float(_BINS[min(k, len(_BINS) - 1)])

    def _decide(self, upto: int, floor_upto: int) -> None:
        """Frames [decided, upto) become speech or not, with the floor of frames [0, floor_upto)."""
        if upto <= self.decided:
            return
        threshold = max(self._floor(floor_upto) + self.p.threshold_db, self.p.min_level_dbfs)
        on = self.db[self.decided - self.db_base:upto - self.db_base] > threshold
        for i, speech in enumerate(on.tolist(), start=self.decided):
            if speech:
                if self.open is None:
                    self._start(i)
                self.last_on, self.on_frames = i, self.on_frames + 1
            elif self.open is not None and i - self.last_on >= self.silence_frames:
                self._close()
            if self.open is not None and (i + 1) * self.frame + self.pad - self.seg_start >= self.max_len:
                self._cut(i)
        self.decided = upto
        keep = min(self.open if self.open is not None else self.decided, self.counted)
        self.db, self.db_base = self.db[keep - self.db_base:], keep

    def _start(self, i: int) -> None:
        start = max(0, i * self.frame - self.pad) // self.align * self.align
        self.open, self.seg_start, self.cut_start = i, max(start, self._aligned_up(self.prev_end)), False
        self.on_frames = 0

    def _close(self) -> None:
        # speech frames, not the span: a few loud syllables of the far end's echo a pause apart are no segment
        if self.cut_start or self.on_frames >= self.min_frames:
            end = self._aligned_up((self.last_on + 1) * self.frame + self.pad)
            self.ready.append((self.seg_start, end))
            self.prev_end = end
        self.open = None

    def _cut(self, i: int) -> None:
        """The open segment is as long as allowed: end it at its quietest frame past half that length."""
        # candidate cuts: aligned boundaries, scored by the louder of the two frames that meet there
        per = self.align // self.frame
        lo = -(-(self.seg_start + self.max_len // 2) // self.align) * per
        bounds = np.arange(lo, i + 1, per)
        cut = 0
        if len(bounds):
            db = self.db[bounds - self.db_base]
            db = np.maximum(db, self.db[bounds - 1 - self.db_base])
            cut = int(bounds[int(np.argmin(db))]) * self.frame
        if cut <= self.seg_start:
            cut = self.seg_start + self.max_len - self.align
        self.ready.append((self.seg_start, cut))
        self.prev_end = self.seg_start = cut
        self.open, self.cut_start = max(self.open, cut // self.frame), True

    def _aligned_up(self, sample: int) -> int:
        return -(-sample // self.align) * self.align

    # ------------------------------------------------------------------ output
    def _emit(self, final: bool) -> list[Segment]:
        have = self.base + len(self.buf)
        out = []
        while self.ready and (final or self.ready[0][1] <= have):
            start, end = self.ready.pop(0)
            end = min(end, have)
            if end > start:
                out.append(Segment(start, end, self.buf[start - self.base:end - self.base].copy()))
        # keep what a later segment may still need: its padding before the undecided frames, or the open one
        keep = min(self.decided * self.frame - self.pad - self.align, self.frames * self.frame)
        if self.open is not None:
            keep = min(keep, self.seg_start)
        if self.ready:
            keep = min(keep, self.ready[0][0])
        keep = max(keep, self.base)
        self.buf, self.base = self.buf[keep - self.base:], keep
        return out


def segments(x: np.ndarray, sr: int = 16000, params: VadParams = VadParams(), block: int = 1 << 16,
             frame: int = 320, align: int = 640) -> list[Segment]:
    """All segments of a whole channel, fed through the streaming segmenter in blocks (tests, benchmarks)."""
    seg = StreamSegmenter(params, sr, frame, align)
    out = []
    for i in range(0, len(x), block):
        out.extend(seg.push(x[i:i + block]))
    return out + seg.finish()
