"""System failures on real Ray: crashed workers, alarms that are ignored, loopback-only nodes."""

from __future__ import annotations

import os
import signal
import time

import pytest

from odibi_ray import DAG, Node, NodeStatus, RetryPolicy, current_context, run


def crash_on_first_attempt():
    if current_context().attempt == 1:
        os._exit(1)  # the worker process dies, as on a segfault or a kill -9
    return "survived"


def test_ray_nodes_stay_on_loopback(ray_local):
    addresses = [n["NodeManagerAddress"] for n in ray_local.nodes() if n["Alive"]]
    assert addresses and all(a.startswith("127.") for a in addresses), addresses


def test_worker_crash_is_retried(ray_local):
    dag = DAG("crash")
    dag.add_node(Node("fragile", crash_on_first_attempt, retry=RetryPolicy(max_attempts=2, delay_s=0.05)))
    dag.add_node(Node("after", lambda x: x + "!", inputs={"x": "fragile"}))
    result = run(dag, progress=False).raise_for_status()
    rec = result.nodes["fragile"]
    assert result["after"] == "survived!"
    assert rec.attempts == 2 and rec.attempt_history[0].error.kind == "worker_died"
    assert rec.attempt_history[0].error.type_name == "SystemFailureError"
    # the downstream node, submitted before its input crashed, counts one attempt only
    assert result.nodes["after"].attempts == 1


def test_worker_crash_not_retried_when_policy_says_so(ray_local):
    dag = DAG("crash_final")
    dag.add_node(Node("fragile", crash_on_first_attempt,
                      retry=RetryPolicy(max_attempts=3, retry_system_failures=False)))
    result = run(dag, progress=False)
    rec = result.nodes["fragile"]
    assert rec.status is NodeStatus.FAILED and rec.attempts == 1 and rec.error.kind == "worker_died"


def deaf_sleeper():
    if current_context().attempt == 1:
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])  # like C code that never yields
        time.sleep(30)
    return "second attempt"


def test_attempt_ignoring_its_alarm_is_killed_and_counted_as_timeout(ray_local):
    dag = DAG("deaf")
    dag.add_node(Node("deaf", deaf_sleeper, timeout_s=0.5, retry=RetryPolicy(max_attempts=2, delay_s=0.01)))
    started = time.monotonic()
    result = run(dag, progress=False).raise_for_status()
    assert time.monotonic() - started < 25  # killed after timeout + grace, not after the 30 s sleep
    first = result.nodes["deaf"].attempt_history[0].error
    assert first.kind == "timeout" and "worker process was killed" in first.message
    assert result["deaf"] == "second attempt"


def test_resources_reach_ray(ray_local):
    from odibi_ray import Node as N

    node = N("r", lambda: 1, num_cpus=0.5, num_gpus=1, memory=64 * 2**20, resources={"special": 2})
    assert node.ray_options() == {"num_cpus": 0.5, "num_gpus": 1, "memory": 64 * 2**20,
                                  "resources": {"special": 2}}
    dag = DAG("resources")
    dag.add_node(N("fits", lambda: ray_local.get_runtime_context().get_assigned_resources(), num_cpus=0.5,
                   memory=32 * 2**20))
    assigned = run(dag, progress=False).raise_for_status()["fits"]
    assert assigned["CPU"] == 0.5 and assigned["memory"] == 32 * 2**20


def test_unschedulable_request_is_an_error_before_anything_runs(ray_local, tmp_path):
    from odibi_ray import UnschedulableNodeError

    marker = tmp_path / "ran"
    dag = DAG("unicorn")
    dag.add_node(Node("fine", lambda: marker.write_text("x")))
    dag.add_node(Node("greedy", lambda: 1, resources={"unicorn": 1}))
    with pytest.raises(UnschedulableNodeError, match="'greedy'.*unicorn"):
        run(dag, progress=False)
    dag2 = DAG("too_many_cpus")
    dag2.add_node(Node("huge", lambda: 1, num_cpus=64))
    with pytest.raises(UnschedulableNodeError, match="'huge'"):
        run(dag2, progress=False)
    assert not marker.exists()


def swallow_timeout():
    try:
        time.sleep(5)
    except Exception as exc:  # a careless node that catches everything, our NodeTimeoutError included
        return f"swallowed {type(exc).__name__}"
    return "slept"


def test_node_cannot_swallow_its_timeout(ray_local):
    dag = DAG("swallow")
    dag.add_node(Node("careless", swallow_timeout, timeout_s=0.5))
    result = run(dag, progress=False)
    rec = result.nodes["careless"]
    assert rec.status is NodeStatus.FAILED and rec.error.kind == "timeout"
    assert rec.error.type_name == "NodeTimeoutError"


def slow_source():
    time.sleep(2)
    return 1


def crash_at_once(x):
    os._exit(1)


def test_crash_after_waiting_for_inputs_is_a_crash_not_a_timeout(ray_local):
    """The child is submitted at once but starts after its 2 s input: its crash must not be read as a
    timeout (that would ignore retry_system_failures=False)."""
    dag = DAG("crash_not_timeout")
    dag.add_node(Node("src", slow_source))
    dag.add_node(Node("child", crash_at_once, inputs={"x": "src"}, timeout_s=1.0,
                      retry=RetryPolicy(max_attempts=3, retry_system_failures=False)))
    result = run(dag, progress=False)
    rec = result.nodes["child"]
    assert rec.status is NodeStatus.FAILED and rec.attempts == 1 and rec.error.kind == "worker_died"


def test_address_of_another_cluster_is_an_error_when_ray_is_connected(ray_local):
    from odibi_ray import ExecutionError

    dag = DAG("elsewhere")
    dag.add_node(Node("a", lambda: 1))
    with pytest.raises(ExecutionError, match="already connected"):
        run(dag, address="127.0.0.1:1", progress=False)
    assert run(dag, address="auto", progress=False)["a"] == 1  # "auto": the cluster we are on


def test_large_function_travels_through_the_object_store_once(ray_local, monkeypatch):
    from odibi_ray.execution.backends.ray_tasks import INLINE_FN_BYTES

    puts = []
    real_put = ray_local.put
    monkeypatch.setattr(ray_local, "put", lambda value, **kw: puts.append(len(value)) or real_put(value, **kw))

    blob = os.urandom(4 * INLINE_FN_BYTES)

    def blob_size(i):
        return len(blob) + i

    dag = DAG("bigfn")
    for i in range(4):
        dag.add_node(Node(f"n{i}", blob_size, params={"i": i}))
    result = run(dag, progress=False).raise_for_status()
    assert [result[f"n{i}"] for i in range(4)] == [len(blob) + i for i in range(4)]
    assert len(puts) == 1 and puts[0] > len(blob)  # one object holds the function for the four nodes
