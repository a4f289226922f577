"""The Ray pipeline end to end on the shared session Ray: S3 in/out, resume, label_archive."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from sew_pipeline.config import LabelConfig, TranscribeConfig, load_config
from sew_pipeline.results import read_results
from tests.support.ray_cluster import HeadCluster, _stop

REPO = Path(__file__).resolve().parents[1]
LIBRI = REPO / "tests/data/LibriSpeech"


def _tone(seconds, sr=16000, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return np.stack([0.3 * np.sin(2 * np.pi * (200 + 50 * c + 10 * seed) * t) + 0.05 * rng.standard_normal(len(t))
                     for c in range(channels)], axis=1)


def _wav_bytes(seconds, sr=16000, channels=1, subtype="PCM_16", fmt="WAV", seed=0) -> bytes:
    import io
    buf = io.BytesIO()
    sf.write(buf, _tone(seconds, sr, channels, seed), sr, subtype=subtype, format=fmt)
    return buf.getvalue()


def _cfg(cls, *sets):
    return load_config(cls, None, list(sets))


def test_s3_corpus_to_s3_parquet_every_row_exactly_once(ray_session, s3_server, tiny_ctc_dir, capfd):
    s3 = s3_server
    s3.upload_dir(LIBRI, "corpus", "LibriSpeech")
    s3.put("corpus", "gen/long.flac", _wav_bytes(17.5, fmt="FLAC", seed=1))
    s3.put("corpus", "gen/phone.wav", _wav_bytes(3.0, sr=8000, subtype="ULAW", seed=2))
    s3.put("corpus", "gen/stereo44k.wav", _wav_bytes(2.5, sr=44100, channels=2, seed=3))
    s3.put("corpus", "gen/corrupt.flac", b"fLaC" + bytes(range(256)) * 4)
    s3.put("corpus", "gen/empty.wav", b"")
    libri = sorted(p.relative_to(LIBRI).as_posix() for p in LIBRI.rglob("*.flac"))
    entries = [{"audio_filepath": f"LibriSpeech/{p}", "id": Path(p).stem} for p in libri] + [
        {"audio_filepath": f"gen/{n}", "id": n.split(".")[0]}
        for n in ("long.flac", "phone.wav", "stereo44k.wav", "corrupt.flac", "empty.wav", "missing.wav")]
    s3.put("corpus", "manifest.jsonl", "\n".join(json.dumps(e) for e in entries) + "\n")
    s3.create_bucket("results")
    opts = json.dumps(s3.storage_options)
    from sew_pipeline import ray_pipeline
    cfg = _cfg(TranscribeConfig, "manifest=s3://corpus/manifest.jsonl", "output=s3://results/transcripts",
               f"model={tiny_ctc_dir}", f"storage_options={opts}", "window_s=8", "overlap_s=1",
               "inference.batch_rows=4")
    result = ray_pipeline.transcribe(cfg)

    table = read_results("s3://results/transcripts", s3.storage_options)
    rows = {r["id"]: r for r in table.to_pylist()}
    assert Counter(table.column("id").to_pylist()) == Counter(e["id"] for e in entries)  # exactly once
    for e in entries[:len(libri)] + [{"id": "long"}, {"id": "phone"}, {"id": "stereo44k"}]:
        r = rows[e["id"]]
        assert r["error_type"] is None and r["text"] is not None and r["duration_s"] > 0
    assert rows["long"]["num_chunks"] == 3 and rows["long"]["duration_s"] == pytest.approx(17.5, abs=0.01)
    assert rows["missing"]["error_type"] == "missing" and "missing.wav" in rows["missing"]["error"]
    assert rows["corrupt"]["error_type"] in ("unreadable", "unsupported_format")
    assert rows["empty"]["error_type"] == "empty"
    assert rows["phone"]["audio_uri"] == "s3://corpus/gen/phone.wav"
    assert s3.secret not in json.dumps(table.to_pylist(), default=str)
    logs = capfd.readouterr()
    assert s3.secret not in logs.out + logs.err
    summary = result.summary
    assert summary["rows_ok"] == len(libri) + 3 and summary["ids_not_written"] == 0
    assert summary["errors_by_type"]["missing"] == 1 and summary["errors_by_type"]["empty"] == 1
    assert 0 <= summary["padded_frame_fraction"] < 0.10 and summary["audio_hours"] > 0

    folder = ray_pipeline.transcribe(load_config(TranscribeConfig, None, [  # LibriSpeech layout on S3
        "manifest=s3://corpus/LibriSpeech", "output=s3://results/libri-folder", f"model={tiny_ctc_dir}",
        f"storage_options={opts}"]))
    libri_rows = read_results("s3://results/libri-folder", s3.storage_options).to_pylist()
    assert sorted(r["id"] for r in libri_rows) == sorted(Path(p).stem for p in libri)
    assert folder.summary["rows_ok"] == len(libri)

    again = ray_pipeline.transcribe(cfg)  # resume: everything is already there
    assert again.summary["skipped_already_done"] == len(entries) and again.summary["ids_written"] == 0
    assert read_results("s3://results/transcripts", s3.storage_options).num_rows == len(entries)
    with pytest.raises(ValueError, match="already holds results and resume is false"):
        ray_pipeline.transcribe(dataclasses.replace(cfg, resume=False))  # would duplicate every id


def _many_items(tmp_path, n=24) -> Path:
    audio = tmp_path / "audio"
    audio.mkdir()
    lines = []
    for i in range(n):
        sf.write(audio / f"u{i:02d}.wav", _tone(2.0 + (i % 5), seed=i), 16000)
        lines.append(json.dumps({"id": f"u{i:02d}", "audio_filepath": f"audio/u{i:02d}.wav"}))
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_resume_after_kill_gives_exactly_one_row_per_id(ray_session, tmp_path, tiny_ctc_dir):
    manifest, out = _many_items(tmp_path), tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    ray_tmp = Path(f"/tmp/sew_resume_{os.getpid()}")  # the job's own local Ray lives here
    env.update(SEW_TEST_CLUSTER=ray_tmp.name, RAY_TMPDIR=str(ray_tmp), RAY_USAGE_STATS_ENABLED="0")
    cmd = [sys.executable, "jobs/transcribe_corpus.py", "--set", f"manifest={manifest}", "--set", f"output={out}",
           "--set", f"model={tiny_ctc_dir}", "--set", "decode.batch_rows=1", "--set", "inference.batch_rows=1"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:  # kill the whole job (driver and its local Ray) as soon as part of the output exists
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not list(out.glob("*.parquet")):
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        _stop(HeadCluster("", "", {}, ray_tmp))  # that Ray's processes only; removes ray_tmp
    first = sorted(out.glob("*.parquet"))
    assert first, "the job wrote nothing before it was killed"
    (out / "part-crashed-000000-0.parquet").write_bytes(b"PAR1 half a file")  # a write cut short

    from sew_pipeline import ray_pipeline
    cfg = _cfg(TranscribeConfig, f"manifest={manifest}", f"output={out}", f"model={tiny_ctc_dir}")
    result = ray_pipeline.transcribe(cfg)
    ids = read_results(str(out)).column("id").to_pylist()
    assert sorted(ids) == [f"u{i:02d}" for i in range(24)]  # every id, exactly once
    assert (out / "part-crashed-000000-0.parquet.incomplete").exists()
    assert result.summary["skipped_already_done"] + result.summary["ids_written"] == 24
    print(f"killed after {len(first)} file(s); resumed {result.summary['ids_written']} ids")


def test_unknown_model_fails_before_any_work(ray_session, tmp_path):
    from sew_pipeline import ray_pipeline
    cfg = _cfg(TranscribeConfig, f"manifest={LIBRI}", f"output={tmp_path / 'o'}", "model=no-such-model")
    with pytest.raises(ValueError, match="no-such-model.*no config.json"):
        ray_pipeline.transcribe(cfg)
    assert not (tmp_path / "o").exists()


def test_label_archive_stereo_ulaw_call(ray_session, tmp_path, tiny_kws_dir):
    sf.write(tmp_path / "call.wav", _tone(6.0, sr=8000, channels=2), 8000, subtype="ULAW")
    (tmp_path / "calls.jsonl").write_text(json.dumps({"id": "call-1", "audio_filepath": "call.wav"}) + "\n"
                                          + json.dumps({"id": "call-2", "audio_filepath": "gone.wav"}) + "\n")
    from sew_pipeline import ray_pipeline
    cfg = _cfg(LabelConfig, f"manifest={tmp_path / 'calls.jsonl'}", f"output={tmp_path / 'labels'}",
               f"model={tiny_kws_dir}")
    result = ray_pipeline.label(cfg)
    rows = read_results(str(tmp_path / "labels")).to_pylist()
    call = [r for r in rows if r["id"] == "call-1"]
    for ch in (0, 1):
        windows = [r for r in call if r["channel"] == ch and r["level"] == "window"]
        agg = [r for r in call if r["channel"] == ch and r["level"] == "channel"]
        assert len(windows) >= 6 and len(agg) == 1 and agg[0]["num_windows"] == len(windows)
        assert all(r["label"] and 0 < r["score"] <= 1 and len(r["top_k"]) == 3 for r in windows + agg)
    assert [r["level"] for r in call].count("call") == 1
    gone = [r for r in rows if r["id"] == "call-2"]
    assert len(gone) == 1 and gone[0]["error_type"] == "missing" and gone[0]["level"] == "channel"
    assert result.summary["rows_ok"] == 2 and result.summary["errors_by_type"] == {"missing": 1}
