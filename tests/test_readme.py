"""The README's quick start runs as written: its code blocks are read out of README.md (never copied here) and run.

- the tour's Python block, in this process, on the session's local Ray (its ``run(dag)`` joins it), checking
  what the README says it prints;
- the seed API's block, the same way;
- the YAML + CLI story (``steps.py`` and ``pipeline.yaml`` as the README shows them, then its shell commands, in
  an empty folder): run, run again (cached), a failing node (exit code 1, its error printed), resume;
- the ETL story (``python examples/etl_pipeline.py ...``): run -> every node succeeded; again -> every node
  cached; ``--fail-at join`` -> the run fails at join; ``--resume latest`` -> it finishes, nothing else re-run.

The shell commands run as subprocesses with the folder as cwd (``examples`` is a link to the checkout's), the
venv's ``python`` and ``odibi-ray`` first on PATH, ``RAY_ADDRESS`` naming the session's Ray (so no command
starts a Ray of its own) and the loopback-only settings of conftest.py in their environment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from odibi_ray.checkpoint.store import RunManifest, list_runs
from odibi_ray.storage.uri import open_storage

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
FILE_BLOCK = re.compile(r"\A# ([\w.-]+\.(?:py|yaml))\n")
ETL_NODES = ["ingest_orders", "ingest_customers", "clean_orders", "clean_customers", "join", "aggregate",
             "write_orders", "write_summary"]
JOIN_AND_AFTER = {"join", "aggregate", "write_orders", "write_summary"}  # join and what depends on it


def section(heading: str) -> str:
    """The README's text from ``heading`` (a ``## `` line) to the next ``## `` heading."""
    start = README.index(f"\n{heading}\n") + 1
    nxt = re.search(r"^## ", README[start + len(heading):], re.M)
    return README[start: start + len(heading) + nxt.start()] if nxt else README[start:]


def blocks(text: str, lang: str) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(text) if m.group(1) == lang]


TOUR = section("## Five-minute tour")


def expected_prints(code: str) -> list[str]:
    """What the block says each ``print(...)  # <value>`` prints: the comment, up to a ``(`` remark."""
    out = []
    for line in code.splitlines():
        m = re.match(r"^print\(.*\)\s+#\s*(.+)$", line)
        if m:
            out.append(re.split(r"\s+\(", m.group(1))[0].strip())
    return out


def printed_in_order(out: str, expected: list[str]) -> None:
    lines = [ln.strip() for ln in out.splitlines()]
    pos = 0
    for want in expected:
        assert want in lines[pos:], f"the README says {want!r} is printed; printed: {lines}"
        pos = lines.index(want, pos) + 1


def run_block(code: str, capsys) -> tuple[dict, str]:
    """Run a README block as a pasted script would (module __main__), return its namespace and stdout."""
    namespace: dict = {"__name__": "__main__"}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    return namespace, capsys.readouterr().out


# --- the Python blocks ------------------------------------------------------------------------------

def test_tour_runs_as_written_on_a_local_ray(ray_local, capsys):
    from odibi_ray import NodeStatus

    tour = [b for b in blocks(TOUR, "python") if not FILE_BLOCK.match(b)]
    assert len(tour) == 1, "the tour has one Python block a newcomer pastes"
    code = tour[0]
    assert "load_rows" not in code and "bigmem" not in code  # what made it fail before
    ns, out = run_block(code, capsys)
    result = ns["result"]
    assert result.backend == "ray" and result.succeeded
    assert {r.status for r in result.nodes.values()} == {NodeStatus.SUCCEEDED}
    assert result.nodes["clean"].attempts == 2  # the retry policy really retried
    assert result.nodes["clean"].attempt_history[0].error is not None
    node_ids = {n["NodeID"] for n in ray_local.nodes() if n["Alive"]}
    assert {r.worker_node_id for r in result.nodes.values()} <= node_ids  # real Ray tasks on the session's Ray
    want = expected_prints(code)
    assert len(want) == code.count("\nprint(") + code.startswith("print(")  # every print documents its output
    printed_in_order(out, want)


def test_seed_api_block_runs_as_written(ray_local, capsys):
    api = section("## The Python API")
    code = next(b for b in blocks(api, "python") if "DistributedExecutor" in b)
    ns, out = run_block(code, capsys)
    assert ns["result"].succeeded and ns["result"].backend == "ray"
    printed_in_order(out, expected_prints(code))


# --- the shell stories --------------------------------------------------------------------------------

def shell_commands(prefixes: tuple[str, ...]) -> list[str]:
    """The tour's shell lines that start with one of ``prefixes``, comments dropped, in README order."""
    cmds = []
    for block in blocks(TOUR, "bash"):
        for line in block.splitlines():
            cmd = line.split("#", 1)[0].strip()
            if cmd.startswith(prefixes):
                cmds.append(cmd)
    return cmds


