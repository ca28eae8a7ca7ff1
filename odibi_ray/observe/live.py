"""Live metrics: what a run has done so far reaches the metrics actor while it runs, not only at its end.

The driver loop offers :class:`LivePublisher` a look at the run on every pass (a clock read); at most once per
:data:`LIVE_PERIOD_S` it sends the actor one batch, fire-and-forget: the metric *deltas* of the nodes that
changed since the last batch, the live gauges, and the run's status document (levels done, nodes by state,
the slowest in-flight nodes) that ``odibi-ray status --watch`` shows. Nothing here waits on Ray.

Exactness: a node's figures are derived by the same function as the run's final figures
(:func:`~odibi_ray.observe.run_metrics.add_node_metrics`; the items of a mapped node closed since the last batch
by :func:`~odibi_ray.observe.run_metrics.add_items_metrics`, in one pass), and what was sent is kept; at the end
the publisher sends ``final - sent`` (:meth:`MetricsManager.difference`), so the actor ends with exactly the
record-derived figures whatever happened in between (retries, crashed workers, outputs lost and recomputed).
A node (or item) first seen already closed is counted then, straight into the batch, and not diffed again: a later
change of it (an output lost and made again) reaches the actor with those final figures only. A node
counted as succeeded whose output was then lost and whose recomputation failed is the one case where a counter goes
down in that last batch (its success becomes a failure).

The last batch is usually cheaper (:meth:`LivePublisher.finish_exact`): when no node counted closed changed after
(the usual run), ``final - sent`` is just the figures of the nodes changed since the last batch plus the run's own
counters, so the run is not derived a second time; the run's :class:`MetricsManager` is then derived from the
records only when read (``RunResult.metrics``). Deriving the whole run again and diffing it cost about 5% of the
driver on runs of 1,500-5,000 no-op nodes (bench_overhead's profile of skip1500-s1).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..execution.result import NodeRecord
from .metrics import MetricKind, MetricsManager, MetricType
from .run_metrics import add_items_metrics, add_node_metrics, add_nodes_metrics, add_run_counters
from ..definition.names import item_parent

log = logging.getLogger(__name__)

#: How often, at most, a running run sends its metrics to the actor (the issue's bound: a change shows within 2 s).
LIVE_PERIOD_S = 1.0
#: How many sent batches are kept apart before they are summed (a long run sends one per period).
SENT_KEPT = 64
#: How many of the longest-running in-flight nodes the status document names.
SLOWEST = 5


class LiveView(Protocol):
    """What the publisher reads of a running run (the scheduler provides it)."""

    records: dict[str, NodeRecord]
    inputs: dict[str, list[str]]  # node -> its upstream nodes
    reopened: int  # how many times a closed node (or item) was opened again (its output lost or found unusable)

    def take_changed(self) -> set[str]:
        """Nodes whose records changed since the last call (and forget them)."""

    def live_status(self) -> dict[str, Any]:
        """The run's status now: counts by state, levels done, the slowest in-flight nodes."""


Send = Callable[[dict[str, Any], dict[str, Any]], None]  # (metrics delta snapshot, status document)


