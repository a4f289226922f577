"""Measure exported demo models the way they are shipped (our FeatureExtractor + CTCTokenizer, greedy decoding).

- CTC: held-out synthetic set (general English sentences never trained on, in voices never trained on: flite rms,
  Festival ked_diphone, espeak-ng held-out pairs), the same audio through an 8 kHz mu-law round trip, the
  diagnostic set (unseen sentences, training voices), the first generation's held-out set, the real LibriSpeech
  fixtures and the shipped demo corpus.
- KWS: held-out synthetic words (unseen voices, unseen _unknown_ words) + held-out generated noise, and the
  real Speech Commands clips (yes / no / noise / silence).
Run: python -m training.evaluate [--ctc DIR] [--kws DIR]   (writes training/work/results_*.json)
"""
from __future__ import annotations

import argparse
import io
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from sew_pipeline.models import CTCTokenizer, FeatureExtractor, SEWForCTC, SEWForSequenceClassification
from training.common import WORK, UttSet
from training.train_ctc import error_rates

REPO = Path(__file__).resolve().parents[1]
LIBRI = REPO / "tests" / "data" / "LibriSpeech"
SPEECH_COMMANDS = REPO / "tests" / "data" / "speech_commands"
ASSETS = REPO / "sew_pipeline" / "assets" / "models"


def telephone_mulaw(y: np.ndarray) -> np.ndarray:
    """16 kHz -> 8 kHz mu-law WAV bytes -> decoded -> back to 16 kHz (what a stored telephone copy goes through)."""
    buf = io.BytesIO()
    sf.write(buf, soxr.resample(y, 16000, 8000), 8000, format="WAV", subtype="ULAW")
    z, sr = sf.read(io.BytesIO(buf.getvalue()), dtype="float32")
    return soxr.resample(z, sr, 16000).astype(np.float32)


@torch.no_grad()
def ctc_transcribe(model_dir: Path, waves: list[np.ndarray]) -> list[str]:
    """One utterance at a time (as the pipeline sees short items): no padding effects in the numbers."""
    model = SEWForCTC.from_pretrained(model_dir)
    fe, tok = FeatureExtractor.from_pretrained(model_dir), CTCTokenizer.from_pretrained(model_dir)
    out = []
    for w in waves:
        b = fe([w])
        out.append(tok.batch_decode(model(b["input_values"], attention_mask=b["attention_mask"]).logits)[0])
    return out


def librispeech() -> tuple[list[str], list[np.ndarray], list[str]]:
    ids, waves, refs = [], [], []
    for trans in sorted(LIBRI.rglob("*.trans.txt")):
        for line in trans.read_text().splitlines():
            uid, text = line.split(" ", 1)
            f = trans.parent / f"{uid}.flac"
            if f.exists():
                y, sr = sf.read(f, dtype="float32")
                ids.append(uid)
                waves.append(y if sr == 16000 else soxr.resample(y, sr, 16000))
                refs.append(text)
    return ids, waves, refs


DEMO_CORPUS = REPO / "sew_pipeline" / "assets" / "demo_corpus" / "manifest.jsonl"


def eval_demo_corpus(model_dir: Path) -> dict:
    """Pooled WER on the shipped demo corpus, as 16 kHz FLAC and as 8 kHz mu-law (the end-to-end test's gate)."""
    rows = [json.loads(x) for x in DEMO_CORPUS.read_text().splitlines() if x.strip()]
    waves = [sf.read(DEMO_CORPUS.parent / r["audio_filepath"], dtype="float32")[0] for r in rows]
    refs = [r["text"] for r in rows]
    return {"n": len(rows), "wer": error_rates(refs, ctc_transcribe(model_dir, waves))[1],
            "wer_8k_mulaw": error_rates(refs, ctc_transcribe(model_dir, [telephone_mulaw(w) for w in waves]))[1]}


HELDOUT, DEV, V1_HELDOUT = "gen_heldout", "gen_dev", "ctc_heldout"


def voice_group(voice: str, espeak: str = "espeak-ng held-out pairs") -> str:
    """Figures per engine voice; espeak-ng's accent+variant pairs pooled as one group named ``espeak``."""
    return espeak if voice.startswith("espeak") else voice


def _scored(s: UttSet, hyps: list[str]) -> dict:
    return dict(zip(("cer", "wer"), error_rates([r["text"] for r in s.rows], hyps)), n=len(s))


def fit_by_voice(model_dir: Path, per_voice: int = 25) -> dict:
    """Per voice (espeak-ng pooled), CER / WER on training renderings (clean: no augmentation) next to unseen
    sentences in the same voices: a model that spells its training sentences no better than unseen ones is
    short of capacity or steps (underfitting), not memorising them."""
    out: dict = {}
    for name, key in (("gen_train", "train"), (DEV, "unseen_sentences")):
        s, rng = UttSet(name), np.random.default_rng(0)
        by = defaultdict(list)
        for i, r in enumerate(s.rows):
            by[voice_group(r["voice"], espeak="espeak-ng")].append(i)
        picks = {voice: [int(i) for i in rng.permutation(idx)[:per_voice]] for voice, idx in sorted(by.items())}
        flat = [i for pick in picks.values() for i in pick]  # one model load per set
        hyps = dict(zip(flat, ctc_transcribe(model_dir, [s.audio(i) for i in flat])))
        for voice, pick in picks.items():
            cer, wer = error_rates([s.rows[i]["text"] for i in pick], [hyps[i] for i in pick])
            out.setdefault(voice, {})[key] = {"cer": cer, "wer": wer, "n": len(pick)}
    return out


