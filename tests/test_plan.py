"""plan.py: an impossible plan is a one-line error naming the keys (no Ray needed), the watchdog's verdict,
and the refit after a lost node."""
from __future__ import annotations

import socket

import pytest

from sew_pipeline import plan
from sew_pipeline.config import LabelConfig, TranscribeConfig, load_config

GiB = 2**30


def cfg(*sets: str, cls=TranscribeConfig):
    return load_config(cls, None, ["manifest=m.jsonl", "output=out", *sets])


def cluster(*nodes: tuple[float, float, float]) -> plan.Cluster:
    return plan.Cluster.from_ray_nodes(
        [{"Alive": True, "Resources": {"CPU": c, "GPU": g, "memory": m * GiB}} for c, g, m in nodes]
        + [{"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0, "memory": 512 * GiB}}])  # a dead node counts for nothing


def test_default_plan_fits_two_cpus():
    assert plan.check(cfg(), cluster((2, 0, 8))) == {"num_cpus": 1.0}
    assert plan.check(cfg(cls=LabelConfig), cluster((2, 0, 8))) == {"num_cpus": 1.0}


@pytest.mark.parametrize("sets, keys", [
    (["inference.num_actors=2"], ["inference.num_actors=2", "inference.cpus_per_actor", "decode.num_cpus"]),
    (["inference.cpus_per_actor=4"], ["inference.cpus_per_actor"]),
    (["inference.use_gpu=yes"], ["inference.use_gpu=yes"]),
    (["decode.memory_mb=100000"], ["decode.memory_mb=100000"]),
    (["decode.num_cpus=3", "inference.cpus_per_actor=0.5"], ["decode.num_cpus"]),
])
def test_impossible_plans_name_their_keys(sets, keys):
    with pytest.raises(plan.PlanError) as err:
        plan.check(cfg(*sets), cluster((2, 0, 8)))
    message = str(err.value)
    assert "\n" not in message and "2 CPU" in message, message  # one line, with what the cluster has
    for key in keys:
        assert key in message, message


def test_gpu_plans():
    gpus = cluster((8, 2, 64))
    assert plan.check(cfg("inference.num_actors=2"), gpus) == {"num_gpus": 1, "num_cpus": 1}
    with pytest.raises(plan.PlanError, match=r"inference.num_actors=3 needs 3 GPUs.*lower inference.num_actors to 2"):
        plan.check(cfg("inference.num_actors=3"), gpus)
    # use_gpu=no on a GPU cluster: CPU actors, checked against CPUs
    assert plan.check(cfg("inference.use_gpu=no", "inference.num_actors=3", "inference.cpus_per_actor=2"), gpus) \
        == {"num_cpus": 2.0}


def test_actors_must_fit_one_node_not_just_the_total():
    two_small = cluster((2, 0, 8), (2, 0, 8))
    assert plan.check(cfg("inference.cpus_per_actor=2"), two_small)  # 2 on one node + decode on the other
    with pytest.raises(plan.PlanError, match="inference.cpus_per_actor"):
        plan.check(cfg("inference.cpus_per_actor=3"), two_small)  # 4 CPUs in all, but no node has 3


def test_fit_actors_after_a_lost_node():
    c = cfg("inference.num_actors=3")
    assert plan.fit_actors(c, cluster((2, 0, 8), (2, 0, 8))) == 3
    assert plan.fit_actors(c, cluster((2, 0, 8))) == 1
    assert plan.fit_actors(c, cluster((1, 0, 8))) == 0


def test_decode_blocks_spread_a_small_manifest_over_every_cpu():
    two, fleet = cluster((2, 0, 8)), cluster(*[(32, 4, 128)] * 25)  # 2 CPUs; 800 CPUs
    assert plan.decode_block_rows(128, 3000, two) == 128  # short clips: full blocks
    assert plan.decode_block_rows(128, 100, two) == 13  # 8 tasks for 2 CPUs
    assert plan.decode_block_rows(128, 1000, fleet) == 1  # 1,000 calls on 800 CPUs: one per task
    assert plan.decode_block_rows(128, 3_000_000, fleet) == 128
    assert plan.decode_block_rows(8, 5000, two) == 8  # batch_rows stays the ceiling
    assert plan.decode_block_rows(128, 0, two) == 1


def test_answers_tells_a_listening_port_from_a_dead_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        live = f"127.0.0.1:{s.getsockname()[1]}"
        assert plan.answers(live)
    assert not plan.answers(live, timeout_s=0.5)  # closed now
    assert not plan.answers("not-an-address")


def test_watchdog_names_the_starved_stage():
    w = plan.Watchdog(timeout_s=10, now=0)
    assert w.observe({"decode": 5}, now=1) is None          # progress
    assert w.observe({"decode": 5}, now=9) is None          # quiet, not yet timed out
    assert w.observe({"decode": 5, "model": 5}, now=10.5) is None
    verdict = w.observe({"decode": 5, "model": 5}, now=21)
    assert verdict and "no progress for 10 s" in verdict and "starved: finalize" in verdict
    nothing = plan.Watchdog(timeout_s=5, now=0)
    assert nothing.observe({}, now=2) is None
    assert "starved: decode" in nothing.observe({}, now=6)
    model = plan.Watchdog(timeout_s=5, now=0)
    model.observe({"decode": 128}, now=1)
    assert "starved: model" in model.observe({"decode": 128}, now=7)
    unread = plan.Watchdog(timeout_s=5, now=0)  # counts never readable (the progress actor never answers)
    assert unread.observe(None, now=2) is None
    assert "starved: decode" in unread.observe(None, now=6)
    blip = plan.Watchdog(timeout_s=5, now=0)  # one unreadable poll neither resets nor fires early
    blip.observe({"decode": 3}, now=1)
    assert blip.observe(None, now=4) is None
    assert "starved: model" in blip.observe({"decode": 3}, now=6.5)
    off = plan.Watchdog(timeout_s=0, now=0)
    assert off.observe({}, now=10**6) is None
