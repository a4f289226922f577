"""Can this config run on this cluster? Checked on the driver before any actor starts.

Ray Data never reports an unschedulable plan: model actors that hold every CPU leave the decode tasks
waiting forever ("3/2 CPU"), a GPU that is not there is waited for forever. So the plan is checked
against the cluster's nodes up front, and a plan that cannot run is a one-line `PlanError` naming the
config keys and what the cluster has. Pure functions over plain dicts: no Ray import here.
"""
from __future__ import annotations

import dataclasses
import logging
import socket
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from sew_pipeline.errors import UserError

log = logging.getLogger(__name__)


class PlanError(UserError):
    """The config asks for more than the cluster has (a user error: one line, exit 2)."""


@dataclass(frozen=True)
class Node:
    cpus: float
    gpus: float
    memory: float  # bytes Ray may hand to tasks and actors


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[Node, ...]

    @classmethod
    def from_ray_nodes(cls, nodes: Iterable[Mapping[str, Any]]) -> "Cluster":
        """From `ray.nodes()` records (dead nodes left out)."""
        alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", n.get("alive", False))]
        return cls(tuple(Node(r.get("CPU", 0.0), r.get("GPU", 0.0), r.get("memory", 0.0)) for r in alive))

    @property
    def cpus(self) -> float:
        return sum(n.cpus for n in self.nodes)

    @property
    def gpus(self) -> float:
        return sum(n.gpus for n in self.nodes)

    def describe(self) -> str:
        return (f"the cluster has {len(self.nodes)} node(s), {self.cpus:g} CPU, {self.gpus:g} GPU "
                f"(largest node: {max((n.cpus for n in self.nodes), default=0):g} CPU, "
                f"{max((n.memory for n in self.nodes), default=0) / 2**30:.1f} GiB)")


def model_resources(cfg, cluster: Cluster) -> dict[str, float]:
    """Ray resources of one model actor: a GPU, or 1/actors_per_gpu of one (+1 CPU for its host work), or k CPUs =
    k torch threads."""
    inf = cfg.inference
    if inf.use_gpu == "yes" or (inf.use_gpu == "auto" and cluster.gpus >= 1):
        return {"num_gpus": 1 / inf.actors_per_gpu, "num_cpus": 1}
    return {"num_cpus": inf.cpus_per_actor}


def actor_count(cfg, cluster: Cluster) -> int:
    """inference.num_actors, or when it is null: one per GPU when actors get GPUs (as many as have a CPU beside
    them and room for a decode task), else 1."""
    if cfg.inference.num_actors is not None:
        return cfg.inference.num_actors
    if "num_gpus" not in model_resources(cfg, cluster):
        return 1
    beside = max(cfg.decode.num_cpus, cfg.finalize.num_cpus)
    return max(1, min(int(cluster.gpus) * cfg.inference.actors_per_gpu, int(cluster.cpus - beside)))


def check(cfg, cluster: Cluster) -> dict[str, float]:
    """Raise `PlanError` if ``cfg`` cannot run on ``cluster``; else return the model actor's resources."""
    inf, n = cfg.inference, actor_count(cfg, cluster)
    where = cluster.describe()
    if inf.use_gpu == "yes" and cluster.gpus < 1:
        raise PlanError(f"inference.use_gpu=yes, but {where}: use inference.use_gpu=auto or no")
    res = model_resources(cfg, cluster)
    gpu = "num_gpus" in res
    per_gpu = inf.actors_per_gpu
    if gpu and n > cluster.gpus * per_gpu:
        raise PlanError(f"inference.num_actors={n} needs {-(-n // per_gpu)} GPUs ({per_gpu} model actor(s) per GPU: "
                        f"inference.actors_per_gpu), but {where}: lower inference.num_actors to "
                        f"{int(cluster.gpus) * per_gpu}")
    actor_cpus = res["num_cpus"]
    if not any(node.cpus >= actor_cpus and node.gpus >= res.get("num_gpus", 0) for node in cluster.nodes):
        raise PlanError(f"a model actor needs {actor_cpus:g} CPU{' and 1 GPU' if gpu else ''} on one node "
                        f"(inference.cpus_per_actor), but {where}")
    # Model actors hold their CPUs for the whole run; decode and finalize tasks need room beside them
    # (they may take turns, so the larger of the two must fit).
    beside = max(cfg.decode.num_cpus, cfg.finalize.num_cpus)
    need = n * actor_cpus + beside
    if need > cluster.cpus + 1e-9:
        raise PlanError(
            f"the plan needs {need:g} CPUs at once: inference.num_actors={n} x {actor_cpus:g} CPU "
            f"({'one per GPU actor' if gpu else 'inference.cpus_per_actor'}) + {beside:g} for "
            f"decode.num_cpus/finalize.num_cpus, but {where}: lower inference.num_actors"
            f"{'' if gpu else ' or inference.cpus_per_actor'}, or decode.num_cpus")
    if need + min(cfg.decode.num_cpus, cfg.finalize.num_cpus) > cluster.cpus + 1e-9:
        log.warning("decode and finalize tasks cannot run side by side beside %d model actor(s) on %g CPUs: "
                    "output is written only as decoding pauses (lower decode.num_cpus or finalize.num_cpus)",
                    n, cluster.cpus)
    if not any(node.cpus >= cfg.decode.num_cpus for node in cluster.nodes):
        raise PlanError(f"decode.num_cpus={cfg.decode.num_cpus:g} does not fit on any node: {where}")
    memory = cfg.decode.memory_mb * 2**20
    if not any(node.memory >= memory for node in cluster.nodes):
        raise PlanError(f"decode.memory_mb={cfg.decode.memory_mb} is more memory than any node offers: {where}")
    return res


