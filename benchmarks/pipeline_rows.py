"""Pipeline rows of benchmarks/run_all.py: end-to-end vs model-only, memory of a 2 h stereo call, cost vs length.

Each measurement runs in its own subprocess (`python benchmarks/pipeline_rows.py PART ...`) with its own local
Ray, and the parent samples the summed PSS (proportional set size: shared object-store pages are split, not
double counted) of that subprocess's whole process tree (driver, GCS, raylet, workers) every 0.25 s.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SR = 16000


# ------------------------------------------------------------------ memory of a process tree
def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(d))
    return tree


def tree_pss_mb(root: int) -> float:
    tree, todo, total = _children(), [root], 0.0
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) / 1024
                    break
        except OSError:
            pass
    return total


def run_part(*argv: str, timeout: float = 900) -> dict:
    """Run one part in a subprocess; return its JSON result plus the peak PSS of its process tree."""
    proc = subprocess.Popen([sys.executable, __file__, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    peak = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_pss_mb(proc.pid))
            time.sleep(0.25)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate(timeout=timeout)
    t.join()
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"pipeline part {argv} failed ({proc.returncode}):\n{err[-3000:]}")
    return {**json.loads(lines[-1][7:]), "peak_pss_mb": peak[0]}


# ------------------------------------------------------------------ inputs
def make_ctc_dir(directory: Path, shape: str) -> Path:
    """Random-weight CTC checkpoint in the shipped layout: "sew-tiny" shape or the test suite's tiny model."""
    import torch
    from benchmarks.model_forward import SHAPES
    from sew_pipeline.models import CTCTokenizer, FeatureExtractor, SEWConfig, SEWForCTC
    from tests.support.tiny_models import LIBRISPEECH_VOCAB, tiny_sew_config
    torch.manual_seed(0)
    cfg = (SEWConfig(vocab_size=32, **SHAPES[shape]) if shape in SHAPES
           else tiny_sew_config(vocab_size=len(LIBRISPEECH_VOCAB)))
    SEWForCTC(cfg).save_pretrained(directory)
    CTCTokenizer(LIBRISPEECH_VOCAB).save_pretrained(directory)
    FeatureExtractor(return_attention_mask=True).save_pretrained(directory)
    return directory


def make_kws_dir(directory: Path) -> Path:
    from tests.support.tiny_models import make_tiny_kws
    return make_tiny_kws(directory)


def write_noise(path: Path, seconds: float, sr: int = SR, channels: int = 1, subtype: str = "PCM_16") -> Path:
    """Speech-band noise + tones, written a minute at a time (never the whole file in memory)."""
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    fmt = "FLAC" if path.suffix == ".flac" else "WAV"
    with sf.SoundFile(path, "w", sr, channels, subtype=subtype, format=fmt) as f:
        for start in range(0, int(seconds * sr), sr * 60):
            n = min(sr * 60, int(seconds * sr) - start)
            t = (start + np.arange(n)) / sr
            x = 0.1 * rng.standard_normal((n, channels)) + 0.3 * np.sin(2 * np.pi * 300 * t)[:, None]
            f.write(np.clip(x, -1, 1).astype(np.float32))
    return path


def write_manifest(folder: Path, durations: list[float]) -> Path:
    rows = []
    for i, d in enumerate(durations):
        p = write_noise(folder / f"utt{i:04d}.flac", d)
        rows.append({"id": f"utt{i:04d}", "audio_filepath": str(p), "duration": round(d, 3)})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


# ------------------------------------------------------------------ parts (run inside the subprocess)
def _init_ray(threads: int) -> None:
    import ray
    # One logical CPU more than the actor's torch threads, so decode tasks run beside the model actor.
    ray.init(num_cpus=threads + 1, include_dashboard=False, logging_level="ERROR")


def _cfg(cls, **kw):
    from sew_pipeline.config import load_config
    return load_config(cls, None, [f"{k}={v}" for k, v in kw.items()])


