"""The demo pipeline (what `./dev demo` runs) works on both backends."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo_pipeline.py"


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("demo_pipeline", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_runs_and_retries_its_flaky_step(demo, backend, capsys, tmp_path):
    args = ["--backend", backend, "--rows", "5000", "--storage", str(tmp_path / "cp")]
    assert demo.main(args) == 0
    out = capsys.readouterr().out
    assert "succeeded" in out and "best_region" in out
    assert "ConnectionError"[:8] in out  # the retried first attempt of `clean` is shown
    assert demo.main(args) == 0  # the second run reuses every node from its checkpoints
    out = capsys.readouterr().out
    assert out.count("cached") >= 5 and "ConnectionError"[:8] not in out
