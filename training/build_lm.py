"""The demo LM: a KenLM 3-gram of demo-ctc's *training* sentences (fortunes training split + demo grammar), shipped in the checkpoint folder in the
layout transformers' Wav2Vec2ProcessorWithLM saves (alphabet.json, language_model/{attrs.json, unigrams.txt,
lm.arpa}), so `decoding.method: beam` finds it and transformers loads the folder unchanged.

    .venv/bin/python -m training.build_lm [--lmplz PATH] [--model DIR]

lmplz is KenLM's builder: found on PATH, given with --lmplz, or built here from the kenlm sdist's source tree
(needs cmake and Debian's libboost-program-options-dev libboost-system-dev libboost-thread-dev
libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev; ~3 min on 2 cores). The text never holds an
evaluation sentence: the held-out demo corpus sentences are excluded and checked.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "sew_pipeline/assets/models/demo-ctc"
CORPUS = REPO / "sew_pipeline/assets/demo_corpus"
ORDER = 3
# The weights benchmarks/decoder_choice.py ran with (a first guess, not tuned on the demo corpus).
ATTRS = {"alpha": 0.5, "beta": 1.0, "unk_score_offset": -10.0, "score_boundary": True}


def lm_sentences() -> list[str]:
    """demo-ctc's training text: the fortunes training split (training/texts.py, needs Debian's fortunes data)
    and the demo-grammar sentences of training/synth_general.py, upper case; no evaluation text is in it."""
    from training import texts
    from training.synth import unique_sentences
    from training.synth_general import GRAMMAR_SENTENCES
    train, _ = texts.split(texts.fortune_sentences())
    if not train:
        raise SystemExit(f"no fortunes text under {texts.FORTUNES}: apt-get install fortunes fortunes-min")
    grammar = unique_sentences(GRAMMAR_SENTENCES, seed=32, exclude=set(unique_sentences(500, seed=31)))
    text = train + [s.upper() for s in grammar]
    corpus = {json.loads(x)["text"] for x in (CORPUS / "manifest.jsonl").read_text().splitlines() if x.strip()}
    assert not corpus & set(text), "an evaluation sentence is in the LM text"
    return text


def find_lmplz(given: str | None) -> str:
    if given:
        return given
    if shutil.which("lmplz"):
        return shutil.which("lmplz")
    build = Path(tempfile.gettempdir(), "kenlm-build")
    binary = build / "build/bin/lmplz"
    if not binary.exists():
        dl = build / "dl"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-build-isolation",
                        "kenlm==0.3.0", "-d", str(dl)], check=True)
        with tarfile.open(next(dl.glob("kenlm-*.tar.gz"))) as tar:
            tar.extractall(build, filter="data")
        src = next(p for p in build.iterdir() if p.name.startswith("kenlm-"))
        shutil.move(str(src), build / "src")
        (build / "build").mkdir(exist_ok=True)
        subprocess.run(["cmake", str(build / "src"), "-DCMAKE_BUILD_TYPE=Release"], cwd=build / "build", check=True)
        subprocess.run(["make", "-j2", "lmplz"], cwd=build / "build", check=True)
    return str(binary)


def build(model: Path, lmplz: str) -> list[str]:
    from sew_pipeline.beam import LM_DIR, labels_from_vocab
    text = lm_sentences()
    out = model / LM_DIR
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    arpa = out / "lm.arpa"
    with open(arpa, "w") as f:
        subprocess.run([lmplz, "-o", str(ORDER), "--discount_fallback"], input="\n".join(text) + "\n", text=True,
                       stdout=f, stderr=subprocess.DEVNULL, check=True)
    (out / "unigrams.txt").write_text("\n".join(sorted({w for s in text for w in s.split()})) + "\n")
    (out / "attrs.json").write_text(json.dumps(ATTRS))
    vocab = json.loads((model / "vocab.json").read_text())
    (model / "alphabet.json").write_text(json.dumps({"labels": labels_from_vocab(vocab), "is_bpe": False}))
    print(f"{arpa}: {arpa.stat().st_size / 1e6:.1f} MB, {len(text)} sentences, order {ORDER}")
    return text


CARD_HEAD = "## Language model (beam decoding)"


def evaluate(model: Path, beam_width: int = 50) -> dict:
    """Greedy vs beam+LM WER on the shipped demo corpus (whole utterances), 16 kHz FLAC and 8 kHz mu-law."""
    import soundfile as sf
    import torch
    from sew_pipeline import beam, metrics
    from sew_pipeline.audio import resample
    from sew_pipeline.models import CTCTokenizer, FeatureExtractor, SEWForCTC
    from training.evaluate import telephone_mulaw
    net, fe, tok = SEWForCTC.from_pretrained(model).eval(), FeatureExtractor.from_pretrained(model), \
        CTCTokenizer.from_pretrained(model)
    lm_file, unigrams, attrs = beam.lm_files(model / beam.LM_DIR)
    search = beam.BeamSearch(beam.read_alphabet(model), beam.NgramLM(str(lm_file), beam.read_words(unigrams), **attrs),
                             beam_width=beam_width)
    rows = [json.loads(x) for x in (CORPUS / "manifest.jsonl").read_text().splitlines() if x.strip()]

    def wer(hyps: list[str]) -> float:
        counts = metrics.word_counts([r["text"] for r in rows], hyps)
        return round(sum(c.substitutions + c.deletions + c.insertions for c in counts) / sum(c.ref_len for c in counts), 4)
    out = {"beam_width": beam_width, **attrs}
    for name, mulaw in (("", False), ("_8k_mulaw", True)):
        greedy, beamed = [], []
        for r in rows:
            x, sr = sf.read(CORPUS / r["audio_filepath"], dtype="float32")
            x = resample(x, sr, 16000)
            x = telephone_mulaw(x) if mulaw else x  # 8 kHz mu-law and back, as a stored telephone copy
            with torch.inference_mode():
                logits = net(torch.as_tensor(fe([x])["input_values"])).logits[0].numpy()
            greedy.append(tok.decode(logits.argmax(-1)))
            beamed.append(search.decode(logits)[0].text)
        out[f"demo_corpus_wer{name}_greedy"], out[f"demo_corpus_wer{name}_beam"] = wer(greedy), wer(beamed)
    return out


def write_card(model: Path, res: dict) -> None:
    """eval.json's `language_model` entry and the card's LM section, both from ``res``."""
    gate = json.loads((model / "eval.json").read_text())
    gate["language_model"] = res
    (model / "eval.json").write_text(json.dumps(gate, indent=1) + "\n")
    card = (model / "MODEL_CARD.md").read_text().split(CARD_HEAD)[0].rstrip() + "\n\n"
    card += f"""{CARD_HEAD}
