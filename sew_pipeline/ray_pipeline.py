"""The only module that imports Ray: builds the Ray Data pipeline, runs it, resumes, summarises.

model → spec.ModelSpec (driver, once); manifest (driver) → filter ids already written → from_blocks
  → map_batches(decode_batch)            CPU tasks, memory reserved; short items: one block per task
  → map_batches(Predictor)               fixed ActorPoolStrategy: 1 GPU/actor, or k CPUs = k torch threads
  → map_batches(finalize_batch)          stateless CPU tasks: ids complete in a block finish there; ids
                                         spanning blocks meet in KeyedMerge actors sharded by id hash
  → write_parquet(output)                local path or s3://, min_rows_per_file rows per file
"""
from __future__ import annotations

import _thread
import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.datasource import FilenameProvider

from sew_pipeline import decoding, plan, storage
from sew_pipeline.config import LabelConfig, PipelineConfig, TranscribeConfig, redacted_dict
from sew_pipeline.errors import UserError, redact
from sew_pipeline import spec as model_spec
from sew_pipeline.postprocess import KeyedMerge, finalize_batch
from sew_pipeline.predictors import decode_batch, predictor_class
from sew_pipeline.results import ResultStore
from sew_pipeline.schema import output_schema
from sew_pipeline.summary import SUMMARY_COLUMNS, format_table, summarize

log = logging.getLogger(__name__)

# Fault tolerance. Decode and finalize tasks and model actors keep Ray Data's own retry defaults (tasks
# retried and actors restarted, without limit, when their process dies: Ray deprecates setting these per
# stage); their outputs are deterministic and keyed by (id, item, chunk), and output file names are per
# write task, so a redo rewrites rather than duplicates. Write tasks and merge actors (ours) retry a
# bounded number of times. Ids lost inside a run (a merge actor's pending rows when it restarts) are
# redone by a further pass of the same run, as are the ids of a pass that a lost node aborted, up to
# `max_passes`; any still missing make the job exit 1.
TASK_RETRIES = 3
ACTOR_TASK_RETRIES = 3
ABORT_GRACE_S = 5.0


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
    """Join ``address`` / $RAY_ADDRESS (e.g. under ``ray job submit``) or the cluster `ray start` recorded,
    else start a local Ray. A dead recorded cluster (a head killed without `ray stop`) would be retried by
    ray.init for minutes: it is skipped, with a warning. A dead configured address is a one-line error."""
    if ray.is_initialized():
        return
    given = address or os.environ.get("RAY_ADDRESS") or None
    if given and given not in ("auto", "local") and "://" not in given and not plan.answers(given):
        raise plan.PlanError(f"ray_address / RAY_ADDRESS {given}: no Ray cluster answers there "
                             "(start it, or unset both to run on a local Ray)")
    if not given or given == "auto":
        recorded = _recorded_address()
        if recorded and not plan.answers(recorded):
            log.warning("the Ray cluster recorded at %s (ray_current_cluster) is not running (killed without "
                        "`ray stop`?); starting a local Ray instead", recorded)
            given = "local"
    ray.init(address=given, log_to_driver=True, logging_level=logging.WARNING)


def _recorded_address() -> str | None:
    """The address ray.init() would join when given none (ray_current_cluster), if any."""
    try:
        from ray._private.services import get_ray_address_from_environment
        return get_ray_address_from_environment(None, None)
    except Exception:  # noqa: BLE001 - a private helper: if it moves, ray.init decides as before
        return None


def _absolute(cfg: PipelineConfig) -> PipelineConfig:
    """Local paths made absolute on the driver: Ray workers may run in another directory."""
    def fix(uri: str) -> str:
        return uri if storage.is_remote(uri) or not uri else os.path.abspath(uri)
    model = fix(cfg.model) if os.path.exists(cfg.model) else cfg.model  # else a shipped name
    manifest = fix(cfg.manifest) if isinstance(cfg.manifest, str) else [fix(m) for m in cfg.manifest]
    return dataclasses.replace(cfg, manifest=manifest, output=fix(cfg.output), model=model,
                               allowed_prefixes=[fix(p) for p in cfg.allowed_prefixes])


