"""Ours vs transformers SEWForCTC, same weights, in one process: audio-seconds per second and achieved GFLOP/s.

    .venv/bin/python benchmarks/model_forward.py [--batch 8] [--seconds 10] [--threads 2] [--repeats 5]

The two models run interleaved (A B A B ...) so that background load affects both alike; the ratio is the number
to trust on a shared machine. FLOPs are counted once with torch's FlopCounterMode on our model.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sew_pipeline.models import SEWForCTC  # noqa: E402
from sew_pipeline.models.fast import prepare_for_inference  # noqa: E402

SHAPES = {
    "sew-tiny": dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12),
    "sew-mid-like": dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=24,
                         squeeze_factor=3),
}


def build_pair(shape: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    import transformers  # benchmark-only reference

    torch.manual_seed(0)
    ref = transformers.SEWForCTC(transformers.SEWConfig(vocab_size=32, **SHAPES[shape])).eval()
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        ours = SEWForCTC.from_pretrained(d).eval()
    return ours, ref


def count_gflop(model: torch.nn.Module, x: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops() / 1e9


def time_interleaved(models: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per forward for each model, run alternately after one warm-up each."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for m in models.values():
            m(x)
        for _ in range(repeats):
            for name, m in models.items():
                t0 = time.perf_counter()
                m(x)
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="sew-tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ours, ref = build_pair(args.shape)
    x = torch.randn(args.batch, int(args.seconds * 16000))
    with torch.inference_mode():
        diff = (ours(x[:1]).logits - ref(x[:1]).logits).abs().max().item()
    gflop = count_gflop(ours, x)
    fast = prepare_for_inference(ours, "fp32")  # the pipeline's default inference path
    with torch.inference_mode():
        fast_diff = (fast(x[:1]).logits - ref(x[:1]).logits).abs().max().item()
    t = time_interleaved({"ours": ours, "ours-fast-fp32": fast, "transformers": ref}, x, args.repeats)
    audio_s = args.batch * args.seconds
    print(f"{args.shape}, batch {args.batch} x {args.seconds:g} s, fp32, {args.threads} threads, "
          f"max |logit diff| {diff:.2e} (fast path {fast_diff:.2e}), {gflop / audio_s:.2f} GFLOP per audio-second")
    print(f"{'model':<16}{'audio-s/s':>11}{'GFLOP/s':>10}")
    for name, sec in t.items():
        print(f"{name:<16}{audio_s / sec:>11.1f}{gflop / sec:>10.1f}")
    for name in ("ours", "ours-fast-fp32"):
        print(f"ratio {name}/transformers: {t['transformers'] / t[name]:.3f}")


if __name__ == "__main__":
    main()
