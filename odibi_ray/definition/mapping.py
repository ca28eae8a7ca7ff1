"""Fan-out at run time: a node mapped over the items of an upstream output (like Prefect's ``.map`` or Dagster's
dynamic outputs).

A mapped node declares :class:`MapSpec`: ``over`` names the upstream node whose output is split into items once
it has run (a list or tuple: its elements; a ``pyarrow.Table``: row batches of ``batch_rows`` rows, or one table
per value of the column ``by``), and ``param`` the parameter of the function that receives one item. Every item is
its own attempt (a Ray task with the node's resources, retry policy and timeout) with its own cache key and
checkpoint. A consumer of a mapped node receives the list of its results in item order (a *collect*), or
``reduce(results)`` when the map has a ``reduce`` function. With ``allow_partial=True`` an item that fails for good
does not fail the node: the consumer receives a :class:`PartialResults`, the successes with ``.failed`` saying
what failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple
from collections.abc import Callable, Sequence

#: At most this many items of one mapped node in flight at once (``max_parallel``'s upper bound).
MAX_PARALLEL = 1_000_000


@dataclass(frozen=True)
class MapSpec:
    """How a node fans out over the items of its upstream node ``over`` (see the module docstring).

    ``param``: the parameter receiving an item (default: the one whose input is ``over``, else the function's
    first parameter given no input or param). ``max_parallel``: at most this many items of this node in flight
    at once (default: no bound of its own). ``batch_rows`` / ``by``: how an Arrow table is split (row batches,
    default 65,536 rows; or one table per distinct value of a column, in order of first appearance);
    ``batch_rows`` on a list makes sub-lists. ``reduce``: consumers receive ``reduce(results)`` instead of the
    list. ``allow_partial``: items that fail for good leave the node succeeded with the others' results.
    """

    over: str
    param: str | None = None
    max_parallel: int | None = None
    allow_partial: bool = False
    batch_rows: int | None = None
    by: str | None = None
    reduce: Callable[[list[Any]], Any] | None = None

    def problems(self) -> list[str]:
        """What is wrong with the values (empty when nothing)."""
        out = []
        if not isinstance(self.over, str) or not self.over:
            out.append(f"map over must name a node, got {self.over!r:.80}")
        if self.max_parallel is not None and (not _whole(self.max_parallel)
                                              or not 1 <= self.max_parallel <= MAX_PARALLEL):
            out.append(f"max_parallel must be a whole number from 1 to {MAX_PARALLEL}, got {self.max_parallel!r:.80}")
        if self.batch_rows is not None and (not _whole(self.batch_rows) or self.batch_rows < 1):
            out.append(f"batch_rows must be a whole number >= 1, got {self.batch_rows!r:.80}")
        if self.by is not None and (not isinstance(self.by, str) or not self.by):
            out.append(f"by must name a column, got {self.by!r:.80}")
        if self.by is not None and self.batch_rows is not None:
            out.append("give batch_rows or by, not both")
        if self.reduce is not None and not callable(self.reduce):
            out.append(f"reduce must be callable, got {type(self.reduce).__name__}")
        if not isinstance(self.allow_partial, bool):
            out.append(f"allow_partial must be true or false, got {self.allow_partial!r:.80}")
        return out

    def split_options(self) -> dict[str, Any]:
        """What decides the items besides the upstream value (part of the node's cache key)."""
        return {"param": self.param, "batch_rows": self.batch_rows, "by": self.by}


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer())


class FailedItem(NamedTuple):
    """An item of a mapped node that failed for good (``allow_partial=True``): its position, the item, and the
    error of its last attempt (type name and message)."""

    position: int
    item: Any
    error_type: str
    message: str


class PartialResults(list):
    """What a consumer of a mapped node with ``allow_partial=True`` receives: the results of the items that
    succeeded, in item order (a ``list``), and ``.failed``: a :class:`FailedItem` for each that did not, and
    ``.indexes``: the item position of each result."""

    def __init__(self, results: Sequence[Any] = (), failed: Sequence[FailedItem] = (),
                 indexes: Sequence[int] = ()) -> None:
        super().__init__(results)
        self.failed = list(failed)
        self.indexes = list(indexes)

    def __reduce__(self) -> tuple[Any, ...]:
        return (PartialResults, (list(self), self.failed, self.indexes))

    def __repr__(self) -> str:
        return f"PartialResults({list.__repr__(self)}, failed={self.failed!r})"
