"""Pipeline stages as plain callables over Arrow batches (no Ray here; ray_pipeline.py wires them).

decode_batch / DecodeStage: manifest rows → chunk rows (audio as float32 bytes); one error row per failed item.
CTCPredictor / ClassifierPredictor: chunk rows → prediction rows (argmax ids or class probabilities for
    each chunk, cost and padding counters); error rows pass through untouched.
(assembly.ItemAssembler then turns prediction rows into output rows, all rows of one manifest id at once.)
Rows never depend on order: everything is keyed by (id, item_index, chunk_index).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from sew_pipeline.config import PipelineConfig
from sew_pipeline.errors import ItemError, redact
from sew_pipeline.schema import CHUNK_SCHEMA, to_table

log = logging.getLogger(__name__)
SAMPLE_RATE = 16000
STRIDE = 320  # samples per CTC frame (20 ms)

PREDICTION_SCHEMA = pa.schema(
    [f for f in CHUNK_SCHEMA if f.name != "audio"] + [
        pa.field("payload", pa.binary()),        # CTC: int16 argmax ids of the keep range; cls: float32 probs
        pa.field("model", pa.string()), pa.field("checkpoint_sha256", pa.string()),
        pa.field("processing_s", pa.float64()), pa.field("frames", pa.int64()),
        pa.field("padded_frames", pa.int64()),
    ])


# ------------------------------------------------------------------ decode
def _channels_mode(value: str) -> str | int:
    return int(value) if str(value).lstrip("-").isdigit() else value


class DecodeStage:
    """Manifest batch → chunk batch: load, resample to 16 kHz, pick channels, cut into windows."""

    def __init__(self, cfg: PipelineConfig):
        from sew_pipeline import storage
        self.cfg = cfg
        self.options = storage.storage_options(cfg.storage_options)
        # A 2 h stereo call is ~0.9 GB of 16 kHz float32 windows: it leaves a decode task in slices.
        self.slice_bytes = int(cfg.decode.slice_mb * 2**20)
        conv = model_config(cfg, self.options)
        kernels, strides = conv.get("conv_kernel"), conv.get("conv_stride")
        # Window starts on a whole squeezed frame, so pooling phase matches the unchunked run.
        self.align = STRIDE * int(conv.get("squeeze_factor", 2))
        self.frames_for = None
        if kernels and strides:  # window keep ranges must use the model's own frame count
            from sew_pipeline.chunking import conv_frames
            self.frames_for = lambda n: conv_frames(n, kernels, strides)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict] = []
        for row in batch.to_pylist():
            rows.extend(self.decode_row(row))
        return to_table(rows, CHUNK_SCHEMA)

    def iter_tables(self, batch: pa.Table) -> Iterator[pa.Table]:
        """Chunk tables of about decode.slice_mb of audio each, so a decode task holds a bounded slice of a
        long file, never the whole of it. An item's last table goes out only once its file has decoded to
        the end: an item that fails mid-file can never complete from its chunks, and its error row
        (item_failed) tells the assembler to discard the chunks already sent."""
        for row in batch.to_pylist():
            group: list[dict] = []
            size = 0
            for r in self.iter_rows(row):
                if r.get("item_failed"):
                    group = []  # held-back chunks of a failed item never leave
                elif size >= self.slice_bytes:
                    yield to_table(group, CHUNK_SCHEMA)
                    group, size = [], 0
                group.append(r)
                size += len(r.get("audio") or b"")
            if group:
                yield to_table(group, CHUNK_SCHEMA)

    def decode_row(self, row: dict) -> list[dict]:
        """All chunk rows of one manifest row, or a single error row (never a partial item)."""
        rows = list(self.iter_rows(row))
        return rows[-1:] if rows and rows[-1].get("item_failed") else rows

    def iter_rows(self, row: dict) -> Iterator[dict]:
        """Chunk rows of one manifest row as they are decoded; on failure, an error row (item_failed)
        after whatever chunks came before it. Memory: one window plus one decode block."""
        from sew_pipeline import audio, storage
        base = {"id": row["id"], "audio_uri": redact(str(row.get("audio_uri"))), "text": row.get("text"),
                "split": row.get("split"), "speaker": row.get("speaker"),
                "item_start_s": float(row.get("offset_s") or 0.0)}
        if not storage.allowed(row.get("audio_uri"), self.cfg.allowed_prefixes):
            yield error_row(base, "not_allowed", f"not_allowed: {base['audio_uri']}: "
                                                 "outside the configured allowed_prefixes")
            return
        try:
            for chunk in audio.iter_chunks(row, window_s=self.cfg.window_s, overlap_s=self.cfg.overlap_s,
                                           storage_options=self.options, sample_rate=SAMPLE_RATE,
                                           channels=_channels_mode(self.cfg.decode.channels),
                                           max_duration_s=self.cfg.decode.max_duration_s, stride=STRIDE,
                                           align=self.align, frames_for=self.frames_for):
                yield self._chunk_row(base, chunk)
        except ItemError as exc:
            yield error_row(base, exc.error_type, exc.message)
        except Exception as exc:  # noqa: BLE001 - one bad item must not fail the batch
            yield error_row(base, "internal", redact(f"internal: {base['audio_uri']}: decode failed: "
                                                     f"{type(exc).__name__}: {exc}"))

    @staticmethod
    def _chunk_row(base: dict, chunk: Any) -> dict:
        w, start, chans = chunk.window, base["item_start_s"], chunk.channels
        split = len(chans) > 1 or chans[0] != -1
        return {**base, "item_id": f"{base['id']}#c{chunk.channel}" if split else base["id"],
                "channel": int(chunk.channel), "item_index": chans.index(chunk.channel), "num_items": len(chans),
                "chunk_index": w.index, "num_chunks": chunk.num_windows, "start_s": start + w.start / SAMPLE_RATE,
                "end_s": start + w.end / SAMPLE_RATE, "item_duration_s": chunk.item_num_samples / SAMPLE_RATE,
                "keep_start_frame": w.keep_start_frame, "keep_end_frame": w.keep_end_frame,
                "start_frame": w.start // STRIDE,
                "audio": np.ascontiguousarray(chunk.audio, dtype="<f4").tobytes()}


def model_config(cfg: PipelineConfig, options: dict) -> dict:
    """The checkpoint's config.json as a dict ({} when absent)."""
    import json
    import fsspec
    from sew_pipeline.models import registry
    uri = registry.resolve_model(cfg.model).rstrip("/") + "/config.json"
    try:
        with fsspec.open(uri, "rb", **(options if "://" in uri else {})) as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return {}


