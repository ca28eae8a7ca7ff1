"""A run's metrics, and the Ray actor that collects them across runs and drivers.

Every figure is derived from the run's records (attempt by attempt) by one function, :func:`add_rows_metrics`: a
retried attempt, a crashed worker or a lost machine is one attempt record, so it counts once and only once, and no
node or driver ever waits on a metrics call. Bytes and storage latency come from the workers inside each attempt's
metadata. While a run runs, the driver sends the :class:`MetricsActor` the rows of the nodes that changed,
fire-and-forget, and the actor derives their figures (observe/live.py); ``result.metrics`` derives them in the
driver when read.
"""

from __future__ import annotations

import gc
import logging
import pickle
import time
from collections.abc import Collection, Iterable, Mapping
from typing import Any, NamedTuple

from .metrics import LabelKey, MetricKind, MetricsManager, MetricType, label_key
from ..execution.result import NodeRecord, NodeStatus, RunResult, span_s

log = logging.getLogger(__name__)

#: The Ray namespace the metrics actors live in, so every driver finds them by name.
RAY_NAMESPACE = "odibi_ray"


#: The labels a run's series carry, every one with a bounded set of values, so that a pipeline run every
#: hour for a year still has the same series (Prometheus keeps one time series per label set): ``pipeline``,
#: ``name`` (the node), ``level``, ``worker`` (the Ray node id an attempt ran on; attempts only), ``reason``
#: (skipped or cancelled; skips only), ``source`` (cached or resumed; cache hits only) and ``status`` (an item's,
#: map items only). An item of a mapped node counts under its node's name (no item label). The run id is not a
#: label: it is in the run's result, manifest, JSON export and report.
RUN_LABELS = ("pipeline", "name", "level", "worker", "reason", "source", "status")


def metrics_from_result(result: RunResult, inputs: dict[str, list[str]] | None = None) -> MetricsManager:
    """Counters and histograms of one run, labelled by pipeline, node (``name``) and level (see
    :data:`RUN_LABELS`: no run id, so that runs of one pipeline add up in the same series)."""
    return run_metrics_of(result.pipeline, result.nodes, result.stats, inputs)


def run_metrics_of(pipeline: str, nodes: Mapping[str, NodeRecord], stats: Mapping[str, int],
                   inputs: Mapping[str, list[str]] | None = None) -> MetricsManager:
    """:func:`metrics_from_result` from a run's parts (a deriver kept by its result must not hold the result: a
    cycle that kept a dropped result and its outputs' refs alive until a full garbage collection)."""
    m = MetricsManager()
    checkpointed = any(r.cache_key for r in nodes.values())
    add_nodes_metrics(m, pipeline, nodes.values(), nodes, inputs, checkpointed)
    for rec in nodes.values():
        if rec.items:
            add_items_metrics(m, pipeline, rec.items, nodes, inputs, checkpointed, rec.name)
    add_run_counters(m, pipeline, stats)
    return m


def add_run_counters(m: MetricsManager, pipeline: str, stats: Mapping[str, int]) -> None:
    """Add the run's own counters (no node's): cached objects evicted, and stored objects found corrupt."""
    evicted = stats.get("cache_evictions", 0)
    if evicted:
        m.increment(MetricType.CACHE_EVICTION, pipeline, value=evicted, pipeline=pipeline)
    corrupt = stats.get("corrupt_objects", 0)
    if corrupt:
        m.increment(MetricType.CACHE_CORRUPTION, pipeline, value=corrupt, pipeline=pipeline)


def add_node_metrics(m: MetricsManager, pipeline: str, rec: NodeRecord, records: Mapping[str, NodeRecord],
                     inputs: Mapping[str, list[str]] | None, checkpointed: bool, node: str | None = None) -> None:
    """Add one node's figures to ``m``: its attempts (as recorded so far) and, once it is closed, its outcome, as
    :func:`add_rows_metrics` derives them (items in batches: :func:`add_items_metrics`). ``node``: ``rec`` is an item
    of that mapped node; its figures count under the node's name, its outcome as a :attr:`MetricType.MAP_ITEM` (its
    cache hit or miss as the node's)."""
    if node is not None:
        add_items_metrics(m, pipeline, [rec], records, inputs, checkpointed, node)
        return
    add_nodes_metrics(m, pipeline, [rec], records, inputs, checkpointed)


