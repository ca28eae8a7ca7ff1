"""What a newcomer meets in the engine (issue 13): a fully cached run does not start Ray, recomputing on purpose
(``refresh``), a resume of a run that had already succeeded says so, a cycle is reported as a cycle, Ray's
token-auth notice is kept off the terminal for a local Ray odibi_ray starts. On a real folder and Azurite."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from odibi_ray import DAG, CycleError, Node, NodeStatus, run
from odibi_ray.checkpoint import layout
from odibi_ray.checkpoint.objectmeta import CheckpointMeta

from . import cp_nodes
from .cp_nodes import ran

REPO = Path(__file__).resolve().parents[1]


def pipeline(marks, source_file=None) -> DAG:
    m = str(marks)
    dag = DAG("fresh")
    if source_file is None:
        dag.add_node(Node("source", cp_nodes.source, params={"marks": m}))
    else:
        dag.add_node(Node("source", read_rows, params={"marks": m, "path": str(source_file)}))
    dag.add_node(Node("double", cp_nodes.double, inputs={"table": "source"}, params={"marks": m}))
    dag.add_node(Node("total", cp_nodes.total, inputs={"table": "double"}, params={"marks": m}))
    return dag


def read_rows(marks: str, path: str):
    """A source whose data changes without its key changing (the file's content is not part of the key)."""
    import pyarrow as pa

    cp_nodes._mark(marks, "source")
    return pa.table({"id": [int(x) for x in Path(path).read_text().split()]})


def stored_run_id(store, dag: DAG, result, node: str) -> str:
    info = store.head(layout.object_key(dag.name, result.nodes[node].cache_key))
    return CheckpointMeta.from_info(info).run_id


# --- refresh ----------------------------------------------------------------------------------------------------


def test_refresh_recomputes_a_cached_node_and_writes_over_its_stale_object(store, marks, tmp_path):
    rows = tmp_path / "rows.txt"
    rows.write_text("1 2 3")
    first = run(pipeline(marks, rows), backend="local", storage=store, progress=False).raise_for_status()
    assert first["total"] == {"sum": 12, "rows": 3}
    rows.write_text("1 2 3 4")  # the source changed; its key did not
    stale = run(pipeline(marks, rows), backend="local", storage=store, progress=False)
    assert {r.status for r in stale.nodes.values()} == {NodeStatus.CACHED} and stale["total"]["sum"] == 12
    fresh = run(pipeline(marks, rows), backend="local", storage=store, progress=False,
                refresh=["source+"]).raise_for_status()
    assert {n: r.status for n, r in fresh.nodes.items()} == {n: NodeStatus.SUCCEEDED for n in fresh.nodes}
    assert fresh["total"] == {"sum": 20, "rows": 4}
    assert ran(marks) == {"source": 2, "double": 2, "total": 2}
    # the source keeps its key (its object is written over); the nodes below it are keyed on its new content
    assert fresh.nodes["source"].cache_key == first.nodes["source"].cache_key
    assert all(fresh.nodes[n].cache_key != first.nodes[n].cache_key for n in ("double", "total"))
    for node in ("source", "double", "total"):  # objects written by this run
        assert stored_run_id(store, pipeline(marks, rows), fresh, node) == fresh.run_id
    again = run(pipeline(marks, rows), backend="local", storage=store, progress=False)
    assert {r.status for r in again.nodes.values()} == {NodeStatus.CACHED} and again["total"]["sum"] == 20


def test_a_resume_finishes_the_refresh_of_the_run_it_resumes(local_storage, marks, tmp_path):
    """A refresh whose node failed leaves the stale object in place; resuming that run recomputes the node (and
    the other refreshed nodes it did not finish) instead of taking the stale object from the cache."""
    rows = tmp_path / "rows.txt"
    rows.write_text("1 2 3")
    run(pipeline(marks, rows), backend="local", storage=local_storage, progress=False).raise_for_status()
    rows.write_text("1 2 x")  # the new source is broken: the refresh fails at source
    failed = run(pipeline(marks, rows), backend="local", storage=local_storage, progress=False, refresh="source+")
    assert {n: r.status.value for n, r in failed.nodes.items()} == {"source": "failed", "double": "skipped",
                                                                    "total": "skipped"}
    rows.write_text("1 2 3 4")  # fixed
    resumed = run(pipeline(marks, rows), backend="local", storage=local_storage, progress=False,
                  resume="latest").raise_for_status()
    assert resumed.run_id == failed.run_id
    assert {r.status for r in resumed.nodes.values()} == {NodeStatus.SUCCEEDED}
    assert resumed["total"] == {"sum": 20, "rows": 4}  # not the stale 12 of the first run
    assert ran(marks) == {"source": 3, "double": 2, "total": 2}


def test_refresh_of_one_node_only_and_its_errors(local_storage, marks):
    first = run(pipeline(marks), backend="local", storage=local_storage, progress=False).raise_for_status()
    again = run(pipeline(marks), backend="local", storage=local_storage, progress=False, refresh="double")
    assert {n: r.status.value for n, r in again.nodes.items()} == {"source": "cached", "double": "succeeded",
                                                                   "total": "cached"}
    assert again["total"] == first["total"] and ran(marks) == {"source": 1, "double": 2, "total": 1}
    with pytest.raises(ValueError, match="refresh 'nope\\+': no node 'nope' in pipeline 'fresh'"):
        run(pipeline(marks), backend="local", storage=local_storage, progress=False, refresh=["nope+"])
    with pytest.raises(ValueError, match="refresh= needs storage="):
        run(pipeline(marks), backend="local", progress=False, refresh=["double"])


def test_refresh_on_ray_with_write_behind_confirms_the_new_object(azurite_storage, marks, ray_local):
    """Written behind, the refreshed object is confirmed only once it is this run's (the stale one does not
    count), so the run reports the bytes it wrote and the object is the new one."""
    first = run(pipeline(marks), storage=azurite_storage, progress=False).raise_for_status()
    again = run(pipeline(marks), storage=azurite_storage, progress=False, refresh=["total"]).raise_for_status()
    assert again.nodes["total"].status is NodeStatus.SUCCEEDED and again["total"] == first["total"]
    assert again.nodes["total"].attempt_history[-1].bytes_written > 0
    assert stored_run_id(azurite_storage, pipeline(marks), again, "total") == again.run_id


# --- a fully cached run does not start Ray ----------------------------------------------------------------------


def test_a_fully_cached_run_on_the_ray_backend_does_not_start_ray(tmp_path, marks):
    """In a fresh process: the cache is filled without Ray, then a run with backend="ray" finds every node cached
    and answers without starting (or joining) Ray; the outputs are read from storage."""
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(REPO)!r})
        import ray
        from odibi_ray import run
        from tests.test_first_hour_engine import pipeline
        store = {str(tmp_path / "store")!r}
        run(pipeline({str(marks)!r}), backend="local", storage=store, progress=False).raise_for_status()
        cached = run(pipeline({str(marks)!r}), backend="ray", storage=store, progress=False)
        print(json.dumps({{"statuses": sorted({{r.status.value for r in cached.nodes.values()}}),
                          "total": cached["total"], "ray": ray.is_initialized()}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"statuses": ["cached"], "total": {"sum": 6, "rows": 3}, "ray": False}
    assert "Started a local Ray" not in out.stderr


def test_token_auth_notice_is_dropped_only_for_a_local_ray_odibi_ray_starts(caplog):
    from odibi_ray.execution.backends.ray_tasks import _quiet_token_notice

    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    notice = "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out."
    with caplog.at_level(logging.WARNING, logger=logger.name):
        with _quiet_token_notice(local=True):
            logger.warning(notice)
            logger.warning("Token authentication is disabled for this Ray cluster.")  # another line: kept
        with _quiet_token_notice(local=False):
            logger.warning(notice)  # a cluster the user joins: theirs to see
        logger.warning(notice)
    assert [r.getMessage() for r in caplog.records] == [
        "Token authentication is disabled for this Ray cluster.", notice, notice]


# --- resume of a succeeded run, cycles ----------------------------------------------------------------------------


def test_resuming_a_run_that_had_already_succeeded_says_so(local_storage, marks, caplog):
    first = run(pipeline(marks), backend="local", storage=local_storage, progress=False).raise_for_status()
    with caplog.at_level(logging.WARNING, logger="odibi_ray"):
        again = run(pipeline(marks), backend="local", storage=local_storage, progress=False, resume=first.run_id)
    assert again.resumed_from == "succeeded" and "had already succeeded" in again.summary()
    assert any("had already succeeded" in r.getMessage() for r in caplog.records)
    assert {r.status for r in again.nodes.values()} == {NodeStatus.RESUMED}
    failed_then = run(pipeline(marks), backend="local", storage=local_storage, progress=False, refresh="total")
    assert failed_then.resumed_from is None and "had already succeeded" not in failed_then.summary()


def test_a_cycle_whose_closing_edge_the_function_does_not_take_is_a_cycle():
    dag = DAG("loop")
    dag.add_node(Node("a", lambda x: x, inputs={"x": "b"}))
    dag.add_node(Node("b", lambda y: y, inputs={"y": "a", "z": "a"}))  # z is not a parameter of b's function
    with pytest.raises(CycleError):
        dag.validate()


def test_cli_refresh_reruns_a_cached_node_and_its_descendants(tmp_path):
    from typer.testing import CliRunner

    from odibi_ray.cli import app

    sales, store = str(REPO / "tests" / "fixtures" / "sales.yaml"), str(tmp_path / "store")

    def cli(*args: str):
        return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})

    assert cli("run", sales, "--backend", "local", "--storage", store).exit_code == 0
    r = cli("run", sales, "--backend", "local", "--storage", store, "--refresh", "clean+")
    assert r.exit_code == 0, r.output
    assert "(1 cached, 2 succeeded)" in r.stdout  # extract cached; clean and its descendant total run again
    r = cli("run", sales, "--backend", "local", "--storage", store, "--refresh", "nope")
    assert r.exit_code == 2 and "refresh 'nope': no node 'nope' in pipeline 'sales_yaml'" in r.stderr
