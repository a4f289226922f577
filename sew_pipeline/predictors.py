"""Pipeline stages as plain callables over Arrow batches (no Ray here; ray_pipeline.py wires them).

decode_batch / DecodeStage: manifest rows → chunk rows (audio as float32 bytes); one error row per failed item.
CTCPredictor / ClassifierPredictor: chunk rows → prediction rows (argmax ids of each window's keep range, or
    class probabilities, plus cost and padding counters); error rows pass through untouched.
(postprocess.Finalizer then turns prediction rows into output rows, all rows of one manifest id at once.)
Rows never depend on order: everything is keyed by (id, item_index, chunk_index). Every stage is handed the
driver's spec.ModelSpec: no stage reads the checkpoint's JSON files again.
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
from sew_pipeline.schema import CHUNK_SCHEMA, PREDICTION_SCHEMA, to_table
from sew_pipeline.spec import ModelSpec, resolve

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ decode
def _channels_mode(value: str) -> str | int:
    return int(value) if str(value).lstrip("-").isdigit() else value


class DecodeStage:
    """Manifest batch → chunk batch: load, resample to 16 kHz, pick channels, cut into windows."""

    def __init__(self, cfg: PipelineConfig, spec: ModelSpec | None = None):
        from sew_pipeline import storage
        self.options = storage.storage_options(cfg.storage_options)
        self.cfg, self.spec = cfg, spec or resolve(cfg.model, self.options)
        # A 2 h stereo call is ~0.9 GB of 16 kHz float32 windows: it leaves a decode task in slices.
        self.slice_bytes = int(cfg.decode.slice_mb * 2**20)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict] = []
        for row in batch.to_pylist():
            rows.extend(self.decode_row(row))
        return to_table(rows, CHUNK_SCHEMA)

    def iter_tables(self, batch: pa.Table) -> Iterator[pa.Table]:
        """Chunk tables of about decode.slice_mb of audio each: short items gathered into one table (one block
        per task: fewer, larger blocks cost less per row), a long file sent on in slices as it decodes, so a
        task never holds the whole of it. An item's last chunk goes out only once its file has decoded to the
        end: an item that fails mid-file can never complete from its chunks, and its error row (item_failed,
        with sent_before = how many chunks left before it) voids the chunks already sent."""
        ready: list[dict] = []  # rows of finished items (and of full slices) not yet sent
        size = 0
        for row in batch.to_pylist():
            group: list[dict] = []  # this item's rows still held back
            sent = 0
            for r in self.iter_rows(row):
                if r.get("item_failed"):
                    group = []  # held-back chunks of a failed item never leave
                    r["sent_before"] = sent  # > 0: chunks already out must be voided by the merge
                elif group and size >= self.slice_bytes:
                    yield to_table(ready + group, CHUNK_SCHEMA)
                    sent += len(group)
                    ready, group, size = [], [], 0
                group.append(r)
                size += len(r.get("audio") or b"")
            ready.extend(group)
            if size >= self.slice_bytes:
                yield to_table(ready, CHUNK_SCHEMA)
                ready, size = [], 0
        if ready:
            yield to_table(ready, CHUNK_SCHEMA)

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
        spec, cfg = self.spec, self.cfg
        common = {"storage_options": self.options, "sample_rate": spec.sample_rate,
                  "channels": _channels_mode(cfg.decode.channels), "max_duration_s": cfg.decode.max_duration_s,
                  "stride": spec.total_stride, "align": spec.window_align, "frames_for": spec.frames}
        if cfg.segmentation.method == "vad":
            chunks = audio.iter_segments(row, params=cfg.segmentation.params(), **common)
        else:
            chunks = audio.iter_chunks(row, window_s=cfg.window_s, overlap_s=cfg.overlap_s, **common)
        try:
            for chunk in chunks:
                yield self._chunk_row(base, chunk, spec)
        except ItemError as exc:
            yield error_row(base, exc.error_type, exc.message)
        except Exception as exc:  # noqa: BLE001 - one bad item must not fail the batch
            yield error_row(base, "internal", redact(f"internal: {base['audio_uri']}: decode failed: "
                                                     f"{type(exc).__name__}: {exc}"))

    @staticmethod
    def _chunk_row(base: dict, chunk: Any, spec: ModelSpec) -> dict:
        w, start, chans, sr = chunk.window, base["item_start_s"], chunk.channels, spec.sample_rate
        split = len(chans) > 1 or chans[0] != -1
        return {**base, "item_id": f"{base['id']}#c{chunk.channel}" if split else base["id"],
                "channel": int(chunk.channel), "item_index": chans.index(chunk.channel), "num_items": len(chans),
                "chunk_index": w.index, "num_chunks": chunk.num_windows, "start_s": start + w.start / sr,
                "end_s": start + w.end / sr, "item_duration_s": chunk.item_num_samples / sr,
                "keep_start_frame": w.keep_start_frame, "keep_end_frame": w.keep_end_frame,
                "start_frame": w.start // spec.total_stride,
                # num_chunks 0: a channel without speech (segmentation vad); the row only says so
                "audio": np.ascontiguousarray(chunk.audio, dtype="<f4").tobytes() if chunk.num_windows != 0 else None}


def error_row(base: dict, error_type: str, message: str) -> dict:
    """The single output row of an item whose decoding failed; it supersedes any chunks already sent."""
    return {**base, "item_id": base["id"], "channel": -1, "item_index": 0, "num_items": 1,
            "chunk_index": 0, "num_chunks": 1, "item_duration_s": None, "start_s": base["item_start_s"],
            "end_s": None, "error_type": error_type, "error": message, "item_failed": True}


def decode_batch(batch: pa.Table, cfg: PipelineConfig, spec: ModelSpec | None = None) -> Iterator[pa.Table]:
    """Function form of DecodeStage for stateless CPU tasks (see DecodeStage.iter_tables)."""
    yield from DecodeStage(cfg, spec).iter_tables(batch)


# ------------------------------------------------------------------ model stage
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


def _waves(column: pa.ChunkedArray) -> list[np.ndarray | None]:
    """float32 views of a binary column's values: no copy of the audio (to_pylist would copy every blob)."""
    out: list[np.ndarray | None] = []
    for chunk in column.chunks:
        for value in chunk:
            out.append(np.frombuffer(value.as_buffer(), dtype="<f4") if value.is_valid else None)
    return out


