"""The only module that imports Ray: builds the Ray Data pipeline, runs it, resumes, summarises.

manifest (driver) → filter ids already written → from_arrow
  → map_batches(decode_batch)            CPU tasks, memory reserved, small batches
  → map_batches(Predictor)               fixed ActorPoolStrategy: 1 GPU/actor, or k CPUs = k torch threads
  → map_batches(ItemAssembler)           one small stateful actor: stitches chunks, aggregates windows
  → write_parquet(output)                local path or s3:// (fsspec filesystem with the endpoint)
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.datasource import FilenameProvider

from sew_pipeline import storage
from sew_pipeline.config import LabelConfig, PipelineConfig, TranscribeConfig, redacted_dict
from sew_pipeline.errors import redact
from sew_pipeline.assembly import ItemAssembler
from sew_pipeline.predictors import decode_batch, predictor_class
from sew_pipeline.results import ResultStore
from sew_pipeline.schema import output_schema
from sew_pipeline.summary import SUMMARY_COLUMNS, format_table, summarize

log = logging.getLogger(__name__)

# Fault tolerance. Decode and write tasks are retried when their worker dies (their outputs are
# deterministic, and output file names are per task, so a redo rewrites rather than duplicates).
# Model/assembler actors restart without limit, and a batch whose actor died is resubmitted up to
# ACTOR_TASK_RETRIES times (bounded: a batch that kills its actor every time must fail the run, not
# loop forever). An actor restart loses nothing: every row is keyed by (id, item, chunk) and the
# assembler emits an id once. Ids lost to an assembler restart (its buffered rows) are redone by a
# further pass of the same run, up to MAX_PASSES; any still missing make the job exit 1.
TASK_RETRIES = 3
ACTOR_TASK_RETRIES = 3
MAX_PASSES = 2


@dataclass
class JobResult:
    output: str
    run_id: str
    summary: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        return format_table(self.summary)


class _RunFilenames(FilenameProvider):
    """part-<run_id>-<write uuid>-<task>.parquet: a new file set per run, never overwriting."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"part-{self.run_id}-{write_uuid}-{task_index:06d}-{{i}}.parquet"


def transcribe(cfg: TranscribeConfig) -> JobResult:
    """CTC transcription of ``cfg.manifest`` into ``cfg.output`` (one row per item)."""
    return run(cfg)


def label(cfg: LabelConfig) -> JobResult:
    """Windowed classification (per-window rows + per-channel/per-call aggregates)."""
    return run(cfg)


def ensure_ray(address: str | None = None) -> None:
    """Join ``address`` / $RAY_ADDRESS (e.g. under ``ray job submit``), else start a local Ray."""
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)


def _absolute(cfg: PipelineConfig) -> PipelineConfig:
    """Local paths made absolute on the driver: Ray workers may run in another directory."""
    def fix(uri: str) -> str:
        return uri if storage.is_remote(uri) or not uri else os.path.abspath(uri)
    model = fix(cfg.model) if os.path.exists(cfg.model) else cfg.model  # else a shipped name
    return dataclasses.replace(cfg, manifest=fix(cfg.manifest), output=fix(cfg.output), model=model,
                               allowed_prefixes=[fix(p) for p in cfg.allowed_prefixes])


def run(cfg: PipelineConfig) -> JobResult:
    t0 = time.perf_counter()
    cfg = _absolute(cfg)
    ensure_ray(cfg.ray_address)
    options = storage.storage_options(cfg.storage_options)
    store = ResultStore(cfg.output, options)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    log.info("run %s config %s", run_id, redacted_dict(cfg))

    _check_model(cfg, options)
    manifest = _load_manifest(cfg, options)
    skipped = 0
    if not cfg.resume and store.files():
        # appending a second full run would duplicate every id
        raise ValueError(f"output {redact(cfg.output)} already holds results and resume is false: "
                         "use a new output location, or resume: true to complete it")
    if cfg.resume:
        store.quarantine_incomplete()
        remaining = _without(manifest, store.completed_ids())
        skipped, manifest = manifest.num_rows - remaining.num_rows, remaining
    todo = manifest
    for attempt in range(1, MAX_PASSES + 1):
        if not todo.num_rows:
            break
        if attempt > 1:  # ids lost inside the run (e.g. the assembler actor restarted): redo just those
            log.warning("pass %d: %d id(s) were not written; running them again", attempt, todo.num_rows)
        build_dataset(cfg, todo, run_id).write_parquet(
            _write_path(store), filesystem=store.pyarrow_filesystem(), filename_provider=_RunFilenames(run_id),
            schema=output_schema(cfg.task), ray_remote_args={"num_cpus": 0, "max_retries": TASK_RETRIES})
        written = store.read(["id"], run_id=run_id)
        todo = _without(todo, set(written.column("id").to_pylist()) if written is not None else set())
    columns = SUMMARY_COLUMNS + (["level"] if cfg.task == "classification" else [])
    rows = store.read(columns, run_id=run_id)
    summary = summarize(rows, cfg.task, time.perf_counter() - t0, manifest.num_rows + skipped, skipped,
                        expected=manifest.num_rows)
    return JobResult(output=redact(cfg.output), run_id=run_id, summary=summary)


