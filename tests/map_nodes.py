"""Node functions for the mapped-node tests (importable, so Ray workers load them by reference). Each real
execution of an item leaves a mark file named after what it processed, so a test counts what really ran."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from odibi_ray import current_context


def _mark(marks: str, name: str) -> None:
    Path(marks, f"{name}.{uuid.uuid4().hex[:8]}").write_text(str(os.getpid()))


def ran(marks: str | Path) -> dict[str, int]:
    """How many times each mark name was left."""
    counts: dict[str, int] = {}
    for p in Path(marks).iterdir():
        name = p.name.rsplit(".", 1)[0]
        counts[name] = counts.get(name, 0) + 1
    return counts


def list_files(folder: str) -> list[str]:
    """The names of the files in ``folder``, sorted (a source that reads the outside world)."""
    return sorted(p.name for p in Path(folder).iterdir())


def words(n: int = 5) -> list[str]:
    return [f"w{i}" for i in range(n)]


def shout(word: str, marks: str, suffix: str = "!") -> str:
    _mark(marks, f"shout-{word}")
    return word.upper() + suffix


def read_file(name: str, folder: str, marks: str) -> int:
    _mark(marks, f"read-{name}")
    return len(Path(folder, name).read_text())


def join(items: list) -> str:
    return ",".join(map(str, items))


def total(values: list) -> int:
    return sum(values)


def fails_on(word: str, marks: str, bad: str, switch: str = "") -> str:
    """Fails for ``bad`` unless the file ``switch`` exists (the fix)."""
    _mark(marks, f"try-{word}")
    if word == bad and not (switch and Path(switch).exists()):
        raise ValueError(f"cannot process {word}")
    return word.upper()


def flaky_once(word: str, marks: str) -> str:
    """Fails on the first attempt of every item, succeeds on the second."""
    _mark(marks, f"try-{word}")
    if current_context().attempt == 1:
        raise ConnectionError(f"blip on {word}")
    return word.upper()


def where_am_i(word: str) -> tuple:
    ctx = current_context()
    return (word, ctx.node, ctx.item, ctx.where, os.getpid())


def busy(word: str, marks: str, hold_s: float = 0.3) -> str:
    """Leaves a start and an end mark with times, to measure how many ran at once."""
    start = time.time()
    time.sleep(hold_s)
    Path(marks, f"span-{word}.{uuid.uuid4().hex[:8]}").write_text(f"{start} {time.time()}")
    return word


def max_overlap(marks: str | Path) -> int:
    spans = [tuple(map(float, p.read_text().split())) for p in Path(marks).iterdir() if p.name.startswith("span-")]
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda ev: (ev[0], ev[1]))
    now = best = 0
    for _, d in events:
        now += d
        best = max(best, now)
    return best


def sleeper(word: str, seconds: float) -> str:
    time.sleep(seconds)
    return word


def rows_table(n: int = 10):
    import pyarrow as pa

    return pa.table({"id": list(range(n)), "city": [["oslo", "rome", "lima"][i % 3] for i in range(n)]})


def count_rows(batch) -> int:
    return batch.num_rows


def city_of(batch) -> tuple:
    return (batch["city"][0].as_py(), batch.num_rows)


def chunks(n: int = 3) -> list[list[int]]:
    return [list(range(i * 10, i * 10 + 3)) for i in range(n)]


def square_each(values: list[int]) -> list[int]:
    return [v * v for v in values]


def times(x: int, factor: int) -> int:
    return x * factor


def number() -> int:
    return 7


def partial_view(results) -> dict:
    return {"ok": list(results), "failed": [(f.position, f.item, f.error_type, f.message) for f in results.failed],
            "indexes": list(results.indexes)}


def sleeper_of(word: float, seconds: float = 0) -> float:
    """Sleeps for its item (seconds)."""
    time.sleep(word)
    return word


def folder_state(params: dict) -> str:
    """A cache key function for list_files: the names and sizes of what the folder holds."""
    folder = Path(params["folder"])
    return ";".join(f"{p.name}:{p.stat().st_size}" for p in sorted(folder.iterdir()))
