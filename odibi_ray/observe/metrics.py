"""``MetricsManager``: the seed's in-process metrics face (counters, gauges, histograms) and its exports.

One manager holds *series*: a metric (:class:`MetricType`) plus a label set. The seed's ``name`` argument is
just the label ``name``; extra keyword arguments are more labels (``pipeline=``, ``node=``,
``level=``). Everything is exact and mergeable, so a Ray actor can add up snapshots sent in batches:

* counters and histogram bucket counts are Python ints; sums of float values are kept as exact
  :class:`fractions.Fraction` (every float is a binary fraction), so merging batches gives the very same
  numbers as one manager that saw every event, whatever the order or the split;
* gauges are last-write-wins by wall-clock time (``set_at``), so merging them is order-independent too.

``snapshot()`` is plain JSON-able data (format ``odibi-metrics/1``), ``from_snapshot``/``merge`` read it back,
``export_json`` is that snapshot as text and ``export_prometheus`` the text exposition format 0.0.4, written by
``prometheus_client`` from :class:`MetricsCollector` (a collector you can also register in your own registry).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from enum import Enum
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from ..errors import OdibiError

if TYPE_CHECKING:  # prometheus_client is imported when first used: it costs ~50 ms, most processes never export
    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "odibi-metrics/1"

#: Upper bounds (seconds) of the buckets of every duration histogram: 0.5 ms .. 1 h.
SECONDS_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)
#: Upper bounds (bytes) of the buckets of every size histogram: 1 KiB .. 4 GiB in powers of 4.
BYTES_BUCKETS: tuple[float, ...] = tuple(float(1024 * 4 ** i) for i in range(12))

_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_RESERVED_LABELS = frozenset({"le", "quantile"})

Number = int | Fraction
LabelKey = tuple[tuple[str, str], ...]


class MetricError(OdibiError, ValueError):
    """A metric call or a snapshot is invalid: unknown metric, wrong kind, bad label or value."""


class MetricKind(str, Enum):
    """How a metric aggregates: a counter only goes up, a gauge is set, a histogram buckets observations."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"

    def __str__(self) -> str:
        return self.value


class MetricType(str, Enum):
    """Every metric odibi_ray knows, with its kind, Prometheus name, help text and (histograms) buckets."""

    kind: MetricKind
    prometheus_name: str
    help: str
    buckets: tuple[float, ...]

    def __new__(cls, value: str, kind: MetricKind, prometheus_name: str, help_text: str,
                buckets: tuple[float, ...] = ()) -> MetricType:
        member = str.__new__(cls, value)
        member._value_ = value
        member.kind = kind
        member.prometheus_name = prometheus_name
        member.help = help_text
        member.buckets = buckets
        return member

    def __str__(self) -> str:
        return self.value

    CACHE_HIT = ("cache_hit", MetricKind.COUNTER, "odibi_ray_cache_hits_total",
                 "Cache reads that found a valid entry.")
    CACHE_MISS = ("cache_miss", MetricKind.COUNTER, "odibi_ray_cache_misses_total",
                  "Cache reads that found no usable entry (absent, expired or corrupt).")
    CACHE_EVICTION = ("cache_eviction", MetricKind.COUNTER, "odibi_ray_cache_evictions_total",
                      "Cache entries removed because they had expired.")
    CACHE_CORRUPTION = ("cache_corruption", MetricKind.COUNTER, "odibi_ray_cache_corruptions_total",
                        "Cache entries whose payload failed its integrity check.")
    EXECUTION_TIME = ("execution_time", MetricKind.HISTOGRAM, "odibi_ray_node_duration_seconds",
                      "Duration of one node attempt, in seconds.", SECONDS_BUCKETS)
    NODE_ATTEMPT = ("node_attempt", MetricKind.COUNTER, "odibi_ray_node_attempts_total",
                    "Node attempts started.")
    NODE_RETRY = ("node_retry", MetricKind.COUNTER, "odibi_ray_node_retries_total",
                  "Node attempts that were retries of a failed attempt.")
    NODE_SUCCESS = ("node_success", MetricKind.COUNTER, "odibi_ray_node_successes_total",
                    "Nodes that succeeded.")
    NODE_FAILURE = ("node_failure", MetricKind.COUNTER, "odibi_ray_node_failures_total",
                    "Nodes that failed for good.")
    NODE_SKIP = ("node_skip", MetricKind.COUNTER, "odibi_ray_node_skips_total",
                 "Nodes not run because an upstream node failed.")
    EARLY_CUTOFF = ("early_cutoff", MetricKind.COUNTER, "odibi_ray_early_cutoff_total",
                    "Nodes reused, not run, because the inputs that ran before them wrote the outputs they had "
                    "before (early cutoff).")
    MAP_ITEM = ("map_item", MetricKind.COUNTER, "odibi_ray_map_items_total",
                "Items of mapped nodes closed, by status (under the mapped node's name).")
    BYTES_READ = ("bytes_read", MetricKind.COUNTER, "odibi_ray_bytes_read_total",
                  "Bytes read from storage.")
    BYTES_WRITTEN = ("bytes_written", MetricKind.COUNTER, "odibi_ray_bytes_written_total",
                     "Bytes written to storage.")
    STORAGE_LATENCY = ("storage_latency", MetricKind.HISTOGRAM, "odibi_ray_storage_latency_seconds",
                       "Duration of one storage call, in seconds.", SECONDS_BUCKETS)
    QUEUE_WAIT = ("queue_wait", MetricKind.HISTOGRAM, "odibi_ray_queue_wait_seconds",
                  "Time from a node being ready to it running, in seconds.", SECONDS_BUCKETS)
    OUTPUT_SIZE = ("output_size", MetricKind.HISTOGRAM, "odibi_ray_node_output_bytes",
                   "Size of one stored node output, in bytes.", BYTES_BUCKETS)
    NODES_RUNNING = ("nodes_running", MetricKind.GAUGE, "odibi_ray_nodes_running",
                     "Node attempts in flight whose inputs are done (running, or queued for a worker).")
    NODES_PENDING = ("nodes_pending", MetricKind.GAUGE, "odibi_ray_nodes_pending",
                     "Nodes ready to run (their inputs are done) and not submitted yet.")
    NODES_WAITING_RETRY = ("nodes_waiting_retry", MetricKind.GAUGE, "odibi_ray_nodes_waiting_retry",
                           "Nodes whose attempt failed, waiting for their retry's delay.")
    NODES_DONE = ("nodes_done", MetricKind.GAUGE, "odibi_ray_nodes_done",
                  "Nodes of a level that are finished (succeeded, cached, resumed, failed, skipped or cancelled).")


