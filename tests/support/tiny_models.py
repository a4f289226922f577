"""Tiny random-weight SEW checkpoints in the shipped layout (fast on CPU; outputs are gibberish)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

LIBRISPEECH_VOCAB = {t: i for i, t in enumerate(
    ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U",
     "M", "W", "C", "F", "G", "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z"])}
SPEECH_COMMANDS_LABELS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
                          "_silence_", "_unknown_"]


def tiny_sew_config(**overrides):
    from sew_pipeline.models import SEWConfig
    base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                conv_dim=(16,) * 13, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                classifier_proj_size=16, layerdrop=0.0, apply_spec_augment=False)
    base.update(overrides)
    return SEWConfig(**base)


def make_tiny_ctc(directory: Path) -> Path:
    import torch
    from sew_pipeline.models import CTCTokenizer, FeatureExtractor, SEWForCTC
    torch.manual_seed(0)
    model = SEWForCTC(tiny_sew_config(vocab_size=len(LIBRISPEECH_VOCAB)))
    model.save_pretrained(directory)
    CTCTokenizer(LIBRISPEECH_VOCAB).save_pretrained(directory)
    FeatureExtractor(return_attention_mask=True).save_pretrained(directory)
    return directory


def make_tiny_kws(directory: Path) -> Path:
    import torch
    from sew_pipeline.models import FeatureExtractor, SEWForSequenceClassification
    torch.manual_seed(0)
    model = SEWForSequenceClassification(tiny_sew_config().with_labels(SPEECH_COMMANDS_LABELS))
    model.save_pretrained(directory)
    FeatureExtractor(return_attention_mask=True).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_ctc_dir(tmp_path_factory) -> Path:
    return make_tiny_ctc(tmp_path_factory.mktemp("tiny-ctc"))


@pytest.fixture(scope="session")
def tiny_kws_dir(tmp_path_factory) -> Path:
    return make_tiny_kws(tmp_path_factory.mktemp("tiny-kws"))
