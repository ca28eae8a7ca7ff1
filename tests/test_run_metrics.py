"""A run's metrics: derived from its records, exact under retries and crashed workers, collected by the named
metrics actor on Ray, exported as Prometheus text, and kept in the run manifest."""

from __future__ import annotations

import gc
import json
import os
import weakref

import pytest
from prometheus_client.parser import text_string_to_metric_families

from odibi_ray import DAG, Node, NodeStatus, RetryPolicy, current_context, run
from odibi_ray.checkpoint import layout
from odibi_ray.observe.metrics import MetricsManager, MetricType
from odibi_ray.observe.run_metrics import actor_metrics

from .nodes import fail_until


def crash_once():
    if current_context().attempt == 1:
        os._exit(1)
    return 1


def explode():
    raise ValueError("no")


def faulty_dag(name):
    dag = DAG(name)
    dag.add_node(Node("flaky", fail_until(3), retry=RetryPolicy(max_attempts=3, delay_s=0)))
    dag.add_node(Node("crashy", crash_once, retry=RetryPolicy(max_attempts=2, delay_s=0)))
    dag.add_node(Node("bad", explode))
    dag.add_node(Node("after_bad", lambda x: x, inputs={"x": "bad"}))
    dag.add_node(Node("join", lambda a, b: a + b, inputs={"a": "flaky", "b": "crashy"}))
    return dag


def totals(m: MetricsManager, metric: MetricType, pipeline: str) -> dict[str, float]:
    """node -> the series' sum for one pipeline (runs of a pipeline share its series: no run label)."""
    out: dict[str, float] = {}
    for series, value in m.get_all_metrics(metric).items():
        if f'pipeline="{pipeline}"' in series:
            node = series.split("{", 1)[0]
            out[node] = out.get(node, 0) + value
    return out


def test_actor_counts_equal_the_records_after_retries_and_a_crashed_worker(ray_local):
    result = run(faulty_dag("metrics_faults"), progress=False, metrics_namespace="test_faults")
    held = actor_metrics("test_faults")  # the actor: the push is fire-and-forget, this read comes after it
    attempts = totals(held, MetricType.NODE_ATTEMPT, "metrics_faults")
    assert attempts == {n: r.attempts for n, r in result.nodes.items() if r.attempts}
    assert attempts["flaky"] == 3 and attempts["crashy"] == 2 and "after_bad" not in attempts
    assert totals(held, MetricType.NODE_RETRY, "metrics_faults") == {"flaky": 2, "crashy": 1}
    assert set(totals(held, MetricType.NODE_SUCCESS, "metrics_faults")) == {"flaky", "crashy", "join"}
    assert totals(held, MetricType.NODE_FAILURE, "metrics_faults") == {"bad": 1}
    assert totals(held, MetricType.NODE_SKIP, "metrics_faults") == {"after_bad": 1}
    # the run's own copy says the same
    assert totals(result.metrics, MetricType.NODE_ATTEMPT, "metrics_faults") == attempts
    durations = held.get_metric_value(MetricType.EXECUTION_TIME, "flaky", pipeline="metrics_faults", level="0")
    assert durations["count"] == 3


def test_prometheus_export_of_the_actor_parses(ray_local):
    run(faulty_dag("metrics_prom"), progress=False, metrics_namespace="test_prom")
    text = actor_metrics("test_prom").export_prometheus()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "odibi_ray_node_attempts" in families and "odibi_ray_node_duration_seconds" in families
    samples = [s for s in families["odibi_ray_node_attempts"].samples if s.labels.get("name") == "flaky"]
    assert sum(s.value for s in samples) == 3 and samples[0].labels["pipeline"] == "metrics_prom"


def test_cache_hits_misses_bytes_and_the_manifest_keeps_the_metrics(local_storage):
    dag = DAG("metrics_cache")
    dag.add_node(Node("a", lambda: b"x" * 1000, version="1"))
    dag.add_node(Node("b", lambda a: len(a), inputs=["a"], version="1"))
    first = run(dag, backend="local", storage=local_storage, progress=False)
    assert totals(first.metrics, MetricType.CACHE_MISS, "metrics_cache") == {"a": 1, "b": 1}
    assert totals(first.metrics, MetricType.BYTES_WRITTEN, "metrics_cache")["a"] >= 1000
    dag["b"].version = "2"
    second = run(dag, backend="local", storage=local_storage, progress=False)
    assert totals(second.metrics, MetricType.CACHE_HIT, "metrics_cache") == {"a": 1}
    assert totals(second.metrics, MetricType.BYTES_READ, "metrics_cache")["b"] >= 1000  # read a from storage
    body = json.loads(local_storage.get(layout.manifest_key("metrics_cache", second.run_id)))
    kept = MetricsManager.from_snapshot(body["summary"]["metrics"])
    assert kept.snapshot() == second.metrics.snapshot()


