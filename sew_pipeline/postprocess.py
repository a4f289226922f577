"""Post-model CPU stage: prediction rows → output rows, stateless, as many workers as the cluster has (no Ray).

An id's rows are finished together (CTC: stitch its windows' kept frames and decode them once; classification:
window labels plus per-channel and per-call aggregates), so they land in one output block and file: an id is
fully written or not at all. Most ids arrive whole in one block and are finished where they are, with no shared
state. Only ids whose rows span blocks (hours-long calls cut into slices, or a window group split at a batch
edge) go through a keyed merge: ``merge(rows) -> [rows of each id that became complete]``. In a job the merge
is a few actors sharded by id hash (see ray_pipeline); without Ray, one in-process :class:`KeyedMerge`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from sew_pipeline.decoding import DecoderSpec, decode_item, unpack_frames
from sew_pipeline.schema import output_schema, to_table
from sew_pipeline.spec import ModelSpec

log = logging.getLogger(__name__)
Rows = list[dict]


# ------------------------------------------------------------------ one id's rows → output rows
def is_complete(rows: Iterable[dict]) -> bool:
    """Every chunk of every item (channel) of the id is present (duplicates count once)."""
    pending, complete = _Pending(), False
    for row in rows:
        complete = pending.add(row)
    return complete


def items_of(rows: Rows) -> list[Rows]:
    """An id's rows as its items (channels) in order, each item's chunks in order, duplicates dropped."""
    unique = {(r["item_index"], r["chunk_index"]): r for r in rows}
    items: dict[int, Rows] = {}
    for key in sorted(unique):
        items.setdefault(key[0], []).append(unique[key])
    return list(items.values())


def item_fields(chunks: Rows) -> dict:
    """Columns every output row of an item shares: source, provenance, error, summed cost."""
    first, failed = chunks[0], next((c for c in chunks if c.get("error_type")), None)
    start, duration = first["item_start_s"], first["item_duration_s"]
    return {"id": first["id"], "item_id": first["item_id"], "audio_uri": first["audio_uri"],
            "channel": first["channel"], "start_s": start,
            "end_s": None if duration is None else start + duration, "duration_s": duration,
            "model": first.get("model"), "checkpoint_sha256": first.get("checkpoint_sha256"),
            "error_type": failed["error_type"] if failed else None, "error": failed["error"] if failed else None,
            "processing_s": sum(c.get("processing_s") or 0.0 for c in chunks),
            "frames": sum(c.get("frames") or 0 for c in chunks),
            "padded_frames": sum(c.get("padded_frames") or 0 for c in chunks)}


@dataclass
class Context:
    """What finishing needs besides the rows: the model spec and task options."""
    spec: ModelSpec
    top_k: int = 3
    decoder: DecoderSpec | None = None  # beam decoding (None: greedy)
    storage_options: dict | None = None  # for an LM in object storage
    segments: bool = False  # segmentation vad: chunks are speech segments (sew_pipeline.conversation)
    _tokenizer: Any = field(default=None, repr=False)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self.spec.tokenizer()
        return self._tokenizer


def stitch_ctc(chunks: Rows, ctx: Context) -> dict:
    """One CTC item: its windows' kept frames in window order, decoded once (greedy, or beam search over the
    stitched frames, never per window), times on the file's timeline. (The model stage already cut each
    window's payload to its keep range.)"""
    return transcribe({**item_fields(chunks), "level": "item", "num_chunks": len(chunks)}, chunks, ctx)


def transcribe(row: dict, chunks: Rows, ctx: Context) -> dict:
    """``row`` with the text and words of ``chunks``' kept frames, whose first frame is at row["start_s"]."""
    row["decoder"] = "beam" if ctx.decoder else "greedy"
    if row["error_type"] is None:
        ids = np.concatenate([np.frombuffer(c["payload"] or b"", dtype="<i2") for c in chunks])
        text, words = ctx.tokenizer.decode_words(ids, seconds_per_frame=ctx.spec.seconds_per_frame,
                                                 time_offset_s=row["start_s"])
        row["text"] = text
        row["words"] = [{"word": w, "start_s": float(s), "end_s": float(e)} for w, s, e in words]
        if ctx.decoder is not None:
            frames = [f for c in chunks for f in unpack_frames(c["logp"])]
            row.update(text_greedy=text, **decode_item(frames, ctx.decoder, ctx.spec.seconds_per_frame,
                                                       row["start_s"], ctx.storage_options))
    return row


