"""Checkpoint folders: transformers-saved safetensors, legacy weight_g/weight_v .bin, ours into transformers, s3://."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from sew_pipeline.models import SEWConfig, SEWForCTC, SEWForSequenceClassification, SEWModel
from sew_pipeline.models.checkpoint import CheckpointError

SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2, vocab_size=32,
             conv_dim=(32,) * 13, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


@pytest.fixture(scope="module")
def hf_ctc_folder(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("hf_ctc")
    transformers.SEWForCTC(transformers.SEWConfig(**SMALL)).eval().save_pretrained(folder)
    return folder


def reference_logits(folder: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return transformers.SEWForCTC.from_pretrained(folder).eval()(x).logits


def test_transformers_safetensors_loads_with_same_logits(hf_ctc_folder):
    x = torch.randn(2, 12000)
    ours = SEWForCTC.from_pretrained(hf_ctc_folder)
    with torch.no_grad():
        assert (ours(x).logits - reference_logits(hf_ctc_folder, x)).abs().max() <= 1e-4
    assert len(ours.checkpoint_sha256) == 64


def test_legacy_bin_with_weight_g_weight_v(hf_ctc_folder, tmp_path):
    """The 2021 asapp checkpoints: pytorch_model.bin, torch.nn.utils.weight_norm key spelling."""
    state = load_file(hf_ctc_folder / "model.safetensors")
    legacy = {k.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
    assert any(k.endswith("weight_g") for k in legacy)
    torch.save(legacy, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((hf_ctc_folder / "config.json").read_text())
    x = torch.randn(1, 9000)
    with torch.no_grad():
        ours = SEWForCTC.from_pretrained(tmp_path)(x).logits
    assert (ours - reference_logits(hf_ctc_folder, x)).abs().max() <= 1e-4


@pytest.mark.parametrize("cls_pair", ["ctc", "cls"])
def test_ours_saved_loads_in_transformers(tmp_path, cls_pair):
    torch.manual_seed(5)
    labels = ["yes", "no", "_silence_"]
    if cls_pair == "ctc":
        ours, ref_cls = SEWForCTC(SEWConfig(**SMALL)).eval(), transformers.SEWForCTC
    else:
        cfg = SEWConfig(**SMALL).with_labels(labels)
        ours, ref_cls = SEWForSequenceClassification(cfg).eval(), transformers.SEWForSequenceClassification
    ours.save_pretrained(tmp_path)
    ref = ref_cls.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 10000)
    with torch.no_grad():
        assert (ours(x).logits - ref(x).logits).abs().max() <= 1e-4
    if cls_pair == "cls":
        assert ref.config.id2label == dict(enumerate(labels))


def test_base_checkpoint_into_head_and_head_into_base(hf_ctc_folder, tmp_path):
    torch.manual_seed(4)
    transformers.SEWModel(transformers.SEWConfig(**SMALL)).save_pretrained(tmp_path)
    x = torch.randn(1, 8000)
    head = SEWForCTC.from_pretrained(tmp_path)            # head stays freshly initialised
    base = SEWModel.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.allclose(head.sew(x).last_hidden_state, base(x).last_hidden_state)
        ref_base = transformers.SEWForCTC.from_pretrained(hf_ctc_folder).sew.eval()(x).last_hidden_state
        assert (SEWModel.from_pretrained(hf_ctc_folder)(x).last_hidden_state - ref_base).abs().max() <= 1e-4


class _Boom:
    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path('/tmp/sew_pwned').write_text('x')",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = Path("/tmp/sew_pwned")
    marker.unlink(missing_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(SEWConfig(**SMALL).to_dict()))
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"sew.layer_norm.weight": _Boom()}, f)
    with pytest.raises(CheckpointError, match="refusing"):
        SEWForCTC.from_pretrained(tmp_path)
    assert not marker.exists()


def test_mismatched_checkpoint_is_a_clear_error(hf_ctc_folder, tmp_path):
    cfg = json.loads((hf_ctc_folder / "config.json").read_text())
    cfg["hidden_size"] = 128
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes((hf_ctc_folder / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="shape"):
        SEWForCTC.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="config.json"):
        SEWForCTC.from_pretrained(tmp_path / "nowhere")


def test_checkpoint_and_processor_from_s3(hf_ctc_folder, s3_server, tmp_path):
    """A checkpoint folder in object storage loads through fsspec with the same logits."""
    from sew_pipeline.models import FeatureExtractor

    FeatureExtractor(return_attention_mask=True).save_pretrained(tmp_path)
    s3_server.create_bucket("models")
    for f in list(hf_ctc_folder.iterdir()) + [tmp_path / "preprocessor_config.json"]:
        s3_server.put("models", f"sew/ctc/{f.name}", f)
    uri = "s3://models/sew/ctc"
    x = torch.randn(1, 9000)
    with torch.no_grad():
        ours = SEWForCTC.from_pretrained(uri, storage_options=s3_server.storage_options)(x).logits
    assert (ours - reference_logits(hf_ctc_folder, x)).abs().max() <= 1e-4
    assert FeatureExtractor.from_pretrained(uri, s3_server.storage_options).return_attention_mask is True
    with pytest.raises(CheckpointError, match="config.json"):
        SEWForCTC.from_pretrained("s3://models/sew/none", storage_options=s3_server.storage_options)
