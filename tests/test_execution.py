"""Running DAGs: outputs, levels, retries, timeouts, failure propagation. Each test runs on both backends
(`local`: thread pool, no Ray; `ray`: real Ray tasks on the session's local Ray)."""

from __future__ import annotations

import os
import time

import pytest

from odibi_ray import (DAG, Node, NodeStatus, OutputUnavailableError, RetryPolicy, RunFailedError, RunStatus,
                       current_context, run)

from .nodes import FlakyError, fail_until, wait_for


def go(dag, backend, **kw):
    return run(dag, backend=backend, progress=False, **kw)


def test_outputs_flow_along_edges(backend):
    dag = DAG("flow")
    dag.add_node(Node("a", lambda: 2))
    dag.add_node(Node("b", lambda: 3))
    dag.add_node(Node("mul", lambda x, y, k: x * y * k, inputs={"x": "a", "y": "b"}, params={"k": 10}))
    dag.add_node(Node("neg", lambda v: -v, inputs={"v": "mul"}))
    result = go(dag, backend).raise_for_status()
    assert result.status is RunStatus.SUCCEEDED
    assert result["neg"] == -60 and result["mul"] == 60
    assert [[r.name for r in lvl] for lvl in result.by_level()] == [["a", "b"], ["mul"], ["neg"]]
    rec = result.nodes["mul"]
    assert rec.status is NodeStatus.SUCCEEDED and rec.attempts == 1 and rec.level == 1
    assert rec.duration_s is not None and rec.duration_s >= 0
    assert rec.worker_node_id
    assert result.backend == backend


def test_outputs_are_fetched_lazily(backend):
    from odibi_ray.execution.runner import make_backend

    class Counting(type(make_backend(backend))):
        fetched: list = []

        def fetch_many(self, handles):
            Counting.fetched.append(len(handles))
            return super().fetch_many(handles)

    dag = DAG("lazy")
    dag.add_node(Node("big", lambda: b"x" * 2_000_000))
    dag.add_node(Node("size", lambda obj: len(obj), inputs={"obj": "big"}))
    result = go(dag, Counting())
    assert Counting.fetched == []  # the run itself pulled no output to the driver
    assert result["size"] == 2_000_000 and result["size"] == 2_000_000
    assert Counting.fetched == [1]  # one fetch, of one output, then cached


def test_attempt_number_and_context_reach_the_node(backend):
    dag = DAG("ctx")
    dag.add_node(Node("who", lambda: (current_context().node, current_context().attempt, current_context().run_id)))
    result = go(dag, backend, run_id="run-42")
    assert result["who"] == ("who", 1, "run-42")
    with pytest.raises(RuntimeError):
        current_context()


def test_application_error_retried_then_passing(backend):
    dag = DAG("retry")
    dag.add_node(Node("flaky", fail_until(3), retry=RetryPolicy(max_attempts=4, delay_s=0.05, retry_on=(IOError,))))
    result = go(dag, backend).raise_for_status()
    assert result["flaky"] == 3
    rec = result.nodes["flaky"]
    assert rec.attempts == 3
    assert [a.error.type_name if a.error else None for a in rec.attempt_history] == ["FlakyError", "FlakyError", None]
    starts = [a.started_at for a in rec.attempt_history]
    assert starts == sorted(starts)


def test_non_matching_exception_is_not_retried(backend):
    dag = DAG("noretry")
    dag.add_node(Node("n", fail_until(5, KeyError),
                      retry=RetryPolicy(max_attempts=5, delay_s=0.01, retry_on=(IOError,))))
    result = go(dag, backend)
    rec = result.nodes["n"]
    assert rec.status is NodeStatus.FAILED and rec.attempts == 1
    assert rec.error.type == "builtins.KeyError"


def explode(value):
    raise ValueError(f"bad value {value}")


def test_exhausted_retries_carry_type_message_and_traceback(backend):
    dag = DAG("exhaust")
    dag.add_node(Node("boom", explode, params={"value": 42},
                      retry=RetryPolicy(max_attempts=2, delay_s=0.01, retry_on=(ValueError,))))
    result = go(dag, backend)
    rec = result.nodes["boom"]
    assert rec.status is NodeStatus.FAILED and rec.attempts == 2
    assert rec.error.type == "builtins.ValueError" and rec.error.message == "bad value 42"
    assert "explode" in rec.error.traceback and "raise ValueError" in rec.error.traceback
    with pytest.raises(RunFailedError) as info:
        result.raise_for_status()
    failure = info.value.failures["boom"]
    assert failure.error_type == "ValueError" and failure.error_message == "bad value 42"
    assert failure.attempts == 2 and "explode" in failure.traceback_text
    assert isinstance(failure.__cause__, ValueError)  # the original exception, carried back
    assert "boom" in str(info.value) and "ValueError: bad value 42" in str(info.value)