def labelled(probs: np.ndarray, ctx: Context) -> dict:
    names = ctx.spec.label_names(len(probs))
    top = np.argsort(-probs, kind="stable")[: ctx.top_k]
    return {"label": names[top[0]], "score": float(probs[top[0]]),
            "top_k": [{"label": names[k], "score": float(probs[k])} for k in top]}


def label_windows(chunks: Rows, ctx: Context) -> tuple[Rows, np.ndarray | None]:
    """One classification item: a row per window, then its channel aggregate (mean of window
    probabilities). Returns the rows and that mean (None on error) for the call aggregate."""
    item = item_fields(chunks)
    agg = {**item, "level": "channel", "num_windows": len(chunks)}
    if item["error_type"] is not None:
        return [agg], None
    out, probs = [], []
    for c in chunks:
        p = np.frombuffer(c["payload"], dtype="<f4")
        probs.append(p)
        out.append({**item, "level": "window", "window_index": c["chunk_index"], "start_s": c["start_s"],
                    "end_s": c["end_s"], "duration_s": c["end_s"] - c["start_s"],
                    "processing_s": c["processing_s"], "frames": c["frames"], "padded_frames": c["padded_frames"],
                    "num_windows": 1, **labelled(p, ctx)})
    mean = np.mean(probs, axis=0)
    agg.update(labelled(mean, ctx))
    return out + [agg], mean


def aggregate_call(channels: Rows, means: list[np.ndarray], ctx: Context) -> dict:
    """The call row (channel -1) of a split multi-channel id: mean of its channel aggregates."""
    first = channels[0]
    return {**{k: first[k] for k in ("id", "audio_uri", "start_s", "end_s", "duration_s", "model",
                                      "checkpoint_sha256")},
            "item_id": first["id"], "channel": -1, "level": "call", "error_type": None, "error": None,
            "num_windows": sum(r["num_windows"] for r in channels), "processing_s": 0.0, "frames": 0,
            "padded_frames": 0, **labelled(np.mean(means, axis=0), ctx)}


def finish_ctc(rows: Rows, ctx: Context) -> Rows:
    return [stitch_ctc(chunks, ctx) for chunks in items_of(rows)]


def finish_classification(rows: Rows, ctx: Context) -> Rows:
    out, channels, means = [], [], []
    items = items_of(rows)
    for chunks in items:
        item_rows, mean = label_windows(chunks, ctx)
        out.extend(item_rows)
        if mean is not None:
            channels.append(item_rows[-1])
            means.append(mean)
    if len(items) > 1 and len(means) == len(items):
        out.append(aggregate_call(channels, means, ctx))
    return out


# task -> how an id's rows become output rows (predictors.PREDICTORS is the model-stage half of this table)
FINISH: dict[str, Callable[[Rows, Context], Rows]] = {"ctc": finish_ctc, "classification": finish_classification}


def finish_id(rows: Rows, task: str, ctx: Context) -> Rows:
    """All output rows of one id. A failed decode (item_failed) is the id's only output."""
    failed = next((r for r in rows if r.get("item_failed")), None)
    rows = [failed] if failed is not None else rows
    if ctx.segments:
        from sew_pipeline.conversation import finish_segments
        return finish_segments(rows, task, ctx)
    return FINISH[task](rows, ctx)