def eval_ctc(model_dir: Path) -> dict:
    """Second-generation sets (general English, training/synth_general.py); the first generation's held-out
    set (grammar sentences, espeak-ng held-out voices) too when it is there."""
    t0 = time.time()
    res: dict = {"model": str(model_dir)}
    held = UttSet(HELDOUT)
    waves = [held.audio(i) for i in range(len(held))]
    hyps = ctc_transcribe(model_dir, waves)
    res["heldout"] = {**_scored(held, hyps), "hours": sum(w.size for w in waves) / 16000 / 3600}
    by_voice = defaultdict(lambda: ([], []))
    for h, row in zip(hyps, held.rows):
        by_voice[voice_group(row["voice"])][0].append(row["text"])
        by_voice[voice_group(row["voice"])][1].append(h)
    res["heldout_by_voice"] = {v: dict(zip(("cer", "wer"), error_rates(*rh)), n=len(rh[0]))
                               for v, rh in sorted(by_voice.items())}
    res["heldout_examples"] = [{"ref": r["text"], "hyp": h, "voice": r["voice"]}
                               for r, h in list(zip(held.rows, hyps))[::37][:8]]
    res["heldout_8k_mulaw"] = _scored(held, ctc_transcribe(model_dir, [telephone_mulaw(w) for w in waves]))
    dev = UttSet(DEV)
    res["dev_seenvoice"] = _scored(dev, ctc_transcribe(model_dir, [dev.audio(i) for i in range(len(dev))]))
    if (WORK / "gen_train.jsonl").exists():
        res["fit_by_voice"] = fit_by_voice(model_dir)
    if (WORK / f"{V1_HELDOUT}.jsonl").exists():
        v1 = UttSet(V1_HELDOUT)
        res["v1_heldout"] = _scored(v1, ctc_transcribe(model_dir, [v1.audio(i) for i in range(len(v1))]))
    ids, lw, lr = librispeech()
    lh = ctc_transcribe(model_dir, lw)
    res["librispeech_fixtures"] = dict(zip(("cer", "wer"), error_rates(lr, lh)), n=len(ids),
                                       items=[{"id": i, "ref": r, "hyp": h} for i, r, h in zip(ids, lr, lh)])
    res["demo_corpus"] = eval_demo_corpus(model_dir)
    res["eval_wall_s"] = round(time.time() - t0, 1)
    return res


@torch.no_grad()
def eval_kws(model_dir: Path) -> dict:
    from training.train_kws import eval_set  # local: keeps the CTC-only path light

    model = SEWForSequenceClassification.from_pretrained(model_dir)
    fe = FeatureExtractor.from_pretrained(model_dir)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]

    def classify(waves: list[np.ndarray]) -> np.ndarray:
        out = []
        for i in range(0, len(waves), 64):
            b = fe(waves[i: i + 64])
            out.append(model(b["input_values"], attention_mask=b["attention_mask"]).logits.softmax(-1).numpy())
        return np.concatenate(out)

    held = UttSet("kws_heldout")
    waves, y = eval_set(held, np.load(WORK / "noise" / "noise_heldout.npy"))
    pred = classify(waves).argmax(-1)
    y = np.array(y)
    res: dict = {"model": str(model_dir), "heldout_accuracy": float(np.mean(pred == y)), "heldout_n": int(y.size),
                 "heldout_per_label": {labels[k]: float(np.mean(pred[y == k] == k)) for k in range(len(labels))
                                       if np.any(y == k)}}
    # Same words with background noise at 10-20 dB SNR (held-out noise clips): robustness figure.
    rng = np.random.default_rng(5)
    noise = np.load(WORK / "noise" / "noise_heldout.npy")
    noisy = []
    for w in waves[: len(held)]:
        n = noise[rng.integers(len(noise))]
        g = np.sqrt((np.mean(w ** 2) + 1e-10) / (np.mean(n ** 2) + 1e-10) / 10 ** (rng.uniform(10, 20) / 10))
        noisy.append(np.clip(w + g * n, -1, 1).astype(np.float32))
    res["heldout_noisy_10_20db_accuracy"] = float(np.mean(classify(noisy).argmax(-1) == y[: len(held)]))
    real = {}
    for f in sorted(SPEECH_COMMANDS.glob("*.wav")):
        w, sr = sf.read(f, dtype="float32")
        p = classify([w])[0]
        real[f.name] = {"pred": labels[int(p.argmax())], "p": round(float(p.max()), 3)}
    res["real_speech_commands"] = real
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctc", type=Path, default=None)
    ap.add_argument("--kws", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    out = {}
    if a.kws:
        out["kws"] = eval_kws(a.kws)
        (WORK / "results_kws.json").write_text(json.dumps(out["kws"], indent=1))
    if a.ctc:
        out["ctc"] = eval_ctc(a.ctc)
        (WORK / "results_ctc.json").write_text(json.dumps(out["ctc"], indent=1))
    detail = ("heldout_by_voice", "heldout_examples", "fit_by_voice")  # in the results file only
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk not in detail} for k, v in out.items()}, indent=1))
    return out


if __name__ == "__main__":
    main()
