"""The odibi-ray CLI on a real local storage folder: typer's CliRunner on the local backend, plus one real
subprocess of the installed script. Exit codes: 0 ok, 1 run failed, 2 user error."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from odibi_ray.checkpoint.store import RunManifest, list_runs
from odibi_ray.cli import app
from odibi_ray.storage.uri import open_storage

ROOT = Path(__file__).resolve().parent.parent
SALES = str(ROOT / "tests" / "fixtures" / "sales.yaml")
FLAKY = str(ROOT / "tests" / "fixtures" / "flaky.yaml")


def cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})  # wide tables: no wrapped cells


def ok(*args: str):
    r = cli(*args)
    assert r.exit_code == 0, (r.exit_code, r.stdout, r.stderr, r.exception)
    return r


@pytest.fixture
def store(tmp_path) -> str:
    return str(tmp_path / "store")


@pytest.mark.parametrize("command", [[], ["run"], ["runs"], ["status"], ["cache"], ["cache", "ls"],
                                     ["cache", "purge"], ["checkpoints"], ["checkpoints", "ls"],
                                     ["checkpoints", "clean"], ["graph"], ["metrics"], ["report"], ["demo"]])
def test_every_command_has_help(command):
    r = ok(*command, "--help")
    assert "Usage:" in r.stdout


def test_run_then_rerun_is_cached_and_inspection_commands(store, tmp_path):
    cached = ["--set", "nodes.clean.cache=true"]  # the file says cache: false for clean
    r = ok("run", SALES, "--backend", "local", "--storage", store, *cached)
    for node in ("extract", "clean", "total"):
        assert node in r.stdout
    assert "succeeded (3 succeeded)" in r.stdout
    r = ok("run", SALES, "--backend", "local", "--storage", store, *cached)
    assert "succeeded (3 cached)" in r.stdout
    runs = list_runs(open_storage(store), "sales_yaml")
    assert len(runs) == 2 and all(m["status"] == "succeeded" for m in runs)

    r = ok("runs", "sales_yaml", "--storage", store)
    assert r.stdout.count("succeeded") == 2 and runs[0]["run_id"] in r.stdout
    r = ok("status", "--pipeline", "sales_yaml", "--storage", store)
    assert f"run {runs[0]['run_id']}: succeeded" in r.stdout and "nodes: 3 cached" in r.stdout
    r = ok("status", runs[1]["run_id"], "--pipeline", SALES, "--storage", store)
    assert f"run {runs[1]['run_id']}: succeeded" in r.stdout and "nodes: 3 succeeded" in r.stdout

    r = ok("metrics", runs[0]["run_id"], "--pipeline", "sales_yaml", "--storage", store)
    assert f"# odibi_ray run {runs[0]['run_id']} of pipeline sales_yaml" in r.stdout  # a comment, not a label
    assert 'run="' not in r.stdout and "# TYPE " in r.stdout and "cache_hits" in r.stdout
    r = ok("metrics", "latest", "--pipeline", "sales_yaml", "--storage", store, "--format", "json")
    body = json.loads(r.stdout)
    assert body["run_id"] == runs[0]["run_id"] and body["pipeline"] == "sales_yaml"
    assert body["metrics"]["format"] == "odibi-metrics/1"

    out = tmp_path / "run.html"
    ok("report", runs[1]["run_id"], "--pipeline", "sales_yaml", "--storage", store, "-o", str(out))
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and runs[1]["run_id"] in html and "total" in html

    r = ok("cache", "ls", "--storage", store)
    assert "3 object(s)" in r.stdout
    r = ok("cache", "ls", "--storage", store, "--node", "clean")
    assert "1 object(s)" in r.stdout

    r = ok("checkpoints", "ls", "--pipeline", "sales_yaml", "--storage", store)
    assert runs[0]["run_id"] in r.stdout and runs[1]["run_id"] in r.stdout
    r = ok("checkpoints", "clean", "--keep", "1", "--pipeline", "sales_yaml", "--storage", store, "--dry-run")
    assert "would remove run sales_yaml/" + runs[1]["run_id"] in r.stdout
    assert len(list_runs(open_storage(store), "sales_yaml")) == 2
    r = ok("checkpoints", "clean", "--keep", "1", "--pipeline", "sales_yaml", "--storage", store)
    assert "kept 3 object(s) still referenced" in r.stdout  # the kept run uses them (as cached nodes)
    assert [m["run_id"] for m in list_runs(open_storage(store), "sales_yaml")] == [runs[0]["run_id"]]

    r = ok("cache", "purge", "--storage", store, "--node", "total", "--dry-run")
    assert "would remove 1 object(s)" in r.stdout
    assert "3 object(s)" in ok("cache", "ls", "--storage", store).stdout
    ok("cache", "purge", "--storage", store, "--node", "total")
    assert "2 object(s)" in ok("cache", "ls", "--storage", store).stdout
    r = ok("run", SALES, "--backend", "local", "--storage", store, *cached)
    assert "succeeded (2 cached, 1 succeeded)" in r.stdout  # total was purged: recomputed, nothing else


def test_failed_run_exits_1_and_resume_finishes_it(store, tmp_path):
    flag = tmp_path / "fail"
    flag.write_text("x")
    r = cli("run", FLAKY, "--backend", "local", "--storage", store, "--set", f"nodes.check.params.flag_file={flag}")
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert "failed" in r.stdout and "flag file present" in r.stdout
    assert "error: pipeline 'flaky_yaml' failed: node 'check' failed after 1 attempt(s)" in r.stderr
    r = ok("status", "--pipeline", "flaky_yaml", "--storage", store)
    assert ": failed" in r.stdout
    flag.unlink()
    r = ok("run", FLAKY, "--backend", "local", "--storage", store, "--resume", "latest",
           "--set", f"nodes.check.params.flag_file={flag}")
    assert "succeeded (2 resumed, 1 succeeded)" in r.stdout
    runs = list_runs(open_storage(store), "flaky_yaml")
    assert len(runs) == 1 and runs[0]["status"] == "succeeded"  # the same run, finished


def test_status_shows_an_abandoned_run(store):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process
    manifest = RunManifest(open_storage(store), "ghost", "r1")
    manifest.create({"started_at": time.time(), "driver": {"host": socket.gethostname(), "pid": dead.pid},
                     "nodes": {"a": {"key": "ab" * 32, "level": 0}}})
    r = ok("status", "r1", "--pipeline", "ghost", "--storage", store)
    assert "pipeline ghost run r1: abandoned" in r.stdout
    r = ok("runs", "--storage", store)
    assert "ghost" in r.stdout and "abandoned" in r.stdout


def test_resume_of_a_live_looking_run_needs_force(store):
    """A run whose driver looks alive from here (another host that beats recently) is refused with a line that
    names --force; with --force it is taken over and finished. --force alone is a usage error."""
    ok("run", SALES, "--backend", "local", "--storage", store)
    rid = list_runs(open_storage(store), "sales_yaml")[0]["run_id"]
    manifest = RunManifest(open_storage(store), "sales_yaml", rid)
    body, info = manifest.read()
    open_storage(store).put(manifest.key, json.dumps(dict(body, status="running", updated_at=time.time(),
                                                          driver={"host": "elsewhere", "pid": 1})).encode(),
                            if_match=info.etag)
    r = cli("run", SALES, "--backend", "local", "--storage", store, "--resume", rid)
    assert r.exit_code == 2 and "is still running (driver host elsewhere, pid 1" in r.stderr and "--force" in r.stderr
    r = ok("run", SALES, "--backend", "local", "--storage", store, "--resume", rid, "--force", "--heartbeat", "5")
    assert "succeeded (3 resumed)" in r.stdout
    body, _ = manifest.read()
    assert body["status"] == "succeeded" and body["resumes"] == 1 and body["heartbeat_s"] == 5.0
    r = cli("run", SALES, "--backend", "local", "--storage", store, "--force")
    assert r.exit_code == 2 and "--force only applies with --resume" in r.stderr


def test_select_runs_only_the_subgraph(store):
    r = ok("run", SALES, "--backend", "local", "--storage", store, "--select", "+clean")
    assert "succeeded (2 succeeded)" in r.stdout and "total" not in r.stdout
    r = ok("run", SALES, "--backend", "local", "--storage", store, "--select", "clean+")
    assert "(1 cached, 2 succeeded)" in r.stdout  # extract is needed: taken from the cache
    r = cli("run", SALES, "--backend", "local", "--storage", store, "--select", "nothere+")
    assert r.exit_code == 2 and "no node 'nothere'" in r.stderr


def test_python_dag_target(store):
    r = ok("run", "tests.pipelines_for_tests:python_dag", "--backend", "local", "--storage", store)
    assert "sales_yaml run" in r.stdout and "succeeded (3 succeeded)" in r.stdout
    r = cli("run", "tests.pipelines_for_tests:nothere", "--backend", "local", "--storage", store)
    assert r.exit_code == 2 and "has no attribute 'nothere'" in r.stderr


def test_graph_mermaid_and_dot():
    r = ok("graph", SALES)
    assert r.stdout.splitlines()[:4] == ["flowchart LR", '    n0["extract"]', '    n1["clean"]', '    n2["total"]']
    assert "n0 --> n1" in r.stdout and "n1 --> n2" in r.stdout
    r = ok("graph", SALES, "--format", "dot")
    assert r.stdout.startswith('digraph "sales_yaml" {') and '"extract" -> "clean";' in r.stdout
    assert '{ rank=same; "total"; }' in r.stdout


@pytest.mark.parametrize("args, fragment", [
    (["run", SALES, "--set", "nodes.clean.retry.max_attempts=0"],
     f"error: {SALES}: nodes.clean.retry.max_attempts: Input should be greater than or equal to 1"),
    (["run", "nowhere.yaml"], "error: nowhere.yaml: no such pipeline file"),
    (["run", "neither"], "error: neither: not a pipeline file"),
    (["graph", SALES, "--set", "nodes.x.fn=nosuch:f"], "nodes.x.fn: cannot import 'nosuch:f' for node 'x'"),
    (["status", "nope", "--pipeline", "sales_yaml", "--storage", "{store}"], "error: no run 'nope' of pipeline"),
    (["metrics", "latest", "--pipeline", "sales_yaml", "--storage", "{store}"], "has no runs in"),
    (["runs", "--storage", "wat://x"], "unknown storage scheme 'wat'"),
])
def test_user_errors_are_one_line_and_exit_2(args, fragment, store):
    r = cli(*[a.replace("{store}", store) for a in args])
    assert r.exit_code == 2, (r.stdout, r.stderr, r.exception)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert fragment in r.stderr and "Traceback" not in r.stderr


def test_debug_shows_the_exception():
    r = cli("--debug", "run", SALES, "--set", "nodes.clean.bogus=1")
    assert r.exit_code == 2  # a user error keeps its exit code with --debug
    assert "Traceback" in r.stderr and "SpecError" in r.stderr and "nodes.clean.bogus" in r.stderr


def test_purge_needs_a_filter(store):
    r = cli("cache", "purge", "--storage", store)
    assert r.exit_code == 2 and "at least one filter" in r.stderr


def test_installed_script_runs_a_yaml_pipeline(tmp_path):
    """The real `odibi-ray` console script in a subprocess (the local backend: no Ray to start)."""
    script = Path(sys.executable).parent / "odibi-ray"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    proc = subprocess.run([str(script), "run", SALES, "--backend", "local", "--storage", str(tmp_path / "s"),
                           "--set", "nodes.extract.params.rows=100"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "sales_yaml run" in proc.stdout and "succeeded (3 succeeded)" in proc.stdout
    proc = subprocess.run([str(script), "run", str(tmp_path / "none.yaml")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("none.yaml: no such pipeline file")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_run_on_ray(ray_local, store):
    """The default backend: every node a Ray task on the session's local Ray (worker ids are Ray node ids)."""
    r = ok("run", SALES, "--storage", store, "--set", "nodes.clean.resources.custom={}")  # no 'bigmem' here
    assert "on ray: succeeded" in r.stdout and "succeeded (3 succeeded)" in r.stdout
    assert ray_local.get_runtime_context().get_node_id()[:12] in r.stdout


