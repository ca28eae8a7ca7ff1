"""Multi-node Ray on one machine (ray.cluster_utils.Cluster): placement by resources, a node lost mid-task.

These tests restart Ray, so conftest runs them after every other test.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from odibi_ray import DAG, Node, NodeStatus, RetryPolicy, current_context, run
from odibi_ray.observe.progress import ProgressSink

from .nodes import wait_for

pytestmark = pytest.mark.cluster

NODE_ARGS = dict(num_cpus=1, object_store_memory=80 * 1024 * 1024)


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args=dict(NODE_ARGS, include_dashboard=False))
    special = c.add_node(**NODE_ARGS, resources={"special": 1, "spot": 1})
    plain = c.add_node(**NODE_ARGS, resources={"spot": 1})
    ray.init(address=c.address)
    c.wait_for_nodes()
    c.named = {"head": c.head_node, "special": special, "plain": plain}
    yield c
    ray.shutdown()
    c.shutdown()


def test_cluster_nodes_are_on_loopback(cluster):
    import ray

    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 3
    assert all(n["NodeManagerAddress"].startswith("127.") for n in alive)


def where_am_i():
    import ray

    return ray.get_runtime_context().get_node_id()


def test_custom_resource_places_the_node(cluster):
    dag = DAG("placement")
    for i in range(3):
        dag.add_node(Node(f"special{i}", where_am_i, resources={"special": 1}))
    result = run(dag, progress=False).raise_for_status()
    special_id = cluster.named["special"].node_id
    for i in range(3):
        assert result[f"special{i}"] == special_id
        assert result.nodes[f"special{i}"].worker_node_id == special_id


def victim(marker_dir: str):
    import ray

    here = ray.get_runtime_context().get_node_id()
    if current_context().attempt == 1:
        Path(marker_dir, "started").write_text(here)
        time.sleep(120)  # the test removes this machine meanwhile
    return here


def test_node_removed_mid_task_and_the_run_completes(cluster, tmp_path):
    dag = DAG("node_loss")
    dag.add_node(Node("victim", victim, params={"marker_dir": str(tmp_path)}, resources={"spot": 1},
                      retry=RetryPolicy(max_attempts=3, delay_s=0.1)))
    dag.add_node(Node("after", lambda node_id: node_id, inputs={"node_id": "victim"}))
    dag.add_node(Node("bystander", lambda: "fine"))
    box = {}
    runner = threading.Thread(target=lambda: box.setdefault("result", run(dag, progress=False)))
    runner.start()
    assert wait_for(tmp_path / "started", timeout=60), "victim never started"
    doomed_id = (tmp_path / "started").read_text()
    doomed = next(n for n in (cluster.named["special"], cluster.named["plain"]) if n.node_id == doomed_id)
    cluster.remove_node(doomed, allow_graceful=False)
    runner.join(timeout=120)
    assert not runner.is_alive(), "run did not finish after the node was removed"
    result = box["result"].raise_for_status()
    rec = result.nodes["victim"]
    assert rec.attempts == 2
    assert rec.attempt_history[0].error.kind in ("node_lost", "worker_died")
    assert result["victim"] != doomed_id and result["after"] == result["victim"]
    assert rec.worker_node_id == result["victim"]
    assert result.nodes["bystander"].status is NodeStatus.SUCCEEDED
    # metrics count the lost attempt once: as many attempts as the records hold
    from odibi_ray.observe.metrics import MetricType

    attempts = sum(v for k, v in result.metrics.get_all_metrics(MetricType.NODE_ATTEMPT).items()
                   if k.startswith("victim{"))
    assert attempts == 2 and result.metrics.get_metric_value(MetricType.NODE_RETRY, "victim", pipeline="node_loss",
                                                             level="0") == 1


def big_output(marker_dir: str):
    import ray

    here = ray.get_runtime_context().get_node_id()
    Path(marker_dir, "big_node").write_text(here)
    return here, b"x" * 5_000_000  # large: kept in the object store of the node that made it


def gate(marker: str):
    assert wait_for(marker, timeout=60), "test never opened the gate"
    return True


class _DoneEvents(ProgressSink):
    """Progress sink that lets the test act when given nodes have succeeded."""

    def __init__(self, *names: str) -> None:
        self.events = {n: threading.Event() for n in names}

    def node_done(self, name, level, status):
        if name in self.events and status is NodeStatus.SUCCEEDED:
            self.events[name].set()


def test_output_lost_with_its_node_is_recomputed(cluster, tmp_path):
    """`big` finishes on a worker node; that node is removed before `use` reads its output."""
    spares = [cluster.add_node(**NODE_ARGS, resources={"spot": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    dag = DAG("object_loss")
    dag.add_node(Node("big", big_output, params={"marker_dir": str(tmp_path)}, resources={"spot": 1}))
    dag.add_node(Node("gate", gate, params={"marker": str(tmp_path / "open")}, num_cpus=0))
    dag.add_node(Node("use", lambda big, ok: (big[0], len(big[1])), inputs={"big": "big", "ok": "gate"},
                      num_cpus=0))
    # a second consumer that finishes before the loss (small output: kept by the driver, not lost)
    dag.add_node(Node("early", lambda big: len(big[1]), inputs={"big": "big"}, num_cpus=0))
    dag.add_node(Node("late", lambda early, ok: early + 1, inputs={"early": "early", "ok": "gate"}, num_cpus=0))
    events = _DoneEvents("big", "early")
    box = {}
    runner = threading.Thread(target=lambda: box.setdefault("result", run(dag, progress=events)))
    runner.start()
    try:
        assert events.events["big"].wait(60), "big never finished"
        assert events.events["early"].wait(60), "early never finished"
        big_node = (tmp_path / "big_node").read_text()
        holder = next(n for n in cluster.worker_nodes if n.node_id == big_node)
        cluster.remove_node(holder, allow_graceful=False)
    finally:
        (tmp_path / "open").write_text("1")
    runner.join(timeout=120)
    assert not runner.is_alive()
    result = box["result"].raise_for_status()
    big_rec = result.nodes["big"]
    assert big_rec.attempts == 2 and big_rec.status is NodeStatus.SUCCEEDED
    assert "recomputed" in big_rec.reason
    assert big_rec.attempt_history[0].worker_node_id == holder.node_id
    assert big_rec.attempt_history[1].worker_node_id != holder.node_id
    assert result["use"] == (big_rec.worker_node_id, 5_000_000)
    assert result.nodes["use"].attempts == 1
    assert result["early"] == 5_000_000 and result["late"] == 5_000_001
    assert result.nodes["early"].attempts == 1 and result.nodes["late"].attempts == 1
    assert spares


def slow_square(i: int) -> int:
    time.sleep(0.4)
    return i * i


def test_checkpoints_in_azurite_written_by_workers_on_several_nodes(cluster, azurite_storage):
    """End to end: a pipeline on the multi-node cluster checkpoints to Azurite; the node records (written by
    the workers) show more than one Ray node wrote them; a re-run reuses everything."""

    from odibi_ray.checkpoint import run_checkpoints

    dag = DAG("spread")
    for i in range(8):
        dag.add_node(Node(f"sq{i}", slow_square, params={"i": i}, num_cpus=1))
    dag.add_node(Node("sum", lambda **kw: sum(kw.values()), inputs={f"sq{i}": f"sq{i}" for i in range(8)}))
    result = run(dag, storage=azurite_storage, progress=False).raise_for_status()
    assert result["sum"] == sum(i * i for i in range(8))
    writers = set()
    written = run_checkpoints(azurite_storage, "spread", result.run_id)  # each object says what made it
    assert set(written) == set(result.nodes)
    for name, meta in written.items():
        assert meta.ray_node_id == result.nodes[name].worker_node_id
        writers.add(meta.ray_node_id)
    assert len(writers) > 1, writers
    again = run(dag, storage=azurite_storage, progress=False).raise_for_status()
    assert {r.status for r in again.nodes.values()} == {NodeStatus.CACHED} and again["sum"] == result["sum"]
