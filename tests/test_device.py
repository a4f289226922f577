"""The GPU path's semantics, tested on CPU by injecting the failures a GPU produces: use_gpu values, out of memory
split and retried, a broken device ending the actor process (replaced by Ray, rows exactly once), a GPU reserved
without CUDA failing in seconds, precision/compile/TF32 choices, no fully masked rows."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from sew_pipeline import device, plan
from sew_pipeline.config import ConfigError, LabelConfig, TranscribeConfig, load_config
from sew_pipeline.predictors import ClassifierPredictor, CTCPredictor
from sew_pipeline.schema import CHUNK_SCHEMA

REPO = Path(__file__).resolve().parents[1]
STICKY = "CUDA error: an illegal memory access was encountered"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the no-CUDA paths cannot run")


def _cfg(cls, model, *sets):
    return load_config(cls, None, ["manifest=m", "output=o", f"model={model}", *sets])


def _chunks(lengths: list[int], seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = [{"id": f"u{i}", "item_id": f"u{i}", "audio_uri": f"u{i}.wav", "channel": -1, "item_index": 0,
             "num_items": 1, "chunk_index": 0, "num_chunks": 1, "start_s": 0.0, "end_s": n / 16000,
             "item_start_s": 0.0, "item_duration_s": n / 16000, "keep_start_frame": 0, "keep_end_frame": n // 320,
             "start_frame": 0, "audio": (0.1 * rng.standard_normal(n)).astype("<f4").tobytes()}
            for i, n in enumerate(lengths)]
    return pa.Table.from_pylist(rows, schema=CHUNK_SCHEMA)


LENGTHS = [16000, 17000, 15000, 24000, 16500, 8000, 23500, 12000]


# ------------------------------------------------------------------ asking for a GPU
@pytest.mark.parametrize("value, expected", [("yes", "yes"), ("no", "no"), ("true", "yes"), ("false", "no"),
                                             ("auto", "auto"), ("'yes'", "yes")])
def test_use_gpu_values_through_set_and_yaml(tmp_path, value, expected):
    assert _cfg(TranscribeConfig, "demo-ctc", f"inference.use_gpu={value}").inference.use_gpu == expected
    path = tmp_path / "c.yaml"
    path.write_text(f"manifest: m\noutput: o\ninference:\n  use_gpu: {value}\n")
    assert load_config(TranscribeConfig, path).inference.use_gpu == expected


def test_use_gpu_nonsense_names_the_key():
    with pytest.raises(ConfigError, match="inference.use_gpu: must be one of"):
        _cfg(TranscribeConfig, "demo-ctc", "inference.use_gpu=maybe")


@no_cuda
def test_a_gpu_asked_for_without_cuda_is_an_error_naming_the_key(tiny_ctc_dir):
    assert device.pick_device("auto") == "cpu" and device.pick_device("no") == "cpu"
    with pytest.raises(device.DeviceError, match="inference.use_gpu=yes .* no CUDA device .*CPU-only build"):
        CTCPredictor(_cfg(TranscribeConfig, str(tiny_ctc_dir), "inference.use_gpu=yes"))


@no_cuda
def test_a_job_whose_gpu_workers_have_no_cuda_fails_before_any_work(tmp_path, tiny_ctc_dir):
    from tests.test_cluster_startup import error_line, run_job
    # a local Ray that believes it has a GPU (as a node whose image has a CPU-only torch): the plan reserves it,
    # the start-up check in a GPU worker finds no CUDA device
    fake_gpu = "import ray; _init = ray.init; ray.init = lambda *a, **k: _init(*a, num_gpus=1, **k)"
    proc, took = run_job(tmp_path, f"manifest={REPO / 'tests/data/LibriSpeech'}", f"model={tiny_ctc_dir}",
                         prelude=fake_gpu)
    assert proc.returncode == 2 and took < 60, (took, proc.stderr[-2000:])
    line = error_line(proc)
    assert "inference.use_gpu=yes (or a GPU reserved for the model actor)" in line and "no CUDA device" in line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.parquet"))


def test_actor_count_defaults_to_one_per_gpu():
    cfg = _cfg(TranscribeConfig, "demo-ctc")
    gpus = plan.Cluster((plan.Node(8, 2, 64 * 2**30), plan.Node(8, 2, 64 * 2**30)))
    assert plan.actor_count(cfg, gpus) == 4 and plan.check(cfg, gpus) == {"num_gpus": 1, "num_cpus": 1}
    assert plan.actor_count(cfg, plan.Cluster((plan.Node(3, 4, 64 * 2**30),))) == 2  # a CPU each + decode
    assert plan.actor_count(cfg, plan.Cluster((plan.Node(16, 0, 64 * 2**30),))) == 1
    assert plan.actor_count(_cfg(TranscribeConfig, "demo-ctc", "inference.num_actors=3"), gpus) == 3
    two = _cfg(TranscribeConfig, "demo-ctc", "inference.actors_per_gpu=2")  # host work of one beside the other's GPU
    assert plan.actor_count(two, gpus) == 8 and plan.check(two, gpus) == {"num_gpus": 0.5, "num_cpus": 1}
    with pytest.raises(plan.PlanError, match="needs 5 GPUs .2 model actor.s. per GPU"):
        plan.check(_cfg(TranscribeConfig, "demo-ctc", "inference.actors_per_gpu=2", "inference.num_actors=9"), gpus)


# ------------------------------------------------------------------ failures
@pytest.mark.parametrize("exc, kind", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
    (MemoryError(), "oom"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes"), "oom"),
    (RuntimeError(STICKY), "device"),
    (RuntimeError("CUDA error: device-side assert triggered"), "device"),
    (torch.AcceleratorError("CUDA error: unspecified launch failure"), "device"),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), "item"),
    (ValueError("input of 10 samples is shorter than the model's minimum"), "item"),
])
def test_failure_kinds(exc, kind):
    assert device.failure_kind(exc) == kind


def _inject(monkeypatch, predictor, fail):
    """predictor._forward raises fail(waves) (an exception or None) before running."""
    real = predictor._forward

    def forward(model, waves):
        exc = fail(waves)
        if exc is not None:
            raise exc
        return real(model, waves)
    monkeypatch.setattr(predictor, "_forward", forward)


def test_out_of_memory_splits_the_group_and_every_item_still_gets_its_result(monkeypatch, tiny_ctc_dir):
    cfg = _cfg(TranscribeConfig, str(tiny_ctc_dir), "inference.max_batch_audio_s=20")
    chunks = _chunks(LENGTHS)
    want = CTCPredictor(cfg)(chunks).to_pylist()
    predictor, sizes = CTCPredictor(cfg), []

    def fail(waves):
        sizes.append(len(waves))
        return torch.OutOfMemoryError("CUDA out of memory") if len(waves) > 2 else None
    _inject(monkeypatch, predictor, fail)
    got = predictor(chunks).to_pylist()
    assert max(sizes) > 2 and any(s <= 2 for s in sizes)  # big groups failed, their halves ran
    assert [r["error_type"] for r in got] == [None] * len(LENGTHS)
    assert [r["payload"] for r in got] == [r["payload"] for r in want]


def test_an_item_out_of_memory_alone_is_its_own_error_row(monkeypatch, tiny_kws_dir):
    cfg = _cfg(LabelConfig, str(tiny_kws_dir), "inference.max_batch_audio_s=20")
    chunks = _chunks(LENGTHS)
    want = ClassifierPredictor(cfg)(chunks).to_pylist()
    predictor = ClassifierPredictor(cfg)
    _inject(monkeypatch, predictor, lambda waves: MemoryError() if any(len(w) == 24000 for w in waves) else None)
    got = predictor(chunks).to_pylist()
    assert [r["error_type"] for r in got] == ["inference" if n == 24000 else None for n in LENGTHS]
    assert "MemoryError" in got[LENGTHS.index(24000)]["error"]
    assert all(g["payload"] == w["payload"] for g, w, n in zip(got, want, LENGTHS) if n != 24000)


def test_a_broken_device_ends_the_process_instead_of_writing_error_rows(monkeypatch, tiny_ctc_dir):
    predictor = CTCPredictor(_cfg(TranscribeConfig, str(tiny_ctc_dir)))
    _inject(monkeypatch, predictor, lambda waves: RuntimeError(STICKY))
    ended = []

    def end(exc):
        ended.append(exc)
        raise SystemExit(device.EXIT_DEVICE_FAILURE)
    monkeypatch.setattr(device, "end_process", end)
    with pytest.raises(SystemExit):
        predictor(_chunks(LENGTHS[:3]))
    assert len(ended) == 1 and STICKY in str(ended[0])


def test_the_process_really_exits_with_the_device_failure_code(tiny_ctc_dir):
    code = textwrap.dedent(f"""
        import logging, sys
        logging.basicConfig(level=logging.INFO)
        sys.path.insert(0, {str(REPO)!r})
        from tests.test_device import _cfg, _chunks, STICKY
        from sew_pipeline.config import TranscribeConfig
        from sew_pipeline.predictors import CTCPredictor
        p = CTCPredictor(_cfg(TranscribeConfig, {str(tiny_ctc_dir)!r}))
        def broken(model, waves):
            raise RuntimeError(STICKY)
        p._forward = broken
        p(_chunks([16000]))
        print("still running")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == device.EXIT_DEVICE_FAILURE, proc.stderr[-2000:]
    assert "still running" not in proc.stdout and "ending this actor process so Ray replaces it" in proc.stderr