def part_e2e(workdir: str, model_dir: str, threads: int, precision: str) -> dict:
    """Pipeline wall-clock throughput vs the model alone on the same audio, same grouping, same threads."""
    import torch
    from sew_pipeline import ray_pipeline
    from sew_pipeline.config import InferenceConfig, TranscribeConfig
    from sew_pipeline.models import FeatureExtractor, SEWForCTC
    from sew_pipeline.models.batching import grouped_forward, plan_length_groups
    from sew_pipeline.models.fast import prepare_for_inference
    from sew_pipeline.predictors import SAMPLE_RATE
    torch.set_num_threads(threads)
    manifest = Path(workdir) / "manifest.jsonl"
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    fe = FeatureExtractor.from_pretrained(model_dir)
    waves = [fe([sf.read(r["audio_filepath"], dtype="float32")[0]])["input_values"][0] for r in rows]
    audio_s = sum(len(w) for w in waves) / SR
    model = prepare_for_inference(SEWForCTC.from_pretrained(model_dir).eval(), precision)
    lengths = [len(w) for w in waves]
    inf = InferenceConfig()  # the pipeline's default grouping
    groups = plan_length_groups(lengths, max_batch_samples=int(inf.max_batch_audio_s * SAMPLE_RATE),
                                max_padding_fraction=inf.max_padding_fraction)

    def model_only() -> float:
        t0 = time.perf_counter()
        grouped_forward(model, waves, groups)
        return audio_s / (time.perf_counter() - t0)
    _init_ray(threads)

    def job(manifest_path: Path, out: str) -> dict:
        cfg = _cfg(TranscribeConfig, manifest=str(manifest_path), output=f"{workdir}/{out}", model=model_dir,
                   **{"inference.cpus_per_actor": threads, "inference.precision": precision,
                      "inference.batch_rows": 64, "decode.num_cpus": 1})
        return ray_pipeline.transcribe(cfg).summary

    # Fixed cost of a job (actor start, model load, first compile of shapes, Parquet write): a 1-item job.
    shortest = min(rows, key=lambda r: r["duration"])
    one = Path(workdir) / "manifest-one.jsonl"
    one.write_text(json.dumps(shortest) + "\n")
    results = {"fixed_s": job(one, "out-one")["wall_s"], "model_only": [model_only()], "e2e": [], "e2e_wall_s": []}
    for i in range(2):  # interleaved: model, pipeline, model, pipeline, model
        summary = job(manifest, f"out{i}")
        results["e2e"].append(summary["audio_s_per_s"])
        results["e2e_wall_s"].append(summary["wall_s"])
        results["padded_frame_fraction"] = summary.get("padded_frame_fraction")
        results["model_only"].append(model_only())
    return {**results, "audio_s": audio_s}


def part_job(kind: str, workdir: str, model_dir: str, audio: str, threads: int, precision: str) -> dict:
    """One job over one long file (`audio`); wall-clock and audio seconds from its summary."""
    from sew_pipeline import ray_pipeline
    from sew_pipeline.config import LabelConfig, TranscribeConfig
    manifest = Path(workdir) / f"manifest-{Path(audio).stem}.jsonl"
    manifest.write_text(json.dumps({"id": Path(audio).stem, "audio_filepath": audio}) + "\n")
    _init_ray(threads)
    cls, run = (TranscribeConfig, ray_pipeline.transcribe) if kind == "transcribe" else (LabelConfig, ray_pipeline.label)
    cfg = _cfg(cls, manifest=str(manifest), output=f"{workdir}/out-{kind}-{Path(audio).stem}", model=model_dir,
               **{"inference.cpus_per_actor": threads, "inference.precision": precision, "decode.num_cpus": 1})
    summary = run(cfg).summary
    return {"wall_s": summary["wall_s"], "audio_hours": summary.get("audio_hours"),
            "rows_ok": summary.get("rows_ok"), "errors": summary.get("errors_by_type")}


def part_stages(model_dir: str, audios: str, threads: int, precision: str) -> dict:
    """Decode -> model -> assemble callables in-process (what the Ray stages run), timed per audio hour.

    One process and one predictor warmed up on the shortest item, then every length in turn, so fixed start
    costs do not masquerade as a length effect (load drift on a shared machine still can).
    """
    import pyarrow as pa
    import torch
    from sew_pipeline.config import TranscribeConfig
    from sew_pipeline.postprocess import Finalizer
    from sew_pipeline.predictors import CTCPredictor, DecodeStage
    torch.set_num_threads(threads)
    cfg = _cfg(TranscribeConfig, manifest="unused", output="unused", model=model_dir,
               **{"inference.precision": precision, "inference.cpus_per_actor": threads})
    decode, predict = DecodeStage(cfg), CTCPredictor(cfg, num_threads=threads)
    finish = Finalizer(predict.spec, "ctc", "bench")

    def one(audio: str) -> float:
        row = {"id": Path(audio).stem, "audio_uri": audio, "offset_s": None, "duration_s": None, "text": None}
        t0 = time.perf_counter()
        chunks = decode(pa.Table.from_pylist([row]))
        preds = [predict(chunks.slice(i, 64)) for i in range(0, chunks.num_rows, 64)]
        assert finish(pa.concat_tables(preds)).num_rows == 1  # stitch + decode text
        return (time.perf_counter() - t0) / sf.info(audio).duration * 3600
    files = audios.split(",")
    one(files[0])  # warm-up: oneDNN primitives, allocator
    return {Path(f).stem: one(f) for f in files}


