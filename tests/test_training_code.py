"""Fast checks of the demo-model training code (no espeak-ng, no synthesized data, tiny shapes)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from sew_pipeline.models import CTCTokenizer, SEWConfig, SEWForCTC
from training.common import (VOCAB, UttSet, augment, collate, encode_text, greedy_decode, load_state, lr_at, save_state,
                             ulaw)
from training.grammar import Grammar, emitted_words
from training.loader import EpochBatches, Recipe, make_batches, stream
from training.synth import KEYWORDS, KWS_EXCLUDE, split_voices
from training.train_ctc import at_depth, depth_of, train_step


def test_grammar_is_deterministic_and_in_vocabulary():
    a = [Grammar(random.Random(3)).sentence() for _ in range(1)]
    b = [Grammar(random.Random(3)).sentence() for _ in range(1)]
    assert a == b
    g, vocab = Grammar(random.Random(0)), emitted_words()
    words = {w for _ in range(500) for w in g.sentence().split()}
    assert words <= vocab, words - vocab
    assert all(ch in VOCAB or ch == " " for w in words for ch in w.upper())


def test_voice_split_is_disjoint_and_keeps_every_accent_and_variant_in_training():
    train, held = split_voices()
    assert not set(train) & set(held) and len(held) == 16
    assert {v.split("+")[0] for v in held} <= {v.split("+")[0] for v in train}
    assert {v.split("+")[1] for v in held} <= {v.split("+")[1] for v in train if "+" in v}
    assert set(KEYWORDS) <= KWS_EXCLUDE


def test_text_roundtrip_matches_shipped_tokenizer_rule():
    ids = encode_text("it's a dog")
    frames = np.array([0] + [x for i in ids for x in (i, i, 0)])  # repeats + blanks between
    assert greedy_decode(frames) == "IT'S A DOG"
    assert CTCTokenizer(VOCAB).decode(frames.tolist()) == "IT'S A DOG"


def test_batches_cover_everything_once_and_respect_budget():
    lengths = np.random.default_rng(0).integers(8000, 80000, 500)
    batches = make_batches(lengths, 64 * 16000, seed=1)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))
    assert all(lengths[b].max() * len(b) <= 64 * 16000 or len(b) == 1 for b in batches)


def test_augment_and_ulaw_keep_shape_and_range():
    rng = np.random.default_rng(0)
    y = (0.3 * np.sin(np.arange(16000) / 10)).astype(np.float32)
    noise = rng.standard_normal((3, 48000)).astype(np.float32)
    for _ in range(20):
        z = augment(y, rng, noise, p_noise=1.0, p_tel=0.5)
        assert z.shape == y.shape and z.dtype == np.float32 and np.abs(z).max() <= 1.0
    assert np.abs(ulaw(y) - y).max() < 0.02
    assert lr_at(0, 1.0, 10, 100) == 0.1 and abs(lr_at(100, 1.0, 10, 100) - 0.05) < 1e-9


def _tiny_ctc_batch() -> tuple[SEWConfig, torch.Tensor, torch.Tensor, torch.Tensor]:
    cfg = SEWConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    conv_dim=(8, 8, 8, 8, 8, 8, 8), conv_stride=(5, 2, 2, 2, 2, 2, 2),
                    conv_kernel=(10, 3, 3, 3, 3, 2, 2), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                    mask_time_prob=0.0, layerdrop=0.0, ctc_zero_infinity=True)
    rng = np.random.default_rng(0)
    x, m = collate([rng.standard_normal(n).astype(np.float32) for n in (16000, 12000)])
    labs = [encode_text("ab"), encode_text("c d")]
    y = torch.full((2, 3), -100, dtype=torch.long)
    for k, t in enumerate(labs):
        y[k, : len(t)] = torch.tensor(t)
    return cfg, x, m, y


def test_tiny_ctc_steps_and_resume_file(tmp_path: Path):
    torch.manual_seed(0)
    cfg, x, m, y = _tiny_ctc_batch()
    model = SEWForCTC(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = model(x, attention_mask=m, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    save_state(tmp_path / "s.pt", model=model.state_dict(), opt=opt.state_dict(), step=3)
    st = load_state(tmp_path / "s.pt")
    fresh = SEWForCTC(cfg)
    trained = model.state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in fresh.state_dict().items())  # a fresh init differs
    fresh.load_state_dict(st["model"])
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    fresh_opt.load_state_dict(st["opt"])
    assert st["step"] == 3 and not (tmp_path / "s.tmp").exists()
    reloaded = fresh.state_dict()
    assert reloaded.keys() == trained.keys()
    assert all(torch.equal(reloaded[k], v) for k, v in trained.items())  # every weight, bit for bit
    # The resumed run continues exactly as the uninterrupted one would: same weights and Adam moments, so one
    # more step (same dropout draws) lands on the same weights.
    for net, optim in ((model, opt), (fresh, fresh_opt)):
        torch.manual_seed(7)
        loss = net(x, attention_mask=m, labels=y).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())


def test_bf16_autocast_step_trains_fp32_weights_on_nearly_the_fp32_loss():
    """--bf16: the forward runs in bf16 (its loss differs from fp32's in the low bits, but not by more), while
    the weights, their gradients and AdamW's moments stay fp32, and the steps lower the loss."""
    cfg, x, m, y = _tiny_ctc_batch()
    cfg.hidden_dropout = cfg.activation_dropout = cfg.attention_dropout = cfg.feat_proj_dropout = 0.0
    cfg.final_dropout = 0.0  # deterministic: the fp32 and first bf16 losses differ by precision alone
    torch.manual_seed(0)
    model = SEWForCTC(cfg)
    with torch.no_grad():
        fp32 = model(x, attention_mask=m, labels=y).loss.item()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = [train_step(model, opt, x, m, y, clip=1.0, bf16=True)[0] for _ in range(6)]
    assert all(loss.dtype == torch.float32 for loss in losses)
    assert losses[0].item() != fp32 and losses[0].item() == pytest.approx(fp32, rel=0.02)
    assert losses[-1].item() < losses[0].item()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(v.dtype == torch.float32 for st in opt.state.values() for v in st.values() if v.is_floating_point())


def test_growing_depth_stacks_copies_of_each_layer_and_keeps_everything_else():
    cfg, x, m, y = _tiny_ctc_batch()
    cfg.num_hidden_layers = 2
    torch.manual_seed(0)
    model = SEWForCTC(cfg)
    assert at_depth(model, 2) is model
    grown = at_depth(model, 5)
    old, new = model.state_dict(), grown.state_dict()
    assert grown.config.num_hidden_layers == 5 and depth_of(new) == 5 and depth_of(old) == 2
    layer_keys = [k for k in new if ".layers." in k]
    assert {k for k in new if k not in layer_keys} == {k for k in old if ".layers." not in k}
    assert all(torch.equal(new[k], old[k]) for k in new if k not in layer_keys)
    for i, j in enumerate((0, 0, 0, 1, 1)):  # new layer i starts as old layer i * 2 // 5
        for k in old:
            if f".layers.{j}." in k:
                assert torch.equal(new[k.replace(f".layers.{j}.", f".layers.{i}.")], old[k]), (i, k)
    q = next(k for k in new if ".layers.1." in k and k.endswith("weight"))
    with torch.no_grad():
        grown.state_dict()[q].add_(1.0)  # copies, not shared tensors: layers train apart
    assert not torch.equal(grown.state_dict()[q], grown.state_dict()[q.replace(".layers.1.", ".layers.0.")])
    opt = torch.optim.AdamW(grown.parameters(), lr=1e-3)
    assert torch.isfinite(train_step(grown, opt, x, m, y, clip=1.0, bf16=False)[0])


def test_unknown_words_split_is_disjoint_and_piper_uses_only_training_words():
    from training.piper_synth import piper_jobs
    from training.synth import unknown_words
    train_w, held_w = unknown_words()
    assert len(held_w) == 120 and not set(train_w) & set(held_w)
    assert not (set(train_w) | set(held_w)) & KWS_EXCLUDE
    jobs, meta = piper_jobs("kws_piper", per_kw=3, n_unknown=50, seed=1)
    assert len(jobs) == len(meta) == 3 * len(KEYWORDS) + 50
    unknown = {m["text"] for m in meta if m["label"] == "_unknown_"}
    assert unknown and unknown <= set(train_w)
    assert all(0.75 <= j[2] <= 1.45 for j in jobs)  # length scales as documented in the model card


def test_kws_sampler_mixes_the_extra_set_at_the_requested_share(tmp_path: Path):
    from training.synth import KWS_LABELS
    from training.train_kws import KwsSampler

    class CountingSet(UttSet):
        """An UttSet that records how many clips were read from it."""
        reads = 0

        def audio(self, i: int) -> np.ndarray:
            self.reads += 1
            return super().audio(i)

    def make_set(name: str) -> CountingSet:
        labels = KEYWORDS * 2 + ["_unknown_"] * 4
        rows = [{"id": f"{name}{i}", "label": lab, "text": lab, "offset": i * 4000, "num_samples": 4000}
                for i, lab in enumerate(labels)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        np.full(4000 * len(rows), 3000, np.int16).tofile(tmp_path / f"{name}.bin")
        return CountingSet(name, work=tmp_path)

    base, extra = make_set("espeak"), make_set("piper")
    sampler = KwsSampler(base, np.zeros((4, 24000), np.float32), seed=0, extra=extra, p_extra=0.35)
    _, labels = sampler.batch(600)
    words = sum(lab != KWS_LABELS.index("_silence_") for lab in labels)
    assert base.reads + extra.reads == words
    assert 0.28 < extra.reads / words < 0.42
    alone = make_set("espeak_only")
    KwsSampler(alone, np.zeros((4, 24000), np.float32), seed=0, p_extra=0.35).batch(50)
    assert alone.reads > 0  # without an extra set every word comes from the base set


def test_reverberate_keeps_length_and_peak_and_adds_a_tail():
    from training.common import reverberate
    y = np.zeros(16000, np.float32)
    y[1000:1400] = np.sin(np.arange(400) / 3).astype(np.float32) * 0.5
    out = reverberate(y, np.random.default_rng(0))
    assert out.shape == y.shape and out.dtype == np.float32
    assert np.isclose(np.abs(out).max(), 0.5, rtol=1e-4)
    assert np.abs(out[2000:6000]).max() > 1e-4  # energy after the dry signal ended: the room's tail


def test_joined_utterances_use_every_atom_once_within_one_voice_and_the_length_cap():
    from training.compose import assemble, plan_epoch, text_of
    rng = random.Random(0)
    rows = [{"voice": f"v{i % 3}", "num_samples": rng.randint(8000, 80000), "text": f"W{i}"} for i in range(300)]
    utts = plan_epoch(rows, seed=4, p_join=0.7, max_s=12.0)
    assert sorted(i for u in utts for i in u.atoms) == list(range(300))  # each atom exactly once per epoch
    assert all(len({rows[i]["voice"] for i in u.atoms}) == 1 for u in utts)  # one talker per utterance
    assert max(u.num_samples for u in utts) <= 12 * 16000 and sum(len(u.atoms) > 1 for u in utts) > 20
    assert utts == plan_epoch(rows, seed=4, p_join=0.7, max_s=12.0)  # a resumed run rebuilds the same epoch
    assert all(len(u.atoms) == 1 for u in plan_epoch(rows, seed=4, p_join=0.0))
    u = next(u for u in utts if len(u.atoms) == 3)
    wave = assemble(u, lambda i: np.full(rows[i]["num_samples"], 0.5, np.float32), np.random.default_rng(0))
    assert wave.size == u.num_samples and text_of(u, rows) == " ".join(rows[i]["text"] for i in u.atoms)
    first = rows[u.atoms[0]]["num_samples"]
    pause = wave[first: first + u.pauses[0]]
    assert 1e-5 < np.abs(pause).max() < 0.01  # faint noise between sentences, not digital silence nor speech


def test_demo_recipe_cycles_hand_over_at_each_start_and_end_at_the_requested_steps():
    from training import train_demo

    def flag(args, name):
        return int(args[args.index(name) + 1])
    cycles = [train_demo.cycle_args(k, 35000) for k in range(len(train_demo.GEN_CYCLES))]
    assert flag(cycles[0], "--restart-at") == 0 and flag(cycles[-1], "--steps") == 35000
    for before, after in zip(cycles, cycles[1:]):
        assert flag(before, "--steps") == flag(after, "--restart-at") > flag(before, "--restart-at")
    # A cycle that grows the model or freezes its front end says so; the others leave depth and front end alone.
    for c, args in zip(train_demo.GEN_CYCLES, cycles):
        assert ("--layers" in args) == ("layers" in c) and ("--freeze-encoder" in args) == bool(c.get("freeze_encoder"))
        if "layers" in c:
            assert flag(args, "--layers") == c["layers"]
    assert any("layers" in c for c in train_demo.GEN_CYCLES)


def test_compact_state_keeps_weights_exact_and_moments_close_in_half_the_optimizer_bytes(tmp_path: Path):
    from training.common import save_compact_state
    torch.manual_seed(0)
    cfg, x, m, y = _tiny_ctc_batch()
    model = SEWForCTC(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(x, attention_mask=m, labels=y).loss.backward()
        opt.step()
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": 2}
    save_state(tmp_path / "full.pt", **state)
    save_compact_state(tmp_path / "compact.pt", state)
    full, compact = load_state(tmp_path / "full.pt"), load_state(tmp_path / "compact.pt")
    moment_bytes = sum(v.nbytes for s in full["opt"]["state"].values() for k, v in s.items() if k != "step")
    saved = (tmp_path / "full.pt").stat().st_size - (tmp_path / "compact.pt").stat().st_size
    assert saved > 0.45 * moment_bytes, (saved, moment_bytes)  # the fp32 moments stored in half the bytes
    assert all(torch.equal(compact["model"][k], v) for k, v in full["model"].items())  # weights bit for bit
    fresh = SEWForCTC(cfg)
    fresh.load_state_dict(compact["model"])
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    fresh_opt.load_state_dict(compact["opt"])
    reloaded = fresh_opt.state_dict()["state"]
    for i, ref in full["opt"]["state"].items():
        got = reloaded[i]
        assert torch.equal(got["step"], ref["step"])
        for key in ("exp_avg", "exp_avg_sq"):  # back in fp32, within bf16's rounding (fp16 would flush these)
            assert got[key].dtype == torch.float32
            assert torch.allclose(got[key], ref[key], rtol=1 / 128, atol=1e-30), key


def _tiny_set(work: Path) -> UttSet:
    """40 atoms of two voices (0.3-1.2 s of noise-like samples) in the synthesized-set layout."""
    rng = np.random.default_rng(5)
    rows, chunks, offset = [], [], 0
    for i in range(40):
        n = int(rng.integers(4800, 19200))
        chunks.append((rng.standard_normal(n) * 3000).astype(np.int16))
        rows.append({"text": f"WORD {i}", "voice": f"v{i % 2}", "offset": offset, "num_samples": n})
        offset += n
    np.concatenate(chunks).tofile(work / "tiny.bin")
    (work / "tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return UttSet("tiny", work)


def test_loader_worker_and_resume_give_the_batches_of_one_uninterrupted_run(tmp_path: Path):
    train = _tiny_set(tmp_path)
    recipe = Recipe(max_samples=8 * 16000, p_join=0.5, max_utt_s=6.0, p_speed=0.5, p_room=0.5)
    noise = np.random.default_rng(1).standard_normal((2, 32000)).astype(np.float32)
    n_epoch = len(EpochBatches(train, 0, recipe, noise))
    run = stream(train, recipe, noise, epoch=0, pos=0, workers=0)
    ref = [next(run) for _ in range(n_epoch + 3)]  # into the second epoch
    run.close()
    assert [e for e, _, _ in ref] == [0] * n_epoch + [1] * 3 and ref[n_epoch - 1][1] == n_epoch
    texts = sorted(t for _, _, (_, _, y) in ref[:n_epoch] for t in _label_texts(y))
    assert " ".join(texts).count("WORD") == 40  # every atom once per epoch, joined or alone
    with_worker = stream(train, recipe, noise, epoch=0, pos=0, workers=1)
    resumed = stream(train, recipe, noise, epoch=0, pos=n_epoch - 2, workers=1)  # a run resumed near an epoch end
    got, got_resumed = [next(with_worker) for _ in range(n_epoch + 3)], [next(resumed) for _ in range(5)]
    with_worker.close()
    resumed.close()
    for (e, p, batch), (e2, p2, batch2) in list(zip(ref, got)) + list(zip(ref[n_epoch - 2:], got_resumed)):
        assert (e, p) == (e2, p2) and all(torch.equal(a, b) for a, b in zip(batch, batch2))
    x, m, y = ref[0][2]
    assert x.shape == m.shape and x.shape[0] == y.shape[0] and int(m.sum(-1).max()) == x.shape[1]
    assert not torch.equal(ref[0][2][0][0], ref[n_epoch][2][0][0])  # a new epoch draws new batches


def _label_texts(y: torch.Tensor) -> list[str]:
    inv = {i: c for c, i in VOCAB.items()}
    return ["".join(" " if int(i) == VOCAB["|"] else inv[int(i)] for i in row if i >= 0) for row in y]