`language_model/` (the Wav2Vec2ProcessorWithLM layout; `decoding.method: beam` uses it): a KenLM {ORDER}-gram
(`lmplz --discount_fallback`) of the {res['lm_sentences']:,} *training* sentences (the fortunes training split and the
demo-grammar part), unigrams = their {res['lm_words']:,} words; alpha {res['alpha']}, beta {res['beta']},
unk_score_offset {res['unk_score_offset']}. Built by `training/build_lm.py`. On the shipped demo corpus (40 held-out
utterances: unseen voices and unseen sentences, whole utterances, beam {res['beam_width']}):

| audio | greedy WER | beam + LM WER |
|---|---|---|
| 16 kHz FLAC | {100 * res['demo_corpus_wer_greedy']:.1f} % | {100 * res['demo_corpus_wer_beam']:.1f} % |
| 8 kHz mu-law | {100 * res['demo_corpus_wer_8k_mulaw_greedy']:.1f} % | {100 * res['demo_corpus_wer_8k_mulaw_beam']:.1f} % |

The held-out sentences are unseen fortunes sentences (3.8 % of their words never occur in the LM text), so the
gain is what an LM of the same kind of text gives, not a memorised grammar; on real speech (LibriSpeech) the LM
cannot repair what the acoustic model does not hear.
"""
    (model / "MODEL_CARD.md").write_text(card)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lmplz", default=None, help="KenLM's lmplz (default: PATH, else built here)")
    ap.add_argument("--model", default=str(DEMO), help="checkpoint folder to put the LM into")
    args = ap.parse_args(argv)
    model = Path(args.model)
    text = build(model, find_lmplz(args.lmplz))
    res = {**evaluate(model), "lm_sentences": len(text), "lm_words": len({w for t in text for w in t.split()})}
    write_card(model, res)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