# ------------------------------------------------------------------ the rows
def _emit(rows: list[dict], r: dict) -> None:
    rows.append(r)
    print("  " + " | ".join(str(v) for v in r.values()), file=sys.stderr, flush=True)


def run_all(threads: int = 2, quick: bool = False, precision: str = "fp32") -> list[dict]:
    from sew_pipeline.models.batching import librispeech_like_durations
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sew_tiny, tiny, kws = (make_ctc_dir(tmp / "sew-tiny", "sew-tiny"), make_ctc_dir(tmp / "tiny", "tiny"),
                               make_kws_dir(tmp / "kws"))
        corpus = tmp / "corpus"
        corpus.mkdir()
        # ~30 min of audio: a small job, yet big enough that the pipeline's steady state, not Ray start-up,
        # decides the ratio (the fixed per-job cost gets its own row below)
        write_manifest(corpus, list(librispeech_like_durations(24 if quick else 200, seed=5)))
        r = run_part("e2e", str(corpus), str(sew_tiny), str(threads), precision)
        model_only, e2e = float(np.mean(r["model_only"])), float(np.mean(r["e2e"]))
        _emit(rows, dict(section=f"pipeline, sew-tiny {precision}, {r['audio_s'] / 60:.0f} min LibriSpeech-like",
                         name="end-to-end (transcribe, Ray) vs model-only (audio-s/s)", ours=f"{e2e:.1f}",
                         ref=f"{model_only:.1f} model-only", ratio=f"{e2e / model_only:.2f}",
                         note=f"e2e includes Ray actor start + model load + Parquet write; pipeline padded frames "
                              f"{r['padded_frame_fraction']:.1%}"))
        # The same job less its fixed cost (a 1-item job's wall time): what a long job converges to.
        steady = r["audio_s"] / max(1e-9, float(np.mean(r["e2e_wall_s"])) - r["fixed_s"])
        _emit(rows, dict(section=f"pipeline, sew-tiny {precision}, {r['audio_s'] / 60:.0f} min LibriSpeech-like",
                         name="end-to-end less the fixed per-job cost vs model-only (audio-s/s)",
                         ours=f"{steady:.1f}", ref=f"{model_only:.1f} model-only", ratio=f"{steady / model_only:.2f}",
                         note=f"fixed cost per job {r['fixed_s']:.1f} s (wall time of a 1-item job)"))
        hours = 0.05 if quick else 2.0
        call = write_noise(tmp / "call.wav", hours * 3600, sr=8000, channels=2, subtype="ULAW")
        for kind, model in (("label", kws), ("transcribe", tiny)):
            r = run_part("job", kind, str(tmp), str(model), str(call), str(threads), precision)
            _emit(rows, dict(section=f"memory, {hours:g} h stereo 8 kHz mu-law call, tiny random model",
                             name=f"peak PSS, {'label_archive' if kind == 'label' else 'transcribe_corpus'} "
                                  "(all Ray processes)", ours=f"{r['peak_pss_mb'] / 1024:.2f} GB",
                             note=f"wall {r['wall_s']:.0f} s, rows {r['rows_ok']}, errors {r['errors']}"))
        minutes = (1, 3) if quick else (1, 10, 60)
        files = [str(write_noise(tmp / f"item{m}min.flac", m * 60)) for m in minutes]
        r = run_part("stages", str(sew_tiny), ",".join(files), str(threads), precision)
        for m in minutes:
            _emit(rows, dict(section=f"cost vs length, sew-tiny {precision}, decode+model+stitch in-process",
                             name=f"{m} min item: seconds per audio hour", ours=f"{r[f'item{m}min']:.0f}",
                             note=f"{3600 / r[f'item{m}min']:.1f} audio-s/s"))
    return rows


def main() -> None:
    part, *args = sys.argv[1:]
    if part == "e2e":
        res = part_e2e(args[0], args[1], int(args[2]), args[3])
    elif part == "job":
        res = part_job(args[0], args[1], args[2], args[3], int(args[4]), args[5])
    elif part == "stages":
        res = part_stages(args[0], args[1], int(args[2]), args[3])
    else:
        raise SystemExit(f"unknown part {part}")
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