def add_nodes_metrics(m: MetricsManager, pipeline: str, recs: Iterable[NodeRecord],
                      records: Mapping[str, NodeRecord], inputs: Mapping[str, list[str]] | None,
                      checkpointed: bool) -> None:
    """Add the figures of nodes ``recs``: exactly what :func:`add_node_metrics` adds for each, summed per series
    first and added in one call (the manager's call per node was two thirds of deriving a node's figures:
    bench_overhead's profile of skip300-s0)."""
    rows = (node_row(rec, inputs_done_at(rec.name, records, inputs)) for rec in recs)
    add_rows_metrics(m, pipeline, rows, checkpointed)


def add_items_metrics(m: MetricsManager, pipeline: str, items: Iterable[NodeRecord],
                      records: Mapping[str, NodeRecord], inputs: Mapping[str, list[str]] | None, checkpointed: bool,
                      node: str) -> None:
    """Add the figures of ``items`` of the mapped node ``node``: exactly what ``add_node_metrics(..., node=node)``
    adds for each item, derived in one pass and summed per series first (a mapped node may have 10,000 items, and
    a manager call per figure of each cost ~15% of the driver on such a run: bench_map's profile)."""
    ready_at = inputs_done_at(node, records, inputs)
    add_rows_metrics(m, pipeline, (node_row(item, ready_at, node) for item in items), checkpointed)


class AttemptFigures(NamedTuple):
    """What an attempt's figures are derived from (see :class:`NodeRow`)."""

    worker: str | None  # the Ray node id it ran on
    submitted_at: float
    started_at: float | None
    ended_at: float | None
    bytes_written: int
    bytes_read: int
    storage_s: float


class NodeRow(NamedTuple):
    """What a node's (or an item's) figures are derived from, and nothing else: the live metrics send rows to the
    metrics actor (observe/live.py) and the driver keeps each node's last one sent, so a row holds no output tail,
    traceback or item records (an attempt's record may carry 64 KB of output)."""

    name: str
    level: int
    status: NodeStatus
    attempts: tuple[AttemptFigures, ...]  # as recorded so far
    mapped: bool  # a mapped node (its cache hits and misses are its items')
    early_cutoff: bool  # reused because the outputs it reads were unchanged
    ready_at: float | None  # the latest end of its inputs (an item: of its mapped node's inputs), if known
    node: str | None = None  # an item: the mapped node it counts under


def node_row(rec: NodeRecord, ready_at: float | None, node: str | None = None) -> NodeRow:
    """The row of a node's (or, with ``node``, an item's) record."""
    return NodeRow(rec.name, rec.level, rec.status,
                   tuple(AttemptFigures(a.worker_node_id, a.submitted_at, a.started_at, a.ended_at, a.bytes_written,
                                        a.bytes_read, a.storage_s) for a in rec.attempt_history),
                   rec.items is not None, bool(rec.unchanged_inputs), ready_at, node)


def add_rows_metrics(m: MetricsManager, pipeline: str, rows: Iterable[NodeRow], checkpointed: bool) -> None:
    """The one derivation of node and item figures: each row's attempts and, once it is closed, its outcome, summed
    per series and added to ``m`` in one call."""
    figures = _Figures()
    for row in rows:
        node = row.node
        if node is None:
            _attempt_figures(figures, row, row.name)
            _node_outcome(figures, row, checkpointed)
        else:
            _attempt_figures(figures, row, node)
            _item_outcome(figures, row, node, checkpointed)
    figures.add_to(m, pipeline)


#: One series of a run's figures: metric, node name, level, and the one other label it may carry (or None).
_Series = tuple[MetricType, str, str, "tuple[str, str] | None"]