MetricLike = MetricType | str


def metric_type(metric: MetricLike) -> MetricType:
    """The :class:`MetricType` a member or its plain string value (``"cache_hit"``) names."""
    if isinstance(metric, MetricType):
        return metric
    if not isinstance(metric, str):
        raise TypeError(f"metric must be a MetricType or a string, got {type(metric).__name__}")
    try:
        # a look-up by value; mypy reads the call as the members' __new__ (value, kind, name, help)
        return MetricType(metric)  # type: ignore[call-arg]
    except ValueError:
        known = ", ".join(m.value for m in MetricType)
        raise MetricError(f"unknown metric {metric!r}; known metrics: {known}") from None


# --- one series of each kind -------------------------------------------------------------------


class _Histogram:
    """Per-bucket (not cumulative) counts, the +Inf overflow last, and the exact sum of observations."""

    __slots__ = ("counts", "total")

    def __init__(self, nbuckets: int) -> None:
        self.counts = [0] * (nbuckets + 1)
        self.total: Number = 0

    def count(self) -> int:
        return sum(self.counts)


class _Gauge:
    __slots__ = ("set_at", "value")

    def __init__(self, value: Number, set_at: float) -> None:
        self.value, self.set_at = value, set_at


# --- the manager -------------------------------------------------------------------------------


