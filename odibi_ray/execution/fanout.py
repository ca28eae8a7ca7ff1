"""Fan-out at run time, the execution side: splitting an upstream value into items (in the driver, once the
upstream node has run), what travels with one item's attempt, and how a consumer's worker assembles a mapped
input from its items' values.

The split runs in the driver because it decides the run's shape (how many tasks, each item's cache key) and a
user writing this by hand on Ray does the same (``ray.get`` the list, then one ``.remote()`` per element); the
items' *results* never pass through the driver: a consumer's task receives their object refs.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ..checkpoint.store import OutputTarget
from ..definition.mapping import FailedItem, MapSpec, PartialResults
from ..definition.names import item_name as item_name, item_parent as item_parent
from ..definition.node import Node
from ..errors import MapSplitError

#: Rows per item when an Arrow table is mapped over without ``batch_rows`` or ``by``.
DEFAULT_BATCH_ROWS = 65_536


def split_items(value: Any, spec: MapSpec, node: str) -> list[Any]:
    """The items of ``value`` (the output of ``spec.over``) for mapped node ``node``, in order."""
    if _is_arrow_table(value):
        return _split_table(value, spec, node)
    if spec.by is not None:
        raise MapSplitError(f"node {node!r} maps over {spec.over!r} by column {spec.by!r}, but {spec.over!r} returned "
                            f"a {_type(value)}, not a pyarrow.Table")
    if isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Sequence):
        raise MapSplitError(f"node {node!r} maps over {spec.over!r}, which returned a {_type(value)}: return a list, a "
                            "tuple or a pyarrow.Table to map over")
    items = list(value)
    if spec.batch_rows is not None:
        n = int(spec.batch_rows)
        return [items[i:i + n] for i in range(0, len(items), n)]
    return items


def _split_table(table: Any, spec: MapSpec, node: str) -> list[Any]:
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if spec.by is not None:
        if spec.by not in table.column_names:
            raise MapSplitError(f"node {node!r} maps over {spec.over!r} by column {spec.by!r}, which its table does "
                                f"not have (columns: {', '.join(table.column_names)[:300]})")
        column = table[spec.by]
        out = []
        for v in pc.unique(column).to_pylist():  # in order of first appearance
            mask = pc.is_null(column) if v is None else pc.equal(column, pa.scalar(v, column.type))
            out.append(table.filter(mask).combine_chunks())
        return out
    n = int(spec.batch_rows or DEFAULT_BATCH_ROWS)
    # combine_chunks: an item holds its own rows only, so that it pickles (and hashes) as just those rows
    return [table.slice(i, n).combine_chunks() for i in range(0, table.num_rows, n)]


def _is_arrow_table(value: Any) -> bool:
    module = type(value).__module__
    return module.startswith("pyarrow") and type(value).__name__ in ("Table", "RecordBatch")


def _type(value: Any) -> str:
    tp = type(value)
    return tp.__qualname__ if tp.__module__ == "builtins" else f"{tp.__module__}.{tp.__qualname__}"


def item_digest(item: Any) -> str:
    """A stable hash of one item's content (equal across processes, runs and machines for equal items): an Arrow
    table by its IPC stream (schema and rows), anything else by its canonical form (checkpoint/canonical.py)."""
    if _is_arrow_table(item):
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, item.schema) as writer:
            writer.write(item)
        return "arrow:" + hashlib.sha256(sink.getvalue()).hexdigest()
    from ..checkpoint.keys import canonical

    return "value:" + hashlib.sha256(canonical(item).encode()).hexdigest()


class MapItem(NamedTuple):
    """What one item's attempt carries besides the mapped node's task spec (plain tuple on the Ray wire)."""

    position: int
    value: Any
    param: str  # the parameter of the node function that receives ``value``
    cache_key: str | None  # where its worker checkpoints the result (None: no checkpoint storage)


class Collect(NamedTuple):
    """How a consumer's worker turns the values of a mapped input's items into the value its function gets."""

    size: int  # how many item values make up this input
    reduce: Callable[[list[Any]], Any] | None
    partial: bool  # allow_partial: a PartialResults (with what failed), else a list
    indexes: tuple[int, ...] = ()  # (partial) the item position of each value
    failed: tuple[FailedItem, ...] = ()  # (partial) the items that failed for good

    def assemble(self, values: list[Any]) -> Any:
        value: list[Any] = PartialResults(values, list(self.failed), list(self.indexes)) if self.partial else values
        return self.reduce(value) if self.reduce is not None else value


def regroup(values: Sequence[Any], groups: Sequence[Collect | None]) -> list[Any]:
    """The flat input values of a task back as one value per input: a mapped input's items (``Collect``) become
    its assembled value, any other input is itself."""
    out, i = [], 0
    for group in groups:
        if group is None:
            out.append(values[i])
            i += 1
        else:
            out.append(group.assemble(list(values[i:i + group.size])))
            i += group.size
    return out


class MapOutput:
    """The driver's handle of a mapped node's output: its items' handles (in item order; the successful ones when
    partial) and how a consumer assembles them. The backends pass every item's value to the consumer's task."""

    __slots__ = ("items", "collect", "names")

    def __init__(self, items: tuple[Any, ...], collect: Collect, names: tuple[str, ...]) -> None:
        self.items, self.collect, self.names = items, collect, names  # names: the items' (in records)


def task_input_names(node: Node) -> tuple[str, ...]:
    """The parameters a node's task receives its input values as, in order: for a mapped node, all but the one
    that receives the item (its items' tasks get the item apart)."""
    spec = node.mapping
    return tuple(p for p in node.input_map if spec is None or p != spec.param)


def flatten_inputs(inputs: Sequence[Any],
                   value_of: Callable[[Any], Any]) -> tuple[list[Any], tuple[Collect | None, ...]]:
    """A task's input handles as flat argument values (a mapped input: one per item) and how to regroup them."""
    args: list[Any] = []
    groups: list[Collect | None] = []
    for h in inputs:
        if h.__class__ is MapOutput:
            args.extend(value_of(x) for x in h.items)
            groups.append(h.collect)
        else:
            args.append(value_of(h))
            groups.append(None)
    return args, tuple(groups)


def item_target(template: OutputTarget | None, node: str, item: MapItem) -> OutputTarget | None:
    """Where an item's worker checkpoints its result: the mapped node's target at the item's own cache key."""
    if template is None or item.cache_key is None:
        return None
    return dataclasses.replace(template, node=item_name(node, item.position), cache_key=item.cache_key)
