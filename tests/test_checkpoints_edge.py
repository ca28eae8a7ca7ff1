"""Edge cases of cache keys, reuse and resume found in review: each test pins one defect that was fixed."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import pytest

from odibi_ray import DAG, CachePolicy, Node, NodeStatus, OutputUnavailableError, RetryPolicy, run
from odibi_ray.checkpoint import layout
from odibi_ray.checkpoint.keys import canonical
from odibi_ray.checkpoint.liveness import DriverLease
from odibi_ray.checkpoint.store import RunManifest
from odibi_ray.errors import PreconditionFailedError, RunTakenOverError
from odibi_ray.storage.local import LocalStorage

from .nodes import wait_for

SOURCE_VALUE = {"v": 1}


def read_source():
    return dict(SOURCE_VALUE)


def double_it(x):
    return x["v"] * 2


def two_nodes(name="edge"):
    dag = DAG(name)
    dag.add_node(Node("src", read_source))
    dag.add_node(Node("dbl", double_it, inputs={"x": "src"}))
    return dag


def test_descendants_of_an_uncached_node_are_not_served_from_the_cache(local_storage, monkeypatch):
    dag = two_nodes()
    dag["src"].cache = False  # reads outside data: always runs
    assert run(dag, backend="local", storage=local_storage, progress=False)["dbl"] == 2
    monkeypatch.setitem(SOURCE_VALUE, "v", 100)
    again = run(dag, backend="local", storage=local_storage, progress=False)
    assert again.nodes["dbl"].status is NodeStatus.SUCCEEDED and again["dbl"] == 200


def test_the_nodes_own_version_wins_over_the_pipeline_default(local_storage):
    dag = two_nodes()
    dag.cache = CachePolicy(version="pipeline-v1")
    run(dag, backend="local", storage=local_storage, progress=False)
    dag["dbl"].version = "2"
    again = run(dag, backend="local", storage=local_storage, progress=False)
    assert again.nodes["dbl"].status is NodeStatus.SUCCEEDED and again.nodes["src"].status is NodeStatus.CACHED


def make_scaler(k):
    def scale(x):
        return x["v"] * k
    return scale


def test_a_changed_closure_value_changes_the_key(local_storage):
    for k, expected in ((1, 1), (5, 5)):
        dag = DAG("closure")
        dag.add_node(Node("src", read_source))
        dag.add_node(Node("scaled", make_scaler(k), inputs={"x": "src"}))
        assert run(dag, backend="local", storage=local_storage, progress=False)["scaled"] == expected


def test_params_keys_tell_tuples_from_lists_and_int_from_str_keys():
    assert canonical((1, 2)) != canonical([1, 2])
    assert canonical({1: "a"}) != canonical({"1": "a"})
    assert canonical({"b": 1, "a": 2}) == canonical({"a": 2, "b": 1})


def test_params_keys_are_stable_across_processes():
    code = "from odibi_ray.checkpoint.keys import canonical; print(canonical({'s': {'x', 'y', 'z'}, 't': (1, 'a')}))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(seed), "PATH": "/usr/bin"}).stdout for seed in (1, 2, 3)}
    assert len(outs) == 1


def test_timed_out_local_attempt_never_checkpoints_its_late_result(local_storage, tmp_path):
    release = tmp_path / "release"

    def slow_then_fast():
        from odibi_ray import current_context

        if current_context().attempt == 1:
            wait_for(release, timeout=30)
            return "late value"
        return "on time"

    dag = DAG("late")
    dag.add_node(Node("n", slow_then_fast, timeout_s=0.3, retry=RetryPolicy(max_attempts=2, delay_s=0), version="1"))
    result = run(dag, backend="local", storage=local_storage, progress=False).raise_for_status()
    release.write_text("1")
    time.sleep(0.5)  # the abandoned thread returns now: it must not overwrite the checkpoint
    assert result["n"] == "on time"
    assert run(dag, backend="local", storage=local_storage, progress=False)["n"] == "on time"


def test_undecodable_stored_input_is_a_miss(local_storage):
    first = run(two_nodes(), backend="local", storage=local_storage, progress=False)
    key = layout.object_key("edge", first.nodes["src"].cache_key)
    bad = b"not json at all"
    meta = dict(local_storage.head(key).metadata, sha256=hashlib.sha256(bad).hexdigest(), size=str(len(bad)))
    local_storage.put(key, bad, meta)  # intact by its SHA-256, but the codec cannot read it
    dag = two_nodes()
    dag["dbl"].version = "2"
    again = run(dag, backend="local", storage=local_storage, progress=False).raise_for_status()
    assert again["dbl"] == 2 and again.nodes["src"].status is NodeStatus.SUCCEEDED
    assert again.stats["corrupt_objects"] == 1


def _rot(store, key):
    """Silent bit rot: every byte flipped, size, metadata and mtime as they were (the plan cannot see it)."""
    data, info = store.get_with_info(key)
    store.put(key, bytes(b ^ 1 for b in data), info.metadata)


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_a_rotten_cached_leaf_asked_for_is_counted_and_computed_again(local_storage, backend, request):
    if backend == "ray":
        request.getfixturevalue("ray_local")
    first = run(two_nodes(), backend=backend, storage=local_storage, progress=False)
    key = layout.object_key("edge", first.nodes["dbl"].cache_key)
    _rot(local_storage, key)
    again = run(two_nodes(), backend=backend, storage=local_storage, progress=False)
    assert again.nodes["dbl"].status is NodeStatus.CACHED and again.stats["corrupt_objects"] == 0
    assert again["dbl"] == 2  # the right value, computed again on the backend
    assert again.nodes["dbl"].status is NodeStatus.SUCCEEDED and "unusable" in again.nodes["dbl"].reason
    assert again.nodes["src"].status is NodeStatus.CACHED and again.stats["corrupt_objects"] == 1
    assert run(two_nodes(), backend=backend, storage=local_storage, progress=False)["dbl"] == 2
    assert local_storage.get(key) == b"2"  # repaired in storage by the recomputation's worker


def test_a_rotten_leaf_that_cannot_be_computed_again_is_a_clear_error(local_storage, monkeypatch):
    first = run(two_nodes(), backend="local", storage=local_storage, progress=False)
    again = run(two_nodes(), backend="local", storage=local_storage, progress=False)
    _rot(local_storage, layout.object_key("edge", first.nodes["dbl"].cache_key))
    local_storage.delete(layout.object_key("edge", first.nodes["src"].cache_key))  # src must run again too
    monkeypatch.setitem(SOURCE_VALUE, "v", None)  # ... and now gives what dbl cannot double
    with pytest.raises(OutputUnavailableError, match="was unusable .* computing it again failed .*TypeError"):
        again["dbl"]
    assert again.nodes["dbl"].status is NodeStatus.FAILED and again.stats["corrupt_objects"] == 2


def test_two_drivers_taking_over_one_run_exactly_one_wins(local_storage):
    RunManifest(local_storage, "p", "r1").create({"started_at": 1.0, "driver": {"host": "gone", "pid": 1},
                                                  "updated_at": 1.0})
    a, b = RunManifest(local_storage, "p", "r1"), RunManifest(local_storage, "p", "r1")
    body_a, checked_a = a.read()
    body_b, checked_b = b.read()
    lease_a, lease_b = DriverLease(), DriverLease()
    try:
        a.take_over(checked_a, body_a, lease_a, status="running")
        with pytest.raises(PreconditionFailedError):
            b.take_over(checked_b, body_b, lease_b, status="running")
        assert json.loads(local_storage.get(layout.manifest_key("p", "r1")))["driver"] == lease_a.identity
    finally:
        lease_a.release()
        lease_b.release()
    old = RunManifest(local_storage, "p", "r1")
    old.owner = {"host": "gone", "pid": 1}  # the driver that lost the run
    with pytest.raises(RunTakenOverError, match="taken over"):
        old.update(status="failed")


class RecordingStorage(LocalStorage):
    """A real LocalStorage that also notes the order of its puts (in a file: workers are other processes)."""

    def put(self, key, data, metadata=None, **kw):
        info = super().put(key, data, metadata, **kw)
        with open(f"{self.root}.order", "a") as f:
            f.write(key + "\n")
        return info


def test_each_node_costs_its_worker_one_put(ray_local, tmp_path):
    store = RecordingStorage(tmp_path / "rec")
    result = run(two_nodes("order"), storage=store, progress=False).raise_for_status()
    order = (tmp_path / "rec.order").read_text().split()
    objects = sorted(layout.object_key("order", rec.cache_key) for rec in result.nodes.values())
    assert sorted(k for k in order if k.startswith("objects/")) == objects  # one put per node, nothing else
    assert {k for k in order if not k.startswith("objects/")} == {layout.manifest_key("order", result.run_id),
                                                                   "odibi-layout.json"}  # the driver's writes