def run(cfg: PipelineConfig) -> JobResult:
    t0 = time.perf_counter()
    cfg = _absolute(cfg)
    options = storage.storage_options(cfg.storage_options)
    # Everything that needs no cluster is checked before Ray starts: a user error is one line, at once.
    spec = model_spec.resolve(cfg.model, options)
    decoder = decoding.resolve(getattr(cfg, "decoding", None), spec.uri, dict(spec.vocab), options)
    store = ResultStore(cfg.output, options)
    if not cfg.resume and store.files():  # appending a second full run would duplicate every id
        raise UserError(f"output {redact(cfg.output)} already holds results and resume is false: "
                        "use a new output location, or resume: true to complete it")
    manifest = _load_manifest(cfg, options)
    ensure_ray(cfg.ray_address)
    cluster = _cluster()
    resources = plan.check(cfg, cluster)
    cfg = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference,
                                                                 num_actors=plan.actor_count(cfg, cluster)))
    if "num_gpus" in resources:
        _check_gpu_workers()
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    log.info("run %s config %s", run_id, redacted_dict(cfg))
    if decoder is not None:
        log.info("decoding: %s", decoder.describe())

    skipped = 0
    if cfg.resume:
        store.quarantine_incomplete()
        remaining = _without(manifest, store.completed_ids())
        skipped, manifest = manifest.num_rows - remaining.num_rows, remaining
    todo, columns = manifest, SUMMARY_COLUMNS
    rows, watchdog = None, _Watchdog(cfg.progress_timeout_s)
    for attempt in range(1, cfg.max_passes + 1):
        if not todo.num_rows:
            break
        if attempt > 1:
            cfg = _refit(cfg)
            log.warning("pass %d: %d id(s) not written yet; running them again", attempt, todo.num_rows)
        try:
            _write_pass(cfg, todo, run_id, spec, store, watchdog, decoder)
        except (ray.exceptions.RayError, NodeLost) as exc:
            if not (isinstance(exc, NodeLost) or _lost_resources(exc)):
                raise  # our own bug, or a user function failing: not something another pass would mend
            # A lost node (or an actor Ray gave up on) ends Ray Data's whole execution. Written ids are
            # final, so the next pass redoes only the rest, on what is left of the cluster. The grace
            # period lets write tasks cancelled by the shutdown end before the output is read back.
            log.warning("pass %d aborted: %s", attempt, redact(str(exc).splitlines()[0] if str(exc) else repr(exc)))
            time.sleep(ABORT_GRACE_S)
            store.quarantine_incomplete()
        rows = store.read(columns, run_id=run_id)  # one read-back per pass: what was written, and the summary
        todo = _without(todo, set(rows.column("id").to_pylist()) if rows is not None else set())
    summary = summarize(rows, cfg.task, time.perf_counter() - t0, manifest.num_rows + skipped, skipped,
                        expected=manifest.num_rows, seconds_per_frame=spec.seconds_per_frame)
    return JobResult(output=redact(cfg.output), run_id=run_id, summary=summary)


def _write_pass(cfg: PipelineConfig, todo: pa.Table, run_id: str, spec: model_spec.ModelSpec,
                store: ResultStore, watchdog: "_Watchdog", decoder: decoding.DecoderSpec | None = None) -> None:
    """One execution of the pipeline over ``todo``, streaming into ``store``."""
    merges, progress = _start_merges(cfg), _Progress.options(num_cpus=0, max_restarts=-1).remote()
    try:
        with watchdog.watching(progress):
            build_dataset(cfg, todo, run_id, spec, merges, progress, decoder).write_parquet(
                _write_path(store), filesystem=store.pyarrow_filesystem(), filename_provider=_RunFilenames(run_id),
                schema=output_schema(cfg.task), min_rows_per_file=cfg.finalize.rows_per_file,
                ray_remote_args={"num_cpus": 0, "max_retries": TASK_RETRIES})
    finally:
        for handle in [*merges.handles, progress]:
            ray.kill(handle)


def _check_gpu_workers() -> None:
    """Before any work: a GPU worker must see a CUDA device (a CPU-only torch in the image, or a driver mismatch,
    would otherwise leave every model actor failing, or running on one CPU thread while holding a GPU)."""
    from sew_pipeline import device
    try:
        report = ray.get(ray.remote(num_gpus=1, num_cpus=0, max_retries=0)(device.cuda_report).remote(), timeout=300)
    except ray.exceptions.GetTimeoutError:
        raise plan.PlanError(f"no GPU became free for the start-up check in 300 s: {_free_resources()}") from None
    if not report["available"]:
        raise UserError(report["message"])
    log.info("GPU workers: %s (compute capability %s, %s GiB, bf16 %s), torch %s, CUDA %s", report["name"],
             report["capability"], report["memory_gib"], report["bf16"], report["torch"], report["cuda"])


