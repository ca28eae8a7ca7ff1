"""Incremental sources: a node that reads "what is new since the last successful run" of its pipeline.

The run fixes the range each such node reads before anything runs — on the driver, by asking the source
(:meth:`IncrementalSource.next_range`) — and passes it to the node's function in the parameter
:attr:`IncrementalSource.param`. The range is a JSON value: it is part of the node's parameters, so it is what the
node's cache key covers, and it is written into the run's manifest, so a resume of a failed run reads exactly the
same range again whatever arrived since. Only when the whole run has succeeded does the driver tell the source to
move on (:meth:`IncrementalSource.commit`). With nothing new, a source answers the range it last committed: the
same key, so a checkpointed pipeline reuses everything downstream and runs nothing
(execution/sources.py drives this; sources/kafka.py is the Kafka one).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable
from collections.abc import Mapping


@runtime_checkable
class IncrementalSource(Protocol):
    """What a node's ``source=`` provides. Methods run on the driver; the object travels with the node."""

    @property
    def param(self) -> str:
        """The parameter of the node's function that receives the range (a JSON value)."""

    def next_range(self, pipeline: str, node: str) -> dict[str, Any]:
        """The range this run reads: what is new since the last commit, or — nothing new — the range last
        committed (so that the node's key, and everything downstream, stays the same)."""

    def commit(self, pipeline: str, node: str, rng: Mapping[str, Any]) -> None:
        """Record that ``rng`` has been consumed by a run that succeeded."""
