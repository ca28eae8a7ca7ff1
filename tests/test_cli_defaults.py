"""The CLI's defaults and tables (issue 13, items 8, 9 and 10): the inspection commands find ./.odibi/ by
themselves and take the pipeline as an argument or as --pipeline alike; tables never cut an id and print plain
columns when stdout is not a terminal; `status` says where each node's output is stored.

Every test runs in its own empty current directory (monkeypatch.chdir) on the local backend (no Ray)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from odibi_ray.checkpoint import layout
from odibi_ray.checkpoint.store import RunManifest, list_runs
from odibi_ray.cli import Col, Grid, app
from odibi_ray.storage.uri import open_storage

ROOT = Path(__file__).resolve().parent.parent
SALES = str(ROOT / "tests" / "fixtures" / "sales.yaml")
CACHED = ["--set", "nodes.clean.cache=true"]  # the file says cache: false for clean
BOX = re.compile("[\u2500-\u257f]")  # box drawing characters


def cli(*args: str, columns: int = 80):
    """The CLI as a pipe sees it: CliRunner's stdout is not a terminal (colour forcing switched off)."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns), "FORCE_COLOR": None,
                                                    "TTY_COMPATIBLE": None, "TTY_INTERACTIVE": None})


def ok(*args: str, columns: int = 80):
    r = cli(*args, columns=columns)
    assert r.exit_code == 0, (r.exit_code, r.stdout, r.stderr, r.exception)
    return r


def user_error(*args: str) -> str:
    r = cli(*args)
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr, r.exception)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    return r.stderr


def run_ids(store: str, pipeline: str) -> list[str]:
    return [m["run_id"] for m in list_runs(open_storage(store), pipeline)]


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    """An empty current directory with three pipelines run in it: sales_yaml twice (the second run fully
    cached) in its default storage .odibi/sales_yaml, `second` in .odibi/second, and `third` in
    .odibi/elsewhere (a storage not named after its pipeline, like the demo's .odibi/demo)."""
    monkeypatch.chdir(tmp_path)
    ok("run", SALES, "--backend", "local", *CACHED)
    ok("run", SALES, "--backend", "local", *CACHED)
    ok("run", SALES, "--backend", "local", "--set", "name=second")
    ok("run", SALES, "--backend", "local", "--set", "name=third", "--storage", ".odibi/elsewhere")
    return tmp_path


def test_runs_without_arguments_lists_every_pipeline_in_dot_odibi(here):
    r = ok("runs")
    for store, pipeline in ((".odibi/sales_yaml", "sales_yaml"), (".odibi/second", "second"),
                            (".odibi/elsewhere", "third")):
        for rid in run_ids(store, pipeline):
            line = next(line for line in r.stdout.splitlines() if rid in line)
            assert line.split()[:3] == [pipeline, rid, "succeeded"] and line.endswith(store)
    assert len(run_ids(".odibi/sales_yaml", "sales_yaml")) == 2


@pytest.mark.parametrize("how", [["sales_yaml"], ["--pipeline", "sales_yaml"], ["--pipeline", SALES],
                                 ["sales_yaml", "--pipeline", "sales_yaml"],
                                 ["sales_yaml", "--storage", ".odibi/sales_yaml"]])
def test_runs_of_one_pipeline_as_argument_or_option(here, how):
    r = ok("runs", *how)
    assert all(rid in r.stdout for rid in run_ids(".odibi/sales_yaml", "sales_yaml"))
    assert "second" not in r.stdout and "third" not in r.stdout


def test_a_pipeline_name_finds_a_storage_not_named_after_it(here):
    [rid] = run_ids(".odibi/elsewhere", "third")
    assert rid in ok("runs", "--pipeline", "third").stdout
    r = ok("status", "--pipeline", "third")
    assert f"pipeline third run {rid}: succeeded" in r.stdout and "storage .odibi/elsewhere" in r.stdout
    assert "3 object(s)" in ok("cache", "ls", "--pipeline", "third").stdout
    assert rid in ok("checkpoints", "ls", "--pipeline", "third").stdout


def test_inspection_commands_need_no_options_after_a_run(here):
    newest = run_ids(".odibi/elsewhere", "third")[0]  # the last run made
    r = ok("status")
    assert f"pipeline third run {newest}: succeeded" in r.stdout
    sales = run_ids(".odibi/sales_yaml", "sales_yaml")
    r = ok("status", sales[1])  # a run id alone: the pipeline holding it is found
    assert f"pipeline sales_yaml run {sales[1]}: succeeded" in r.stdout and "nodes: 3 succeeded" in r.stdout
    assert f"# odibi_ray run {newest} of pipeline third" in ok("metrics").stdout
    assert f"# odibi_ray run {sales[0]} of pipeline sales_yaml" in ok("metrics", sales[0]).stdout
    assert f"report of sales_yaml run {sales[0]} written to" in ok("report", sales[0], "-o", "r.html").stdout
    r = ok("cache", "ls")
    assert "9 object(s)" in r.stdout  # 3 per pipeline
    assert "3 object(s)" in ok("cache", "ls", "--pipeline", "sales_yaml").stdout
    r = ok("checkpoints", "ls")
    assert all(rid in r.stdout for rid in sales + run_ids(".odibi/second", "second") + [newest])
    r = ok("checkpoints", "clean", "--keep", "1", "--dry-run")
    assert f"would remove run sales_yaml/{sales[1]}" in r.stdout and r.stdout.count("would remove run") == 1
    assert run_ids(".odibi/sales_yaml", "sales_yaml") == sales


