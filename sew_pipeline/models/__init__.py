"""Our SEW implementation (plain PyTorch, no transformers at runtime)."""
from sew_pipeline.models.config import ConfigError, SEWConfig
from sew_pipeline.models.heads import HeadOutput, SEWForCTC, SEWForSequenceClassification
from sew_pipeline.models.processor import CTCTokenizer, FeatureExtractor
from sew_pipeline.models.registry import resolve_model
from sew_pipeline.models.sew import ModelOutput, SEWModel

__all__ = [
    "ConfigError", "CTCTokenizer", "FeatureExtractor", "HeadOutput", "ModelOutput", "SEWConfig", "SEWForCTC",
    "SEWForSequenceClassification", "SEWModel", "resolve_model",
]
