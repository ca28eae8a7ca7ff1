"""Mapped nodes in YAML (``map: {over: NODE, ...}``, odibi_ray.definition.spec): the YAML builds the same mapped
node as Python; every bad value is a SpecError naming the file and the field path (``nodes.sq.map.max_parallel``);
a good pipeline runs on the local backend and on Ray, each item its own cache entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from odibi_ray import DAG, MapSpec, Node, NodeStatus, run
from odibi_ray.definition.spec import MapNodeSpec, SpecError, load_pipeline

from . import map_yaml_steps as steps

PIPELINE = """\
name: squares
nodes:
  numbers: {fn: tests.map_yaml_steps:numbers, params: {n: 4}, cache: false}
  sq:
    fn: tests.map_yaml_steps:square
    params: {marks: MARKS}
    map: {over: numbers, max_parallel: 2}
    retry: {max_attempts: 2, delay_s: 0.01}
    timeout_s: 60
  total: {fn: tests.map_yaml_steps:total, inputs: {values: sq}}
"""


@pytest.fixture
def pipeline(tmp_path) -> Path:
    marks = tmp_path / "marks"
    marks.mkdir()
    path = tmp_path / "squares.yaml"
    path.write_text(PIPELINE.replace("MARKS", str(marks)))
    return path


def marks_of(path: Path) -> str:
    return str(path.parent / "marks")


def test_yaml_builds_the_same_mapped_node_as_python(pipeline):
    dag = load_pipeline(pipeline).to_dag()
    expected = Node("sq", steps.square, params={"marks": marks_of(pipeline)}, timeout_s=60,
                    retry=dag["sq"].retry, map_over=MapSpec("numbers", max_parallel=2))
    assert dag["sq"] == expected
    assert dag["sq"].mapping == MapSpec("numbers", param="x", max_parallel=2)
    assert dag["sq"].inputs == {"x": "numbers"} and dag.mapped() == {"sq": dag["sq"].mapping}
    assert dag.levels() == [["numbers"], ["sq"], ["total"]]
    assert dag["numbers"].mapping is None and dag["total"].mapping is None


def test_every_map_field_and_the_short_form(pipeline):
    full = load_pipeline(pipeline, [
        "nodes.sq.map={over: numbers, param: x, max_parallel: 3, allow_partial: true, batch_rows: 2, "
        "reduce: tests.map_yaml_steps.largest}"]).to_dag()
    assert full["sq"].mapping == MapSpec("numbers", param="x", max_parallel=3, allow_partial=True, batch_rows=2,
                                         reduce=steps.largest)
    by = load_pipeline(pipeline, ["nodes.sq.map.by=region", "nodes.sq.map.reduce=tests.map_yaml_steps:total"])
    assert by.to_dag()["sq"].mapping == MapSpec("numbers", param="x", max_parallel=2, by="region",
                                                reduce=steps.total)
    assert load_pipeline(pipeline, ["nodes.sq.map.reduce=sum"]).to_dag()["sq"].mapping.reduce is sum  # a builtin
    short = load_pipeline(pipeline, ["nodes.sq.map=numbers"])
    assert short.nodes["sq"].map_spec == MapNodeSpec(over="numbers")
    assert short.to_dag()["sq"].mapping == MapSpec("numbers", param="x")
    # the item may go to a parameter that also reads it as an input
    via_input = load_pipeline(pipeline, ["nodes.sq.inputs={x: numbers}"]).to_dag()
    assert via_input["sq"].mapping.param == "x" and via_input["sq"].inputs == {"x": "numbers"}


@pytest.mark.parametrize("overrides, path, expected", [
    (["nodes.sq.map.max_parallel=0"], "nodes.sq.map.max_parallel", "greater than or equal to 1 (got 0)"),
    (["nodes.sq.map.max_parallel=2000000"], "nodes.sq.map.max_parallel", "less than or equal to 1000000"),
    (["nodes.sq.map.max_parallel=1.5"], "nodes.sq.map.max_parallel", "valid integer (got 1.5)"),
    (['nodes.sq.map.max_parallel="4"'], "nodes.sq.map.max_parallel", "valid integer (got '4')"),
    (["nodes.sq.map.batch_rows=0"], "nodes.sq.map.batch_rows", "greater than or equal to 1"),
    (["nodes.sq.map.allow_partial=sometimes"], "nodes.sq.map.allow_partial", "valid boolean"),
    (["nodes.sq.map.by="], "nodes.sq.map.by", "at least 1 character"),
    (["nodes.sq.map.param=1x"], "nodes.sq.map.param", "should match pattern"),
    (["nodes.sq.map.colour=red"], "nodes.sq.map.colour", "unknown field"),
    (["nodes.sq.map={}"], "nodes.sq.map.over", "required field is missing"),
    (["nodes.sq.map=5"], "nodes.sq.map", "expected a node name or a mapping (over, param, max_parallel"),
    (["nodes.sq.map=[numbers]"], "nodes.sq.map", "expected a node name or a mapping"),
    (["nodes.sq.map.batch_rows=2", "nodes.sq.map.by=region"], "nodes.sq.map", "batch_rows (rows per item) or by"),
    (["nodes.sq.map.over=nope"], "nodes.sq.map.over", "names 'nope', which is not a node of the pipeline"),
    (["nodes.sq.map=nope"], "nodes.sq.map", "names 'nope', which is not a node of the pipeline"),
    (["nodes.sq.map.reduce=no such"], "nodes.sq.map.reduce", "should match pattern"),
    (["nodes.sq.map.reduce=nosuchmodule:f"], "nodes.sq.map.reduce", "cannot import 'nosuchmodule:f' for a reduce"),
    (["nodes.sq.map.reduce=tests.map_yaml_steps:nothing"], "nodes.sq.map.reduce", "has no attribute 'nothing'"),
    (["nodes.sq.map.reduce=tests.map_yaml_steps:uuid"], "nodes.sq.map.reduce", "is a module, expected a function"),
    (["nodes.sq.map.param=y"], "nodes.sq.map.param", "'y' is not a parameter of square(x, marks"),
    (["nodes.sq.map.param=marks"], "nodes.sq.map", "map param 'marks' is also given as a param"),
    (["nodes.other={fn: 'tests.map_yaml_steps:numbers'}", "nodes.sq.inputs={x: other}", "nodes.sq.map.param=x"],
     "nodes.sq.map",
     "map param 'x' is already the input of 'other', not of 'numbers'"),
    (["nodes.sq.map.over=sq"], "nodes.sq", "CycleError"),
])
def test_bad_map_values_name_the_field(pipeline, overrides, path, expected):
    with pytest.raises(SpecError) as info:
        load_pipeline(pipeline, overrides).to_dag()
    assert info.value.path == path
    assert str(info.value).startswith(f"{pipeline}: {path}: "), str(info.value)
    assert expected in str(info.value)


def test_runs_on_the_local_backend_each_item_its_own_cache_entry(pipeline, tmp_path):
    store = str(tmp_path / "store")
    result = run(load_pipeline(pipeline).to_dag(), backend="local", storage=store)
    result.raise_for_status()
    assert result["total"] == 1 + 4 + 9 + 16 and result["sq"] == [1, 4, 9, 16]
    items = result.nodes["sq"].items
    assert [i.name for i in items] == ["sq[0]", "sq[1]", "sq[2]", "sq[3]"]
    assert result.nodes["sq"].item_counts() == {"succeeded": 4} and steps.ran(marks_of(pipeline)) == 4
    # one more number: one item runs, the others are reused; the collect runs again (its input changed)
    again = run(load_pipeline(pipeline, ["nodes.numbers.params.n=5"]).to_dag(), backend="local", storage=store)
    assert again["total"] == 55 and again.nodes["sq"].item_counts() == {"cached": 4, "succeeded": 1}
    assert again.nodes["sq"].items[4].status is NodeStatus.SUCCEEDED  # the new number
    assert again.nodes["total"].status is NodeStatus.SUCCEEDED and steps.ran(marks_of(pipeline)) == 5


def test_allow_partial_and_reduce_from_yaml(pipeline):
    partial = ["nodes.sq.params.fail_on=3", "nodes.sq.map.allow_partial=true", "nodes.sq.retry.max_attempts=1",
               "nodes.total.fn=tests.map_yaml_steps:describe"]
    result = run(load_pipeline(pipeline, partial).to_dag(), backend="local")
    assert result.succeeded and result["total"] == {"values": [1, 4, 16], "failed": [2]}
    assert result.nodes["sq"].item_counts() == {"succeeded": 3, "failed": 1}
    reduced = run(load_pipeline(pipeline, ["nodes.sq.map.reduce=tests.map_yaml_steps:largest",
                                           "nodes.total.fn=tests.map_yaml_steps:describe"]).to_dag(),
                  backend="local")
    assert reduced["sq"] == 16  # consumers (and the result) get reduce(list)


def test_runs_on_ray(pipeline, tmp_path, ray_local):
    store = str(tmp_path / "store")
    dag = load_pipeline(pipeline, ["nodes.numbers.params.n=3"]).to_dag()
    result = run(dag, storage=store)
    result.raise_for_status()
    assert result.backend == "ray" and result["total"] == 14
    node_id = ray_local.get_runtime_context().get_node_id()
    assert all(i.worker_node_id == node_id and i.attempts == 1 for i in result.nodes["sq"].items)
    again = run(load_pipeline(pipeline).to_dag(), storage=store)  # n=4: one new item
    assert again["total"] == 30 and again.nodes["sq"].item_counts() == {"cached": 3, "succeeded": 1}


def test_python_and_yaml_share_item_cache_entries(pipeline, tmp_path):
    """Same function, params and map options: the YAML's items reuse what the Python DAG stored."""
    store = str(tmp_path / "store")
    dag = DAG("squares")
    dag.add_node(Node("numbers", steps.numbers, params={"n": 4}, cache=False))
    dag.map("numbers", "sq", max_parallel=2, params={"marks": marks_of(pipeline)}, timeout_s=60,
            retry=load_pipeline(pipeline).to_dag()["sq"].retry)(steps.square)
    dag.add_node(Node("total", steps.total, inputs={"values": "sq"}))
    run(dag, backend="local", storage=store).raise_for_status()
    result = run(load_pipeline(pipeline).to_dag(), backend="local", storage=store)
    assert result["total"] == 30 and result.nodes["sq"].item_counts() == {"cached": 4}
    assert steps.ran(marks_of(pipeline)) == 4
