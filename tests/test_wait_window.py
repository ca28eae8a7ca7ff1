"""A run with more attempts in flight than one wait watches (scheduler.WAIT_WINDOW): the driver may see a consumer
finish before its input. Its result must be kept (the input is finished too: Ray ran the consumer on its output),
not discarded and run again — which, when a discarded node's re-queue hints had all come and gone, stalled the run
(SchedulerStateError). Found by benchmarks/bench_overhead.py at 5,000 nodes; reproduced here with a small window."""

from __future__ import annotations

import random

import pytest

import odibi_ray as orr
from odibi_ray import DAG, Node
from odibi_ray.execution import scheduler
from odibi_ray.execution.backends.ray_tasks import RayBackend


def const(value: int) -> int:
    return value


def add_all(**inputs: int) -> int:
    return sum(inputs.values())


class CountingRayBackend(RayBackend):
    """The Ray backend, counting the tasks it submits (a discarded attempt is submitted again)."""

    def __init__(self) -> None:
        super().__init__()
        self.submitted = 0

    def submit(self, node, ctx, inputs, item=None):
        self.submitted += 1
        return super().submit(node, ctx, inputs, item)


def layered(levels: int, width: int, seed: int) -> DAG:
    rng = random.Random(seed)
    dag = DAG("wide")
    names = [[f"n{k}_{i}" for i in range(width)] for k in range(levels)]
    for k, level in enumerate(names):
        for name in level:
            if k == 0:
                dag.add_node(Node(name, const, params={"value": 1}))
            else:
                ups = rng.sample(names[k - 1], 2) + rng.sample(names[max(0, k - 3)], 1)
                dag.add_node(Node(name, add_all, inputs={f"x{j}": u for j, u in enumerate(dict.fromkeys(ups))}))
    return dag


@pytest.mark.parametrize("seed", [0, 1])
def test_consumers_seen_before_their_inputs_are_kept(ray_local, monkeypatch, seed):
    monkeypatch.setattr(scheduler, "WAIT_WINDOW", 16)
    dag = layered(12, 30, seed)
    backend = CountingRayBackend()
    result = orr.run(dag, backend=backend, progress=False, metrics=False)
    assert result.succeeded, result.summary()
    assert backend.submitted == len(dag), f"{backend.submitted - len(dag)} attempt(s) discarded and run again"
    assert all(r.attempts == 1 for r in result.nodes.values())
