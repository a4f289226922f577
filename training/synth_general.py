"""Second-generation training data (issue 16): general English (training/texts.py) in many voices and engines.

Each sentence is rendered once, trimmed to 0.1 s of silence either side, and stored as an *atom*; the trainer
builds 1-30 s utterances on the fly by joining atoms of one voice with pauses (training/train_ctc.py), so lengths
and pause patterns vary every epoch without storing them. Sets under training/work/ (layout of training/synth.py):
  gen_train     fortunes training sentences (+ demo-grammar sentences as one part) x training voices
  gen_heldout   held-out fortunes sentences x held-out voices: flite rms, Festival ked_diphone, and espeak-ng's
                held-out accent+variant pairs (also as FLAC for the pipeline)
  gen_dev       held-out sentences x training voices (diagnostic: text vs voice generalisation)
Renders in chunks of sentences per voice: Festival pays its start-up once per chunk (one Scheme script), not per
sentence (4-5 -> ~50 audio-s/s).
Run: python -m training.synth_general [--workers 2]   (needs training/work/texts from python -m training.texts)
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import tempfile
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import soundfile as sf

from training import synth, voices

WORK = synth.WORK
SR = 16000
CHUNK = 24  # sentences per render job
# Training sentences per voice group (fortunes wraps round when the groups ask for more than it has).
MIX = {"espeak": 14000, "flite:awb": 2800, "flite:slt": 2800, "flite:kal16": 1500, "flite:kal": 1500,
       "festival:kal_diphone": 1200, "festival:cmu_us_slt_arctic_hts": 1600, "piper:joe": 2000}
GRAMMAR_SENTENCES = 3000  # the first generation's grammar, spoken by espeak-ng voices
HELDOUT_PER_GROUP = {"flite:rms": 100, "festival:ked_diphone": 100, "espeak": 100}
DEV_SENTENCES = 200


def trim(y: np.ndarray, margin_s: float = 0.1) -> np.ndarray:
    """Cut the engine's lead-in and tail silence down to ``margin_s``: the joins add their own pauses."""
    idx = np.flatnonzero(np.abs(y) > 0.01 * (np.abs(y).max() + 1e-9))
    if not idx.size:
        return y
    m = int(margin_s * SR)
    return y[max(0, idx[0] - m): idx[-1] + m]


def _festival_chunk(name: str, items: list[tuple]) -> list[np.ndarray]:
    """One Festival process for the whole chunk (a Scheme script saving one WAV per sentence)."""
    with tempfile.TemporaryDirectory() as tmp:
        lines = [f"(voice_{name})"]
        for k, (_, text, stretch, _) in enumerate(items):
            lines.append(f"(Parameter.set 'Duration_Stretch {stretch:.3f})")
            lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{text}")) "{tmp}/{k}.wav" \'riff)')
        script = Path(tmp) / "chunk.scm"
        script.write_text("\n".join(lines) + "\n")
        subprocess.run(["festival", "-b", str(script)], capture_output=True, check=True)
        return [voices.read_wav((Path(tmp) / f"{k}.wav").read_bytes()) for k in range(len(items))]


def render_chunk(job: tuple[str, list[tuple]]) -> list[tuple[str, np.ndarray]]:
    """job = (voice, [(uid, text, stretch, pitch), ...]) -> [(uid, int16 16 kHz samples), ...]."""
    voice, items = job
    engine, name = voice.split(":", 1)
    if engine == "festival":
        waves = _festival_chunk(name, items)
    else:
        waves = [voices.render(voice, text, stretch, pitch) for _, text, stretch, pitch in items]
    return [(uid, synth.to_int16(trim(y))) for (uid, *_), y in zip(items, waves)]