def error_row(base: dict, error_type: str, message: str) -> dict:
    """The single output row of an item whose decoding failed; it supersedes any chunks already sent."""
    return {**base, "item_id": base["id"], "channel": -1, "item_index": 0, "num_items": 1,
            "chunk_index": 0, "num_chunks": 1, "item_duration_s": None, "start_s": base["item_start_s"],
            "end_s": None, "error_type": error_type, "error": message, "item_failed": True}


def decode_batch(batch: pa.Table, cfg: PipelineConfig) -> Iterator[pa.Table]:
    """Function form of DecodeStage for stateless CPU tasks: yields one table per manifest row
    (Ray Data stores each as it is yielded, so a task never holds a whole batch of long files)."""
    yield from DecodeStage(cfg).iter_tables(batch)


# ------------------------------------------------------------------ model stage
def _pick_device(use_gpu: str) -> str:
    import torch
    if use_gpu == "no" or not torch.cuda.is_available():
        return "cpu"
    return "cuda"


def fast_model(model: Any, precision: str, device: str, compile: bool = False) -> Any:  # noqa: A002
    """The models.fast inference copy (same call contract), or the model itself for "reference"."""
    if precision == "reference":
        return model
    from sew_pipeline.models.fast import prepare_for_inference
    try:
        return prepare_for_inference(model, precision, compile=compile, device=device)
    except ValueError as exc:  # e.g. a classifier layout the fast path does not cover
        log.warning("fast inference path unavailable (%s); using the reference model", exc)
        return model


