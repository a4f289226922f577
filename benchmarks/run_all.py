"""One performance table: our SEW fast paths vs the transformers reference, plus the pipeline around the model.

    .venv/bin/python benchmarks/run_all.py [--threads 2] [--repeats 3] [--quick] [--no-pipeline] [--json out.json]

Every comparison runs in this one process, interleaved (A B C A B C ...) after a warm-up, so background load hits
all contenders alike: trust the ratios; absolute audio-s/s move with the machine's load. The fp32/bf16 matmul
peaks are measured in the same run. Pipeline rows (benchmarks/pipeline_rows.py) run in subprocesses with their own
Ray. With a GPU, the model rows are repeated on it in absolute audio-s/s.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.model_forward import SHAPES  # noqa: E402
from sew_pipeline.models import SEWForCTC  # noqa: E402
from sew_pipeline.models.batching import (fixed_groups, grouped_forward, librispeech_like_durations,  # noqa: E402
                                          padded_fraction, plan_length_groups)
from sew_pipeline.models.fast import prepare_for_inference  # noqa: E402

SR = 16000
ROWS: list[dict] = []


def row(section: str, name: str, ours: str = "", ref: str = "", ratio: str = "", note: str = "") -> None:
    ROWS.append(dict(section=section, name=name, ours=ours, ref=ref, ratio=ratio, note=note))
    print(f"  {section} | {name} | {ours} | {ref} | {ratio} | {note}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ timing
def interleaved(fns: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None] = lambda: None,
                warmup: bool = True) -> dict[str, float]:
    """Median seconds per call of each fn, run alternately (after one warm-up each unless warmup=False)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for f in fns.values() if warmup else ():
            f()
        for _ in range(repeats):
            for k, f in fns.items():
                sync()
                t0 = time.perf_counter()
                f()
                sync()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def matmul_peaks(device: str, repeats: int) -> dict[str, float]:
    """GFLOP/s of large square GEMMs: fp32 via torch.mm (MKL on CPU) and oneDNN, bf16; best of the two per dtype."""
    n = 2048
    a32, b32 = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    fns = {"fp32 mm": lambda: a32 @ b32, "bf16 mm": lambda: a16 @ b16}
    if device == "cpu":  # oneDNN is what the fast path's Linear layers call
        fns["fp32 onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a32, b32, None, "none", [], "")
        fns["bf16 onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a16, b16, None, "none", [], "")
    t = interleaved(fns, max(repeats, 5), _sync(device))
    g = {k: 2 * n**3 / v / 1e9 for k, v in t.items()}
    return {"fp32": max(v for k, v in g.items() if k.startswith("fp32")),
            "bf16": max(v for k, v in g.items() if k.startswith("bf16")), **g}


def _sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


# ------------------------------------------------------------------ models
def build_pair(shape: str, device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """transformers SEWForCTC with random weights and our SEWForCTC loaded from its save_pretrained folder."""
    import transformers  # benchmark-only reference
    torch.manual_seed(0)
    ref = transformers.SEWForCTC(transformers.SEWConfig(vocab_size=32, **SHAPES[shape])).eval()
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        ours = SEWForCTC.from_pretrained(d).eval()
    return ours.to(device), ref.to(device)


def gflop_per_audio_s(model: torch.nn.Module, device: str) -> float:
    x = torch.randn(1, 10 * SR, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops() / 1e9 / 10


def autocast(device: str) -> contextlib.AbstractContextManager:
    return torch.autocast(device, dtype=torch.bfloat16)


def contenders(ours: torch.nn.Module, ref: torch.nn.Module, device: str, int8: bool) -> dict[str, torch.nn.Module]:
    out = {"ours fp32": prepare_for_inference(ours, "fp32"), "ours bf16": prepare_for_inference(ours, "bf16")}
    if int8 and device == "cpu":
        out["ours int8"] = prepare_for_inference(ours, "int8")
    return out


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


def equal_length_rows(shape: str, device: str, peaks: dict, args: argparse.Namespace) -> None:
    ours, ref = build_pair(shape, device)
    fast = contenders(ours, ref, device, int8=True)
    x = torch.randn(args.batch, int(args.seconds * SR), device=device)
    audio_s = args.batch * args.seconds
    gps = gflop_per_audio_s(ours, device)

    def tf_bf16():
        with autocast(device):
            return ref(x)
    fns = {"transformers fp32": lambda: ref(x), "transformers bf16 autocast": tf_bf16,
           **{k: (lambda m=m: m(x)) for k, m in fast.items()}}
    t = interleaved(fns, args.repeats, _sync(device))
    sec = f"{shape}, {args.batch} x {args.seconds:g} s, {device}"
    tput = {k: audio_s / v for k, v in t.items()}
    frac = lambda k, p: f"{gps * tput[k] / peaks[p]:.0%} of {p} peak"  # noqa: E731
    row(sec, "fp32: ours vs transformers (audio-s/s)", f"{tput['ours fp32']:.1f}", f"{tput['transformers fp32']:.1f}",
        f"{tput['ours fp32'] / tput['transformers fp32']:.2f}x",
        f"ours {gps * tput['ours fp32']:.0f} GFLOP/s = {frac('ours fp32', 'fp32')}; "
        f"transformers {frac('transformers fp32', 'fp32')}; {gps:.2f} GFLOP per audio-s")
    row(sec, "bf16: ours vs transformers autocast (audio-s/s)", f"{tput['ours bf16']:.1f}",
        f"{tput['transformers bf16 autocast']:.1f}",
        f"{tput['ours bf16'] / tput['transformers bf16 autocast']:.2f}x",
        f"ours {frac('ours bf16', 'bf16')}; transformers {frac('transformers bf16 autocast', 'bf16')}")
    with torch.inference_mode():
        base = ours(x[:2]).logits
        gates = {k: cosine(m(x[:2]).logits, base) for k, m in fast.items()}
    if "ours int8" in tput:
        row(sec, "int8 dynamic: ours vs transformers fp32 (audio-s/s)", f"{tput['ours int8']:.1f}",
            f"{tput['transformers fp32']:.1f}", f"{tput['ours int8'] / tput['transformers fp32']:.2f}x")
    row(sec, "logits cosine vs fp32 reference (random input)", " / ".join(f"{k.split()[1]} {v:.5f}"
                                                                           for k, v in gates.items()),
        note="gate >= 0.999")


def corpus_rows(device: str, args: argparse.Namespace) -> None:
    """Mixed lengths at equal batch size: transformers in corpus order vs ours grouped by duration."""
    ours, ref = build_pair("sew-tiny", device)
    fast = contenders(ours, ref, device, int8=False)
    durations = librispeech_like_durations(args.corpus_items, seed=7)
    g = torch.Generator().manual_seed(0)
    waves = [torch.randn(int(d * SR), generator=g) for d in durations]
    lengths = [len(w) for w in waves]
    audio_s = sum(lengths) / SR
    baseline = fixed_groups(len(waves), args.batch)
    grouped = plan_length_groups(lengths, batch_size=args.batch)

    def ref_pass(bf16: bool):
        from sew_pipeline.models.batching import pad_batch
        for grp in baseline:
            values, mask = pad_batch([waves[i] for i in grp])
            with autocast(device) if bf16 else contextlib.nullcontext():
                ref(values.to(device), attention_mask=mask.to(device))
    fns = {"transformers fp32": lambda: ref_pass(False), "transformers bf16 autocast": lambda: ref_pass(True),
           "ours fp32": lambda: grouped_forward(fast["ours fp32"], waves, grouped),
           "ours bf16": lambda: grouped_forward(fast["ours bf16"], waves, grouped)}
    t = interleaved(fns, max(1, args.repeats - 1), _sync(device), warmup=False)  # a pass is minutes: no warm-up
    tput = {k: audio_s / v for k, v in t.items()}
    sec = f"mixed-length corpus ({len(waves)} items, {durations.min():.0f}-{durations.max():.0f} s, " \
          f"{audio_s / 60:.1f} min), batch {args.batch}, {device}"
    note = (f"padded frames: transformers (corpus order) {padded_fraction(lengths, baseline):.0%}, "
            f"ours (grouped) {padded_fraction(lengths, grouped):.1%}")
    for p, r in (("fp32", "transformers fp32"), ("bf16", "transformers bf16 autocast")):
        row(sec, f"{p}: ours grouped vs transformers (audio-s/s)", f"{tput['ours ' + p]:.1f}", f"{tput[r]:.1f}",
            f"{tput['ours ' + p] / tput[r]:.2f}x", note)


def padding_rows() -> None:
    lengths = [int(d * SR) for d in librispeech_like_durations(5000, seed=11)]
    for batch in (8, 32):
        row("padding, 5000 LibriSpeech-like durations", f"padded-frame fraction, batch {batch}",
            f"{padded_fraction(lengths, plan_length_groups(lengths, batch_size=batch)):.1%} grouped",
            f"{padded_fraction(lengths, fixed_groups(len(lengths), batch)):.1%} corpus order")
    by_s = plan_length_groups(lengths, max_batch_samples=160 * SR)
    row("padding, 5000 LibriSpeech-like durations", "padded-frame fraction, batches <= 160 padded audio-s",
        f"{padded_fraction(lengths, by_s):.1%} grouped", note=f"{len(lengths) / len(by_s):.1f} items per batch")


# ------------------------------------------------------------------ output
def print_table(header: str) -> str:
    lines = [header, "", "| section | measurement | ours | reference | ratio | note |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['section']} | {r['name']} | {r['ours']} | {r['ref']} | {r['ratio']} | {r['note']} |" for r in ROWS]
    text = "\n".join(lines)
    print(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--corpus-items", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="sew-tiny only, fewer corpus items (smoke run)")
    ap.add_argument("--no-pipeline", action="store_true", help="skip the Ray pipeline rows")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.corpus_items, args.repeats = 16, 2
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        peaks = matmul_peaks(device, args.repeats)
        row(f"matmul peak, {device}", "GFLOP/s (2048^3 GEMM, best of MKL/oneDNN)", f"fp32 {peaks['fp32']:.0f}",
            note="; ".join(f"{k} {v:.0f}" for k, v in peaks.items() if " " in k) + f"; bf16 {peaks['bf16']:.0f}")
        for shape in (["sew-tiny"] if args.quick else ["sew-tiny", "sew-mid-like"]):
            equal_length_rows(shape, device, peaks, args)
        corpus_rows(device, args)
    padding_rows()
    if not args.no_pipeline:
        from benchmarks import pipeline_rows
        for r in pipeline_rows.run_all(threads=args.threads, quick=args.quick):
            row(**r)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    header = (f"SEW performance, {datetime.date.today()}, {cpu}, {args.threads} threads"
              f"{', ' + torch.cuda.get_device_name() if 'cuda' in devices else ''}, torch {torch.__version__}")
    text = print_table(header)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": ROWS, "markdown": text}, indent=2))


if __name__ == "__main__":
    main()