def plan(sentences: list[tuple[str, str]], groups: list[tuple[str, list[str]]], seed: int, prefix: str):
    """Assign (text, source) sentences to voice groups in order: group = (label, voices to draw from).
    Returns render jobs (chunks of one voice) and the rows' metadata in the jobs' order."""
    r = random.Random(seed)
    by_voice: dict[str, list[tuple]] = {}
    for i, ((text, source), (_, pool_)) in enumerate(zip(sentences, groups)):
        v = r.choice(pool_)
        stretch, pitch = round(r.uniform(0.85, 1.2), 3), r.randint(30, 70)
        by_voice.setdefault(v, []).append((f"{prefix}{i:06d}", text.lower(), stretch, pitch, source))
    jobs, meta = [], []
    for v in sorted(by_voice):
        items = by_voice[v]
        for k in range(0, len(items), CHUNK):
            chunk = items[k: k + CHUNK]
            jobs.append((v, [it[:4] for it in chunk]))
            meta += [{"text": t.upper(), "voice": v, "speed": s, "pitch": p, "source": src}
                     for _, t, s, p, src in chunk]
    return jobs, meta


def expand(counts: dict[str, int], espeak_voices: list[str]) -> list[tuple[str, list[str]]]:
    """{group: n} -> one (group, voices) entry per sentence, interleaved by a fixed shuffle."""
    out = [(g, [f"espeak:{v}" for v in espeak_voices] if g == "espeak" else [g]) for g, n in counts.items()
           for _ in range(n)]
    random.Random(5).shuffle(out)
    return out


def read_texts(texts: Path) -> tuple[list[str], list[str]]:
    train, held = (texts / "train.txt").read_text().split("\n"), (texts / "heldout.txt").read_text().split("\n")
    return [t for t in train if t], [t for t in held if t]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--texts", type=Path, default=WORK / "texts")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every training count (quick trials)")
    a = ap.parse_args(argv)
    if not (a.texts / "train.txt").exists():
        raise SystemExit(f"no {a.texts}/train.txt: run python -m training.texts first")
    train_t, held_t = read_texts(a.texts)
    esp_train, esp_held = synth.split_voices()
    (WORK / "gen_voices.json").write_text(json.dumps({
        "train": [f"espeak:{v}" for v in esp_train] + [v for v in voices.engine_voices() if v not in voices.HELDOUT] + ["piper:joe"],
        "heldout": [f"espeak:{v}" for v in esp_held] + sorted(voices.HELDOUT)}, indent=1))
    counts = {g: int(n * a.scale) for g, n in MIX.items()}
    groups = expand(counts, esp_train)
    shuffled = random.Random(3).sample(train_t, len(train_t))
    sents = [(shuffled[i % len(shuffled)], "fortunes") for i in range(len(groups))]
    grammar = synth.unique_sentences(int(GRAMMAR_SENTENCES * a.scale), seed=32,
                                     exclude=set(synth.unique_sentences(500, seed=31)))  # never the v1 test set
    sents += [(s, "grammar") for s in grammar]
    groups += [("espeak", [f"espeak:{v}" for v in esp_train])] * len(grammar)
    held_groups = expand(HELDOUT_PER_GROUP, esp_held)
    held_sents = [(t, "fortunes") for t in held_t[: len(held_groups)]]
    dev_sents = [(t, "fortunes") for t in held_t[len(held_groups): len(held_groups) + DEV_SENTENCES]]
    dev_groups = expand({g: DEV_SENTENCES // len(MIX) + 1 for g in MIX}, esp_train)[:DEV_SENTENCES]
    with Pool(a.workers) as pool:
        for name, s, g, seed, prefix, flac in (("gen_heldout", held_sents, held_groups, 61, "gh", True),
                                               ("gen_dev", dev_sents, dev_groups, 62, "gd", True),
                                               ("gen_train", sents, groups, 63, "gt", False)):
            jobs, meta = plan(s, g, seed, prefix)
            synth.write_items(name, lambda jobs=jobs: (it for chunk in pool.imap(render_chunk, jobs)
                                                       for it in chunk), meta, flac)


if __name__ == "__main__":
    main()
