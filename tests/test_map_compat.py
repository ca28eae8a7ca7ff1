"""The seed face runs mapped nodes: ``DistributedExecutor`` (level by level, ``barrier=True``) on both backends, a
map, a map over the mapped node's results (nested), a reduce and a collect, with the right outputs."""

from __future__ import annotations

import pytest

from odibi_ray import DAG, DistributedExecutor, ExecutionBackend, MapSpec, Node, NodeStatus, RunStatus

from . import map_yaml_steps as steps

BACKENDS = {"local": ExecutionBackend.THREAD_POOL, "ray": ExecutionBackend.RAY}


def add_one(x: int) -> int:
    return x + 1


def pair(a: int, b: int) -> tuple[int, int]:
    return a, b


def squares_dag() -> DAG:
    dag = DAG("squares_seed")
    dag.add_node(Node("numbers", steps.numbers, params={"n": 5}))
    dag.add_node(Node("sq", steps.square, map_over=MapSpec("numbers", max_parallel=2)))
    dag.add_node(Node("plus", add_one, map_over="sq"))  # nested: a map over the mapped node's results
    dag.add_node(Node("plus_total", steps.total, inputs={"values": "plus"}))
    dag.add_node(Node("total", steps.total, inputs={"values": "sq"}))
    dag.add_node(Node("both", pair, inputs={"a": "total", "b": "plus_total"}))
    return dag


@pytest.mark.parametrize("barrier", [True, False])
def test_distributed_executor_runs_mapped_nodes(backend, barrier):
    dag = squares_dag()
    assert DistributedExecutor.group_by_level(dag) == [["numbers"], ["sq"], ["plus", "total"], ["plus_total"], ["both"]]
    result = DistributedExecutor(backend=BACKENDS[backend], max_workers=4, barrier=barrier).execute(dag)
    assert result.status is RunStatus.SUCCEEDED
    assert result["sq"] == [1, 4, 9, 16, 25] and result["plus"] == [2, 5, 10, 17, 26]
    assert result["total"] == 55 and result["plus_total"] == 60 and result["both"] == (55, 60)
    for node in ("sq", "plus"):
        rec = result.nodes[node]
        assert rec.status is NodeStatus.SUCCEEDED and rec.item_counts() == {"succeeded": 5}
        assert [i.name for i in rec.items] == [f"{node}[{i}]" for i in range(5)]
    assert result.nodes["total"].level == 2 and result.nodes["plus_total"].level == 3


def test_distributed_executor_retries_items_with_its_default_policy(backend, tmp_path):
    dag = DAG("flaky_seed")
    dag.add_node(Node("numbers", steps.numbers, params={"n": 3}))
    dag.add_node(Node("sq", steps.flaky_square, params={"marks": str(tmp_path)}, map_over="numbers"))
    dag.add_node(Node("total", steps.total, inputs={"values": "sq"}))
    result = DistributedExecutor(backend=BACKENDS[backend], max_retries=1, retry_delay=0.01).execute(dag)
    assert result.status is RunStatus.SUCCEEDED and result["total"] == 14
    assert [i.attempts for i in result.nodes["sq"].items] == [1, 2, 1]  # item 1 (x=2) failed once, retried
