"""A 1,000,000-row sharded manifest on the driver: time and peak RSS to plan (read every part, ids checked
unique, duplicates dropped) and to resume against 1,000,000 written ids, plus the files such a job writes.

  .venv/bin/python benchmarks/manifest_scale.py [--rows 1000000] [--parts 100] [--format jsonl|parquet]

Each measurement runs in a fresh process so that its peak RSS is its own. Rows point at three real
LibriSpeech clips (the plan never opens audio).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_parts(root: Path, rows: int, parts: int, fmt: str, per_file: int) -> None:
    """Manifest ids spelled as row_throughput.resume_at_scale writes them (file index / row in file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    clips = sorted(str(p) for p in (REPO / "tests/data/LibriSpeech").rglob("*.flac"))
    per = -(-rows // parts)
    for k in range(parts):
        ids = range(k * per, min(rows, (k + 1) * per))
        recs = {"id": [f"corpus/part{n // per_file:03d}/utt{n % per_file:07d}" for n in ids],
                "audio_filepath": [clips[n % len(clips)] for n in ids], "text": ["A TRANSCRIPT"] * len(ids)}
        if fmt == "parquet":
            pq.write_table(pa.table(recs), root / f"part-{k:05d}.parquet")
        else:
            with open(root / f"part-{k:05d}.jsonl", "w") as f:
                for i, a, t in zip(recs["id"], recs["audio_filepath"], recs["text"]):
                    f.write(json.dumps({"id": i, "audio_filepath": a, "text": t}) + "\n")


def phase(name: str, root: str, written: str) -> dict:
    """Run in a child: one measurement, its own peak RSS."""
    from sew_pipeline import ray_pipeline
    from sew_pipeline.config import TranscribeConfig, load_config
    from sew_pipeline.results import ResultStore
    cfg = load_config(TranscribeConfig, None, [f"manifest={root}", "output=/unused"])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    manifest = ray_pipeline._load_manifest(cfg, {})
    out = {"rows": manifest.num_rows, "plan_s": round(time.perf_counter() - t0, 2)}
    if name == "resume":
        t1 = time.perf_counter()
        left = ray_pipeline._without(manifest, ResultStore(written).completed_ids())
        out.update(resume_s=round(time.perf_counter() - t1, 2), rows_left=left.num_rows)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out["import_rss_mb"] = round(base / 1024)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--parts", type=int, default=100)
    ap.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--written", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.root, args.written)))
        return
    sys.path.insert(0, str(REPO / "benchmarks"))
    from row_throughput import resume_at_scale
    from sew_pipeline.config import FinalizeConfig
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "manifest"
        root.mkdir()
        per_file = FinalizeConfig().rows_per_file
        write_parts(root, args.rows, args.parts, args.format, per_file)
        written = resume_at_scale(Path(tmp), args.rows, per_file)
        report = {"rows": args.rows, "parts": args.parts, "format": args.format, "output_files": written["files"],
                  "mean_output_file_mb": written["mean_file_mb"]}
        for name in ("plan", "resume"):
            child = subprocess.run([sys.executable, __file__, "--phase", name, "--root", str(root),
                                    "--written", str(Path(tmp) / "resume")], capture_output=True, text=True, check=True)
            report[name] = json.loads(child.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
