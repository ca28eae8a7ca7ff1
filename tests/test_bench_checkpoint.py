"""The checkpoint benchmark computes what it claims, at tiny sizes: the floor engines, odibi_ray with and without
checkpoints and raw Ray agree on the leaf values; the latency wrapper really adds its latency and survives the
trip to a Ray worker; the resume scenario resumes; the script's last line is one JSON object.

Speed is not tested here (benchmarks/bench_checkpoint.py measures it).
"""

from __future__ import annotations

import json
import pickle
import time

from benchmarks import bench_checkpoint as B


def test_floor_and_odibi_engines_compute_the_same_leaves(ray_local, tmp_path):
    for kind in ("small", "big"):
        shape = B.layered(4, 5, kind, seed=1)
        assert len(shape) == 20 and shape == B.layered(4, 5, kind, seed=1)
        want = B.run_raw(shape)
        assert len(want) == 5
        folder = tmp_path / f"floor-{kind}"
        folder.mkdir()
        assert B.run_raw(shape, ("local", str(folder))) == want
        assert sorted(p.name for p in folder.iterdir()) == sorted(shape.order)  # one pickled file per node
        assert pickle.loads((folder / shape.leaves[0]).read_bytes()) == want[shape.leaves[0]]
        dag = B.build_dag(shape)
        assert B.run_odibi(dag, shape.leaves, str(tmp_path / f"odibi-{kind}")) == want
        assert B.run_odibi(dag, shape.leaves) == want
    assert len(want[shape.leaves[0]]) == B.BIG_BYTES


def test_floor_azurite_writes_one_blob_per_node(ray_local, azurite):
    from tests.storage.fixtures_azurite import new_container

    shape = B.layered(3, 4, "small", seed=2)
    container = new_container(azurite)
    assert B.run_raw(shape, ("azure", azurite.connection_string, container, "p")) == B.run_raw(shape)
    names = [b.name for b in B._container(azurite.connection_string, container).list_blobs()]
    assert sorted(names) == sorted(f"p/{n}" for n in shape.order)


def test_latency_storage_adds_latency_pickles_and_runs_a_chain(ray_local, tmp_path):
    inner = B.open_storage(str(tmp_path / "inner"), fsync=False)
    store = B.LatencyStorage(inner, latency_s=0.05)
    t0 = time.perf_counter()
    store.put("a/b", b"x", {"k": "v"})
    assert time.perf_counter() - t0 >= 0.05
    t0 = time.perf_counter()
    assert store.get("a/b") == b"x" and store.head("a/b").metadata["k"] == "v"
    assert time.perf_counter() - t0 >= 0.10
    copy = pickle.loads(pickle.dumps(store))  # through Storage.__reduce__, as a task's spec carries it
    assert isinstance(copy, B.LatencyStorage) and copy.latency_s == 0.05 and copy.get("a/b") == b"x"

    shape = B.chain(5)
    out = B.run_odibi(B.build_dag(shape), shape.leaves, B.LatencyStorage(inner, latency_s=0.001))
    assert out == B.run_raw(shape) == {"c0004": 5}


def test_resume_reuses_the_earlier_levels(ray_local, tmp_path):
    shape = B.layered(3, 4, "small", seed=3)
    want = B.checksum(B.run_raw(shape))
    _, resume_s, statuses = B.resume_once(shape, str(tmp_path / "store"), None, str(tmp_path / "flag"), want)
    assert resume_s > 0
    assert sum(statuses.values()) == 12 and statuses["succeeded"] == 4  # only the last level ran again


def test_the_last_line_of_stdout_is_the_json_report(ray_local, capsys):
    assert B.main(["--tiny", "--repeats", "1", "--only", "layered,plan", "--no-azurite"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])
    assert out["benchmark"] == "bench_checkpoint" and out["errors"] == {}
    assert [c["case"] for c in out["layered"]] == ["20_small", "20_100KB"]
    assert set(out["layered"][0]["engines"]) == {"raw_ray", "floor_local", "odibi_local", "odibi_nostore"}
    assert out["plan"]["local"]["objects"] == 300 and out["plan"]["local"]["ratio"] > 0
    assert any(line.startswith("[layered]") for line in lines[:-1])  # the human table comes first


def test_the_azurite_prefill_writes_what_the_adapter_reads(azurite):
    import random

    az = B.Azurite(azurite)  # the session's server
    container = az.new_container()
    style = B.ForeignStyle(True, {"sha256": "", "size": "", "codec": "json", "pipeline": "", "node": ""})
    putter = B.BlobPutter(az, container, "full")
    try:
        _, keys = B.prefill(putter, 7, 3, style)
    finally:
        putter.close()
    B.check_filled(az.storage(container, "full"), keys, style)
    infos = list(az.storage(container, "full").list("objects/", with_metadata=True))
    assert sorted(i.key for i in infos) == sorted(keys) and len(keys) == 7
    for info in infos:
        md = info.metadata
        assert info.key == f"objects/{md['pipeline']}/{info.key[-64:-62]}/{info.key[-64:]}"
        assert md["size"] == str(info.size) and md["codec"] == "json" and len(md["sha256"]) == 64
    rng = random.Random(0)
    assert B.foreign_object(rng, B.FLAT_STYLE)[0].count("/") == 2  # objects/<k[:2]>/<k>
