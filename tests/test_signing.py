"""Signed checkpoints and ``allow_pickle`` (issue 14): a forged object planted in the store -- a pickle whose
metadata (codec, sha256, size) matches its bytes -- is never decoded when signing is on; the node recomputes and
the run gets the right value. The planted pickle is harmless: decoding it creates a file (``open(path, "w")``),
so a test sees whether code ran. On a real folder and on Azurite (Blob protocol), with real Ray where it matters."""

from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path

import pytest

from odibi_ray import DAG, Node, NodeStatus, run
from odibi_ray.cache import CloudCacheManager
from odibi_ray.checkpoint import layout
from odibi_ray.compat.checkpoint_manager import Checkpoint, CheckpointCorruptError, DistributedCheckpointManager
from odibi_ray.checkpoint.codecs import CodecError
from odibi_ray.checkpoint.trust import Signer
from odibi_ray.storage.local import LocalStorage

from . import cp_nodes
from .cp_nodes import ran

KEY = "a-signing-key-of-some-length-0001"
OLD_KEY = "an-older-signing-key-still-valid-02"


class Planted:
    """Decoding this pickle opens (creates) ``path``: proof that code from the store ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def plant(store, key: str, proof: Path) -> None:
    """Replace the object at ``key`` by a pickle with matching codec/sha256/size metadata (no valid signature)."""
    payload = pickle.dumps(Planted(str(proof)))
    info = store.head(key)
    md = dict(info.metadata)
    md.update(codec="pickle", sha256=hashlib.sha256(payload).hexdigest(), size=str(len(payload)))
    md.pop("sig", None)
    store.put(key, payload, md)


def pipeline(marks) -> DAG:
    m = str(marks)
    dag = DAG("signed")
    dag.add_node(Node("source", cp_nodes.source, params={"marks": m}))
    dag.add_node(Node("double", cp_nodes.double, inputs={"table": "source"}, params={"marks": m}))
    dag.add_node(Node("total", cp_nodes.total, inputs={"table": "double"}, params={"marks": m}))
    return dag


def object_key(result, node: str) -> str:
    return layout.object_key(result.pipeline, result.nodes[node].cache_key)


# --- runs ------------------------------------------------------------------------------------------------------


def test_a_forged_cached_object_is_never_decoded_and_the_node_recomputes(store, marks, tmp_path, ray_local):
    proof = tmp_path / "code-ran"
    first = run(pipeline(marks), storage=store, signing_key=KEY, progress=False).raise_for_status()
    assert all(store.head(object_key(first, n)).metadata.get("sig", "").startswith("v1:") for n in first.nodes)
    plant(store, object_key(first, "double"), proof)
    again = run(pipeline(marks), storage=store, signing_key=KEY, progress=False).raise_for_status()
    assert not proof.exists()
    assert {n: r.status.value for n, r in again.nodes.items()} == {"source": "cached", "double": "succeeded",
                                                                   "total": "cached"}
    assert again["total"] == {"sum": 6, "rows": 3} and again["double"].column("twice").to_pylist() == [0, 2, 4]
    assert again.stats["corrupt_objects"] == 1 and ran(marks)["double"] == 2
    third = run(pipeline(marks), storage=store, signing_key=KEY, progress=False)  # the forgery was written over
    assert {r.status for r in third.nodes.values()} == {NodeStatus.CACHED}


def test_a_forged_input_read_by_a_worker_and_a_forged_output_read_by_the_driver(local_storage, marks, tmp_path,
                                                                                ray_local):
    """Planted after the plan looked: the worker reading a stored input, and ``result[name]`` in the driver,
    refuse it (never decoded) and compute the node again."""
    proof = tmp_path / "code-ran"
    first = run(pipeline(marks), storage=local_storage, signing_key=KEY, progress=False).raise_for_status()
    cached = run(pipeline(marks), storage=local_storage, signing_key=KEY, progress=False)
    plant(local_storage, object_key(first, "total"), proof)  # after the plan: found when the driver reads it
    assert cached["total"] == {"sum": 6, "rows": 3} and not proof.exists()
    assert cached.stats["corrupt_objects"] == 1

    resumable = run(pipeline(marks), storage=local_storage, signing_key=KEY, progress=False,
                    refresh="total")  # a run whose manifest says source and double are done
    plant(local_storage, object_key(first, "double"), proof)  # trusted by resume without a look-up
    resumed = run(pipeline(marks), storage=local_storage, signing_key=KEY, progress=False,
                  resume=resumable.run_id, refresh="total").raise_for_status()
    assert not proof.exists() and resumed["total"] == {"sum": 6, "rows": 3}
    assert resumed.nodes["double"].status is NodeStatus.SUCCEEDED and resumed.stats["corrupt_objects"] >= 1


def test_unsigned_or_wrongly_signed_objects_are_misses_and_keys_rotate(local_storage, marks):
    run(pipeline(marks), backend="local", storage=local_storage, progress=False).raise_for_status()  # unsigned
    signed = run(pipeline(marks), backend="local", storage=local_storage, signing_key=OLD_KEY, progress=False)
    assert {r.status for r in signed.nodes.values()} == {NodeStatus.SUCCEEDED}  # unsigned: not trusted
    rotated = run(pipeline(marks), backend="local", storage=local_storage, signing_key=[KEY, OLD_KEY],
                  progress=False)
    assert {r.status for r in rotated.nodes.values()} == {NodeStatus.CACHED}  # the old key still verifies
    other = run(pipeline(marks), backend="local", storage=local_storage, signing_key="a-different-key-entirely-3",
                progress=False)
    assert {r.status for r in other.nodes.values()} == {NodeStatus.SUCCEEDED}
    assert ran(marks) == {"source": 3, "double": 3, "total": 3}


def test_signing_key_from_the_environment_never_appears_in_logs_manifests_or_reprs(local_storage, marks,
                                                                                   monkeypatch, caplog):
    monkeypatch.setenv("ODIBI_TEST_SIGNING", KEY)
    with caplog.at_level(logging.DEBUG):
        result = run(pipeline(marks), backend="local", storage=local_storage, signing_key="env://ODIBI_TEST_SIGNING",
                     progress=False).raise_for_status()
    signer = Signer("env://ODIBI_TEST_SIGNING")
    assert KEY not in repr(signer) and KEY.encode() not in pickle.dumps(signer)
    assert signer.verify(object_key(result, "total"), local_storage.head(object_key(result, "total")).metadata)
    texts = [caplog.text] + [local_storage.get(i.key).decode("latin-1") for i in local_storage.list("runs/")]
    assert all(KEY not in t for t in texts)


def test_remote_storage_without_a_key_says_once_that_checkpoints_are_unsigned(azurite_storage, marks, caplog):
    with caplog.at_level(logging.WARNING, logger="odibi_ray"):
        run(pipeline(marks), backend="local", storage=azurite_storage, progress=False).raise_for_status()
    said = [r for r in caplog.records if "are not signed" in r.getMessage()]
    assert len(said) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="odibi_ray"):
        run(pipeline(marks), backend="local", storage=azurite_storage, signing_key=KEY, progress=False)
    assert not [r for r in caplog.records if "are not signed" in r.getMessage()]


# --- allow_pickle ----------------------------------------------------------------------------------------------


def pair() -> tuple:
    return (1, 2)  # a tuple: only pickle keeps it a tuple


def first_of(t) -> int:
    return t[0]


def test_allow_pickle_off_fails_the_node_that_needs_pickle_and_never_decodes_a_stored_one(local_storage, tmp_path):
    dag = DAG("pickles")
    dag.add_node(Node("pair", pair))
    dag.add_node(Node("first", first_of, inputs={"t": "pair"}))
    refused = run(dag, backend="local", storage=local_storage, allow_pickle=False, progress=False)
    err = refused.nodes["pair"].error
    assert refused.nodes["pair"].status is NodeStatus.FAILED and err.type_name == "CodecError"
    assert "builtins.tuple" in err.message and "allow_pickle is off" in err.message and "arrow" in err.message
    assert refused.nodes["first"].status is NodeStatus.SKIPPED
    ok = run(dag, backend="local", storage=local_storage, progress=False).raise_for_status()  # pickles allowed
    proof = tmp_path / "code-ran"
    plant(local_storage, object_key(ok, "pair"), proof)
    again = run(dag, backend="local", storage=local_storage, allow_pickle=False, progress=False)
    assert not proof.exists() and again.nodes["pair"].status is NodeStatus.FAILED  # a miss, then refused again
    as_option = run(dag, backend="local", storage=str(tmp_path / "s2"), storage_options={"allow_pickle": False},
                    progress=False)
    assert as_option.nodes["pair"].status is NodeStatus.FAILED


# --- the seed's managers ---------------------------------------------------------------------------------------


def test_cloud_cache_manager_signs_and_refuses_forgeries(tmp_path):
    store = LocalStorage(tmp_path / "cache")
    cache = CloudCacheManager(store, signing_key=KEY)
    key = cache.compute_key("ns", {"x": 1})
    assert cache.get_or_compute(key, lambda: {"v": 1}) == {"v": 1}
    proof = tmp_path / "code-ran"
    plant(store, "cache/" + key, proof)
    assert not cache.exists(key)
    assert cache.get_or_compute(key, lambda: {"v": 2}) == {"v": 2} and not proof.exists()
    assert cache.stats["corruptions"] == 1
    assert pickle.loads(pickle.dumps(cache)).get(key) == {"v": 2}  # the signer travels with it
    with pytest.raises(CodecError, match="allow_pickle is off"):
        CloudCacheManager(store, allow_pickle=False).put(key, (1, 2))


def test_distributed_checkpoint_manager_signs_markers_and_refuses_forged_ones(tmp_path):
    mgr = DistributedCheckpointManager(tmp_path / "local", signing_key=KEY)
    mgr.save(Checkpoint("c1", "etl", 1.0, {"step": 1}))
    assert mgr.load("c1").state == {"step": 1}
    forger = DistributedCheckpointManager(tmp_path / "local")  # writes unsigned markers
    forger.save(Checkpoint("c1", "etl", 2.0, {"step": 666}))
    with pytest.raises(CheckpointCorruptError, match="not trusted"):
        mgr.load("c1")
    assert mgr.load_latest("etl") is None
    with pytest.raises(CodecError, match="allow_pickle is off"):
        DistributedCheckpointManager(tmp_path / "other", allow_pickle=False).save(Checkpoint("c2", "etl", 1.0,
                                                                                               {"t": (1, 2)}))


def test_yaml_signing_key_and_allow_pickle_reach_the_run(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from odibi_ray.cli import app

    monkeypatch.setenv("ODIBI_TEST_SIGNING", KEY)
    yaml_file = tmp_path / "p.yaml"
    yaml_file.write_text(
        "name: signed_yaml\nsigning_key: env://ODIBI_TEST_SIGNING\nallow_pickle: false\n"
        "nodes:\n  a: {fn: tests.test_signing:pair}\n  b: {fn: tests.test_signing:first_of, inputs: {t: a}}\n")
    store = tmp_path / "store"
    r = CliRunner().invoke(app, ["run", str(yaml_file), "--backend", "local", "--storage", str(store)],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 1 and "allow_pickle is off" in r.output  # the tuple needs pickle: refused
    yaml_file.write_text(yaml_file.read_text().replace("allow_pickle: false", "allow_pickle: true"))
    r = CliRunner().invoke(app, ["run", str(yaml_file), "--backend", "local", "--storage", str(store)],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    objects = list(LocalStorage(store).list("objects/", with_metadata=True))
    assert len(objects) == 2 and all(Signer(KEY).verify(o.key, o.metadata) for o in objects)
    assert KEY not in r.output
