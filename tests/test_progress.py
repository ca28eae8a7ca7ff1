"""Progress display: rich bars per level on a terminal, silence elsewhere; the library never prints."""

from __future__ import annotations

import io
import logging

from rich.console import Console

from odibi_ray import DAG, Node, run
from odibi_ray.observe.progress import RichProgress


def small_dag():
    dag = DAG("progress")
    dag.add_node(Node("a", lambda: 1))
    dag.add_node(Node("b", lambda a: a, inputs=["a"]))
    dag.add_node(Node("c", lambda: 1 / 0))
    return dag


def test_progress_on_a_terminal_shows_levels_and_total():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    run(small_dag(), backend="local", progress=RichProgress(console))
    text = out.getvalue()
    assert "level 0" in text and "level 1" in text and "all nodes" in text
    assert "1 failed" in text and "3/3" in text


def test_progress_is_silent_when_not_a_terminal(capsys):
    out = io.StringIO()
    sink = RichProgress(Console(file=out, force_terminal=False))
    run(small_dag(), backend="local", progress=sink)
    assert out.getvalue() == ""
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_library_reports_through_logging(caplog):
    with caplog.at_level(logging.INFO, logger="odibi_ray"):
        run(small_dag(), backend="local", progress=False)
    messages = [r.getMessage() for r in caplog.records]
    assert any("node 'c' failed after 1 attempt(s): ZeroDivisionError" in m for m in messages)
    assert any(m.startswith("progress run ") and "failed" in m for m in messages)
