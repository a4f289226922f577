"""Soak: a long manifest of short generated clips through transcribe_corpus, memory sampled over time.

    .venv/bin/python benchmarks/soak.py [--rows 10000] [--distinct 200] [--model PATH|demo-ctc] [--json out.json]

The job runs as `jobs/transcribe_corpus.py` in a subprocess with its own local Ray; every --sample-s the
memory of the job's whole process tree (driver, raylet, GCS, decode workers, model and assembler actors)
is summed, as RSS and as PSS (shared pages split between processes: the real footprint). Reported: rows,
wall time, every id exactly once, peak, median by quarter of the run, and flatness: the growth from the
second to the last quarter (the first is start-up), which stays near zero when nothing accumulates per row.
Clips are `--distinct` generated WAVs of 0.5-2 s, referenced round-robin by the manifest rows (each row
has its own id; the work per row is the same).
Default model: a tiny random SEW (memory behaviour of the pipeline, not model speed).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def manifest_id(i: int) -> str:
    return f"row{i:06d}"


def make_manifest(root: Path, rows: int, distinct: int, sr: int = 16000) -> Path:
    rng = np.random.default_rng(0)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    for i in range(distinct):
        t = np.arange(int(rng.uniform(0.5, 2.0) * sr)) / sr
        x = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.05 * rng.standard_normal(len(t))
        sf.write(root / "clips" / f"c{i:04d}.wav", x.astype(np.float32), sr)
    manifest = root / "manifest.jsonl"
    with manifest.open("w") as f:
        for i in range(rows):
            f.write(json.dumps({"id": manifest_id(i), "audio_filepath": f"clips/c{i % distinct:04d}.wav"}) + "\n")
    return manifest


def tree_memory_mb(root: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB summed over `root` and all its descendants. RSS counts shared pages (Ray's
    object store, torch libraries) once per process; PSS splits them, so its sum is the real footprint."""
    from tests.reliability.procs import descendants
    rss = pss = 0
    for pid in descendants(root) | {root}:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024


class Sampler(threading.Thread):
    def __init__(self, pid: int, every_s: float):
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, float, float]] = []  # (t, rss, pss)
        self.done = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self.done.is_set():
            self.samples.append((time.perf_counter() - t0, *tree_memory_mb(self.pid)))
            self.done.wait(self.every_s)


def flatness(values: list[float], name: str) -> dict:
    """Median by quarter of the run; growth = median of the last quarter - median of the second
    (the first quarter is start-up: Ray, workers and the model loading)."""
    q = max(1, len(values) // 4)
    quarters = [values[i * q:(i + 1) * q] or values[-1:] for i in range(3)] + [values[3 * q:] or values[-1:]]
    medians = [statistics.median(part) for part in quarters]
    growth = medians[3] - medians[1]
    return {f"peak_{name}_mb": round(max(values), 1), f"{name}_median_by_quarter_mb": [round(m, 1) for m in medians],
            f"{name}_growth_q2_to_q4_mb": round(growth, 1),
            f"{name}_growth_fraction": round(growth / medians[1], 4) if medians[1] else None}


def run_job(manifest: Path, output: Path, model: str, every_s: float,
            sets: tuple[str, ...] = ()) -> tuple[int, str, Sampler, float]:
    ray_tmp = Path(f"/tmp/sew_soak_{uuid.uuid4().hex[:8]}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=str(ray_tmp), SEW_TEST_CLUSTER=ray_tmp.name, RAY_USAGE_STATS_ENABLED="0")
    cmd = [sys.executable, "jobs/transcribe_corpus.py", "--set", f"manifest={manifest}", "--set", f"output={output}",
           "--set", f"model={model}", "--set", "decode.batch_rows=32", "--set", "inference.batch_rows=64",
           *[a for kv in sets for a in ("--set", kv)]]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    sampler = Sampler(proc.pid, every_s)
    sampler.start()
    try:
        log = proc.communicate()[0]
    finally:
        sampler.done.set()
        sampler.join()
        from tests.support.ray_cluster import HeadCluster, _stop
        _stop(HeadCluster("", "", {}, ray_tmp))  # this job's Ray processes only, if any survived
    return proc.returncode, log, sampler, time.perf_counter() - t0


def soak(rows: int, distinct: int, model: str | None, every_s: float, workdir: Path,
         sets: tuple[str, ...] = ()) -> dict:
    manifest = make_manifest(workdir, rows, distinct)
    if not model:
        from tests.support.tiny_models import make_tiny_ctc
        model = str(make_tiny_ctc(workdir / "tiny-ctc"))
    output = workdir / "out"
    status, log, sampler, wall = run_job(manifest, output, model, every_s, sets)
    from sew_pipeline.results import read_results
    table = read_results(str(output))
    ids = table.column("id").to_pylist() if table is not None else []
    wanted = {manifest_id(i) for i in range(rows)}
    summary = json.loads(log.split("SUMMARY_JSON ", 1)[1].splitlines()[0]) if "SUMMARY_JSON " in log else {}
    return {"rows": rows, "distinct_clips": distinct, "exit_status": status, "wall_s": round(wall, 1),
            "ids_written": len(set(ids)), "duplicate_rows": len(ids) - len(set(ids)),
            "ids_missing": len(wanted - set(ids)), "ids_unexpected": len(set(ids) - wanted),
            "rows_ok": summary.get("rows_ok"), "samples": len(sampler.samples),
            **flatness([s[1] for s in sampler.samples], "rss"), **flatness([s[2] for s in sampler.samples], "pss"),
            "series_t_rss_pss_mb": [tuple(round(v, 1) for v in s) for s in sampler.samples],
            "log_tail": log[-2000:] if status else ""}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--distinct", type=int, default=200)
    ap.add_argument("--model", default=None, help="checkpoint folder or shipped name (default: tiny random)")
    ap.add_argument("--sample-s", type=float, default=1.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sew_soak_") as tmp:
        result = soak(args.rows, args.distinct, args.model, args.sample_s, Path(tmp))
    printable = {k: v for k, v in result.items() if k != "series_t_rss_pss_mb"}
    print(json.dumps(printable, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    res = main()
    sys.exit(0 if res["exit_status"] == 0 and not res["ids_missing"] and not res["ids_unexpected"]
             and not res["duplicate_rows"] else 1)