def test_a_broken_device_in_a_job_replaces_the_actor_and_every_row_comes_out_once(ray_session, tmp_path,
                                                                                   monkeypatch, tiny_ctc_dir):
    from sew_pipeline import predictors, ray_pipeline
    from sew_pipeline.results import read_results
    marker = tmp_path / "failed-once"

    class BreaksOnce(CTCPredictor):  # defined here: shipped to the actor by value
        def _forward(self, model, waves):
            if not marker.exists():
                marker.write_text("x")
                raise RuntimeError(STICKY)
            return super()._forward(model, waves)
    monkeypatch.setitem(predictors.PREDICTORS, "ctc", BreaksOnce)
    libri = REPO / "tests/data/LibriSpeech"
    result = ray_pipeline.transcribe(_cfg(TranscribeConfig, str(tiny_ctc_dir), f"manifest={libri}",
                                          f"output={tmp_path / 'out'}"))
    rows = read_results(str(tmp_path / "out")).to_pylist()
    ids = [r["id"] for r in rows]
    assert marker.exists() and len(ids) == len(set(ids)) == result.summary["manifest_rows"] > 0
    assert all(r["error_type"] is None for r in rows)  # the failed batch was redone, not written as errors


# ------------------------------------------------------------------ precision, compile, TF32, short clips
@pytest.mark.parametrize("asked, dev, bf16, runs, warned", [
    ("auto", "cuda", True, "bf16", False), ("auto", "cuda", False, "fp32", False), ("auto", "cpu", True, "fp32", False),
    ("int8", "cuda", True, "bf16", True), ("int8", "cuda", False, "fp32", True), ("int8", "cpu", False, "int8", False),
    ("bf16", "cuda", False, "fp32", True), ("bf16", "cuda", True, "bf16", False), ("fp32", "cuda", True, "fp32", False),
    ("reference", "cuda", False, "reference", False)])
