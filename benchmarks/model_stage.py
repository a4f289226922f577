"""Per-row cost of the model stage (CTCPredictor.__call__: features, forward, payloads), this tree vs a git revision.

    .venv/bin/python benchmarks/model_stage.py [--baseline REV] [--rows 768] [--repeats 3] [--json F]

The same chunk rows (seeded noise; 0.3-3 s clips, the per-row overhead's worst case, and 20 s windows) go through
the model stage of both trees, each in its own process with one torch thread, alternating A B A B, on demo-ctc
and on the tests' tiny random model (where host work is a larger share). Prints ms per row (median of the
repeats) and the ratio. On a CPU this measures the host-side changes (masks built from lengths, no mask when
nothing is padded); pinned memory and non-blocking copies only apply on a GPU (benchmarks/gpu_check.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, pyarrow as pa, torch
torch.set_num_threads(1)
from sew_pipeline.config import TranscribeConfig, load_config
from sew_pipeline.predictors import CTCPredictor
from sew_pipeline.schema import CHUNK_SCHEMA
model, rows, seconds = sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
rng = np.random.default_rng(0)
lengths = [int(rng.choice(seconds) * 16000 * rng.uniform(0.8, 1.0)) for _ in range(rows)]
table = pa.Table.from_pylist([{"id": f"u{i}", "item_id": f"u{i}", "audio_uri": "x", "channel": -1, "item_index": 0,
    "num_items": 1, "chunk_index": 0, "num_chunks": 1, "start_s": 0.0, "end_s": n / 16000, "item_start_s": 0.0,
    "item_duration_s": n / 16000, "keep_start_frame": 0, "keep_end_frame": n // 320, "start_frame": 0,
    "audio": (0.1 * rng.standard_normal(n)).astype("<f4").tobytes()} for i, n in enumerate(lengths)], schema=CHUNK_SCHEMA)
cfg = load_config(TranscribeConfig, None, ["manifest=m", "output=o", f"model={model}"])
p = CTCPredictor(cfg)
p(table.slice(0, 16))  # warm-up
t0 = time.perf_counter()
for i in range(0, rows, 256):
    p(table.slice(i, 256))
print(json.dumps({"ms_per_row": 1000 * (time.perf_counter() - t0) / rows}))
"""


def measure(tree: Path, model: str, rows: int, seconds: list[float]) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, str(tree), model, str(rows), json.dumps(seconds)],
                         check=True, capture_output=True, text=True, cwd=tree).stdout
    return json.loads(out.strip().splitlines()[-1])["ms_per_row"]


def tiny_model(folder: Path) -> str:
    sys.path.insert(0, str(REPO))
    from tests.support.tiny_models import make_tiny_ctc
    return str(make_tiny_ctc(folder / "tiny-ctc"))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="HEAD", help="git revision to compare with (default: the last commit)")
    ap.add_argument("--rows", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    report: dict = {"baseline": subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=REPO, check=True,
                                               capture_output=True, text=True).stdout.strip(), "cases": {}}
    with tempfile.TemporaryDirectory(prefix="sew_stage_") as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.baseline], cwd=REPO, check=True,
                       capture_output=True)
        try:
            models = {"demo-ctc": "demo-ctc", "tiny test model (random)": tiny_model(Path(tmp))}
            for name, model in models.items():
                for clips, seconds in (("0.3-3 s clips", [0.3, 1.0, 2.0, 3.0]), ("20 s windows", [20.0])):
                    rows = args.rows if seconds[0] < 10 else max(32, args.rows // 16)
                    times: dict[str, list[float]] = {"baseline": [], "this tree": []}
                    for _ in range(args.repeats):
                        times["baseline"].append(measure(base, model, rows, seconds))
                        times["this tree"].append(measure(REPO, model, rows, seconds))
                    med = {k: statistics.median(v) for k, v in times.items()}
                    case = {"rows": rows, **{f"{k} ms/row": round(v, 3) for k, v in med.items()},
                            "ratio": round(med["this tree"] / med["baseline"], 3)}
                    report["cases"][f"{name}, {clips}"] = case
                    print(f"{name:>24}, {clips:>13}: baseline {med['baseline']:.3f} ms/row, this tree "
                          f"{med['this tree']:.3f} ms/row, ratio {case['ratio']:.3f}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, capture_output=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
