"""Pipeline stages without Ray: decode → predict → assemble, duration grouping, order independence."""
from __future__ import annotations

import io
import random

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from sew_pipeline.config import LabelConfig, TranscribeConfig, load_config
from sew_pipeline.postprocess import Finalizer
from sew_pipeline.predictors import ClassifierPredictor, CTCPredictor, DecodeStage
from sew_pipeline.schema import PREDICTION_SCHEMA
from sew_pipeline.spec import resolve
from sew_pipeline.models.batching import plan_length_groups
from sew_pipeline.schema import CLASSIFICATION_SCHEMA, CTC_SCHEMA
from tests.reliability.conftest import corrupt_late_flac

LIBRI = "tests/data/LibriSpeech/dev-clean/1272/128104/1272-128104-0000.flac"


@pytest.mark.parametrize("seed", range(5))
def test_length_groups_bound_padding_and_batch_audio(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(16000, 35 * 16000) for _ in range(200)]
    budget, frac = 160 * 16000, 0.08
    groups = plan_length_groups(lengths, max_batch_samples=budget, max_padding_fraction=frac)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # each item exactly once
    total = padded = 0
    for g in groups:
        longest = max(lengths[i] for i in g)
        assert len(g) == 1 or len(g) * longest <= budget
        pad = len(g) * longest - sum(lengths[i] for i in g)
        assert pad <= frac * len(g) * longest + 1e-9
        total += len(g) * longest
        padded += pad
    assert padded / total < 0.10
    assert np.mean([len(g) for g in groups]) > 2  # still batches, not singletons


def _manifest(rows):
    return pa.Table.from_pylist([{"id": r[0], "audio_uri": r[1], "offset_s": None, "duration_s": None,
                                  "text": None, "split": None, "speaker": None} for r in rows])


def _cfg(cls, model, *sets):
    return load_config(cls, None, ["manifest=unused", "output=unused", f"model={model}", *sets])


def _wav(path, seconds, sr=16000, channels=1, subtype="PCM_16", seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) + 0.05 * rng.standard_normal(len(t))
                  for c in range(channels)], axis=1)
    sf.write(path, x, sr, subtype=subtype)
    return str(path)


def _finalizer(cfg):
    return Finalizer(resolve(cfg.model), cfg.task, "test", getattr(cfg, "top_k", 1),
                     segments=cfg.segmentation.method == "vad")


def _run_stages(cfg, manifest, predictor_cls, shuffle_seed=None, batch_rows=5):
    chunks = DecodeStage(cfg)(manifest)
    predictor = predictor_cls(cfg)
    preds = [predictor(chunks.slice(i, batch_rows)) for i in range(0, chunks.num_rows, batch_rows)]
    rows = pa.concat_tables(preds).to_pylist()
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    finalizer = _finalizer(cfg)
    outs = [finalizer(pa.Table.from_pylist(rows[i:i + 3], schema=PREDICTION_SCHEMA)) for i in range(0, len(rows), 3)]
    assert not finalizer.merge.pending
    return chunks, pa.concat_tables(outs)


def test_ctc_stages_one_row_per_item_with_typed_errors(tmp_path, tiny_ctc_dir):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(40)))
    manifest = _manifest([("libri", LIBRI), ("long", _wav(tmp_path / "long.wav", 21.3)),
                          ("missing", str(tmp_path / "nope.flac")), ("corrupt", str(corrupt)),
                          ("short", _wav(tmp_path / "short.wav", 0.7, sr=8000)),
                          ("blip", _wav(tmp_path / "blip.wav", 0.01))])
    cfg = _cfg(TranscribeConfig, tiny_ctc_dir, "window_s=8", "overlap_s=1")
    chunks, out = _run_stages(cfg, manifest, CTCPredictor, shuffle_seed=1)
    assert out.schema == CTC_SCHEMA
    rows = {r["id"]: r for r in out.to_pylist()}
    assert sorted(rows) == sorted(manifest.column("id").to_pylist())  # exactly once each
    assert rows["missing"]["error_type"] == "missing" and rows["missing"]["text"] is None
    assert rows["corrupt"]["error_type"] in ("unreadable", "unsupported_format")
    long = rows["long"]
    assert long["error_type"] is None and long["num_chunks"] == 3
    assert long["duration_s"] == pytest.approx(21.3, abs=0.01)
    words = long["words"]
    assert all(0 <= w["start_s"] <= w["end_s"] <= 21.3 + 0.02 for w in words)
    assert [w["word"] for w in words] == long["text"].split()
    assert rows["libri"]["model"] == str(tiny_ctc_dir) and len(rows["libri"]["checkpoint_sha256"]) == 64
    assert rows["blip"]["error_type"] is None and rows["blip"]["words"] == []  # 10 ms: no frame, no crash
    for r in rows.values():
        assert (r["error"] is None) == (r["error_type"] is None)


def test_ctc_result_does_not_depend_on_row_order(tmp_path, tiny_ctc_dir):
    manifest = _manifest([("a", _wav(tmp_path / "a.wav", 19.0, seed=1)), ("b", _wav(tmp_path / "b.wav", 3.0, seed=2)),
                          ("c", _wav(tmp_path / "c.wav", 9.5, seed=3))])
    cfg = _cfg(TranscribeConfig, tiny_ctc_dir, "window_s=8", "overlap_s=1")
    results = []
    for seed in (None, 3, 7):
        _, out = _run_stages(cfg, manifest, CTCPredictor, shuffle_seed=seed)
        results.append({r["id"]: (r["text"], r["num_chunks"]) for r in out.to_pylist()})
    assert results[0] == results[1] == results[2]
    assert results[0]["a"][1] == 3


