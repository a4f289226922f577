"""Arrow schemas of the pipeline's output (stable, documented in README.md) and its internal rows.

Output files always carry exactly these columns in this order, so every Parquet part of a
dataset (across resumed runs) shares one schema.
"""
from __future__ import annotations

import pyarrow as pa

WORD = pa.struct([("word", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64())])
LABEL_SCORE = pa.struct([("label", pa.string()), ("score", pa.float32())])

# Shared leading columns: where the result comes from.
_SOURCE = [
    ("id", pa.string()),            # manifest id (join key)
    ("item_id", pa.string()),       # id, or id#c<channel> when channels are split
    ("audio_uri", pa.string()),     # source URI (redacted)
    ("channel", pa.int32()),        # -1 = downmix, else channel index
    ("start_s", pa.float64()),      # segment start in the source file (s)
    ("end_s", pa.float64()),        # segment end in the source file (s)
    ("duration_s", pa.float64()),   # end_s - start_s
]
# Shared trailing columns: provenance, errors, cost.
_TRAILER = [
    ("model", pa.string()),              # model name/URI as configured (redacted)
    ("checkpoint_sha256", pa.string()),  # sha256 of model.safetensors (or .bin)
    ("error_type", pa.string()),         # null on success, else one of errors.ERROR_TYPES
    ("error", pa.string()),              # redacted message, null on success
    ("processing_s", pa.float64()),      # model seconds spent on this row (share of its batches)
    ("frames", pa.int64()),              # model output frames computed for this row, padding included
    ("padded_frames", pa.int64()),       # of which padding (sum / sum frames = padded-frame fraction)
    ("run_id", pa.string()),             # the run that wrote the row
]

NBEST = pa.struct([("text", pa.string()), ("score", pa.float64())])
# segmentation: vad. A turn: consecutive speech segments of one channel (overlap: another channel speaks in it).
TURN = pa.struct([("channel", pa.int32()), ("start_s", pa.float64()), ("end_s", pa.float64()),
                  ("text", pa.string()), ("label", pa.string()), ("overlap", pa.bool_())])
CHANNEL_SPEECH = pa.struct([("channel", pa.int32()), ("speech_s", pa.float64()), ("segments", pa.int32())])
_CONVERSATION = [
    ("speech_s", pa.float64()),               # vad: speech seconds of the row (segment, channel, or whole call)
    ("turns", pa.list_(TURN)),                # conversation rows: every channel's turns in time order
    ("channel_speech", pa.list_(CHANNEL_SPEECH)),  # conversation rows: speech time and segments per channel
]

# level: "item" (segmentation windows: one row per item); with vad a "segment" row per speech segment and one
# "conversation" row per id.
CTC_SCHEMA = pa.schema(_SOURCE + [
    ("level", pa.string()),
    ("segment_index", pa.int32()),       # vad segment rows: index within the channel
    ("text", pa.string()),               # transcript of the configured decoder (null on error)
    ("words", pa.list_(WORD)),           # word timings in the source timeline
    ("decoder", pa.string()),            # "greedy" or "beam" (decoding.method)
    ("text_greedy", pa.string()),        # beam rows: the greedy transcript of the same frames (null for greedy)
    ("word_confidence", pa.list_(pa.float32())),  # beam rows: per word of `words`, see README (null for greedy)
    ("nbest", pa.list_(NBEST)),          # beam rows with decoding.n_best > 1: best first, with total scores
    ("num_chunks", pa.int32()),          # windows stitched into this row (conversation: segments)
] + _CONVERSATION + _TRAILER)

# level: "window" rows, then one "channel" aggregate per item and, for split multi-channel
# audio, one "call" aggregate (channel -1) over all channels. With vad: "segment" rows, "channel" aggregates
# weighted by speech seconds, and one "conversation" row per id (the call aggregate, with its turns).
CLASSIFICATION_SCHEMA = pa.schema(_SOURCE + [
    ("level", pa.string()),
    ("window_index", pa.int32()),        # null for aggregate rows
    ("segment_index", pa.int32()),       # vad segment rows: index within the channel
    ("label", pa.string()),
    ("score", pa.float32()),
    ("top_k", pa.list_(LABEL_SCORE)),
    ("num_windows", pa.int32()),         # windows or segments behind the row
] + _CONVERSATION + _TRAILER)

# Decoded chunk rows between DecodeStage and the model stage (see docs/DESIGN.md).
CHUNK_SCHEMA = pa.schema([
    ("id", pa.string()), ("item_id", pa.string()), ("audio_uri", pa.string()),
    ("channel", pa.int32()), ("item_index", pa.int32()), ("num_items", pa.int32()),
    ("chunk_index", pa.int32()), ("num_chunks", pa.int32()),
    ("start_s", pa.float64()), ("end_s", pa.float64()),
    ("item_start_s", pa.float64()), ("item_duration_s", pa.float64()),
    ("keep_start_frame", pa.int64()), ("keep_end_frame", pa.int64()),
    ("start_frame", pa.int64()),         # window start in 20 ms frames of the item timeline
    ("audio", pa.binary()), ("text", pa.string()), ("split", pa.string()), ("speaker", pa.string()),
    ("error_type", pa.string()), ("error", pa.string()),
    ("item_failed", pa.bool_()),         # decoding failed: the id's only row; chunks already sent are void
    ("sent_before", pa.int32()),         # on an item_failed row: chunks of the id that left before it
])

# Model stage → post-model stage: the chunk row without its audio, plus the model's result.
PREDICTION_SCHEMA = pa.schema(
    [f for f in CHUNK_SCHEMA if f.name != "audio"] + [
        pa.field("payload", pa.binary()),        # CTC: int16 argmax ids of the keep range; cls: float32 probs
        pa.field("logp", pa.binary()),           # CTC beam decoding only: decoding.pack_frames of the keep range
        pa.field("model", pa.string()), pa.field("checkpoint_sha256", pa.string()),
        pa.field("processing_s", pa.float64()), pa.field("frames", pa.int64()),
        pa.field("padded_frames", pa.int64()),
    ])


def output_schema(task: str) -> pa.Schema:
    if task == "ctc":
        return CTC_SCHEMA
    if task == "classification":
        return CLASSIFICATION_SCHEMA
    raise ValueError(f"unknown task {task!r}")


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts, missing keys = null) → a table with exactly ``schema``'s columns."""
    return pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)