# Decode tasks per CPU a small manifest is spread over: enough that hours-long calls keep every CPU busy
# and the last task is not much longer than the rest.
TASKS_PER_CPU = 4


def decode_block_rows(batch_rows: int, num_rows: int, cluster: Cluster) -> int:
    """Manifest rows per decode task: ``decode.batch_rows`` (large blocks cost least per row), fewer when
    the manifest is too small to give every CPU TASKS_PER_CPU tasks (a few hundred calls, each hours long)."""
    spread = -(-num_rows // max(1, int(TASKS_PER_CPU * max(cluster.cpus, 1))))
    return max(1, min(batch_rows, spread))


def fit_actors(cfg, cluster: Cluster) -> int:
    """The most model actors (<= inference.num_actors) that fit ``cluster`` (0 if none does): used to
    go on after a node is lost, with fewer actors, rather than wait forever for the lost ones."""
    for n in range(actor_count(cfg, cluster), 0, -1):
        trial = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, num_actors=n))
        try:
            check(trial, cluster)
            return n
        except PlanError:
            continue
    return 0


# ------------------------------------------------------------------ start-up and progress
def answers(address: str, timeout_s: float = 2.0) -> bool:
    """Does anything accept a TCP connection at ``host:port``? (A dead recorded Ray cluster would
    otherwise be retried by ray.init for minutes.)"""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


STAGES = ("decode", "model", "finalize")


class Watchdog:
    """Decides when a job has stalled: no stage's row count moved for ``timeout_s`` seconds.

    Fed with per-stage output row counts (whatever reports them); names the first stage that is
    behind: nothing decoded yet, model behind decode, or finalize behind the model."""

    def __init__(self, timeout_s: float, now: float):
        self.timeout_s = timeout_s
        self.counts: dict[str, int] = {}
        self.since = now

    def observe(self, counts: Mapping[str, int] | None, now: float) -> str | None:
        """None while progressing; a message once stalled. Counts that could not be read (None) are no news:
        the clock keeps running, so a progress reporter that never answers cannot disable the watchdog."""
        if counts is not None and dict(counts) != self.counts:
            self.counts, self.since = dict(counts), now
            return None
        if not self.timeout_s or now - self.since < self.timeout_s:
            return None
        c = {s: self.counts.get(s, 0) for s in STAGES}
        if c["decode"] == 0:
            starved = "decode (tasks waiting for CPU/memory: decode.num_cpus, decode.memory_mb)"
        elif c["model"] == 0:
            starved = "model (actors not started or stuck: inference.num_actors, inference.cpus_per_actor, use_gpu)"
        else:
            starved = "finalize (tasks waiting for CPU: finalize.num_cpus)" if c["finalize"] == 0 else \
                "all stages (none moved)"
        return (f"no progress for {now - self.since:.0f} s (progress_timeout_s={self.timeout_s:g}): rows out of "
                f"decode {c['decode']}, model {c['model']}, finalize {c['finalize']}; starved: {starved}")