def test_stitched_ids_tile_the_timeline(tmp_path, tiny_ctc_dir):
    manifest = _manifest([("a", _wav(tmp_path / "a.wav", 19.0))])
    cfg = _cfg(TranscribeConfig, tiny_ctc_dir, "window_s=8", "overlap_s=1")
    chunks = DecodeStage(cfg)(manifest)
    preds = CTCPredictor(cfg)(chunks).to_pylist()
    keep = [(r["keep_start_frame"], r["keep_end_frame"]) for r in sorted(preds, key=lambda r: r["chunk_index"])]
    assert keep[0][0] == 0 and all(a[1] == b[0] for a, b in zip(keep, keep[1:]))
    assert sum(len(r["payload"]) // 2 for r in preds) == keep[-1][1]
    assert keep[-1][1] == pytest.approx(19.0 / 0.02, abs=2)


def test_label_stereo_ulaw_call_gives_windows_and_aggregates_per_channel(tmp_path, tiny_kws_dir):
    call = _wav(tmp_path / "call.wav", 4.2, sr=8000, channels=2, subtype="ULAW")
    assert sf.info(call).subtype == "ULAW" and sf.info(call).channels == 2
    cfg = _cfg(LabelConfig, tiny_kws_dir)
    _, out = _run_stages(cfg, _manifest([("call", call)]), ClassifierPredictor, shuffle_seed=2)
    assert out.schema == CLASSIFICATION_SCHEMA
    rows = out.to_pylist()
    for channel in (0, 1):
        windows = [r for r in rows if r["channel"] == channel and r["level"] == "window"]
        aggs = [r for r in rows if r["channel"] == channel and r["level"] == "channel"]
        assert len(windows) >= 4 and len(aggs) == 1
        assert sorted(w["window_index"] for w in windows) == list(range(len(windows)))
        assert aggs[0]["num_windows"] == len(windows) and aggs[0]["item_id"] == f"call#c{channel}"
        assert aggs[0]["duration_s"] == pytest.approx(4.2, abs=0.01)
        for r in windows + aggs:
            assert len(r["top_k"]) == 3 and r["label"] == r["top_k"][0]["label"]
            assert 0 < r["score"] <= 1 and r["error_type"] is None
    calls = [r for r in rows if r["level"] == "call"]
    assert len(calls) == 1 and calls[0]["channel"] == -1 and calls[0]["num_windows"] == len(rows) - 3


def test_long_items_leave_decode_in_bounded_slices_and_a_mid_file_failure_voids_its_chunks(tmp_path, tiny_ctc_dir):
    good = _wav(tmp_path / "good.flac", 60.0, seed=1)
    (tmp_path / "bad.flac").write_bytes(corrupt_late_flac(60.0, at=0.75))
    bad = str(tmp_path / "bad.flac")
    window_bytes = 8 * 16000 * 4
    cfg = _cfg(TranscribeConfig, tiny_ctc_dir, "window_s=8", "overlap_s=1", f"decode.slice_mb={2.5 * window_bytes / 2**20}")
    decode = DecodeStage(cfg)
    manifest = _manifest([("good", good), ("bad", bad)])
    tables = list(decode.iter_tables(manifest))

    def audio_bytes(t):
        return sum(len(a or b"") for a in t.column("audio").to_pylist())
    good_tables = [t for t in tables if t.column("id")[0].as_py() == "good"]
    assert len(good_tables) >= 3 and all(audio_bytes(t) <= 3 * window_bytes for t in good_tables)
    # sliced, the item is exactly the rows of the all-at-once decode
    whole = decode(manifest.slice(0, 1)).to_pylist()
    assert pa.concat_tables(good_tables).to_pylist() == whole and len(whole) == whole[0]["num_chunks"]
    # the corrupt file: some windows went out before the failure, then one error row; what went out can
    # never complete the item on its own
    bad_rows = pa.concat_tables([t for t in tables if t.column("id")[0].as_py() == "bad"]).to_pylist()
    sent, last = bad_rows[:-1], bad_rows[-1]
    assert last["item_failed"] and last["error_type"] == "unreadable" and last["audio"] is None
    assert 0 < len(sent) < sent[0]["num_chunks"] and not any(r["item_failed"] for r in sent)
    [alone] = decode.decode_row({"id": "bad", "audio_uri": bad})  # the list form: the error row only
    assert alone["item_failed"] and alone["error"] == last["error"]

    predictor = CTCPredictor(cfg)
    preds = pa.concat_tables([predictor(t) for t in tables]).to_pylist()
    error_pos = next(i for i, r in enumerate(preds) if r["item_failed"])
    expected_text = _run_stages(cfg, manifest.slice(0, 1), CTCPredictor)[1].column("text")[0].as_py()
    for order in ("error first", "error last", "shuffled"):
        rows = list(preds)
        if order == "error first":
            rows.insert(0, rows.pop(error_pos))
        elif order == "error last":
            rows.append(rows.pop(error_pos))
        else:
            random.Random(4).shuffle(rows)
        finalizer = _finalizer(cfg)
        out = pa.concat_tables([finalizer(pa.Table.from_pylist(rows[i:i + 2], schema=PREDICTION_SCHEMA))
                                for i in range(0, len(rows), 2)]).to_pylist()
        assert sorted(r["id"] for r in out) == ["bad", "good"], order  # exactly once each
        result = {r["id"]: r for r in out}
        assert result["bad"]["error_type"] == "unreadable" and result["bad"]["text"] is None
        assert result["good"]["text"] == expected_text and result["good"]["error_type"] is None
        assert not finalizer.merge.pending, order
