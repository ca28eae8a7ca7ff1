"""YAML pipelines (odibi_ray.definition.spec): the YAML builds the same DAG as Python; every error names file and
field path."""

from __future__ import annotations

from pathlib import Path

import pytest

from odibi_ray import CachePolicy, RetryPolicy
from odibi_ray.errors import SignatureMismatchError
from odibi_ray.definition.spec import (
    SpecError, SpecFileNotFoundError, apply_overrides, load_pipeline, parse_memory, parse_spec,
)
from tests import pipelines_for_tests as pft

FIXTURES = Path(__file__).parent / "fixtures"
SALES = FIXTURES / "sales.yaml"


def test_yaml_and_python_build_equal_dags():
    dag = load_pipeline(SALES).to_dag()
    expected = pft.python_dag()
    assert (dag.name, dag.retry, dag.cache, dag.description) == (expected.name, expected.retry, expected.cache,
                                                                  expected.description)
    assert list(dag.nodes) == list(expected.nodes)
    for name, node in expected.nodes.items():
        assert dag[name] == node, name  # dataclass equality: fn, inputs, params, policies, resources, version
    clean = dag["clean"]  # spot-check what equality covers, so a too-lenient __eq__ cannot hide a gap
    assert clean.retry.retry_on == (OSError, ValueError) and clean.memory == 64 * 2**20
    assert clean.resources == {"bigmem": 0.5} and clean.cache is False and clean.timeout_s == 30
    assert dag["extract"].cache.key_fn is pft.source_key and dag["total"].inputs == {"clean": "clean"}
    assert dag.levels() == expected.levels() == [["extract"], ["clean"], ["total"]]


def test_defaults_and_default_storage():
    spec = parse_spec({"name": "p", "nodes": {"a": {"fn": "tests.pipelines_for_tests:extract",
                                                    "params": {"rows": 1}}}}, "mem.yaml")
    dag = spec.to_dag()
    assert spec.storage_uri == ".odibi/p" and spec.storage_options == {}
    assert dag.retry == RetryPolicy() and dag.cache is True and dag["a"].retry is None and dag["a"].cache is None
    assert dag["a"].num_cpus == 1.0 and dag["a"].timeout_s is None


def test_cache_mapping_and_true():
    spec = parse_spec({"name": "p", "defaults": {"cache": False}, "nodes": {
        "a": {"fn": "tests.pipelines_for_tests:extract", "params": {"rows": 1}, "cache": {"ttl_s": 5, "version": "9"}},
        "b": {"fn": "tests.pipelines_for_tests:clean", "inputs": {"raw": "a"}, "cache": True}}}, "mem.yaml")
    dag = spec.to_dag()
    assert dag.cache is False and dag["a"].cache == CachePolicy(ttl_s=5, version="9") and dag["b"].cache is True


def test_fuse_on_a_node_and_in_defaults():
    spec = parse_spec({"name": "p", "defaults": {"fuse": True}, "nodes": {
        "a": {"fn": "tests.pipelines_for_tests:extract", "params": {"rows": 1}},
        "b": {"fn": "tests.pipelines_for_tests:clean", "inputs": {"raw": "a"}, "fuse": False}}}, "mem.yaml")
    dag = spec.to_dag()
    assert dag["a"].fuse is True and dag["b"].fuse is False
    plain = parse_spec({"name": "p", "nodes": {"a": {"fn": "tests.pipelines_for_tests:extract",
                                                     "params": {"rows": 1}}}}, "mem.yaml").to_dag()
    assert plain["a"].fuse is None  # as the run says (run(fuse=...), odibi-ray run --fuse)