class _Predictor:
    """Shared model-stage logic: load once, group by length, run forward passes, time them."""

    model_cls_name = ""

    def __init__(self, cfg: PipelineConfig, spec: ModelSpec | None = None, num_threads: int | None = None):
        import torch
        from sew_pipeline import device, models, storage
        options = storage.storage_options(cfg.storage_options)
        self.cfg, self.spec = cfg, spec or resolve(cfg.model, options)
        inf = cfg.inference
        self.device = device.pick_device(inf.use_gpu)  # DeviceError: a GPU asked for or reserved, none usable
        gpu = self.device == "cuda"
        if gpu:
            device.set_tf32(inf.tf32)
        else:  # actor CPUs == torch threads, so actors don't oversubscribe cores
            torch.set_num_threads(max(1, int(num_threads or inf.cpus_per_actor)))
        self.precision, why = device.resolve_precision(inf.gpu_precision if gpu else inf.precision, self.device)
        if why:
            log.warning("%s", why)
        self.max_batch_s = inf.gpu_max_batch_audio_s if gpu else inf.max_batch_audio_s
        self.model = getattr(models, self.model_cls_name).from_pretrained(self.spec.uri, storage_options=options)
        self.model.eval().to(self.device)
        self.sha256 = getattr(self.model, "checkpoint_sha256", None)
        self.min_samples = getattr(self.model.config, "min_input_samples", 400)
        self.feature_extractor = models.FeatureExtractor.from_pretrained(self.spec.uri, storage_options=options)
        self.model = self._prepared(self.model, inf.compile)

    def _prepared(self, model: Any, compile: bool) -> Any:  # noqa: A002
        """The fast path; compiled and warmed up here, so a compiler that cannot run (no Triton, no C compiler)
        falls back to eager once, in __init__, instead of failing every batch."""
        fast = fast_model(model, self.precision, self.device, compile)
        if compile:
            try:
                self._forward(fast, [np.zeros(self.spec.sample_rate, np.float32)] * 2)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: run eager
                log.warning("torch.compile failed in warm-up (%s: %s); running eager", type(exc).__name__,
                            str(exc).splitlines()[0] if str(exc) else "")
                fast = fast_model(model, self.precision, self.device, False)
        return fast

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Chunk rows → prediction rows, column-wise: the audio column is read in place and dropped."""
        n = batch.num_rows
        errors, messages = batch.column("error_type").to_pylist(), batch.column("error").to_pylist()
        waves = _waves(batch.column("audio"))
        out = {"payload": [None] * n, "logp": [None] * n, "processing_s": [0.0] * n, "frames": [0] * n,
               "padded_frames": [0] * n}
        todo = []
        no_speech = batch.column("num_chunks").to_pylist()
        for i in range(n):
            if errors[i] is not None or no_speech[i] == 0:
                continue
            if waves[i] is None or not len(waves[i]):
                errors[i] = "empty"
                messages[i] = f"empty: {batch.column('audio_uri')[i].as_py()}: no samples in window"
            else:
                todo.append(i)
        self.begin(batch)
        from sew_pipeline.models.batching import plan_length_groups
        for group in plan_length_groups([len(waves[i]) for i in todo],
                                        max_batch_samples=int(self.max_batch_s * self.spec.sample_rate),
                                        max_padding_fraction=self.cfg.inference.max_padding_fraction):
            self._run_or_split([todo[g] for g in group], waves, out, errors, messages)
        table = batch.drop_columns(["audio", "error_type", "error"])
        columns = {"error_type": errors, "error": messages, "model": [self.spec.name] * n,
                   "checkpoint_sha256": [self.sha256] * n, **out}
        for name, values in columns.items():
            f = PREDICTION_SCHEMA.field(name)
            table = table.append_column(f, pa.array(values, f.type))
        return table.select(PREDICTION_SCHEMA.names)

    def _run_or_split(self, idx: list[int], waves: list, out: dict, errors: list, messages: list) -> None:
        """One forward pass over ``idx``; out of memory: the two halves again, down to one item, whose failure is
        then that item's error row alone. A broken device ends the process (see device.end_process)."""
        from sew_pipeline import device
        try:
            self._run_group(idx, [waves[i] for i in idx], out)
            return
        except Exception as exc:  # noqa: BLE001 - sorted below: retry, end the process, or typed error rows
            kind = device.failure_kind(exc)
            if kind == "device":
                device.end_process(exc)
            if kind != "oom" or len(idx) == 1:
                log.exception("inference failed on %d item(s)", len(idx))
                for i in idx:
                    errors[i] = "inference"
                    messages[i] = redact(f"inference: {type(exc).__name__}: {exc}")
                return
        # Out of memory: retried outside the except block, where the failed pass's tensors (held by its traceback)
        # are already freed.
        device.release_memory(self.device)
        half = len(idx) // 2
        self._run_or_split(idx[:half], waves, out, errors, messages)
        self._run_or_split(idx[half:], waves, out, errors, messages)

    def _forward(self, model: Any, waves: list[np.ndarray]) -> tuple[Any, float, int]:
        """(the group's payload results, forward seconds, padded width in samples). The mask is built on the device from
        the lengths (no [B, T] int64 copy), and is None when nothing is padded; host tensors are pinned for an
        asynchronous copy to a GPU. Clips shorter than the model minimum are padded with silence that counts as
        audio, so no item has a fully masked attention row."""
        import torch
        values = self.feature_extractor(waves, return_attention_mask=False)["input_values"]
        lengths = [max(len(w), self.min_samples) for w in waves]
        width = max(lengths)
        if values.shape[1] < width:
            values = torch.nn.functional.pad(values, (0, width - values.shape[1]))
        gpu = self.device == "cuda"
        values = (values.pin_memory() if gpu else values).to(self.device, non_blocking=gpu)
        mask = None
        if min(lengths) < width:
            lens = torch.tensor(lengths, dtype=torch.long)
            lens = (lens.pin_memory() if gpu else lens).to(self.device, non_blocking=gpu)
            mask = (torch.arange(width, device=self.device)[None, :] < lens[:, None]).long()
        t0 = time.perf_counter()
        with torch.inference_mode():
            results = self.payloads(model(values, attention_mask=mask).logits)  # one device→host copy per group
        return results, time.perf_counter() - t0, width

    def _run_group(self, idx: list[int], waves: list[np.ndarray], out: dict) -> None:
        results, seconds, width = self._forward(self.model, waves)
        frames_total = int(self.model.output_lengths(width))
        for j, i in enumerate(idx):
            valid = int(self.model.output_lengths(max(len(waves[j]), self.min_samples)))
            out["processing_s"][i] = seconds / len(idx)
            out["frames"][i] = frames_total
            out["padded_frames"][i] = max(frames_total - valid, 0)
            for column, value in self.payload(results[j], valid, i).items():
                out[column][i] = value

    def payloads(self, logits: Any) -> np.ndarray:
        """The group's logits reduced on the device and copied to the host once."""
        raise NotImplementedError

    def begin(self, batch: pa.Table) -> None:
        """Per-batch columns the payload needs, read once."""

    def payload(self, result: Any, valid_frames: int, i: int) -> dict[str, bytes]:
        """Output columns (payload, and logp for beam decoding) of item ``i``."""
        raise NotImplementedError