class _Figures:
    """A batch of figures before they reach a manager, summed per series: one ``increment`` per counter series and
    one ``observe_many`` per histogram series, so a series' labels are checked and keyed once per batch, not once
    per figure. The manager adds them exactly, so the figures are those of one call per figure."""

    __slots__ = ("counts", "loose", "values")

    def __init__(self) -> None:
        self.counts: dict[_Series, int] = {}
        self.loose: list[tuple[_Series, Any]] = []  # counter values that are not non-negative ints: added one by one
        self.values: dict[_Series, list[float]] = {}

    def count(self, series: _Series, value: Any = 1) -> None:
        if type(value) is int and value >= 0:
            self.counts[series] = self.counts.get(series, 0) + value
        else:  # the manager checks it (and adds a float exactly) as it always did
            self.loose.append((series, value))

    def observe(self, series: _Series, value: float) -> None:
        values = self.values.get(series)
        if values is None:
            self.values[series] = [value]
        else:
            values.append(value)

    def add_to(self, m: MetricsManager, pipeline: str) -> None:
        m.add_keyed({(series[0], _series_key(pipeline, series)): total for series, total in self.counts.items()},
                    {(series[0], _series_key(pipeline, series)): values for series, values in self.values.items()})
        for series, value in self.loose:
            m.increment(series[0], series[1], value=value, **_labels(pipeline, series))


#: The labels a series may carry besides level, name and pipeline: each sorts after those three.
_EXTRA_LABELS = ("reason", "source", "status", "worker")


def _series_key(pipeline: str, series: _Series) -> LabelKey:
    """``label_key(name, pipeline=, level=, extra)`` without its checks and sort for the usual plain strings: the
    pairs are written in sorted order (level < name < pipeline < any of :data:`_EXTRA_LABELS`). Keying each series
    of each node through the checks cost more than adding its figures."""
    _metric, name, level, extra = series
    if (name and type(name) is str and type(level) is str and type(pipeline) is str
            and (extra is None or (extra[0] in _EXTRA_LABELS and type(extra[1]) is str))):
        key: LabelKey = (("level", level), ("name", name), ("pipeline", pipeline))
        return key if extra is None else (*key, extra)
    return label_key(name, **_labels(pipeline, series))


def _labels(pipeline: str, series: _Series) -> dict[str, str]:
    labels = {"pipeline": pipeline, "level": series[2]}
    if series[3] is not None:
        labels[series[3][0]] = series[3][1]
    return labels


def inputs_done_at(name: str, records: Mapping[str, NodeRecord],
                   inputs: Mapping[str, list[str]] | None) -> float | None:
    """When the node's inputs were all done (the latest end of its upstream nodes), if known."""
    if inputs is None:
        return None
    ends = [records[u].ended_at for u in inputs.get(name, ()) if u in records]
    return max([e for e in ends if e is not None], default=None)


def _attempt_figures(figures: _Figures, row: NodeRow, name: str) -> None:
    """A row's attempts, counted under ``name``."""
    level = str(row.level)
    ready_at = row.ready_at or 0.0
    for att in row.attempts:
        figures.count((MetricType.NODE_ATTEMPT, name, level, ("worker", att.worker or "unknown")))
        started, duration = att.started_at, span_s(att.started_at, att.ended_at)
        if duration is not None:
            figures.observe((MetricType.EXECUTION_TIME, name, level, None), duration)
        if started is not None:  # time from ready (submitted, and inputs done) to running
            ready = max(att.submitted_at, ready_at)
            figures.observe((MetricType.QUEUE_WAIT, name, level, None), max(0.0, started - ready))
        if att.bytes_written:
            figures.count((MetricType.BYTES_WRITTEN, name, level, None), att.bytes_written)
        if att.bytes_read:
            figures.count((MetricType.BYTES_READ, name, level, None), att.bytes_read)
        if att.storage_s:
            figures.observe((MetricType.STORAGE_LATENCY, name, level, None), att.storage_s)
    if len(row.attempts) > 1:
        figures.count((MetricType.NODE_RETRY, name, level, None), len(row.attempts) - 1)


def _item_outcome(figures: _Figures, item: NodeRow, node: str, checkpointed: bool) -> None:
    """An item's outcome once it is closed: a map item by status, and its cache hit or miss as its node's."""
    status, level = item.status, str(item.level)
    if status.done:
        figures.count((MetricType.MAP_ITEM, node, level, ("status", status.value)))
    if status is NodeStatus.SUCCEEDED and checkpointed:
        figures.count((MetricType.CACHE_MISS, node, level, None))
    elif status in (NodeStatus.CACHED, NodeStatus.RESUMED):
        figures.count((MetricType.CACHE_HIT, node, level, ("source", status.value)))