def test_status_says_where_each_output_is_stored(here):
    first, cached = run_ids(".odibi/sales_yaml", "sales_yaml")[::-1]
    body, _ = RunManifest(open_storage(".odibi/sales_yaml"), "sales_yaml", cached).read()
    r = ok("status", "--pipeline", "sales_yaml")
    assert f"run {cached}: succeeded" in r.stdout and "nodes: 3 cached" in r.stdout
    for node, entry in body["nodes"].items():
        assert entry["status"] == "cached"
        where = Path(".odibi/sales_yaml") / layout.object_key("sales_yaml", entry["key"])
        assert where.is_file()
        line = next(line for line in r.stdout.splitlines() if str(where) in line)
        assert line.split()[0] == node and f"written by run {first}" in line
    ok("cache", "purge", "--node", "total")  # gone since: status says so, at the same place
    r = ok("status", cached, "--pipeline", "sales_yaml")
    where = Path(".odibi/sales_yaml") / layout.object_key("sales_yaml", body["nodes"]["total"]["key"])
    assert f"{where}  (missing" in r.stdout


@pytest.mark.parametrize("command", [["run", SALES, "--backend", "local", *CACHED], ["runs"], ["status"],
                                     ["cache", "ls"], ["checkpoints", "ls"]])
def test_piped_tables_at_80_columns_are_plain_and_keep_every_id(here, command):
    r = ok(*command)
    assert not BOX.search(r.stdout) and "…" not in r.stdout, r.stdout
    ids = run_ids(".odibi/sales_yaml", "sales_yaml")
    if command[0] == "status":  # the newest run: third's; its outputs' cache keys, whole
        body, _ = RunManifest(open_storage(".odibi/elsewhere"), "third", run_ids(".odibi/elsewhere", "third")[0]).read()
        ids = [e["key"] for e in body["nodes"].values()]
        assert f"run {run_ids('.odibi/elsewhere', 'third')[0]}: succeeded" in r.stdout
    elif command[0] == "cache":
        store = open_storage(".odibi/sales_yaml")
        ids = [i.key.rsplit("/", 1)[-1] for i in store.list("objects/")]
        assert all(len(k) == 64 for k in ids)
    elif command[0] == "run":
        ids = ids[:1]
    for rid in ids:
        assert re.search(rf"(^|[\s/]){re.escape(rid)}(\s|$)", r.stdout, re.M), (rid, r.stdout)
    if command[0] in ("runs", "checkpoints", "cache"):  # one line per row, all its columns
        rows = [line for line in r.stdout.splitlines() if any(i in line for i in ids)]
        assert len(rows) == len(ids) and all(len(line) > 80 for line in rows)


def test_a_terminal_table_fits_its_width_and_never_cuts_an_id():
    worker = "f" * 56  # a Ray node id
    grid = Grid("p run 20261202T051609Z-0a1b2c on ray: failed", [
        Col("level", drop=3), Col("node", whole=True), Col("status"), Col("attempts", drop=1),
        Col("seconds", drop=2, justify="right"), Col("worker", whole=True, drop=4), Col("error / reason")])
    grid.add_row(0, "extract_orders", "failed", 3, "1.500", worker, "ValueError: " + "a long message " * 8)
    for width in (200, 120, 80, 60):
        console = Console(width=width, force_terminal=True, color_system=None)
        with console.capture() as capture:
            console.print(grid)
        out = capture.get()
        assert max(len(line) for line in out.splitlines()) <= width, out
        assert "extract_orders" in out and "20261202T051609Z-0a1b2c" in out and "…" not in out
        assert BOX.search(out)  # a box on a terminal
        assert worker in out or f"(left out at {width} columns: " in out and "worker" in out.split("left out")[1]
        assert out.count("message") == 8  # the error wrapped, all of it
    console = Console(width=80, force_terminal=False, color_system=None)
    with console.capture() as capture:
        console.print(grid)  # as `run` prints its table when piped: plain, still within the width
    assert not BOX.search(capture.get()) and "extract_orders" in capture.get()


def test_no_dot_odibi_says_what_was_looked_for_and_where(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in (["runs"], ["status"], ["cache", "ls"], ["checkpoints", "ls"], ["metrics"], ["report"],
                    ["runs", "--pipeline", "sales"]):
        err = user_error(*command)
        assert f"no .odibi/ folder in {tmp_path}" in err and "--storage" in err, (command, err)
    (tmp_path / ".odibi").mkdir()
    err = user_error("runs")
    assert f"no checkpoint storage in {tmp_path / '.odibi'}" in err and "runs/ or objects/" in err


def test_unknown_pipeline_or_run_names_what_is_there(here):
    err = user_error("runs", "--pipeline", "nosuch")
    assert "no runs or outputs of pipeline 'nosuch'" in err and str(here / ".odibi") in err
    assert ".odibi/elsewhere, .odibi/sales_yaml, .odibi/second" in err and "sales_yaml, second, third" in err
    err = user_error("status", "nope")
    assert f"no run 'nope' in {here / '.odibi'}" in err
    err = user_error("status", "nope", "--pipeline", "sales_yaml")
    assert "no run 'nope' of pipeline 'sales_yaml'" in err
    err = user_error("runs", "--pipeline", "second", "--storage", ".odibi/sales_yaml")
    assert "pipeline 'second' has no runs in .odibi/sales_yaml (it holds runs of sales_yaml)" in err
    r = cli("runs", "sales_yaml", "--pipeline", "second")
    assert r.exit_code == 2 and "two pipelines given" in r.stderr
