"""The seed's three deferred DistributedExecutor tests, on both backends (RAY and THREAD_POOL)."""

from __future__ import annotations

import pytest

from odibi_ray import DAG, DistributedExecutor, ExecutionBackend, Node, RunStatus

from .nodes import fail_until, rendezvous

BACKENDS = {"local": ExecutionBackend.THREAD_POOL, "ray": ExecutionBackend.RAY}


def test_parallel_execution(backend, tmp_path):
    """Nodes of one level really run at the same time: each waits until its siblings have all started."""
    names = ["p0", "p1"]  # the session's Ray has 2 CPUs
    dag = DAG()
    for n in names:
        dag.add_node(Node(n, rendezvous, params={"folder": str(tmp_path), "me": n, "everyone": names}))
    dag.add_node(Node("join", lambda p0, p1: p0 and p1, inputs=names))
    result = DistributedExecutor(backend=BACKENDS[backend], max_workers=4).execute(dag)
    assert result.status is RunStatus.SUCCEEDED
    assert result["join"] is True  # both rendezvous calls saw each other


def test_parallel_execution_fails_when_run_one_at_a_time(tmp_path):
    """The rendezvous above is a real check: with one worker it cannot succeed."""
    names = ["q0", "q1"]
    dag = DAG()
    for n in names:
        dag.add_node(Node(n, rendezvous, params={"folder": str(tmp_path), "me": n, "everyone": names,
                                                  "timeout": 1.0}))
    result = DistributedExecutor(backend=ExecutionBackend.THREAD_POOL, max_workers=1).execute(dag)
    assert result["q0"] is False


def test_retry_logic(backend):
    dag = DAG()
    dag.add_node(Node("flaky", fail_until(3)))
    dag.add_node(Node("after", lambda x: x * 10, inputs={"x": "flaky"}))
    result = DistributedExecutor(backend=BACKENDS[backend], max_retries=2, retry_delay=0.01).execute(dag)
    assert result.status is RunStatus.SUCCEEDED
    assert result["flaky"] == 3 and result.nodes["flaky"].attempts == 3
    assert result["after"] == 30
    # and with too few retries the node fails
    result = DistributedExecutor(backend=BACKENDS[backend], max_retries=1, retry_delay=0.01).execute(dag)
    assert result.status is RunStatus.FAILED and result.nodes["flaky"].attempts == 2


def test_node_grouping_by_level(backend):
    dag = DAG()
    dag.add_node(Node("load_a", lambda: 1))
    dag.add_node(Node("load_b", lambda: 2))
    dag.add_node(Node("join", lambda a, b: a + b, inputs={"a": "load_a", "b": "load_b"}))
    dag.add_node(Node("report", lambda j: j, inputs={"j": "join"}))
    dag.add_node(Node("audit", lambda a: a, inputs={"a": "load_a"}))
    expected = [["load_a", "load_b"], ["join", "audit"], ["report"]]
    assert DistributedExecutor.group_by_level(dag) == expected
    result = DistributedExecutor(backend=BACKENDS[backend]).execute(dag)
    assert result.levels == expected
    assert [[r.name for r in level] for level in result.by_level()] == expected
    assert {n: r.level for n, r in result.nodes.items()} == {
        "load_a": 0, "load_b": 0, "join": 1, "audit": 1, "report": 2}
    # the seed's semantics: level by level, so every level-1 node starts after every level-0 node ended
    level0_end = max(result.nodes[n].ended_at for n in expected[0])
    assert all(result.nodes[n].started_at >= level0_end for n in expected[1])
    assert result["report"] == 3


def test_executor_rejects_unknown_backend():
    with pytest.raises(ValueError):
        DistributedExecutor(backend="spark")


def test_one_backend_name_type_for_run_the_cli_and_the_seed():
    from odibi_ray.execution.runner import make_backend

    assert ExecutionBackend.THREAD_POOL is ExecutionBackend.LOCAL  # the seed's name is an alias
    assert [m.value for m in ExecutionBackend] == ["ray", "local"]  # what the CLI offers for --backend
    for text in ("local", "LOCAL", "thread_pool", "threads", ExecutionBackend.THREAD_POOL):
        assert ExecutionBackend.parse(text) is ExecutionBackend.LOCAL
        assert make_backend(text).name == "local"
    assert ExecutionBackend.parse(" Ray ") is ExecutionBackend.RAY
    with pytest.raises(ValueError, match="unknown backend 'dask': use 'ray' or 'local'"):
        ExecutionBackend.parse("dask")
