"""Node functions for the Kafka source tests: each real execution leaves a mark (tests/cp_nodes.ran counts them);
``clean`` fails while the file named by its ``fail_flag`` param exists (a failure the test switches off)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc

from tests.cp_nodes import _mark


def clean(raw: pa.Table, marks: str, fail_flag: str = "") -> pa.Table:
    _mark(marks, "clean")
    if fail_flag and os.path.exists(fail_flag):
        raise RuntimeError(f"clean fails while {fail_flag} exists")
    return raw.select(["id", "_partition", "_offset"]).filter(pc.greater_equal(raw["id"], 0))


def summary(clean: pa.Table, marks: str) -> dict:
    _mark(marks, "summary")
    ids = clean.column("id").to_pylist()
    return {"rows": len(ids), "sum": sum(ids), "min": min(ids, default=None), "max": max(ids, default=None)}