def _node_outcome(figures: _Figures, rec: NodeRow, checkpointed: bool) -> None:
    """A node's outcome once it is closed (a mapped node's cache hits and misses are its items')."""
    status, name, level = rec.status, rec.name, str(rec.level)
    mapped = rec.mapped
    if status is NodeStatus.SUCCEEDED:
        figures.count((MetricType.NODE_SUCCESS, name, level, None))
        if checkpointed and not mapped:
            figures.count((MetricType.CACHE_MISS, name, level, None))
    elif status is NodeStatus.FAILED:
        figures.count((MetricType.NODE_FAILURE, name, level, None))
    elif status in (NodeStatus.SKIPPED, NodeStatus.CANCELLED):
        figures.count((MetricType.NODE_SKIP, name, level, ("reason", status.value)))
    elif status in (NodeStatus.CACHED, NodeStatus.RESUMED) and not mapped:
        figures.count((MetricType.CACHE_HIT, name, level, ("source", status.value)))
        if rec.early_cutoff:
            figures.count((MetricType.EARLY_CUTOFF, name, level, None))


def add_status_gauges(m: MetricsManager, pipeline: str, status: Mapping[str, Any]) -> None:
    """Set the live gauges of a run from its status document (observe/live.py): nodes running, pending, waiting to
    retry, and done per level."""
    counts = status.get("counts", {})
    p = pipeline
    m.set_gauge(MetricType.NODES_RUNNING, p, counts.get("running", 0), pipeline=p)
    m.set_gauge(MetricType.NODES_PENDING, p, counts.get("ready", 0), pipeline=p)
    m.set_gauge(MetricType.NODES_WAITING_RETRY, p, counts.get("waiting_retry", 0), pipeline=p)
    for level, (done, _total) in enumerate(status.get("levels", [])):
        m.set_gauge(MetricType.NODES_DONE, p, done, pipeline=p, level=str(level))


class RowBatch(NamedTuple):
    """One live batch of a running run (observe/live.py): the rows of the nodes changed since the batch before,
    whose figures the metrics actor adds, and the rows it added before for those of them it had (``replaced``),
    whose figures it takes away. So the actor keeps nothing per run: the driver knows what it sent."""

    pipeline: str
    checkpointed: bool  # the run has cache keys (a success is then also a cache miss)
    rows: list[NodeRow]
    replaced: list[NodeRow]
    counters: Mapping[str, int] | None = None  # the run's own counters (add_run_counters), in its last batch


#: How often, at most, the actor freezes what it keeps out of the garbage collector's walks (see MetricsActor._settle).
FREEZE_EVERY_S = 5.0
#: The kinds of metric Ray's own endpoint carries (observe/ray_export.py: not histograms).
EXPORTED_KINDS = (MetricKind.COUNTER, MetricKind.GAUGE)
#: How many runs' status documents the actor keeps (the newest; older runs are in their manifests).
STATUS_KEPT = 200


