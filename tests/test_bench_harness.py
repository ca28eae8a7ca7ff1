"""The engine-comparison harness computes what it claims: seeded shapes of the stated size and form, and
the same leaf values on every engine it compares (the correctness check behind benchmarks/run.py).

Speed is not tested here (benchmarks check speed); Dask and Prefect are benchmark-only extras and are
not installed by the test command, so only raw Ray and odibi_ray (with and without checkpoints) are run.
"""

from __future__ import annotations

import pytest

from benchmarks import engines as E
from benchmarks.run import check_agreement, markdown


@pytest.mark.parametrize("kind", E.SHAPES)
@pytest.mark.parametrize("size", [100, 1000])
def test_shapes_are_seeded_acyclic_and_of_the_stated_form(kind, size):
    shape = E.make_shape(kind, size, seed=0)
    assert shape == E.make_shape(kind, size, seed=0)  # seeded: the same DAG for every engine
    nodes = shape["nodes"]
    assert abs(len(nodes) - size) <= size * 0.01 + 1
    seen: set[str] = set()
    for name, ups in nodes.items():  # listed in a topological order: every input comes earlier
        assert set(ups) <= seen and len(ups) <= 2
        seen.add(name)
    assert shape["leaves"] == [n for n in nodes if all(n not in ups for ups in nodes.values())]
    assert all(0.0 <= ms <= E.MAX_SLEEP_MS for ms in shape["sleep_ms"].values())
    roots = [n for n, ups in nodes.items() if not ups]
    if kind == "chain":
        assert len(roots) == 1 and len(shape["leaves"]) == 1
    elif kind == "wide":
        assert len(roots) == len(nodes) // 2
    else:
        assert len(roots) <= len(nodes) // 10  # deep: 20 levels, or a sqrt(N)-wide lattice
    if kind in ("wide", "layered20"):  # the random shapes: another seed, other edges
        assert E.make_shape(kind, size, seed=1)["nodes"] != nodes


def test_raw_ray_and_odibi_ray_compute_the_same_leaves(ray_local, tmp_path, monkeypatch):
    monkeypatch.setattr(E.tempfile, "tempdir", str(tmp_path))  # the checkpoint engine's folders go here
    for kind in E.SHAPES:
        shape = E.make_shape(kind, 100, seed=3)
        want = E.run_raw_ray(shape, sleep=False)
        assert len(want) == len(shape["leaves"])
        assert E.run_odibi(shape, sleep=False) == want
        assert E.run_odibi_ckpt_local(shape, sleep=False) == want
    assert list(tmp_path.iterdir()) == []  # each checkpointed run's folder is removed


def test_the_report_flags_engines_that_disagree_and_skipped_cases():
    idx = {("raw_ray", "wide", 100, "noop"): {"nodes": 100, "median_s": 0.5, "checksums": [7, 7]},
           ("odibi_ray", "wide", 100, "noop"): {"nodes": 100, "median_s": 0.75, "checksums": [7, 8]},
           ("prefect_ray", "wide", 1000, "noop"): {"nodes": 1000, "skipped": "projected 110 s"}}
    assert check_agreement(idx) == ["wide/100/noop: odibi_ray checksum 8 != odibi_ray 7"]
    table = markdown(idx, ["raw_ray", "odibi_ray", "prefect_ray"],
                     [{"shape": "wide", "size": 100, "body": "noop"}, {"shape": "wide", "size": 1000, "body": "noop"}],
                     "## t")
    assert "| wide | 100 | 0.500 | 0.750 (1.50) |  |" in table
    assert "| wide | 1000 |  |  | over budget |" in table
