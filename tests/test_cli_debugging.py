"""Debugging from the terminal: what `odibi-ray run` prints about a failed node (its exception with the user's
frames of its traceback, once; all of it with --debug), retries of nodes that succeeded, and what nodes printed:
kept bounded with the run, shown for failed nodes, and by `odibi-ray logs RUN [NODE]` (no colour codes when piped).

Nodes: tests/noisy_nodes.py; pipeline: tests/fixtures/noisy.yaml (a part of it is run with --select)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import odibi_ray
from odibi_ray import DAG
from odibi_ray.execution.attempt import TAIL_CHARS, TAIL_LINES, OutputTail
from odibi_ray.checkpoint import layout
from odibi_ray.checkpoint.store import list_runs
from odibi_ray.cli import RESULT_FILE, app
from odibi_ray.execution.result import RunResult, user_traceback
from odibi_ray.definition.spec import load_pipeline
from odibi_ray.storage.uri import open_storage

ROOT = Path(__file__).resolve().parent.parent
NOISY = str(ROOT / "tests" / "fixtures" / "noisy.yaml")
SCRIPT = Path(sys.executable).parent / "odibi-ray"
ESC = "\x1b"
RAY_FORWARDED = re.compile(r"^(\x1b\[\d+m)?\(\S+ pid=\d+[^)]*\)")


def cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def run(store: str, backend: str, *args: str, code: int = 0):
    r = cli("run", NOISY, "--backend", backend, "--storage", store, *args)
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr, r.exception)
    return r


def logs(store: str, *args: str) -> str:
    r = cli("logs", *args, "--pipeline", "noisy_yaml", "--storage", store)
    assert r.exit_code == 0, (r.exit_code, r.stdout, r.stderr, r.exception)
    return not_forwarded(r.stdout)


def not_forwarded(text: str) -> str:
    """``text`` without the lines of worker output Ray forwards to this process as they come (also a past run's)."""
    return "".join(line for line in text.splitlines(keepends=True) if not RAY_FORWARDED.match(line))


def noisy_dag(*names: str) -> DAG:
    dag = load_pipeline(NOISY).to_dag()
    return DAG(dag.name, [n for n in dag if n.name in names])


def latest(store: str) -> str:
    return list_runs(open_storage(store), "noisy_yaml")[0]["run_id"]


@pytest.fixture
def store(tmp_path) -> str:
    return str(tmp_path / "store")


# --- a failed node's error -------------------------------------------------------------------------------------

def test_failed_node_shows_its_exception_with_the_users_frames_only(backend, store):
    r = run(store, backend, "--select", "explode", code=1)
    err = not_forwarded(r.stderr)
    assert "ValueError: bad row 2: 'x'" in err
    assert 'noisy_nodes.py", line' in err and ", in explode" in err and "raise ValueError(" in err  # the user's frame
    assert "attempt.py" not in err and "run_attempt" not in err and "/ray/" not in err  # no engine frame
    assert "frame(s) not shown" in err
    # the failed attempt's output comes with it, and the run's last line names the node without its error again
    assert "--- node 'explode', output of attempt 1 (1 line(s)) ---\nreading rows\n" in err
    assert "error: pipeline 'noisy_yaml' failed: node 'explode' failed after 1 attempt(s)\n" in err


def test_debug_shows_the_whole_traceback(store):
    r = cli("--debug", "run", NOISY, "--backend", "local", "--storage", store, "--select", "explode")
    assert r.exit_code == 1, (r.stdout, r.stderr)
    # the engine's frame too
    assert 'odibi_ray/execution/attempt.py", line' in r.stderr and "in run_attempt" in r.stderr
    assert ", in explode" in r.stderr and "ValueError: bad row 2: 'x'" in r.stderr
    assert "frame(s) not shown" not in r.stderr


def test_the_error_is_printed_once(tmp_path):
    """The real script: the scheduler's "failed after" warning is not printed next to the CLI's own report."""
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    proc = subprocess.run([str(SCRIPT), "run", NOISY, "--backend", "local", "--storage", str(tmp_path / "s"),
                           "--select", "explode"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("bad row 2") == 1, proc.stderr
    assert proc.stderr.count("failed after") == 1 and "WARNING" not in proc.stderr, proc.stderr
    assert "Traceback (most recent call last):" in proc.stderr and ", in explode" in proc.stderr


def test_cli_drops_the_failure_log_line_but_library_users_keep_it(store, caplog):
    caplog.set_level(logging.WARNING, logger="odibi_ray")
    run(store, "local", "--select", "explode", code=1)
    assert not [r for r in caplog.records if "failed after" in r.getMessage()]
    result = odibi_ray.run(noisy_dag("chatty", "explode"), backend="local", progress=False)
    assert not result.succeeded
    assert [r for r in caplog.records if "failed after" in r.getMessage() and "explode" in r.getMessage()]


def test_a_retried_node_that_succeeded_says_why_it_was_retried(backend, store, tmp_path):
    r = run(store, backend, "--select", "flaky", "--set", f"nodes.flaky.params.marker={tmp_path / 'marker'}")
    assert "node 'flaky' retried after ConnectionError (succeeded on attempt 2)" in r.stdout
    r = run(store, "local", "--select", "chatty")  # no retry, no note
    assert "retried" not in r.stdout


def test_user_traceback_drops_engine_frames_and_keeps_the_last_ones():
    text = ('Traceback (most recent call last):\n'
            '  File "/x/site-packages/odibi_ray/execution/attempt.py", line 1, in run_attempt\n'
            '    value = fn(**kwargs)\n'
            '            ^^^^^^^^^^^^\n'
            '  File "python/ray/_raylet.pyx", line 2, in ray._raylet.execute_task\n'
            '  File "/home/me/job/a.py", line 3, in one\n'
            '    two()\n'
            '  File "/home/me/job/a.py", line 4, in two\n'
            '    three()\n'
            '  File "/home/me/job/a.py", line 5, in three\n'
            '    raise KeyError("k")\n'
            "KeyError: 'k'\n")
    short = user_traceback(text, frames=2)
    assert "odibi_ray" not in short.replace("odibi_ray's", "") and "_raylet" not in short and "in one" not in short
    assert "  [3 frame(s) not shown" in short and "in two\n    three()\n" in short and short.endswith("KeyError: 'k'")
    full = user_traceback(text, frames=None)
    assert "in one\n    two()" in full and "[2 frame(s) not shown" in full
    assert user_traceback("WorkerCrashedError: the worker died", 5) == "WorkerCrashedError: the worker died"


# --- what nodes print ------------------------------------------------------------------------------------------

def test_logs_prints_exactly_what_a_node_printed(backend, store):
    r = run(store, backend, "--select", "chatty")
    expected = "=== node 'chatty', attempt 1 (succeeded) ===\nchatty line 0\nchatty line 1\nchatty line 2\n" \
               "chatty on stderr\n"
    assert logs(store, latest(store), "chatty") == expected
    assert logs(store, "latest") == expected  # every node that ran
    # kept with the run: in the result `run` stores next to its manifest
    data = open_storage(store).get(layout.run_prefix("noisy_yaml", latest(store)) + RESULT_FILE)
    assert RunResult.from_json(data).nodes["chatty"].attempt_history[0].output_tail == expected.split("\n", 1)[1]
    assert "chatty line" not in r.stderr  # a node that succeeded: its output is not repeated by `run`


def test_concurrent_nodes_keep_their_own_output_on_the_local_backend(store):
    """Threads share sys.stdout: each attempt still gets only what its own thread printed."""
    run(store, "local", "--select", "left", "--select", "right", "--max-workers", "4")
    rid = latest(store)
    assert logs(store, rid, "left") == "=== node 'left', attempt 1 (succeeded) ===\n" + \
        "".join(f"left {i}\n" for i in range(20))
    assert logs(store, rid, "right") == "=== node 'right', attempt 1 (succeeded) ===\n" + \
        "".join(f"right {i}\n" for i in range(20))


def test_the_kept_output_is_bounded(store):
    run(store, "local", "--select", "flood")  # 1000 lines
    lines = logs(store, latest(store), "flood").splitlines()
    assert lines[0] == "=== node 'flood', attempt 1 (succeeded) ==="
    assert lines[1] == f"[odibi_ray: {800 * 14} earlier characters of output not kept]"
    assert lines[2:] == [f"flood {i:06d} " for i in range(800, 1000)]
    run(store, "local", "--select", "flood", "--set", "nodes.flood.params.lines=100",
        "--set", "nodes.flood.params.width=5000")  # 500 kB in long lines
    text = logs(store, latest(store), "flood").split("\n", 1)[1]
    assert text.startswith("[odibi_ray: ") and TAIL_CHARS - 5000 < len(text) <= TAIL_CHARS + 100
    assert text.endswith(f"flood {99:06d} " + "x" * (5000 - 13) + "\n")


def test_output_tail_memory_stays_bounded():
    tail = OutputTail()
    for i in range(100_000):
        tail.add(f"line {i}\n")
        assert tail.size <= 2 * TAIL_CHARS + 20
    text = tail.text()
    assert text.endswith("line 99999\n") and len(text.splitlines()) == TAIL_LINES + 1
    assert OutputTail().text() == ""


def test_no_colour_codes_in_piped_output(store):
    """The node's own colours are taken out of what `run` prints about its failure and of `logs` when they are not
    a terminal (what the node prints live passes through as it is)."""
    r = run(store, "local", "--select", "colored", code=1)
    assert "red text plain text" in r.stderr and "RuntimeError: bold failure" in r.stderr and ESC not in r.stderr
    out = logs(store, latest(store), "colored")
    assert "red text plain text" in out and ESC not in out
    data = open_storage(store).get(layout.run_prefix("noisy_yaml", latest(store)) + RESULT_FILE)
    assert ESC in RunResult.from_json(data).nodes["colored"].attempt_history[0].output_tail  # kept as printed


def test_no_colour_codes_from_ray_when_piped(ray_local, tmp_path):
    """The real script on the session's Ray, its output piped: Ray's "(node pid=...)" prefixes come uncoloured."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_COLOR_PREFIX"}
    proc = subprocess.run([str(SCRIPT), "run", NOISY, "--storage", str(tmp_path / "s"), "--select", "slow",
                           "--address", ray_local.get_runtime_context().gcs_address],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    both = proc.stdout + proc.stderr
    assert proc.returncode == 0, both
    assert "(slow pid=" in both and "slow hello" in both  # Ray forwarded the node's print, live
    assert ESC not in both, both


def test_logs_errors(store):
    r = cli("logs", "nope", "--pipeline", "noisy_yaml", "--storage", store)
    assert r.exit_code == 2 and "no run 'nope'" in r.stderr
    odibi_ray.run(noisy_dag("chatty"), backend="local", storage=store, progress=False)  # Python: no stored result
    r = cli("logs", "latest", "--pipeline", "noisy_yaml", "--storage", store)
    assert r.exit_code == 2 and "has no stored result" in r.stderr, r.stderr
    run(store, "local", "--select", "chatty")
    r = cli("logs", "latest", "nope", "--pipeline", "noisy_yaml", "--storage", store)
    assert r.exit_code == 2 and "has no node 'nope'" in r.stderr
    r = run(store, "local", "--select", "chatty")  # cached now
    assert logs(store, "latest", "chatty").startswith("node 'chatty' did not run in run ")
    assert cli("logs", "--help").exit_code == 0


def test_rays_own_start_up_line_comes_without_colour_codes_when_piped(caplog, monkeypatch):
    """Ray logs its dashboard's address in colour when it starts: `run` takes the codes out when not a terminal."""
    from odibi_ray.cli import _RunPrinting

    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    caplog.set_level(logging.INFO, logger="ray._private.worker")
    with _RunPrinting():  # pytest captures stdout and stderr: not a terminal
        logging.getLogger("ray._private.worker").info("Started. View the dashboard at %s%s%s", "\x1b[1m\x1b[32m",
                                                      "http://127.0.0.1:8265", "\x1b[39m\x1b[22m")
        assert os.environ["RAY_COLOR_PREFIX"] == "0"
    assert caplog.messages[-1] == "Started. View the dashboard at http://127.0.0.1:8265"