@pytest.fixture
def sh(ray_local, tmp_path):
    """Run one README shell line in an empty folder, as a newcomer's shell would; returns (rc, output)."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    env = dict(os.environ)
    env.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
               RAY_ADDRESS=ray_local.get_runtime_context().gcs_address, RAY_USAGE_STATS_ENABLED="0",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", COLUMNS="200")
    env.pop("PYTHONPATH", None)

    def run_line(cmd: str) -> tuple[int, str]:
        proc = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True, timeout=400)
        return proc.returncode, f"$ {cmd}\n{proc.stdout}\n{proc.stderr}"

    run_line.cwd = work  # type: ignore[attr-defined]
    return run_line


def last_run(store: Path, pipeline: str) -> tuple[str, dict[str, str], int]:
    """The newest run's id and node statuses (from its manifest), and how many runs there are."""
    run_id, entries, count = last_run_entries(store, pipeline)
    return run_id, {n: e["status"] for n, e in entries.items()}, count


def last_run_entries(store: Path, pipeline: str) -> tuple[str, dict[str, dict], int]:
    storage = open_storage(str(store))
    runs = list_runs(storage, pipeline)
    body, _ = RunManifest(storage, pipeline, runs[0]["run_id"]).read()
    return runs[0]["run_id"], body["nodes"], len(runs)


@pytest.mark.timeout(900)
def test_cli_story_yaml_run_cached_failing_node_resume(sh):
    files = {}
    for lang in ("python", "yaml"):
        for block in blocks(TOUR, lang):
            m = FILE_BLOCK.match(block)
            if m:
                files[m.group(1)] = block
    assert sorted(files) == ["pipeline.yaml", "steps.py"]
    for name, text in files.items():
        (sh.cwd / name).write_text(text, encoding="utf-8")
    cmds = shell_commands(("odibi-ray", "touch", "rm"))
    assert [c.split()[0] for c in cmds] == ["odibi-ray", "odibi-ray", "touch", "odibi-ray", "rm", "odibi-ray"], cmds
    store, nodes = sh.cwd / ".odibi" / "quick", ["extract", "clean", "total"]

    rc, out = sh(cmds[0])
    assert rc == 0, out
    first, status, _ = last_run(store, "quick")
    assert status == dict.fromkeys(nodes, "succeeded"), out

    rc, out = sh(cmds[1])
    assert rc == 0, out
    second, status, _ = last_run(store, "quick")
    assert second != first and status == dict.fromkeys(nodes, "cached"), out

    assert sh(cmds[2])[0] == 0  # touch STOP
    rc, out = sh(cmds[3])
    assert rc == 1, out  # the documented exit code of a run with a failed node
    failed, status, _ = last_run(store, "quick")
    assert status == {"extract": "succeeded", "clean": "succeeded", "total": "failed"}, out
    # "the CLI prints ... the failing node's error with the end of its traceback in steps.py"
    assert "RuntimeError" in out and "found STOP: the source is not ready" in out, out
    assert "steps.py" in out, f"the failing node's traceback (in steps.py) is not printed:\n{out}"

    assert sh(cmds[4])[0] == 0  # rm STOP
    rc, out = sh(cmds[5])
    assert rc == 0, out
    resumed, status, count = last_run(store, "quick")
    assert resumed == failed and count == 3, out  # the same run, finished
    assert status == {"extract": "resumed", "clean": "resumed", "total": "succeeded"}, out


@pytest.mark.timeout(900)
def test_etl_story_run_cached_fail_at_join_resume(sh):
    cmds = shell_commands(("python examples/etl_pipeline.py",))
    assert len(cmds) == 4, cmds
    assert "--fail-at join" in cmds[2] and "--resume latest" in cmds[3], cmds  # the documented order
    assert "--fail-at" not in cmds[0] + cmds[1] + cmds[3]
    store = sh.cwd / ".odibi" / "etl"

    rc, out = sh(cmds[0])
    assert rc == 0, out
    first, entries, _ = last_run_entries(store, "etl_sales")
    assert {n: e["status"] for n, e in entries.items()} == dict.fromkeys(ETL_NODES, "succeeded"), out
    assert entries["clean_orders"]["attempts"] == 2, entries["clean_orders"]  # "clean_orders on attempt 2"

    rc, out = sh(cmds[1])
    assert rc == 0, out
    second, status, _ = last_run(store, "etl_sales")
    assert second != first and status == dict.fromkeys(ETL_NODES, "cached"), out

    rc, out = sh(cmds[2])
    assert rc == 1, f"--fail-at join must fail the run (exit code 1):\n{out}"
    failed, status, _ = last_run(store, "etl_sales")
    assert failed != second and status["join"] == "failed", (status, out)
    assert "InjectedFailure" in out, out

    rc, out = sh(cmds[3])
    assert rc == 0, out
    resumed, status, _ = last_run(store, "etl_sales")
    assert resumed == failed, out  # the failed run, finished
    assert "failed" not in status.values() and "skipped" not in status.values(), (status, out)
    # the nodes that were done are not run again
    assert all(status[n] in ("resumed", "cached") for n in ETL_NODES if n not in JOIN_AND_AFTER), (status, out)
    assert (sh.cwd / "out" / "etl" / "orders").is_dir()