class _Predictor:
    """Shared model-stage logic: load once, group by length, run forward passes, time them."""

    model_cls_name = ""

    def __init__(self, cfg: PipelineConfig, num_threads: int | None = None):
        import torch
        from sew_pipeline import models
        from sew_pipeline.models import registry
        from sew_pipeline import storage
        self.cfg = cfg
        self.device = _pick_device(cfg.inference.use_gpu)
        if self.device == "cpu":  # actor CPUs == torch threads, so actors don't oversubscribe cores
            torch.set_num_threads(max(1, int(num_threads or cfg.inference.cpus_per_actor)))
        options = storage.storage_options(cfg.storage_options)
        uri = registry.resolve_model(cfg.model)
        self.model = getattr(models, self.model_cls_name).from_pretrained(uri, storage_options=options)
        self.model.eval().to(self.device)
        self.sha256 = getattr(self.model, "checkpoint_sha256", None)
        self.model = fast_model(self.model, cfg.inference.precision, self.device, cfg.inference.compile)
        self.feature_extractor = models.FeatureExtractor.from_pretrained(uri, storage_options=options)
        self.model_name = redact(cfg.model)
        self.load_extra(uri, options)

    def load_extra(self, uri: str, options: dict) -> None:
        pass

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        audio_rows = [i for i, r in enumerate(rows) if r.get("error_type") is None and r.get("audio")]
        for r in rows:
            r.update(model=self.model_name, checkpoint_sha256=self.sha256, processing_s=0.0,
                     frames=0, padded_frames=0)
            if r.get("error_type") is None and not r.get("audio"):
                r.update(error_type="empty", error=f"empty: {r.get('audio_uri')}: no samples in window")
        waves = {i: np.frombuffer(rows[i].pop("audio"), dtype="<f4") for i in audio_rows}
        lengths = [len(waves[i]) for i in audio_rows]
        inf = self.cfg.inference
        from sew_pipeline.models.batching import plan_length_groups
        for group in plan_length_groups(lengths, max_batch_samples=int(inf.max_batch_audio_s * SAMPLE_RATE),
                                        max_padding_fraction=inf.max_padding_fraction):
            idx = [audio_rows[g] for g in group]
            try:
                self._run_group(idx, [waves[i] for i in idx], rows)
            except Exception as exc:  # noqa: BLE001 - the batch's items become typed error rows
                log.exception("inference failed on %d items", len(idx))
                for i in idx:
                    rows[i].update(error_type="inference", error=redact(f"inference: {type(exc).__name__}: {exc}"))
        for r in rows:
            r.pop("audio", None)
        return to_table(rows, PREDICTION_SCHEMA)

    def _run_group(self, idx: list[int], waves: list[np.ndarray], rows: list[dict]) -> None:
        import torch
        # Always mask: with it the fast path computes each item exactly as if it were alone (padding-invariant),
        # also for checkpoints like sew-tiny whose preprocessor says return_attention_mask=false.
        feats = self.feature_extractor(waves, return_attention_mask=True)
        values, mask = feats["input_values"], feats["attention_mask"]
        short = getattr(self.model.config, "min_input_samples", 400) - values.shape[1]
        if short > 0:  # clips shorter than the model minimum: pad (masked) instead of failing
            values = torch.nn.functional.pad(values, (0, short))
            mask = torch.nn.functional.pad(mask, (0, short))
        values = values.to(self.device)
        mask = mask.to(self.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            logits = self.model(values, attention_mask=mask).logits
        if self.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        frames_total = int(self.model.output_lengths(int(values.shape[1])))
        for j, i in enumerate(idx):
            valid = int(self.model.output_lengths(len(waves[j])))
            rows[i].update(processing_s=seconds / len(idx), frames=frames_total,
                           padded_frames=max(frames_total - valid, 0))
            rows[i]["payload"] = self.payload(logits[j], valid, rows[i])

    def payload(self, logits: Any, valid_frames: int, row: dict) -> bytes:
        raise NotImplementedError


class CTCPredictor(_Predictor):
    """Per chunk: argmax ids of the frames this chunk keeps (its most central part), as int16 bytes."""

    model_cls_name = "SEWForCTC"

    def payload(self, logits: Any, valid_frames: int, row: dict) -> bytes:
        lo = max(int(row["keep_start_frame"]) - int(row["start_frame"]), 0)
        hi = min(int(row["keep_end_frame"]) - int(row["start_frame"]), valid_frames)
        ids = logits[lo:max(hi, lo)].argmax(dim=-1).to("cpu").numpy()
        return ids.astype("<i2").tobytes()


class ClassifierPredictor(_Predictor):
    """Per window: class probabilities as float32 bytes."""

    model_cls_name = "SEWForSequenceClassification"

    def payload(self, logits: Any, valid_frames: int, row: dict) -> bytes:
        probs = logits.float().softmax(dim=-1).to("cpu").numpy()
        return probs.astype("<f4").tobytes()


def predictor_class(task: str) -> type[_Predictor]:
    return {"ctc": CTCPredictor, "classification": ClassifierPredictor}[task]
