"""The demo LM: a KenLM 3-gram of demo-ctc's *training* sentences, shipped in the checkpoint folder in the
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
    """demo-ctc's training sentences (the grammar's seed-32 set), upper case, none of the evaluation texts."""
    from training.synth import unique_sentences
    held_out = unique_sentences(500, seed=31)
    text = [s.upper() for s in unique_sentences(18000, seed=32, exclude=set(held_out))]
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
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "kenlm==0.3.0", "-d", str(dl)], check=True)
        with tarfile.open(next(dl.glob("kenlm-*.tar.gz"))) as tar:
            tar.extractall(build, filter="data")
        src = next(p for p in build.iterdir() if p.name.startswith("kenlm-"))
        shutil.move(str(src), build / "src")
        (build / "build").mkdir(exist_ok=True)
        subprocess.run(["cmake", str(build / "src"), "-DCMAKE_BUILD_TYPE=Release"], cwd=build / "build", check=True)
        subprocess.run(["make", "-j2", "lmplz"], cwd=build / "build", check=True)
    return str(binary)


def build(model: Path, lmplz: str) -> Path:
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
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lmplz", default=None, help="KenLM's lmplz (default: PATH, else built here)")
    ap.add_argument("--model", default=str(DEMO), help="checkpoint folder to put the LM into")
    args = ap.parse_args(argv)
    build(Path(args.model), find_lmplz(args.lmplz))


if __name__ == "__main__":
    main()
