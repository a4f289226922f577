"""Shared training helpers: data sets on the synthesized arrays, augmentation, schedule, checkpoints, metrics."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import soxr
import torch

from sew_pipeline.models.processor import normalize

WORK = Path(__file__).resolve().parent / "work"
SR = 16000
# The LibriSpeech / asapp/sew-tiny character vocabulary, in that checkpoint's order.
VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "E": 5, "T": 6, "A": 7, "O": 8, "N": 9, "I": 10,
         "H": 11, "S": 12, "R": 13, "D": 14, "L": 15, "U": 16, "M": 17, "W": 18, "C": 19, "F": 20, "G": 21, "Y": 22,
         "P": 23, "B": 24, "V": 25, "K": 26, "'": 27, "X": 28, "J": 29, "Q": 30, "Z": 31}
ID2CHAR = {i: c for c, i in VOCAB.items()}


class UttSet:
    """One synthesized set: int16 samples in <name>.bin (memory-mapped) + rows of <name>.jsonl."""

    def __init__(self, name: str, work: Path = WORK):
        self.rows = [json.loads(line) for line in (work / f"{name}.jsonl").read_text().splitlines()]
        self.data = np.memmap(work / f"{name}.bin", dtype=np.int16, mode="r")

    def __len__(self) -> int:
        return len(self.rows)

    def audio(self, i: int) -> np.ndarray:
        r = self.rows[i]
        return self.data[r["offset"]: r["offset"] + r["num_samples"]].astype(np.float32) / 32768.0


def encode_text(text: str) -> list[int]:
    return [VOCAB["|"] if ch == " " else VOCAB.get(ch, VOCAB["<unk>"]) for ch in text.upper().strip()]


def greedy_decode(ids: np.ndarray) -> str:
    """Argmax ids -> text: collapse repeats, drop blanks, '|' -> space (the tokenizer's rule, kept standalone)."""
    out, prev = [], -1
    for i in ids.tolist():
        if i != prev and i != VOCAB["<pad>"]:
            out.append(ID2CHAR.get(i, ""))
        prev = i
    text = "".join(c if c != "|" else " " for c in out if c not in ("<s>", "</s>", "<unk>"))
    return " ".join(text.split())


def ulaw(x: np.ndarray, mu: float = 255.0) -> np.ndarray:
    """8-bit mu-law quantise and expand (G.711-like), as a telephone channel would."""
    y = np.sign(x) * np.log1p(mu * np.minimum(np.abs(x), 1.0)) / np.log1p(mu)
    y = np.round((y + 1) * 127.5) / 127.5 - 1
    return (np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu).astype(np.float32)


def augment(y: np.ndarray, rng: np.random.Generator, noise: np.ndarray | None, p_noise: float = 0.4,
            snr_db: tuple[float, float] = (5.0, 35.0), p_tel: float = 0.2) -> np.ndarray:
    """Gain, additive background noise at a random SNR, 8 kHz telephone band (+ mu-law) round trip."""
    y = y * np.float32(10 ** rng.uniform(-1.5, 0.3))  # why: level changes before clipping / mu-law matter
    if noise is not None and rng.random() < p_noise and y.size:
        clip = noise[rng.integers(len(noise))]
        start = rng.integers(0, max(1, clip.size - y.size))
        n = np.resize(clip[start: start + y.size], y.size)
        p_sig, p_n = float(np.mean(y ** 2)) + 1e-10, float(np.mean(n ** 2)) + 1e-10
        y = y + n * np.float32(math.sqrt(p_sig / p_n / 10 ** (rng.uniform(*snr_db) / 10)))
    if rng.random() < p_tel:
        z = soxr.resample(y, SR, 8000)
        if rng.random() < 0.6:
            z = ulaw(np.clip(z, -1, 1))
        y = soxr.resample(z, 8000, SR)[: y.size]
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def reverberate(y: np.ndarray, rng: np.random.Generator, rt60: tuple[float, float] = (0.1, 0.7)) -> np.ndarray:
    """A synthetic room: direct path + exponentially decaying noise tail (random RT60) and a random tilt EQ.
    Synthesizers speak dry, into no microphone; real clips (phones, laptops, rooms) never are."""
    t60 = rng.uniform(*rt60)
    n = int(t60 * SR)
    rir = rng.standard_normal(n).astype(np.float32) * np.exp(-6.9 * np.arange(n) / n).astype(np.float32)
    rir *= np.float32(10 ** (rng.uniform(-12, -3) / 20) / (np.sqrt(np.sum(rir ** 2)) + 1e-9))  # reverb level
    rir[0] = 1.0
    size = 1 << int(np.ceil(np.log2(y.size + n)))
    spec = np.fft.rfft(y, size) * np.fft.rfft(rir, size)
    f = np.fft.rfftfreq(size, 1 / SR)
    spec *= (np.maximum(f, 50.0) / 1000.0) ** rng.uniform(-0.5, 0.5)  # tilt: dull to bright microphones
    out = np.fft.irfft(spec, size)[: y.size].astype(np.float32)
    return out * np.float32((np.abs(y).max() + 1e-9) / (np.abs(out).max() + 1e-9))


def perturb_speed(y: np.ndarray, rng: np.random.Generator, lo: float = 0.85, hi: float = 1.2) -> np.ndarray:
    """Resample-based speed perturbation: shifts pitch *and* formants (a crude vocal-tract-length change),
    widening the narrow formant range of espeak-ng voices towards real talkers."""
    f = float(rng.uniform(lo, hi))
    return soxr.resample(y, SR, SR / f).astype(np.float32)


def collate(waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-utterance normalisation (same function the shipped FeatureExtractor uses), zero padding, mask."""
    L = max(w.size for w in waves)
    x = np.zeros((len(waves), L), np.float32)
    m = np.zeros((len(waves), L), np.int64)
    for i, w in enumerate(waves):
        x[i, : w.size] = normalize(w)
        m[i, : w.size] = 1
    return torch.from_numpy(x), torch.from_numpy(m)


def lr_at(step: int, peak: float, warmup: int, total: int, floor: float = 0.05) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def save_state(path: Path, **state: Any) -> None:
    """Atomic single-file checkpoint (tmp + rename): killing the job at any moment leaves a loadable file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def save_compact_state(path: Path, state: dict[str, Any]) -> None:
    """``state`` with its optimizer moments in bf16 (weights stay fp32): the form committed to git between
    sessions (a 12-layer state is 80 MB instead of 120; GitHub refuses files over 100 MB). AdamW's
    load_state_dict casts the moments back to the parameters' dtype; bf16 keeps fp32's range, so the tiny
    second moments do not underflow as they would in fp16."""
    opt = dict(state["opt"])
    opt["state"] = {i: {k: v.to(torch.bfloat16) if k != "step" and v.is_floating_point() else v
                        for k, v in s.items()} for i, s in opt["state"].items()}
    save_state(path, **{**state, "opt": opt})


def load_state(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Meter:
    """Running averages + throughput for periodic log lines."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.t0, self.n, self.loss, self.audio_s, self.gnorm = time.time(), 0, 0.0, 0.0, 0.0

    def add(self, loss: float, audio_s: float, gnorm: float) -> None:
        self.n += 1
        self.loss += loss
        self.audio_s += audio_s
        self.gnorm += gnorm

    def line(self) -> str:
        dt = max(1e-6, time.time() - self.t0)
        n = max(1, self.n)
        return f"loss {self.loss / n:.4f} gnorm {self.gnorm / n:.2f} {self.audio_s / dt:.0f} audio-s/s"


def log(msg: str, logfile: Path | None = None) -> None:
    line = f"{time.strftime('%H:%M:%S')} {msg}"
    print(line, flush=True)
    if logfile is not None:
        with open(logfile, "a") as f:
            f.write(line + "\n")
