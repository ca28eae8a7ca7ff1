"""Write-behind checkpoints (odibi_ray/checkpoint/writeback.py) on real Ray: workers queue their checkpoint and
return; the driver confirms every object before the run ends, writes the ones that never arrive itself, and
fails a node whose checkpoint cannot be written at all."""

from __future__ import annotations

import pytest

from odibi_ray import NodeStatus, run
from odibi_ray.checkpoint import layout, run_checkpoints, writeback
from odibi_ray.checkpoint.objectmeta import CheckpointMeta

from .cp_nodes import ran
from .test_checkpoint_layout import pipeline
from .writeback_storage import RefusingStorage


def test_written_behind_checkpoints_are_all_confirmed_before_the_run_ends(ray_local, tmp_path, marks):
    store = RefusingStorage(tmp_path / "s", delay_s=0.05, fsync=False)  # slow: the writes outlive their tasks
    result = run(pipeline(marks), storage=store, progress=False).raise_for_status()
    for rec in result.nodes.values():  # every object is there when run() returns, with exact bytes
        info = store.head(layout.object_key("lay", rec.cache_key))
        meta = CheckpointMeta.from_info(info)
        assert meta.run_id == result.run_id and meta.pid == rec.attempt_history[-1].worker_pid
        assert rec.attempt_history[-1].bytes_written == info.size > 0 and rec.attempt_history[-1].confirmed
    assert set(run_checkpoints(store, "lay", result.run_id)) == set(result.nodes)
    again = run(pipeline(marks), storage=store, progress=False).raise_for_status()
    assert {r.status for r in again.nodes.values()} == {NodeStatus.CACHED}
    assert ran(marks) == {"source": 1, "double": 1, "total": 1}


def test_inline_when_asked_even_on_a_remote_store(ray_local, tmp_path, marks):
    store = RefusingStorage(tmp_path / "s", fsync=False)
    result = run(pipeline(marks), storage=store, progress=False, write_behind=False).raise_for_status()
    assert all(not r.attempt_history[-1].confirmed and r.attempt_history[-1].bytes_written > 0
               for r in result.nodes.values())


@pytest.fixture
def short_patience(monkeypatch):
    monkeypatch.setattr(writeback, "CONFIRM_PATIENCE_S", 1.0)  # the driver gives up on a worker's write sooner


def test_a_checkpoint_that_never_arrives_is_written_by_the_driver(ray_local, tmp_path, marks, short_patience):
    store = RefusingStorage(tmp_path / "s", refuse="workers", fsync=False)
    result = run(pipeline(marks), storage=store, progress=False).raise_for_status()
    written = run_checkpoints(store, "lay", result.run_id)
    assert set(written) == set(result.nodes)
    assert {m.pid for m in written.values()} == {r.attempt_history[-1].worker_pid for r in result.nodes.values()}
    assert result["total"] == {"sum": 6, "rows": 3}


def test_a_checkpoint_that_cannot_be_written_fails_its_node_clearly(ray_local, tmp_path, marks, short_patience):
    store = RefusingStorage(tmp_path / "s", refuse="all", fsync=False)
    result = run(pipeline(marks), storage=store, progress=False)
    assert {r.status for r in result.nodes.values()} == {NodeStatus.FAILED}
    for rec in result.nodes.values():
        assert rec.error.kind == "storage" and "StorageUnavailableError" in rec.error.type
        assert "refused for the test" in rec.error.message
    with pytest.raises(Exception, match="StorageUnavailableError"):
        result.raise_for_status()


def test_write_behind_stores_the_value_as_returned_not_as_a_consumer_changed_it(tmp_path):
    from odibi_ray import DAG, Node

    store = RefusingStorage(tmp_path / "s", delay_s=0.05, fsync=False)
    dag = DAG("mut")
    dag.add_node(Node("prod", _make_list))
    dag.add_node(Node("cons", _append_in_place, inputs={"items": "prod"}))
    run(dag, backend="local", storage=store, progress=False, write_behind=True).raise_for_status()
    again = run(dag, backend="local", storage=store, progress=False, write_behind=True).raise_for_status()
    assert again.nodes["prod"].status is NodeStatus.CACHED and again["prod"] == {"items": [1]}


