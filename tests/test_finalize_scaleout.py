"""The post-model stage scales out: finalize runs as several stateless worker processes, long items meet
in the sharded keyed merge, and every id still comes out exactly once when a finalize worker is killed."""
from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from sew_pipeline import ray_pipeline
from sew_pipeline.config import TranscribeConfig, load_config
from sew_pipeline.postprocess import Finalizer, KeyedMerge
from sew_pipeline.predictors import CTCPredictor, DecodeStage
from sew_pipeline.results import read_results
from sew_pipeline.spec import resolve
from tests.reliability.conftest import corrupt_late_flac, wav_bytes
from tests.reliability.procs import ActorKiller, pids_named

MARKER = "finalize_batch"  # Ray's proctitle of a worker running a finalize task


class PidSampler(threading.Thread):
    """Every process that ran a finalize task while we watched."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: set[int] = set()
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.seen |= pids_named(MARKER)
            time.sleep(0.02)


def _corpus(tmp_path: Path) -> tuple[Path, dict[str, str | None]]:
    expected = {}
    lines = []
    for i in range(60):
        (tmp_path / f"s{i}.wav").write_bytes(wav_bytes(0.8 + (i % 5) * 0.3, seed=i))
        lines.append((f"short-{i:02d}", f"s{i}.wav"))
        expected[f"short-{i:02d}"] = None
    (tmp_path / "long.wav").write_bytes(wav_bytes(45.0, seed=99))  # 8 s windows, one per slice: many blocks
    (tmp_path / "late.flac").write_bytes(corrupt_late_flac(30.0))  # fails after its first windows left
    lines += [("long", "long.wav"), ("late", "late.flac"), ("missing", "nope.wav")]
    expected.update(long=None, late="unreadable", missing="missing")
    manifest = tmp_path / "m.jsonl"
    import json
    manifest.write_text("".join(json.dumps({"id": i, "audio_filepath": p}) + "\n" for i, p in lines))
    return manifest, expected


def test_finalize_scales_out_and_survives_a_killed_worker(ray_session, tiny_ctc_dir, tmp_path):
    manifest, expected = _corpus(tmp_path)
    out = tmp_path / "out"
    cfg = load_config(TranscribeConfig, None, [
        f"manifest={manifest}", f"output={out}", f"model={tiny_ctc_dir}", "window_s=8", "overlap_s=1",
        "decode.batch_rows=4", "decode.slice_mb=0.4", "inference.batch_rows=4", "finalize.merge_actors=2",
        "finalize.rows_per_file=16"])
    sampler = PidSampler()
    # SIGKILL the first finalize worker seen once output has started: its task is retried elsewhere
    killer = ActorKiller(MARKER, ready=lambda: any(out.glob("*.parquet")))
    sampler.start(), killer.start()
    try:
        result = ray_pipeline.transcribe(cfg)
    finally:
        sampler.stop.set(), killer.stop.set()
        sampler.join(), killer.join()
    assert killer.killed is not None, "no finalize worker was killed mid-run"
    assert len(sampler.seen) >= 2, f"finalize ran in {len(sampler.seen)} process(es)"
    table = read_results(str(out))
    assert Counter(table.column("id").to_pylist()) == Counter(list(expected))  # exactly once each
    rows = {r["id"]: r for r in table.to_pylist()}
    for id_, error_type in expected.items():
        assert rows[id_]["error_type"] == error_type, (id_, rows[id_]["error"])
    assert rows["long"]["num_chunks"] >= 6 and rows["long"]["text"] is not None
    assert result.summary["ids_not_written"] == 0
    # the long item's text equals the same item finished in one process, with no blocks at all
    alone = load_config(TranscribeConfig, None, [f"manifest={manifest}", "output=unused", f"model={tiny_ctc_dir}",
                                                 "window_s=8", "overlap_s=1"])
    preds = CTCPredictor(alone)(DecodeStage(alone)(pa.Table.from_pylist(
        [{"id": "long", "audio_uri": str(tmp_path / "long.wav")}])))
    [ref] = Finalizer(resolve(str(tiny_ctc_dir)), "ctc", "r")(preds).to_pylist()
    assert rows["long"]["text"] == ref["text"] and rows["long"]["words"] == ref["words"]


def test_keyed_merge_failed_item_voids_chunks_in_any_order():
    """An item that failed mid-file: its error row wins over chunks that arrive before or after it."""
    def chunk(i):
        return {"id": "x", "item_index": 0, "chunk_index": i, "num_chunks": 3, "num_items": 1}
    failed = {"id": "x", "item_index": 0, "chunk_index": 0, "num_chunks": 1, "num_items": 1,
              "item_failed": True, "sent_before": 2}
    for order in ([chunk(0), failed, chunk(1)], [failed, chunk(0), chunk(1)], [chunk(0), chunk(1), failed]):
        merge = KeyedMerge()
        done = [group for row in order for group in merge.add([row])]
        assert done == [[failed]] and not merge.pending


def test_remote_merge_completes_each_id_once_across_shards(ray_session):
    """Rows of an id sent by different callers meet in the one shard that owns the id."""
    cfg = load_config(TranscribeConfig, None, ["manifest=unused", "output=unused", "finalize.merge_actors=3"])
    merge = ray_pipeline._start_merges(cfg)
    rows = [{"id": f"id-{i}", "item_index": 0, "chunk_index": c, "num_chunks": 2, "num_items": 1}
            for i in range(50) for c in range(2)]
    first = merge([r for r in rows if r["chunk_index"] == 0])       # one finalize task's half
    second = merge([r for r in rows if r["chunk_index"] == 1])      # another's
    again = merge(rows)                                             # a retried task replays everything
    assert first == [] and again == []
    assert sorted(g[0]["id"] for g in second) == sorted(f"id-{i}" for i in range(50))
    assert all(sorted(r["chunk_index"] for r in g) == [0, 1] for g in second)
    # routing: the probe's first chunk went to its owner only, so only the owner can complete it
    probe = [{"id": "probe", "item_index": 0, "chunk_index": c, "num_chunks": 2, "num_items": 1} for c in range(2)]
    assert merge(probe[:1]) == []
    completed = [len(g) for g in ray_session.get([h.add.remote(probe[1:]) for h in merge.handles])]
    assert sorted(completed) == [0, 0, 1]
    for h in merge.handles:
        ray_session.kill(h)
