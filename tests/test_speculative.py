"""Retries upstream of already-submitted nodes: downstream nodes run once, on the good input."""

from __future__ import annotations

from pathlib import Path

from odibi_ray import DAG, Node, NodeStatus, RetryPolicy, current_context, run

from .nodes import FlakyError


def flaky_source(tmp: str):
    n = current_context().attempt
    if n < 3:
        raise FlakyError(f"attempt {n}")
    return 10


def count_and_add(x, tmp: str, me: str):
    # every real execution leaves a mark, so a node that ran on a bad input would show twice
    Path(tmp, f"{me}-{current_context().attempt}-{x}").write_text("")
    return x + 1


def test_downstream_of_retried_node_runs_once_with_the_good_value(backend, tmp_path):
    dag = DAG("spec")
    dag.add_node(Node("src", flaky_source, params={"tmp": str(tmp_path)},
                      retry=RetryPolicy(max_attempts=3, delay_s=0.2)))
    dag.add_node(Node("mid", count_and_add, inputs={"x": "src"}, params={"tmp": str(tmp_path), "me": "mid"}))
    dag.add_node(Node("end", count_and_add, inputs={"x": "mid"}, params={"tmp": str(tmp_path), "me": "end"}))
    result = run(dag, backend=backend, progress=False).raise_for_status()
    assert result["end"] == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["end-1-11", "mid-1-10"]
    assert [result.nodes[n].attempts for n in ("src", "mid", "end")] == [3, 1, 1]


def test_downstream_of_finally_failed_node_is_skipped_without_attempts(backend, tmp_path):
    dag = DAG("spec_fail")
    dag.add_node(Node("src", flaky_source, params={"tmp": str(tmp_path)},
                      retry=RetryPolicy(max_attempts=2, delay_s=0.01)))
    dag.add_node(Node("mid", count_and_add, inputs={"x": "src"}, params={"tmp": str(tmp_path), "me": "mid"}))
    result = run(dag, backend=backend, progress=False)
    assert result.nodes["src"].status is NodeStatus.FAILED and result.nodes["src"].attempts == 2
    assert result.nodes["mid"].status is NodeStatus.SKIPPED and result.nodes["mid"].attempts == 0
    assert list(tmp_path.iterdir()) == []