def _make_list():
    return {"items": [1]}


def _append_in_place(items):
    items["items"].append(99)  # a consumer that changes its input in place (on the local backend: same object)
    return len(items["items"])


def test_a_damaged_object_at_a_pending_key_is_replaced_not_waited_on_forever(tmp_path, short_patience, marks):
    store = RefusingStorage(tmp_path / "s", fsync=False)
    first = run(pipeline(marks), backend="local", storage=store, progress=False).raise_for_status()
    key = layout.object_key("lay", first.nodes["total"].cache_key)
    data = store.get(key)
    store.delete(key)
    store.put(key, data, {})  # no metadata: the plan calls it damaged; the node runs again
    store.refuse = "workers"  # ... and its worker's background write never lands
    store.driver_pid = -1  # every process counts as a worker (local backend: the driver's own threads)
    again = run(pipeline(marks), backend="local", storage=store, progress=False, write_behind=True)
    assert again.nodes["total"].status is NodeStatus.FAILED  # the driver's own write is refused too: it fails
    assert again.stats["corrupt_objects"] == 1 and "refused for the test" in again.nodes["total"].error.message


def test_a_node_whose_checkpoint_is_unconfirmed_is_not_trusted_by_a_resume(tmp_path, marks):
    from odibi_ray.checkpoint.plan import plan_checkpoints
    from odibi_ray.checkpoint.runs import PriorNode, node_entries

    store = RefusingStorage(tmp_path / "s", fsync=False)
    dag = pipeline(marks)
    result = run(dag, backend="local", storage=store, progress=False).raise_for_status()
    entries = node_entries(result.nodes, {"total"})  # as a heartbeat writes it while total's write is pending
    assert entries["total"]["status"] == "computed" and entries["double"]["status"] == "succeeded"
    store.delete(layout.object_key("lay", result.nodes["total"].cache_key))  # the write never landed
    prior = {n: PriorNode(e["status"], e["key"]) for n, e in entries.items()}
    order = [n for level in dag.levels() for n in level]
    plan = plan_checkpoints(dag, order, store, result.run_id, prior)
    assert set(plan.reuse) == {"source", "double"}  # total is looked up, not trusted: it runs again


def _target(store, node="n", ttl_s=None):
    from odibi_ray.checkpoint.store import OutputTarget

    return OutputTarget(store, "unit", "r1", node, "ab" * 32, ttl_s, write_behind=True)


def test_confirmation_turns_a_lost_value_into_the_nodes_error_not_an_escape(tmp_path, short_patience):
    from odibi_ray.checkpoint.store import Provenance
    from odibi_ray.storage.local import LocalStorage

    def lost(node):
        raise RuntimeError("the value went with its Ray node")

    out = writeback.confirm_writes({"n": _target(LocalStorage(tmp_path / "s"))}, {"n": Provenance(1, "x", 1, 0, 0)},
                                   lost)
    assert isinstance(out["n"].error, RuntimeError) and out["n"].bytes_written == 0


def test_an_expired_object_at_a_pending_key_does_not_confirm_the_write(tmp_path, short_patience):
    import time

    from odibi_ray.checkpoint.store import Provenance, write_output
    from odibi_ray.storage.local import LocalStorage

    store = LocalStorage(tmp_path / "s")
    old = _target(store, ttl_s=0.01)
    write_output(old, "stale", Provenance(1, "x", 1, 0, 0))  # another run's object, expired by now
    time.sleep(0.05)
    out = writeback.confirm_writes({"n": _target(store)}, {"n": Provenance(2, "x", 1, 0, 0)}, lambda n: "fresh")
    assert out["n"].error is None and out["n"].bytes_written > 0  # the driver wrote it: the stale one replaced
    meta = CheckpointMeta.from_info(store.head(_target(store).object_key))
    assert meta.attempt == 2 and meta.expires_at is None
