"""Long audio as fixed overlapping windows, and stitching per-window CTC frames back together.

An hours-long call never goes through the model as one tensor: it is cut into windows of `window_s`
with `overlap_s` shared between neighbours. Every output frame of the original timeline is then taken
from exactly one window -- the one in which it is most central (farthest from that window's edges),
which is where the model saw the most context on both sides.

Window starts are multiples of `align` samples (default 640 = SEW conv stride 320 x squeeze factor 2),
so a window's frame j is exactly global frame start/stride + j and squeeze pairs line up with the
unchunked run.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# The standard SEW / wav2vec2 feature-encoder conv stack.
SEW_CONV_KERNEL = (10, 3, 3, 3, 3, 2, 2)
SEW_CONV_STRIDE = (5, 2, 2, 2, 2, 2, 2)


def conv_frames(num_samples: int, kernels: Sequence[int] = SEW_CONV_KERNEL,
                strides: Sequence[int] = SEW_CONV_STRIDE) -> int:
    """Output frames of an unpadded conv stack: L -> floor((L - k) / s) + 1 per layer (0 if too short)."""
    length = int(num_samples)
    for k, s in zip(kernels, strides, strict=True):
        if length < k:
            return 0
        length = (length - k) // s + 1
    return length


@dataclass(frozen=True)
class Window:
    """Samples [start, end) of the (resampled) item; frames [keep_start_frame, keep_end_frame) of the
    original timeline are taken from this window. `stride` = samples per output frame."""
    index: int
    start: int
    end: int
    keep_start_frame: int
    keep_end_frame: int
    stride: int = 320

    @property
    def first_frame(self) -> int:
        """Global index of this window's frame 0."""
        return self.start // self.stride

    @property
    def local_keep(self) -> tuple[int, int]:
        """The kept frames as a slice of this window's own model output."""
        return self.keep_start_frame - self.first_frame, self.keep_end_frame - self.first_frame

    def start_s(self, sr: int = 16000) -> float:
        return self.start / sr

    def end_s(self, sr: int = 16000) -> float:
        return self.end / sr


def plan_windows(num_samples: int, window_s: float, overlap_s: float, sr: int = 16000, stride: int = 320,
                 align: int = 640, frames_for: Callable[[int], int] | None = None) -> list[Window]:
    """Windows covering [0, num_samples) whose keep ranges tile [0, frames_for(num_samples)) exactly.

    The fewest windows of at most `window_s` that overlap by at least `overlap_s` (both rounded to `align`;
    the overlap is at least `align` samples: a window's last conv frame needs receptive-field samples past its
    start), all of one length L (the last one ends exactly at num_samples, up to `align` shorter): a 60 s item
    in 30 s windows is three ~22 s windows (64 s of model input), not two full ones plus a full last one
    (90 s), and equal lengths batch without padding. (Windows barely longer than the overlap fall back to
    full windows at a regular hop.) Starts are multiples of `align`. `frames_for` maps a
    sample count to the model's frame count (default: the SEW conv stack); it must be the model's own
    formula for stitching to be exact.
    """
    if align % stride:
        raise ValueError(f"align ({align}) must be a multiple of stride ({stride})")
    frames_for = frames_for or conv_frames
    n = int(num_samples)
    total = frames_for(n)
    win = max(align, int(window_s * sr) // align * align)
    overlap = max(align, math.ceil(overlap_s * sr / align) * align)
    if overlap >= win:
        raise ValueError(f"overlap_s ({overlap_s}) must be shorter than window_s ({window_s}) "
                         f"after aligning to {align} samples")
    if n <= win:
        return [Window(0, 0, n, 0, total, stride)]
    hop = win - overlap
    if hop < 3 * align:  # too tight to spread evenly: regular hops of `win`
        length, starts = win, list(range(0, n - win, hop))
    else:
        count = -(-(n - overlap) // hop)  # fewest windows of `win` with `overlap` between them
        while True:
            # L: the shared length, with one `align` of slack so rounding starts down keeps every overlap
            length = -(-(n + (count - 1) * overlap) // (count * align)) * align + align
            if length <= win:
                break
            count += 1
        starts = [(k * (n - length) // (count - 1)) // align * align for k in range(count - 1)]
    starts.append(-(-(n - length) // align) * align)  # the last window ends exactly at n
    bounds = [(s, min(s + length, n)) for s in starts]
    # Boundary between neighbours: the middle of their overlap, where both are equally central.
    cuts = [0]
    for (s0, e0), (s1, _) in zip(bounds, bounds[1:]):
        cuts.append(min(total, max(cuts[-1], round((s1 + e0) / 2 / stride))))
    cuts.append(total)
    windows = [Window(i, s, e, cuts[i], cuts[i + 1], stride) for i, (s, e) in enumerate(bounds)]
    for w in windows:  # keep ranges must be frames the window actually produces
        lo, hi = w.local_keep
        if lo < 0 or hi > frames_for(w.end - w.start):
            raise ValueError(f"window {w} cannot produce its keep range; increase overlap_s")
    return windows


def stitch_frames(parts: Sequence[tuple[Window, Any]]) -> Any:
    """Concatenate each window's kept frames, in window order. Frames: [F_i, ...] numpy arrays or
    torch tensors (argmax ids or logits); a window's output may be longer than its valid frames
    (batch padding) -- only the keep slice is read."""
    parts = sorted(parts, key=lambda p: p[0].index)
    pieces = []
    for w, frames in parts:
        lo, hi = w.local_keep
        if hi > len(frames):
            raise ValueError(f"window {w.index} has {len(frames)} frames, needs {hi}")
        pieces.append(frames[lo:hi])
    if not pieces:
        raise ValueError("nothing to stitch")
    if hasattr(pieces[0], "numpy") and hasattr(pieces[0], "dim"):  # torch, without importing it here
        import torch
        return torch.cat(pieces, dim=0)
    import numpy as np
    return np.concatenate(pieces, axis=0)
