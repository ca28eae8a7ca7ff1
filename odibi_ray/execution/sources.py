"""A run's incremental sources (definition/incremental.py): the range each one reads, fixed on the driver before the
plan (keys) is made, and committed once the run has succeeded.

- A new run asks each source for its next range; a resumed run takes the ranges its manifest recorded (the failed
  run's), so it reads exactly what the failed run read, whatever arrived since.
- The ranges become the nodes' parameters in a copy of the DAG the run uses (:func:`with_ranges`): the cache key of
  a source node is its code, its other parameters and its range.
- Commit: only when every node of the run succeeded (or was reused). A commit that fails does not fail the run
  (its outputs are written): it is reported (``RunResult.sources``, a warning); the next run reads the same range
  again, plus what is new (at least once, never lost).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any
from collections.abc import Mapping

from ..definition.dag import DAG
from ..errors import OdibiError
from .result import RunResult, SourceRead

log = logging.getLogger(__name__)


def source_nodes(dag: DAG) -> list[str]:
    """The DAG's incremental source nodes, in definition order."""
    return [n.name for n in dag if n.source is not None]


def pin_ranges(dag: DAG, pinned: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """node -> the range it reads in this run: ``pinned`` (a resumed run's manifest) where it has one, else the
    source's next range. A source that cannot answer raises here, before anything runs (its storage error)."""
    ranges: dict[str, Any] = {}
    for name in source_nodes(dag):
        if pinned is not None and name in pinned:
            ranges[name] = pinned[name]
            log.info("source %s: re-reads the range of the run being resumed", name)
            continue
        source = dag[name].source
        assert source is not None
        try:
            ranges[name] = source.next_range(dag.name, name)
        except OdibiError as exc:
            exc.args = (f"source node {name!r}: could not fix the range to read: {exc}", *exc.args[1:])
            raise
    return ranges


def with_ranges(dag: DAG, ranges: Mapping[str, Any]) -> DAG:
    """A copy of ``dag`` whose source nodes receive their range as a parameter (``dag`` itself is not changed)."""
    if not ranges:
        return dag
    nodes = []
    for node in dag:
        if node.name in ranges and node.source is not None:
            node = dataclasses.replace(node, params={**node.params, node.source.param: ranges[node.name]})
        nodes.append(node)
    return DAG(dag.name, nodes, retry=dag.retry, cache=dag.cache, description=dag.description)


def commit_ranges(dag: DAG, ranges: Mapping[str, Any], result: RunResult) -> dict[str, SourceRead]:
    """Commit every source's range if the run succeeded; what happened to each, for ``RunResult.sources``."""
    reads: dict[str, SourceRead] = {}
    for name, rng in ranges.items():
        if not result.succeeded:
            reads[name] = SourceRead(rng, committed=False, reason="the run did not succeed: nothing committed")
            continue
        source = dag[name].source
        assert source is not None
        try:
            source.commit(dag.name, name, rng)
        except Exception as exc:  # noqa: BLE001 - the run's outputs are written: report, do not fail it
            log.warning("source %s: could not commit what run %s read (%s: %s); the next run reads it again",
                        name, result.run_id, type(exc).__name__, exc)
            reads[name] = SourceRead(rng, committed=False, reason=f"commit failed: {type(exc).__name__}: {exc}")
            continue
        reads[name] = SourceRead(rng, committed=True)
    return reads
