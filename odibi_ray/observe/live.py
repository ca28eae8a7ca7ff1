"""Live metrics: what a run has done so far reaches the metrics actor while it runs, not only at its end.

The driver loop offers :class:`LivePublisher` a look at the run on every pass (a clock read); at most once per
:data:`LIVE_PERIOD_S` it sends the actor one :class:`~odibi_ray.observe.run_metrics.RowBatch`, fire-and-forget: the
rows (:class:`~odibi_ray.observe.run_metrics.NodeRow`: what a node's figures are derived from, and when its inputs
were done) of the nodes and items changed since the last batch, and the run's status document (levels done, nodes by
state, the slowest in-flight nodes) that ``odibi-ray status --watch`` shows. Nothing here waits on Ray.

The actor derives the figures (:meth:`MetricsActor.push_rows`) with the same function as the run's final figures
(:func:`~odibi_ray.observe.run_metrics.add_rows_metrics`). The publisher keeps the last row it sent of each node: a
node sent before whose row changed goes with that old row, whose figures the actor takes away. So the actor keeps
nothing per run, and once the last batch is in it holds exactly the record-derived figures, whatever happened in
between (retries, crashed workers, outputs lost and recomputed). A node's row is all its figures depend on, and its
row's ``ready_at`` (its inputs' end) changes only when an input closed before is opened again: then the last batch
looks at every node, not only the changed ones.

Deriving the figures in the driver (and diffing what was sent) cost 60-95 µs of driver CPU a node on
bench_overhead's no-op runs of 1,500-5,000 nodes; a row costs the driver a few µs (made and pickled).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..execution.result import NodeRecord
from .run_metrics import NodeRow, RowBatch, inputs_done_at, node_row
from ..backoff import backoff_delay
from ..definition.names import item_parent

log = logging.getLogger(__name__)

#: How often, at most, a running run sends its metrics to the actor (the issue's bound: a change shows within 2 s).
LIVE_PERIOD_S = 1.0
#: How many of the longest-running in-flight nodes the status document names.
SLOWEST = 5
#: How many times the last batch is tried (an earlier one that fails goes with the next; the last has no next).
LAST_TRIES = 3


class LiveView(Protocol):
    """What the publisher reads of a running run (the scheduler provides it)."""

    records: dict[str, NodeRecord]  # nodes and items
    inputs: dict[str, list[str]]  # node -> its upstream nodes
    reopened: int  # how many times a closed node (or item) was opened again (its output lost or found unusable)

    def take_changed(self) -> set[str]:
        """Nodes whose records changed since the last call (and forget them)."""

    def live_status(self) -> dict[str, Any]:
        """The run's status now: counts by state, levels done, the slowest in-flight nodes."""


Send = Callable[[RowBatch, dict[str, Any]], None]  # (the batch, the status document)


class LivePublisher:
    """Sends a running run's changed records and status to the metrics actor, at most once per ``period_s``."""

    def __init__(self, pipeline: str, run_id: str, send: Send, *, period_s: float = LIVE_PERIOD_S) -> None:
        self.pipeline, self.run_id = pipeline, run_id
        self.period_s = period_s
        self._send = send
        self._due = time.monotonic() + period_s
        self._sent: dict[str, NodeRow] = {}  # each node's row as last sent (the actor added its figures)
        self._unsent: set[str] = set()  # nodes of a batch that could not be sent, to go with the next one
        self._checkpointed: bool | None = None  # the run has cache keys (known before its first batch)
        self.batches = 0

    def due(self, now: float) -> bool:
        return now >= self._due

    def publish(self, view: LiveView) -> None:
        """Send the rows of the nodes changed since the last batch, with the status document."""
        self._due = time.monotonic() + self.period_s
        self._ship(view, view.take_changed(), self._status(view.live_status()))

    def finish(self, view: LiveView, changed: set[str], status: dict[str, Any], stats: Mapping[str, int]) -> None:
        """The last batch: the rows of ``changed`` (the nodes changed since the last batch), or of every node when a
        closed node was opened again (its end moved, so did the queue wait of the nodes after it), the run's own
        counters and its final status; the actor then holds exactly the run's record-derived figures."""
        names = set(view.records) if view.reopened else changed
        self._ship(view, names, self._status(status), stats, last=True)

    def abandon(self, status: dict[str, Any]) -> None:
        """The run stopped on an exception: tell watchers it is over (the status only; its figures stay partial)."""
        self._send_batch(RowBatch(self.pipeline, bool(self._checkpointed), [], []), self._status(status), LAST_TRIES)

    # --- inside -------------------------------------------------------------------------------------

    def _status(self, status: dict[str, Any]) -> dict[str, Any]:
        return dict(status, pipeline=self.pipeline, run_id=self.run_id, updated_at=time.time())

    def _ship(self, view: LiveView, names: set[str], status: dict[str, Any], stats: Mapping[str, int] | None = None,
              last: bool = False) -> None:
        records = view.records
        if self._checkpointed is None:  # cache keys are set before the loop runs
            self._checkpointed = any(r.cache_key for r in records.values())
        if self._unsent:
            names, self._unsent = names | self._unsent, set()
        rows, replaced = self._rows(records, view.inputs, names)
        batch = RowBatch(self.pipeline, self._checkpointed, rows, replaced, stats)
        if self._send_batch(batch, status, LAST_TRIES if last else 1):
            for row in rows:
                self._sent[row.name] = row
        elif last:
            log.error("the metrics actor did not get the last batch of run %s of %r: its figures for the run are "
                      "partial (result.metrics and the manifest have them all)", self.run_id, self.pipeline)
        else:
            self._unsent = names  # (their rows as they are then)

    def _rows(self, records: Mapping[str, NodeRecord], inputs: Mapping[str, list[str]],
              names: set[str]) -> tuple[list[NodeRow], list[NodeRow]]:
        """The rows of ``names`` that changed since they were last sent, and the rows they replace."""
        rows, replaced = [], []
        sent = self._sent
        parents_ready: dict[str, float | None] = {}  # a mapped node's inputs' end, once for all its items in the batch
        for name in names:
            rec = records[name]
            old = sent.get(name)
            if old is None and not rec.attempt_history and not rec.status.done:
                continue  # submitted, nothing finished: no figure yet (thousands are in flight at each batch)
            parent = item_parent(name)
            if parent is None:
                ready_at = inputs_done_at(name, records, inputs)
            elif parent in parents_ready:
                ready_at = parents_ready[parent]
            else:
                ready_at = parents_ready[parent] = inputs_done_at(parent, records, inputs)
            row = node_row(rec, ready_at, parent)
            if old is not None:
                if row == old:
                    continue  # e.g. its attempt submitted again: its figures are as sent
                replaced.append(old)
            rows.append(row)
        return rows, replaced

    def _send_batch(self, batch: RowBatch, status: dict[str, Any], tries: int) -> bool:
        """Send one batch, fire-and-forget (``tries`` times at most); False when it could not be sent."""
        for n in range(1, tries + 1):
            try:
                self._send(batch, status)
            except Exception as exc:  # noqa: BLE001 - metrics must never fail a run
                log.warning("could not send live metrics to the metrics actor (try %d of %d): %s", n, tries, exc)
                if n < tries:
                    time.sleep(backoff_delay(n, 0.1, 2.0, 1.0, 0.0))
                continue
            self.batches += 1
            return True
        return False