@pytest.mark.parametrize("override, path, expected", [
    ("nodes.clean.retry.max_attempts=0", "nodes.clean.retry.max_attempts", "greater than or equal to 1"),
    ('nodes.clean.retry.max_attempts="3"', "nodes.clean.retry.max_attempts", "valid integer"),
    ("nodes.clean.retry.jitter=2", "nodes.clean.retry.jitter", "less than or equal to 1"),
    ("nodes.clean.cache=5", "nodes.clean.cache", "expected false, true or a mapping"),
    ("nodes.extract.cache.ttl=5", "nodes.extract.cache.ttl", "unknown field"),
    ("nodes.clean.bogus=1", "nodes.clean.bogus", "unknown field"),
    ("nodes.clean.inputs=5", "nodes.clean.inputs", "mapping {parameter: node} or a list"),
    ("nodes.clean.inputs.raw=nope", "nodes.clean.inputs.raw", "'nope', which is not a node"),
    ("nodes.clean.resources.memory=12XB", "nodes.clean.resources.memory", "number with a unit"),
    ("nodes.clean.resources.custom.CPU=1", "nodes.clean.resources.custom", "goes in num_cpus"),
    ("nodes.clean.timeout_s=0", "nodes.clean.timeout_s", "greater than 0"),
    ('nodes.clean.fuse="yes"', "nodes.clean.fuse", "valid boolean"),
    ("nodes.clean.fn=not a path", "nodes.clean.fn", "should match pattern"),
    ("name=bad/name", "name", "should match pattern"),
    ("nodes.clean.retry.retry_on=[builtins.len]", "nodes.clean.retry.retry_on.0", "not an exception type"),
    ("nodes.clean.retry.retry_on=[nosuch.Error]", "nodes.clean.retry.retry_on.0", "module 'nosuch'"),
    ("nodes.total.params.bad=1", "nodes.total", "match no parameter"),
])
def test_bad_values_name_file_and_field_path(override, path, expected):
    with pytest.raises(SpecError) as info:
        load_pipeline(SALES, [override]).to_dag()
    msg = str(info.value)
    assert msg.startswith(f"{SALES}: {path}: "), msg
    assert expected in msg and info.value.path == path and info.value.file == str(SALES)


def test_unimportable_fn_names_node_and_module():
    with pytest.raises(SpecError, match=r"nodes\.clean\.fn: cannot import 'nosuch\.mod:f' for node 'clean': "
                                        r"module 'nosuch\.mod' cannot be imported"):
        load_pipeline(SALES, ["nodes.clean.fn=nosuch.mod:f"]).to_dag()
    with pytest.raises(SpecError, match=r"nodes\.clean\.fn: .*module 'tests\.pipelines_for_tests' has no attribute "
                                        r"'nothere'"):
        load_pipeline(SALES, ["nodes.clean.fn=tests.pipelines_for_tests:nothere"]).to_dag()


def test_dag_validation_error_keeps_its_type_as_cause():
    with pytest.raises(SpecError) as info:
        load_pipeline(SALES, ["nodes.total.params.bad=1"]).to_dag()
    assert isinstance(info.value.__cause__, SignatureMismatchError)


def test_missing_fields_and_bad_top_level(tmp_path):
    with pytest.raises(SpecError, match=r"mem\.yaml: nodes: required field is missing"):
        parse_spec({"name": "p"}, "mem.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match=r"list\.yaml: expected a mapping with 'name' and 'nodes'"):
        load_pipeline(bad)


def test_yaml_syntax_error_names_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: p\nnodes:\n  a: {fn: x:y\n")
    with pytest.raises(SpecError, match=r"broken\.yaml: line \d+, column \d+: invalid YAML"):
        load_pipeline(bad)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(SpecFileNotFoundError, match="no such pipeline file") as info:
        load_pipeline(tmp_path / "none.yaml")
    assert isinstance(info.value, FileNotFoundError)


def test_set_overrides_before_validation():
    spec = load_pipeline(SALES, ["nodes.extract.params.rows=1000", "storage=/tmp/x",
                                 "storage_options.account_key=env://AZ_KEY"])
    assert spec.nodes["extract"].params == {"rows": 1000, "seed": 1} and spec.storage_uri == "/tmp/x"
    assert spec.storage_options == {"account_key": "env://AZ_KEY"}  # a reference, kept as written
    assert load_pipeline(SALES).nodes["extract"].params["rows"] == 10  # the file itself is untouched


def test_override_paths_with_dotted_node_names():
    data = {"nodes": {"a.b": {"params": {"n": 1}}}}
    assert apply_overrides(data, ["nodes.a.b.params.n=2"])["nodes"]["a.b"]["params"]["n"] == 2
    assert data["nodes"]["a.b"]["params"]["n"] == 1
    with pytest.raises(SpecError, match=r"--set nodes\.a\.b\.params\.n\.x: nodes\.a\.b\.params\.n is not a mapping"):
        apply_overrides(data, ["nodes.a.b.params.n.x=2"])
    with pytest.raises(SpecError, match="expected key.path=value"):
        apply_overrides(data, ["nodes"])


def test_parse_memory():
    assert parse_memory("64MiB") == 64 * 2**20 and parse_memory("2GB") == 2 * 10**9 and parse_memory(5) == 5
    with pytest.raises(ValueError, match="unit"):
        parse_memory("lots")
