"""Node functions of the mapped-node YAML, CLI and seed-face tests (tests/test_map_yaml.py, test_map_cli.py):
importable by Ray workers. ``marks`` folders record each call (one file per item run)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any


def numbers(n: int = 4) -> list[int]:
    return list(range(1, n + 1))


def square(x: int, marks: str = "", fail_on: int = -1) -> int:
    """``x * x``; leaves a mark per call when ``marks`` is a folder; raises for ``fail_on`` and while the file
    ``marks/fail-<x>`` exists."""
    if marks:
        Path(marks, f"square-{x}-{uuid.uuid4().hex}").touch()
    if x == fail_on or (marks and Path(marks, f"fail-{x}").exists()):
        print(f"square: refusing {x}")
        raise ValueError(f"no square for {x}")
    return x * x


def total(values: list[int]) -> int:
    return sum(values)


def describe(values: Any) -> dict[str, Any]:
    """What a collect received: its values, and what failed when it is a PartialResults."""
    return {"values": list(values), "failed": [f.position for f in getattr(values, "failed", [])]}


def largest(values: list[int]) -> int:
    return max(values)


def ran(marks: str) -> int:
    """How many calls of :func:`square` left a mark."""
    return sum(name.startswith("square-") for name in os.listdir(marks))


def flaky_square(x: int, marks: str) -> int:
    """``x * x``; the first call for ``x == 2`` (per ``marks`` folder) raises ConnectionError."""
    if x == 2 and not Path(marks, "flaky-2").exists():
        Path(marks, "flaky-2").touch()
        raise ConnectionError("transient")
    return x * x
