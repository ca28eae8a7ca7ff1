"""A run's metrics, and the Ray actor that collects them across runs and drivers.

Every figure is derived from the run's records (attempt by attempt), in the driver, once per run: a retried
attempt, a crashed worker or a lost machine is one attempt record, so it counts once and only once, and
no node or driver ever waits on a metrics call. Bytes and storage latency come from the workers inside
each attempt's metadata. The batch goes to the :class:`MetricsActor` fire-and-forget.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .metrics import MetricsManager, MetricType
from ..execution.result import NodeRecord, NodeStatus, RunResult

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
    m = MetricsManager()
    checkpointed = any(r.cache_key for r in result.nodes.values())
    for rec in result.nodes.values():
        add_node_metrics(m, result.pipeline, rec, result.nodes, inputs, checkpointed)
        for item in rec.items or ():
            add_node_metrics(m, result.pipeline, item, result.nodes, inputs, checkpointed, node=rec.name)
    base = {"pipeline": result.pipeline}
    evicted = result.stats.get("cache_evictions", 0)
    if evicted:
        m.increment(MetricType.CACHE_EVICTION, result.pipeline, value=evicted, **base)
    corrupt = result.stats.get("corrupt_objects", 0)
    if corrupt:
        m.increment(MetricType.CACHE_CORRUPTION, result.pipeline, value=corrupt, **base)
    return m


def add_node_metrics(m: MetricsManager, pipeline: str, rec: NodeRecord, records: Mapping[str, NodeRecord],
                     inputs: Mapping[str, list[str]] | None, checkpointed: bool, node: str | None = None) -> None:
    """Add one node's figures to ``m``: its attempts (as recorded so far) and, once it is closed, its outcome.
    The one derivation of a node's metrics: the run's final figures and its live deltas (observe/live.py) both
    come from here. ``node``: ``rec`` is an item of that mapped node; its figures count under the node's name,
    its outcome as a :attr:`MetricType.MAP_ITEM` (its cache hit or miss as the node's)."""
    name = node or rec.name
    labels = {"pipeline": pipeline, "level": str(rec.level)}
    ready_at = None
    if inputs is not None:
        ends = [records[u].ended_at for u in inputs.get(name, ()) if u in records]
        ready_at = max([e for e in ends if e is not None], default=None)
    for att in rec.attempt_history:
        m.increment(MetricType.NODE_ATTEMPT, name, value=1, worker=att.worker_node_id or "unknown", **labels)
        if att.duration_s is not None:
            m.record(MetricType.EXECUTION_TIME, name, value=att.duration_s, **labels)
        if att.started_at is not None:  # time from ready (submitted, and inputs done) to running
            ready = max(att.submitted_at, ready_at or 0.0)
            m.record(MetricType.QUEUE_WAIT, name, value=max(0.0, att.started_at - ready), **labels)
        if att.bytes_written:
            m.increment(MetricType.BYTES_WRITTEN, name, value=att.bytes_written, **labels)
        if att.bytes_read:
            m.increment(MetricType.BYTES_READ, name, value=att.bytes_read, **labels)
        if att.storage_s:
            m.record(MetricType.STORAGE_LATENCY, name, value=att.storage_s, **labels)
    if rec.attempts > 1:
        m.increment(MetricType.NODE_RETRY, name, value=rec.attempts - 1, **labels)
    status = rec.status
    if node is not None:
        if status.done:
            m.increment(MetricType.MAP_ITEM, name, value=1, status=status.value, **labels)
        if status is NodeStatus.SUCCEEDED and checkpointed:
            m.increment(MetricType.CACHE_MISS, name, value=1, **labels)
        elif status in (NodeStatus.CACHED, NodeStatus.RESUMED):
            m.increment(MetricType.CACHE_HIT, name, value=1, source=status.value, **labels)
        return
    mapped = rec.items is not None  # a mapped node: its items count the cache hits and misses
    if status is NodeStatus.SUCCEEDED:
        m.increment(MetricType.NODE_SUCCESS, name, value=1, **labels)
        if checkpointed and not mapped:
            m.increment(MetricType.CACHE_MISS, name, value=1, **labels)
    elif status is NodeStatus.FAILED:
        m.increment(MetricType.NODE_FAILURE, name, value=1, **labels)
    elif status in (NodeStatus.SKIPPED, NodeStatus.CANCELLED):
        m.increment(MetricType.NODE_SKIP, name, value=1, reason=status.value, **labels)
    elif status in (NodeStatus.CACHED, NodeStatus.RESUMED) and not mapped:
        m.increment(MetricType.CACHE_HIT, name, value=1, source=status.value, **labels)


#: How many runs' status documents the actor keeps (the newest; older runs are in their manifests).
STATUS_KEPT = 200


class MetricsActor:
    """Holds a :class:`MetricsManager` in a Ray actor; batches are merged exactly (see ``merge``). A running run
    also sends its status document with each batch (observe/live.py); the actor keeps the newest per run."""

    def __init__(self) -> None:
        from .ray_export import RayExport  # here: ray_export reads this module's RUN_LABELS

        self.metrics = MetricsManager()
        self.runs: dict[str, dict[str, Any]] = {}  # run id -> its newest status document, oldest run first
        self.export = RayExport()  # the same counters and gauges on Ray's own metrics endpoint

    def push(self, snapshot: dict[str, Any], status: dict[str, Any] | None = None) -> None:
        self.metrics.merge(snapshot)
        self.export.apply(snapshot)
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
    key = (namespace, detached, ray.get_runtime_context().get_job_id())
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
    handle = _HANDLES[key] = _ACTOR_CLASS.options(**opts).remote()
    return handle


_ACTOR_CLASS: Any = None
#: (namespace, detached, Ray job id) -> actor handle held by this process (a new ray.init is a new job)
_HANDLES: dict[tuple[str, bool, str], Any] = {}


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

    def snapshot(self) -> dict[str, Any]:
        self.refresh()
        return MetricsManager.snapshot(self)

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
