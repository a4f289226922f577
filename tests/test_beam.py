"""Beam search with an n-gram LM (sew_pipeline.beam) against its peer: on the same logits, transformers'
Wav2Vec2ProcessorWithLM (pyctcdecode) with the same ARPA, lexicon, alpha and beta must give the same
transcripts, word frames and scores. Logits are the shipped demo-ctc model's on the shipped demo corpus,
plus noisy synthetic ones; the ARPA is written by the test (tests/support/arpa.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sew_pipeline import beam
from sew_pipeline.audio import resample
from sew_pipeline.models import FeatureExtractor, SEWForCTC
from tests.support.arpa import write_arpa

pytest.importorskip("kenlm", reason="the beam tests need kenlm (make test installs it)")
pyctcdecode = pytest.importorskip("pyctcdecode", reason="the parity reference (make test installs it)")
from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ProcessorWithLM  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "sew_pipeline" / "assets"
CTC, CORPUS = ASSETS / "models" / "demo-ctc", ASSETS / "demo_corpus"
N_UTTERANCES = 12
# Sentences of the demo grammar's kind; the first two corpus sentences are in them, so the LM knows some
# bigrams of the evaluation text and not others.
LM_TEXT = ["DIANA DROPPED THIS CAPTAIN IN THE FUNNY CORNER", "HIS HOT LETTER LIKED YOU BEFORE NOON",
           "THE CAPTAIN LIKED THE LETTER", "DIANA LIKED THE FUNNY CAPTAIN", "YOU DROPPED HIS HOT CORNER",
           "THE LETTER IN THE CORNER", "HIS CAPTAIN DROPPED THE LETTER BEFORE NOON"]


@pytest.fixture(scope="module")
def utterances() -> list[np.ndarray]:
    """demo-ctc's raw logits [T, V] for the first corpus utterances (what Wav2Vec2ProcessorWithLM is given)."""
    model, fe = SEWForCTC.from_pretrained(CTC).eval(), FeatureExtractor.from_pretrained(CTC)
    out = []
    for line in (CORPUS / "manifest.jsonl").read_text().splitlines()[:N_UTTERANCES]:
        row = json.loads(line)
        x, sr = sf.read(CORPUS / row["audio_filepath"], dtype="float32")
        with torch.inference_mode():
            out.append(model(torch.as_tensor(fe([resample(x, sr, 16000)])["input_values"])).logits[0].numpy())
    return out


@pytest.fixture(scope="module")
def with_lm(tmp_path_factory) -> Path:
    """A "-with-lm" folder saved by transformers itself: alphabet.json + language_model/ (ARPA, unigrams)."""
    folder = tmp_path_factory.mktemp("with_lm")
    arpa = write_arpa(LM_TEXT, folder / "lm.arpa")
    vocab = json.loads((CTC / "vocab.json").read_text())
    labels = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    # two LM words left out of the lexicon: they are scored by the LM and penalised as unknown words
    words = sorted({w for s in LM_TEXT for w in s.split()} - {"NOON", "FUNNY"})
    decoder = pyctcdecode.build_ctcdecoder(labels, str(arpa), unigrams=words, alpha=0.6, beta=1.2)
    processor = Wav2Vec2ProcessorWithLM(feature_extractor=Wav2Vec2FeatureExtractor(),
                                        tokenizer=Wav2Vec2CTCTokenizer(str(CTC / "vocab.json")), decoder=decoder)
    processor.save_pretrained(folder / "saved")
    return folder / "saved"


def ours(folder: Path, beam_width=100, beam_prune_logp=-10.0, token_min_logp=-5.0, hotwords=(), hotword_weight=10.0,
         **lm_overrides) -> beam.BeamSearch:
    model, unigrams, attrs = beam.lm_files(folder / beam.LM_DIR)
    lm = beam.NgramLM(str(model), beam.read_words(unigrams), **{**attrs, **lm_overrides})
    return beam.BeamSearch(beam.read_alphabet(folder), lm, beam_width=beam_width, beam_prune_logp=beam_prune_logp,
                           token_min_logp=token_min_logp, hotwords=beam.Hotwords(hotwords, hotword_weight))


SETTINGS = [
    {},                                                                   # transformers' defaults, saved alpha/beta
    {"beam_width": 8, "alpha": 1.5, "beta": 0.0},                         # a strong LM: it changes words
    {"beam_width": 30, "token_min_logp": -9.0, "beam_prune_logp": -20.0,  # many candidates and beams
     "unk_score_offset": -4.0, "lm_score_boundary": False},
    {"hotwords": ["FUNNY CORNER", "ZORBLAX"], "hotword_weight": 4.0},     # in and out of the lexicon
]


