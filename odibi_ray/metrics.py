"""The seed's import path ``odibi_core.metrics`` (see :mod:`odibi_ray.compat`); the metrics themselves live in
:mod:`odibi_ray.observe.metrics`."""

from .observe.metrics import MetricError, MetricKind, MetricsManager, MetricType

__all__ = ["MetricError", "MetricKind", "MetricType", "MetricsManager"]
