"""Our SEW implementation (plain PyTorch, no transformers at runtime).

Names load on first use (PEP 562), so code that only needs the registry, configs or the CTC tokenizer
(decode workers, the assembler) does not import torch (~180 MB per process).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOME = {
    "ConfigError": "config", "SEWConfig": "config", "HeadOutput": "heads", "SEWForCTC": "heads",
    "SEWForSequenceClassification": "heads", "CTCTokenizer": "processor", "FeatureExtractor": "processor",
    "resolve_model": "registry", "ModelOutput": "sew", "SEWModel": "sew",
}
__all__ = sorted(_HOME)

if TYPE_CHECKING:
    from sew_pipeline.models.config import ConfigError, SEWConfig
    from sew_pipeline.models.heads import HeadOutput, SEWForCTC, SEWForSequenceClassification
    from sew_pipeline.models.processor import CTCTokenizer, FeatureExtractor
    from sew_pipeline.models.registry import resolve_model
    from sew_pipeline.models.sew import ModelOutput, SEWModel


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value
