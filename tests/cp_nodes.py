"""Node functions for the checkpoint tests. Each real execution leaves a mark file (in MARKS_DIR, given as a
param), so a test can count which nodes really ran, in whatever process."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pyarrow as pa


def _mark(marks: str, name: str) -> None:
    Path(marks, f"{name}.{uuid.uuid4().hex[:8]}").write_text(str(os.getpid()))


def ran(marks: str | Path) -> dict[str, int]:
    """How many times each node really ran."""
    counts: dict[str, int] = {}
    for p in Path(marks).iterdir():
        name = p.name.rsplit(".", 1)[0]
        counts[name] = counts.get(name, 0) + 1
    return counts


def source(marks: str, n: int = 3):
    _mark(marks, "source")
    return pa.table({"id": list(range(n)), "name": [f"r{i}" if i % 2 else None for i in range(n)]})


def double(table, marks: str):
    _mark(marks, "double")
    return table.append_column("twice", pa.array([2 * i for i in table["id"].to_pylist()]))


def total(table, marks: str, scale: int = 1):
    _mark(marks, "total")
    return {"sum": sum(table["twice"].to_pylist()) * scale, "rows": table.num_rows}


def as_bytes(summary, marks: str):
    _mark(marks, "as_bytes")
    return f"{summary['sum']}".encode()


def flaky_until_fixed(summary, marks: str, switch: str):
    _mark(marks, "flaky")
    if not Path(switch).exists():
        raise RuntimeError("not fixed yet")
    return summary["sum"] + 1


def wait_for_go(x, marks: str, started: str, go: str):
    _mark(marks, "wait_for_go")
    Path(started).write_text("1")
    deadline = time.monotonic() + 120
    while not Path(go).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("no go")
        time.sleep(0.05)
    return x