def _without(manifest: pa.Table, ids: set[str]) -> pa.Table:
    """Manifest rows whose id is not in ``ids``."""
    if not ids:
        return manifest
    keep = pc.invert(pc.is_in(manifest.column("id"), value_set=pa.array(sorted(ids), pa.string())))
    return manifest.filter(keep)


def _write_path(store: ResultStore) -> str:
    if store.is_local:
        store.fs.makedirs(store.root, exist_ok=True)
    return store.root


def _check_model(cfg: PipelineConfig, options: dict) -> None:
    """Fail on the driver, before any actor starts, when the model cannot be found."""
    from sew_pipeline.models import registry
    from sew_pipeline.predictors import model_config
    if not model_config(cfg, options):
        raise ValueError(f"model {redact(cfg.model)!r}: no config.json at {redact(registry.resolve_model(cfg.model))} "
                         f"(shipped models: {', '.join(registry.shipped_models()) or 'none installed'})")


def _load_manifest(cfg: PipelineConfig, options: dict) -> pa.Table:
    from sew_pipeline import manifests
    table = manifests.read_manifest(cfg.manifest, storage_options=options)
    # Duplicate ids would break the one-row-per-id contract: keep each id's first row.
    ids = table.column("id").to_pylist()
    first: dict[str, int] = {}
    for i, id_ in enumerate(ids):
        first.setdefault(id_, i)
    if len(first) < len(ids):
        log.warning("manifest has %d duplicate ids; keeping the first row of each", len(ids) - len(first))
        table = table.take(sorted(first.values()))
    if cfg.limit is not None:
        table = table.slice(0, cfg.limit)
    return table


def _model_resources(cfg: PipelineConfig) -> dict[str, Any]:
    inf = cfg.inference
    has_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    if inf.use_gpu == "yes" or (inf.use_gpu == "auto" and has_gpu):
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": inf.cpus_per_actor}


def build_dataset(cfg: PipelineConfig, manifest: pa.Table, run_id: str) -> ray.data.Dataset:
    """The lazy Ray Dataset for ``manifest``; nothing runs until it is consumed."""
    resources = _model_resources(cfg)
    if "num_gpus" in resources:
        cfg.inference.use_gpu = "yes"
    predictor = predictor_class(cfg.task)
    # from_blocks computes block metadata here; from_arrow runs a remote task per block for it (~2 s of a
    # job's start-up on a small cluster, before any actor starts)
    rows = cfg.decode.batch_rows
    source = ray.data.from_blocks([manifest.slice(i, rows) for i in range(0, manifest.num_rows, rows)])
    # Blocks of about two decode slices (Ray's default is 128 MiB): a long call then streams through the
    # object store a slice at a time instead of queueing there whole (derived datasets inherit this context).
    source.context.target_max_block_size = int(2 * cfg.decode.slice_mb * 2**20)
    return (
        source
        .map_batches(decode_batch, fn_kwargs={"cfg": cfg}, batch_size=cfg.decode.batch_rows,
                     batch_format="pyarrow", num_cpus=cfg.decode.num_cpus,
                     memory=cfg.decode.memory_mb * 2**20, max_retries=TASK_RETRIES)
        .map_batches(predictor, fn_constructor_kwargs={"cfg": cfg}, batch_size=cfg.inference.batch_rows,
                     batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=cfg.inference.num_actors),
                     max_restarts=-1, max_task_retries=ACTOR_TASK_RETRIES, **resources)
        # All rows of an id must meet in one place: a single, nearly free actor (rows are small).
        .map_batches(ItemAssembler, fn_constructor_kwargs={"cfg": cfg, "run_id": run_id}, batch_size=None,
                     batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0,
                     max_restarts=-1, max_task_retries=ACTOR_TASK_RETRIES)
    )