class MetricsActor:
    """Holds a :class:`MetricsManager` in a Ray actor; batches are merged exactly (see ``merge``). A running run
    also sends its status document with each batch (observe/live.py); the actor keeps the newest per run."""

    def __init__(self, freeze: bool = False) -> None:
        from .ray_export import RayExport  # here: ray_export reads this module's RUN_LABELS

        self.metrics = MetricsManager()
        self.runs: dict[str, dict[str, Any]] = {}  # run id -> its newest status document, oldest run first
        self.export = RayExport()  # the same counters and gauges on Ray's own metrics endpoint
        #: freeze what is kept out of the collector's walks (see _settle): in the actor's own process only, never
        #: in a process that made one to read or test (it would freeze that process's objects too)
        self._next_freeze = 0.0 if freeze else float("inf")

    def push(self, snapshot: dict[str, Any], status: dict[str, Any] | None = None) -> None:
        """Merge a snapshot (the seed's MetricsManager calls, ``ActorMetricsManager``) and mirror its counters and
        gauges on Ray's endpoint."""
        self.metrics.merge(snapshot)
        self.export.apply(snapshot)
        self._end_batch(status)

    def push_rows(self, pickled: bytes, status: dict[str, Any] | None = None) -> None:
        """Count a live batch (observe/live.py), pickled by the driver (``runner._live_sender``: ``pickle`` is faster
        than Ray's serialiser on thousands of rows): the figures of its rows minus those of the rows they replace, the
        run's counters and the gauges of its status. Derived here, not in the driver: deriving, snapshotting and
        diffing them in the driver loop cost 60-95 µs of driver CPU a node (bench_overhead, no-op nodes)."""
        batch = pickle.loads(pickled)
        assert isinstance(batch, RowBatch)
        delta = MetricsManager(signed=True)
        add_rows_metrics(delta, batch.pipeline, batch.rows, batch.checkpointed)
        if batch.replaced:  # (rare: a node counted before changed since: a retry, an output lost and made again)
            before = MetricsManager()
            add_rows_metrics(before, batch.pipeline, batch.replaced, batch.checkpointed)
            delta.merge(MetricsManager().difference(before))
        if batch.counters:
            add_run_counters(delta, batch.pipeline, batch.counters)
        if status is not None:
            add_status_gauges(delta, batch.pipeline, status)
        # Ray's endpoint gets the delta's counters and gauges as plain values, and the manager takes the delta's
        # entries as they are: a snapshot of every family once cost ~40 µs a node of the actor's CPU; a snapshot of
        # the two and a copy of the delta, 51 µs a node in all against 46 now (A/B in a worker, a 5,000-node run's
        # batches: benchmarks/results/bench_overhead_parts_20261203.txt)
        self.export.apply_values(delta.plain_values(EXPORTED_KINDS))
        self.metrics.absorb(delta)
        self._end_batch(status)

    def _end_batch(self, status: dict[str, Any] | None) -> None:
        """Keep the run's status document; at times, settle what the actor keeps (see there)."""
        self._keep_status(status)
        self._settle()

    def _settle(self) -> None:
        """At most every :data:`FREEZE_EVERY_S`: collect, then freeze what is left (``gc.freeze``), so that the
        collector stops walking the series the actor keeps for good. Half of a 1,500-node batch's time went to
        collections walking them (60 ms a batch with the freeze, 125 without, measured in a process with Ray
        loaded). Collecting first leaves no cyclic garbage to freeze; what is frozen is still freed by its
        reference count (the series hold no cycles)."""
        now = time.monotonic()
        if now >= self._next_freeze:
            self._next_freeze = now + FREEZE_EVERY_S
            gc.collect()
            gc.freeze()

    def _keep_status(self, status: dict[str, Any] | None) -> None:
        if status is not None:
            rid = str(status.get("run_id"))
            self.runs.pop(rid, None)
            self.runs[rid] = status
            while len(self.runs) > STATUS_KEPT:
                self.runs.pop(next(iter(self.runs)))

    def run_status(self, run_id: str) -> dict[str, Any] | None:
        """The newest status document of ``run_id`` (None if this actor never heard of it)."""
        return self.runs.get(run_id)

    def latest_run(self, pipeline: str | None = None) -> dict[str, Any] | None:
        """The status document of the run (of ``pipeline``) that reported last."""
        for status in reversed(list(self.runs.values())):
            if pipeline is None or status.get("pipeline") == pipeline:
                return status
        return None

    def snapshot(self) -> dict[str, Any]:
        return self.metrics.snapshot()

    def export_prometheus(self) -> str:
        return self.metrics.export_prometheus()

    def export_json(self) -> str:
        return self.metrics.export_json()

    def reset(self) -> None:
        self.metrics.reset()


def actor_name(namespace: str) -> str:
    return f"odibi_ray_metrics_{namespace}"