def test_demo_command(store):
    r = ok("demo", "--backend", "local", "--rows", "2000", "--storage", store)
    assert "demo_sales" in r.stdout and "succeeded" in r.stdout
    assert [m["status"] for m in list_runs(open_storage(store), "demo_sales")] == ["succeeded"]


def test_run_fuse_flag_fuses_the_chain_on_ray(ray_local, store, tmp_path, monkeypatch):
    """``--fuse`` reaches run(): the chain extract -> clean -> total (same resources) runs as one Ray task."""
    import odibi_ray.cli as cli_module

    seen: list[dict] = []
    real = cli_module.run_dag

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    submitted: list[int] = []
    from odibi_ray.execution.backends.ray_tasks import RayBackend

    real_chain = RayBackend.submit_chain

    def chain_spy(self, nodes, *args, **kwargs):
        submitted.append(len(nodes))
        return real_chain(self, nodes, *args, **kwargs)

    monkeypatch.setattr(cli_module, "run_dag", spy)
    monkeypatch.setattr(RayBackend, "submit_chain", chain_spy)
    pipeline = tmp_path / "chain.yaml"
    pipeline.write_text("name: chain_yaml\ndefaults: {resources: {num_cpus: 0.5}}\nnodes:\n"
                        "  extract: {fn: tests.pipelines_for_tests:extract, params: {rows: 10, seed: 1}}\n"
                        "  clean: {fn: tests.pipelines_for_tests:clean, inputs: {raw: extract}}\n"
                        "  total: {fn: tests.pipelines_for_tests:total, inputs: [clean], params: {scale: 2}}\n")
    r = ok("run", str(pipeline), "--storage", store, "--fuse")
    assert "succeeded (3 succeeded)" in r.stdout
    assert seen[-1]["fuse"] is True and submitted == [3]
    submitted.clear()
    ok("run", str(pipeline), "--storage", store + "2")  # without the flag: one task per node
    assert seen[-1]["fuse"] is False and submitted == []
