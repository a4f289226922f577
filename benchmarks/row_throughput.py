"""Per-row cost of the pipeline against a plain Ray Data pipeline doing the same work, side by side.

    .venv/bin/python benchmarks/row_throughput.py [--rows 3000 12000 48000] [--task ctc|classification] [--json F]

Same clips (the soak manifest: --distinct generated 0.5-2 s WAVs referenced round-robin by N rows, each row its
own id), same tiny random SEW on the fast fp32 path, same machine, each run in its own subprocess with its own
local Ray. "plain" is the pipeline of Ray's batch-inference guide: from_items → map_batches(decode: soundfile +
soxr) → map_batches(model, ActorPoolStrategy(size=1), batch_size=64) → write_parquet, with greedy text (CTC)
or the top label (classification) and nothing else: no error rows, no resume, no word timings, no windows.
"ours" is `jobs/transcribe_corpus.py` / `jobs/label_archive.py` with its defaults (label_archive with 2.5 s
windows, so that each clip is one window: the same work as plain). From wall time vs rows
(least squares) each gets a fixed cost (intercept) and a marginal rows/s (1 / slope); printed with ratios.
Also: the finalize stage alone (rows/s on one CPU) and the output files each run wrote.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
JOBS = {"ctc": "jobs/transcribe_corpus.py", "classification": "jobs/label_archive.py"}
# label_archive cuts 1 s windows by default; plain classifies whole clips: one window per clip is the same work
SAME_WORK = {"ctc": [], "classification": ["--set", "window_s=2.5", "--set", "overlap_s=0.25"]}


# ------------------------------------------------------------------ the plain Ray Data pipeline
def plain(manifest: str, model: str, output: str, task: str) -> None:
    import pyarrow as pa
    import ray
    import soundfile as sf
    import soxr

    def decode(batch: dict) -> dict:
        audio = []
        for path in batch["path"]:
            x, sr = sf.read(path, dtype="float32", always_2d=True)
            x = x.mean(axis=1)
            audio.append((soxr.resample(x, sr, 16000) if sr != 16000 else x).astype(np.float32))
        out = np.empty(len(audio), dtype=object)
        out[:] = audio
        return {"id": batch["id"], "audio": out}

    class Model:
        def __init__(self) -> None:
            import torch
            from sew_pipeline import models
            from sew_pipeline.predictors import fast_model
            torch.set_num_threads(1)
            cls = models.SEWForCTC if task == "ctc" else models.SEWForSequenceClassification
            self.model = fast_model(cls.from_pretrained(model).eval(), "fp32", "cpu")
            self.fe = models.FeatureExtractor.from_pretrained(model)
            self.tok = models.CTCTokenizer.from_pretrained(model) if task == "ctc" else None

        def __call__(self, batch: dict) -> pa.Table:
            import torch
            waves = list(batch["audio"])
            feats = self.fe(waves, return_attention_mask=True)
            with torch.inference_mode():
                logits = self.model(feats["input_values"], attention_mask=feats["attention_mask"]).logits
            if self.tok is not None:
                lengths = [int(self.model.output_lengths(len(w))) for w in waves]
                out = self.tok.batch_decode(logits, lengths)
            else:
                out = [str(i) for i in logits.argmax(-1).tolist()]
            return pa.table({"id": pa.array(list(batch["id"])), "result": pa.array(out)})

    rows = [json.loads(line) for line in Path(manifest).read_text().splitlines()]
    root = Path(manifest).parent
    ray.init(logging_level="WARNING")
    items = [{"id": r["id"], "path": str(root / r["audio_filepath"])} for r in rows]
    (ray.data.from_items(items)
     .map_batches(decode, batch_size=32)
     .map_batches(Model, batch_size=64, compute=ray.data.ActorPoolStrategy(size=1), batch_format="numpy")
     .write_parquet(output))


# ------------------------------------------------------------------ runs
def _env(ray_tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=str(ray_tmp), RAY_USAGE_STATS_ENABLED="0")
    return env


def timed(cmd: list[str]) -> float:
    ray_tmp = Path(f"/tmp/sew_rt_{uuid.uuid4().hex[:8]}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=_env(ray_tmp), capture_output=True, text=True, timeout=3600,
                          start_new_session=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{cmd[:2]} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return wall


def files_written(output: Path) -> tuple[int, float]:
    files = list(output.rglob("*.parquet"))
    return len(files), sum(f.stat().st_size for f in files) / max(len(files), 1) / 1e6


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(fixed cost s, marginal rows/s) of wall = fixed + rows / rate, least squares."""
    n, t = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    slope, intercept = np.polyfit(n, t, 1) if len(points) > 1 else (t[0] / n[0], 0.0)
    return float(intercept), float(1.0 / slope)