def test_precision_per_device(asked, dev, bf16, runs, warned):
    got, why = device.resolve_precision(asked, dev, bf16_ok=bf16)
    assert got == runs and (why is not None) == warned


def test_tf32_is_set_explicitly():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        device.set_tf32(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        device.set_tf32(False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_compile_that_fails_in_warm_up_falls_back_to_eager(monkeypatch, tiny_ctc_dir, caplog):
    chunks = _chunks(LENGTHS[:4])
    want = CTCPredictor(_cfg(TranscribeConfig, str(tiny_ctc_dir)))(chunks).to_pylist()

    def broken_compile(fn, **kwargs):
        def run(*a, **k):
            raise RuntimeError("Cannot find a working triton installation")
        return run
    monkeypatch.setattr(torch, "compile", broken_compile)
    predictor = CTCPredictor(_cfg(TranscribeConfig, str(tiny_ctc_dir), "inference.compile=true"))
    assert "torch.compile failed in warm-up" in caplog.text
    got = predictor(chunks).to_pylist()
    assert [r["payload"] for r in got] == [r["payload"] for r in want] and all(r["error_type"] is None for r in got)


@pytest.mark.parametrize("precision", ["reference", "fp32"])
def test_a_clip_shorter_than_the_model_minimum_gets_a_real_result(tiny_kws_dir, precision):
    cfg = _cfg(LabelConfig, str(tiny_kws_dir), f"inference.precision={precision}")
    rows = ClassifierPredictor(cfg)(_chunks([120, 16000, 300])).to_pylist()
    for r in rows:
        probs = np.frombuffer(r["payload"], "<f4")
        assert r["error_type"] is None and np.isfinite(probs).all() and abs(probs.sum() - 1) < 1e-4
