"""The only module that imports Ray: builds the Ray Data pipeline, runs it, resumes, summarises.

model → spec.ModelSpec (driver, once); manifest (driver) → filter ids already written → from_blocks
  → map_batches(decode_batch)            CPU tasks, memory reserved; short items: one block per task
  → map_batches(Predictor)               fixed ActorPoolStrategy: 1 GPU/actor, or k CPUs = k torch threads
  → map_batches(finalize_batch)          stateless CPU tasks: ids complete in a block finish there; ids
                                         spanning blocks meet in KeyedMerge actors sharded by id hash
  → write_parquet(output)                local path or s3://, min_rows_per_file rows per file
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.datasource import FilenameProvider

from sew_pipeline import storage
from sew_pipeline.config import LabelConfig, PipelineConfig, TranscribeConfig, redacted_dict
from sew_pipeline.errors import redact
from sew_pipeline import spec as model_spec
from sew_pipeline.postprocess import KeyedMerge, finalize_batch
from sew_pipeline.predictors import decode_batch, predictor_class
from sew_pipeline.results import ResultStore
from sew_pipeline.schema import output_schema
from sew_pipeline.summary import SUMMARY_COLUMNS, format_table, summarize

log = logging.getLogger(__name__)

# Fault tolerance. Decode, finalize and write tasks are retried when their worker dies (their outputs are
# deterministic, and output file names are per task, so a redo rewrites rather than duplicates).
# Model and merge actors restart without limit, and a batch whose actor died is resubmitted up to
# ACTOR_TASK_RETRIES times (bounded: a batch that kills its actor every time must fail the run, not
# loop forever). Every row is keyed by (id, item, chunk) and a merge completes an id once. Ids lost
# inside a run (a merge actor's pending rows when it restarts) are redone by a further pass of the same
# run, up to MAX_PASSES; any still missing make the job exit 1.
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
    options = storage.storage_options(cfg.storage_options)
    spec = model_spec.resolve(cfg.model, options)  # before Ray starts: a wrong model is one clear line
    ensure_ray(cfg.ray_address)
    store = ResultStore(cfg.output, options)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    log.info("run %s config %s", run_id, redacted_dict(cfg))

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
    todo, columns = manifest, SUMMARY_COLUMNS + (["level"] if cfg.task == "classification" else [])
    rows = None
    for attempt in range(1, MAX_PASSES + 1):
        if not todo.num_rows:
            break
        if attempt > 1:  # ids lost inside the run (e.g. a merge actor restarted): redo just those
            log.warning("pass %d: %d id(s) were not written; running them again", attempt, todo.num_rows)
        merges = _start_merges(cfg)
        try:
            build_dataset(cfg, todo, run_id, spec, merges).write_parquet(
                _write_path(store), filesystem=store.pyarrow_filesystem(), filename_provider=_RunFilenames(run_id),
                schema=output_schema(cfg.task), min_rows_per_file=cfg.finalize.rows_per_file,
                ray_remote_args={"num_cpus": 0, "max_retries": TASK_RETRIES})
        finally:
            for handle in merges.handles:
                ray.kill(handle)
        rows = store.read(columns, run_id=run_id)  # one read-back per pass: what was written, and the summary
        todo = _without(todo, set(rows.column("id").to_pylist()) if rows is not None else set())
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


# ------------------------------------------------------------------ keyed merge for ids spanning blocks
_MergeActor = ray.remote(KeyedMerge)


class RemoteMerge:
    """What a finalize task calls with the rows of ids it could not finish alone: each row goes to the
    merge actor that owns its id (crc32 of the id: stable across processes), and the ids that became
    complete come back to the caller, which finishes and emits them. Picklable (holds actor handles)."""

    def __init__(self, handles: list):
        self.handles = handles

    def __call__(self, rows: list[dict]) -> list[list[dict]]:
        shards: dict[int, list[dict]] = {}
        for row in rows:
            shards.setdefault(zlib.crc32(row["id"].encode()) % len(self.handles), []).append(row)
        done = ray.get([self.handles[k].add.remote(part) for k, part in shards.items()])
        return [group for groups in done for group in groups]


def _start_merges(cfg: PipelineConfig) -> RemoteMerge:
    # num_cpus=0: they only hold small rows; restart without limit (pending ids are then redone next pass)
    return RemoteMerge([_MergeActor.options(num_cpus=0, max_restarts=-1, max_task_retries=ACTOR_TASK_RETRIES)
                        .remote() for _ in range(cfg.finalize.merge_actors)])


def build_dataset(cfg: PipelineConfig, manifest: pa.Table, run_id: str, spec: model_spec.ModelSpec,
                  merge: RemoteMerge) -> ray.data.Dataset:
    """The lazy Ray Dataset for ``manifest``; nothing runs until it is consumed."""
    resources = _model_resources(cfg)
    if "num_gpus" in resources:  # the actors must use the GPU the pipeline reserved for them
        cfg = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, use_gpu="yes"))
    # from_blocks computes block metadata here; from_arrow runs a remote task per block for it (~2 s of a
    # job's start-up on a small cluster, before any actor starts)
    rows = cfg.decode.batch_rows
    source = ray.data.from_blocks([manifest.slice(i, rows) for i in range(0, manifest.num_rows, rows)])
    # Blocks of about two decode slices (Ray's default is 128 MiB): a long call then streams through the
    # object store a slice at a time instead of queueing there whole (derived datasets inherit this context).
    source.context.target_max_block_size = int(2 * cfg.decode.slice_mb * 2**20)
    top_k = getattr(cfg, "top_k", 1)
    return (
        source
        .map_batches(decode_batch, fn_kwargs={"cfg": cfg, "spec": spec}, batch_size=None,
                     batch_format="pyarrow", num_cpus=cfg.decode.num_cpus,
                     memory=cfg.decode.memory_mb * 2**20, max_retries=TASK_RETRIES)
        .map_batches(predictor_class(cfg.task), fn_constructor_kwargs={"cfg": cfg, "spec": spec},
                     batch_size=cfg.inference.batch_rows, batch_format="pyarrow",
                     compute=ray.data.ActorPoolStrategy(size=cfg.inference.num_actors),
                     max_restarts=-1, max_task_retries=ACTOR_TASK_RETRIES, **resources)
        # Stateless and scaled out: no process sees every row.
        .map_batches(finalize_batch, fn_kwargs={"spec": spec, "task": cfg.task, "run_id": run_id, "top_k": top_k,
                                                "merge": merge},
                     batch_size=None, batch_format="pyarrow", num_cpus=cfg.finalize.num_cpus,
                     max_retries=TASK_RETRIES)
    )
