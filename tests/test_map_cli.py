"""Mapped nodes in the CLI: `graph` marks them (text, Mermaid, DOT); `run` shows each mapped node's items by status
(``5 items: 4 cached, 1 succeeded``), its failed items and their errors, retried and (allow_partial) failed items;
`status` and `logs` show the items of a run made with `run`. Local backend, a real storage folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from odibi_ray import DAG, MapSpec, Node
from odibi_ray.cli import app, to_dot, to_mermaid, to_text
from odibi_ray.definition.spec import load_pipeline

from . import map_yaml_steps as steps

PIPELINE = """\
name: squares_cli
nodes:
  numbers: {fn: tests.map_yaml_steps:numbers, params: {n: 4}, cache: false}
  sq:
    fn: tests.map_yaml_steps:square
    params: {marks: MARKS}
    map: {over: numbers, max_parallel: 8}
  total: {fn: tests.map_yaml_steps:total, inputs: {values: sq}}
"""


def cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})  # wide tables: no wrapped cells


def ok(*args: str, code: int = 0):
    r = cli(*args)
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr, r.exception)
    return r


def row(out: str, node: str) -> str:
    """The table line of ``node`` (its second column)."""
    lines = [line for line in out.splitlines() if line.split()[1:2] == [node]]
    assert len(lines) == 1, (node, out)
    return lines[0]


@pytest.fixture
def pipeline(tmp_path) -> str:
    marks = tmp_path / "marks"
    marks.mkdir()
    path = tmp_path / "squares.yaml"
    path.write_text(PIPELINE.replace("MARKS", str(marks)))
    return str(path)


@pytest.fixture
def store(tmp_path) -> str:
    return str(tmp_path / "store")


def test_graph_shows_the_mapped_node(pipeline):
    text = ok("graph", pipeline, "--format", "text").stdout
    assert "level 1  sq  [map over numbers, max_parallel 8]\n" in text
    assert "level 2  total  <- sq" in text and "level 0  numbers\n" in text
    options = ["--set", "nodes.sq.map={over: numbers, batch_rows: 2, allow_partial: true, reduce: "
               "tests.map_yaml_steps:largest}"]
    assert "sq  [map over numbers, batch_rows 2, reduce largest, allow_partial]" in ok(
        "graph", pipeline, "--format", "text", *options).stdout
    mermaid = ok("graph", pipeline).stdout
    assert 'n1[["sq [map over numbers, max_parallel 8]"]]' in mermaid and "n0 -->|map| n1" in mermaid
    assert "n1 --> n2" in mermaid
    dot = ok("graph", pipeline, "--format", "dot").stdout
    assert '"sq" [shape=box3d, label="sq\\n[map over numbers, max_parallel 8]"];' in dot
    assert '"numbers" -> "sq" [style=bold, label="map"];' in dot and '"sq" -> "total";' in dot


def test_plain_pipelines_are_drawn_as_before_and_labels_are_escaped():
    dag = load_pipeline(Path(__file__).parent / "fixtures" / "sales.yaml").to_dag()
    assert "[map" not in to_text(dag) + to_mermaid(dag) + to_dot(dag) and "-->|map|" not in to_mermaid(dag)
    mapped = DAG("lam")
    mapped.add_node(Node("numbers", steps.numbers))
    mapped.add_node(Node("sq", steps.square, map_over=MapSpec("numbers", reduce=lambda xs: xs)))
    assert '[["sq [map over numbers, reduce #lt;lambda#gt;]"]]' in to_mermaid(mapped)  # no raw HTML in a label
    assert 'label="sq\\n[map over numbers, reduce <lambda>]"' in to_dot(mapped)


def test_run_shows_items_then_one_new_item(pipeline, store, tmp_path):
    r = ok("run", pipeline, "--backend", "local", "--storage", store)
    assert "4 items: 4 succeeded" in row(r.stdout, "sq")
    assert row(r.stdout, "sq").split()[2:4] == ["succeeded", "4"]  # status, then its items' attempts
    r = ok("run", pipeline, "--backend", "local", "--storage", store, "--set", "nodes.numbers.params.n=5")
    assert "5 items: 4 cached, 1 succeeded" in row(r.stdout, "sq")
    assert row(r.stdout, "sq").split()[2:4] == ["succeeded", "1"] and "succeeded" in row(r.stdout, "total")
    status = ok("status", "--storage", store).stdout
    assert "5 items: 4 cached, 1 succeeded" in row(status, "sq")
    outputs = status.split("outputs:\n")[1]
    for i in range(5):  # each item's object, the four older ones written by the first run
        assert f"  sq[{i}]  " in outputs
    assert outputs.count("(written by this run)") == 3  # numbers, sq[4], total
    logs = ok("logs", "latest", "sq", "--storage", store).stdout
    assert "=== node 'sq[4]', attempt 1 (succeeded) ===" in logs and "sq[0]" not in logs  # cached items: no attempt
    assert "did not run" in ok("logs", "latest", "sq[0]", "--storage", store).stdout
    r = ok("run", pipeline, "--backend", "local", "--storage", store, "--set", "nodes.numbers.params.n=5")
    assert "5 items: 5 cached" in row(r.stdout, "sq")
    assert "no item of node 'sq' ran in run" in ok("logs", "latest", "sq", "--storage", store).stdout


def test_a_failed_item_is_shown_with_its_error(pipeline, store, tmp_path):
    (tmp_path / "marks" / "fail-3").touch()  # square(3) fails while it exists
    r = ok("run", pipeline, "--backend", "local", "--storage", store, code=1)
    assert "4 items: 3 succeeded, 1 failed" in row(r.stdout, "sq") and "failed" in row(r.stdout, "sq")
    assert "ValueError: no square for 3" in row(r.stdout, "sq[2]") and "skipped" in row(r.stdout, "total")
    assert "--- node 'sq' item 'sq[2]', attempt 1 of 1 ---" in r.stderr
    assert 'raise ValueError(f"no square for {x}")' in r.stderr and "square: refusing 3" in r.stderr
    assert "error: pipeline 'squares_cli' failed: node 'sq' failed: 1 of 4 item(s) failed (sq[2])" in r.stderr
    logs = ok("logs", "latest", "sq[2]", "--storage", store).stdout
    assert "=== node 'sq[2]', attempt 1 (failed: ValueError) ===\nsquare: refusing 3" in logs
    # resume: only the failed item runs again (and succeeds now)
    (tmp_path / "marks" / "fail-3").unlink()
    r = ok("run", pipeline, "--backend", "local", "--storage", store, "--resume", "latest")
    assert "4 items: 3 resumed, 1 succeeded" in row(r.stdout, "sq")


def test_allow_partial_and_retried_items_get_a_line(pipeline, store, tmp_path):
    partial = ["--set", "nodes.sq.params.fail_on=2", "--set", "nodes.sq.map.allow_partial=true"]
    r = ok("run", pipeline, "--backend", "local", "--storage", store, *partial)
    assert "4 items: 3 succeeded, 1 failed; 1 of 4 item(s) failed (allow_partial)" in row(r.stdout, "sq")
    assert ("node 'sq': 1 of 4 item(s) failed, its consumers got the others (allow_partial); sq[1]: ValueError: "
            "no square for 2") in r.stdout
    flaky = tmp_path / "flaky"
    flaky.mkdir()
    r = ok("run", pipeline, "--backend", "local", "--storage", store, "--set", "nodes.sq.fn=tests.map_yaml_steps:"
           "flaky_square", "--set", f"nodes.sq.params.marks={flaky}", "--set", "nodes.sq.retry={max_attempts: 2, "
           "delay_s: 0}")
    assert "node 'sq': 1 of 4 item(s) retried after ConnectionError and succeeded (sq[1])" in r.stdout
    assert row(r.stdout, "sq").split()[2:4] == ["succeeded", "5"]


def test_a_map_that_cannot_split_its_input(pipeline, store):
    r = ok("run", pipeline, "--backend", "local", "--storage", store, "--set", "nodes.numbers.fn=builtins:dict",
           "--set", "nodes.numbers.params={}", code=1)
    assert "MapSplitError: node 'sq' maps over 'numbers', which returned a dict" in row(r.stdout, "sq")
    assert "node 'sq' failed (MapSplitError)" in r.stderr and "--- node 'sq' ---" in r.stderr
