"""Training batches for the CTC trainer: joined utterances, augmentation, collate.

Each batch's random draws are seeded by (epoch, position in the epoch), so a resumed run sees the batches of an
uninterrupted one. Optional worker processes build the next batches while the model trains; on 2 cores they
gained nothing (they take their CPU from the model's threads: training/README.md), so the trainer's default is
none. Runs with and without workers see the same batches.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from training.common import SR, UttSet, augment, collate, encode_text, perturb_speed, reverberate
from training.compose import assemble, plan_epoch, text_of


def make_batches(lengths: np.ndarray, max_samples: int, seed: int) -> list[np.ndarray]:
    """Length-bucketed batches (padded size <= max_samples), in a seeded random order."""
    rng = np.random.default_rng(seed)
    order = np.argsort(lengths + rng.integers(0, 1600, lengths.size), kind="stable")  # jitter: varied batch mates
    batches, cur, cur_max = [], [], 0
    for i in order:
        m = max(cur_max, int(lengths[i]))
        if cur and m * (len(cur) + 1) > max_samples:
            batches.append(np.array(cur))
            cur, m = [], int(lengths[i])
        cur.append(int(i))
        cur_max = m
    if cur:
        batches.append(np.array(cur))
    rng.shuffle(batches)
    return batches


@dataclass(frozen=True)
class Recipe:
    """What one batch is made of: length of the padded batch, joined utterances, augmentation probabilities."""
    max_samples: int = 64 * SR
    p_join: float = 0.0
    max_utt_s: float = 30.0
    p_speed: float = 0.5
    p_room: float = 0.0


class EpochBatches(torch.utils.data.Dataset):
    """Batch ``pos`` of ``epoch``: (waveforms [B, T], attention mask [B, T], labels [B, L] padded with -100)."""

    def __init__(self, train: UttSet, epoch: int, recipe: Recipe, noise: np.ndarray | None):
        self.train, self.epoch, self.recipe, self.noise = train, epoch, recipe, noise
        self.utts = plan_epoch(train.rows, seed=epoch, p_join=recipe.p_join, max_s=recipe.max_utt_s)
        self.batches = make_batches(np.array([u.num_samples for u in self.utts]), recipe.max_samples, seed=epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, pos: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng, r = np.random.default_rng((10_000, self.epoch, pos)), self.recipe
        batch = [self.utts[i] for i in self.batches[pos]]
        waves = []
        for u in batch:
            y = assemble(u, self.train.audio, rng)
            y = perturb_speed(y, rng) if rng.random() < r.p_speed else y
            y = reverberate(y, rng) if rng.random() < r.p_room else y
            waves.append(augment(y, rng, self.noise, p_noise=0.4, snr_db=(5.0, 40.0), p_tel=0.2))
        x, m = collate(waves)
        labs = [encode_text(text_of(u, self.train.rows)) for u in batch]
        y = torch.full((len(labs), max(len(t) for t in labs)), -100, dtype=torch.long)
        for k, t in enumerate(labs):
            y[k, : len(t)] = torch.tensor(t)
        return x, m, y


def stream(train: UttSet, recipe: Recipe, noise: np.ndarray | None, epoch: int, pos: int,
           workers: int = 0) -> Iterator[tuple[int, int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """(epoch, position after this batch, batch) from (epoch, pos) on, endlessly. ``workers`` processes build
    the next batches ahead (0: in this process). Closing the generator stops them."""
    while True:
        ds = EpochBatches(train, epoch, recipe, noise)
        order = range(pos, len(ds))
        # its own generator: a DataLoader otherwise draws its worker seed from torch's global RNG, which would
        # shift the trainer's dropout draws against a run without the worker
        it = (ds[i] for i in order) if workers == 0 else iter(torch.utils.data.DataLoader(
            ds, batch_size=None, sampler=order, num_workers=workers, prefetch_factor=2,
            generator=torch.Generator().manual_seed(0)))
        for p, batch in zip(order, it):
            yield epoch, p + 1, batch
        epoch, pos = epoch + 1, 0