# ------------------------------------------------------------------ ids spanning blocks
class _Pending:
    """One id's rows so far, with its completeness counted as rows arrive (an hours-long call in 1 s
    windows is ~15,000 rows: re-checking all of them on every arrival would be quadratic)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, int], dict] = {}
        self.expected: dict[int, int] = {}  # item_index -> num_chunks
        self.num_items = 0

    def add(self, row: dict) -> bool:
        """Add ``row`` (a replayed chunk overwrites itself); True once every chunk of every item is here."""
        self.rows[(row["item_index"], row["chunk_index"])] = row
        if row["num_chunks"] is not None:  # speech segments: only an item's last row knows the count
            self.expected[row["item_index"]] = max(row["num_chunks"], 1)  # 0: the one no-speech row
        self.num_items = row["num_items"]
        return len(self.expected) == self.num_items and len(self.rows) == sum(self.expected.values())


class KeyedMerge:
    """Rows of ids that span blocks, held until each id is complete. Memory: only the pending rows of
    such ids (small: no audio; a 2 h call is ~0.7 MB of CTC ids per channel), plus the ids it has
    completed (multi-block ids only), so a replayed row (a retried upstream task) never completes an
    id twice. A restart loses pending ids: the job's next pass redoes them."""

    def __init__(self) -> None:
        self.pending: dict[str, _Pending] = {}
        self.done: set[str] = set()

    def add(self, rows: Rows) -> list[Rows]:
        complete: list[Rows] = []
        for row in rows:
            id_ = row["id"]
            if id_ in self.done:
                continue
            if row.get("item_failed"):  # supersedes chunks sent before it and any still on their way
                self.pending.pop(id_, None)
                self.done.add(id_)
                complete.append([row])
                continue
            if self.pending.setdefault(id_, _Pending()).add(row):
                self.done.add(id_)
                complete.append(list(self.pending.pop(id_).rows.values()))
        return complete

    __call__ = add


class Finalizer:
    """Prediction block → output block. Ids complete in the block are finished here; the rest go to
    ``merge`` (default: a private in-process KeyedMerge, right when one Finalizer sees every block)."""

    def __init__(self, spec: ModelSpec, task: str, run_id: str, top_k: int = 3,
                 merge: Callable[[Rows], list[Rows]] | None = None, decoder: DecoderSpec | None = None,
                 storage_options: dict | None = None, segments: bool = False):
        self.task, self.run_id = task, run_id
        from sew_pipeline.storage import storage_options as resolved  # config options over this worker's env
        self.ctx = Context(spec, top_k, decoder, resolved(storage_options) if decoder and decoder.lm else None,
                           segments)
        self.schema = output_schema(task)
        self.merge = merge if merge is not None else KeyedMerge()
        self.merged_rows = 0  # rows that needed the merge (a counter for tests and benchmarks)

    def __call__(self, batch: pa.Table) -> pa.Table:
        by_id: dict[str, Rows] = {}
        for row in batch.to_pylist():
            by_id.setdefault(row["id"], []).append(row)
        groups, partial = [], []
        for rows in by_id.values():
            failed = next((r for r in rows if r.get("item_failed")), None)
            if failed is not None and not failed.get("sent_before"):
                groups.append([failed])  # failed before sending anything: nothing elsewhere to void
            elif failed is None and is_complete(rows):
                groups.append(rows)
            else:
                partial.extend(rows)
        if partial:
            self.merged_rows += len(partial)
            groups.extend(self.merge(partial))
        out = [r for rows in groups for r in finish_id(rows, self.task, self.ctx)]
        for r in out:
            r["run_id"] = self.run_id
        return to_table(out, self.schema)


def finalize_batch(batch: pa.Table, spec: ModelSpec, task: str, run_id: str, top_k: int,
                   merge: Callable[[Rows], list[Rows]], decoder: DecoderSpec | None = None,
                   storage_options: dict | None = None, segments: bool = False) -> pa.Table:
    """Function form for stateless CPU tasks (the merge is the only shared state, and it is sharded; the
    beam decoder and its LM are loaded once per worker process, see decoding.decoder)."""
    return Finalizer(spec, task, run_id, top_k, merge, decoder, storage_options, segments)(batch)
