"""On a CUDA device only (marked gpu; skipped here without one, saying so): the fast path and the model stage
give the CPU's numbers. benchmarks/gpu_check.py runs the fuller check (throughput, a GPU job)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_device import LENGTHS, _cfg, _chunks

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; this machine has none")]


def test_fp32_fast_path_on_the_gpu_matches_the_cpu_reference():
    from sew_pipeline import device
    from sew_pipeline.models import SEWForCTC
    from sew_pipeline.models.fast import prepare_for_inference
    from sew_pipeline.models.registry import resolve_model
    device.set_tf32(False)
    model = SEWForCTC.from_pretrained(resolve_model("demo-ctc")).eval()
    x = 0.1 * torch.randn(3, 96000, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(x).logits
        got = prepare_for_inference(model, "fp32", device="cuda")(x.cuda()).logits.cpu()
    assert float((got - ref).abs().max()) <= 2e-3  # cuDNN/cuBLAS sum in other orders; TF32 off


def test_the_model_stage_on_the_gpu_gives_the_cpus_argmax():
    from sew_pipeline.config import TranscribeConfig
    from sew_pipeline.predictors import CTCPredictor
    chunks = _chunks(LENGTHS)
    cpu = CTCPredictor(_cfg(TranscribeConfig, "demo-ctc", "inference.use_gpu=no"))(chunks).to_pylist()
    gpu = CTCPredictor(_cfg(TranscribeConfig, "demo-ctc", "inference.use_gpu=yes",
                            "inference.gpu_precision=fp32"))(chunks).to_pylist()
    for c, g in zip(cpu, gpu):
        a, b = np.frombuffer(c["payload"], "<i2"), np.frombuffer(g["payload"], "<i2")
        assert g["error_type"] is None and len(a) == len(b) and np.mean(a == b) > 0.99
