"""Offline synthetic training data with espeak-ng (only `make train-demo` needs espeak-ng).

Layout under training/work/ (git-ignored):
  <set>.bin        int16 16 kHz samples of every utterance of the set, concatenated
  <set>.jsonl      one row per utterance: id, offset, num_samples, text, voice, speed, pitch, label
  heldout/<set>/*.flac + <set>_files.jsonl   held-out sets also as FLAC (evaluation through the pipeline)
  noise/*.npy      generated background noise / silence clips for the _silence_ class and augmentation

Held-out sets never share a voice (accent+variant pair) nor a sentence / unknown word with training.
Run: python -m training.synth [--workers 2]
"""
from __future__ import annotations

import argparse
import io
import json
import random
import subprocess
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import soundfile as sf
import soxr

from training.grammar import Grammar, vocabulary

WORK = Path(__file__).resolve().parent / "work"
SR = 16000
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc"]
VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
            "klatt3", "klatt4", "steph", "john", "linda", "benjamin", "travis", "Andy"]
KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
KWS_LABELS = KEYWORDS + ["_silence_", "_unknown_"]
# Words that sound (almost) like a keyword must not be "_unknown_" examples.
KWS_EXCLUDE = set(KEYWORDS) | {"know", "now", "of", "yet", "yeah", "toe", "write", "rite", "wright", "upper",
                               "going", "gone", "stopped", "lift", "downs", "own", "one", "won", "ups", "gun",
                               "nose", "o", "oh", "owe", "don't", "doubt", "town", "gown"}
SPEECH_COMMANDS_UNKNOWN = ["bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin",
                           "nine", "seven", "sheila", "six", "three", "tree", "two", "wow", "zero", "learn",
                           "follow", "forward", "backward", "visual"]


def all_voices() -> list[str]:
    return [f"{a}+{v}" if v else a for a in ACCENTS for v in VARIANTS]


def split_voices(seed: int = 1234) -> tuple[list[str], list[str]]:
    """Held-out voices: 2 accent+variant pairs per accent, each variant used at most once, so every accent and
    every variant is still seen in training with other partners (an unseen *combination* = unseen voice)."""
    r = random.Random(seed)
    variants = VARIANTS[1:]
    r.shuffle(variants)
    held = set()
    for i, a in enumerate(ACCENTS):
        for v in variants[2 * i: 2 * i + 2]:
            held.add(f"{a}+{v}")
    voices = all_voices()
    return [v for v in voices if v not in held], sorted(held)


def render(job: tuple) -> tuple[str, np.ndarray]:
    """espeak-ng -> 16 kHz int16. job = (id, text, voice, speed, pitch, trim)."""
    uid, text, voice, speed, pitch, trim = job
    out = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         capture_output=True, check=True).stdout
    x, sr = sf.read(io.BytesIO(out), dtype="float32")
    y = soxr.resample(x, sr, SR)
    return uid, to_int16(trim_word(y) if trim else y)


def trim_word(y: np.ndarray) -> np.ndarray:
    """Single words: cut the synthesizer's lead-in / tail silence so the word can be placed inside 1 s."""
    idx = np.flatnonzero(np.abs(y) > 0.02 * (np.abs(y).max() + 1e-9))
    return y[max(0, idx[0] - 800): idx[-1] + 1600] if idx.size else y


def to_int16(y: np.ndarray) -> np.ndarray:
    return (np.clip(y, -1, 1) * 32767).astype(np.int16)


def write_set(name: str, jobs: list[tuple], meta: list[dict], pool: Pool, flac: bool = False,
              render_fn: Callable[[tuple], tuple[str, np.ndarray]] = render) -> None:
    write_items(name, lambda: pool.imap(render_fn, jobs, chunksize=16), meta, flac)


def write_items(name: str, items: Callable[[], Iterable[tuple[str, np.ndarray]]], meta: list[dict],
                flac: bool = False) -> None:
    """Store rendered (id, int16 samples) items, in ``meta``'s order, as set ``name`` (skipped when complete).
    ``items`` is called only when the set is missing, so a finished set costs no rendering."""
    bin_path, man_path = WORK / f"{name}.bin", WORK / f"{name}.jsonl"
    if man_path.exists():
        print(f"[synth] {name}: exists, skipped")
        return
    t0, offset = time.time(), 0
    rows = []
    fdir = WORK / "heldout" / name
    if flac:
        fdir.mkdir(parents=True, exist_ok=True)
    with open(bin_path, "wb") as f:
        for (uid, y), m in zip(items(), meta):
            f.write(y.tobytes())
            rows.append({**m, "id": uid, "offset": offset, "num_samples": int(y.size)})
            offset += y.size
            if flac:
                sf.write(fdir / f"{uid}.flac", y, SR, subtype="PCM_16")
            if len(rows) % 2000 == 0:
                print(f"[synth] {name}: {len(rows)}/{len(meta)} ({offset / SR / 3600:.2f} h) {time.time() - t0:.0f}s",
                      flush=True)
    tmp = man_path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.rename(man_path)  # manifest last: its presence marks the set complete
    if flac:
        (WORK / f"{name}_files.jsonl").write_text("".join(
            json.dumps({"id": r["id"], "audio_uri": str(fdir / f"{r['id']}.flac"), "text": r["text"].upper(),
                        "speaker": r["voice"], "split": name, "label": r.get("label")}) + "\n" for r in rows))
    print(f"[synth] {name}: {len(rows)} utts, {offset / SR / 3600:.2f} h in {time.time() - t0:.0f}s", flush=True)


