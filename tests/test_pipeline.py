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
           "--set", f"model={tiny_ctc_dir}", "--set", "decode.batch_rows=1", "--set", "inference.batch_rows=1",
           "--set", "finalize.rows_per_file=1"]  # small files, written as the run goes (one file would be all or nothing)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    def written() -> dict[str, str]:  # id -> run_id over the complete Parquet files so far
        rows = {}
        for f in sorted(out.glob("*.parquet")):
            try:
                rows.update((r["id"], r["run_id"]) for r in pq.read_table(f, columns=["id", "run_id"]).to_pylist())
            except Exception:  # noqa: BLE001 - a file still being written
                pass
        return rows

    try:  # kill the whole job (driver and its local Ray) as soon as part of the output is complete
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not written():
            time.sleep(0.05)
        assert proc.poll() is None, f"the job ended (rc {proc.returncode}) before it could be killed mid-run"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        _stop(HeadCluster("", "", {}, ray_tmp))  # that Ray's processes only; removes ray_tmp
    before = written()  # what the killed run left complete
    all_ids = [f"u{i:02d}" for i in range(24)]
    assert 0 < len(before) < 24, f"the kill did not land mid-run: {len(before)} of 24 ids were complete"
    assert set(before) < set(all_ids) and len(set(before.values())) == 1
    (out / "part-crashed-000000-0.parquet").write_bytes(b"PAR1 half a file")  # a write cut short

    from sew_pipeline import ray_pipeline
    cfg = _cfg(TranscribeConfig, f"manifest={manifest}", f"output={out}", f"model={tiny_ctc_dir}")
    result = ray_pipeline.transcribe(cfg)
    table = read_results(str(out))
    ids = table.column("id").to_pylist()
    assert sorted(ids) == all_ids  # every id, exactly once
    assert (out / "part-crashed-000000-0.parquet.incomplete").exists()
    # The rerun skipped exactly what the killed run had completed, and wrote only the rest, itself.
    assert result.summary["skipped_already_done"] == len(before)
    assert result.summary["ids_written"] == 24 - len(before)
    final = dict(zip(ids, table.column("run_id").to_pylist()))
    assert {i: final[i] for i in before} == before  # the killed run's rows kept, not rewritten
    assert {final[i] for i in all_ids if i not in before} == {result.run_id} != set(before.values())
    print(f"killed with {len(before)} of 24 ids complete; the rerun wrote {result.summary['ids_written']}")


def test_unknown_model_fails_before_any_work(ray_session, tmp_path):
    from sew_pipeline import ray_pipeline
    cfg = _cfg(TranscribeConfig, f"manifest={LIBRI}", f"output={tmp_path / 'o'}", "model=no-such-model")
    with pytest.raises(ValueError, match="no-such-model.*no config.json"):
        ray_pipeline.transcribe(cfg)
    assert not (tmp_path / "o").exists()