def test_waiting_to_retry_does_not_block_other_nodes(backend, tmp_path):
    """While A waits 3 s to retry, the driver must go on: C fails right after A and is retried at once
    (delay 0), then B runs on C's output. A driver that slept through A's delay would hold C back."""
    failed_once = tmp_path / "a_failed"

    def a():
        if current_context().attempt == 1:
            failed_once.write_text("1")
            raise FlakyError("first try fails")
        return time.time()

    def c():
        if current_context().attempt == 1:
            assert wait_for(failed_once, timeout=30), "A never failed"
            raise FlakyError("fails just after A")
        return time.time()

    dag = DAG("nonblocking")
    dag.add_node(Node("a", a, retry=RetryPolicy(max_attempts=2, delay_s=3.0)))
    dag.add_node(Node("c", c, retry=RetryPolicy(max_attempts=2, delay_s=0.0)))
    dag.add_node(Node("b", lambda c: time.time(), inputs={"c": "c"}))
    result = go(dag, backend).raise_for_status()
    a_retry_started = result.nodes["a"].attempt_history[1].started_at
    c_first_failed = result.nodes["c"].attempt_history[0].ended_at
    assert result.nodes["c"].attempt_history[1].started_at - c_first_failed < 2.5  # not held behind A's 3 s
    assert result["b"] < a_retry_started
    assert result.nodes["b"].ended_at < a_retry_started


def test_dependency_driven_by_default_barrier_on_request(backend, tmp_path):
    """`fast_child` needs only `fast`; `slow` (same level as `fast`) waits to see it start."""

    def make(mode_dir):
        def slow():
            return wait_for(mode_dir / "child_ran", timeout=4)

        def fast():
            return 1

        def fast_child(x):
            (mode_dir / "child_ran").write_text("1")
            return x

        dag = DAG("drive")
        dag.add_node(Node("slow", slow))
        dag.add_node(Node("fast", fast))
        dag.add_node(Node("fast_child", fast_child, inputs={"x": "fast"}))
        return dag

    for barrier in (False, True):
        d = tmp_path / f"barrier{barrier}"
        d.mkdir()
        result = go(make(d), backend, barrier=barrier, max_workers=4).raise_for_status()
        # dependency-driven: the child ran while `slow` was still running; barrier: only after it ended
        assert result["slow"] is (not barrier)
        child_start = result.nodes["fast_child"].started_at
        assert (child_start < result.nodes["slow"].ended_at) is (not barrier)


def test_descendants_of_failed_node_skipped_independent_branch_completes(backend):
    dag = DAG("propagate")
    dag.add_node(Node("bad", explode, params={"value": 1}))
    dag.add_node(Node("child", lambda x: x, inputs={"x": "bad"}))
    dag.add_node(Node("grandchild", lambda x: x, inputs={"x": "child"}))
    dag.add_node(Node("good", lambda: "ok"))
    dag.add_node(Node("good_child", lambda g: g + "!", inputs={"g": "good"}))
    result = go(dag, backend)
    s = {n: r.status for n, r in result.nodes.items()}
    assert s == {"bad": NodeStatus.FAILED, "child": NodeStatus.SKIPPED, "grandchild": NodeStatus.SKIPPED,
                 "good": NodeStatus.SUCCEEDED, "good_child": NodeStatus.SUCCEEDED}
    assert result.nodes["grandchild"].reason == "upstream node 'bad' failed"
    assert result.nodes["child"].attempts == 0
    assert result["good_child"] == "ok!"
    assert result.status is RunStatus.FAILED
    with pytest.raises(OutputUnavailableError, match="skipped"):
        result["child"]
    with pytest.raises(RunFailedError) as info:
        result.raise_for_status()
    assert set(info.value.skipped) == {"child", "grandchild"}


def test_fail_fast_cancels_the_rest(backend, tmp_path):
    release = tmp_path / "release"

    def long_running():
        wait_for(release, timeout=60)
        return "finished"

    dag = DAG("failfast")
    dag.add_node(Node("bad", explode, params={"value": 0}))
    dag.add_node(Node("long", long_running))
    dag.add_node(Node("after_long", lambda x: x, inputs={"x": "long"}))
    try:
        result = go(dag, backend, fail_fast=True, max_workers=2)
    finally:
        release.write_text("1")  # let an abandoned local thread end
    s = {n: r.status for n, r in result.nodes.items()}
    assert s["bad"] is NodeStatus.FAILED
    assert s["long"] is NodeStatus.CANCELLED and s["after_long"] is NodeStatus.CANCELLED
    assert "fail_fast" in result.nodes["after_long"].reason
    assert result.nodes["long"].attempt_history[-1].error.kind == "cancelled"
    assert result.nodes["after_long"].attempts == 0  # it never started, on either backend


def sleeper(seconds: float, tmp: str):
    if current_context().attempt == 1:
        from pathlib import Path
        wait_for(Path(tmp) / "never", timeout=seconds)  # hangs past the timeout
        return "too late"
    return "second attempt"