@pytest.mark.parametrize("setting", SETTINGS, ids=["defaults", "strong-lm", "wide", "hotwords"])
def test_transcripts_words_and_scores_equal_wav2vec2_processor_with_lm(with_lm, utterances, setting):
    reference = Wav2Vec2ProcessorWithLM.from_pretrained(with_lm)
    lm_keys = {"alpha", "beta", "unk_score_offset"}
    mine = ours(with_lm, **{k: v for k, v in setting.items() if k not in lm_keys | {"lm_score_boundary"}},
                **{k: v for k, v in setting.items() if k in lm_keys},
                **({"score_boundary": setting["lm_score_boundary"]} if "lm_score_boundary" in setting else {}))
    differ_from_greedy = 0
    for logits in utterances:
        want = reference.decode(logits, output_word_offsets=True, n_best=3, **setting)
        got = mine.decode(logits, n_best=3)
        assert [h.text for h in got] == want.text
        assert [[(w, s, e) for w, s, e in h.words] for h in got] == \
            [[(o["word"], o["start_offset"], o["end_offset"]) for o in hyp] for hyp in want.word_offsets]
        np.testing.assert_allclose([h.acoustic_score for h in got], want.logit_score, rtol=0, atol=1e-9)
        np.testing.assert_allclose([h.score for h in got], want.lm_score, rtol=0, atol=1e-9)
        greedy = reference.tokenizer.decode(logits.argmax(-1))
        differ_from_greedy += got[0].text != greedy
    assert differ_from_greedy >= 3, "the LM should change some transcripts, else the comparison shows little"


def test_without_lm_beam_equals_pyctcdecode_without_lm(utterances):
    vocab = json.loads((CTC / "vocab.json").read_text())
    labels = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    reference = pyctcdecode.build_ctcdecoder(labels)
    mine = beam.BeamSearch(beam.labels_from_vocab(vocab), None, beam_width=16)
    for logits in utterances[:4]:
        want = reference.decode_beams(logits, beam_width=16)
        got = mine.decode(logits, n_best=len(want))
        assert [(h.text, h.acoustic_score) for h in got] == [(b[0], b[3]) for b in want]


def test_noisy_synthetic_logits_equal_the_reference(with_lm):
    """Flat, noisy frames: many candidates per frame, many merges and near-ties."""
    rng = np.random.default_rng(7)
    reference = Wav2Vec2ProcessorWithLM.from_pretrained(with_lm)
    mine = ours(with_lm, beam_width=24, token_min_logp=-4.0)
    for _ in range(6):
        logits = rng.normal(0, 1.5, (60, len(beam.read_alphabet(with_lm)))).astype(np.float32)
        logits[:, 0] += 2.0  # blank-heavy, as CTC output is
        want = reference.decode(logits, beam_width=24, token_min_logp=-4.0, n_best=5)
        got = mine.decode(logits, n_best=5)
        assert [h.text for h in got] == want.text
        np.testing.assert_allclose([h.score for h in got], want.lm_score, rtol=0, atol=1e-9)


def test_a_word_outside_the_lexicon_is_kept_with_the_unknown_word_penalty(with_lm):
    """Documented behaviour: a spelled-out word the lexicon lacks stays in the text (no forced
    substitution); it costs unk_score_offset (x alpha), so only strong acoustic evidence keeps it."""
    alphabet = beam.read_alphabet(with_lm)
    logits = np.full((0, len(alphabet)), -8.0, np.float32)
    for ch in "THE ZORBLAX":
        frame = np.full(len(alphabet), -8.0, np.float32)
        frame[alphabet.index(ch)] = 8.0
        blank = np.full(len(alphabet), -8.0, np.float32)
        blank[alphabet.index("")] = 8.0
        logits = np.vstack([logits, frame, blank])
    soft, hard = ours(with_lm, unk_score_offset=-1.0), ours(with_lm, unk_score_offset=-10.0)
    assert soft.decode(logits)[0].text == hard.decode(logits)[0].text == "THE ZORBLAX"
    gap = soft.decode(logits)[0].score - hard.decode(logits)[0].score
    assert gap > 9.0 * 0.6 * 0.99  # one unknown word: (10 - 1) x alpha, and the partial-word penalties besides


def test_broken_folders_say_what_is_wrong(tmp_path):
    (tmp_path / beam.LM_DIR).mkdir()
    with pytest.raises(ValueError, match="expected one KenLM file"):
        beam.lm_files(tmp_path / beam.LM_DIR)
    (tmp_path / "alphabet.json").write_text(json.dumps({"labels": ["", "▁A"], "is_bpe": True}))
    with pytest.raises(ValueError, match="BPE"):
        beam.read_alphabet(tmp_path)
    with pytest.raises(ValueError, match="BPE"):
        beam.labels_from_vocab({"<pad>": 0, "▁the": 1})
