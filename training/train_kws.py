"""Train the demo keyword classifier (SEWForSequenceClassification, 12 Speech Commands labels) on synthetic words.

Resumable: everything lives in one file (training/work/kws_resume.pt, written atomically every few minutes);
rerunning the same command continues from it. Run: python -m training.train_kws [--steps N]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sew_pipeline.models import SEWConfig, SEWForSequenceClassification
from training.common import (WORK, Meter, UttSet, augment, collate, load_state, log, lr_at, param_count,
                             perturb_speed, reverberate, save_state)
from training.synth import KWS_LABELS

SR = 16000
CLIP = SR  # Speech Commands clips are 1 s


def kws_config() -> SEWConfig:
    cfg = SEWConfig(
        hidden_size=192, num_hidden_layers=4, num_attention_heads=4, intermediate_size=768, squeeze_factor=2,
        conv_dim=(64, 64, 64, 64, 64, 128, 128), conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=16, hidden_dropout=0.1, activation_dropout=0.05,
        attention_dropout=0.05, feat_proj_dropout=0.05, final_dropout=0.1, layerdrop=0.0, mask_time_prob=0.05,
        mask_time_length=5, mask_time_min_masks=1, classifier_proj_size=128, use_weighted_layer_sum=False,
    )
    return cfg.with_labels(KWS_LABELS)


def place(word: np.ndarray, rng: np.random.Generator, jitter: bool = True) -> np.ndarray:
    """Put a (trimmed) word into a 1 s window at a random (or centred) position; crop if longer."""
    out = np.zeros(CLIP, np.float32)
    if word.size >= CLIP:
        s = rng.integers(0, word.size - CLIP + 1) if jitter else (word.size - CLIP) // 2
        return word[s: s + CLIP].copy()
    s = rng.integers(0, CLIP - word.size + 1) if jitter else (CLIP - word.size) // 2
    out[s: s + word.size] = word
    return out


def noise_floor(x: np.ndarray, rng: np.random.Generator, noise: np.ndarray) -> np.ndarray:
    """Real recordings never contain digital zeros: add a quiet bed of noise (-80..-45 dBFS)."""
    clip = noise[rng.integers(len(noise))]
    s = rng.integers(0, clip.size - CLIP + 1)
    n = clip[s: s + CLIP]
    return x + n / (np.abs(n).max() + 1e-9) * np.float32(10 ** rng.uniform(-4, -2.25))


def silence_clip(rng: np.random.Generator, noise: np.ndarray) -> np.ndarray:
    clip = noise[rng.integers(len(noise))]
    s = rng.integers(0, clip.size - CLIP + 1)
    return (clip[s: s + CLIP] * np.float32(10 ** rng.uniform(-1.5, 0.5))).clip(-1, 1)


class KwsSampler:
    """Balanced batches: 1/13 _silence_, 2/13 _unknown_, the rest keywords; each word clip is drawn from the
    second (e.g. Piper) word set with probability p_extra, from the espeak-ng set otherwise."""

    def __init__(self, words: UttSet, noise: np.ndarray, seed: int, p_speed: float = 0.0,
                 extra: UttSet | None = None, p_extra: float = 0.0, p_room: float = 0.0):
        self.sets = [words] + ([extra] if extra is not None else [])
        self.noise, self.p_speed, self.p_extra, self.p_room = noise, p_speed, p_extra, p_room
        self.by_label = [self._index(s) for s in self.sets]
        self.rng = np.random.default_rng(seed)

    @staticmethod
    def _index(words: UttSet) -> dict[int, list[int]]:
        by_label: dict[int, list[int]] = {}
        for i, r in enumerate(words.rows):
            by_label.setdefault(KWS_LABELS.index(r["label"]), []).append(i)
        return by_label

    def batch(self, n: int) -> tuple[list[np.ndarray], list[int]]:
        rng, waves, labels = self.rng, [], []
        sil, unk = KWS_LABELS.index("_silence_"), KWS_LABELS.index("_unknown_")
        for _ in range(n):
            u = rng.random()
            lab = sil if u < 1 / 13 else unk if u < 3 / 13 else int(rng.integers(10))
            if lab == sil:
                x = silence_clip(rng, self.noise)
                if rng.random() < 0.15:
                    x = x * np.float32(1e-3)  # near-digital silence
            else:
                k = int(len(self.sets) > 1 and rng.random() < self.p_extra)
                w = self.sets[k].audio(int(rng.choice(self.by_label[k][lab])))
                if rng.random() < self.p_speed:
                    w = perturb_speed(w, rng, 0.8, 1.25)
                if rng.random() < self.p_room:
                    w = reverberate(w, rng)
                x = noise_floor(place(w, rng), rng, self.noise)
                x = augment(x, rng, self.noise, p_noise=0.6, snr_db=(0.0, 30.0), p_tel=0.2)
            waves.append(x)
            labels.append(lab)
        return waves, labels


def eval_set(words: UttSet, noise_heldout: np.ndarray, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """Held-out voices and unknown words, centred, quiet noise floor; + held-out generated noise as _silence_."""
    rng = np.random.default_rng(seed)
    waves = [noise_floor(place(words.audio(i), rng, jitter=False), rng, noise_heldout) for i in range(len(words))]
    labels = [KWS_LABELS.index(r["label"]) for r in words.rows]
    waves += [(c * np.float32(10 ** rng.uniform(-1.5, 0.5))).clip(-1, 1).astype(np.float32) for c in noise_heldout]
    labels += [KWS_LABELS.index("_silence_")] * len(noise_heldout)
    return waves, labels


@torch.no_grad()
def predict(model: torch.nn.Module, waves: list[np.ndarray], bs: int = 64) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(waves), bs):
        x, m = collate(waves[i: i + bs])
        out.append(model(x, attention_mask=m).logits.argmax(-1).numpy())
    model.train()
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--state", type=Path, default=WORK / "kws_resume.pt")
    ap.add_argument("--save-every-s", type=float, default=180.0)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--p-speed", type=float, default=0.7, help="probability of speed/formant perturbation")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads; on a CPU shared with other jobs 1 can be 2-3x faster (no barrier stalls)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--best-dir", type=Path, default=WORK / "kws_best", help="where the best checkpoint is saved")
    ap.add_argument("--init", type=Path, default=None,
                    help="fine-tune: start from this exported model folder (fresh optimizer and schedule)")
    ap.add_argument("--extra-set", default=None, help="second word set to mix in, e.g. kws_piper (training.piper_synth)")
    ap.add_argument("--p-extra", type=float, default=0.35, help="share of word clips drawn from --extra-set")
    ap.add_argument("--p-room", type=float, default=0.0, help="probability of synthetic room reverb + mic tilt EQ")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    logfile = WORK / "train_kws.log"
    words, held = UttSet("kws_train"), UttSet("kws_heldout")
    noise = np.load(WORK / "noise" / "noise_train.npy")
    ev_waves, ev_labels = eval_set(held, np.load(WORK / "noise" / "noise_heldout.npy"))
    model = SEWForSequenceClassification.from_pretrained(a.init) if a.init else SEWForSequenceClassification(kws_config())
    model.float()  # why: exported folders hold fp16 weights
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98))
    step, best, wall = 0, -1.0, 0.0
    st = load_state(a.state)
    if st:
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, best, wall = st["step"], st["best"], st["wall_s"]
        log(f"resumed at step {step}", logfile)
    log(f"KWS model: {param_count(model) / 1e6:.2f}M params; train words {len(words)}; eval {len(ev_waves)}", logfile)
    extra = UttSet(a.extra_set) if a.extra_set else None
    sampler = KwsSampler(words, noise, seed=1000 + step, p_speed=a.p_speed, extra=extra, p_extra=a.p_extra,
                         p_room=a.p_room)  # why: a resumed run does not replay the same batches
    meter, t_save, t_start = Meter(), time.time(), time.time()
    model.train()
    while step < a.steps:
        waves, labels = sampler.batch(a.batch)
        x, m = collate(waves)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.lr, a.warmup, a.steps)
        logits = model(x, attention_mask=m).logits
        loss = F.cross_entropy(logits, torch.tensor(labels), label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0))
        opt.step()
        step += 1
        meter.add(loss.item(), len(waves) * CLIP / SR, gn)
        if step % 50 == 0:
            log(f"kws step {step}/{a.steps} {meter.line()} lr {opt.param_groups[0]['lr']:.2e}", logfile)
            meter.reset()
        done = step == a.steps
        if step % a.eval_every == 0 or done:
            pred = predict(model, ev_waves)
            acc = float(np.mean(pred == np.array(ev_labels)))
            log(f"kws step {step} held-out accuracy {acc:.4f}", logfile)
            if acc >= best:
                best = acc
                model.save_pretrained(a.best_dir)
        if time.time() - t_save > a.save_every_s or done:
            save_state(a.state, model=model.state_dict(), opt=opt.state_dict(), step=step, best=best,
                       wall_s=wall + time.time() - t_start)
            t_save = time.time()
    log(f"kws done: step {step}, best held-out acc {best:.4f}, wall {wall + time.time() - t_start:.0f}s", logfile)
    return a.best_dir


if __name__ == "__main__":
    main()