def test_label_archive_stereo_ulaw_call(ray_session, tmp_path, tiny_kws_dir):
    # Two clearly different channels (a tone; noise bursts), and each channel alone as a mono file: the split
    # call's channel c must give exactly the windows its mono copy gives (a channel swap would fail).
    rng = np.random.default_rng(5)
    t = np.arange(6 * 8000) / 8000
    tone = 0.3 * np.sin(2 * np.pi * 300 * t)
    bursts = 0.6 * rng.standard_normal(len(t)) * (np.sin(2 * np.pi * 0.7 * t) > 0)
    sf.write(tmp_path / "call.wav", np.stack([tone, bursts], axis=1), 8000, subtype="ULAW")
    sf.write(tmp_path / "ch0.wav", tone, 8000, subtype="ULAW")
    sf.write(tmp_path / "ch1.wav", bursts, 8000, subtype="ULAW")
    (tmp_path / "calls.jsonl").write_text("".join(json.dumps({"id": i, "audio_filepath": f}) + "\n" for i, f in [
        ("call-1", "call.wav"), ("call-2", "gone.wav"), ("mono-0", "ch0.wav"), ("mono-1", "ch1.wav")]))
    import torch
    from sew_pipeline import ray_pipeline
    from sew_pipeline.models import FeatureExtractor, SEWForSequenceClassification
    # tiny_kws, its classifier scaled up: the random model's near-uniform outputs (channels 2e-5 apart) become
    # distributions that differ by ~1e-2 between the channels, so a channel mix-up shows
    kws = SEWForSequenceClassification.from_pretrained(tiny_kws_dir)
    with torch.no_grad():
        kws.classifier.weight.mul_(1000.0)
    kws.save_pretrained(tmp_path / "kws")
    FeatureExtractor.from_pretrained(tiny_kws_dir).save_pretrained(tmp_path / "kws")
    labels = 12  # the speech-commands labels; top_k = all of them, so rows carry whole distributions
    cfg = _cfg(LabelConfig, f"manifest={tmp_path / 'calls.jsonl'}", f"output={tmp_path / 'labels'}",
               f"model={tmp_path / 'kws'}", f"top_k={labels}")
    result = ray_pipeline.label(cfg)
    rows = read_results(str(tmp_path / "labels")).to_pylist()
    names = sorted(e["label"] for e in rows[0]["top_k"])

    def dist(row) -> np.ndarray:  # the row's full probability vector, in label-name order
        scores = {e["label"]: e["score"] for e in row["top_k"]}
        assert sorted(scores) == names
        return np.array([scores[n] for n in names], dtype=np.float64)

    def windows(rid, ch) -> list[dict]:
        return sorted((r for r in rows if r["id"] == rid and r["channel"] == ch and r["level"] == "window"),
                      key=lambda r: r["window_index"])

    call = [r for r in rows if r["id"] == "call-1"]
    channel_means = []
    for ch in (0, 1):
        wins = windows("call-1", ch)
        agg = [r for r in call if r["channel"] == ch and r["level"] == "channel"]
        assert len(wins) >= 6 and len(agg) == 1 and agg[0]["num_windows"] == len(wins)
        assert [r["window_index"] for r in wins] == list(range(len(wins)))
        assert all(r["label"] and 0 < r["score"] <= 1 and len(r["top_k"]) == labels for r in wins + agg)
        probs = np.stack([dist(r) for r in wins])
        assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
        for r, p in zip(wins, probs):  # label and score are the window's top entry
            assert r["label"] == names[int(np.argmax(p))] and r["score"] == pytest.approx(p.max(), abs=1e-6)
        # channel identity: the same windows as that channel alone, and not the other channel's
        mono = np.stack([dist(r) for r in windows(f"mono-{ch}", 0)])
        other = np.stack([dist(r) for r in windows(f"mono-{1 - ch}", 0)])
        print(f"channel {ch}: vs its mono copy {np.abs(probs - mono).max():.2e}, vs the other channel "
              f"{np.abs(probs - other).max():.2e}")
        assert mono.shape == probs.shape and np.abs(probs - mono).max() <= 1e-6, np.abs(probs - mono).max()
        assert np.abs(probs - other).max() >= 1e-3, np.abs(probs - other).max()  # the channels are told apart
        # the channel aggregate is the mean of its window probabilities
        mean = probs.mean(0)
        assert np.abs(dist(agg[0]) - mean).max() <= 1e-6
        assert agg[0]["label"] == names[int(np.argmax(mean))]
        channel_means.append(mean)
    calls = [r for r in call if r["level"] == "call"]
    assert len(calls) == 1 and calls[0]["channel"] == -1 and calls[0]["num_windows"] == sum(
        len(windows("call-1", ch)) for ch in (0, 1))
    call_mean = np.mean(channel_means, axis=0)  # the call aggregate: mean of the channel aggregates
    assert np.abs(dist(calls[0]) - call_mean).max() <= 1e-6
    assert calls[0]["label"] == names[int(np.argmax(call_mean))]
    gone = [r for r in rows if r["id"] == "call-2"]
    assert len(gone) == 1 and gone[0]["error_type"] == "missing" and gone[0]["level"] == "channel"
    assert result.summary["rows_ok"] == 4 and result.summary["errors_by_type"] == {"missing": 1}

