"""Synthetic two-channel calls with ground-truth turns (groundwork for call segmentation, issue 15).

A call is built from utterances with known text, placed as alternating turns on the two channels of an
8 kHz stereo line: pauses between turns, some turns starting before the other party has finished (overlap),
line noise on both channels, and optionally an attenuated, delayed echo of each party on the other channel.
`Call.ulaw_wav()` gives the file as call-center archives hold it (WAV, µ-law, 8 kHz, stereo).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SR = 8000
DEMO_CORPUS = Path(__file__).resolve().parents[2] / "sew_pipeline/assets/demo_corpus"


@dataclass(frozen=True)
class Turn:
    channel: int
    start_s: float
    end_s: float
    text: str


@dataclass
class Call:
    audio: np.ndarray                 # [samples, 2] float32 in [-1, 1], SR Hz
    turns: list[Turn] = field(default_factory=list)
    sample_rate: int = SR

    @property
    def duration_s(self) -> float:
        return self.audio.shape[0] / self.sample_rate

    def speech_fraction(self, channel: int) -> float:
        return sum(t.end_s - t.start_s for t in self.turns if t.channel == channel) / self.duration_s

    def overlaps(self) -> list[tuple[Turn, Turn]]:
        """Pairs of turns on different channels that share time."""
        return [(a, b) for i, a in enumerate(self.turns) for b in self.turns[i + 1:]
                if a.channel != b.channel and b.start_s < a.end_s and a.start_s < b.end_s]

    def ulaw_wav(self) -> bytes:
        buf = io.BytesIO()
        sf.write(buf, self.audio, self.sample_rate, format="WAV", subtype="ULAW")
        return buf.getvalue()


def silent_call(duration_s: float, seed: int = 0, noise_dbfs: float = -50.0) -> Call:
    """A call where nobody speaks: line noise on both channels."""
    rng = np.random.default_rng(seed)
    noise = (10 ** (noise_dbfs / 20)) * rng.standard_normal((int(duration_s * SR), 2))
    return Call(noise.astype(np.float32), [])


def demo_utterances() -> list[tuple[np.ndarray, str]]:
    """The shipped demo corpus (synthetic voices, texts known) at SR: what the demo model can transcribe."""
    out = []
    for line in (DEMO_CORPUS / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        x, sr = sf.read(DEMO_CORPUS / row["audio_filepath"], dtype="float32")
        out.append((soxr.resample(x, sr, SR).astype(np.float32), row["text"]))
    return out


def make_call(utterances: list[tuple[np.ndarray, str]], duration_s: float, seed: int = 0,
              pause_s: tuple[float, float] = (0.3, 1.2), overlap_p: float = 0.15, noise_dbfs: float = -50.0,
              echo_db: float | None = -24.0, echo_delay_s: float = 0.12, silent: tuple[int, ...] = ()) -> Call:
    """Alternating turns of `utterances` (at SR, cycled in a seeded random order) until `duration_s`.
    Each turn starts a random pause after the previous one ends, or (with probability `overlap_p`) up to
    0.6 s before it ends. Speech is scaled to a speaking level (-20 dBFS RMS) before the line adds noise
    (`noise_dbfs` RMS, both channels) and echo (`echo_db` relative to the speaker, None = no echo). Channels in
    `silent` never speak (their turns stay silent: the line still carries noise and the other side's echo)."""
    rng = np.random.default_rng(seed)
    n = int(duration_s * SR)
    speech = np.zeros((n, 2), np.float32)
    turns: list[Turn] = []
    order = rng.permutation(len(utterances))
    t, channel, k = float(rng.uniform(0.2, 1.0)), int(rng.integers(2)), 0
    while True:
        x, text = utterances[order[k % len(order)]]
        start = int(t * SR)
        if start + len(x) > n:
            break
        level = 0.1 / max(float(np.sqrt(np.mean(x ** 2))), 1e-6)  # -20 dBFS RMS
        if channel not in silent:
            speech[start:start + len(x), channel] += x * level
            turns.append(Turn(channel, round(start / SR, 4), round((start + len(x)) / SR, 4), text))
        end = (start + len(x)) / SR
        t = end - rng.uniform(0.2, 0.6) if rng.random() < overlap_p else end + rng.uniform(*pause_s)
        channel, k = 1 - channel, k + 1
    line = speech.copy()
    if echo_db is not None:
        d, gain = int(echo_delay_s * SR), 10 ** (echo_db / 20)
        line[d:, 0] += gain * speech[:-d, 1]
        line[d:, 1] += gain * speech[:-d, 0]
    line += (10 ** (noise_dbfs / 20)) * rng.standard_normal(line.shape).astype(np.float32)
    return Call(np.clip(line, -1.0, 1.0), sorted(turns, key=lambda tr: tr.start_s))


# ------------------------------------------------------------------ scoring against a call's truth
def truth_frames(call: Call, channel: int, frame_s: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: this channel speaks; only the other channel does (what this line carries is their echo)."""
    n = int(call.duration_s / frame_s)
    own, other = np.zeros(n, bool), np.zeros(n, bool)
    for t in call.turns:
        (own if t.channel == channel else other)[int(t.start_s / frame_s):int(t.end_s / frame_s)] = True
    return own, other & ~own


def span_frames(spans: list[tuple[float, float]], n: int, frame_s: float = 0.01) -> np.ndarray:
    """(start_s, end_s) spans as a per-frame mask of n frames."""
    out = np.zeros(n, bool)
    for s, e in spans:
        out[int(s / frame_s):int(e / frame_s)] = True
    return out


def channel_reference(call: Call, channel: int) -> str:
    return " ".join(t.text for t in call.turns if t.channel == channel)


def channel_hypothesis(rows: list[dict], channel: int) -> str:
    """One channel's transcript from a job's rows: its item rows (windows) or segment rows (vad) in time order."""
    mine = [r for r in rows if r["channel"] == channel and r.get("level") in ("item", "segment") and r.get("text")]
    return " ".join(r["text"] for r in sorted(mine, key=lambda r: r["start_s"]))


def turn_report(call: Call, turns: list[dict]) -> dict:
    """How a conversation row's turns match the call's: the channel order (exact, and as a similarity ratio) and,
    over turns matched in that order, the mean and worst distance of starts and ends (s)."""
    from difflib import SequenceMatcher
    got, want = [t["channel"] for t in turns], [t.channel for t in call.turns]
    pairs = [(turns[i + k], call.turns[j + k]) for i, j, n in SequenceMatcher(None, got, want, autojunk=False)
             .get_matching_blocks() for k in range(n)]
    starts = [abs(a["start_s"] - b.start_s) for a, b in pairs]
    ends = [abs(a["end_s"] - b.end_s) for a, b in pairs]
    return {"turns": len(got), "true_turns": len(want), "order_matches": got == want,
            "order_similarity": round(SequenceMatcher(None, got, want, autojunk=False).ratio(), 4),
            "start_error_s": round(float(np.mean(starts)), 3) if pairs else None,
            "end_error_s": round(float(np.mean(ends)), 3) if pairs else None,
            "max_boundary_error_s": round(float(max(starts + ends)), 3) if pairs else None}
