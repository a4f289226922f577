"""The model, resolved once on the driver into a small frozen record every stage is handed (no Ray, no torch).

Stages used to re-read config.json / vocab.json from storage per task; now the driver reads them once and
ships this spec (a few hundred bytes) with the stage's arguments. It is also the one place for frame maths:
samples per frame, window alignment, conv output length.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from sew_pipeline.chunking import conv_frames
from sew_pipeline.errors import UserError, redact


class ModelNotFound(UserError):
    """The configured model has no readable config.json (a user error, reported in one line)."""


@dataclass(frozen=True)
class ModelSpec:
    name: str                          # as configured (redacted): what output rows call the model
    uri: str                           # resolved folder / URI the model stage loads from
    sample_rate: int = 16000
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    squeeze_factor: int = 2
    vocab: tuple[tuple[str, int], ...] = ()   # CTC token -> id (empty for classifiers)
    labels: tuple[str, ...] = ()              # class names in id order (empty for CTC)

    @property
    def total_stride(self) -> int:
        """Input samples per output frame (320 = 20 ms at 16 kHz for SEW)."""
        return math.prod(self.conv_stride)

    @property
    def seconds_per_frame(self) -> float:
        return self.total_stride / self.sample_rate

    @property
    def window_align(self) -> int:
        """Window starts fall on whole squeezed frames, so pooling phase matches the unchunked run."""
        return self.total_stride * self.squeeze_factor

    def frames(self, num_samples: int) -> int:
        """Output frames of the conv stack for ``num_samples`` (valid convolutions; 0 if too short)."""
        return conv_frames(num_samples, self.conv_kernel, self.conv_stride)

    def tokenizer(self):
        from sew_pipeline.models.processor import CTCTokenizer
        return CTCTokenizer(dict(self.vocab))

    def label_names(self, n: int) -> list[str]:
        """Names for ``n`` classes (LABEL_i where the checkpoint names none)."""
        return [self.labels[i] if i < len(self.labels) else f"LABEL_{i}" for i in range(n)]


def resolve(model: str, storage_options: dict | None = None) -> ModelSpec:
    """Read the checkpoint folder's small JSON files once; raise ModelNotFound naming the `model` key."""
    from sew_pipeline.models import registry
    from sew_pipeline.models.config import SEWConfig
    from sew_pipeline.models.processor import PREPROCESSOR_NAME, read_json, read_vocab
    options = storage_options or {}
    uri = registry.resolve_model(model)
    try:
        conf = read_json(uri, "config.json", options)
    except Exception as exc:  # noqa: BLE001 - unreachable bucket, bad JSON: the user's model key is wrong
        raise ModelNotFound(redact(f"model {model!r}: cannot read {uri}/config.json: "
                                   f"{type(exc).__name__}: {exc}")) from None
    if not conf:
        shipped = ", ".join(registry.shipped_models()) or "none installed"
        raise ModelNotFound(redact(f"model {model!r}: no config.json at {uri} (set `model` to a checkpoint "
                                   f"folder or URI, or a shipped model: {shipped})"))
    sew = SEWConfig.from_dict(conf)
    pre = read_json(uri, PREPROCESSOR_NAME, options) or {}
    vocab = read_vocab(uri, options) or {}
    return ModelSpec(name=redact(model), uri=uri, sample_rate=int(pre.get("sampling_rate", 16000)),
                     conv_kernel=tuple(sew.conv_kernel), conv_stride=tuple(sew.conv_stride),
                     squeeze_factor=int(sew.squeeze_factor),
                     vocab=tuple(sorted(((str(k), int(v)) for k, v in vocab.items()), key=lambda kv: kv[1])),
                     labels=tuple(sew.id2label[i] for i in range(sew.num_labels)) if "id2label" in conf else ())

