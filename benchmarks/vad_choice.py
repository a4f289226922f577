"""Which voice-activity detector for call segments (issue 15): silero-vad vs webrtcvad vs an energy detector.

    # the candidates are not dependencies yet (both install without their declared dependencies)
    .venv/bin/pip install --no-deps silero-vad==6.2.3 webrtcvad-wheels
    .venv/bin/python benchmarks/vad_choice.py [--minutes 10] [--echo-db -24] [--noise-dbfs -50] [--json F]

`energy` is the first, whole-channel version (noise floor from the whole channel); `sew_pipeline.vad` is what the
pipeline runs (segmentation.method: vad): the same rule streaming, with a running floor, speech-frame counts and
padding (its 0.2 s padding counts against its precision here).

Calls: tests/support/calls.py generates two-channel 8 kHz calls from the demo corpus's synthetic utterances with
ground-truth turns (alternating turns, pauses, some overlap, line noise, and the other party's echo at -24 dB on
each channel: what a VAD must *not* call speech). Per channel, each detector's speech segments are compared with
the truth on 10 ms frames (accuracy, recall of speech frames, precision, and the share of echo-only frames
called speech), plus the mean distance of segment starts to the nearest true turn start. Speed: audio seconds
per second on one core (torch 1 thread).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FRAME_S = 0.01


def energy_vad(x: np.ndarray, sr: int) -> list[tuple[float, float]]:
    """20 ms frames above the channel's noise floor (10th percentile) + 15 dB, 0.3 s hangover, >= 0.2 s."""
    hop = int(0.02 * sr)
    frames = x[: len(x) // hop * hop].reshape(-1, hop)
    db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    on = db > np.percentile(db, 10) + 15
    return _segments(on, 0.02, hangover_s=0.3, min_s=0.2)


def pipeline_vad(x: np.ndarray, sr: int) -> list[tuple[float, float]]:
    """sew_pipeline.vad as the decode stage runs it (streaming, running floor), here on the 8 kHz channel."""
    from sew_pipeline import vad
    frame = int(0.02 * sr)
    return [(s.start / sr, s.end / sr) for s in vad.segments(x, sr, frame=frame, align=2 * frame)]


def webrtc_vad(x: np.ndarray, sr: int, mode: int) -> list[tuple[float, float]]:
    import webrtcvad
    vad, hop = webrtcvad.Vad(mode), int(0.03 * sr)
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    on = np.array([vad.is_speech(pcm[i:i + hop].tobytes(), sr) for i in range(0, len(pcm) - hop + 1, hop)])
    return _segments(on, 0.03, hangover_s=0.3, min_s=0.2)


def silero(x: np.ndarray, sr: int, model) -> list[tuple[float, float]]:
    import torch
    from silero_vad import get_speech_timestamps
    ts = get_speech_timestamps(torch.from_numpy(x), model, sampling_rate=sr, return_seconds=True)
    return [(t["start"], t["end"]) for t in ts]


def _segments(on: np.ndarray, step_s: float, hangover_s: float, min_s: float) -> list[tuple[float, float]]:
    segs: list[list[float]] = []
    for i in np.flatnonzero(on):
        s, e = i * step_s, (i + 1) * step_s
        if segs and s - segs[-1][1] <= hangover_s:
            segs[-1][1] = e
        else:
            segs.append([s, e])
    return [(s, e) for s, e in segs if e - s >= min_s]


def score(call, channel: int, segments: list[tuple[float, float]]) -> dict:
    from tests.support.calls import span_frames, truth_frames
    own, echo_only = truth_frames(call, channel, FRAME_S)
    got = span_frames(segments, len(own), FRAME_S)
    starts = [t.start_s for t in call.turns if t.channel == channel]
    return {"accuracy": float(np.mean(got == own)), "recall": float(got[own].mean()),
            "precision": float(own[got].mean()) if got.any() else 0.0,
            "echo_called_speech": float(got[echo_only].mean()) if echo_only.any() else 0.0,
            "start_error_s": float(np.mean([min(abs(s - t) for t in starts) for s, _ in segments])) if segments else None}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--echo-db", type=float, default=-24.0, help="echo of the other party, dB below the speaker")
    ap.add_argument("--noise-dbfs", type=float, default=-50.0, help="line noise level")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch
    from silero_vad import load_silero_vad
    from tests.support.calls import SR, demo_utterances, make_call
    torch.set_num_threads(1)
    call = make_call(demo_utterances(), args.minutes * 60, seed=3, echo_db=args.echo_db, noise_dbfs=args.noise_dbfs)
    model = load_silero_vad()
    detectors = {"energy": lambda x: energy_vad(x, SR), "sew_pipeline.vad": lambda x: pipeline_vad(x, SR),
                 "silero-vad 6.2.3": lambda x: silero(x, SR, model),
                 **{f"webrtcvad mode {m}": (lambda x, m=m: webrtc_vad(x, SR, m)) for m in (1, 3)}}
    report = {"minutes": args.minutes, "sample_rate": SR, "echo_db": args.echo_db, "noise_dbfs": args.noise_dbfs,
              "speech_fraction": [round(call.speech_fraction(c), 3) for c in (0, 1)], "results": {}}
    for name, detect in detectors.items():
        per_channel, seconds = [], 0.0
        for channel in (0, 1):
            t0 = time.perf_counter()
            segments = detect(call.audio[:, channel].copy())
            seconds += time.perf_counter() - t0
            per_channel.append(score(call, channel, segments))
        mean = {k: round(float(np.mean([p[k] for p in per_channel if p[k] is not None])), 3) for k in per_channel[0]}
        report["results"][name] = {**mean, "audio_s_per_s": round(2 * call.duration_s / seconds)}
        print(f"{name:>20}: " + ", ".join(f"{k} {v}" for k, v in report["results"][name].items()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