class CTCPredictor(_Predictor):
    """Per chunk: argmax ids of the frames this chunk keeps (its most central part), as int16 bytes, so only
    the kept frames ever leave the model stage; for beam decoding also their candidate log-probs
    (decoding.pack_frames: only the tokens the search reads)."""

    model_cls_name = "SEWForCTC"

    def __init__(self, cfg: PipelineConfig, spec: ModelSpec | None = None, num_threads: int | None = None):
        super().__init__(cfg, spec, num_threads)
        decoding = getattr(cfg, "decoding", None)
        self.min_logp = decoding.token_min_logp if decoding is not None and decoding.method == "beam" else None

    def payloads(self, logits: Any) -> list:
        import torch
        ids = logits.argmax(dim=-1).to(torch.int16).cpu().numpy()
        if self.min_logp is None:
            return list(ids)
        logp = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
        return list(zip(ids, logp))

    def begin(self, batch: pa.Table) -> None:
        self.keep = [batch.column(c).to_numpy(zero_copy_only=False)
                     for c in ("start_frame", "keep_start_frame", "keep_end_frame")]

    def payload(self, result: Any, valid_frames: int, i: int) -> dict[str, bytes]:
        first, keep_start, keep_end = (int(c[i]) for c in self.keep)
        lo, hi = max(keep_start - first, 0), min(keep_end - first, valid_frames)
        if self.min_logp is None:
            return {"payload": result[lo:max(hi, lo)].astype("<i2").tobytes()}
        from sew_pipeline.decoding import pack_frames
        ids, logp = result
        return {"payload": ids[lo:max(hi, lo)].astype("<i2").tobytes(),
                "logp": pack_frames(logp[lo:max(hi, lo)], self.min_logp)}


class ClassifierPredictor(_Predictor):
    """Per window: class probabilities as float32 bytes."""

    model_cls_name = "SEWForSequenceClassification"

    def payloads(self, logits: Any) -> np.ndarray:
        return logits.float().softmax(dim=-1).cpu().numpy()

    def payload(self, result: np.ndarray, valid_frames: int, i: int) -> dict[str, bytes]:
        return {"payload": result.astype("<f4").tobytes()}


# task -> model-stage class (postprocess.FINISH is the post-model half of this table)
PREDICTORS: dict[str, type[_Predictor]] = {"ctc": CTCPredictor, "classification": ClassifierPredictor}


def predictor_class(task: str) -> type[_Predictor]:
    return PREDICTORS[task]
