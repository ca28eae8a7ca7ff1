"""Checkpoints, the content-addressed cache and resume, on a real folder and on Azurite (Blob protocol)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from odibi_ray import DAG, CachePolicy, Node, NodeStatus, run
from odibi_ray.checkpoint import layout
from odibi_ray.checkpoint.objectmeta import CheckpointMeta
from odibi_ray.checkpoint.store import RunManifest, effective_status, list_runs

from . import cp_nodes
from .cp_nodes import ran


def pipeline(marks, name="sales", total_scale=1, total_version=None, switch=None):
    m = str(marks)
    dag = DAG(name)
    dag.add_node(Node("source", cp_nodes.source, params={"marks": m}))
    dag.add_node(Node("double", cp_nodes.double, inputs={"table": "source"}, params={"marks": m}))
    dag.add_node(Node("total", cp_nodes.total, inputs={"table": "double"}, params={"marks": m, "scale": total_scale},
                      version=total_version))
    dag.add_node(Node("as_bytes", cp_nodes.as_bytes, inputs={"summary": "total"}, params={"marks": m}))
    if switch is not None:
        dag.add_node(Node("flaky", cp_nodes.flaky_until_fixed, inputs={"summary": "total"},
                          params={"marks": m, "switch": str(switch)}))
    return dag


def statuses(result):
    return {n: r.status for n, r in result.nodes.items()}


def test_rerun_of_unchanged_pipeline_runs_nothing_and_loads_equal_outputs(store, backend, marks):
    first = run(pipeline(marks), backend=backend, storage=store, progress=False).raise_for_status()
    assert ran(marks) == {"source": 1, "double": 1, "total": 1, "as_bytes": 1}
    second = run(pipeline(marks), backend=backend, storage=store, progress=False).raise_for_status()
    assert set(statuses(second).values()) == {NodeStatus.CACHED}
    assert all(r.attempts == 0 for r in second.nodes.values())  # zero tasks submitted
    assert ran(marks) == {"source": 1, "double": 1, "total": 1, "as_bytes": 1}
    for name in ("source", "double", "total", "as_bytes"):
        assert (second[name] == first[name] if not isinstance(first[name], pa.Table)
                else second[name].equals(first[name]))
    assert second["as_bytes"] == b"6" and second["total"] == {"sum": 6, "rows": 3}
    assert second.nodes["total"].cache_key == first.nodes["total"].cache_key


def test_changing_code_or_params_recomputes_that_node_and_descendants_only(store, marks):
    run(pipeline(marks), backend="local", storage=store, progress=False).raise_for_status()
    changed = run(pipeline(marks, total_scale=10), backend="local", storage=store, progress=False).raise_for_status()
    assert statuses(changed) == {"source": NodeStatus.CACHED, "double": NodeStatus.CACHED,
                                 "total": NodeStatus.SUCCEEDED, "as_bytes": NodeStatus.SUCCEEDED}
    assert changed["as_bytes"] == b"60"
    versioned = run(pipeline(marks, total_scale=10, total_version="v2"), backend="local", storage=store,
                    progress=False).raise_for_status()
    # a new version reruns `total`; it writes the output it had before, so `as_bytes` is reused (early cutoff)
    assert [n for n, s in statuses(versioned).items() if s is NodeStatus.SUCCEEDED] == ["total"]
    assert versioned.nodes["as_bytes"].status is NodeStatus.CACHED and versioned["as_bytes"] == b"60"
    assert versioned.nodes["as_bytes"].reason == "output reused: unchanged output of total"
    assert versioned.nodes["total"].reason == "unchanged output: descendants reused"
    assert ran(marks) == {"source": 1, "double": 1, "total": 3, "as_bytes": 2}


def test_inputs_of_cached_nodes_are_read_by_the_worker_not_the_driver(ray_local, local_storage, marks, monkeypatch):
    run(pipeline(marks), storage=local_storage, progress=False).raise_for_status()
    from odibi_ray.checkpoint import store as store_module

    driver_reads = []
    real = store_module.read_output
    monkeypatch.setattr(store_module, "read_output", lambda *a: driver_reads.append(a) or real(*a))
    result = run(pipeline(marks, total_scale=2), storage=local_storage, progress=False).raise_for_status()
    assert result.nodes["total"].status is NodeStatus.SUCCEEDED  # ran on Ray, reading `double` from storage
    assert driver_reads == []  # the driver did not download it
    assert result["total"]["sum"] == 12
    assert len(driver_reads) == 0  # total ran in this run: its output comes from Ray, not storage
    assert result["double"].num_rows == 3 and len(driver_reads) == 1  # a cached output asked for: read then


def test_resume_after_a_fixed_failure_recomputes_only_what_is_missing(store, backend, marks, tmp_path):
    switch = tmp_path / "fixed"
    failed = run(pipeline(marks, switch=switch), backend=backend, storage=store, progress=False)
    assert failed.nodes["flaky"].status is NodeStatus.FAILED
    runs = list_runs(store, "sales")
    assert runs[0]["run_id"] == failed.run_id and runs[0]["status"] == "failed"
    switch.write_text("fixed")
    resumed = run(pipeline(marks, switch=switch), backend=backend, storage=store, resume="latest",
                  progress=False).raise_for_status()
    assert resumed.run_id == failed.run_id
    assert statuses(resumed) == {"source": NodeStatus.RESUMED, "double": NodeStatus.RESUMED,
                                 "total": NodeStatus.RESUMED, "as_bytes": NodeStatus.RESUMED,
                                 "flaky": NodeStatus.SUCCEEDED}
    assert ran(marks) == {"source": 1, "double": 1, "total": 1, "as_bytes": 1, "flaky": 2}
    body = json.loads(store.get(layout.manifest_key("sales", failed.run_id)))
    assert body["status"] == "succeeded" and body["resumes"] == 1


def test_resume_of_a_driver_killed_with_sigkill(local_storage, marks, tmp_path):
    started, go = tmp_path / "started", tmp_path / "go"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from odibi_ray import DAG, Node, run
        from odibi_ray.storage import open_storage
        from tests import cp_nodes
        from tests.test_checkpoints import pipeline
        from pathlib import Path
        dag = pipeline(Path({str(marks)!r}))
        dag.add_node(Node("wait_for_go", cp_nodes.wait_for_go, inputs={{"x": "as_bytes"}},
                          params={{"marks": {str(marks)!r}, "started": {str(started)!r}, "go": {str(go)!r}}}))
        run(dag, backend="local", storage=open_storage({local_storage.root!r}), progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "driver died or never got there"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    [meta] = list_runs(local_storage, "sales")
    body = json.loads(local_storage.get(layout.manifest_key("sales", meta["run_id"])))
    assert body["status"] == "running" and effective_status(body) == "abandoned"
    before = ran(marks)
    assert before == {"source": 1, "double": 1, "total": 1, "as_bytes": 1, "wait_for_go": 1}
    go.write_text("go")
    dag = pipeline(marks)
    dag.add_node(Node("wait_for_go", cp_nodes.wait_for_go, inputs={"x": "as_bytes"},
                      params={"marks": str(marks), "started": str(started), "go": str(go)}))
    resumed = run(dag, backend="local", storage=local_storage, resume="latest", progress=False).raise_for_status()
    assert resumed.run_id == meta["run_id"]
    assert [n for n, s in statuses(resumed).items() if s is not NodeStatus.RESUMED] == ["wait_for_go"]
    assert ran(marks) == dict(before, wait_for_go=2)  # nothing with a complete record ran again
    assert resumed["wait_for_go"] == b"6"
    assert json.loads(local_storage.get(layout.manifest_key("sales", meta["run_id"])))["status"] == "succeeded"


def test_a_running_run_cannot_be_resumed_by_another_driver(local_storage, marks):
    from odibi_ray import ExecutionError
    from odibi_ray.checkpoint.store import RunManifest

    RunManifest(local_storage, "sales", "live-run").create({"started_at": time.time(), "updated_at": time.time(),
                                                           "driver": {"host": "elsewhere", "pid": 1}})
    with pytest.raises(ExecutionError, match="still running"):
        run(pipeline(marks), backend="local", storage=local_storage, resume="live-run", progress=False)
    with pytest.raises(ExecutionError, match="no run 'nope'"):
        run(pipeline(marks), backend="local", storage=local_storage, resume="nope", progress=False)


def _corrupt(store, key: str, truncate: bool) -> None:
    data, info = store.get_with_info(key)
    bad = data[: len(data) // 2] if truncate else bytes(b ^ 0xFF for b in data)
    store.put(key, bad, info.metadata)  # metadata (and its SHA-256) kept: only the bytes are wrong


@pytest.mark.parametrize("truncate", [False, True])
def test_corrupt_or_truncated_object_is_a_miss_recomputed_never_a_wrong_value(store, backend, marks, truncate):
    first = run(pipeline(marks), backend=backend, storage=store, progress=False).raise_for_status()
    _corrupt(store, layout.object_key("sales", first.nodes["double"].cache_key), truncate)
    again = run(pipeline(marks, total_scale=3), backend=backend, storage=store, progress=False).raise_for_status()
    assert again["total"] == {"sum": 18, "rows": 3}
    assert again.nodes["double"].status is NodeStatus.SUCCEEDED  # recomputed, not trusted
    assert again.stats["corrupt_objects"] == 1
    assert ran(marks)["double"] == 2
    assert run(pipeline(marks, total_scale=3), backend=backend, storage=store,
               progress=False).raise_for_status().nodes["double"].status is NodeStatus.CACHED  # repaired


def test_resume_reuses_an_intact_object_the_manifest_never_heard_of(local_storage, marks, tmp_path):
    switch = tmp_path / "fixed"
    dag = pipeline(marks, switch=switch)
    dag.cache = False  # only resume may reuse outputs
    failed = run(dag, backend="local", storage=local_storage, progress=False)
    manifest = RunManifest(local_storage, "sales", failed.run_id)
    body, _ = manifest.read()
    body["nodes"]["double"]["status"] = "running"  # as if the driver died before it wrote that double finished
    manifest.owner = None
    manifest.update(nodes=body["nodes"])
    switch.write_text("1")
    resumed = run(dag, backend="local", storage=local_storage, resume=failed.run_id, progress=False)
    assert resumed.nodes["flaky"].status is NodeStatus.SUCCEEDED
    assert resumed.nodes["double"].status is NodeStatus.RESUMED
    assert ran(marks)["double"] == 1  # its object (this run's, by its key) was enough


def test_two_runs_at_once_both_succeed_and_share_objects(store, marks):
    results, errors = [], []

    def go():
        try:
            results.append(run(pipeline(marks), backend="local", storage=store, progress=False).raise_for_status())
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and len(results) == 2
    assert results[0]["as_bytes"] == results[1]["as_bytes"] == b"6"
    objects = [i.key for i in store.list("objects/")]
    assert len(objects) == 4  # one object per node, whoever wrote it
    for r in results:
        for rec in r.nodes.values():
            assert layout.object_key("sales", rec.cache_key) in objects


def test_ttl_expired_entries_are_misses(store, marks):
    dag = pipeline(marks)
    dag["source"].cache = CachePolicy(ttl_s=0.5)
    run(dag, backend="local", storage=store, progress=False).raise_for_status()
    time.sleep(0.7)
    again = run(dag, backend="local", storage=store, progress=False).raise_for_status()
    assert again.nodes["source"].status is NodeStatus.SUCCEEDED
    assert again.nodes["double"].status is NodeStatus.CACHED  # its key did not change


def test_cache_false_runs_every_time_but_checkpoints_for_resume(local_storage, marks):
    dag = pipeline(marks, name="nocache")
    dag.cache = False
    run(dag, backend="local", storage=local_storage, progress=False).raise_for_status()
    again = run(dag, backend="local", storage=local_storage, progress=False).raise_for_status()
    assert set(statuses(again).values()) == {NodeStatus.SUCCEEDED}
    assert ran(marks)["source"] == 2


def test_each_node_is_one_object_written_by_its_worker_saying_what_made_it(ray_local, local_storage, marks):
    result = run(pipeline(marks), storage=local_storage, progress=False).raise_for_status()
    keys = {i.key for i in local_storage.list()}
    assert keys == {layout.object_key("sales", rec.cache_key) for rec in result.nodes.values()} | {
        layout.manifest_key("sales", result.run_id), "odibi-layout.json"}  # no record per node
    for name, rec in result.nodes.items():
        meta = CheckpointMeta.from_info(local_storage.head(layout.object_key("sales", rec.cache_key)))
        assert (meta.node, meta.pipeline, meta.run_id, meta.attempt) == (name, "sales", result.run_id, 1)
        assert meta.ray_node_id == rec.worker_node_id and meta.pid == rec.attempt_history[-1].worker_pid != os.getpid()
        assert meta.started_at <= meta.ended_at <= meta.created and meta.layout == layout.LAYOUT_VERSION
    body, _ = RunManifest(local_storage, "sales", result.run_id).read()
    assert {n: (e["status"], e["attempts"], e["worker"]) for n, e in body["nodes"].items()} == {
        n: ("succeeded", 1, rec.worker_node_id) for n, rec in result.nodes.items()}


def test_pandas_and_bytes_outputs_round_trip_through_the_cache(local_storage, marks):
    dag = DAG("codecs")
    dag.add_node(Node("frame", lambda: pd.DataFrame({"a": [1, None], "b": ["x", None]}, index=[5, 6]), version="1"))
    dag.add_node(Node("empty", lambda: pa.table({"a": pa.array([], pa.int64())}), version="1"))
    dag.add_node(Node("blob", lambda: b"\x00\x01", version="1"))
    dag.add_node(Node("obj", lambda: (1, {2, 3}), version="1"))
    first = run(dag, backend="local", storage=local_storage, progress=False).raise_for_status()
    second = run(dag, backend="local", storage=local_storage, progress=False).raise_for_status()
    assert set(statuses(second).values()) == {NodeStatus.CACHED}
    pd.testing.assert_frame_equal(second["frame"], first["frame"])
    assert second["empty"].equals(first["empty"]) and second["empty"].num_rows == 0
    assert second["blob"] == b"\x00\x01" and second["obj"] == (1, {2, 3})


def test_a_checkpoint_folder_given_as_a_path_is_written_without_fsync_unless_asked(marks, tmp_path, monkeypatch):
    """Checkpoints are verified by SHA-256 on every read, so run(storage="folder") skips the per-write fsync
    (a write lost to a power cut is a miss); storage_options={"fsync": True} restores it."""
    from odibi_ray.execution.runner import open_checkpoint_storage

    assert open_checkpoint_storage(str(tmp_path / "a")).fsync is False
    assert open_checkpoint_storage(str(tmp_path / "a"), {"fsync": True}).fsync is True
    assert open_checkpoint_storage((tmp_path / "a").as_uri()).fsync is False
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])  # local backend: in-process
    first = run(pipeline(marks), backend="local", storage=str(tmp_path / "nosync"), progress=False)
    assert first.succeeded and synced == []
    second = run(pipeline(marks), backend="local", storage=str(tmp_path / "nosync"), progress=False)
    assert all(r.status is NodeStatus.CACHED for r in second.nodes.values())  # unsynced checkpoints are read back
    durable = run(pipeline(marks), backend="local", storage=str(tmp_path / "sync"), storage_options={"fsync": True},
                  progress=False)
    assert durable.succeeded and len(synced) >= 2 * len(durable.nodes)
