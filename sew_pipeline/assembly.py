"""Prediction rows → output rows: CTC chunks stitched and decoded once per item; classification windows
plus per-channel and per-call aggregates. All rows of one manifest id are emitted together (no Ray here)."""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from sew_pipeline.config import PipelineConfig
from sew_pipeline.predictors import SAMPLE_RATE, STRIDE, model_config
from sew_pipeline.schema import to_table

log = logging.getLogger(__name__)


class ItemAssembler:
    """Prediction rows → output rows. Buffers rows until every chunk of every item (channel) of a
    manifest id has arrived, then emits all of that id's output rows together, so they land in the
    same output block/file: an id is either fully written or not at all (the resume unit).

    Must see every row of an id: run it as a single stateful instance (small rows only)."""

    def __init__(self, cfg: PipelineConfig, run_id: str):
        from sew_pipeline.schema import output_schema
        self.cfg, self.run_id = cfg, run_id
        self.schema = output_schema(cfg.task)
        self.pending: dict[str, dict[tuple[int, int], dict]] = {}
        # ids already emitted: a replayed prediction row (a retried upstream task) must not emit an id twice
        self.emitted: set[str] = set()
        self.tokenizer = self.labels = None
        if cfg.task == "ctc":
            from sew_pipeline import models, storage
            from sew_pipeline.models import registry
            self.tokenizer = models.CTCTokenizer.from_pretrained(
                registry.resolve_model(cfg.model), storage_options=storage.storage_options(cfg.storage_options))

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: list[dict] = []
        for row in batch.to_pylist():
            if row["id"] in self.emitted:  # a replayed row, or a chunk sent before its item's decode failed
                log.debug("dropping a row of id %s (already written)", row["id"])
                continue
            if row.get("item_failed"):  # decoding failed: this row is the id's whole output
                self.pending.pop(row["id"], None)
                self.emitted.add(row["id"])
                out.extend(self.finish([row]))
                continue
            rows = self.pending.setdefault(row["id"], {})
            rows[(row["item_index"], row["chunk_index"])] = row  # a replayed chunk overwrites itself
            if self._complete(rows):
                del self.pending[row["id"]]
                self.emitted.add(row["id"])
                out.extend(self.finish(list(rows.values())))
        for r in out:
            r["run_id"] = self.run_id
        return to_table(out, self.schema)

    @staticmethod
    def _complete(rows: dict[tuple[int, int], dict]) -> bool:
        first = next(iter(rows.values()))
        expected = {}
        for r in rows.values():
            expected[r["item_index"]] = r["num_chunks"]
        return len(expected) == first["num_items"] and len(rows) == sum(expected.values())

    def finish(self, rows: list[dict]) -> list[dict]:
        items: dict[int, list[dict]] = {}
        for r in sorted(rows, key=lambda r: (r["item_index"], r["chunk_index"])):
            items.setdefault(r["item_index"], []).append(r)
        if self.cfg.task == "ctc":
            return [self.finish_ctc(chunks) for chunks in items.values()]
        out = []
        for chunks in items.values():
            out.extend(self.finish_windows(chunks))
        aggregates = [r for r in out if r["level"] == "channel" and r["error_type"] is None]
        if len(items) > 1 and len(aggregates) == len(items):
            out.append(self._call_aggregate(out))
        return out

    # -- shared
    @staticmethod
    def _item_fields(chunks: list[dict]) -> dict:
        first, failed = chunks[0], next((c for c in chunks if c.get("error_type")), None)
        start = first["item_start_s"]
        duration = first["item_duration_s"]
        return {"id": first["id"], "item_id": first["item_id"], "audio_uri": first["audio_uri"],
                "channel": first["channel"], "start_s": start,
                "end_s": None if duration is None else start + duration, "duration_s": duration,
                "model": first["model"], "checkpoint_sha256": first["checkpoint_sha256"],
                "error_type": failed["error_type"] if failed else None,
                "error": failed["error"] if failed else None,
                "processing_s": sum(c["processing_s"] or 0.0 for c in chunks),
                "frames": sum(c["frames"] or 0 for c in chunks),
                "padded_frames": sum(c["padded_frames"] or 0 for c in chunks)}

    # -- CTC: stitch keep ranges in chunk order, then greedy-decode once
    def finish_ctc(self, chunks: list[dict]) -> dict:
        row = self._item_fields(chunks)
        row["num_chunks"] = len(chunks)
        if row["error_type"] is None:
            ids = np.concatenate([np.frombuffer(c["payload"] or b"", dtype="<i2") for c in chunks])
            text, words = self.tokenizer.decode_words(ids.astype(np.int64), seconds_per_frame=STRIDE / SAMPLE_RATE,
                                                      time_offset_s=row["start_s"])
            row["text"] = text
            row["words"] = [{"word": w, "start_s": float(s), "end_s": float(e)} for w, s, e in words]
        return row

    # -- classification: window rows + per-channel aggregate (mean of window probabilities)
    def _label_fields(self, probs: np.ndarray) -> dict:
        labels = self.cfg_labels(len(probs))
        top = np.argsort(-probs, kind="stable")[: self.cfg.top_k]
        return {"label": labels[top[0]], "score": float(probs[top[0]]),
                "top_k": [{"label": labels[k], "score": float(probs[k])} for k in top]}

    def cfg_labels(self, n: int) -> list[str]:
        if self.labels is None or len(self.labels) != n:
            self.labels = self._load_labels(n)
        return self.labels

    def _load_labels(self, n: int) -> list[str]:
        from sew_pipeline import storage
        id2label = model_config(self.cfg, storage.storage_options(self.cfg.storage_options)).get("id2label") or {}
        return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]

    def finish_windows(self, chunks: list[dict]) -> list[dict]:
        item = self._item_fields(chunks)
        agg = {**item, "level": "channel", "num_windows": len(chunks)}
        if item["error_type"] is not None:
            return [agg]
        out, all_probs = [], []
        for c in chunks:
            probs = np.frombuffer(c["payload"], dtype="<f4")
            all_probs.append(probs)
            out.append({**item, "level": "window", "window_index": c["chunk_index"], "start_s": c["start_s"],
                        "end_s": c["end_s"], "duration_s": c["end_s"] - c["start_s"],
                        "processing_s": c["processing_s"], "frames": c["frames"],
                        "padded_frames": c["padded_frames"], "num_windows": 1, **self._label_fields(probs)})
        agg["_probs"] = np.mean(all_probs, axis=0)
        agg.update(self._label_fields(agg["_probs"]))
        return out + [agg]

    def _call_aggregate(self, rows: list[dict]) -> dict:
        channels = [r for r in rows if r["level"] == "channel"]
        first = channels[0]
        probs = np.mean([r["_probs"] for r in channels], axis=0)
        return {**{k: first[k] for k in ("id", "audio_uri", "start_s", "end_s", "duration_s", "model",
                                          "checkpoint_sha256")},
                "item_id": first["id"], "channel": -1, "level": "call", "error_type": None, "error": None,
                "num_windows": sum(r["num_windows"] for r in channels), "processing_s": 0.0, "frames": 0,
                "padded_frames": 0, **self._label_fields(probs)}
