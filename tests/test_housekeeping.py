"""TTL purge and housekeeping of checkpoints, on a real folder (LocalStorage) and on Azurite (ADLSStorage),
with real pipeline runs (``backend="local"``). Expiry and age are judged with ``now=`` instead of sleeping."""

from __future__ import annotations

import threading
import time

import pytest

from odibi_ray import DAG, CachePolicy, Node, NodeStatus, run
from odibi_ray.checkpoint import layout
from odibi_ray.checkpoint.housekeeping import PurgeReport, keep_last_n, purge, purge_runs
from odibi_ray.checkpoint.store import list_runs

from . import cp_nodes
from .cp_nodes import ran

NODES = ("source", "double", "total", "as_bytes")
LATER = 3600.0  # seconds: "now" an hour from now, when every TTL of these tests has passed


def pipeline(marks, name="sales", scale=1, ttl=None, ttl_nodes=NODES):
    """source -> double -> total -> as_bytes; ``ttl`` (seconds) on the nodes in ``ttl_nodes``."""
    m = str(marks)
    dag = DAG(name)
    dag.add_node(Node("source", cp_nodes.source, params={"marks": m}))
    dag.add_node(Node("double", cp_nodes.double, inputs={"table": "source"}, params={"marks": m}))
    dag.add_node(Node("total", cp_nodes.total, inputs={"table": "double"}, params={"marks": m, "scale": scale}))
    dag.add_node(Node("as_bytes", cp_nodes.as_bytes, inputs={"summary": "total"}, params={"marks": m}))
    if ttl is not None:
        for n in ttl_nodes:
            dag[n].cache = CachePolicy(ttl_s=ttl)
    return dag


def go(dag, store, **kw):
    return run(dag, backend="local", storage=store, progress=False, **kw).raise_for_status()


def okeys(result, *nodes):
    """The object keys of ``nodes`` (all nodes if none given) in a run's result."""
    return {layout.object_key(result.pipeline, result.nodes[n].cache_key) for n in (nodes or result.nodes)}


def stored(store) -> dict:
    """Every stored output object: key -> ObjectInfo (with metadata)."""
    return {i.key: i for i in store.list("objects/", with_metadata=True)}


def ran_nodes(result):
    """The nodes a run really executed (the rest came from the cache)."""
    return {n for n, r in result.nodes.items() if r.status is NodeStatus.SUCCEEDED}


def test_bad_arguments_raise_precise_errors(local_storage):
    with pytest.raises(ValueError, match="at least one filter"):
        purge(local_storage)
    with pytest.raises(TypeError, match="Storage adapter"):
        purge("/tmp/folder", expired=True)
    with pytest.raises(ValueError, match="older_than_s must be a finite number >= 0"):
        purge(local_storage, older_than_s=-1)
    with pytest.raises(ValueError, match="older_than_s"):
        purge(local_storage, older_than_s=float("nan"))
    with pytest.raises(TypeError, match="older_than_s must be a number"):
        purge(local_storage, older_than_s="3600")
    with pytest.raises(ValueError, match="pipeline '../x' cannot be used"):
        purge(local_storage, pipeline="../x")
    with pytest.raises(TypeError, match="node must be a string"):
        purge(local_storage, node=3)
    with pytest.raises(ValueError, match="non-empty"):
        purge(local_storage, node="")
    with pytest.raises(ValueError, match="n must be >= 1"):
        keep_last_n(local_storage, "etl", 0)
    with pytest.raises(TypeError, match="n must be an integer"):
        keep_last_n(local_storage, "etl", True)
    with pytest.raises(ValueError, match="running run is never removed"):
        purge_runs(local_storage, "etl", status="running")
    assert purge(local_storage, expired=True) == PurgeReport()  # an empty storage: nothing to do
    assert keep_last_n(local_storage, "etl", 3) == PurgeReport()


def test_purge_expired_then_rerun_recomputes_exactly_the_purged_nodes(store, marks):
    first = go(pipeline(marks, ttl=60, ttl_nodes=("source", "total")), store)
    sizes = {k: i.size for k, i in stored(store).items()}
    assert set(sizes) == okeys(first)
    assert purge(store, expired=True).objects == []  # not expired yet on the real clock
    report = purge(store, expired=True, now=time.time() + LATER)
    assert set(report.objects) == okeys(first, "source", "total") and report.runs == []
    assert report.bytes == sum(sizes[k] for k in report.objects) > 0
    assert set(stored(store)) == okeys(first, "double", "as_bytes")
    again = go(pipeline(marks, ttl=60, ttl_nodes=("source", "total")), store)
    assert ran_nodes(again) == {"source", "total"}
    assert ran(marks) == {"source": 2, "double": 1, "total": 2, "as_bytes": 1}
    assert again["as_bytes"] == b"6"


