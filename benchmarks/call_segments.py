"""Speech segments vs fixed windows on call archives (issue 15): model audio, WER per channel, turns, job cost.

    .venv/bin/python benchmarks/call_segments.py [--calls 6] [--minutes 10] [--json F]

Generates --calls two-channel 8 kHz mu-law calls of --minutes each (tests/support/calls.py: the demo corpus's
synthetic voices in alternating turns with pauses and some overlap, line noise at -50 dBFS, each party's echo on
the other line at -24 dB; each channel speaks ~35-45 % of the time) and transcribes them with demo-ctc through
`jobs/transcribe_corpus.py` (decode.channels=split, greedy) twice, each in its own process and local Ray:
`segmentation.method=windows` (the default 30 s windows) and `vad`. Reports per run the model input audio
(seconds the model was given, padding excluded), per-channel WER against the calls' true text, the turn order
and boundary errors of the conversation rows (vad), and the whole job's wall seconds per call hour; then the
VAD alone in audio-s/s on one core.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def vad_speed(call, seconds: float = 3.0) -> float:
    """Audio seconds per second of sew_pipeline.vad on one channel at 16 kHz (what the decode stage runs)."""
    import soxr
    from sew_pipeline import vad
    x = soxr.resample(call.audio[:, 0], call.sample_rate, 16000).astype(np.float32)
    runs, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        vad.segments(x)
        runs += 1
    return runs * len(x) / 16000 / (time.perf_counter() - t0)


def run_job(manifest: Path, out: Path, method: str) -> dict:
    proc = subprocess.run([sys.executable, str(REPO / "jobs/transcribe_corpus.py"), "--set", f"manifest={manifest}",
                           "--set", f"output={out}", "--set", "model=demo-ctc", "--set", "decode.channels=split",
                           "--set", f"segmentation.method={method}"], check=True, capture_output=True, text=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("SUMMARY_JSON "))
    return json.loads(line.split(" ", 1)[1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=6)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from sew_pipeline.metrics import error_rate, word_counts
    from sew_pipeline.results import read_results
    from tests.support.calls import channel_hypothesis, channel_reference, demo_utterances, make_call, turn_report
    utts = demo_utterances()
    calls = {f"call-{k}": make_call(utts, args.minutes * 60, seed=3 + k) for k in range(args.calls)}
    hours = sum(c.duration_s for c in calls.values()) / 3600
    report: dict = {"calls": args.calls, "minutes": args.minutes, "call_hours": round(hours, 3),
                    "speech_fraction": {n: [round(c.speech_fraction(ch), 3) for ch in (0, 1)] for n, c in calls.items()},
                    "runs": {}}
    with tempfile.TemporaryDirectory(prefix="sew_calls_") as tmp:
        tmp = Path(tmp)
        for name, call in calls.items():
            sf.write(tmp / f"{name}.wav", call.audio, call.sample_rate, subtype="ULAW")
        manifest = tmp / "calls.jsonl"
        manifest.write_text("".join(json.dumps({"id": n, "audio_filepath": f"{n}.wav"}) + "\n" for n in calls))
        for method in ("windows", "vad"):
            summary = run_job(manifest, tmp / method, method)
            rows = read_results(str(tmp / method)).to_pylist()
            refs, hyps = zip(*[(channel_reference(c, ch), channel_hypothesis([r for r in rows if r["id"] == n], ch))
                               for n, c in calls.items() for ch in (0, 1)])
            counts = word_counts(list(refs), list(hyps))
            wer = [round(error_rate(c.hits, c.substitutions, c.deletions, c.insertions), 4) for c in counts]
            pooled = error_rate(*(sum(getattr(c, f) for c in counts)
                                  for f in ("hits", "substitutions", "deletions", "insertions")))
            run = {"wall_s": round(summary["wall_s"], 1), "s_per_call_hour": round(summary["wall_s"] / hours, 1),
                   "model_audio_s": round(summary["model_audio_s"], 1), "wer_pooled": round(pooled, 4),
                   "wer_per_channel": wer}
            if method == "vad":
                convs = {r["id"]: r for r in rows if r["level"] == "conversation"}
                run["turns"] = {n: turn_report(c, convs[n]["turns"]) for n, c in calls.items()}
            report["runs"][method] = run
            print(f"{method:>8}: wall {run['wall_s']:.1f} s ({run['s_per_call_hour']:.1f} s per call hour), model "
                  f"audio {run['model_audio_s']:.0f} s, WER {100 * pooled:.1f} %", flush=True)
    win, seg = report["runs"]["windows"], report["runs"]["vad"]
    report["model_audio_ratio"] = round(seg["model_audio_s"] / win["model_audio_s"], 3)
    report["job_time_ratio"] = round(seg["wall_s"] / win["wall_s"], 3)
    report["channels_no_worse"] = sum(v <= w for v, w in zip(seg["wer_per_channel"], win["wer_per_channel"]))
    report["vad_audio_s_per_s_one_core"] = round(vad_speed(next(iter(calls.values()))))
    turns = seg["turns"].values()
    print(f"model audio vad / windows: {report['model_audio_ratio']:.3f}; job time {report['job_time_ratio']:.3f}; "
          f"channels with WER no worse: {report['channels_no_worse']} of {2 * args.calls}")
    print(f"turn order matches in {sum(t['order_matches'] for t in turns)} of {args.calls} calls; mean start error "
          f"{np.mean([t['start_error_s'] for t in turns]):.3f} s, end {np.mean([t['end_error_s'] for t in turns]):.3f} s")
    print(f"VAD alone: {report['vad_audio_s_per_s_one_core']} audio-s/s on one core")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