class LivePublisher:
    """Sends a running run's metric deltas and status to the metrics actor, at most once per ``period_s``."""

    def __init__(self, pipeline: str, run_id: str, send: Send, *, period_s: float = LIVE_PERIOD_S) -> None:
        self.pipeline, self.run_id = pipeline, run_id
        self.period_s = period_s
        self._send = send
        self._due = time.monotonic() + period_s
        self._by_node: dict[str, MetricsManager] = {}  # each node's figures as last sent
        #: Nodes and items counted once, when first seen closed, straight into the batch (an item with the other
        #: items closed since the last one, :func:`add_items_metrics`): keeping each one's figures to diff them cost
        #: 40% of the driver on a 10,000-item run (benchmarks/results/bench_map_profile_10000_before_6d3e6ea.txt) and a
        #: quarter on a 1,500-node one. What one does after that (reopened and run again: rare) reaches the actor
        #: with the run's final figures (:meth:`finish` sends ``final - sent``), not live.
        self._closed_sent: set[str] = set()
        self._dirty = False  # a node or item sent closed changed after: see finish_exact
        self._sent: list[MetricsManager] = []  # the batches sent so far, summed only when read (``sent``)
        self._unsent: MetricsManager | None = None  # a batch whose send failed, to go with the next one
        self._checkpointed: bool | None = None  # the run has cache keys (known before its first batch)
        self.batches = 0

    @property
    def sent(self) -> MetricsManager:
        """Everything sent so far (the sum of the batches): summed here, when read (the last batch reads it only when
        it cannot be made from the nodes changed since the last one: :meth:`finish_exact`)."""
        if len(self._sent) != 1:
            total = MetricsManager(signed=True)
            for batch in self._sent:
                total.merge(batch)
            self._sent = [total]
        return self._sent[0]

    def due(self, now: float) -> bool:
        return now >= self._due

    def publish(self, view: LiveView) -> None:
        """Send what changed since the last batch (a metric delta, the gauges, the status document)."""
        self._due = time.monotonic() + self.period_s
        status = self._status(view.live_status())
        delta = self._node_deltas(view.records, view.inputs, view.take_changed())
        self._gauges(delta, status)
        self._ship(delta, status)

    def finish_exact(self, view: LiveView, changed: set[str], status: dict[str, Any],
                     stats: Mapping[str, int]) -> bool:
        """The last batch without the run's final figures: the deltas of ``changed`` (the nodes changed since the last
        batch) and the run's own counters. That is exactly ``final - sent`` unless a node whose figures were sent
        closed changed after (reopened and run again: its end moves, and the queue wait of the nodes after it counts
        from its end): then nothing is sent and False says to call :meth:`finish` with the final figures. A run that
        sent no batch sends all of its figures this way, derived once."""
        if self._dirty or view.reopened:  # a node closed then opened again: its end moved, and the queue wait of
            return False  # the nodes after it, maybe sent meanwhile, counts from its end: only the final figures say
        delta = self._node_deltas(view.records, view.inputs, changed)
        if self._dirty:
            return False
        add_run_counters(delta, self.pipeline, stats)
        if self._unsent is not None:  # a batch that could not be sent goes with this one
            delta.merge(self._unsent)
            self._unsent = None
        status = self._status(status)
        self._gauges(delta, status)
        self._send_batch(delta.snapshot(), status)  # the last one: ``sent`` is not updated (nothing reads it after)
        return True

    def finish(self, final: MetricsManager, status: dict[str, Any], snapshot: dict[str, Any] | None = None) -> None:
        """The last batch: ``final - sent``, so the actor holds exactly the run's record-derived figures, and the
        gauges of a run that is over (nothing running, pending or waiting to retry). ``snapshot``: ``final``'s
        snapshot when the caller made one (runner: the manifest keeps it); a run that sent no batch (shorter than
        the live period) sends it as it is, with the gauges, instead of a snapshot of ``final - nothing``."""
        status = self._status(status)
        self._unsent = None  # final - sent covers a batch that could not be sent
        batch = None
        if snapshot is not None and not self._sent:
            gauges = MetricsManager(signed=True)
            self._gauges(gauges, status)
            batch = _whole_run(snapshot, gauges.snapshot())
        if batch is None:
            delta = final.difference(self.sent)
            self._gauges(delta, status)
            batch = delta.snapshot()
        self._send_batch(batch, status)  # the last one: ``sent`` is not updated (nothing reads it after this)

    # --- inside -------------------------------------------------------------------------------------

    def _status(self, status: dict[str, Any]) -> dict[str, Any]:
        return dict(status, pipeline=self.pipeline, run_id=self.run_id, updated_at=time.time())

    def _node_deltas(self, records: Mapping[str, NodeRecord], inputs: Mapping[str, list[str]],
                     changed: set[str]) -> MetricsManager:
        delta = MetricsManager(signed=True)
        if self._checkpointed is None:  # cache keys are set before the loop runs
            self._checkpointed = any(r.cache_key for r in records.values())
        closed: dict[str, list[NodeRecord]] = {}  # mapped node -> its items first closed since the last batch
        first_closed: list[NodeRecord] = []  # nodes first seen closed: counted together, once
        for name in changed:
            parent = item_parent(name)
            if parent is None:
                self._node_delta(delta, records, inputs, name, first_closed)
            elif name in self._closed_sent:
                self._dirty = True  # counted closed, changed since: only the final figures say how
            elif records[name].status.done:
                self._closed_sent.add(name)
                closed.setdefault(parent, []).append(records[name])
        add_nodes_metrics(delta, self.pipeline, first_closed, records, inputs, bool(self._checkpointed))
        for parent, items in closed.items():
            add_items_metrics(delta, self.pipeline, items, records, inputs, bool(self._checkpointed), parent)
        return delta

    def _node_delta(self, delta: MetricsManager, records: Mapping[str, NodeRecord], inputs: Mapping[str, list[str]],
                    name: str, first_closed: list[NodeRecord]) -> None:
        """A node's figures now minus those last sent (a retry, a lost output: any change is sent exactly) — except
        for a node first seen already closed, the common case: counted once, as an item is (see ``_closed_sent``;
        profile: benchmarks/results/bench_overhead_profile_worst.txt)."""
        if name in self._closed_sent:
            self._dirty = True  # counted closed, changed since: only the final figures say how
            return
        rec = records[name]
        if name not in self._by_node:
            if rec.status.done:
                self._closed_sent.add(name)
                first_closed.append(rec)  # (added to the delta with the others)
                return
            if not rec.attempt_history:  # submitted, nothing finished yet: no figure to send, none to keep (it is
                return  # counted when first seen closed). Keeping an empty manager per in-flight node, then diffing
                #         it when it closed, cost ~0.3 s of driver CPU on a 5,000-node run (thousands are in flight
                #         at each batch): bench_overhead skip5000-s1 at 2 CPUs, metrics on 3.91 -> 3.59 s, off 2.9 s
        now = MetricsManager()
        add_node_metrics(now, self.pipeline, rec, records, inputs, bool(self._checkpointed))
        delta.merge(now.difference(self._by_node.get(name)))
        self._by_node[name] = now

    def _gauges(self, delta: MetricsManager, status: Mapping[str, Any]) -> None:
        counts = status.get("counts", {})
        p = self.pipeline
        delta.set_gauge(MetricType.NODES_RUNNING, p, counts.get("running", 0), pipeline=p)
        delta.set_gauge(MetricType.NODES_PENDING, p, counts.get("ready", 0), pipeline=p)
        delta.set_gauge(MetricType.NODES_WAITING_RETRY, p, counts.get("waiting_retry", 0), pipeline=p)
        for level, (done, _total) in enumerate(status.get("levels", [])):
            delta.set_gauge(MetricType.NODES_DONE, p, done, pipeline=p, level=str(level))

    def abandon(self, status: dict[str, Any]) -> None:
        """The run stopped on an exception: tell watchers it is over (the status only; its figures stay partial)."""
        self._ship(MetricsManager(signed=True), self._status(status))

    def _ship(self, delta: MetricsManager, status: dict[str, Any]) -> None:
        if self._unsent is not None:  # a batch that could not be sent goes with this one
            delta.merge(self._unsent)
            self._unsent = None
        if self._send_batch(delta.snapshot(), status):
            self._sent.append(delta)  # the manager itself: no snapshot to decode again
            if len(self._sent) > SENT_KEPT:  # a long run: keep the memory bounded
                self._sent = [self.sent]
        else:
            self._unsent = delta  # not counted as sent: kept for the next batch

    def _send_batch(self, snapshot: dict[str, Any], status: dict[str, Any]) -> bool:
        """Send one batch, fire-and-forget; False when it could not be sent."""
        try:
            self._send(snapshot, status)
        except Exception as exc:  # noqa: BLE001 - metrics must never fail a run
            log.warning("could not send live metrics to the metrics actor: %s", exc)
            return False
        self.batches += 1
        return True


def _whole_run(snapshot: Mapping[str, Any], gauges: Mapping[str, Any]) -> dict[str, Any] | None:
    """The final batch of a run that sent none (``final - nothing``) made from ``final``'s own snapshot: the same
    families and series plus the gauges, or None when that would not be the same batch (``final`` has gauges of its
    own, or a series at zero, which ``difference`` leaves out)."""
    families = snapshot.get("metrics") or {}
    for family in families.values():
        if family.get("kind") == MetricKind.GAUGE.value or any(_is_zero(family["kind"], s) for s in family["series"]):
            return None
    merged = {**families, **(gauges.get("metrics") or {})}
    ordered = {m.value: merged[m.value] for m in MetricType if m.value in merged}  # as snapshot() orders them
    return {**snapshot, "metrics": ordered, "signed": True}


def _is_zero(kind: str, series: Mapping[str, Any]) -> bool:
    if kind == MetricKind.HISTOGRAM.value:
        return series.get("count") == 0 and series.get("sum") == 0
    return series.get("value") == 0
