"""Early cutoff (issue 20): a node's key covers its inputs' *data versions* (the SHA-256 of their stored outputs),
so a node that reruns and writes the bytes it wrote before leaves the nodes below it reused; and a comment is not a
code change. Node bodies are counted by the marks they leave; every version of the node module is written to a
file and imported, as a user's edited module would be (pickled by value for the Ray workers)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from odibi_ray import DAG, CachePolicy, Node, NodeStatus, run
from odibi_ray.checkpoint import layout
from odibi_ray.checkpoint.plan import plan_checkpoints
from odibi_ray.execution.result import UNCHANGED_OUTPUT
from odibi_ray.observe.metrics import MetricType
from odibi_ray.observe.progress import ProgressSink
from odibi_ray.observe.report import render_report

from .cp_nodes import ran

_count = itertools.count()

#: The node module as first written: base -> step -> (left, right) -> join; `step` has three descendants.
MODULE = '''
from pathlib import Path
import uuid


def _mark(marks, name):
    Path(marks, f"{name}.{uuid.uuid4().hex[:8]}").write_text("ran")


def base(marks):
    _mark(marks, "base")
    return 10


def step(x, marks):
    """The node the tests edit."""
    _mark(marks, "step")  # leave a mark
    return x + 1


def left(y, marks):
    _mark(marks, "left")
    return y * 2


def right(y, marks):
    _mark(marks, "right")
    return y * 3


def join(a, b, marks):
    _mark(marks, "join")
    return {"a": a, "b": b, "sum": a + b}
'''

#: The issue's three rows: an edit of `step` and how many bodies the next run runs (Hamilton: 0 / 1 / 4).
EDITS = {
    "comment only": (lambda s: s.replace("# leave a mark", "# reworded: a mark for the test to count")
                     .replace('"""The node the tests edit."""', '"""Edited docstring."""'), 0, 11),
    "new code, same output": (lambda s: s.replace("return x + 1", "return 1 + x"), 1, 11),
    "new code, new output": (lambda s: s.replace("return x + 1", "return x + 2"), 4, 12),
}


def load(tmp_path: Path, source: str) -> Any:
    path = tmp_path / f"cutoff_nodes_{next(_count)}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)  # not in sys.modules: cloudpickle sends it by value
    spec.loader.exec_module(module)
    return module


def pipeline(mod: Any, marks: Path) -> DAG:
    m = {"marks": str(marks)}
    dag = DAG("cutoff")
    dag.add_node(Node("base", mod.base, params=m))
    dag.add_node(Node("step", mod.step, inputs={"x": "base"}, params=m))
    dag.add_node(Node("left", mod.left, inputs={"y": "step"}, params=m))
    dag.add_node(Node("right", mod.right, inputs={"y": "step"}, params=m))
    dag.add_node(Node("join", mod.join, inputs={"a": "left", "b": "right"}, params=m))
    return dag


def bodies(marks: Path, before: dict[str, int]) -> dict[str, int]:
    now = ran(marks)
    return {n: c - before.get(n, 0) for n, c in now.items() if c - before.get(n, 0)}


@pytest.mark.parametrize("row", list(EDITS))
def test_the_issues_three_rows(store, backend, marks, tmp_path, row):
    edit, expected_bodies, step_value = EDITS[row]
    first = run(pipeline(load(tmp_path, MODULE), marks), backend=backend, storage=store, progress=False)
    first.raise_for_status()
    assert first["join"] == {"a": 22, "b": 33, "sum": 55}
    before = ran(marks)
    second = run(pipeline(load(tmp_path, edit(MODULE)), marks), backend=backend, storage=store, progress=False)
    second.raise_for_status()
    ran_now = bodies(marks, before)
    assert sum(ran_now.values()) == expected_bodies, ran_now
    assert second["step"] == step_value
    assert second["join"] == {"a": 2 * step_value, "b": 3 * step_value, "sum": 5 * step_value}
    status = {n: r.status for n, r in second.nodes.items()}
    if expected_bodies == 0:
        assert set(status.values()) == {NodeStatus.CACHED}
        assert second.stats["early_cutoff"] == 0
    elif expected_bodies == 1:
        assert ran_now == {"step": 1}
        assert status == {"base": NodeStatus.CACHED, "step": NodeStatus.SUCCEEDED, "left": NodeStatus.CACHED,
                          "right": NodeStatus.CACHED, "join": NodeStatus.CACHED}
        assert second.nodes["step"].reason == UNCHANGED_OUTPUT
        assert second.nodes["left"].reason == "output reused: unchanged output of step"
        assert second.stats["early_cutoff"] == 2  # left and right; join's inputs did not run
        assert "early cutoff" in second.summary()
        assert second.nodes["left"].unchanged_inputs == ("step",)
        assert second.metrics.get_all_metrics(MetricType.EARLY_CUTOFF) == {
            'left{level="2",pipeline="cutoff"}': 1, 'right{level="2",pipeline="cutoff"}': 1}
        assert UNCHANGED_OUTPUT in render_report(second)  # the HTML report shows the reason
        # the descendants kept their keys: those of the first run
        assert all(second.nodes[n].cache_key == first.nodes[n].cache_key for n in ("left", "right", "join"))
        assert second.nodes["step"].cache_key != first.nodes["step"].cache_key
        assert second.nodes["step"].data_version == first.nodes["step"].data_version
    else:
        assert ran_now == {"step": 1, "left": 1, "right": 1, "join": 1}
        assert second.nodes["step"].reason == "" and second.stats["early_cutoff"] == 0


#: A source that reads the outside world (cache=False: it runs every time) feeding two branches.
DIAMOND = '''
import json
from pathlib import Path
import uuid


def _mark(marks, name):
    Path(marks, f"{name}.{uuid.uuid4().hex[:8]}").write_text("ran")


def read_source(path, marks):
    _mark(marks, "src")
    return json.loads(Path(path).read_text())


def pick(doc, field, marks):
    _mark(marks, f"pick_{field}")
    return doc[field]


def consume(value, side, marks):
    _mark(marks, f"use_{side}")
    return [side, value * 10]


def join(a, b, marks):
    _mark(marks, "join")
    return a + b
'''


def diamond(mod: Any, marks: Path, source: Path) -> DAG:
    m = {"marks": str(marks)}
    dag = DAG("diamond")
    dag.add_node(Node("src", mod.read_source, params={"path": str(source), **m}, cache=CachePolicy(enabled=False)))
    dag.add_node(Node("left", mod.pick, inputs={"doc": "src"}, params={"field": "l", **m}))
    dag.add_node(Node("right", mod.pick, inputs={"doc": "src"}, params={"field": "r", **m}))
    dag.add_node(Node("use_left", mod.consume, inputs={"value": "left"}, params={"side": "L", **m}))
    dag.add_node(Node("use_right", mod.consume, inputs={"value": "right"}, params={"side": "R", **m}))
    dag.add_node(Node("join", mod.join, inputs={"a": "use_left", "b": "use_right"}, params=m))
    return dag


def test_a_diamond_where_one_branch_changes_reruns_only_that_branchs_consumers(store, backend, marks, tmp_path):
    source = tmp_path / "source.json"
    source.write_text(json.dumps({"l": 1, "r": 2}))
    mod = load(tmp_path, DIAMOND)
    run(diamond(mod, marks, source), backend=backend, storage=store, progress=False).raise_for_status()
    before = ran(marks)
    source.write_text(json.dumps({"l": 1, "r": 5}))  # only the right branch's value changes
    result = run(diamond(mod, marks, source), backend=backend, storage=store, progress=False).raise_for_status()
    # src always runs (cache=False) and has a new output, so both picks run; left picks what it picked before
    assert bodies(marks, before) == {"src": 1, "pick_l": 1, "pick_r": 1, "use_R": 1, "join": 1}
    assert result.nodes["use_left"].status is NodeStatus.CACHED
    assert result.nodes["left"].reason == UNCHANGED_OUTPUT
    assert result["join"] == ["L", 10, "R", 50]
    before = ran(marks)
    again = run(diamond(mod, marks, source), backend=backend, storage=store, progress=False).raise_for_status()
    # nothing new at the source: it runs (cache=False) and everything below it is reused
    assert bodies(marks, before) == {"src": 1}
    assert {n: r.status.value for n, r in again.nodes.items() if n != "src"} == dict.fromkeys(
        ["left", "right", "use_left", "use_right", "join"], "cached")
    assert again.nodes["src"].reason == UNCHANGED_OUTPUT and again["join"] == ["L", 10, "R", 50]


def test_a_resume_keys_the_nodes_below_finished_ones_from_the_manifest(local_storage, marks, tmp_path, monkeypatch):
    """The manifest keeps each finished node's data version: a resume keys the nodes below without a look-up, and
    reruns only what did not finish."""
    failing = MODULE.replace("return y * 3", "raise RuntimeError('right is broken')")
    first = run(pipeline(load(tmp_path, failing), marks), backend="local", storage=local_storage, progress=False)
    assert first.nodes["right"].status is NodeStatus.FAILED and first.nodes["left"].status is NodeStatus.SUCCEEDED
    manifest = json.loads(local_storage.get(layout.manifest_key("cutoff", first.run_id)))
    assert manifest["nodes"]["step"]["version"] == first.nodes["step"].data_version
    assert manifest["nodes"]["step"]["version"].startswith("sha256:")
    assert manifest["nodes"]["join"]["key"] is None  # never keyed: its inputs never all ran
    before = ran(marks)
    from odibi_ray.checkpoint import lookup

    asked: list[str] = []
    real_find = lookup.StoredIndex.find
    monkeypatch.setattr(lookup.StoredIndex, "find",
                        lambda self, wanted: asked.extend(wanted) or real_find(self, wanted))
    resumed = run(pipeline(load(tmp_path, MODULE), marks), backend="local", storage=local_storage, progress=False,
                  resume=first.run_id).raise_for_status()
    assert sorted(asked) == ["join", "right"]  # the finished nodes were keyed from the manifest, not looked up
    assert bodies(marks, before) == {"right": 1, "join": 1}
    assert {n: r.status.value for n, r in resumed.nodes.items()} == {
        "base": "resumed", "step": "resumed", "left": "resumed", "right": "succeeded", "join": "succeeded"}
    assert resumed["join"] == {"a": 22, "b": 33, "sum": 55}


def test_a_fully_cached_plan_of_many_levels_lists_the_store_once(azurite_storage, marks, tmp_path):
    """On a remote store the plan finds every level's keys in one listing of the pipeline's prefix (a fully cached
    re-run submits nothing and makes one request to find what it reuses)."""
    mod = load(tmp_path, MODULE)
    dag = DAG("levels")
    m = {"marks": str(marks)}
    dag.add_node(Node("n0", mod.base, params=m))
    for i in range(1, 24):  # a chain of 24 levels
        dag.add_node(Node(f"n{i}", mod.left, inputs={"y": f"n{i - 1}"}, params=m))
    first = run(dag, backend="local", storage=azurite_storage, progress=False).raise_for_status()
    order = [n for level in dag.levels() for n in level]
    plan = plan_checkpoints(dag, order, azurite_storage, "plan-check")
    assert set(plan.reuse) == set(order) and not plan.deferred
    assert plan.index is not None and plan.index.requests == 1
    assert {n: plan.keys[n] for n in order} == {n: first.nodes[n].cache_key for n in order}
    before = ran(marks)
    second = run(dag, backend="local", storage=azurite_storage, progress=False).raise_for_status()
    assert bodies(marks, before) == {} and second["n23"] == 10 * 2 ** 23



class Recorder(ProgressSink):
    def __init__(self) -> None:
        self.cutoffs: list[tuple[str, tuple[str, ...]]] = []
        self.done: dict[str, NodeStatus] = {}

    def node_done(self, name: str, level: int, status: NodeStatus) -> None:
        self.done[name] = status

    def early_cutoff(self, name: str, unchanged: tuple[str, ...]) -> None:
        self.cutoffs.append((name, unchanged))


def test_progress_hears_of_each_node_reused_by_early_cutoff(local_storage, marks, tmp_path):
    run(pipeline(load(tmp_path, MODULE), marks), backend="local", storage=local_storage, progress=False)
    sink = Recorder()
    run(pipeline(load(tmp_path, EDITS["new code, same output"][0](MODULE)), marks), backend="local",
        storage=local_storage, progress=sink).raise_for_status()
    assert sorted(sink.cutoffs) == [("left", ("step",)), ("right", ("step",))]
    assert sink.done == {"base": NodeStatus.CACHED, "step": NodeStatus.SUCCEEDED, "left": NodeStatus.CACHED,
                         "right": NodeStatus.CACHED, "join": NodeStatus.CACHED}


#: A node whose output is read from a file (it changes without its key changing), a constant, and their consumer.
REKEY = '''
from pathlib import Path


def a():
    return "a"


def c(path):
    return Path(path).read_text()


def b(x, y):
    return x + y
'''


def rekey_dag(mod: Any, source: Path, b_version: str, a_cached: bool) -> DAG:
    dag = DAG("rekey")
    dag.add_node(Node("a", mod.a, cache=None if a_cached else CachePolicy(enabled=False)))
    dag.add_node(Node("c", mod.c, params={"path": str(source)}))
    dag.add_node(Node("b", mod.b, inputs={"x": "a", "y": "c"}, version=b_version))
    return dag


@pytest.mark.parametrize("a_cached", [True, False], ids=["b-keyed-by-the-plan", "b-keyed-as-it-runs"])
def test_a_node_is_keyed_again_when_a_reused_input_is_recomputed_with_other_bytes(store, backend, tmp_path, a_cached):
    """`c` is reused, its stored object has rotted: it runs again (reading a source that changed meanwhile) and
    writes other bytes; `b`, keyed before on `c`'s stored bytes, must be keyed again on the new ones — else it
    stores its output under a key that names `c`'s old content, and a later run with that content reuses a wrong
    value (found by review; on Ray the task's spec also kept the first key)."""
    mod = load(tmp_path, REKEY)
    source = tmp_path / "source.txt"
    source.write_text("X")
    first = run(rekey_dag(mod, source, "1", a_cached), backend=backend, storage=store, progress=False)
    first.raise_for_status()
    c_object = layout.object_key("rekey", first.nodes["c"].cache_key)
    data, info = store.get_with_info(c_object)
    store.put(c_object, bytes(x ^ 1 for x in data), info.metadata)  # rotted: same size, other bytes
    source.write_text("Y")
    second = run(rekey_dag(mod, source, "2", a_cached), backend=backend, storage=store, progress=False)
    second.raise_for_status()
    assert second["b"] == "aY" and second.nodes["c"].data_version != first.nodes["c"].data_version
    assert store.exists(layout.object_key("rekey", second.nodes["b"].cache_key))  # stored where its record says
    source.write_text("X")
    third = run(rekey_dag(mod, source, "2", a_cached), backend=backend, storage=store, progress=False,
                refresh=["c"]).raise_for_status()
    assert third["b"] == "aX"


CODEC_V1 = '''
def src():
    return b'{"a":1}'


def kind(x):
    return type(x).__name__
'''
CODEC_V2 = CODEC_V1.replace("return b'{\"a\":1}'", "return {'a': 1}")


def test_the_same_bytes_under_another_codec_are_another_data_version(local_storage, tmp_path):
    """`b'{"a":1}'` stored as bytes and `{"a": 1}` stored as JSON are the same bytes: the data version names the
    codec too, so the consumer sees a new input (found by review)."""
    dag1, dag2 = DAG("codec"), DAG("codec")
    for dag, source in ((dag1, CODEC_V1), (dag2, CODEC_V2)):
        mod = load(tmp_path, source)
        dag.add_node(Node("src", mod.src))
        dag.add_node(Node("kind", mod.kind, inputs={"x": "src"}))
    first = run(dag1, backend="local", storage=local_storage, progress=False).raise_for_status()
    second = run(dag2, backend="local", storage=local_storage, progress=False).raise_for_status()
    assert (first["kind"], second["kind"]) == ("bytes", "dict")
    assert second.nodes["kind"].status is NodeStatus.SUCCEEDED
    assert first.nodes["src"].data_version.startswith("sha256:bytes:")
    assert second.nodes["src"].data_version.startswith("sha256:json:")


MAPPED = '''
from pathlib import Path
import uuid


def _mark(marks, name):
    Path(marks, f"{name}.{uuid.uuid4().hex[:8]}").write_text("ran")


def listing(marks):
    _mark(marks, "listing")
    return [1, 2, 3]


def square(x, marks):
    _mark(marks, "square")
    return x * x


def total(values, marks):
    _mark(marks, "total")
    return sum(values)
'''


def test_a_mapped_node_that_writes_what_it_wrote_before_lets_its_consumers_be_reused(store, backend, marks,
                                                                                      tmp_path):
    """The items of a mapped node whose cache is off run every time; their outputs are unchanged, so the mapped
    node's data version (its items' outputs') is too, and its consumer is reused."""
    mod = load(tmp_path, MAPPED)

    def dag() -> DAG:
        m = {"marks": str(marks)}
        d = DAG("mapped")
        d.add_node(Node("listing", mod.listing, params=m))
        d.add_node(Node("square", mod.square, map_over="listing", params=m, cache=CachePolicy(enabled=False)))
        d.add_node(Node("total", mod.total, inputs={"values": "square"}, params=m))
        return d

    first = run(dag(), backend=backend, storage=store, progress=False).raise_for_status()
    assert first["total"] == 14
    before = ran(marks)
    second = run(dag(), backend=backend, storage=store, progress=False).raise_for_status()
    assert bodies(marks, before) == {"square": 3}
    assert second.nodes["total"].status is NodeStatus.CACHED and second["total"] == 14
    assert second.nodes["total"].reason == "output reused: unchanged output of square"
    assert second.nodes["square"].data_version == first.nodes["square"].data_version


#: A slow source whose cache is off (so the node below it is keyed in its Ray worker), a node, a consumer.
SLOW_CHAIN = '''
import time


def a():
    time.sleep(0.3)
    return 1


def b(x):
    return {"v": x + 1}


def c(y):
    return y["v"] * 10
'''


def slow_chain(mod: Any) -> DAG:
    dag = DAG("slowchain")
    dag.add_node(Node("a", mod.a, cache=CachePolicy(enabled=False)))
    dag.add_node(Node("b", mod.b, inputs={"x": "a"}))
    dag.add_node(Node("c", mod.c, inputs={"y": "b"}, cache=CachePolicy(enabled=False)))
    return dag


def test_a_stored_object_with_a_codec_this_version_does_not_know_is_a_miss(store, backend, tmp_path):
    """An object a newer engine wrote (a codec this one cannot decode) is damaged, not reused and not a failure,
    whether the driver or a Ray worker keys the node (found by review: the worker path failed the node)."""
    mod = load(tmp_path, SLOW_CHAIN)
    first = run(slow_chain(mod), backend=backend, storage=store, progress=False).raise_for_status()
    key = layout.object_key("slowchain", first.nodes["b"].cache_key)
    data, info = store.get_with_info(key)
    store.put(key, data, dict(info.metadata, codec="json2"))
    second = run(slow_chain(mod), backend=backend, storage=store, progress=False).raise_for_status()
    assert second.nodes["b"].status is NodeStatus.SUCCEEDED and second["c"] == 20
    assert second.nodes["b"].cache_key == first.nodes["b"].cache_key


def test_a_failed_node_keyed_in_its_worker_has_its_key_recorded(local_storage, ray_local, tmp_path):
    """A node keyed in its Ray worker (its input was still running when it was submitted) that fails still says
    under which key it was to be stored (its record and the manifest), as a node keyed by the driver does."""
    failing = SLOW_CHAIN.replace('return {"v": x + 1}', 'raise ValueError("b is broken")')
    result = run(slow_chain(load(tmp_path, failing)), backend="ray", storage=local_storage, progress=False)
    rec = result.nodes["b"]
    assert rec.status is NodeStatus.FAILED and rec.cache_key and len(rec.cache_key) == 64
    manifest = json.loads(local_storage.get(layout.manifest_key("slowchain", result.run_id)))
    assert manifest["nodes"]["b"]["key"] == rec.cache_key
    fixed = run(slow_chain(load(tmp_path, SLOW_CHAIN)), backend="ray", storage=local_storage, progress=False)
    assert fixed.raise_for_status()["c"] == 20