def test_timeout_cancels_attempt_and_retries(backend, tmp_path):
    dag = DAG("timeout")
    dag.add_node(Node("slowpoke", sleeper, params={"seconds": 4.0, "tmp": str(tmp_path)}, timeout_s=0.5,
                      retry=RetryPolicy(max_attempts=2, delay_s=0.01)))
    result = go(dag, backend).raise_for_status()
    rec = result.nodes["slowpoke"]
    assert result["slowpoke"] == "second attempt" and rec.attempts == 2
    first = rec.attempt_history[0].error
    assert first.kind == "timeout" and first.type_name == "NodeTimeoutError" and "timeout_s=0.5" in first.message


def test_timeout_not_retried_when_policy_says_so(backend, tmp_path):
    dag = DAG("timeout_final")
    dag.add_node(Node("slowpoke", sleeper, params={"seconds": 4.0, "tmp": str(tmp_path)}, timeout_s=0.5,
                      retry=RetryPolicy(max_attempts=3, retry_on_timeout=False)))
    result = go(dag, backend)
    rec = result.nodes["slowpoke"]
    assert rec.status is NodeStatus.FAILED and rec.attempts == 1 and rec.error.kind == "timeout"


def test_dag_default_policy_applies_to_nodes_without_one(backend):
    dag = DAG("defaults", retry=RetryPolicy(max_attempts=3, delay_s=0.01))
    dag.add_node(Node("flaky", fail_until(3)))
    dag.add_node(Node("strict", fail_until(2), retry=RetryPolicy.none()))
    result = go(dag, backend)
    assert result.nodes["flaky"].status is NodeStatus.SUCCEEDED and result.nodes["flaky"].attempts == 3
    assert result.nodes["strict"].status is NodeStatus.FAILED and result.nodes["strict"].attempts == 1


def test_wide_dag_many_nodes(backend):
    dag = DAG("wide")
    dag.add_node(Node("root", lambda: 1))
    for i in range(60):
        dag.add_node(Node(f"n{i}", lambda r, i=i: r + i, inputs={"r": "root"}))
    dag.add_node(Node("sum", lambda **kw: sum(kw.values()), inputs={f"n{i}": f"n{i}" for i in range(60)}))
    result = go(dag, backend).raise_for_status()
    assert result["sum"] == 60 + sum(range(60))
    assert len(result.levels) == 3


def test_same_result_records_on_both_backends(ray_local):
    dag = DAG("same")
    dag.add_node(Node("a", lambda: 1))
    dag.add_node(Node("b", fail_until(2), retry=RetryPolicy(max_attempts=2, delay_s=0)))
    dag.add_node(Node("c", lambda a, b: a + b, inputs=["a", "b"]))
    local, ray_ = (go(dag, be) for be in ("local", "ray"))
    for r in (local, ray_):
        assert {n: (x.status, x.attempts, x.level) for n, x in r.nodes.items()} == {
            "a": (NodeStatus.SUCCEEDED, 1, 0), "b": (NodeStatus.SUCCEEDED, 2, 0), "c": (NodeStatus.SUCCEEDED, 1, 1)}
        assert r["c"] == 3
    assert {r.worker_node_id for r in local.nodes.values()} == {"local"}
    assert ray_.nodes["a"].worker_node_id == ray_local.get_runtime_context().get_node_id()
    assert ray_.nodes["a"].attempt_history[0].worker_pid != os.getpid()


def test_timeout_counts_from_start_not_from_queueing(backend):
    """`quick` waits ~1.5 s for a free slot behind `hog`; its 0.5 s timeout only runs once it starts."""
    import time as _t

    dag = DAG("queued")
    dag.add_node(Node("hog", lambda: _t.sleep(1.5) or "hog", num_cpus=2))
    dag.add_node(Node("quick", lambda: "quick", num_cpus=2, timeout_s=0.5))
    result = go(dag, backend, max_workers=1).raise_for_status()
    assert result.nodes["quick"].attempts == 1
    hog, quick = result.nodes["hog"], result.nodes["quick"]
    waited = quick.attempt_history[0].queue_wait_s
    assert quick.started_at >= hog.ended_at or waited > 0.5  # it really was queued past its timeout


def test_timed_out_thread_or_worker_does_not_hold_up_the_retry(backend, tmp_path):
    """One slot only: attempt 1 hangs (until the test ends), attempt 2 must still get to run."""
    release = tmp_path / "release"

    def hangs_first():
        if current_context().attempt == 1:
            wait_for(release, timeout=60)
            return "first"
        return "second"

    dag = DAG("slot")
    dag.add_node(Node("h", hangs_first, num_cpus=2, timeout_s=0.5, retry=RetryPolicy(max_attempts=2, delay_s=0)))
    try:
        t0 = time.monotonic()
        result = go(dag, backend, max_workers=1).raise_for_status()
        assert time.monotonic() - t0 < 30  # did not wait for the hung attempt (it would hang 60 s)
    finally:
        release.write_text("1")
    assert result["h"] == "second" and result.nodes["h"].attempt_history[0].error.kind == "timeout"