def ctc_jobs(name: str, sentences: list[str], voices: list[str], seed: int, prefix: str):
    r = random.Random(seed)
    jobs, meta = [], []
    for i, s in enumerate(sentences):
        v, sp, p = r.choice(voices), r.randint(130, 190), r.randint(30, 70)
        uid = f"{prefix}{i:06d}"
        jobs.append((uid, s, v, sp, p, False))
        meta.append({"text": s, "voice": v, "speed": sp, "pitch": p, "set": name})
    return jobs, meta


def kws_jobs(name: str, per_kw: int, unknown_words: list[str], n_unknown: int, voices: list[str], seed: int):
    r = random.Random(seed)
    items = [(kw, kw) for kw in KEYWORDS for _ in range(per_kw)]
    items += [("_unknown_", r.choice(unknown_words)) for _ in range(n_unknown)]
    jobs, meta = [], []
    for i, (label, word) in enumerate(items):
        v, sp, p = r.choice(voices), r.randint(100, 210), r.randint(20, 80)
        text = word + r.choice(["", ".", "!", "?"])  # punctuation changes espeak's intonation
        jobs.append((f"{name}-{i:06d}", text, v, sp, p, True))
        meta.append({"text": word, "label": label, "voice": v, "speed": sp, "pitch": p, "set": name})
    return jobs, meta


def make_noise(n: int, seed: int, seconds: float = 1.0) -> np.ndarray:
    """Background noise / silence clips: white, pink, brown, mains hum, digital silence, mixtures; random level."""
    r = np.random.default_rng(seed)
    L = int(SR * seconds)
    out = np.zeros((n, L), np.float32)
    f = np.fft.rfftfreq(L, 1 / SR)
    for i in range(n):
        kind = r.integers(0, 6)
        w = r.standard_normal(L)
        if kind in (1, 2):  # pink / brown via spectral shaping
            spec = np.fft.rfft(w) / np.maximum(f, 20.0) ** (0.5 if kind == 1 else 1.0)
            w = np.fft.irfft(spec, L)
        elif kind == 3:  # hum with harmonics + a little hiss
            base = r.choice([50.0, 60.0])
            t = np.arange(L) / SR
            w = sum(np.sin(2 * np.pi * base * k * t + r.uniform(0, 6.28)) / k for k in range(1, 6))
            w = w + 0.1 * r.standard_normal(L)
        elif kind == 4:  # band-limited rumble / wind-like: lowpassed noise with slow amplitude modulation
            spec = np.fft.rfft(w)
            spec[f > r.uniform(300, 2000)] = 0
            w = np.fft.irfft(spec, L) * (1 + 0.8 * np.sin(2 * np.pi * r.uniform(0.3, 3) * np.arange(L) / SR))
        w = w / (np.abs(w).max() + 1e-9)
        level = 10 ** r.uniform(-4.5, -0.5) if kind != 5 else 0.0  # kind 5: (near) digital silence
        out[i] = w * level + (r.standard_normal(L) * 10 ** r.uniform(-5, -3.5) if kind == 5 else 0)
    return out


def unknown_words() -> tuple[list[str], list[str]]:
    """_unknown_ words (grammar words + Speech Commands' auxiliary words) split into (train, held-out)."""
    words = sorted((vocabulary() | set(SPEECH_COMMANDS_UNKNOWN)) - KWS_EXCLUDE)
    random.Random(7).shuffle(words)
    return words[120:], words[:120]


def unique_sentences(n: int, seed: int, exclude: set[str] = frozenset()) -> list[str]:
    g, seen, out = Grammar(random.Random(seed)), set(exclude), []
    while len(out) < n:
        s = g.sentence()
        if s not in seen and 3 <= len(s.split()) <= 22:
            seen.add(s)
            out.append(s)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ctc-train", type=int, default=18000, help="training sentences (~3 s each)")
    ap.add_argument("--ctc-test", type=int, default=300, help="held-out sentences x held-out voices")
    ap.add_argument("--skip-ctc", action="store_true")
    a = ap.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    train_v, held_v = split_voices()
    (WORK / "voices.json").write_text(json.dumps({"train": train_v, "heldout": held_v}, indent=1))
    train_words, held_words = unknown_words()
    for name, seed in (("noise_train", 11), ("noise_heldout", 12)):
        p = WORK / "noise" / f"{name}.npy"
        if not p.exists():
            p.parent.mkdir(exist_ok=True)
            np.save(p, make_noise(1500 if name == "noise_train" else 200, seed, seconds=3.0 if name == "noise_train" else 1.0))
    with Pool(a.workers) as pool:
        write_set("kws_train", *kws_jobs("kws_train", 900, train_words, 5000, train_v, 21), pool)
        write_set("kws_heldout", *kws_jobs("kws_heldout", 40, held_words, 300, held_v, 22), pool, flac=True)
        if a.skip_ctc:
            return
        # Sentences: one pool, disjoint by construction (the held-out ones are drawn first and excluded).
        test_s = unique_sentences(a.ctc_test + 200, seed=31)
        train_s = unique_sentences(a.ctc_train, seed=32, exclude=set(test_s))
        write_set("ctc_heldout", *ctc_jobs("ctc_heldout", test_s[:a.ctc_test], held_v, 41, "h"), pool, flac=True)
        # Diagnostic: unseen sentences spoken by *training* voices (separates voice vs. text generalisation).
        write_set("ctc_dev_seenvoice", *ctc_jobs("ctc_dev_seenvoice", test_s[a.ctc_test:], train_v, 42, "d"), pool,
                  flac=True)
        write_set("ctc_train", *ctc_jobs("ctc_train", train_s, train_v, 43, "t"), pool)


if __name__ == "__main__":
    main()
