"""odibi_ray's counters and gauges published through ``ray.util.metrics``, so that the Prometheus endpoint every
Ray node serves on its metrics export port (the one Ray's Grafana dashboards scrape) shows them next to Ray's own.

The metrics actor applies every batch it merges (:class:`RayExport.apply`), so Ray's endpoint follows the actor.
Ray names them ``ray_<odibi_ray name>`` (counters end in ``_total``) and adds its own labels (node address,
session, worker id). What Ray's endpoint does not carry, said plainly: histograms (node durations, queue wait,
storage latency, output sizes: ``ray.util.metrics.Histogram`` takes single observations and a run's batch holds
bucket counts, so they would be approximations; the exact ones are in the actor and ``odibi-ray metrics``), and
the rare negative correction of a counter (a node counted as succeeded whose output was then lost and whose
recomputation failed: Ray's counters only go up; the actor's figures stay exact).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from .metrics import LabelKey, MetricKind, MetricType, metric_type
from .run_metrics import RUN_LABELS

log = logging.getLogger(__name__)

#: Every label a series may carry (``name`` is the node, or the cache's name for the seed's MetricsManager calls);
#: a series without one of them sends it as "" (Ray needs every declared tag).
TAG_KEYS = tuple(dict.fromkeys(("name", *RUN_LABELS)))
_TAG_SET = frozenset(TAG_KEYS)
_NO_TAGS = dict.fromkeys(TAG_KEYS, "")


class RayExport:
    """Mirrors merged metric batches into ``ray.util.metrics`` counters and gauges (made on first use)."""

    def __init__(self) -> None:
        self._metrics: dict[MetricType, Any] = {}
        self.skipped_corrections = 0

    def apply(self, snapshot: Mapping[str, Any]) -> None:
        """Add one batch (a metrics snapshot, maybe a signed delta) to Ray's series; never raises."""
        try:
            for metric_name, family in (snapshot.get("metrics") or {}).items():
                m = metric_type(metric_name)
                if m.kind is MetricKind.HISTOGRAM:
                    continue
                for series in family.get("series") or ():
                    self._apply_series(m, series.get("labels", {}), float(series.get("value", 0)))
        except Exception as exc:  # noqa: BLE001 - exporting must never fail the actor's merge
            log.warning("could not publish metrics through ray.util.metrics: %s", exc)

    def apply_values(self, values: Iterable[tuple[MetricType, LabelKey, float]]) -> None:
        """Add one batch given as its counters' and gauges' plain values (``MetricsManager.plain_values``: the
        metrics actor's live batches, without encoding a snapshot first); never raises."""
        try:
            for m, key, value in values:
                self._apply_series(m, dict(key), value)
        except Exception as exc:  # noqa: BLE001 - exporting must never fail the actor's merge
            log.warning("could not publish metrics through ray.util.metrics: %s", exc)

    def _apply_series(self, m: MetricType, labels: Mapping[str, Any], value: float) -> None:
        if _TAG_SET.issuperset(labels):  # the usual case, made in C: every tag, "" for those the series lacks
            labels = {**_NO_TAGS, **labels}
        else:
            labels = {key: str(labels.get(key, "")) for key in TAG_KEYS}
        metric = self._metric(m)
        if m.kind is MetricKind.GAUGE:
            metric.set(value, tags=labels)
        elif value > 0:
            metric.inc(value, tags=labels)
        elif value < 0:
            self.skipped_corrections += 1

    def _metric(self, m: MetricType) -> Any:
        metric = self._metrics.get(m)
        if metric is None:
            from ray.util.metrics import Counter, Gauge

            if m.kind is MetricKind.COUNTER:  # Ray appends _total to a counter's name itself
                metric = Counter(m.prometheus_name.removesuffix("_total"), description=m.help, tag_keys=TAG_KEYS)
            else:
                metric = Gauge(m.prometheus_name, description=m.help, tag_keys=TAG_KEYS)
            self._metrics[m] = metric
        return metric
