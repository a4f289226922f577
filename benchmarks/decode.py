"""Decode + resample throughput per core, and peak memory for a long stereo call.

    .venv/bin/python benchmarks/decode.py [--call-hours 2] [--json out.json]

Every measurement runs in a fresh single-threaded subprocess, so audio-s/s is per core and the peak RSS
(ru_maxrss) belongs to that measurement alone. Inputs are synthesised into a temporary directory:
- 16 kHz mono FLAC (speech-band noise), read with `audio.load` (no resampling needed);
- 8 kHz G.711 mu-law stereo call -> 16 kHz, channels split (the call-center default);
- a `--call-hours` long mu-law stereo call, streamed as 30 s windows with `audio.iter_chunks` (what the
  pipeline does) and, for comparison, loaded whole with `audio.load`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SINGLE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def synth(path: Path, seconds: float, sr: int, channels: int, fmt: str, subtype: str) -> Path:
    """Write band-limited noise + tones block by block (never the whole file in memory)."""
    rng = np.random.default_rng(0)
    block = sr * 60
    with sf.SoundFile(path, "w", sr, channels, subtype=subtype, format=fmt) as f:
        for start in range(0, int(seconds * sr), block):
            n = min(block, int(seconds * sr) - start)
            t = (start + np.arange(n)) / sr
            x = 0.1 * rng.standard_normal((n, channels))
            for c in range(channels):
                x[:, c] += 0.3 * np.sin(2 * np.pi * (300 + 400 * c) * t)
            f.write(np.clip(x, -1, 1).astype(np.float32))
    return path


_WORKER = r"""
import json, resource, sys, time
from sew_pipeline import audio
mode, path, channels, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
row = {"audio_uri": path}
t0 = time.perf_counter()
samples = 0
for _ in range(repeats):
    if mode == "load":
        samples += sum(len(y) for _, y in audio.load(row, channels=channels, storage_options={}))
    else:  # stream: what the pipeline's decode stage does for long items
        for chunk in audio.iter_chunks(row, channels=channels, storage_options={}, window_s=30.0, overlap_s=5.0):
            samples += len(chunk.audio) - (5 * 16000 if chunk.window.index else 0)
wall = time.perf_counter() - t0
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"wall_s": wall, "peak_rss_mb": peak_kb / 1024, "baseline_rss_mb": base_kb / 1024,
                  "out_samples": samples}))
"""


def measure(mode: str, path: Path, channels: str, repeats: int = 1) -> dict:
    env = {**os.environ, **SINGLE_THREAD}
    out = subprocess.run([sys.executable, "-c", _WORKER, mode, str(path), channels, str(repeats)],
                         env=env, check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    info = sf.info(str(path))
    res["audio_s"] = info.duration * repeats
    res["audio_s_per_s"] = res["audio_s"] / res["wall_s"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600.0, help="length of the throughput inputs")
    ap.add_argument("--call-hours", type=float, default=2.0, help="length of the long stereo call")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        flac = synth(tmp / "speech16k.flac", args.seconds, 16000, 1, "FLAC", "PCM_16")
        results["flac_16k_mono"] = measure("load", flac, "mix")
        call = synth(tmp / "call8k.wav", args.seconds, 8000, 2, "WAV", "ULAW")
        results["mulaw_8k_stereo_to_16k_split"] = measure("load", call, "split")
        t0 = time.perf_counter()
        long_call = synth(tmp / "long_call.wav", args.call_hours * 3600, 8000, 2, "WAV", "ULAW")
        print(f"wrote {args.call_hours} h call ({long_call.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
        results["long_call_stream_windows"] = measure("stream", long_call, "split")
        results["long_call_load_whole"] = measure("load", long_call, "split")
        results["long_call_load_whole"]["output_mb"] = results["long_call_load_whole"]["out_samples"] * 4 / 2**20
    for name, r in results.items():
        print(f"{name:32s} {r['audio_s_per_s']:9.0f} audio-s/s/core  peak RSS {r['peak_rss_mb']:7.0f} MB "
              f"(baseline {r['baseline_rss_mb']:.0f} MB)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