def test_metrics_can_be_turned_off():
    dag = DAG("nometrics")
    dag.add_node(Node("a", lambda: 1))
    assert run(dag, backend="local", progress=False, metrics=False).metrics is None


def test_seed_api_against_the_actor(ray_local):
    from odibi_ray.observe.run_metrics import ActorMetricsManager

    remote = ActorMetricsManager("test_seed_api")
    remote.reset()
    remote.increment(MetricType.CACHE_HIT, "my_cache")
    remote.increment(MetricType.CACHE_HIT, "my_cache")
    remote.increment(MetricType.CACHE_MISS, "my_cache")
    remote.record(MetricType.EXECUTION_TIME, "node_transform", value=1.25)
    other_handle = ActorMetricsManager("test_seed_api")  # found again by name
    assert other_handle.get_metric_value(MetricType.CACHE_HIT, "my_cache") == 2
    assert other_handle.get_metric_value(MetricType.EXECUTION_TIME, "node_transform")["count"] == 1
    assert "odibi_ray_cache_hits_total" in other_handle.export_prometheus()


def test_expired_entries_count_as_evictions(local_storage):
    from odibi_ray import CachePolicy

    dag = DAG("evict")
    dag.add_node(Node("a", lambda: 1, version="1", cache=CachePolicy(ttl_s=0.2)))
    run(dag, backend="local", storage=local_storage, progress=False)
    import time

    time.sleep(0.3)
    again = run(dag, backend="local", storage=local_storage, progress=False)
    assert again.nodes["a"].status is NodeStatus.SUCCEEDED
    assert again.metrics.get_metric_value(MetricType.CACHE_EVICTION, "evict", pipeline="evict") == 1


def test_report_draws_the_runs_edges_without_a_dag(tmp_path):
    dag = DAG("edges")
    dag.add_node(Node("a", lambda: 1))
    dag.add_node(Node("b", lambda a: a, inputs=["a"]))
    result = run(dag, backend="local", progress=False)
    text = result.report(tmp_path / "r.html").read_text()
    assert text.count('class="edge"') == 1 and 'data-edge="a-&gt;b"' in text


def test_the_actor_keeps_every_runs_metrics_when_nobody_holds_a_handle(ray_local):
    """Ray destroys a non-detached actor once no handle is left: the driver keeps one, so two runs, with
    time for garbage collection in between, both reach the actor (before the fix the second read was empty)."""
    import gc
    import time

    first = run(faulty_dag("metrics_keep"), progress=False, metrics_namespace="test_keep")
    gc.collect()
    time.sleep(1.0)  # long enough for Ray to have destroyed an actor without handles
    second = run(faulty_dag("metrics_keep"), progress=False, metrics_namespace="test_keep")
    gc.collect()
    time.sleep(1.0)
    held = actor_metrics("test_keep")
    # both runs reached the actor: the pipeline's series hold the sum of the two (runs share series)
    assert totals(held, MetricType.NODE_ATTEMPT, "metrics_keep") == {
        n: first.nodes[n].attempts + second.nodes[n].attempts for n in first.nodes if first.nodes[n].attempts}


def test_series_carry_bounded_labels_only(ray_local):
    """No run id in any series (each run would add new series without bound): two runs of one pipeline land
    in the same series, whose labels are among RUN_LABELS."""
    from odibi_ray.observe.run_metrics import RUN_LABELS

    for _ in range(2):
        run(faulty_dag("metrics_bounded"), progress=False, metrics_namespace="test_bounded")
    text = actor_metrics("test_bounded").export_prometheus()
    labels = {label for family in text_string_to_metric_families(text) for s in family.samples
              for label in s.labels if label != "le"}
    assert labels <= set(RUN_LABELS) and "run" not in labels
    attempts = [s for f in text_string_to_metric_families(text) if f.name == "odibi_ray_node_attempts"
                for s in f.samples if s.labels["name"] == "flaky" and s.name.endswith("_total")]
    assert len({tuple(sorted(s.labels.items())) for s in attempts}) == len(attempts)  # one series per label set
    assert sum(s.value for s in attempts) == 6  # 3 attempts in each of the two runs


def _one() -> int:
    return 1


def _inc(x: int) -> int:
    return x + 1


@pytest.mark.parametrize("metrics", [False, True])
def test_a_dropped_result_is_freed_without_the_cyclic_gc(ray_local, metrics):
    """Found in the second review: a result whose metrics are derived when first read must not hold itself (a cycle
    kept it, and through it the scheduler and its outputs' refs, until a full garbage collection)."""
    dag = DAG(f"cycle_{metrics}")
    dag.add_node(Node("a", _one))
    dag.add_node(Node("b", _inc, inputs={"x": "a"}))
    gc.collect()
    gc.disable()
    try:
        result = run(dag, progress=False, metrics=metrics)
        assert result.status.value == "succeeded"
        ref = weakref.ref(result)
        del result
        assert ref() is None, "RunResult kept alive by a reference cycle"
    finally:
        gc.enable()
