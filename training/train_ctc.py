"""Train the demo CTC model (SEWForCTC, LibriSpeech 32-symbol vocabulary) on synthetic speech.

First generation: espeak-ng sentences of the demo grammar (set ctc_train). Second generation (issue 16):
general English in several engines (training/synth_general.py, set gen_train), fine-tuned from the first
model (--init), with atoms joined into 1-30 s utterances (--p-join, training/compose.py) and room reverb.

Resumable at any point: one state file (default training/work/ctc_resume.pt) holds weights, optimizer, step,
epoch position and best metrics; it is replaced atomically every --save-every-s seconds. Rerun the same command
(or pass --state training/state/ctc_resume.pt) to continue. --steps may be raised on resume (the cosine schedule
is then stretched from the current step on).
Run: nohup nice -n 10 python -m training.train_ctc > training/work/train_ctc.out 2>&1 &
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import time
from pathlib import Path

import jiwer
import numpy as np
import torch

from sew_pipeline.models import SEWConfig, SEWForCTC
from sew_pipeline.models.fast import cpu_has_native_bf16
from training.common import (WORK, Meter, UttSet, collate, greedy_decode, load_state, log, lr_at, param_count,
                             save_compact_state, save_state)
from training.loader import Recipe, stream

SR = 16000
COMMITTED = Path(__file__).resolve().parent / "state"  # resume files carried between sessions (same name)


def ctc_config() -> SEWConfig:
    return SEWConfig(
        vocab_size=32, hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024,
        squeeze_factor=2, conv_dim=(64, 64, 64, 64, 64, 128, 128), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2), num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=16,
        hidden_dropout=0.05, activation_dropout=0.05, attention_dropout=0.05, feat_proj_dropout=0.05,
        final_dropout=0.05, layerdrop=0.0, mask_time_prob=0.05, mask_time_length=10, mask_time_min_masks=2,
        ctc_loss_reduction="mean", ctc_zero_infinity=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


_LAYER_KEY = re.compile(r"^(.*\.layers\.)(\d+)(\..*)$")


def depth_of(state_dict: dict[str, torch.Tensor]) -> int:
    return 1 + max(int(m.group(2)) for k in state_dict if (m := _LAYER_KEY.match(k)))


def at_depth(model: SEWForCTC, layers: int) -> SEWForCTC:
    """``model`` with ``layers`` transformer layers, by progressive stacking (Gong et al., 2019): new layer i starts
    as old layer i * old // layers (each duplicated in place), everything else copied. Post-LN layers have no
    identity initialisation, so this is not function-preserving, but it starts far nearer the old model's loss than
    new layers would: capacity added to a run without starting over (see training/README.md)."""
    old = model.config.num_hidden_layers
    if layers == old:
        return model
    grown = SEWForCTC(dataclasses.replace(model.config, num_hidden_layers=layers))
    src, sd = model.state_dict(), {}
    for k, v in src.items():
        m = _LAYER_KEY.match(k)
        if m is None:
            sd[k] = v
        elif int(m.group(2)) == 0:
            for i in range(layers):
                sd[f"{m.group(1)}{i}{m.group(3)}"] = src[f"{m.group(1)}{i * old // layers}{m.group(3)}"].clone()
    grown.load_state_dict(sd)
    return grown


def with_weights(model: SEWForCTC, weights: dict[str, torch.Tensor]) -> SEWForCTC:
    """``model`` at the depth of ``weights`` (a state saved after a --layers growth), with them loaded."""
    model = at_depth(model, depth_of(weights))
    model.load_state_dict(weights)
    return model


def train_step(model: SEWForCTC, opt: torch.optim.Optimizer, x: torch.Tensor, m: torch.Tensor, y: torch.Tensor,
               clip: float, bf16: bool) -> tuple[torch.Tensor, float]:
    """One optimizer step. bf16 autocast runs the matmuls / convolutions in bf16 (AMX); the weights, their
    gradients, AdamW and the CTC log-probs stay fp32, so no loss scaling is needed (bf16 has fp32's range)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(x, attention_mask=m, labels=y).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
    if torch.isfinite(loss):
        opt.step()
    return loss, gn


@torch.no_grad()
def transcribe(model: SEWForCTC, waves: list[np.ndarray], max_samples: int = 16000 * 120) -> list[str]:
    model.eval()
    order = np.argsort([w.size for w in waves])
    out: dict[int, str] = {}
    i = 0
    while i < len(order):
        j = i + 1
        while j < len(order) and waves[order[j]].size * (j - i + 1) <= max_samples:
            j += 1
        idx = order[i:j]
        x, m = collate([waves[k] for k in idx])
        ids = model(x, attention_mask=m).logits.argmax(-1).numpy()
        lens = model.output_lengths(m.sum(-1)).tolist()
        for k, row, n in zip(idx, ids, lens):
            out[int(k)] = greedy_decode(row[: int(n)])
        i = j
    model.train()
    return [out[k] for k in range(len(waves))]


def error_rates(refs: list[str], hyps: list[str]) -> tuple[float, float]:
    refs = [r.upper() for r in refs]
    hyps = [h.upper() if h.strip() else "<EMPTY>" for h in hyps]
    return float(jiwer.cer(refs, hyps)), float(jiwer.wer(refs, hyps))


def evaluate_sets(model: SEWForCTC, sets: dict[str, UttSet], limit: int | None = None) -> dict[str, tuple[float, float]]:
    res = {}
    for name, s in sets.items():
        n = len(s) if limit is None else min(limit, len(s))
        hyps = transcribe(model, [s.audio(i) for i in range(n)])
        res[name] = error_rates([s.rows[i]["text"] for i in range(n)], hyps)
    return res


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--lr", type=float, default=7e-4)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--batch-seconds", type=float, default=64.0)
    ap.add_argument("--state", type=Path, default=WORK / "ctc_resume.pt")
    ap.add_argument("--save-every-s", type=float, default=300.0)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--max-minutes", type=float, default=0.0, help="stop (after saving) after this long; 0 = no limit")
    ap.add_argument("--p-speed", type=float, default=0.5, help="probability of speed/formant perturbation (0.85-1.2)")
    ap.add_argument("--train-set", default="ctc_train")
    ap.add_argument("--eval-sets", default="heldout=ctc_heldout,dev_seenvoice=ctc_dev_seenvoice",
                    help="name=set pairs evaluated and logged every --eval-every steps (none selects a checkpoint)")
    ap.add_argument("--init", type=Path, default=None, help="start a new run from this exported CTC folder")
    ap.add_argument("--p-join", type=float, default=0.0, help="probability an utterance joins several atoms")
    ap.add_argument("--max-utt-s", type=float, default=30.0, help="longest joined utterance")
    ap.add_argument("--p-room", type=float, default=0.0, help="probability of synthetic room reverb + mic tilt")
    ap.add_argument("--restart-at", type=int, default=0,
                    help="from this step on, a new cycle: warm-up to --lr, cosine to --steps (stateless, so resumes "
                         "keep it); for continuing a run whose cosine has reached its floor")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads; on a CPU shared with other jobs 1 can be 2-3x faster (no barrier stalls)")
    ap.add_argument("--layers", type=int, default=0,
                    help="grow the model to this many transformer layers (stacking copies of its layers) and go on "
                         "training; 0 = keep the depth of the state / --init model")
    ap.add_argument("--loader-workers", type=int, default=0,
                    help="processes building the next batches while the model trains (0: in the training process; "
                         "on 2 cores a worker gained nothing: it takes its CPU from the model's threads)")
    ap.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                    help="bf16 autocast for forward + backward (weights, optimizer and CTC loss stay fp32); "
                         "auto = on where the CPU has native bf16 (AMX / avx512_bf16), else emulated and slower")
    ap.add_argument("--freeze-encoder", action="store_true",
                    help="leave the convolutional front end as it is (no gradient through it: 1.2-1.4x per step in "
                         "fp32, same loss over 100 steps); for a run whose front end has long converged")
    ap.add_argument("--commit", action="store_true",
                    help="write --state to training/state/ under the same name in the compact committed form "
                         "(bf16 optimizer moments) and exit")
    a = ap.parse_args(argv)
    if a.commit:
        if not a.state.exists():
            raise SystemExit(f"--commit: no resume state at {a.state}")
        save_compact_state(COMMITTED / a.state.name, load_state(a.state))
        log(f"committed form of {a.state} written to {COMMITTED / a.state.name}")
        return COMMITTED / a.state.name
    torch.set_num_threads(a.threads)
    use_bf16 = a.bf16 == "on" or (a.bf16 == "auto" and cpu_has_native_bf16())
    torch.manual_seed(0)
    run = a.state.stem.removesuffix("_resume")  # ctc_resume.pt -> train_ctc.log, ctc_last/ (as before)
    logfile = WORK / f"train_{run}.log"
    train = UttSet(a.train_set)
    evals = {k: UttSet(v) for k, v in (pair.split("=") for pair in a.eval_sets.split(","))}
    noise = np.load(WORK / "noise" / "noise_train.npy")
    model = SEWForCTC.from_pretrained(a.init) if a.init else SEWForCTC(ctc_config())
    st = load_state(a.state) or {}
    if not st and (COMMITTED / a.state.name).exists():  # fresh machine: continue from the file committed to git
        st = load_state(COMMITTED / a.state.name) or {}
        log(f"no {a.state}; continuing from committed {COMMITTED / a.state.name}", logfile)
    if st:
        model = with_weights(model, st["model"])
    grow = bool(a.layers) and a.layers != model.config.num_hidden_layers
    if grow:
        log(f"growing {model.config.num_hidden_layers} -> {a.layers} layers (stacking); new AdamW state", logfile)
        model = at_depth(model, a.layers)
    if a.freeze_encoder:
        model.freeze_feature_encoder()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01, betas=(0.9, 0.98), eps=1e-8)
    step, epoch, pos, wall = st.get("step", 0), st.get("epoch", 0), st.get("pos", 0), st.get("wall_s", 0.0)
    sched_from, sched_total = st.get("sched_from", 0), st.get("sched_total", a.steps)
    sched_base = st.get("sched_base", a.lr)
    history: list = list(st.get("history", []))

    def lr_now(s: int) -> float:
        if a.restart_at and s >= a.restart_at:
            return lr_at(s - a.restart_at, a.lr, a.warmup, a.steps - a.restart_at)
        if sched_from == 0:
            return lr_at(s, a.lr, a.warmup, sched_total)
        # Resumed with a new total: continue from the lr reached, cosine down over the remaining steps.
        t = (s - sched_from) / max(1, sched_total - sched_from)
        return float(0.05 * a.lr + (sched_base - 0.05 * a.lr) * 0.5 * (1 + np.cos(np.pi * min(1.0, t))))

    if st:
        if not grow:
            opt.load_state_dict(st["opt"])
        if a.steps != sched_total and not a.restart_at:  # stretch the remaining cosine instead of jumping the lr
            sched_base = lr_now(step)
            sched_from, sched_total = step, a.steps
        log(f"resumed {a.state} at step {step} (epoch {epoch}, batch {pos}, {wall / 60:.1f} min trained)", logfile)
    log(f"CTC model {param_count(model) / 1e6:.2f}M params; train {len(train)} atoms "
        f"({sum(r['num_samples'] for r in train.rows) / SR / 3600:.1f} h); target steps {a.steps}; "
        f"bf16 autocast {'on' if use_bf16 else 'off'}; front end {'frozen' if a.freeze_encoder else 'trained'}", logfile)
    recipe = Recipe(max_samples=int(a.batch_seconds * SR), p_join=a.p_join, max_utt_s=a.max_utt_s,
                    p_speed=a.p_speed, p_room=a.p_room)
    batches = stream(train, recipe, noise, epoch, pos, workers=a.loader_workers)
    meter, t_save, t_start = Meter(), time.time(), time.time()
    last = WORK / f"{run}_last"

    def save() -> None:
        save_state(a.state, model=model.state_dict(), opt=opt.state_dict(), step=step, epoch=epoch, pos=pos,
                   wall_s=wall + time.time() - t_start, sched_from=sched_from, sched_total=sched_total,
                   sched_base=sched_base, history=history)

    model.train()
    while step < a.steps:
        epoch, pos, (x, m, y) = next(batches)
        for g in opt.param_groups:
            g["lr"] = lr_now(step)
        loss, gn = train_step(model, opt, x, m, y, a.clip, use_bf16)
        step += 1
        meter.add(loss.item(), float(m.sum()) / SR, gn)
        if step % 50 == 0:
            log(f"ctc step {step}/{a.steps} ep {epoch} {meter.line()} lr {opt.param_groups[0]['lr']:.2e} "
                f"trained {(wall + time.time() - t_start) / 60:.1f} min", logfile)
            meter.reset()
        if step % a.eval_every == 0 or step == a.steps:
            t_ev = time.time()
            res = evaluate_sets(model, evals, limit=None if step % (a.eval_every * 4) == 0 or step == a.steps else 150)
            history.append({"step": step, "minutes": (wall + time.time() - t_start) / 60,
                            **{f"{k}_{m_}": v[j] for k, v in res.items() for j, m_ in enumerate(("cer", "wer"))}})
            log(f"ctc step {step} EVAL " + " ".join(f"{k}: CER {c:.3f} WER {w:.3f}" for k, (c, w) in res.items())
                + f" ({time.time() - t_ev:.0f}s)", logfile)
            model.save_pretrained(last)
        if time.time() - t_save > a.save_every_s:
            save()
            t_save = time.time()
        if a.max_minutes and time.time() - t_start > a.max_minutes * 60:
            break
    batches.close()  # stops the loader's worker
    save()
    model.save_pretrained(last)
    log(f"ctc stopped at step {step}, {(wall + time.time() - t_start) / 60:.1f} min trained", logfile)
    return last


if __name__ == "__main__":
    main()
