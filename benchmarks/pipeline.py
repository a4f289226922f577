"""End-to-end Ray pipeline throughput vs model-only throughput, same model, batching and threads.

    .venv/bin/python benchmarks/pipeline.py [--utterances 60] [--threads 1] [--model demo-ctc|PATH] [--json out.json]

Corpus: FLAC files at 16 kHz with LibriSpeech-like durations (synthetic sound: decode cost does not depend
on content). Model: --model, else the shipped demo-ctc, else random weights in the sew-tiny shape.

* model-only: the already-decoded chunks, grouped exactly as the predictor groups them (plan_length_groups with the
  same max_batch_audio_s / max_padding_fraction), feature extraction + forward, `--threads` torch threads.
* end-to-end: ray_pipeline.transcribe() on a local Ray with --threads + 1 CPUs (one actor with --threads CPUs,
  decode tasks on the rest): manifest read, decode, inference, stitching, Parquet write, summary.
  Ray start-up is excluded; actor start-up and model loading are included.
Model-only runs twice (before and after) and the mean is used, so background load hits both sides alike.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sew_pipeline.config import TranscribeConfig, load_config  # noqa: E402

SR = 16000


def make_corpus(root: Path, n: int, seed: int = 0) -> tuple[Path, float]:
    from sew_pipeline.models.batching import librispeech_like_durations
    rng = np.random.default_rng(seed)
    durations = librispeech_like_durations(n, seed=seed)
    lines = []
    for i, d in enumerate(durations):
        t = np.arange(int(d * SR)) / SR
        x = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(root / f"utt{i:04d}.flac", x.astype(np.float32), SR)
        lines.append(json.dumps({"id": f"utt{i:04d}", "audio_filepath": f"utt{i:04d}.flac"}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root / "manifest.jsonl", float(np.sum([int(d * SR) for d in durations]) / SR)


def make_model(root: Path, name: str | None) -> str:
    from sew_pipeline.models import registry
    if name:
        return name
    if "demo-ctc" in registry.shipped_models():
        return "demo-ctc"
    import torch
    from benchmarks.model_forward import SHAPES
    from sew_pipeline.models import CTCTokenizer, FeatureExtractor, SEWConfig, SEWForCTC
    from tests.support.tiny_models import LIBRISPEECH_VOCAB
    torch.manual_seed(0)
    model = SEWForCTC(SEWConfig(vocab_size=32, layerdrop=0.0, **SHAPES["sew-tiny"]))
    out = root / "sew-tiny-random"
    model.save_pretrained(out)
    CTCTokenizer(LIBRISPEECH_VOCAB).save_pretrained(out)
    FeatureExtractor(return_attention_mask=True).save_pretrained(out)
    return str(out)


def model_only(cfg: TranscribeConfig, chunks) -> dict:
    """Feature extraction + forward over the predictor's own grouping of the decoded chunks."""
    import torch
    from sew_pipeline.models.batching import plan_length_groups
    from sew_pipeline.predictors import CTCPredictor
    predictor = CTCPredictor(cfg)  # same loading, fast path and thread count as an actor
    waves = [np.frombuffer(a, dtype="<f4") for a in chunks.column("audio").to_pylist() if a]
    inf = cfg.inference
    groups = plan_length_groups([len(w) for w in waves], max_batch_samples=int(inf.max_batch_audio_s * SR),
                                max_padding_fraction=inf.max_padding_fraction)
    with torch.inference_mode():  # warm-up
        predictor.model(predictor.feature_extractor(waves[:1])["input_values"])
    t0 = time.perf_counter()
    frames = padded = 0
    for g in groups:
        feats = predictor.feature_extractor([waves[i] for i in g])
        with torch.inference_mode():
            logits = predictor.model(feats["input_values"], attention_mask=feats["attention_mask"]).logits
        valid = sum(int(predictor.model.output_lengths(len(waves[i]))) for i in g)
        frames += logits.shape[0] * logits.shape[1]
        padded += logits.shape[0] * logits.shape[1] - valid
    seconds = time.perf_counter() - t0
    audio_s = sum(len(w) for w in waves) / SR
    return {"seconds": seconds, "audio_s": audio_s, "audio_s_per_s": audio_s / seconds,
            "padded_frame_fraction": padded / frames, "forward_passes": len(groups)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1, help="torch threads = CPUs of the one model actor")
    parser.add_argument("--model", default=None)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import ray
    from sew_pipeline import ray_pipeline
    from sew_pipeline.predictors import DecodeStage
    from sew_pipeline.manifests import read_manifest

    with tempfile.TemporaryDirectory(prefix="sew_bench_") as tmp:
        root = Path(tmp)
        manifest, audio_s = make_corpus(root, args.utterances)
        model = make_model(root, args.model)
        cfg = load_config(TranscribeConfig, None, [
            f"manifest={manifest}", f"output={root / 'out'}", f"model={model}",
            f"inference.cpus_per_actor={args.threads}", f"inference.precision={args.precision}"])
        chunks = DecodeStage(cfg)(read_manifest(str(manifest)))
        before = model_only(cfg, chunks)

        ray.init(num_cpus=args.threads + 1, include_dashboard=False, logging_level="WARNING",
                 _temp_dir=str(root / "ray"))
        t0 = time.perf_counter()
        result = ray_pipeline.transcribe(cfg)
        e2e_s = time.perf_counter() - t0
        ray.shutdown()
        after = model_only(cfg, chunks)

    model_rate = (before["audio_s_per_s"] + after["audio_s_per_s"]) / 2
    e2e_rate = audio_s / e2e_s
    report = {
        "utterances": args.utterances, "audio_s": round(audio_s, 1), "model": Path(model).name,
        "threads": args.threads, "precision": args.precision, "batch_audio_s": cfg.inference.max_batch_audio_s,
        "model_only_audio_s_per_s": round(model_rate, 2), "model_only_runs": [round(before["audio_s_per_s"], 2),
                                                                               round(after["audio_s_per_s"], 2)],
        "end_to_end_audio_s_per_s": round(e2e_rate, 2), "end_to_end_wall_s": round(e2e_s, 2),
        "ratio_end_to_end_over_model_only": round(e2e_rate / model_rate, 3),
        "padded_frame_fraction_pipeline": round(result.summary["padded_frame_fraction"], 4),
        "padded_frame_fraction_model_only": round(before["padded_frame_fraction"], 4),
        "rows_ok": result.summary["rows_ok"],
    }
    print(result.table())
    width = max(map(len, report))
    for k, v in report.items():
        print(f"{k:<{width}}  {v}")
    print(f"\nratio end-to-end / model-only = {report['ratio_end_to_end_over_model_only']:.3f} (goal >= 0.85), "
          f"padded-frame fraction {report['padded_frame_fraction_pipeline']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
