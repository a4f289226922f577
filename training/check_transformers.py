"""Optional check: the exported demo folders load in transformers as ordinary SEW checkpoints and agree with ours.

The only place under training/ that imports transformers (a test-only dependency).
Run: python -m training.check_transformers [--n 20]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from sew_pipeline.models import CTCTokenizer, FeatureExtractor, SEWForCTC, SEWForSequenceClassification
from training.common import UttSet
from training.evaluate import HELDOUT

ASSETS = Path(__file__).resolve().parents[1] / "sew_pipeline" / "assets" / "models"


@torch.no_grad()
def main(argv: list[str] | None = None) -> bool:
    import transformers as hf

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=20)
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    ok = True
    ctc_dir, kws_dir = ASSETS / "demo-ctc", ASSETS / "demo-kws"
    held = UttSet(HELDOUT)
    if (ctc_dir / "config.json").exists():
        ours, fe, tok = SEWForCTC.from_pretrained(ctc_dir), FeatureExtractor.from_pretrained(ctc_dir), \
            CTCTokenizer.from_pretrained(ctc_dir)
        theirs = hf.SEWForCTC.from_pretrained(str(ctc_dir)).eval()
        proc = hf.Wav2Vec2Processor.from_pretrained(str(ctc_dir))
        same, maxdiff = 0, 0.0
        for i in range(a.n):
            w = held.audio(i)
            b = fe([w])
            lo = ours(b["input_values"], attention_mask=b["attention_mask"]).logits
            hb = proc(w, sampling_rate=16000, return_tensors="pt")
            lt = theirs(hb.input_values, attention_mask=hb.attention_mask).logits
            maxdiff = max(maxdiff, float((lo - lt).abs().max()))
            t_ours = tok.batch_decode(lo)[0]
            t_hf = proc.batch_decode(lt.argmax(-1))[0]
            same += int(t_ours == " ".join(t_hf.split()))
        print(f"demo-ctc: {same}/{a.n} identical transcripts, max |logit diff| {maxdiff:.2e}")
        ok &= same == a.n
    if (kws_dir / "config.json").exists():
        ours = SEWForSequenceClassification.from_pretrained(kws_dir)
        theirs = hf.SEWForSequenceClassification.from_pretrained(str(kws_dir)).eval()
        fe = FeatureExtractor.from_pretrained(kws_dir)
        kws = UttSet("kws_heldout")
        waves = [np.pad(kws.audio(i), (0, max(0, 16000 - kws.rows[i]["num_samples"])))[:16000] for i in range(a.n)]
        b = fe(waves)
        lo = ours(b["input_values"], attention_mask=b["attention_mask"]).logits
        lt = theirs(b["input_values"], attention_mask=b["attention_mask"]).logits
        same = int((lo.argmax(-1) == lt.argmax(-1)).sum())
        print(f"demo-kws: {same}/{a.n} identical labels, max |logit diff| {float((lo - lt).abs().max()):.2e}, "
              f"id2label {theirs.config.id2label}")
        ok &= same == a.n
    return ok


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