def test_purge_by_age_and_filters_combine_with_and(store, marks):
    first = go(pipeline(marks), store)
    second = go(pipeline(marks, scale=10), store)  # source, double cached; total, as_bytes new objects
    meta = stored(store)
    old, new = okeys(first), okeys(second, "total", "as_bytes")
    created = {k: float(i.metadata["created"]) for k, i in meta.items()}
    assert max(created[k] for k in old) < min(created[k] for k in new)
    now = time.time()
    older_than_s = now - (max(created[k] for k in old) + min(created[k] for k in new)) / 2
    both = purge(store, older_than_s=older_than_s, node="total", now=now)
    assert both.objects == sorted(okeys(first, "total"))  # old AND of node "total": not the new total
    age = purge(store, older_than_s=older_than_s, now=now)
    assert set(age.objects) == okeys(first, "source", "double", "as_bytes")
    assert set(stored(store)) == new
    assert purge(store, older_than_s=LATER).objects == []  # nothing is an hour old
    again = go(pipeline(marks, scale=10), store)
    assert ran_nodes(again) == {"source", "double"}  # exactly the purged nodes; total/as_bytes keys unchanged
    assert again["as_bytes"] == b"60"


def test_purge_by_node(store, marks):
    first = go(pipeline(marks), store)
    report = purge(store, node="double")
    assert report.objects == sorted(okeys(first, "double"))
    assert set(stored(store)) == okeys(first, "source", "total", "as_bytes")
    again = go(pipeline(marks), store)
    assert ran_nodes(again) == {"double"}
    assert ran(marks) == {"source": 1, "double": 2, "total": 1, "as_bytes": 1}


def test_purge_by_pipeline_matches_the_exact_name(store, marks):
    etl = go(pipeline(marks, name="etl"), store)
    v2 = go(pipeline(marks, name="etl_v2"), store)
    assert not okeys(etl) & okeys(v2)  # objects live under their pipeline (and cache keys include its name)
    report = purge(store, pipeline="etl")
    assert set(report.objects) == okeys(etl) and report.kept == []
    assert set(stored(store)) == okeys(v2)
    assert [r["run_id"] for r in list_runs(store, "etl")] == [etl.run_id]  # run folders are not purge's business
    assert ran_nodes(go(pipeline(marks, name="etl_v2"), store)) == set()  # untouched: fully cached
    assert ran_nodes(go(pipeline(marks, name="etl"), store)) == {"source", "double", "total", "as_bytes"}


def test_keep_last_n_keeps_objects_a_kept_run_references(store, marks):
    r1 = go(pipeline(marks, name="etl"), store)
    r2 = go(pipeline(marks, name="etl", scale=10), store)  # source/double: r1's objects (cached, no record in r2)
    v2 = go(pipeline(marks, name="etl_v2"), store)
    orphan = "objects/ff/ff" + "0" * 62  # referenced by no run, not expired: not keep_last_n's business
    store.put(orphan, b"orphan", {"sha256": "0" * 64, "size": "6", "node": "ghost", "expires_at": ""})
    sizes = {k: i.size for k, i in stored(store).items()}
    report = keep_last_n(store, "etl", 1)
    assert report.runs == [f"etl/{r1.run_id}"]
    assert report.objects == sorted(okeys(r1, "total", "as_bytes"))  # the objects no remaining run references
    assert set(report.kept) == okeys(r1, "source", "double")  # r2 reused them (cached)
    assert report.bytes == sum(sizes[k] for k in okeys(r1, "total", "as_bytes")) > 0
    assert list(store.list(layout.run_prefix("etl", r1.run_id))) == []
    assert [r["run_id"] for r in list_runs(store, "etl")] == [r2.run_id]
    assert [r["run_id"] for r in list_runs(store, "etl_v2")] == [v2.run_id]
    assert set(stored(store)) == okeys(r2) | okeys(v2) | {orphan}
    assert keep_last_n(store, "etl", 1) == PurgeReport()  # idempotent
    assert ran_nodes(go(pipeline(marks, name="etl", scale=10), store)) == set()  # the kept run's outputs are there
    assert ran_nodes(go(pipeline(marks, name="etl"), store)) == {"total", "as_bytes"}  # exactly what was purged