class MetricsManager:
    """In-process, thread-safe metrics: counters, gauges and histograms with labels, exact to merge."""

    def __init__(self, *, signed: bool = False) -> None:
        """An empty manager (no series yet). ``signed``: a *delta* whose counters and buckets may be negative
        (see :meth:`difference`); its snapshot says so, and only such a snapshot may take a figure down."""
        self._lock = threading.Lock()
        self._series: dict[MetricType, dict[LabelKey, Any]] = {}
        self._signed = signed

    # pickling: a copy of the data and a fresh lock (a pickled manager is a snapshot, not a live link)
    def __getstate__(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]  # mypy refuses a call of __init__; it rebuilds what pickling left out
        self.merge(state["snapshot"])

    def __repr__(self) -> str:
        with self._lock:
            n = sum(len(s) for s in self._series.values())
        return f"MetricsManager({n} series)"

    # --- recording ---------------------------------------------------------------------------------

    def increment(self, metric: MetricLike, name: str = "", value: float = 1, **labels: Any) -> None:
        """Add ``value`` (>= 0) to a counter series: the seed's ``increment(MetricType.CACHE_HIT, name)``."""
        m = self._checked(metric, MetricKind.COUNTER, "increment")
        amount = _number(value, m, allow_negative=False)
        key = _label_key(name, labels)
        with self._lock:
            series = self._series.setdefault(m, {})
            series[key] = series.get(key, 0) + amount

    def record(self, metric: MetricLike, name: str = "", value: float | None = None, **labels: Any) -> None:
        """Observe ``value`` in a histogram series (seconds or bytes): ``record(EXECUTION_TIME, n, value=1.2)``."""
        m = self._checked(metric, MetricKind.HISTOGRAM, "record")
        if value is None:
            raise TypeError(f"record({m.value!r}) needs a value")
        amount = _number(value, m, allow_negative=False)
        key = _label_key(name, labels)
        index = bisect.bisect_left(m.buckets, value)  # first bound >= value: buckets are "le", inclusive
        with self._lock:
            series = self._series.setdefault(m, {})
            hist = series.get(key)
            if hist is None:
                hist = series[key] = _Histogram(len(m.buckets))
            hist.counts[index] += 1
            hist.total += amount

    def observe_many(self, metric: MetricLike, name: str, values: Sequence[float], **labels: Any) -> None:
        """Observe every one of ``values`` in one histogram series: the very figures of one :meth:`record` per
        value (same buckets, the exact sum), with the series' labels checked and keyed once. Every value is
        checked before any is added (a bad one changes nothing); no values, no series."""
        m = self._checked(metric, MetricKind.HISTOGRAM, "observe_many")
        key = _label_key(name, labels)
        total = _exact_sum(values, m)  # checks every value as record() does
        if not values:
            return
        with self._lock:
            self._add_observations(m, key, total, values)

    def add_keyed(self, counts: Mapping[tuple[MetricType, LabelKey], int],
                  values: Mapping[tuple[MetricType, LabelKey], Sequence[float]]) -> None:
        """Many counter amounts (non-negative ints) and histogram observations under label keys made as
        :func:`label_key` makes them (the caller's promise: not checked again): the figures of one ``increment`` or
        ``observe_many`` per entry, in one call. A run's figures come this way (observe/run_metrics.py): checking and
        keying the same few labels for every series cost more than adding the figures."""
        for (m, _key), amount in counts.items():  # everything checked before anything is added
            if m.kind is not MetricKind.COUNTER or type(amount) is not int or amount < 0:
                raise MetricError(f"add_keyed: {m.value!r} takes non-negative int counts, got {amount!r}")
        for m, _key in values:
            if m.kind is not MetricKind.HISTOGRAM:
                raise MetricError(f"add_keyed: {m.value!r} is a {m.kind.value}, not a histogram")
        hists = [(m, key, _exact_sum(vals, m), vals) for (m, key), vals in values.items() if vals]
        with self._lock:
            for (m, key), amount in counts.items():
                series = self._series.setdefault(m, {})
                series[key] = series.get(key, 0) + amount
            for m, key, total, vals in hists:
                self._add_observations(m, key, total, vals)

    def _add_observations(self, m: MetricType, key: LabelKey, total: Number, values: Sequence[float]) -> None:
        """Add checked ``values`` (their exact sum ``total``) to one histogram series; the caller holds the lock."""
        buckets = m.buckets
        counts = [0] * (len(buckets) + 1)
        for value in values:
            counts[bisect.bisect_left(buckets, value)] += 1  # first bound >= value, as in record()
        series = self._series.setdefault(m, {})
        hist = series.get(key)
        if hist is None:  # a new series (a run's usual case) takes the figures as they are
            hist = series[key] = _Histogram(len(buckets))
            hist.counts, hist.total = counts, total
        else:
            hist.counts = [a + b for a, b in zip(hist.counts, counts, strict=True)]
            hist.total += total

    def set_gauge(self, metric: MetricLike, name: str, value: float, **labels: Any) -> None:
        """Set a gauge series to ``value`` (last write wins, also across merged snapshots)."""
        m = self._checked(metric, MetricKind.GAUGE, "set_gauge")
        amount = _number(value, m, allow_negative=True)
        key = _label_key(name, labels)
        now = time.time()
        with self._lock:
            self._series.setdefault(m, {})[key] = _Gauge(amount, now)

    @contextlib.contextmanager
    def timer(self, metric: MetricLike, name: str = "", **labels: Any) -> Iterator[None]:
        """Record the seconds the ``with`` block took in a histogram series (also when it raises)."""
        m = self._checked(metric, MetricKind.HISTOGRAM, "timer")
        _label_key(name, labels)  # fail before the block runs, not after
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record(m, name, max(0.0, time.perf_counter() - start), **labels)

    # --- reading -----------------------------------------------------------------------------------

    def get_metric_value(self, metric: MetricLike, name: str = "", **labels: Any) -> Any:
        """One series' value: a counter's total (0 if never incremented), a gauge's value (None if never set),
        or for a histogram a dict ``{"count", "sum", "buckets"}`` with cumulative counts keyed by upper bound."""
        m = metric_type(metric)
        key = _label_key(name, labels)
        with self._lock:
            entry = self._series.get(m, {}).get(key)
            return _public_value(m, entry)

    def get_all_metrics(self, metric: MetricLike | None = None) -> dict[str, Any]:
        """Every series of ``metric`` as ``{series id: value}``, or of every metric with data as
        ``{metric value: {series id: value}}``. The series id is the ``name`` label alone when the series has
        no other label, else ``name{label="value",...}``."""
        with self._lock:
            if metric is not None:
                m = metric_type(metric)
                return {_series_id(k): _public_value(m, v) for k, v in sorted(self._series.get(m, {}).items())}
            return {m.value: {_series_id(k): _public_value(m, v) for k, v in sorted(series.items())}
                    for m, series in self._ordered() if series}

    def hit_rate(self, name: str = "", **labels: Any) -> float | None:
        """Cache hits / (hits + misses) of one series, or None before the first read."""
        hits = self.get_metric_value(MetricType.CACHE_HIT, name, **labels)
        misses = self.get_metric_value(MetricType.CACHE_MISS, name, **labels)
        total = hits + misses
        return None if total == 0 else hits / total

    def empty(self) -> bool:
        """No series at all (not even one at zero)."""
        with self._lock:
            return not any(self._series.values())

    def reset(self) -> None:
        """Forget every series."""
        with self._lock:
            self._series.clear()

    # --- snapshots and merging ------------------------------------------------------------------------

    def snapshot(self, kinds: Collection[MetricKind] | None = None) -> dict[str, Any]:
        """Everything (or the families of ``kinds``) as plain JSON-able data (format ``odibi-metrics/1``) that
        ``merge`` adds exactly."""
        with self._lock:
            metrics: dict[str, Any] = {}
            for m, series in self._ordered():
                if not series or (kinds is not None and m.kind not in kinds):
                    continue
                family: dict[str, Any] = {"kind": m.kind.value, "prometheus_name": m.prometheus_name,
                                          "help": m.help}
                if m.kind is MetricKind.HISTOGRAM:
                    family["buckets"] = list(m.buckets)
                family["series"] = [_encode_series(m, k, v) for k, v in sorted(series.items())]
                metrics[m.value] = family
        out: dict[str, Any] = {"format": SNAPSHOT_FORMAT, "metrics": metrics}
        if self._signed:  # a delta from difference(): its counters may go down (see there)
            out["signed"] = True
        return out

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any]) -> MetricsManager:
        """A new manager holding exactly what ``snapshot`` holds."""
        manager = cls()
        manager.merge(snapshot)
        return manager

    def merge(self, snapshot: Mapping[str, Any] | MetricsManager) -> None:
        """Add a snapshot (or another manager) into this one: counters and histograms add up exactly,
        gauges keep the latest write. The snapshot is checked whole first: a bad one changes nothing."""
        decoded: list[tuple[MetricType, list[tuple[LabelKey, Any]]]]
        if isinstance(snapshot, MetricsManager):  # its series as they are: no encoding and decoding to check
            decoded = [(m, list(series.items())) for m, series in snapshot._copy_series().items()]
        else:
            decoded = _decode_snapshot(snapshot)
        with self._lock:
            for m, entries in decoded:
                self._add_entries(m, entries)
        log.debug("merged %d metric families", len(decoded))

    def absorb(self, other: MetricsManager) -> None:
        """:meth:`merge` of a manager the caller drops afterwards (the metrics actor's batch delta): its entries are
        taken as they are, not copied first (a copy of every histogram of a batch, made only to be dropped)."""
        with other._lock:
            decoded = [(m, list(series.items())) for m, series in other._series.items()]
        with self._lock:
            for m, entries in decoded:
                self._add_entries(m, entries)

    def plain_values(self, kinds: Collection[MetricKind]) -> Iterator[tuple[MetricType, LabelKey, int | float]]:
        """Every series of the families of ``kinds`` (counters and gauges) with its value as a plain number, in no
        particular order: what Ray's endpoint mirrors (observe/ray_export.py), without a snapshot's encoding."""
        if MetricKind.HISTOGRAM in kinds:
            raise MetricError("plain_values: a histogram has no single value")
        with self._lock:
            out = [(m, key, _plain(entry if m.kind is MetricKind.COUNTER else entry.value))
                   for m, series in self._series.items() if m.kind in kinds for key, entry in series.items()]
        return iter(out)

    def _add_entries(self, m: MetricType, entries: Iterable[tuple[LabelKey, Any]]) -> None:
        """Add entries of ``m`` into this manager (decoded, copied, or absorbed from a manager dropped after: never
        shared with one in use); the caller holds the lock."""
        series = self._series.setdefault(m, {})
        if m.kind is MetricKind.COUNTER:
            for key, entry in entries:
                old = series.get(key)
                series[key] = entry if old is None else old + entry
        elif m.kind is MetricKind.GAUGE:
            for key, entry in entries:
                old = series.get(key)
                if old is None or (entry.set_at, entry.value) > (old.set_at, old.value):
                    series[key] = entry
        else:
            for key, entry in entries:
                old = series.get(key)
                if old is None:
                    series[key] = entry
                else:
                    old.counts = [a + b for a, b in zip(old.counts, entry.counts, strict=True)]
                    old.total += entry.total

    def difference(self, other: MetricsManager | None) -> MetricsManager:
        """What must be merged into ``other`` to make it equal this manager: counters and histogram buckets and
        sums subtracted exactly (a component may be negative when a figure went down, e.g. a node counted as
        succeeded whose output was lost and that then failed), gauges as set here. How the live metrics of a run
        send deltas and, at its end, the exact remainder (observe/live.py)."""
        out = MetricsManager(signed=True)
        theirs = other._copy_series() if other is not None else {}  # first: other may be self (one lock each)
        with self._lock:  # read in place: every entry made below is new, nothing of self's is kept
            for m, series in self._series.items():
                out._series[m] = _series_difference(m, series, theirs.get(m, {}))
            for m, old_series in theirs.items():  # series only the other has: taken back whole
                if m.kind is MetricKind.GAUGE:
                    continue
                mine, target = self._series.get(m, {}), out._series.setdefault(m, {})
                for key, old in old_series.items():
                    if key in mine:
                        continue
                    if m.kind is MetricKind.COUNTER:
                        target[key] = -old
                    else:
                        hist = _Histogram(len(m.buckets))
                        hist.counts, hist.total = [-c for c in old.counts], -old.total
                        target[key] = hist
        return out

    def _copy_series(self) -> dict[MetricType, dict[LabelKey, Any]]:
        """A consistent copy of every series (histogram entries copied), taken under the lock."""
        with self._lock:
            out: dict[MetricType, dict[LabelKey, Any]] = {}
            for m, series in self._series.items():
                if m.kind is MetricKind.HISTOGRAM:
                    copied = {}
                    for key, hist in series.items():
                        h = _Histogram(len(m.buckets))
                        h.counts, h.total = list(hist.counts), hist.total
                        copied[key] = h
                    out[m] = copied
                else:
                    out[m] = dict(series)
            return out

    # --- exports ---------------------------------------------------------------------------------------

    def export_json(self, indent: int | None = None) -> str:
        """The snapshot as JSON text (what ``from_snapshot(json.loads(...))`` reads back)."""
        return json.dumps(self.snapshot(), indent=indent, sort_keys=False)

    def export_prometheus(self) -> str:
        """Prometheus text exposition format 0.0.4, as ``prometheus_client.generate_latest`` writes it from
        :meth:`collector` on a private registry: one HELP and TYPE per family, labels kept (``name`` is a label),
        histograms as cumulative ``_bucket{le=...}`` samples up to ``+Inf`` plus ``_sum`` and ``_count``.

        Every value is written as a float (``7.0``, ``1.2345678e+07``): an integer counter above 2**53 is
        rounded to the nearest float64, as any Prometheus reader would read it anyway; the exact int stays in
        ``get_all_metrics``, ``snapshot``/``export_json`` and the collector's samples."""
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry()  # private: never prometheus_client's global REGISTRY
        registry.register(self.collector())
        return generate_latest(registry).decode()

    def collector(self) -> MetricsCollector:
        """A ``prometheus_client`` collector over this manager (see :class:`MetricsCollector`), to register in
        your own registry: ``registry.register(manager.collector())``."""
        return MetricsCollector(self)

    def print_summary(self, console: Any = None) -> Any:
        """Show every series (and the cache hit rate per cache) as a ``rich`` table on ``console``
        (default: a new stdout Console); returns the table."""
        from rich.console import Console
        from rich.table import Table

        console = console if console is not None else Console()
        table = Table(title="odibi_ray metrics")
        for column in ("metric", "series", "kind", "value"):
            table.add_column(column, justify="right" if column == "value" else "left")
        with self._lock:
            rows = [(m, k, v) for m, series in self._ordered() for k, v in sorted(series.items())]
            caches = sorted({k for m in (MetricType.CACHE_HIT, MetricType.CACHE_MISS)
                             for k in self._series.get(m, {})})
        for m, key, entry in rows:
            table.add_row(m.value, _series_id(key) or "-", m.kind.value, _summary_text(m, entry))
        for key in caches:
            labels = dict(key)
            name = labels.pop("name", "")
            rate = self.hit_rate(name, **labels)
            table.add_row("cache_hit_rate", _series_id(key) or "-", "ratio",
                          "-" if rate is None else f"{rate:.1%}")
        if not rows:
            table.add_row("-", "-", "-", "no metrics recorded")
        console.print(table)
        return table

    # --- helpers -----------------------------------------------------------------------------------

    def _checked(self, metric: MetricLike, kind: MetricKind, method: str) -> MetricType:
        m = metric_type(metric)
        if m.kind is not kind:
            hint = {MetricKind.COUNTER: "increment()", MetricKind.GAUGE: "set_gauge()",
                    MetricKind.HISTOGRAM: "record()"}[m.kind]
            raise MetricError(f"{method}() cannot be used on {m.value!r}: it is a {m.kind.value}; use {hint}")
        return m

    def _ordered(self) -> list[tuple[MetricType, dict[LabelKey, Any]]]:
        return [(m, self._series[m]) for m in MetricType if m in self._series]


