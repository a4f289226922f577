"""SEWConfig: a dataclass that reads and writes transformers' `config.json` for model_type "sew".

Field names and defaults follow the transformers SEWConfig (asapp/sew-tiny-100k style), so a config.json
written by either side loads in the other. Keys we do not model (architectures, dtype, transformers_version,
anything newer) are kept in `extra` and written back unchanged.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_DEFAULT_CONV_DIM = (64, 128, 128, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512)
_DEFAULT_CONV_STRIDE = (5, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1)
_DEFAULT_CONV_KERNEL = (10, 3, 1, 3, 1, 3, 1, 3, 1, 2, 1, 2, 1)
_ACTIVATIONS = ("gelu", "relu", "selu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish", "tanh")
_PROBABILITIES = (
    "hidden_dropout", "activation_dropout", "attention_dropout", "feat_proj_dropout", "final_dropout",
    "layerdrop", "mask_time_prob", "mask_feature_prob",
)


class ConfigError(ValueError):
    """A config.json value that cannot describe a SEW model."""


@dataclass
class SEWConfig:
    vocab_size: int = 32
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    squeeze_factor: int = 2
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    activation_dropout: float = 0.1
    attention_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    final_dropout: float = 0.1
    layerdrop: float = 0.1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = _DEFAULT_CONV_DIM
    conv_stride: tuple[int, ...] = _DEFAULT_CONV_STRIDE
    conv_kernel: tuple[int, ...] = _DEFAULT_CONV_KERNEL
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    apply_spec_augment: bool = True
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    ctc_loss_reduction: str = "mean"
    ctc_zero_infinity: bool = False
    use_weighted_layer_sum: bool = False
    classifier_proj_size: int = 256
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})
    label2id: dict[str, int] = field(default_factory=lambda: {"LABEL_0": 0, "LABEL_1": 1})
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, preserved on save

    def __post_init__(self) -> None:
        for name in ("conv_dim", "conv_stride", "conv_kernel"):
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        self.label2id = {str(k): int(v) for k, v in self.label2id.items()}
        self.validate()

    # ---- derived quantities -------------------------------------------------------------------------------
    @property
    def model_type(self) -> str:
        return "sew"

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def num_feat_extract_layers(self) -> int:
        return len(self.conv_dim)

    @property
    def total_stride(self) -> int:
        """Input samples per output frame of the feature encoder (320 = 20 ms at 16 kHz for SEW)."""
        return math.prod(self.conv_stride)

    @property
    def receptive_field(self) -> int:
        """Samples seen by one feature-encoder frame (400 for the standard SEW stack)."""
        field_, jump = 1, 1
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            field_ += (kernel - 1) * jump
            jump *= stride
        return field_

    @property
    def min_input_samples(self) -> int:
        """Shortest input giving one squeezed frame; anything shorter has nothing for the transformer to see."""
        return self.receptive_field + (self.squeeze_factor - 1) * self.total_stride

    def with_labels(self, labels: list[str]) -> "SEWConfig":
        """A copy whose id2label/label2id describe `labels` in order."""
        return dataclasses.replace(
            self, id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)}
        )

    # ---- validation ---------------------------------------------------------------------------------------
    def validate(self) -> None:
        hints = typing.get_type_hints(SEWConfig)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                _check_type(f.name, getattr(self, f.name), hints[f.name])
        n = len(self.conv_dim)
        if n == 0 or len(self.conv_stride) != n or len(self.conv_kernel) != n:
            raise ConfigError(
                "conv_dim, conv_stride and conv_kernel must be non-empty and of equal length; got "
                f"{len(self.conv_dim)}, {len(self.conv_stride)}, {len(self.conv_kernel)}"
            )
        positive = ("vocab_size", "hidden_size", "num_attention_heads", "intermediate_size", "squeeze_factor",
                    "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "classifier_proj_size",
                    "mask_time_length", "mask_feature_length")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_hidden_layers < 0:
            raise ConfigError(f"num_hidden_layers must be >= 0, got {self.num_hidden_layers}")
        if any(v < 1 for v in self.conv_dim + self.conv_stride + self.conv_kernel):
            raise ConfigError("conv_dim, conv_stride and conv_kernel entries must all be >= 1")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_conv_pos_embedding_groups "
                f"({self.num_conv_pos_embedding_groups})"
            )
        for name in _PROBABILITIES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.feat_extract_norm not in ("group", "layer"):
            raise ConfigError(f"feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}")
        for name in ("hidden_act", "feat_extract_activation"):
            if getattr(self, name) not in _ACTIVATIONS:
                raise ConfigError(f"{name} must be one of {_ACTIVATIONS}, got {getattr(self, name)!r}")
        if self.ctc_loss_reduction not in ("mean", "sum", "none"):
            raise ConfigError(f"ctc_loss_reduction must be 'mean', 'sum' or 'none', got {self.ctc_loss_reduction!r}")
        if sorted(self.id2label) != list(range(len(self.id2label))):
            raise ConfigError("id2label keys must be 0..num_labels-1")

    # ---- config.json ----------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SEWConfig":
        data = dict(data)
        model_type = data.pop("model_type", "sew")
        if model_type != "sew":
            raise ConfigError(f"config.json has model_type {model_type!r}; this loader reads 'sew' only")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: data.pop(k) for k in list(data) if k in known}
        num_labels = data.pop("num_labels", None)
        if num_labels is not None and "id2label" not in kwargs:  # older configs carry only the count
            kwargs["id2label"] = {i: f"LABEL_{i}" for i in range(int(num_labels))}
            kwargs["label2id"] = {f"LABEL_{i}": i for i in range(int(num_labels))}
        data.pop("num_feat_extract_layers", None)  # derived from conv_dim
        return cls(**kwargs, extra=data)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": "sew"}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            if f.name == "id2label":
                value = {str(k): v for k, v in value.items()}
            out[f.name] = value
        out["num_feat_extract_layers"] = self.num_feat_extract_layers
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_json_file(cls, path: str | Path) -> "SEWConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, directory: str | Path) -> None:
        Path(directory, "config.json").write_text(self.to_json_string())


def _check_type(name: str, value: Any, hint: Any) -> None:
    """Clear errors for wrongly typed config values (bool is not accepted where a number is expected)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return
        hint = next(o for o in options if o is not type(None))
        origin = typing.get_origin(hint)
    ok: bool
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif hint is str:
        ok = isinstance(value, str)
    elif origin is tuple:
        ok = isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    elif origin is dict:
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"config field {name!r} expects {getattr(hint, '__name__', hint)}, got {value!r}")
