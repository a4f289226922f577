"""Reliability/security pieces without Ray: internal errors counted, allow-list edges, retry settings,
pickle refusal through the predictor, replayed rows never emitted twice."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from sew_pipeline import storage
from sew_pipeline.config import TranscribeConfig, load_config
from sew_pipeline.errors import ERROR_TYPES
from sew_pipeline.postprocess import Finalizer
from sew_pipeline.predictors import CTCPredictor, DecodeStage
from sew_pipeline.spec import resolve
from sew_pipeline.summary import summarize
from tests.reliability.conftest import wav_bytes


def _cfg(model, *sets):
    return load_config(TranscribeConfig, None, ["manifest=unused", "output=unused", f"model={model}", *sets])


def _manifest(rows):
    return pa.Table.from_pylist([{"id": i, "audio_uri": u, "offset_s": None, "duration_s": None, "text": None,
                                  "split": None, "speaker": None} for i, u in rows])


def test_unexpected_decode_failure_is_internal_redacted_and_counted(tmp_path, tiny_ctc_dir, monkeypatch):
    from sew_pipeline import audio
    (tmp_path / "a.wav").write_bytes(wav_bytes(1.0))
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)

    def boom(*args, **kwargs):
        raise RuntimeError(f"bug while holding {secret}")
        yield  # pragma: no cover

    monkeypatch.setattr(audio, "iter_chunks", boom)
    cfg = _cfg(tiny_ctc_dir)
    chunks = DecodeStage(cfg)(_manifest([("a", str(tmp_path / "a.wav"))]))
    out = Finalizer(resolve(cfg.model), "ctc", "r")(CTCPredictor(cfg)(chunks))
    [row] = out.to_pylist()
    assert "internal" in ERROR_TYPES and row["error_type"] == "internal"
    assert secret not in row["error"] and "RuntimeError" in row["error"] and "a.wav" in row["error"]
    summary = summarize(out, "ctc", 1.0, manifest_rows=1, skipped=0, expected=1)
    assert summary["errors_by_type"] == {"internal": 1} and summary["rows_ok"] == 0


def test_allow_list_edges(tmp_path):
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir(), outside.mkdir()
    (outside / "x.wav").write_bytes(b"")
    (inside / "link.wav").symlink_to(outside / "x.wav")  # a symlink must not smuggle a file in
    allow = [str(inside), "s3://corpus/calls"]
    assert storage.allowed("s3://corpus/calls/2024/a.wav", allow)
    assert not storage.allowed("s3://corpus/calls-old/a.wav", allow)      # segment boundary
    assert not storage.allowed("s3://corpus/calls/../private/a.wav", allow)  # '..' normalised first
    assert not storage.allowed("s3://other/calls/a.wav", allow)
    assert not storage.allowed(str(inside / "link.wav"), allow)
    assert storage.allowed(str(inside / "a.wav"), allow) and storage.allowed(None, [])
    assert not storage.allowed(None, allow)


def test_s3_retry_settings_reach_the_botocore_client(s3_server):
    def client_config(extra: dict):
        options = storage.storage_options({**s3_server.storage_options, **extra})
        fs, _ = storage.filesystem(f"s3://corpus/{len(extra)}", options)
        fs.connect()
        return fs.s3.meta.config
    config = client_config({})
    assert config.retries == {"mode": "adaptive", "total_max_attempts": 9}  # 8 retries after the first try
    assert config.connect_timeout == 10 and config.read_timeout == 60
    own = client_config({"config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}}})
    assert own.retries == {"mode": "standard", "total_max_attempts": 3}  # the job config wins
    assert storage.S3_RETRY_DEFAULTS["retries"] == {"max_attempts": 8, "mode": "adaptive"}  # not rewritten
    assert "config_kwargs" not in storage._options_for("gs://b/k", storage.storage_options())


class _Payload:
    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path('/tmp/sew_reliability_pwned').write_text('x')",))


def test_pickle_bearing_bin_is_refused_by_the_predictor(tmp_path, tiny_ctc_dir):
    from sew_pipeline.models.checkpoint import CheckpointError
    marker = Path("/tmp/sew_reliability_pwned")
    marker.unlink(missing_ok=True)
    model = tmp_path / "model"
    shutil.copytree(tiny_ctc_dir, model)
    with open(model / "pytorch_model.bin", "wb") as f:
        pickle.dump({"sew.layer_norm.weight": _Payload()}, f)
    CTCPredictor(_cfg(model))  # safetensors present: it is what loads, the pickle is never opened
    assert not marker.exists()
    (model / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="refusing"):
        CTCPredictor(_cfg(model))
    assert not marker.exists()


def test_replayed_rows_never_emit_an_id_twice(tmp_path, tiny_ctc_dir):
    """An id whose windows arrive in several blocks completes in the keyed merge once: a retried upstream
    task delivering the same rows again emits nothing. (An id complete within one block is finished where
    it is: Ray Data hands each block to the post-model stage once per execution.)"""
    (tmp_path / "a.wav").write_bytes(wav_bytes(19.0))
    cfg = _cfg(tiny_ctc_dir, "window_s=8", "overlap_s=1")
    preds = CTCPredictor(cfg)(DecodeStage(cfg)(_manifest([("a", str(tmp_path / "a.wav"))])))
    finalizer = Finalizer(resolve(cfg.model), "ctc", "r")
    first = finalizer(preds.slice(0, 2)).num_rows + finalizer(preds.slice(2)).num_rows
    replay = finalizer(preds.slice(0, 2)).num_rows + finalizer(preds.slice(2)).num_rows
    assert preds.num_rows == 3 and first == 1 and replay == 0 and not finalizer.merge.pending
    assert finalizer.merged_rows == 6  # every row of this id went through the merge, both times