# --- the prometheus_client collector -------------------------------------------------------------------


class MetricsCollector:
    """A ``prometheus_client`` custom collector (it implements ``prometheus_client.registry.Collector``) that
    reads a :class:`MetricsManager` at every ``collect()``: one ``CounterMetricFamily``, ``GaugeMetricFamily``
    or ``HistogramMetricFamily`` per metric with data, one sample per series (histograms: cumulative
    ``_bucket`` samples up to ``le="+Inf"``, then ``_sum`` and ``_count``). Serve a manager's metrics::

        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        registry.register(MetricsCollector(manager))  # or manager.collector()
        start_http_server(9100, registry=registry)

    Sample names are the metrics' ``prometheus_name`` (``odibi_ray_cache_hits_total``); a counter family's
    ``name`` is that without ``_total``, as prometheus_client names counter families. Sample values are the
    figures of ``get_all_metrics``: a counter or gauge int stays an exact int, an exact fraction and a histogram's
    sum become the nearest float (a value beyond the float range, only possible for a gigantic int, becomes
    +-inf, so that the exposition can write it). The collector reads the manager's local state: for an
    ``ActorMetricsManager`` call its ``refresh()`` first, or collect from ``actor_metrics(namespace)``."""

    def __init__(self, manager: MetricsManager) -> None:
        self.manager = manager

    def __repr__(self) -> str:
        return f"MetricsCollector({self.manager!r})"

    def collect(self) -> Iterator[Metric]:
        """The families of every metric with data, built from one consistent read of the manager."""
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        family_class = {MetricKind.COUNTER: CounterMetricFamily, MetricKind.GAUGE: GaugeMetricFamily,
                        MetricKind.HISTOGRAM: HistogramMetricFamily}
        families: list[Metric] = []
        manager = self.manager
        with manager._lock:  # built whole under the lock: a histogram's buckets, sum and count agree
            for m, series in manager._ordered():
                if not series:
                    continue
                base = m.prometheus_name
                family = family_class[m.kind](base, m.help)
                for key, entry in sorted(series.items()):
                    labels = dict(key)
                    if m.kind is MetricKind.HISTOGRAM:
                        cumulative = 0
                        for bound, n in zip((*m.buckets, math.inf), entry.counts, strict=True):
                            cumulative += n
                            family.add_sample(f"{base}_bucket", {**labels, "le": _format_bound(bound)}, cumulative)
                        family.add_sample(f"{base}_sum", labels, float(_sample_value(entry.total)))
                        family.add_sample(f"{base}_count", labels, cumulative)
                    else:
                        value = entry if m.kind is MetricKind.COUNTER else entry.value
                        family.add_sample(base, labels, _sample_value(value))
                families.append(family)
        return iter(families)


