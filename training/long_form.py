"""Long-form check for the demo CTC model (issue 16): held-out sentences joined into 60 s+ recordings with pauses,
transcribed by `jobs/transcribe_corpus.py` (the whole pipeline: windows, model, stitching) at given window sizes,
against the same sentences transcribed one short utterance at a time.

One recording per held-out engine voice (flite rms, Festival ked_diphone): consecutive gen_heldout atoms of that
voice with 0.3-1.2 s pauses until ``--seconds``. Written as 16 kHz FLAC next to a manifest under training/work/long.
Run: python -m training.long_form [--model DIR] [--windows 30:2 20:2 10:1]  (prints and returns WER per setting)
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from training.common import WORK, UttSet
from training.compose import Utterance, assemble, text_of
from training.evaluate import ASSETS, ctc_transcribe
from training.train_ctc import error_rates

REPO = Path(__file__).resolve().parents[1]
VOICES = ("flite:rms", "festival:ked_diphone")


def recordings(held: UttSet, seconds: float, seed: int = 0) -> dict[str, Utterance]:
    rng = np.random.default_rng(seed)
    out = {}
    for voice in VOICES:
        idx = [i for i, r in enumerate(held.rows) if r["voice"] == voice]
        atoms, pauses, total = [], [], 0
        for i in idx:
            if total >= seconds * 16000:
                break
            if atoms:
                pauses.append(int(rng.uniform(0.3, 1.2) * 16000))
                total += pauses[-1]
            atoms.append(i)
            total += held.rows[i]["num_samples"]
        out[voice.replace(":", "-")] = Utterance(tuple(atoms), tuple(pauses), total)
    return out


def run_job(manifest: Path, out: Path, model: Path, window_s: float, overlap_s: float) -> list[dict]:
    from sew_pipeline.results import read_results
    shutil.rmtree(out, ignore_errors=True)  # the job resumes into an existing output: start clean per model
    subprocess.run([sys.executable, str(REPO / "jobs/transcribe_corpus.py"), "--set", f"manifest={manifest}",
                    "--set", f"output={out}", "--set", f"model={model}", "--set", f"window_s={window_s}",
                    "--set", f"overlap_s={overlap_s}"], check=True, capture_output=True, text=True)
    return read_results(str(out)).to_pylist()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ASSETS / "demo-ctc")
    ap.add_argument("--seconds", type=float, default=65.0)
    ap.add_argument("--windows", nargs="+", default=["30:2", "20:2", "10:1"], help="window_s:overlap_s settings")
    a = ap.parse_args(argv)
    held = UttSet("gen_heldout")
    recs = recordings(held, a.seconds)
    root = WORK / "long"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for name, u in recs.items():
        sf.write(root / f"{name}.flac", assemble(u, held.audio, rng), 16000, subtype="PCM_16")
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"id": n, "audio_filepath": f"{n}.flac", "text": text_of(u, held.rows)})
                                + "\n" for n, u in recs.items()))
    refs = [text_of(u, held.rows) for u in recs.values()]
    atoms = [i for u in recs.values() for i in u.atoms]
    short_hyps = ctc_transcribe(a.model, [held.audio(i) for i in atoms])
    report: dict = {"recordings": {n: round(u.num_samples / 16000, 1) for n, u in recs.items()},
                    "sentences": len(atoms),
                    "short_utterances_wer": round(error_rates([held.rows[i]["text"] for i in atoms], short_hyps)[1], 4)}
    for setting in a.windows:
        w, o = (float(x) for x in setting.split(":"))
        rows = {r["id"]: r for r in run_job(manifest, root / f"out_{w:g}_{o:g}", a.model, w, o)}
        hyps = [rows[n]["text"] or "" for n in recs]
        report[f"window_{w:g}_overlap_{o:g}_wer"] = round(error_rates(refs, hyps)[1], 4)
        print(setting, report[f"window_{w:g}_overlap_{o:g}_wer"], flush=True)
    (WORK / "results_long_form.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
