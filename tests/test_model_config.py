"""SEWConfig <-> transformers' config.json."""
from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import transformers

from sew_pipeline.models import ConfigError, SEWConfig

DOCUMENTED = """vocab_size hidden_size num_hidden_layers num_attention_heads intermediate_size squeeze_factor hidden_act
hidden_dropout activation_dropout attention_dropout feat_proj_dropout final_dropout layerdrop initializer_range
layer_norm_eps feat_extract_norm feat_extract_activation conv_dim conv_stride conv_kernel conv_bias
num_conv_pos_embeddings num_conv_pos_embedding_groups apply_spec_augment mask_time_prob mask_time_length
mask_time_min_masks mask_feature_prob mask_feature_length mask_feature_min_masks ctc_loss_reduction ctc_zero_infinity
use_weighted_layer_sum classifier_proj_size id2label label2id pad_token_id bos_token_id eos_token_id""".split()


def test_every_documented_field_with_transformers_defaults():
    ours, ref = SEWConfig(), transformers.SEWConfig()
    names = {f.name for f in dataclasses.fields(SEWConfig)}
    for name in DOCUMENTED:
        assert name in names, name
        ref_value = getattr(ref, name)
        ours_value = getattr(ours, name)
        if isinstance(ref_value, (list, tuple)):
            ref_value, ours_value = list(ref_value), list(ours_value)
        assert ours_value == ref_value, name
    assert ours.num_labels == ref.num_labels
    assert ours.total_stride == ref.inputs_to_logits_ratio == 320


def test_transformers_config_json_round_trip_keeps_unknown_keys(tmp_path):
    ref = transformers.SEWConfig(hidden_size=256, num_attention_heads=4, squeeze_factor=3,
                                 id2label={0: "yes", 1: "no", 2: "up"}, label2id={"yes": 0, "no": 1, "up": 2})
    ref.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["future_option"] = {"nested": [1, 2]}
    (tmp_path / "config.json").write_text(json.dumps(raw))

    ours = SEWConfig.from_json_file(tmp_path / "config.json")
    assert ours.hidden_size == 256 and ours.squeeze_factor == 3
    assert ours.id2label == {0: "yes", 1: "no", 2: "up"} and ours.num_labels == 3
    assert ours.extra["future_option"] == {"nested": [1, 2]}
    assert ours.extra["transformers_version"] == raw["transformers_version"]

    out = tmp_path / "ours"
    out.mkdir()
    ours.save(out)
    written = json.loads((out / "config.json").read_text())
    assert written["future_option"] == {"nested": [1, 2]}
    back = transformers.SEWConfig.from_pretrained(out)
    assert back.hidden_size == 256 and back.squeeze_factor == 3 and back.num_labels == 3
    assert list(back.conv_dim) == list(ref.conv_dim)


@pytest.mark.parametrize("change,message", [
    (dict(hidden_size=100, num_attention_heads=3), "divisible"),
    (dict(conv_dim=(64, 64), conv_stride=(5,), conv_kernel=(10,)), "equal length"),
    (dict(feat_extract_norm="batch"), "feat_extract_norm"),
    (dict(hidden_dropout=1.5), r"\[0, 1\]"),
    (dict(hidden_size="512"), "expects int"),
    (dict(apply_spec_augment="yes"), "expects bool"),
    (dict(hidden_act="gelu_fast"), "hidden_act"),
    (dict(ctc_loss_reduction="avg"), "ctc_loss_reduction"),
    (dict(squeeze_factor=0), "squeeze_factor"),
])
def test_bad_values_are_clear_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        SEWConfig(**change)


def test_other_model_type_refused():
    with pytest.raises(ConfigError, match="wav2vec2"):
        SEWConfig.from_dict({"model_type": "wav2vec2"})


def test_nothing_under_sew_pipeline_imports_transformers():
    root = Path(__file__).resolve().parents[1] / "sew_pipeline"
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path}: {n}" for n in names if n.split(".")[0] == "transformers"]
    assert list(root.rglob("*.py")), "package sources not found"
    assert offenders == []