def test_ctc_segments_and_split_channels_on_the_files_timeline(ray_session, tmp_path):
    """A manifest offset_s/duration_s segment and decode.channels=split through the CTC pipeline (demo-ctc, which
    really transcribes the demo corpus). The segment's samples are exactly a demo utterance, also listed alone:
    same text, and its word times are the utterance's shifted by the offset. Each channel of a stereo file
    transcribes as that channel alone."""
    corpus = REPO / "sew_pipeline/assets/demo_corpus"
    refs = {r["id"]: r for r in map(json.loads, (corpus / "manifest.jsonl").read_text().splitlines())}
    clip = {i: sf.read(corpus / refs[i]["audio_filepath"], dtype="int16")[0] for i in
            ("h000000", "h000001", "h000002", "h000003")}
    offset = 4.0  # h000002 starts 4 s into long.wav, after h000000 (3.14 s) and silence
    long = np.zeros(int(offset * 16000) + len(clip["h000002"]) + 16000, dtype=np.int16)
    long[:len(clip["h000000"])] = clip["h000000"]
    long[int(offset * 16000):][:len(clip["h000002"])] = clip["h000002"]
    sf.write(tmp_path / "long.wav", long, 16000, subtype="PCM_16")
    seg_s = len(clip["h000002"]) / 16000
    n = max(len(clip["h000001"]), len(clip["h000003"]))
    chans = [np.pad(clip[i], (0, n - len(clip[i]))) for i in ("h000001", "h000003")]
    sf.write(tmp_path / "stereo.wav", np.stack(chans, axis=1), 16000, subtype="PCM_16")
    for c, x in enumerate(chans):
        sf.write(tmp_path / f"alone{c}.wav", x, 16000, subtype="PCM_16")
    entries = [{"id": "seg", "audio_filepath": "long.wav", "offset_s": offset, "duration_s": seg_s},
               {"id": "whole", "audio_filepath": str(corpus / refs["h000002"]["audio_filepath"])},
               {"id": "stereo", "audio_filepath": "stereo.wav"},
               {"id": "alone0", "audio_filepath": "alone0.wav"}, {"id": "alone1", "audio_filepath": "alone1.wav"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    from sew_pipeline import ray_pipeline
    cfg = _cfg(TranscribeConfig, f"manifest={tmp_path / 'm.jsonl'}", f"output={tmp_path / 'out'}", "model=demo-ctc",
               "decode.channels=split")
    ray_pipeline.transcribe(cfg)
    rows = read_results(str(tmp_path / "out")).to_pylist()
    assert all(r["error_type"] is None for r in rows), [r["error"] for r in rows]
    by_id = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)

    (seg,), (whole,) = by_id["seg"], by_id["whole"]
    assert seg["start_s"] == offset and seg["duration_s"] == pytest.approx(seg_s, abs=1e-9)
    assert seg["end_s"] == pytest.approx(offset + seg_s, abs=1e-9)
    assert whole["start_s"] == 0.0 and len(whole["words"]) >= 4
    assert seg["text"] == whole["text"]  # the segment's samples, not the file's start
    assert _wer_one(refs["h000002"]["text"], seg["text"]) <= 0.5 < _wer_one(refs["h000000"]["text"], seg["text"])
    assert [w["word"] for w in seg["words"]] == [w["word"] for w in whole["words"]]
    for ws, ww in zip(seg["words"], whole["words"]):  # on the file's timeline: shifted by the offset
        assert ws["start_s"] == pytest.approx(ww["start_s"] + offset, abs=1.5e-3)
        assert ws["end_s"] == pytest.approx(ww["end_s"] + offset, abs=1.5e-3)
        assert offset <= ws["start_s"] < ws["end_s"] <= offset + seg_s + 0.02

    stereo = sorted(by_id["stereo"], key=lambda r: r["channel"])
    assert [r["channel"] for r in stereo] == [0, 1] and len({r["item_id"] for r in stereo}) == 2
    for c, r in enumerate(stereo):
        (alone,) = by_id[f"alone{c}"]
        assert r["text"] == alone["text"] and r["words"] == alone["words"], c
        assert r["start_s"] == 0.0 and r["duration_s"] == pytest.approx(n / 16000)
    assert stereo[0]["text"] != stereo[1]["text"]  # two different utterances: a swap would show
    for c, i in enumerate(("h000001", "h000003")):
        assert _wer_one(refs[i]["text"], stereo[c]["text"]) <= 0.5, (i, stereo[c]["text"])


def _wer_one(ref: str, hyp: str) -> float:
    from sew_pipeline import metrics
    (c,) = metrics.word_counts([metrics.normalize_minimal(ref)], [metrics.normalize_minimal(hyp or "")])
    return (c.substitutions + c.deletions + c.insertions) / c.ref_len
