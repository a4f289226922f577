"""Feature extraction and CTC greedy decoding against transformers' Wav2Vec2 processor classes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

from sew_pipeline.models import CTCTokenizer, FeatureExtractor

LIBRISPEECH_VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "E": 5, "T": 6, "A": 7, "O": 8, "N": 9,
                     "I": 10, "H": 11, "S": 12, "R": 13, "D": 14, "L": 15, "U": 16, "M": 17, "W": 18, "C": 19,
                     "F": 20, "G": 21, "Y": 22, "P": 23, "B": 24, "V": 25, "K": 26, "'": 27, "X": 28, "J": 29,
                     "Q": 30, "Z": 31}


@pytest.fixture()
def vocab_dir(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps(LIBRISPEECH_VOCAB))
    return tmp_path


def test_normalisation_matches_reference_with_attention_mask():
    rng = np.random.default_rng(0)
    waves = [rng.normal(0.3, 2.0, 16000).astype(np.float32), rng.normal(-1, 0.1, 9001).astype(np.float32)]
    ref = transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True, do_normalize=True)
    expected = ref(waves, sampling_rate=16000, padding=True, return_tensors="pt")
    ours = FeatureExtractor(return_attention_mask=True)(waves)
    assert torch.equal(ours["attention_mask"], expected["attention_mask"].long())
    assert (ours["input_values"] - expected["input_values"]).abs().max() <= 1e-5
    row = ours["input_values"][1, :9001].numpy()
    assert abs(row.mean()) < 1e-4 and abs(row.std() - 1) < 1e-3
    assert torch.all(ours["input_values"][1, 9001:] == 0)


def test_single_utterance_matches_reference_without_mask():
    wave = np.random.default_rng(1).normal(0, 0.05, 12345).astype(np.float32)
    ref = transformers.Wav2Vec2FeatureExtractor(return_attention_mask=False)([wave], sampling_rate=16000,
                                                                            return_tensors="pt")
    ours = FeatureExtractor(return_attention_mask=False)([wave])
    assert ours["attention_mask"] is None
    assert (ours["input_values"] - ref["input_values"]).abs().max() <= 1e-5


def test_preprocessor_config_round_trip(tmp_path):
    FeatureExtractor(return_attention_mask=True, padding_value=0.0).save_pretrained(tmp_path)
    ref = transformers.Wav2Vec2FeatureExtractor.from_pretrained(tmp_path)
    assert ref.return_attention_mask is True and ref.sampling_rate == 16000
    assert FeatureExtractor.from_pretrained(tmp_path) == FeatureExtractor(return_attention_mask=True)


def test_greedy_decoding_collapses_before_dropping_blanks(vocab_dir):
    tok = CTCTokenizer.from_pretrained(vocab_dir)
    ref = transformers.Wav2Vec2CTCTokenizer(str(vocab_dir / "vocab.json"))
    H, E, L, O, W, R, D, bar, blank = 11, 5, 15, 8, 18, 13, 14, 4, 0
    # "L L" separated by a blank must stay two letters; repeated frames collapse to one.
    ids = [blank, H, H, E, L, L, blank, L, O, O, bar, bar, W, blank, O, R, L, D, D, blank]
    assert tok.decode(ids) == "HELLO WORLD"
    assert tok.decode(ids) == ref.decode(ids)


def test_word_times_follow_frame_stride(vocab_dir):
    tok = CTCTokenizer.from_pretrained(vocab_dir)
    ref = transformers.Wav2Vec2CTCTokenizer(str(vocab_dir / "vocab.json"))
    rng = np.random.default_rng(2)
    ids = rng.choice([0, 0, 0, 4, 5, 6, 7, 8, 9], size=300).tolist()
    text, words = tok.decode_words(ids, seconds_per_frame=0.02, time_offset_s=10.0)
    out = ref.decode(ids, output_word_offsets=True)
    # Two delimiters separated by a blank give transformers a double space; we emit one.
    assert text == " ".join(out.text.split())
    assert "  " in out.text and "  " not in text
    assert [w for w, _, _ in words] == [o["word"] for o in out.word_offsets]
    for (_, start, end), o in zip(words, out.word_offsets):
        assert start == pytest.approx(10.0 + o["start_offset"] * 0.02)
        assert end == pytest.approx(10.0 + o["end_offset"] * 0.02)


def test_encode_round_trip(vocab_dir):
    tok = CTCTokenizer.from_pretrained(vocab_dir)
    ids = tok.encode("it's  a Test")
    assert tok.decode(ids) == "IT'S A TEST"
