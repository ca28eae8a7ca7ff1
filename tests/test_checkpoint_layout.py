"""Layout 2 of checkpoint storage: one object per node, planning that reads only the pipeline's own objects,
the manifest as the record of what a run did, and stores written by layout 1 (still read, never written)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from odibi_ray import DAG, ExecutionError, Node, NodeStatus, run
from odibi_ray.checkpoint import layout, legacy, lookup, run_checkpoints
from odibi_ray.checkpoint.objectmeta import CheckpointMeta
from odibi_ray.checkpoint.store import RunManifest
from odibi_ray.storage.local import LocalStorage

from . import cp_nodes
from .cp_nodes import ran


def pipeline(marks, name="lay", switch=None):
    m = str(marks)
    dag = DAG(name)
    dag.add_node(Node("source", cp_nodes.source, params={"marks": m}))
    dag.add_node(Node("double", cp_nodes.double, inputs={"table": "source"}, params={"marks": m}))
    dag.add_node(Node("total", cp_nodes.total, inputs={"table": "double"}, params={"marks": m}))
    if switch is not None:
        dag.add_node(Node("flaky", cp_nodes.flaky_until_fixed, inputs={"summary": "total"},
                          params={"marks": m, "switch": str(switch)}))
    return dag


class CountingStorage(LocalStorage):
    """A real LocalStorage that notes every listing prefix (driver side only: the plan lists in the driver)."""

    listed: list[str] = []

    def list(self, prefix="", *, with_metadata=False):
        CountingStorage.listed.append(prefix)
        return super().list(prefix, with_metadata=with_metadata)


# --- planning reads the pipeline's objects only ---------------------------------------------------------------


def test_plan_never_reads_other_pipelines_objects(tmp_path, marks):
    store = CountingStorage(tmp_path / "s", fsync=False)
    for i in range(300):  # another pipeline's outputs, many more than this one has
        store.put(layout.object_key("other", f"{i:064x}"), b"x", {"sha256": "0" * 64, "size": "1", "codec": "raw"})
    CountingStorage.listed = []
    first = run(pipeline(marks), backend="local", storage=store, progress=False).raise_for_status()
    again = run(pipeline(marks), backend="local", storage=store, progress=False).raise_for_status()
    assert {r.status for r in again.nodes.values()} == {NodeStatus.CACHED} and again["total"] == first["total"]
    assert all(not p.startswith("objects/other") and p != "objects/" for p in CountingStorage.listed[1:]), \
        CountingStorage.listed  # (the very first run may peek at objects/ once, to write the layout marker)


def test_remote_plan_lists_the_pipeline_prefix_then_falls_back_to_lookups(azurite_storage, marks, monkeypatch):
    dag = pipeline(marks)
    result = run(dag, backend="local", storage=azurite_storage, progress=False).raise_for_status()
    keys = {n: layout.object_key("lay", rec.cache_key) for n, rec in result.nodes.items()}
    monkeypatch.setattr(lookup, "HEAD_BELOW", 1)  # three keys: a listing, as for a big DAG
    assert set(lookup.find_objects(azurite_storage, "lay", keys)) == set(keys)
    heads: list[str] = []
    real_head = type(azurite_storage).head
    monkeypatch.setattr(type(azurite_storage), "head", lambda self, key: heads.append(key) or real_head(self, key))
    assert heads == []  # the listing was enough
    monkeypatch.setattr(lookup, "LIST_FLOOR", 1)
    monkeypatch.setattr(lookup, "LIST_FACTOR", 0)  # the pipeline "has too many objects": look each key up
    found = lookup.find_objects(azurite_storage, "lay", dict(keys, ghost=layout.object_key("lay", "ab" * 32)))
    assert set(found) == set(keys)
    assert sorted(heads) == sorted(list(keys.values()) + [layout.object_key("lay", "ab" * 32)])


# --- the manifest records what the run did ------------------------------------------------------------------


def test_the_manifest_shows_node_states_while_the_run_goes(local_storage, marks, tmp_path, monkeypatch):
    from odibi_ray.execution import scheduler

    monkeypatch.setattr(scheduler, "HEARTBEAT_POLL_S", 0.02)
    started, release = tmp_path / "started", tmp_path / "go"
    dag = pipeline(marks)
    dag.add_node(Node("wait_for_go", cp_nodes.wait_for_go, inputs={"x": "total"},
                      params={"marks": str(marks), "started": str(started), "go": str(release)}))
    results: list = []
    thread = threading.Thread(target=lambda: results.append(run(dag, backend="local", storage=local_storage,
                                                                progress=False, heartbeat_s=0.05)))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # a few heartbeats
        rid = next(iter(local_storage.list("runs/lay/"))).key.split("/")[2]
        body, _ = RunManifest(local_storage, "lay", rid).read()
        live = {n: e["status"] for n, e in body["nodes"].items()}
        assert live == {"source": "succeeded", "double": "succeeded", "total": "succeeded", "wait_for_go": "running"}
        assert body["status"] == "running"
    finally:
        release.write_text("1")
        thread.join(60)
    body, _ = RunManifest(local_storage, "lay", results[0].run_id).read()
    assert {n: e["status"] for n, e in body["nodes"].items()} == dict.fromkeys(dag.nodes, "succeeded")
    assert body["status"] == "succeeded" and body["layout"] == layout.LAYOUT_VERSION


# --- layout 1 stores ------------------------------------------------------------------------------------------


def _as_layout1(store: LocalStorage, result) -> None:
    """Turn what a layout-2 run left into what layout 1 wrote: objects at objects/<k[:2]>/<k>, a record per
    succeeded node, a manifest without layout and node states, no marker."""
    for name, rec in result.nodes.items():
        key = layout.object_key(result.pipeline, rec.cache_key)
        if store.exists(key):
            data, info = store.get_with_info(key)
            meta = {k: info.metadata[k] for k in ("sha256", "size", "codec", "created", "expires_at")}
            store.put(layout.legacy_object_key(rec.cache_key), data, dict(meta, node=name))
            store.delete(key)
            if rec.status is NodeStatus.SUCCEEDED:
                store.put(f"{layout.legacy_records_prefix(result.pipeline, result.run_id)}{name}.json", b"{}",
                          {"status": "succeeded", "cache_key": rec.cache_key, "sha256": meta["sha256"]})
    manifest = RunManifest(store, result.pipeline, result.run_id)
    body, _ = manifest.read()
    body.pop("layout")
    body["nodes"] = {n: {"key": e["key"], "level": e["level"]} for n, e in body["nodes"].items()}
    store.put(manifest.key, json.dumps(body).encode(), {"status": body["status"],
                                                        "started_at": str(body["started_at"]),
                                                        "updated_at": str(body["updated_at"])})
    store.delete(layout.MARKER_KEY)
    legacy.forget_layouts()


def test_a_layout1_store_is_still_read_cached_and_resumed(tmp_path, marks):
    store = LocalStorage(tmp_path / "old", fsync=False)
    switch = tmp_path / "fixed"
    dag = pipeline(marks, switch=switch)
    dag.cache = False  # only resume may reuse outputs: the salted keys must be found at their layout-1 place
    failed = run(dag, backend="local", storage=store, progress=False)
    assert failed.nodes["flaky"].status is NodeStatus.FAILED
    _as_layout1(store, failed)
    switch.write_text("1")
    resumed = run(dag, backend="local", storage=store, resume="latest", progress=False).raise_for_status()
    assert {n: r.status for n, r in resumed.nodes.items()} == {
        "source": NodeStatus.RESUMED, "double": NodeStatus.RESUMED, "total": NodeStatus.RESUMED,
        "flaky": NodeStatus.SUCCEEDED}
    assert ran(marks) == {"source": 1, "double": 1, "total": 1, "flaky": 2}
    assert json.loads(store.get(layout.MARKER_KEY)) == {"layout": 2, "legacy": True}
    assert not any(k.key.count("/") == 2 and k.key.startswith("objects/") and k.key.endswith(resumed.nodes["flaky"]
                   .cache_key) for k in store.list("objects/"))  # the new output went to layout 2

    cached_store = LocalStorage(tmp_path / "old_cached", fsync=False)
    first = run(pipeline(marks, name="c"), backend="local", storage=cached_store, progress=False).raise_for_status()
    _as_layout1(cached_store, first)
    again = run(pipeline(marks, name="c"), backend="local", storage=cached_store, progress=False).raise_for_status()
    assert {r.status for r in again.nodes.values()} == {NodeStatus.CACHED} and again["total"] == first["total"]


def test_a_store_of_a_newer_layout_is_refused_in_one_line(tmp_path, marks):
    store = LocalStorage(tmp_path / "future")
    store.put(layout.MARKER_KEY, json.dumps({"layout": 99}).encode())
    legacy.forget_layouts()
    with pytest.raises(ExecutionError, match=r"layout 99, newer than this odibi_ray reads .*upgrade odibi_ray"):
        run(pipeline(marks), backend="local", storage=store, progress=False)
    assert ran(marks) == {}


def test_run_checkpoints_reads_back_what_each_worker_wrote(local_storage, marks):
    result = run(pipeline(marks), backend="local", storage=local_storage, progress=False).raise_for_status()
    written = run_checkpoints(local_storage, "lay", result.run_id)
    assert set(written) == set(result.nodes)
    assert all(m.run_id == result.run_id and m.attempt == 1 and m.ray_node_id == "local" for m in written.values())
    again = run(pipeline(marks), backend="local", storage=local_storage, progress=False)
    assert run_checkpoints(local_storage, "lay", again.run_id) == {}  # all cached: it wrote nothing


# --- resume trusts its manifest, and still never uses a missing or damaged object ---------------------------


class HeadCountingStorage(LocalStorage):
    """A real LocalStorage noting the keys the driver looks up (heads) and the prefixes it lists."""

    heads: list[str] = []

    def head(self, key):
        HeadCountingStorage.heads.append(key)
        return super().head(key)


def test_resume_looks_up_only_the_unfinished_nodes(tmp_path, marks):
    store = HeadCountingStorage(tmp_path / "s", fsync=False)
    switch = tmp_path / "fixed"
    dag = pipeline(marks, switch=switch)
    failed = run(dag, backend="local", storage=store, progress=False)
    switch.write_text("1")
    HeadCountingStorage.heads = []
    resumed = run(dag, backend="local", storage=store, resume=failed.run_id, progress=False).raise_for_status()
    assert {n: r.status for n, r in resumed.nodes.items()} == {
        "source": NodeStatus.RESUMED, "double": NodeStatus.RESUMED, "total": NodeStatus.RESUMED,
        "flaky": NodeStatus.SUCCEEDED}
    assert HeadCountingStorage.heads == [layout.object_key("lay", failed.nodes["flaky"].cache_key)]


@pytest.mark.parametrize("damage", ["purged", "rotten"])
def test_a_finished_nodes_object_gone_or_rotten_by_resume_is_computed_again(local_storage, marks, tmp_path, damage):
    switch = tmp_path / "fixed"
    dag = pipeline(marks, switch=switch)
    dag.cache = False
    failed = run(dag, backend="local", storage=local_storage, progress=False)
    key = layout.object_key("lay", failed.nodes["total"].cache_key)
    if damage == "purged":
        local_storage.delete(key)
    else:
        data, info = local_storage.get_with_info(key)
        local_storage.put(key, bytes(b ^ 1 for b in data), info.metadata)
    switch.write_text("1")
    resumed = run(dag, backend="local", storage=local_storage, resume=failed.run_id, progress=False)
    resumed.raise_for_status()
    assert resumed["flaky"] == 7 and resumed.nodes["total"].status is NodeStatus.SUCCEEDED
    assert resumed.stats["corrupt_objects"] == 1 and ran(marks)["total"] == 2
    assert resumed.nodes["double"].status is NodeStatus.RESUMED


def test_migrate_moves_a_layout1_store_into_layout2(tmp_path, marks):
    from typer.testing import CliRunner

    from odibi_ray.checkpoint.migrate import migrate
    from odibi_ray.cli import app

    store = HeadCountingStorage(tmp_path / "old", fsync=False)
    first = run(pipeline(marks, name="m"), backend="local", storage=store, progress=False).raise_for_status()
    _as_layout1(store, first)
    stray = layout.legacy_object_key("ee" * 32)  # named by no manifest: left where it is
    store.put(stray, b"1", {"sha256": "6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b",
                            "size": "1", "codec": "json", "created": "1", "expires_at": ""})
    legacy.store_layout(store)  # the first layout-2 engine marks it legacy
    dry = CliRunner().invoke(app, ["checkpoints", "migrate", "--storage", str(tmp_path / "old"), "--dry-run"])
    assert dry.exit_code == 0 and "would move 3 object(s)" in dry.output and "left 1" in dry.output
    report = migrate(store)
    assert sorted(report.moved) == sorted(layout.object_key("m", r.cache_key) for r in first.nodes.values())
    assert report.left == [stray]
    assert all(store.exists(k) for k in report.moved) and [i.key for i in store.list("objects/")] == sorted(
        report.moved + [stray])
    assert {CheckpointMeta.from_info(store.head(k)).pipeline for k in report.moved} == {"m"}
    store.delete(stray)
    assert migrate(store).moved == [] and json.loads(store.get(layout.MARKER_KEY))["legacy"] is False
    HeadCountingStorage.heads = []
    again = run(pipeline(marks, name="m"), backend="local", storage=store, progress=False).raise_for_status()
    assert {r.status for r in again.nodes.values()} == {NodeStatus.CACHED} and again["total"] == first["total"]
    assert all(h.count("/") == 3 for h in HeadCountingStorage.heads)  # no look-up at a layout-1 key


def test_migrate_leaves_what_it_cannot_move_and_the_store_stays_legacy(tmp_path):
    from odibi_ray.checkpoint.migrate import migrate

    store = LocalStorage(tmp_path / "old", fsync=False)
    key = "cd" * 32
    store.put(layout.legacy_object_key(key), b"rotten", {"sha256": "0" * 64, "size": "6", "codec": "raw",
                                                          "created": "1", "expires_at": ""})
    RunManifest(store, "p", "r1").create({"started_at": 1.0, "nodes": {"x": {"key": key, "level": 0}}})
    legacy.forget_layouts()
    legacy.store_layout(store)
    report = migrate(store)
    assert report.moved == [] and report.left == [layout.legacy_object_key(key)]
    assert store.exists(layout.legacy_object_key(key)) and json.loads(store.get(layout.MARKER_KEY))["legacy"]


def test_layout_keys_parse_back():
    """Every reader tells a store's keys apart through layout.py (no path spelled out elsewhere)."""
    key = "ab" + "0" * 62
    assert layout.parse_manifest_key(layout.manifest_key("etl", "r1")) == ("etl", "r1")
    assert layout.parse_manifest_key(layout.object_key("etl", key)) is None
    assert layout.parse_manifest_key("runs/etl/r1/nodes/n.json") is None
    assert layout.parse_legacy_record_key(layout.legacy_records_prefix("etl", "r1") + "n.json") == ("etl", "r1", "n")
    assert layout.parse_legacy_record_key(layout.manifest_key("etl", "r1")) is None
    assert layout.is_legacy_object_key(layout.legacy_object_key(key))
    assert not layout.is_legacy_object_key(layout.object_key("etl", key))
    assert (layout.cache_key_of(layout.object_key("etl", key))
            == layout.cache_key_of(layout.legacy_object_key(key)) == key)