def _cluster() -> plan.Cluster:
    return plan.Cluster.from_ray_nodes(ray.nodes())


def _refit(cfg: PipelineConfig) -> PipelineConfig:
    """After a lost node: as many model actors as the remaining cluster fits (a plan for the lost node's
    CPUs would wait for them forever)."""
    cluster = _cluster()
    n = plan.fit_actors(cfg, cluster)
    if n == 0:
        plan.check(cfg, cluster)  # raises the PlanError that says why
    if n < cfg.inference.num_actors:
        log.warning("%s: going on with inference.num_actors=%d (was %d)", cluster.describe(), n,
                    cfg.inference.num_actors)
        cfg = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, num_actors=n))
    return cfg


# What a lost node or process looks like to the driver (possibly wrapped in a task error).
_LOST = tuple(getattr(ray.exceptions, name) for name in (
    "RayActorError", "ActorUnavailableError", "ActorDiedError", "NodeDiedError", "ObjectLostError",
    "OwnerDiedError", "WorkerCrashedError", "LocalRayletDiedError", "ObjectReconstructionFailedError")
    if hasattr(ray.exceptions, name))


def _lost_resources(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _LOST) or isinstance(getattr(exc, "cause", None), _LOST):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


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


# ------------------------------------------------------------------ progress watchdog
@ray.remote
class _Progress:
    """Rows out of each stage, reported fire-and-forget by the stage wrappers; read by the watchdog."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def tick(self, stage: str, rows: int) -> None:
        self.counts[stage] = self.counts.get(stage, 0) + rows

    def read(self) -> dict[str, int]:
        return self.counts


class NodeLost(RuntimeError):
    """A node alive when the pass began is gone: the pass is cut short and the next one redoes the rest."""


class _Watchdog:
    """A driver thread watching a pass: the live nodes (`ray.nodes()`) and the stage row counts of
    `_Progress`. A node lost mid-pass, or a stall by plan.Watchdog's rule, interrupts the blocked write
    (KeyboardInterrupt in the main thread), which `watching` turns into `NodeLost` or a one-line error.
    (After a lost node Ray Data may wait forever for a restarted actor that no node has room for,
    or abort: either way the pass ends here.)"""

    POLL_S = 2.0
    SIGNAL = signal.SIGUSR2  # the driver's main thread is interrupted through this signal's handler

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s

    @contextlib.contextmanager
    def watching(self, progress):
        stop, verdict = threading.Event(), []
        nodes = _alive_nodes() or set()

        def poll() -> None:
            judge = plan.Watchdog(self.timeout_s, time.monotonic())
            while not stop.wait(self.POLL_S):
                alive = _alive_nodes()
                lost = nodes - alive if alive is not None else set()
                if lost:
                    verdict.append(NodeLost(f"{len(lost)} node(s) lost mid-pass: {', '.join(sorted(lost))[:200]}"))
                elif message := judge.observe(_counts(progress), time.monotonic()):
                    verdict.append(plan.PlanError(f"{message}; free: {_free_resources()}"))
                else:
                    continue
                _thread.interrupt_main(self.SIGNAL)
                return
        # interrupt_main only reaches a signal Python handles; SIGINT is ignored in a job started with `&`
        # from a script, so the watchdog raises through a handler of its own signal instead.
        main = threading.current_thread() is threading.main_thread()  # only there can a handler be set
        previous = signal.signal(self.SIGNAL, signal.default_int_handler) if main else None
        thread = threading.Thread(target=poll, name="sew-watchdog", daemon=True)
        thread.start()
        try:
            yield
        except KeyboardInterrupt:
            if verdict:
                raise verdict[0] from None
            raise
        finally:
            stop.set()
            thread.join()
            if main:
                signal.signal(self.SIGNAL, previous)


def _alive_nodes() -> set[str] | None:
    try:
        return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
    except Exception:  # noqa: BLE001 - a GCS hiccup is not a lost node
        return None


def _counts(progress) -> dict[str, int] | None:
    try:
        return ray.get(progress.read.remote(), timeout=30)
    except Exception:  # noqa: BLE001 - unreadable counts are no news (the stall clock keeps running)
        return None


def _free_resources() -> str:
    free = ray.available_resources()
    return ", ".join(f"{k} {free.get(k, 0):g}/{v:g}" for k, v in ray.cluster_resources().items()
                     if k in ("CPU", "GPU"))


class _Tick:
    """Picklable reporter handed to stage wrappers (one actor call per output block, not awaited)."""

    def __init__(self, progress, stage: str):
        self.progress, self.stage = progress, stage

    def __call__(self, table: pa.Table) -> pa.Table:
        self.progress.tick.remote(self.stage, table.num_rows)
        return table


def _decode_counted(batch: pa.Table, tick: _Tick, **kwargs) -> Iterator[pa.Table]:
    for table in decode_batch(batch, **kwargs):
        yield tick(table)


def _finalize_counted(batch: pa.Table, tick: _Tick, **kwargs) -> pa.Table:
    return tick(finalize_batch(batch, **kwargs))


# Ray names stages and worker processes after these (ray::MapBatches(finalize_batch)): keep the stage names.
for _fn, _inner in ((_decode_counted, decode_batch), (_finalize_counted, finalize_batch)):
    _fn.__name__ = _fn.__qualname__ = _inner.__name__


def _counted_predictor(cls: type) -> type:
    class Counted(cls):
        def __init__(self, tick: _Tick, **kwargs):
            super().__init__(**kwargs)
            self._tick = tick

        def __call__(self, batch: pa.Table) -> pa.Table:
            return self._tick(super().__call__(batch))
    Counted.__name__ = Counted.__qualname__ = cls.__name__  # what progress bars and fault tests name
    return Counted


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
                  merge: RemoteMerge, progress=None, decoder: decoding.DecoderSpec | None = None) -> ray.data.Dataset:
    """The lazy Ray Dataset for ``manifest``; nothing runs until it is consumed. With a `_Progress`
    actor, every stage reports its output rows to it (for the watchdog)."""
    cluster = _cluster()
    resources = plan.model_resources(cfg, cluster)
    if "num_gpus" in resources:  # the actors must use the GPU the pipeline reserved for them
        cfg = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, use_gpu="yes"))
    # from_blocks computes block metadata here; from_arrow runs a remote task per block for it (~2 s of a
    # job's start-up on a small cluster, before any actor starts)
    rows = plan.decode_block_rows(cfg.decode.batch_rows, manifest.num_rows, cluster)
    source = ray.data.from_blocks([manifest.slice(i, rows) for i in range(0, manifest.num_rows, rows)])
    # Blocks of about two decode slices (Ray's default is 128 MiB): a long call then streams through the
    # object store a slice at a time instead of queueing there whole (derived datasets inherit this context).
    source.context.target_max_block_size = int(2 * cfg.decode.slice_mb * 2**20)
    top_k = getattr(cfg, "top_k", 1)

    def ticks(stage: str):
        return _Tick(progress, stage) if progress is not None else (lambda table: table)
    return (
        source
        .map_batches(_decode_counted, fn_kwargs={"cfg": cfg, "spec": spec, "tick": ticks("decode")}, batch_size=None,
                     batch_format="pyarrow", num_cpus=cfg.decode.num_cpus,
                     memory=cfg.decode.memory_mb * 2**20)
        .map_batches(_counted_predictor(predictor_class(cfg.task)),
                     fn_constructor_kwargs={"cfg": cfg, "spec": spec, "tick": ticks("model")},
                     batch_size=cfg.inference.batch_rows, batch_format="pyarrow",
                     compute=ray.data.ActorPoolStrategy(size=plan.actor_count(cfg, cluster)), **resources)
        # Stateless and scaled out: no process sees every row.
        .map_batches(_finalize_counted, fn_kwargs={"spec": spec, "task": cfg.task, "run_id": run_id, "top_k": top_k,
                                                   "merge": merge, "tick": ticks("finalize"), "decoder": decoder,
                                                   "storage_options": cfg.storage_options,
                                                   "segments": cfg.segmentation.method == "vad"},
                     batch_size=None, batch_format="pyarrow", num_cpus=cfg.finalize.num_cpus)
    )