def test_a_running_runs_objects_are_kept(store, marks, tmp_path):
    started, release = tmp_path / "started", tmp_path / "go"

    def live_dag():
        dag = pipeline(marks, ttl=60)
        dag.add_node(Node("wait_for_go", cp_nodes.wait_for_go, inputs={"x": "as_bytes"}, cache=CachePolicy(ttl_s=60),
                          params={"marks": str(marks), "started": str(started), "go": str(release)}))
        return dag

    old = go(pipeline(marks, ttl=60), store)
    live: list = []
    thread = threading.Thread(target=lambda: live.append(go(live_dag(), store)))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert thread.is_alive() and time.monotonic() < deadline, "the live run died or never got there"
            time.sleep(0.02)
        new = go(pipeline(marks, ttl=60), store)  # the newest run; the live one is older and still running
        [live_meta] = [r for r in list_runs(store, "sales") if r["status"] == "running"]
        kept = keep_last_n(store, "sales", 1)
        assert kept.runs == [f"sales/{old.run_id}"] and kept.objects == []
        assert {r["run_id"] for r in list_runs(store, "sales")} == {new.run_id, live_meta["run_id"]}
        assert purge_runs(store, "sales", dry_run=True).runs == [f"sales/{new.run_id}"]  # never the live one
        expired = purge(store, expired=True, now=time.time() + LATER)
        assert expired.objects == [] and set(expired.kept) == okeys(old)
        assert purge(store, node="source").objects == []
    finally:
        release.write_text("go")
        thread.join(60)
    assert live and live[0].run_id == live_meta["run_id"]
    assert ran_nodes(live[0]) == {"wait_for_go"}
    report = purge(store, expired=True, now=time.time() + LATER)  # the run ended: nothing protects them now
    assert set(report.objects) == okeys(live[0]) and report.kept == []
    assert stored(store) == {}


def test_dry_run_removes_nothing_and_reports_what_would_go(store, marks):
    r1 = go(pipeline(marks, ttl=60, ttl_nodes=("source",)), store)
    r2 = go(pipeline(marks, scale=10, ttl=60, ttl_nodes=("source",)), store)
    before = {i.key: i.etag for i in store.list("")}
    would_purge = purge(store, expired=True, now=time.time() + LATER, dry_run=True)
    would_keep = keep_last_n(store, "sales", 1, dry_run=True)
    would_runs = purge_runs(store, "sales", status="succeeded", dry_run=True)
    assert {i.key: i.etag for i in store.list("")} == before
    assert would_purge.dry_run and would_purge.objects == sorted(okeys(r1, "source")) and would_purge.bytes > 0
    assert would_keep.runs == [f"sales/{r1.run_id}"] and set(would_keep.objects) == okeys(r1, "total", "as_bytes")
    assert set(would_runs.runs) == {f"sales/{r1.run_id}", f"sales/{r2.run_id}"}
    assert set(would_runs.objects) == okeys(r1) | okeys(r2)
    done = keep_last_n(store, "sales", 1)
    assert (done.runs, done.objects, done.bytes, done.dry_run) == (would_keep.runs, would_keep.objects,
                                                                   would_keep.bytes, False)
    assert purge(store, expired=True, now=time.time() + LATER).objects == would_purge.objects


def test_purge_runs_by_status_and_age(store, marks, tmp_path):
    switch = tmp_path / "fixed"
    dag = pipeline(marks)
    dag.add_node(Node("flaky", cp_nodes.flaky_until_fixed, inputs={"summary": "total"},
                      params={"marks": str(marks), "switch": str(switch)}))
    failed = run(dag, backend="local", storage=store, progress=False)
    assert failed.nodes["flaky"].status is NodeStatus.FAILED
    switch.write_text("fixed")
    fixed = go(dag, store)  # a new run: the four nodes cached, flaky runs
    assert purge_runs(store, "sales", older_than_s=LATER).runs == []  # no run is an hour old
    report = purge_runs(store, "sales", status="failed")
    assert report.runs == [f"sales/{failed.run_id}"]
    assert report.objects == [] and set(report.kept) == okeys(fixed)  # the newer run uses them (same keys)
    assert [r["run_id"] for r in list_runs(store, "sales")] == [fixed.run_id]
    assert set(stored(store)) == okeys(fixed)
