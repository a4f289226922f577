"""Window planning and stitching, including logits parity of a chunked run against the unchunked one."""
from __future__ import annotations

import random

import numpy as np
import pytest
import soundfile as sf
import torch

from sew_pipeline.chunking import Window, conv_frames, plan_windows, stitch_frames
from tests.support.paths import LIBRISPEECH_ROOT


def check_plan(n: int, window_s: float, overlap_s: float, sr: int = 16000) -> list[Window]:
    ws = plan_windows(n, window_s, overlap_s, sr=sr)
    total = conv_frames(n)
    assert ws[0].start == 0 and ws[-1].end == n
    assert ws[0].keep_start_frame == 0 and ws[-1].keep_end_frame == total
    for a, b in zip(ws, ws[1:]):
        assert a.keep_end_frame == b.keep_start_frame  # no gap, no overlap
        assert a.start < b.start and b.start < a.end  # windows overlap, so nothing is uncovered
    win = max(640, int(window_s * sr) // 640 * 640)
    overlap = max(640, -(-int(overlap_s * sr) // 640) * 640)
    lengths = [w.end - w.start for w in ws]
    if len(ws) > 1 and win - overlap >= 3 * 640:
        assert max(lengths) - min(lengths) <= 640  # one length: windows batch without padding
        # model input is the audio plus the overlaps (each at most overlap + rounding), not full windows
        assert sum(lengths) <= n + (len(ws) - 1) * (overlap + 5 * 640)
        assert len(ws) <= -(-(n - overlap) // (win - overlap - 2 * 640))  # the fewest, but for rounding slack
    for w in ws:
        assert w.start % 640 == 0
        assert w.end - w.start <= max(640, int(window_s * sr) // 640 * 640) or len(ws) == 1
        lo, hi = w.local_keep
        assert 0 <= lo <= hi <= conv_frames(w.end - w.start)  # kept frames exist in this window's output
    return ws


def test_plan_tiles_frames_for_many_lengths():
    rng = random.Random(0)
    cases = [(n, 4.0, 1.0) for n in (1, 399, 400, 640, 64000, 64001, 64640, 200_000)]
    cases += [(rng.randint(1, 3_000_000), rng.uniform(0.5, 40), 0) for _ in range(300)]
    for n, w, o in cases:
        o = o or rng.uniform(0, 0.8 * w)
        try:
            check_plan(n, w, o)
        except ValueError as e:  # only when aligned overlap would not fit in the window
            assert "overlap" in str(e)


def test_keep_boundary_is_middle_of_overlap():
    ws = check_plan(10 * 16000, 4.0, 1.0)
    a, b = ws[0], ws[1]
    mid_frame = (b.start + a.end) / 2 / 320
    assert abs(a.keep_end_frame - mid_frame) <= 1
    # every kept frame is at least ~overlap/2 from its window's edges (except at the item's ends)
    for w in ws:
        if w.index > 0:
            assert (w.keep_start_frame - w.first_frame) * 320 >= 0.5 * 16000 - 640
        if w.index < len(ws) - 1:
            assert (w.first_frame + conv_frames(w.end - w.start) - w.keep_end_frame) * 320 >= 0.5 * 16000 - 640


def test_hours_long_call_plan():
    n = 2 * 3600 * 16000
    ws = check_plan(n, 30.0, 5.0)
    assert len(ws) == pytest.approx(7200 / 25, abs=2)


def test_stitch_picks_each_windows_keep_slice():
    n = 100_000
    glob = np.arange(conv_frames(n))
    ws = plan_windows(n, 1.5, 0.5)
    parts = [(w, glob[w.first_frame:w.first_frame + conv_frames(w.end - w.start)]) for w in ws]
    parts.reverse()  # order of arrival does not matter
    np.testing.assert_array_equal(stitch_frames(parts), glob)
    padded = [(w, np.concatenate([f, -np.ones(7, int)])) for w, f in parts]  # batch padding is ignored
    np.testing.assert_array_equal(stitch_frames(padded), glob)
    t = stitch_frames([(w, torch.as_tensor(f)) for w, f in parts])
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.as_tensor(glob))


def test_conv_frames_formula():
    assert conv_frames(400) == 1 and conv_frames(399) == 0 and conv_frames(16000) == 49
    for n in (400, 719, 720, 16000, 123457):
        assert conv_frames(n) == (n - 400) // 320 + 1


# ---- parity with the model ------------------------------------------------------------------------------
# SEW has global self-attention, so a chunked run can equal the unchunked one only for a model whose
# receptive field is local: no transformer layers (num_hidden_layers=0), per-frame LayerNorm in the
# feature encoder (GroupNorm would normalise over the whole sequence), a short positional conv, and no
# per-utterance input normalisation. With window overlap far wider than that receptive field and window
# starts aligned to 640 samples (conv stride 320 x squeeze 2), every kept frame sees exactly the samples
# it sees in the full run.

def parity_model():
    from sew_pipeline import models  # our own package: an import error is a failure, not a skip
    torch.manual_seed(0)
    cfg = models.SEWConfig(
        vocab_size=12, hidden_size=32, num_hidden_layers=0, num_attention_heads=2, intermediate_size=64,
        squeeze_factor=2, feat_extract_norm="layer", conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, final_dropout=0.0, layerdrop=0.0,
        apply_spec_augment=False)
    return cfg, models.SEWForCTC(cfg).eval()


def speech(seconds: float) -> np.ndarray:
    flacs = sorted(LIBRISPEECH_ROOT.rglob("*.flac"))
    x = np.concatenate([sf.read(f, dtype="float32")[0] for f in flacs])
    return x[:int(seconds * 16000)]


@torch.no_grad()
def test_stitched_logits_and_transcript_equal_unchunked_run():
    cfg, model = parity_model()
    x = speech(24.3)  # not a multiple of the window: the last window is shorter
    frames_for = lambda n: int(model.output_lengths(n))  # noqa: E731
    assert frames_for(len(x)) == conv_frames(len(x), cfg.conv_kernel, cfg.conv_stride)
    full = model(torch.from_numpy(x)[None]).logits[0]
    assert full.shape[0] == frames_for(len(x))

    windows = plan_windows(len(x), 4.0, 1.5, frames_for=frames_for)
    assert len(windows) >= 6
    parts = [(w, model(torch.from_numpy(x[w.start:w.end])[None]).logits[0]) for w in windows]
    stitched = stitch_frames(parts)
    assert stitched.shape == full.shape
    torch.testing.assert_close(stitched, full, atol=1e-4, rtol=0)

    # The frames are really window-dependent: without the keep ranges (naive concatenation of the
    # first frames of each hop) the result would differ near window edges.
    w1 = parts[1][1]
    naive = w1[:5]
    assert not torch.allclose(naive, full[windows[1].first_frame:windows[1].first_frame + 5], atol=1e-4)

    ids_full, ids_stitched = full.argmax(-1), stitched.argmax(-1)
    assert torch.equal(ids_full, ids_stitched)
    tok = ctc_tokenizer(cfg.vocab_size)
    text_full, words_full = tok.decode_words(ids_full.tolist(), seconds_per_frame=0.02, time_offset_s=12.0)
    text_st, words_st = tok.decode_words(ids_stitched.tolist(), seconds_per_frame=0.02, time_offset_s=12.0)
    assert text_full and text_st == text_full and words_st == words_full


def ctc_tokenizer(vocab_size: int):
    from sew_pipeline.models import CTCTokenizer
    tokens = ["<pad>", "<s>", "</s>", "<unk>", "|"] + list("ETAOINSHRDLU")
    return CTCTokenizer({t: i for i, t in enumerate(tokens[:vocab_size])})
