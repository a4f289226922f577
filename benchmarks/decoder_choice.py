"""Which beam decoder for LM decoding (issue 14): pyctcdecode vs flashlight-text, on the same logits and LM.

  # the candidates are not dependencies yet; pyctcdecode's wheel pins numpy<2, hence --no-deps
  .venv/bin/pip install kenlm==0.3.0 flashlight-text==0.0.7 && .venv/bin/pip install --no-deps pyctcdecode==0.5.0 pygtrie
  .venv/bin/python benchmarks/decoder_choice.py --lmplz /path/to/kenlm/build/bin/lmplz [--json out.json]

Logits: the shipped demo-ctc model on the shipped demo corpus (40 held-out utterances: unseen voices and
sentences). LM: a 3-gram ARPA built by KenLM's `lmplz` from the demo model's *training* sentences (the
grammar's seed-32 set, disjoint from the held-out seed-31 set, checked here), unigrams = its words. Both
decoders get the same ARPA, LM weight (alpha) and word insertion bonus (beta); each is timed on one core.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEMO = REPO / "sew_pipeline/assets/models/demo-ctc"
CORPUS = REPO / "sew_pipeline/assets/demo_corpus"


def demo_log_probs() -> tuple[list[np.ndarray], list[str], list[str]]:
    """Per-utterance [T, V] log-probabilities of demo-ctc, the references, and the vocabulary in id order."""
    import soundfile as sf
    import torch
    from sew_pipeline import models
    from sew_pipeline.audio import resample
    model = models.SEWForCTC.from_pretrained(DEMO).eval()
    fe = models.FeatureExtractor.from_pretrained(DEMO)
    out, refs = [], []
    for line in (CORPUS / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        x, sr = sf.read(CORPUS / row["audio_filepath"], dtype="float32")
        with torch.no_grad():
            logits = model(torch.as_tensor(fe([resample(x, sr, 16000)])["input_values"])).logits[0]
        out.append(torch.log_softmax(logits, -1).numpy())
        refs.append(row["text"])
    vocab = json.loads((DEMO / "vocab.json").read_text())
    return out, refs, [k for k, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


def training_text(refs: list[str]) -> list[str]:
    from training.synth import unique_sentences
    held_out = unique_sentences(500, seed=31)
    train = unique_sentences(18000, seed=32, exclude=set(held_out))
    assert not {r.lower() for r in refs} & set(train), "an evaluation sentence is in the LM text"
    return [s.upper() for s in train]


def pyctcdecode_decoder(labels: list[str], arpa: Path, words: list[str], alpha: float, beta: float):
    from pyctcdecode import build_ctcdecoder
    dec = build_ctcdecoder([{"<pad>": "", "|": " "}.get(x, x) for x in labels], str(arpa), unigrams=words,
                           alpha=alpha, beta=beta)
    return lambda lp, beam: dec.decode(lp, beam_width=beam)


def flashlight_decoder(labels: list[str], arpa: Path, words: list[str], alpha: float, beta: float):
    """Lexicon decoder (words restricted to `words`, spelled letter by letter + '|'), KenLM scored."""
    from flashlight.lib.text.decoder import (CriterionType, KenLM, LexiconDecoder, LexiconDecoderOptions,
                                            SmearingMode, Trie)
    from flashlight.lib.text.dictionary import Dictionary
    tokens = Dictionary([{"<pad>": "-"}.get(x, x) for x in labels])
    word_dict = Dictionary(words + ["<unk>"])
    lm = KenLM(str(arpa), word_dict)
    sil, blank, unk = tokens.get_index("|"), tokens.get_index("-"), word_dict.get_index("<unk>")
    trie, start = Trie(len(labels), sil), lm.start(False)
    for w in words:
        wi = word_dict.get_index(w)
        trie.insert([tokens.get_index(c) for c in w] + [sil], wi, lm.score(start, wi)[1])
    trie.smear(SmearingMode.MAX)

    def decode(lp: np.ndarray, beam: int) -> str:
        opts = LexiconDecoderOptions(beam_size=beam, beam_size_token=len(labels), beam_threshold=25.0,
                                     lm_weight=alpha, word_score=beta, unk_score=float("-inf"), sil_score=0.0,
                                     log_add=False, criterion_type=CriterionType.CTC)
        e = np.ascontiguousarray(lp, dtype=np.float32)
        best = LexiconDecoder(opts, trie, lm, sil, blank, unk, [], False).decode(e.ctypes.data, *e.shape)[0]
        return " ".join(word_dict.get_entry(i) for i in best.words if i >= 0)
    return decode


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lmplz", required=True, help="KenLM's lmplz binary (built from the kenlm source tree)")
    ap.add_argument("--order", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--beams", default="10,50,100")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import jiwer
    import torch
    torch.set_num_threads(1)
    from sew_pipeline.models import CTCTokenizer
    log_probs, refs, labels = demo_log_probs()
    audio_s = sum(lp.shape[0] for lp in log_probs) * 0.02
    text = training_text(refs)
    words = sorted({w for s in text for w in s.split()})
    results: list[dict] = []

    def run(name: str, beam: int | None, decode) -> None:
        t = time.perf_counter()
        hyps = [decode(lp) for lp in log_probs]
        secs = time.perf_counter() - t
        results.append({"decoder": name, "beam": beam, "wer": round(100 * jiwer.wer(refs, hyps), 2),
                        "cer": round(100 * jiwer.cer(refs, hyps), 2), "audio_s_per_s_1core": round(audio_s / secs)})
        print(f"{name:12s} beam={beam!s:4s} WER {results[-1]['wer']:5.2f} %  CER {results[-1]['cer']:5.2f} %  "
              f"{results[-1]['audio_s_per_s_1core']:6d} audio-s/s on one core")

    tok = CTCTokenizer.from_pretrained(DEMO)
    run("greedy", None, lambda lp: tok.decode(lp.argmax(-1)))
    with tempfile.TemporaryDirectory() as tmp:
        arpa = Path(tmp) / "lm.arpa"
        with arpa.open("w") as f:
            subprocess.run([args.lmplz, "-o", str(args.order), "--discount_fallback"], input="\n".join(text) + "\n",
                           stdout=f, stderr=subprocess.DEVNULL, text=True, check=True)
        for name, make in (("pyctcdecode", pyctcdecode_decoder), ("flashlight", flashlight_decoder)):
            decoder = make(labels, arpa, words, args.alpha, args.beta)
            for beam in map(int, args.beams.split(",")):
                run(name, beam, lambda lp, b=beam: decoder(lp, b))
    out = {"utterances": len(refs), "audio_s": round(audio_s, 1), "lm": f"{args.order}-gram, {len(text)} sentences",
           "alpha": args.alpha, "beta": args.beta, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