# --- module helpers ----------------------------------------------------------------------------------


def _number(value: Any, metric: MetricType, *, allow_negative: bool) -> Number:
    """An exact int or Fraction from an int/float value; bools, NaN, infinities (and negatives) refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"value of {metric.value!r} must be an int or a float, got {type(value).__name__}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MetricError(f"value of {metric.value!r} must be finite, got {value!r}")
        exact: Number = Fraction(value)
        if exact.denominator == 1:
            exact = int(exact)
    else:
        exact = value
    if value < 0 and not allow_negative:
        raise MetricError(f"value of {metric.value!r} must be >= 0 (a {metric.kind.value}), got {value!r}")
    return exact


def _exact_sum(values: Sequence[Any], metric: MetricType) -> Number:
    """The exact sum of non-negative values, each checked as :func:`_number` checks it: the very number that adding
    their exact values one by one gives. A finite float is ``n / 2**k``, so the non-integral ones are added as
    integer numerators over the largest denominator seen, and one Fraction is made at the end."""
    whole: Number = 0  # ints, integral floats, and any value of another type (exact, via _number)
    num, den = 0, 1  # the non-integral floats: num / den, den the largest power of two seen
    for value in values:
        if type(value) is float and 0.0 <= value < math.inf:  # NaN, infinities, negatives: checked below
            n, d = value.as_integer_ratio()
            if d == 1:
                whole += n
            elif d <= den:
                num += n * (den // d)
            else:
                num, den = num * (d // den) + n, d
        elif type(value) is int and value >= 0:
            whole += value
        else:  # raises for bools, other types, NaN, infinities and negatives; int subclasses pass
            whole += _number(value, metric, allow_negative=False)
    if not num:
        return whole
    part = Fraction(num, den)
    return whole + part if whole else part  # (0 + a Fraction is one more Fraction made)


def label_key(name: str, **labels: Any) -> LabelKey:
    """The key of a series (``name`` and ``labels`` checked as every recording call checks them), for
    :meth:`MetricsManager.add_keyed`."""
    return _label_key(name, labels)


def _label_key(name: Any, labels: Mapping[str, Any]) -> LabelKey:
    """The canonical, sorted label tuple of a series; ``name`` is the label ``name`` (left out when empty)."""
    if not isinstance(name, str):
        raise TypeError(f"metric name must be a string, got {type(name).__name__}")
    pairs = [("name", name)] if name else []
    for label, value in labels.items():
        if label not in _CHECKED_LABELS:
            _check_label_name(label)
        if type(value) is not str:  # (a plain str, the common case, is kept as it is)
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise TypeError(f"label {label!r} must be a string or an int, got {type(value).__name__}")
            value = str(value)
        pairs.append((label, value))
    pairs.sort()
    return tuple(pairs)


#: Label names already checked (a run labels thousands of series with the same few names); ``name`` is one.
_CHECKED_LABELS: set[str] = {"name"}


def _check_label_name(label: str) -> None:
    if not _LABEL_NAME.match(label) or label.startswith("__") or label in _RESERVED_LABELS:
        raise MetricError(f"invalid label name {label!r}: it must match [A-Za-z_][A-Za-z0-9_]*, "
                          f"not start with '__' and not be one of {sorted(_RESERVED_LABELS)}")
    _CHECKED_LABELS.add(label)


def _plain(value: Number) -> int | float:
    if isinstance(value, Fraction):
        return int(value) if value.denominator == 1 else float(value)
    return value


def _public_value(m: MetricType, entry: Any) -> Any:
    if m.kind is MetricKind.COUNTER:
        return _plain(entry) if entry is not None else 0
    if m.kind is MetricKind.GAUGE:
        return None if entry is None else _plain(entry.value)
    hist = entry if entry is not None else _Histogram(len(m.buckets))
    buckets: dict[float, int] = {}
    cumulative = 0
    for bound, n in zip((*m.buckets, math.inf), hist.counts, strict=True):
        cumulative += n
        buckets[bound] = cumulative
    return {"count": cumulative, "sum": float(hist.total), "buckets": buckets}


def _series_id(key: LabelKey) -> str:
    labels = dict(key)
    name = labels.pop("name", "")
    if not labels:
        return name
    inner = ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in labels.items())
    return f"{name}{{{inner}}}"


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_bound(bound: float) -> str:
    """The ``le`` label of a bucket, as this module has always written it: ``repr`` of the bound (``"1048576.0"``,
    not prometheus_client's Go-style ``"1.048576e+06"``, which would be another label value) or ``"+Inf"``."""
    return "+Inf" if bound == math.inf else repr(float(bound))


def _sample_value(value: Number) -> int | float:
    """A sample's value for prometheus_client: an int stays exact, a Fraction is its nearest float; a value
    too large for a float (which ``generate_latest`` could not write) is +-inf."""
    try:
        float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
    return _plain(value)


def _format_number(value: Number) -> str:
    plain = _plain(value)
    return str(plain) if isinstance(plain, int) else repr(plain)


def _summary_text(m: MetricType, entry: Any) -> str:
    if m.kind is MetricKind.COUNTER:
        return _format_number(entry)
    if m.kind is MetricKind.GAUGE:
        return _format_number(entry.value)
    n = entry.count()
    if n == 0:
        return "count 0"
    unit = "s" if m.buckets is SECONDS_BUCKETS else " B"
    total, mean = float(entry.total), float(entry.total / n)
    return f"count {n}, sum {total:.6g}{unit}, mean {mean:.6g}{unit}"


def _series_difference(m: MetricType, series: Mapping[LabelKey, Any], theirs: Mapping[LabelKey, Any]
                       ) -> dict[LabelKey, Any]:
    """``series - theirs`` for the keys of ``series`` (see :meth:`MetricsManager.difference`): new entries only."""
    target: dict[LabelKey, Any] = {}
    for key, entry in series.items():
        old = theirs.get(key)
        if m.kind is MetricKind.COUNTER:
            if entry != (old or 0):
                target[key] = entry - (old or 0)
        elif m.kind is MetricKind.GAUGE:
            target[key] = entry
        else:
            hist = _Histogram(len(m.buckets))
            hist.counts = [a - b for a, b in zip(entry.counts, old.counts, strict=True)] if old else list(entry.counts)
            hist.total = entry.total - (old.total if old else 0)
            if any(hist.counts) or hist.total:
                target[key] = hist
    return target


# --- snapshot encoding ---------------------------------------------------------------------------------


def _encode_exact(value: Number, into: dict[str, Any], field: str) -> None:
    """``field`` gets the plain number; a non-integral one also gets ``<field>_exact`` = "num/den"."""
    into[field] = _plain(value)
    if isinstance(value, Fraction) and value.denominator != 1:
        into[f"{field}_exact"] = f"{value.numerator}/{value.denominator}"


def _encode_series(m: MetricType, key: LabelKey, entry: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"labels": dict(key)}
    if m.kind is MetricKind.COUNTER:
        if type(entry) is int:  # the common case, written as _encode_exact would
            out["value"] = entry
        else:
            _encode_exact(entry, out, "value")
    elif m.kind is MetricKind.GAUGE:
        _encode_exact(entry.value, out, "value")
        out["set_at"] = entry.set_at
    else:
        counts = list(entry.counts)
        out["count"] = sum(counts)
        _encode_exact(entry.total, out, "sum")
        out["bucket_counts"] = counts
    return out


def _decode_exact(series: Mapping[str, Any], field: str, where: str) -> Number:
    exact = series.get(f"{field}_exact")
    if exact is not None:
        try:
            value = _parse_fraction(exact)
        except (TypeError, ValueError, ZeroDivisionError):
            raise MetricError(f"{where}: {field}_exact {exact!r} is not a fraction 'num/den'") from None
        return int(value) if value.denominator == 1 else value
    raw = series.get(field)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise MetricError(f"{where}: {field} must be a finite number, got {raw!r}")
    if isinstance(raw, float):
        value = Fraction(raw)
        return int(value) if value.denominator == 1 else value
    return raw


def _parse_fraction(text: Any) -> Fraction:
    """``Fraction(text)`` for the "num/den" this module writes, without Fraction's regular expression (a histogram
    sum of every series of every batch is one); any other text is read by ``Fraction`` itself."""
    if type(text) is str:
        num, sep, den = text.partition("/")
        digits = num[1:] if num.startswith("-") else num
        if sep and digits.isdigit() and den.isdigit() and text.isascii():
            return Fraction(int(num), int(den))
    return Fraction(text)


def _decode_snapshot(snapshot: Any) -> list[tuple[MetricType, list[tuple[LabelKey, Any]]]]:
    """Check a whole snapshot and turn it into internal entries; raises MetricError on the first fault."""
    if not isinstance(snapshot, Mapping):
        raise TypeError(f"a metrics snapshot must be a mapping, got {type(snapshot).__name__}")
    if snapshot.get("format") != SNAPSHOT_FORMAT:
        raise MetricError(f"not a metrics snapshot: format is {snapshot.get('format')!r}, "
                          f"expected {SNAPSHOT_FORMAT!r}")
    families = snapshot.get("metrics")
    if not isinstance(families, Mapping):
        raise MetricError("metrics snapshot has no 'metrics' mapping")
    signed = snapshot.get("signed") is True  # a delta (MetricsManager.difference): values may be negative
    decoded = []
    for metric_name, family in families.items():
        m = metric_type(metric_name)
        where = f"snapshot metric {m.value!r}"
        if not isinstance(family, Mapping) or family.get("kind") != m.kind.value:
            raise MetricError(f"{where}: kind is {family.get('kind') if isinstance(family, Mapping) else family!r}, "
                              f"expected {m.kind.value!r}")
        if m.kind is MetricKind.HISTOGRAM and list(family.get("buckets") or ()) != list(m.buckets):
            raise MetricError(f"{where}: bucket bounds {family.get('buckets')!r} differ from this version's "
                              f"{list(m.buckets)!r}; snapshots with other buckets cannot be merged exactly")
        series_list = family.get("series")
        if not isinstance(series_list, list):
            raise MetricError(f"{where}: 'series' must be a list")
        decoded.append((m, [_decode_series(m, series, where, signed) for series in series_list]))
    return decoded


def _decode_series(m: MetricType, series: Any, where: str, signed: bool) -> tuple[LabelKey, Any]:
    """One checked series of a snapshot as its label key and internal entry. The common shapes (plain int counts,
    string labels) are checked with exact type tests, which the metrics actor does for every series of every batch;
    anything else takes the general checks, which accept and refuse what they always did."""
    labels = series.get("labels") if isinstance(series, Mapping) else None
    if not isinstance(labels, Mapping):
        raise MetricError(f"{where}: every series needs a 'labels' mapping")
    key = _snapshot_key(labels, where)
    if m.kind is MetricKind.COUNTER:
        value = series.get("value")
        if type(value) is not int or "value_exact" in series:
            value = _decode_exact(series, "value", where)
        if value < 0 and not signed:
            raise MetricError(f"{where}: counter value {series.get('value')!r} is negative")
        return key, value
    if m.kind is MetricKind.GAUGE:
        set_at = series.get("set_at")
        if isinstance(set_at, bool) or not isinstance(set_at, (int, float)):
            raise MetricError(f"{where}: gauge needs a numeric 'set_at', got {set_at!r}")
        return key, _Gauge(_decode_exact(series, "value", where), float(set_at))
    counts = series.get("bucket_counts")
    n = len(m.buckets) + 1
    if not (type(counts) is list and len(counts) == n and all(type(c) is int for c in counts)
            and (signed or min(counts) >= 0)):
        if (not isinstance(counts, list) or len(counts) != n
                or not all(isinstance(c, int) and not isinstance(c, bool) and (c >= 0 or signed) for c in counts)):
            raise MetricError(f"{where}: bucket_counts must be {n} non-negative ints")
    total = sum(counts)
    if series.get("count", total) != total:
        raise MetricError(f"{where}: count {series.get('count')!r} is not the sum of bucket_counts")
    hist = _Histogram(len(m.buckets))
    hist.counts = list(counts)
    hist.total = _decode_exact(series, "sum", where)
    return key, hist


def _snapshot_key(labels: Mapping[str, Any], where: str) -> LabelKey:
    """The label key of a snapshot series' labels (string values; ``name`` left out when empty, as
    :func:`_label_key` does). Label names seen before and plain str values, the usual case, are checked by set and
    type tests alone: the metrics actor does this for every series of every batch."""
    if not (_CHECKED_LABELS.issuperset(labels) and all(type(v) is str for v in labels.values())):
        for label, value in labels.items():
            if not isinstance(value, str):
                raise MetricError(f"{where}: label values must be strings")
            if label not in _CHECKED_LABELS:
                _check_label_name(label)
        labels = {label: str(value) for label, value in labels.items()}
    if labels.get("name") == "":
        return tuple(sorted(item for item in labels.items() if item[0] != "name"))
    return tuple(sorted(labels.items()))
