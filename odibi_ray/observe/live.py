"""Live metrics: what a run has done so far reaches the metrics actor while it runs, not only at its end.

The driver loop offers :class:`LivePublisher` a look at the run on every pass (a clock read); at most once per
:data:`LIVE_PERIOD_S` it sends the actor one :class:`~odibi_ray.observe.run_metrics.RowBatch`, fire-and-forget: the
records of the nodes (and items) changed since the last batch, each with when its inputs were done, and the run's
status document (levels done, nodes by state, the slowest in-flight nodes) that ``odibi-ray status --watch`` shows.
Nothing here waits on Ray.

The actor derives the figures (:meth:`MetricsActor.push_rows`), with the same function as the run's final figures
(:func:`~odibi_ray.observe.run_metrics.add_rows_metrics`), and counts each node's newest row minus the one it
counted before for it. So once the last batch is in, the actor holds exactly the record-derived figures, whatever
happened in between (retries, crashed workers, outputs lost and recomputed). A node's record is all its figures
depend on, except its queue wait, which counts from its inputs' end: when a closed node was opened again in the run
(its end moved), the last batch sends every node's row, not only the changed ones.

Deriving the figures in the driver (and diffing what was sent) cost 60-95 µs of driver CPU a node on
bench_overhead's no-op runs of 1,500-5,000 nodes; a row costs the driver its pickling (~2 µs).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..execution.result import NodeRecord
from .run_metrics import NodeRow, RowBatch, inputs_done_at
from ..definition.names import item_parent

log = logging.getLogger(__name__)

#: How often, at most, a running run sends its metrics to the actor (the issue's bound: a change shows within 2 s).
LIVE_PERIOD_S = 1.0
#: How many of the longest-running in-flight nodes the status document names.
SLOWEST = 5


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
        #: this publisher's name at the actor: a resumed run keeps its run id, and its rows must not replace those
        #: of the driver that ran it before
        self.key = f"{run_id}/{uuid.uuid4().hex[:12]}"
        self._sent: set[str] = set()  # nodes with a row at the actor
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
        self._send_batch(RowBatch(self.key, self.pipeline, bool(self._checkpointed), [], None, True),
                         self._status(status))

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
        rows = self._rows(records, view.inputs, names)
        if self._send_batch(RowBatch(self.key, self.pipeline, self._checkpointed, rows, stats, last), status):
            self._sent.update(row.record.name for row in rows)
        elif not last:
            self._unsent = names  # (their records as they are then)

    def _rows(self, records: Mapping[str, NodeRecord], inputs: Mapping[str, list[str]],
              names: set[str]) -> list[NodeRow]:
        rows = []
        sent = self._sent
        for name in names:
            rec = records[name]
            if not rec.attempt_history and not rec.status.done and name not in sent:
                continue  # submitted, nothing finished: no figure yet (thousands are in flight at each batch)
            parent = item_parent(name)
            rows.append(NodeRow(rec, inputs_done_at(parent or name, records, inputs), parent))
        return rows

    def _send_batch(self, batch: RowBatch, status: dict[str, Any]) -> bool:
        """Send one batch, fire-and-forget; False when it could not be sent."""
        try:
            self._send(batch, status)
        except Exception as exc:  # noqa: BLE001 - metrics must never fail a run
            log.warning("could not send live metrics to the metrics actor: %s", exc)
            return False
        self.batches += 1
        return True
