"""Our SEW against transformers 5.24 (the parity reference), same random weights, fp32, max abs diff <= 1e-4."""
from __future__ import annotations

import tempfile

import pytest
import soundfile as sf
import torch
import transformers

from sew_pipeline.models import SEWConfig, SEWForCTC, SEWForSequenceClassification, SEWModel
from tests.support.paths import LIBRISPEECH_ROOT

TOL = 1e-4
TINY = dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12, vocab_size=32)
SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2, vocab_size=32,
             conv_dim=(32,) * 13, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


def pair(kind: str, eager: bool = False, **config):
    """A transformers model with fresh random weights, and ours loaded from its save_pretrained folder."""
    torch.manual_seed(0)
    ref_cls = {"base": transformers.SEWModel, "ctc": transformers.SEWForCTC,
               "cls": transformers.SEWForSequenceClassification}[kind]
    ours_cls = {"base": SEWModel, "ctc": SEWForCTC, "cls": SEWForSequenceClassification}[kind]
    hf_cfg = transformers.SEWConfig(**config)
    if eager:
        hf_cfg._attn_implementation = "eager"
    ref = ref_cls(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        ours = ours_cls.from_pretrained(d)
    return ours.eval(), ref


def padded_batch(lengths: list[int], seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(lengths), max(lengths))
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randn(n, generator=g)
        mask[i, :n] = 1
    return x, mask


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def tiny_ctc():
    return pair("ctc", **TINY)


@torch.no_grad()
def test_sew_tiny_shape_logits_hidden_states_and_loss(tiny_ctc):
    ours, ref = tiny_ctc
    x, mask = padded_batch([32000, 24321])  # even and odd lengths, padded
    labels = torch.tensor([[7, 8, 4, 9, 10, -100], [5, 6, 7, 4, 11, 12]])
    a = ours(x, mask, labels=labels, output_hidden_states=True)
    b = ref(x, attention_mask=mask, labels=labels, output_hidden_states=True)
    assert max_diff(a.logits, b.logits) <= TOL
    assert max_diff(a.loss, b.loss) <= TOL
    assert len(a.hidden_states) == len(b.hidden_states) == TINY["num_hidden_layers"] + 1
    for h_ours, h_ref in zip(a.hidden_states, b.hidden_states):
        assert max_diff(h_ours, h_ref) <= TOL


@torch.no_grad()
def test_padded_batch_without_attention_mask_matches(tiny_ctc):
    ours, ref = tiny_ctc
    x, _ = padded_batch([20000, 16001])
    assert max_diff(ours(x).logits, ref(x).logits) <= TOL


@torch.no_grad()
def test_padding_does_not_change_a_row_with_mask():
    """With the attention mask, a row's logits do not depend on how far it is padded.

    Holds for the layer-norm feature encoder and an even frame count. The group-norm encoder (sew-tiny)
    normalises each channel over the whole padded length, so there padding does change the numbers, in
    transformers as in ours: one reason the pipeline batches utterances of similar length.
    """
    ours, _ = pair("ctc", **dict(SMALL, feat_extract_norm="layer"))
    x, mask = padded_batch([16000, 9280])  # 9280 samples -> 28 frames
    alone = ours(x[1:, :9280]).logits
    batched = ours(x, mask).logits[1:, : alone.shape[1]]
    assert alone.shape[1] == 28
    assert max_diff(alone, batched) <= TOL


@pytest.mark.parametrize("config", [
    pytest.param(dict(SMALL, hidden_size=48, num_attention_heads=4, num_conv_pos_embedding_groups=4), id="projection"),
    pytest.param(dict(SMALL, feat_extract_norm="layer", conv_bias=True), id="layer-norm-encoder"),
    pytest.param(dict(SMALL, squeeze_factor=3), id="squeeze-3"),
    pytest.param(dict(SMALL, squeeze_factor=2, num_conv_pos_embeddings=15), id="odd-pos-kernel"),
    pytest.param(dict(SMALL, hidden_act="relu", feat_extract_activation="relu"), id="relu"),
])
@pytest.mark.parametrize("with_mask", [True, False])
@torch.no_grad()
def test_config_variants(config, with_mask):
    ours, ref = pair("ctc", **config)
    x, mask = padded_batch([16000, 12345, 7001])
    m = mask if with_mask else None
    labels = torch.tensor([[5, 6, 7, 8], [9, 10, -100, -100], [11, -100, -100, -100]])
    a = ours(x, m, labels=labels)
    b = ref(x, attention_mask=m, labels=labels)
    assert max_diff(a.logits, b.logits) <= TOL
    assert max_diff(a.loss, b.loss) <= TOL


@pytest.mark.parametrize("squeeze", [2, 3])
@pytest.mark.parametrize("extra", [0, 1, 319, 320, 641])
@torch.no_grad()
def test_shortest_inputs(squeeze, extra):
    """The shortest input that yields frames: one squeezed frame = receptive field + (squeeze - 1) strides."""
    ours, ref = pair("base", **dict(SMALL, squeeze_factor=squeeze))
    shortest = 400 + (squeeze - 1) * 320
    assert ours.config.min_input_samples == shortest
    x = torch.randn(1, shortest + extra)
    a, b = ours(x).last_hidden_state, ref(x).last_hidden_state
    assert a.shape[1] == ours.output_lengths(shortest + extra) >= squeeze
    assert max_diff(a, b) <= TOL


@pytest.mark.parametrize("squeeze", [2, 3])
@torch.no_grad()
def test_too_short_input_is_a_clear_error(squeeze):
    ours, ref = pair("base", **dict(SMALL, squeeze_factor=squeeze))
    x = torch.randn(1, ours.config.min_input_samples - 1)
    with pytest.raises(RuntimeError):
        ref(x)  # the reference fails deep inside a pooling op
    with pytest.raises(ValueError, match="shorter than"):
        ours(x)


@torch.no_grad()
def test_attentions_match_eager_reference():
    ours, ref = pair("base", eager=True, **SMALL)
    x, mask = padded_batch([16000, 11000])
    a = ours(x, mask, output_attentions=True)
    b = ref(x, attention_mask=mask, output_attentions=True)
    assert len(a.attentions) == len(b.attentions) == SMALL["num_hidden_layers"]
    for att_ours, att_ref in zip(a.attentions, b.attentions):
        assert max_diff(att_ours, att_ref) <= TOL


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("with_mask", [True, False])
@torch.no_grad()
def test_classification(weighted, with_mask):
    labels = ["yes", "no", "up", "down", "_silence_"]
    cfg = dict(SMALL, use_weighted_layer_sum=weighted, classifier_proj_size=24,
               id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    ours, ref = pair("cls", **cfg)
    assert ours.config.num_labels == 5
    x, mask = padded_batch([16000, 9999, 4321])
    m = mask if with_mask else None
    y = torch.tensor([0, 3, 4])
    a, b = ours(x, m, labels=y), ref(x, attention_mask=m, labels=y)
    assert max_diff(a.logits, b.logits) <= TOL
    assert max_diff(a.loss, b.loss) <= TOL


@pytest.mark.parametrize("zero_inf", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@torch.no_grad()
def test_ctc_loss_reduction_and_zero_infinity(reduction, zero_inf):
    ours, ref = pair("ctc", **dict(SMALL, ctc_loss_reduction=reduction, ctc_zero_infinity=zero_inf))
    x, mask = padded_batch([8000, 4000])  # 24 and 12 frames
    frames = ours.output_lengths(mask.sum(-1))
    assert frames.tolist() == [24, 12]
    # Finite: targets of 7 and 4 labels fit their frames (even with blanks between repeats).
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(5, 32, (2, 7), generator=g)
    labels[1, 4:] = -100
    a, b = ours(x, mask, labels=labels).loss, ref(x, attention_mask=mask, labels=labels).loss
    assert torch.isfinite(a) and torch.isfinite(b), (a, b)
    assert abs(a.item() - b.item()) <= 1e-5 * abs(b.item()), (reduction, a.item(), b.item())
    # The two reductions really differ on these inputs: "sum" adds the rows' losses, "mean" divides each by its
    # target length first (7 and 4) and averages, so a mix-up of the two could not pass the comparison above.
    log_probs = ref(x, attention_mask=mask).logits.log_softmax(-1).transpose(0, 1)
    keep = labels >= 0
    per_row = torch.nn.functional.ctc_loss(log_probs, labels[keep], frames, keep.sum(-1), blank=0, reduction="none")
    expected = per_row.sum() if reduction == "sum" else (per_row / torch.tensor([7.0, 4.0])).mean()
    assert abs(a.item() - expected.item()) <= 1e-5 * abs(expected.item()), (reduction, a.item(), expected, per_row)
    # Infinite: row 2 gets more labels than frames, so its loss is inf unless zeroed.
    labels = torch.randint(5, 32, (2, 30), generator=g)
    labels[0, 10:] = -100
    a, b = ours(x, mask, labels=labels).loss, ref(x, attention_mask=mask, labels=labels).loss
    if zero_inf:
        assert torch.isfinite(a) and torch.isfinite(b)
        assert abs(a.item() - b.item()) <= 1e-5 * abs(b.item()) + TOL, (a.item(), b.item())
    else:
        assert torch.isinf(a) and torch.isinf(b), (a, b)


@torch.no_grad()
def test_real_librispeech_fixture_hidden_shape(tiny_ctc):
    audio, sr = sf.read(LIBRISPEECH_ROOT / "dev-clean/1272/128104/1272-128104-0000.flac", dtype="float32")
    assert sr == 16000 and abs(len(audio) / sr - 5.86) < 0.01
    ours, ref = tiny_ctc
    x = torch.from_numpy(audio)[None]
    hidden = ours.sew(x).last_hidden_state
    assert tuple(hidden.shape) == (1, 292, 512)
    assert max_diff(hidden, ref.sew(x).last_hidden_state) <= TOL


def test_training_mode_masks_and_drops():
    """Training mode applies SpecAugment and dropout: two passes differ, eval passes are identical."""
    torch.manual_seed(0)
    model = SEWForCTC(SEWConfig(**dict(SMALL, mask_time_prob=0.5, mask_time_length=2, layerdrop=0.0)))
    x = torch.randn(1, 16000)
    model.train()
    assert not torch.equal(model(x).logits, model(x).logits)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x).logits)


def test_freeze_feature_encoder():
    model = SEWForCTC(SEWConfig(**SMALL))
    model.freeze_feature_encoder()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("sew.feature_extractor.") for n in frozen)
    loss = model(torch.randn(1, 8000), labels=torch.tensor([[5, 6]])).loss
    loss.backward()
    assert model.lm_head.weight.grad is not None
    assert model.sew.feature_extractor.conv_layers[0].conv.weight.grad is None