def finalize_alone(model: str, task: str, rows: int) -> float:
    """Finalize rows/s on one CPU over model-stage output of short single-window items."""
    import pyarrow as pa
    from sew_pipeline.postprocess import Finalizer
    from sew_pipeline.schema import PREDICTION_SCHEMA
    from sew_pipeline.spec import resolve
    spec = resolve(model)
    rng = np.random.default_rng(0)
    payload = (lambda: rng.integers(0, 32, 60).astype("<i2").tobytes()) if task == "ctc" else \
        (lambda: rng.random(12).astype("<f4").tobytes())
    base = {"audio_uri": "/clips/c.wav", "channel": -1, "item_index": 0, "num_items": 1, "chunk_index": 0,
            "num_chunks": 1, "start_s": 0.0, "end_s": 1.2, "item_start_s": 0.0, "item_duration_s": 1.2,
            "model": "m", "processing_s": 0.001, "frames": 60, "padded_frames": 0}
    blocks = [pa.Table.from_pylist([{**base, "id": f"r{b}-{i}", "item_id": f"r{b}-{i}", "payload": payload()}
                                    for i in range(64)], schema=PREDICTION_SCHEMA) for b in range(rows // 64)]
    finalizer = Finalizer(spec, task, "bench")
    t0 = time.process_time()
    for b in blocks:
        finalizer(b)
    return len(blocks) * 64 / (time.process_time() - t0)


def resume_at_scale(root: Path, ids: int, rows_per_file: int) -> dict:
    """Files a job of `ids` CTC rows leaves at the default file size, and the time and driver memory to read
    its written ids back for a resume (ResultStore.completed_ids: the id column only)."""
    import resource
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sew_pipeline.results import ResultStore
    from sew_pipeline.schema import CTC_SCHEMA
    rng = np.random.default_rng(0)
    words = [{"word": "WORD", "start_s": 0.1 * k, "end_s": 0.1 * k + 0.08} for k in range(12)]
    out = root / "resume"
    out.mkdir()
    for f in range(-(-ids // rows_per_file)):
        n = min(rows_per_file, ids - f * rows_per_file)
        table = pa.table({"id": [f"corpus/part{f:03d}/utt{i:07d}" for i in range(n)],
                          "text": ["THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG AGAIN AND AGAIN"] * n,
                          "words": [words] * n, "duration_s": rng.uniform(1, 20, n)})
        full = pa.table({name: table[name] if name in table.column_names else pa.nulls(n, field.type)
                         for name, field in zip(CTC_SCHEMA.names, CTC_SCHEMA)}, schema=CTC_SCHEMA)
        pq.write_table(full, out / f"part-bench-{f:06d}.parquet")
    files = list(out.glob("*.parquet"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    done = ResultStore(str(out)).completed_ids()
    seconds = time.perf_counter() - t0
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert len(done) == ids
    return {"ids": ids, "files": len(files), "mean_file_mb": round(sum(f.stat().st_size for f in files)
                                                                    / len(files) / 1e6, 1),
            "resume_read_s": round(seconds, 2), "driver_rss_growth_mb": round(grown)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[3000, 12000, 48000])
    ap.add_argument("--distinct", type=int, default=200)
    ap.add_argument("--task", choices=sorted(JOBS), default="ctc")
    ap.add_argument("--resume-ids", type=int, default=1_000_000, help="written ids for the resume measurement (0: skip it)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from benchmarks.soak import make_manifest
    from tests.support.tiny_models import make_tiny_ctc, make_tiny_kws
    report: dict = {"task": args.task, "rows": args.rows, "runs": []}
    with tempfile.TemporaryDirectory(prefix="sew_rt_") as tmp:
        root = Path(tmp)
        model = str((make_tiny_ctc if args.task == "ctc" else make_tiny_kws)(root / "model"))
        report["finalize_rows_per_cpu_s"] = round(finalize_alone(model, args.task, 6400))
        from sew_pipeline.config import FinalizeConfig
        if args.resume_ids:  # 0 skips it
            report["resume"] = resume_at_scale(root, args.resume_ids, FinalizeConfig().rows_per_file)
            print("resume:", report["resume"], flush=True)
        for n in args.rows:
            manifest = make_manifest(root / f"m{n}", n, args.distinct)
            for kind in ("plain", "ours"):
                out = root / f"out-{kind}-{n}"
                cmd = ([sys.executable, __file__, "plain", str(manifest), model, str(out), args.task] if kind == "plain"
                       else [sys.executable, JOBS[args.task], "--set", f"manifest={manifest}", "--set", f"output={out}",
                             "--set", f"model={model}", *SAME_WORK[args.task]])
                wall = timed(cmd)
                files, mb = files_written(out)
                report["runs"].append({"kind": kind, "rows": n, "wall_s": round(wall, 2), "files": files,
                                       "mean_file_mb": round(mb, 3)})
                print(f"{kind:>5} {n:>6} rows: {wall:7.1f} s, {files} file(s) of {mb:.2f} MB", flush=True)
    for kind in ("plain", "ours"):
        fixed, rate = fit([(r["rows"], r["wall_s"]) for r in report["runs"] if r["kind"] == kind])
        report[kind] = {"fixed_s": round(fixed, 2), "marginal_rows_per_s": round(rate, 1)}
    report["marginal_ratio_ours_over_plain"] = round(report["ours"]["marginal_rows_per_s"]
                                                     / report["plain"]["marginal_rows_per_s"], 3)
    report["fixed_ratio_ours_over_plain"] = round(report["ours"]["fixed_s"] / report["plain"]["fixed_s"], 3)
    print(f"\n{'':>6} {'fixed s':>8} {'marginal rows/s':>16}")
    for kind in ("plain", "ours"):
        print(f"{kind:>6} {report[kind]['fixed_s']:>8.1f} {report[kind]['marginal_rows_per_s']:>16.1f}")
    print(f"ratio ours/plain: marginal {report['marginal_ratio_ours_over_plain']:.2f} (goal >= 1.0), "
          f"fixed {report['fixed_ratio_ours_over_plain']:.2f} (goal <= 1.5); "
          f"finalize alone {report['finalize_rows_per_cpu_s']} rows/s per CPU")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "plain":
        plain(*sys.argv[2:6])
    else:
        main()