def metrics_actor(namespace: str = "default", *, detached: bool = False) -> Any:
    """The named metrics actor of ``namespace``, created on first use and found again by every driver
    (``get_if_exists``); ``detached=True`` lets it outlive the driver that created it.

    This process keeps the handle for as long as it is connected to that Ray: Ray destroys a non-detached
    actor once no handle to it is left, which would drop every run's metrics between two runs."""
    import ray

    global _ACTOR_CLASS
    ctx = ray.get_runtime_context()
    # the cluster too: job ids start again at 01000000 in every new cluster (a ray.shutdown then ray.init in one
    # process), and a handle kept from the old one would send every batch to an actor that is gone
    key = (namespace, detached, ctx.gcs_address, ctx.get_job_id())
    handle = _HANDLES.get(key)
    if handle is not None:
        return handle
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    opts: dict[str, Any] = dict(name=actor_name(namespace), namespace=RAY_NAMESPACE, get_if_exists=True,
                                num_cpus=0,  # one call at a time: a caller's push is seen by its next read
                                # on the driver's machine when it can be: a worker machine lost mid-run (spot,
                                # preemption) must not take every run's metrics with it
                                scheduling_strategy=NodeAffinitySchedulingStrategy(
                                    ray.get_runtime_context().get_node_id(), soft=True))
    if detached:
        opts["lifetime"] = "detached"
    if _ACTOR_CLASS is None:  # made once per process: making it exports the class again (~30 ms a run)
        _ACTOR_CLASS = ray.remote(MetricsActor)
    handle = _HANDLES[key] = _ACTOR_CLASS.options(**opts).remote(freeze=True)
    return handle


_ACTOR_CLASS: Any = None
#: (namespace, detached, Ray cluster (GCS address), Ray job id) -> actor handle held by this process
_HANDLES: dict[tuple[str, bool, str, str], Any] = {}


def actor_metrics(namespace: str = "default") -> MetricsManager:
    """A copy of what the metrics actor of ``namespace`` holds now (Prometheus/JSON export, summaries)."""
    import ray

    return MetricsManager.from_snapshot(ray.get(metrics_actor(namespace).snapshot.remote()))


class ActorMetricsManager(MetricsManager):
    """The seed's MetricsManager API against the metrics actor of ``namespace``: writes go to the actor
    fire-and-forget (one small batch per call), reads (values, summaries, exports) fetch its state first."""

    def __init__(self, namespace: str = "default", *, detached: bool = False) -> None:
        super().__init__()
        self._actor = metrics_actor(namespace, detached=detached)

    def _send(self, method: str, *args: Any, **kwargs: Any) -> None:
        delta = MetricsManager()
        getattr(delta, method)(*args, **kwargs)
        self._actor.push.remote(delta.snapshot())

    def increment(self, *args: Any, **kwargs: Any) -> None:
        self._send("increment", *args, **kwargs)

    def record(self, *args: Any, **kwargs: Any) -> None:
        self._send("record", *args, **kwargs)

    def set_gauge(self, *args: Any, **kwargs: Any) -> None:
        self._send("set_gauge", *args, **kwargs)

    def refresh(self) -> ActorMetricsManager:
        """Replace the local copy by the actor's current state."""
        import ray

        state = ray.get(self._actor.snapshot.remote())
        MetricsManager.reset(self)
        MetricsManager.merge(self, state)
        return self

    def get_metric_value(self, *args: Any, **kwargs: Any) -> Any:
        self.refresh()
        return MetricsManager.get_metric_value(self, *args, **kwargs)

    def get_all_metrics(self, *args: Any, **kwargs: Any) -> Any:
        self.refresh()
        return MetricsManager.get_all_metrics(self, *args, **kwargs)

    def snapshot(self, kinds: Collection[MetricKind] | None = None) -> dict[str, Any]:
        self.refresh()
        return MetricsManager.snapshot(self, kinds)

    def export_prometheus(self) -> str:
        self.refresh()
        return MetricsManager.export_prometheus(self)

    def export_json(self, indent: int | None = None) -> str:
        self.refresh()
        return MetricsManager.export_json(self, indent)

    def print_summary(self, console: Any = None) -> Any:
        self.refresh()
        return MetricsManager.print_summary(self, console)

    def reset(self) -> None:
        """Clear the actor's metrics (and the local copy)."""
        import ray

        ray.get(self._actor.reset.remote())
        MetricsManager.reset(self)
