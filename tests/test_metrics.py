"""The seed's MetricsManager face, in-process: counters, gauges, histograms, labels, exact merging of snapshots,
and the Prometheus text checked by prometheus_client's own parser (an independent reader of the format).

Everything here is real (no mocks): a real thread pool, a real CloudCacheManager over a real temp folder, a real
``rich`` Console writing into a buffer.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import random
import sys
import threading
from collections import Counter
from fractions import Fraction

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from odibi_ray.compat.cache_manager import CloudCacheManager
from odibi_ray.errors import OdibiError
from odibi_ray.observe.metrics import (
    BYTES_BUCKETS, SECONDS_BUCKETS, MetricError, MetricKind, MetricsCollector, MetricsManager, MetricType,
)
from odibi_ray.storage.local import LocalStorage

NASTY = 'say "hi"\\path\nline2'  # a double quote, a backslash and a newline: all three must be escaped


def parse(text: str) -> dict:
    """The exposition text read back by prometheus_client: {family name: family}; a repeated family fails."""
    families = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in families, f"family {family.name} appears twice"
        families[family.name] = family
    return families


def family_name(metric: MetricType) -> str:
    """The family name prometheus_client gives a metric (it drops a counter's ``_total`` suffix)."""
    name = metric.prometheus_name
    return name[: -len("_total")] if metric.kind is MetricKind.COUNTER else name


# --- the seed's usage ------------------------------------------------------------------------------------


def test_seed_usage_counts_hits_misses_and_execution_time():
    metrics = MetricsManager()
    metrics.increment(MetricType.CACHE_HIT, "my_cache")
    metrics.increment(MetricType.CACHE_HIT, "my_cache")
    metrics.increment(MetricType.CACHE_MISS, "my_cache")
    metrics.increment(MetricType.CACHE_HIT, "other")
    metrics.record(MetricType.EXECUTION_TIME, "node_transform", value=1.25)
    metrics.record(MetricType.EXECUTION_TIME, "node_transform", value=0.75)

    assert metrics.get_metric_value(MetricType.CACHE_HIT, "my_cache") == 2
    assert metrics.get_metric_value(MetricType.CACHE_MISS, "my_cache") == 1
    assert metrics.get_all_metrics(MetricType.CACHE_HIT) == {"my_cache": 2, "other": 1}
    assert metrics.hit_rate("my_cache") == pytest.approx(2 / 3)
    assert metrics.hit_rate("never_read") is None
    timing = metrics.get_metric_value(MetricType.EXECUTION_TIME, "node_transform")
    assert timing["count"] == 2 and timing["sum"] == 2.0
    assert timing["buckets"][1.0] == 1 and timing["buckets"][math.inf] == 2
    assert set(metrics.get_all_metrics()) == {"cache_hit", "cache_miss", "execution_time"}
    # a series never touched: a counter reads 0, a gauge None (0 would be a lie), a histogram empty
    assert metrics.get_metric_value(MetricType.NODE_FAILURE, "x") == 0
    assert metrics.get_metric_value(MetricType.NODES_RUNNING, "x") is None
    assert metrics.get_metric_value(MetricType.QUEUE_WAIT, "x")["count"] == 0


def test_plain_strings_name_the_cache_metrics():
    """The cache module calls ``metrics.increment("cache_hit", name)``: plain strings are the same series."""
    metrics = MetricsManager()
    for kind in ("cache_hit", "cache_miss", "cache_eviction", "cache_corruption"):
        metrics.increment(kind, "c")
        metrics.increment(MetricType(kind), "c")
        assert metrics.get_metric_value(kind, "c") == 2
    metrics.record("execution_time", "n", value=0.1)
    metrics.set_gauge("nodes_running", "", 4)
    assert metrics.get_metric_value(MetricType.EXECUTION_TIME, "n")["count"] == 1
    assert metrics.get_metric_value(MetricType.NODES_RUNNING) == 4


def test_every_metric_type_knows_its_kind_name_and_help():
    required = {"CACHE_HIT", "CACHE_MISS", "CACHE_EVICTION", "CACHE_CORRUPTION", "EXECUTION_TIME", "NODE_ATTEMPT",
                "NODE_RETRY", "NODE_SUCCESS", "NODE_FAILURE", "NODE_SKIP", "BYTES_READ", "BYTES_WRITTEN",
                "STORAGE_LATENCY", "QUEUE_WAIT"}
    assert required <= set(MetricType.__members__)
    assert MetricType.CACHE_HIT.prometheus_name == "odibi_ray_cache_hits_total"
    assert {m.kind for m in MetricType} == set(MetricKind)  # at least one gauge too
    for m in (MetricType.EXECUTION_TIME, MetricType.STORAGE_LATENCY, MetricType.QUEUE_WAIT):
        assert m.kind is MetricKind.HISTOGRAM and m.buckets == SECONDS_BUCKETS
    names = [m.prometheus_name for m in MetricType]
    assert len(set(names)) == len(names)
    for m in MetricType:
        assert isinstance(m, str) and m.help and m.prometheus_name.startswith("odibi_ray_")
        assert m.prometheus_name.endswith("_total") == (m.kind is MetricKind.COUNTER)
        assert (m.kind is MetricKind.HISTOGRAM) == bool(m.buckets)
        assert list(m.buckets) == sorted(set(m.buckets))
    assert BYTES_BUCKETS[0] == 1024 and BYTES_BUCKETS[-1] == 4 * 1024 ** 3


# --- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, error, message", [
    (lambda m: m.increment("cache_hits", "c"), MetricError, "unknown metric 'cache_hits'; known metrics: cache_hit"),
    (lambda m: m.increment(MetricType.EXECUTION_TIME, "n"), MetricError, "it is a histogram; use record()"),
    (lambda m: m.record(MetricType.CACHE_HIT, "c", value=1), MetricError, "it is a counter; use increment()"),
    (lambda m: m.set_gauge(MetricType.CACHE_HIT, "c", 1), MetricError, "it is a counter; use increment()"),
    (lambda m: m.increment(MetricType.CACHE_HIT, "c", -1), MetricError, "must be >= 0"),
    (lambda m: m.record(MetricType.QUEUE_WAIT, "n", value=-0.5), MetricError, "must be >= 0"),
    (lambda m: m.record(MetricType.QUEUE_WAIT, "n", value=float("nan")), MetricError, "must be finite"),
    (lambda m: m.set_gauge(MetricType.NODES_RUNNING, "n", float("inf")), MetricError, "must be finite"),
    (lambda m: m.record(MetricType.QUEUE_WAIT, "n"), TypeError, "needs a value"),
    (lambda m: m.increment(MetricType.CACHE_HIT, "c", True), TypeError, "must be an int or a float, got bool"),
    (lambda m: m.increment(MetricType.CACHE_HIT, "c", "1"), TypeError, "must be an int or a float, got str"),
    (lambda m: m.increment(MetricType.CACHE_HIT, 7), TypeError, "metric name must be a string, got int"),
    (lambda m: m.increment(42, "c"), TypeError, "metric must be a MetricType or a string, got int"),
    (lambda m: m.increment(MetricType.CACHE_HIT, "c", **{"bad-label": "x"}), MetricError, "invalid label name"),
    (lambda m: m.record(MetricType.QUEUE_WAIT, "n", value=1, le="1"), MetricError, "invalid label name 'le'"),
    (lambda m: m.increment(MetricType.CACHE_HIT, "c", __x="1"), MetricError, "not start with '__'"),
    (lambda m: m.increment(MetricType.CACHE_HIT, "c", node=["a"]), TypeError, "label 'node' must be a string"),
])
def test_bad_input_raises_a_precise_error(call, error, message):
    metrics = MetricsManager()
    with pytest.raises(error) as caught:
        call(metrics)
    assert message in str(caught.value)
    assert metrics.get_all_metrics() == {}  # nothing half-recorded
    if error is MetricError:
        assert isinstance(caught.value, (OdibiError, ValueError))


# --- labels ----------------------------------------------------------------------------------------------


def test_labels_are_kept_separate_and_escaped_in_the_exposition():
    metrics = MetricsManager()
    metrics.increment(MetricType.NODE_ATTEMPT, NASTY, pipeline="p", run="r1", node="n", level=2)
    metrics.increment(MetricType.NODE_ATTEMPT, NASTY, pipeline="p", run="r2", node="n", level=2)
    metrics.increment(MetricType.NODE_ATTEMPT, NASTY, pipeline="p", run="r2", node="n", level=2)
    metrics.record(MetricType.STORAGE_LATENCY, "blob", value=0.02, op=NASTY)

    assert metrics.get_metric_value(MetricType.NODE_ATTEMPT, NASTY, pipeline="p", run="r1", node="n", level=2) == 1
    assert metrics.get_metric_value(MetricType.NODE_ATTEMPT, NASTY, pipeline="p", run="r2", node="n", level="2") == 2
    assert metrics.get_metric_value(MetricType.NODE_ATTEMPT, NASTY, pipeline="p") == 0  # another label set

    text = metrics.export_prometheus()
    assert 'name="say \\"hi\\"\\\\path\\nline2"' in text  # escaped on the wire
    for line in text.splitlines():  # a raw newline inside a label would split a sample over two lines
        assert line.startswith(("# ", "odibi_ray_")), line
    families = parse(text)
    attempts = families[family_name(MetricType.NODE_ATTEMPT)].samples
    assert sorted((s.labels["run"], s.value) for s in attempts) == [("r1", 1), ("r2", 2)]
    for sample in attempts:
        assert sample.labels == {"name": NASTY, "pipeline": "p", "run": sample.labels["run"], "node": "n",
                                 "level": "2"}
    latency = families[family_name(MetricType.STORAGE_LATENCY)].samples
    assert {s.labels["op"] for s in latency} == {NASTY}
    assert all(s.labels["name"] == "blob" for s in latency)


def test_a_series_without_name_or_labels_has_no_label_braces():
    metrics = MetricsManager()
    metrics.set_gauge(MetricType.NODES_PENDING, "", 7)
    assert "odibi_ray_nodes_pending 7.0\n" in metrics.export_prometheus()  # prometheus_client writes floats
    assert metrics.get_all_metrics(MetricType.NODES_PENDING) == {"": 7}


# --- thread safety ---------------------------------------------------------------------------------------


def test_eight_threads_of_a_thousand_increments_count_exactly():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, so a lost update would show
    try:
        metrics = MetricsManager()
        start = threading.Barrier(8)

        def work(i: int) -> None:
            start.wait()
            for _ in range(1000):
                metrics.increment(MetricType.CACHE_HIT, "shared")
                metrics.increment(MetricType.BYTES_READ, "shared", 3, worker=i % 2)
                metrics.record(MetricType.QUEUE_WAIT, "shared", value=0.001)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert metrics.get_metric_value(MetricType.CACHE_HIT, "shared") == 8000
    assert metrics.get_metric_value(MetricType.BYTES_READ, "shared", worker=0) == 12000
    assert metrics.get_metric_value(MetricType.BYTES_READ, "shared", worker=1) == 12000
    wait = metrics.get_metric_value(MetricType.QUEUE_WAIT, "shared")
    assert wait["count"] == 8000 and wait["buckets"][0.001] == 8000
    assert wait["sum"] == math.fsum([0.001] * 8000)  # exact, not just close


# --- histograms ------------------------------------------------------------------------------------------


def test_histogram_buckets_are_cumulative_with_exact_count_and_sum():
    metrics = MetricsManager()
    values = [0.0, 0.0005, 0.0006, 0.5, 0.5, 0.7, 3.0, 3600.0, 3600.5, 99999.0]
    for v in values:
        metrics.record(MetricType.EXECUTION_TIME, "n", value=v)
    summary = metrics.get_metric_value(MetricType.EXECUTION_TIME, "n")
    assert summary["count"] == len(values)
    assert summary["sum"] == math.fsum(values)
    expected = {bound: sum(1 for v in values if v <= bound) for bound in (*SECONDS_BUCKETS, math.inf)}
    assert summary["buckets"] == expected  # upper bounds are inclusive (le), counts cumulative
    assert expected[0.0005] == 2 and expected[0.5] == 5 and expected[3600.0] == 8 and expected[math.inf] == 10

    samples = parse(metrics.export_prometheus())[MetricType.EXECUTION_TIME.prometheus_name].samples
    buckets = [(float(s.labels["le"]), s.value) for s in samples if s.name.endswith("_bucket")]
    assert buckets == list(expected.items())  # in order, + Inf last
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)
    by_name = {s.name: s.value for s in samples if not s.name.endswith("_bucket")}
    assert by_name == {"odibi_ray_node_duration_seconds_count": 10,
                       "odibi_ray_node_duration_seconds_sum": math.fsum(values)}


def test_byte_histogram_uses_byte_buckets():
    metrics = MetricsManager()
    metrics.record(MetricType.OUTPUT_SIZE, "n", value=1024)
    metrics.record(MetricType.OUTPUT_SIZE, "n", value=5 * 1024 ** 3)
    buckets = metrics.get_metric_value(MetricType.OUTPUT_SIZE, "n")["buckets"]
    assert buckets[1024.0] == 1 and buckets[4.0 * 1024 ** 3] == 1 and buckets[math.inf] == 2


def test_timer_records_the_block_even_when_it_raises():
    metrics = MetricsManager()
    with metrics.timer(MetricType.STORAGE_LATENCY, "blob", op="put"):
        pass
    with pytest.raises(ZeroDivisionError), metrics.timer(MetricType.STORAGE_LATENCY, "blob", op="put"):
        raise ZeroDivisionError("inside the timed block")
    summary = metrics.get_metric_value(MetricType.STORAGE_LATENCY, "blob", op="put")
    assert summary["count"] == 2 and 0 <= summary["sum"] < 5
    with pytest.raises(MetricError), metrics.timer(MetricType.CACHE_HIT, "c"):
        pass


def observe_values() -> list:
    """Values of many magnitudes (so many power-of-two denominators), ints, integral and tiny floats, -0.0, values
    on bucket bounds and past the last one, and an int subclass."""
    rng = random.Random(17)
    values: list = [0, -0.0, 0.0, 0.0005, 0.1, 0.2, 0.3, 3600.0, 3600.5, 7, 2 ** 70, 1e-300, 5e-324, 1e300,
                    Count(2)]
    values += [rng.random() * 10 ** rng.randint(-6, 4) for _ in range(500)]
    values += [float(rng.randint(0, 10 ** 6)) for _ in range(20)]
    rng.shuffle(values)
    return values


class Count(int):
    """An int subclass (not a bool): record() takes it, so observe_many must too."""


def test_observe_many_gives_the_figures_of_one_record_per_value():
    values = observe_values()
    one_by_one, at_once, in_parts = MetricsManager(), MetricsManager(), MetricsManager()
    for v in values:
        one_by_one.record(MetricType.EXECUTION_TIME, "n", value=v, pipeline="p", level=1)
    at_once.observe_many(MetricType.EXECUTION_TIME, "n", values, pipeline="p", level=1)
    for part in (values[:3], values[3:200], [], values[200:]):  # adds to a series that exists
        in_parts.observe_many("execution_time", "n", part, level="1", pipeline="p")
    assert at_once.snapshot() == one_by_one.snapshot()
    assert in_parts.snapshot() == one_by_one.snapshot()
    exact = sum((Fraction(v) for v in values), Fraction(0))
    assert at_once._series[MetricType.EXECUTION_TIME][(("level", "1"), ("name", "n"), ("pipeline", "p"))].total \
        == exact  # the exact rational sum, not a float's
    summary = at_once.get_metric_value(MetricType.EXECUTION_TIME, "n", pipeline="p", level=1)
    assert summary["count"] == len(values) and summary["sum"] == float(exact)
    assert summary["buckets"][3600.0] == sum(1 for v in values if v <= 3600.0) < len(values)
    # only floats with fractions, or only ints: the same as one by one too
    for only in ([0.1] * 1000, [3, 4, 0]):
        a, b = MetricsManager(), MetricsManager()
        a.observe_many(MetricType.QUEUE_WAIT, "q", only)
        for v in only:
            b.record(MetricType.QUEUE_WAIT, "q", value=v)
        assert a.snapshot() == b.snapshot()


def test_observe_many_of_nothing_adds_no_series_but_checks_its_labels():
    metrics = MetricsManager()
    metrics.observe_many(MetricType.QUEUE_WAIT, "n", [], pipeline="p")
    assert metrics.get_all_metrics() == {}
    with pytest.raises(MetricError, match="invalid label name 'le'"):
        metrics.observe_many(MetricType.QUEUE_WAIT, "n", [], le="1")


@pytest.mark.parametrize("call, error, message", [
    (lambda m: m.observe_many(MetricType.CACHE_HIT, "c", [1]), MetricError, "it is a counter; use increment()"),
    (lambda m: m.observe_many(MetricType.QUEUE_WAIT, "n", [0.1, -0.5]), MetricError, "must be >= 0"),
    (lambda m: m.observe_many(MetricType.QUEUE_WAIT, "n", [0.1, -1]), MetricError, "must be >= 0"),
    (lambda m: m.observe_many(MetricType.QUEUE_WAIT, "n", [0.1, float("nan")]), MetricError, "must be finite"),
    (lambda m: m.observe_many(MetricType.QUEUE_WAIT, "n", [float("inf")]), MetricError, "must be finite"),
    (lambda m: m.observe_many(MetricType.QUEUE_WAIT, "n", [1, True]), TypeError, "must be an int or a float"),
    (lambda m: m.observe_many(MetricType.QUEUE_WAIT, "n", [0.5, None]), TypeError, "got NoneType"),
    (lambda m: m.observe_many(MetricType.QUEUE_WAIT, "n", ["1"]), TypeError, "got str"),
    (lambda m: m.observe_many(MetricType.QUEUE_WAIT, 7, [1.0]), TypeError, "metric name must be a string"),
    (lambda m: m.observe_many(MetricType.QUEUE_WAIT, "n", [1.0], **{"bad-label": "x"}), MetricError,
     "invalid label name"),
    (lambda m: m.observe_many(MetricType.QUEUE_WAIT, "n", [1.0], __x="1"), MetricError, "not start with '__'"),
    (lambda m: m.observe_many(MetricType.QUEUE_WAIT, "n", [1.0], node=["a"]), TypeError,
     "label 'node' must be a string"),
])
def test_observe_many_refuses_what_record_refuses_and_adds_nothing(call, error, message):
    metrics = MetricsManager()
    metrics.record(MetricType.QUEUE_WAIT, "n", value=0.25)
    before = metrics.snapshot()
    with pytest.raises(error) as caught:
        call(metrics)
    assert message in str(caught.value)
    assert metrics.snapshot() == before  # the good values before the bad one were not added either


# --- snapshots and merging -------------------------------------------------------------------------------

EVENTS = [
    ("increment", MetricType.CACHE_HIT, "c", 1, {}),
    ("increment", MetricType.CACHE_MISS, "c", 1, {}),
    ("increment", MetricType.BYTES_WRITTEN, "s", 4096, {"node": "a"}),
    ("record", MetricType.EXECUTION_TIME, "a", 0.1, {"pipeline": "p"}),
    ("increment", MetricType.CACHE_HIT, "c", 1, {}),
    ("record", MetricType.EXECUTION_TIME, "a", 0.2, {"pipeline": "p"}),
    ("increment", MetricType.NODE_ATTEMPT, "a", 1, {"run": "r"}),
    ("record", MetricType.EXECUTION_TIME, "a", 0.3, {"pipeline": "p"}),
    ("increment", MetricType.BYTES_WRITTEN, "s", 1, {"node": "a"}),
    ("increment", MetricType.NODE_RETRY, "a", 0.5, {"run": "r"}),   # a float counter
    ("record", MetricType.QUEUE_WAIT, "a", 7.0, {}),
    ("increment", MetricType.NODE_RETRY, "a", 0.25, {"run": "r"}),
]


def apply(manager: MetricsManager, events) -> MetricsManager:
    for method, metric, name, value, labels in events:
        getattr(manager, method)(metric, name, value=value, **labels)
    return manager


def test_merging_two_snapshots_equals_one_manager_that_saw_everything():
    whole = apply(MetricsManager(), EVENTS)
    for split in range(len(EVENTS) + 1):
        first = apply(MetricsManager(), EVENTS[:split]).snapshot()
        second = apply(MetricsManager(), EVENTS[split:]).snapshot()
        merged = MetricsManager.from_snapshot(first)
        merged.merge(second)
        assert merged.snapshot() == whole.snapshot(), split
        reversed_order = MetricsManager.from_snapshot(second)
        reversed_order.merge(first)
        assert reversed_order.export_prometheus() == whole.export_prometheus(), split
    # float sums are exact: naive left-to-right addition would give 0.6000000000000001 for 0.1 + 0.2 + 0.3
    assert (0.1 + 0.2) + 0.3 != 0.1 + (0.2 + 0.3)
    assert whole.get_metric_value(MetricType.EXECUTION_TIME, "a", pipeline="p")["sum"] == math.fsum([0.1, 0.2, 0.3])
    assert whole.get_metric_value(MetricType.NODE_RETRY, "a", run="r") == 0.75


def test_snapshot_is_plain_json_and_export_json_reads_back_exactly():
    whole = apply(MetricsManager(), EVENTS)
    snap = whole.snapshot()
    assert json.loads(json.dumps(snap)) == snap  # plain data only
    again = MetricsManager.from_snapshot(json.loads(whole.export_json()))
    assert again.snapshot() == snap
    assert pickle.loads(pickle.dumps(whole)).snapshot() == snap  # picklable (e.g. inside a CloudCacheManager)
    series = snap["metrics"]["execution_time"]["series"][0]
    assert series["labels"] == {"name": "a", "pipeline": "p"} and series["count"] == 3
    assert len(series["bucket_counts"]) == len(SECONDS_BUCKETS) + 1


def test_gauges_merge_by_latest_write_whatever_the_order():
    def gauge_snapshot(value, set_at):
        return {"format": "odibi-metrics/1", "metrics": {"nodes_running": {
            "kind": "gauge", "series": [{"labels": {"name": "pool"}, "value": value, "set_at": set_at}]}}}

    early, late = gauge_snapshot(5, 100.0), gauge_snapshot(2, 200.0)
    for order in ((early, late), (late, early)):
        manager = MetricsManager()
        for snap in order:
            manager.merge(snap)
        assert manager.get_metric_value(MetricType.NODES_RUNNING, "pool") == 2
    live = MetricsManager()
    live.set_gauge(MetricType.NODES_RUNNING, "pool", 9)  # set now, so later than both
    live.merge(late)
    assert live.get_metric_value(MetricType.NODES_RUNNING, "pool") == 9


def good_snapshot() -> dict:
    return apply(MetricsManager(), EVENTS).snapshot()


@pytest.mark.parametrize("spoil, message", [
    (lambda s: s.update(format="other/9"), "not a metrics snapshot"),
    (lambda s: s["metrics"].update(no_such_metric={}), "unknown metric 'no_such_metric'"),
    (lambda s: s["metrics"]["cache_hit"].update(kind="gauge"), "expected 'counter'"),
    (lambda s: s["metrics"]["execution_time"].update(buckets=[1, 2, 3]), "cannot be merged exactly"),
    (lambda s: s["metrics"]["execution_time"]["series"][0].update(bucket_counts=[1]), "bucket_counts must be"),
    (lambda s: s["metrics"]["execution_time"]["series"][0].update(count=999), "not the sum of bucket_counts"),
    (lambda s: s["metrics"]["cache_hit"]["series"][0].update(value=-3), "is negative"),
    (lambda s: s["metrics"]["cache_hit"]["series"][0].update(value="3"), "must be a finite number"),
    (lambda s: s["metrics"]["node_retry"]["series"][0].update(value_exact="x/y"), "is not a fraction"),
    (lambda s: s["metrics"]["cache_hit"]["series"][0].update(labels={"le": "1"}), "invalid label name 'le'"),
])
def test_a_bad_snapshot_is_refused_whole(spoil, message):
    manager = apply(MetricsManager(), EVENTS[:3])
    before = manager.snapshot()
    bad = good_snapshot()
    spoil(bad)
    with pytest.raises(MetricError) as caught:
        manager.merge(bad)
    assert message in str(caught.value)
    assert manager.snapshot() == before  # the families checked before the bad one were not applied either


def test_reset_forgets_everything():
    manager = apply(MetricsManager(), EVENTS)
    manager.reset()
    assert manager.get_all_metrics() == {} and manager.export_prometheus() == ""
    assert manager.get_metric_value(MetricType.CACHE_HIT, "c") == 0


# --- Prometheus text, read back by prometheus_client ------------------------------------------------------


def test_prometheus_text_parses_back_to_the_same_values():
    manager = apply(MetricsManager(), EVENTS)
    manager.set_gauge(MetricType.NODES_RUNNING, "pool", 3, node=NASTY)
    manager.increment(MetricType.BYTES_READ, "", 10)  # no labels at all
    text = manager.export_prometheus()
    families = parse(text)

    with_data = [m for m in MetricType if manager.get_all_metrics(m)]
    assert sorted(families) == sorted(family_name(m) for m in with_data)  # one family per metric
    help_lines = Counter(line.split()[2] for line in text.splitlines() if line.startswith("# HELP "))
    type_lines = Counter(line.split()[2] for line in text.splitlines() if line.startswith("# TYPE "))
    assert help_lines == type_lines == Counter(m.prometheus_name for m in with_data)  # once each
    for m in with_data:
        family = families[family_name(m)]
        assert family.type == m.kind.value and family.documentation == m.help
        for sample in family.samples:
            labels = dict(sample.labels)
            le = labels.pop("le", None)
            name = labels.pop("name", "")
            if m.kind is MetricKind.HISTOGRAM:
                summary = manager.get_metric_value(m, name, **labels)
                if sample.name.endswith("_bucket"):
                    assert sample.value == summary["buckets"][float(le)]
                elif sample.name.endswith("_count"):
                    assert sample.value == summary["count"]
                else:
                    assert sample.name.endswith("_sum") and sample.value == summary["sum"]
            else:
                assert le is None and sample.value == manager.get_metric_value(m, name, **labels)
    assert families["odibi_ray_nodes_running"].samples[0].labels == {"name": "pool", "node": NASTY}
    assert families["odibi_ray_bytes_read"].samples[0].labels == {}


# --- the prometheus_client collector ----------------------------------------------------------------------

HUGE = 2 ** 53 + 1  # the first int a float64 cannot hold


def every_kind() -> MetricsManager:
    """A manager with every metric kind: label values with quotes, backslashes and newlines, a huge int
    counter, a fractional counter, a negative gauge and histograms of both bucket sets."""
    manager = apply(MetricsManager(), EVENTS)
    manager.increment(MetricType.CACHE_HIT, "huge", HUGE, node=NASTY)
    manager.increment(MetricType.BYTES_READ, "", 12345678)  # no labels at all
    manager.set_gauge(MetricType.NODES_RUNNING, "pool", -2.5, node=NASTY)
    manager.set_gauge(MetricType.NODES_PENDING, NASTY, 7)
    for value in (0.1, 0.2, 3600.5):
        manager.record(MetricType.STORAGE_LATENCY, "blob", value=value, op=NASTY)
    manager.record(MetricType.OUTPUT_SIZE, NASTY, value=5 * 1024 ** 3)
    return manager


def test_the_collector_in_a_fresh_registry_yields_the_figures_of_get_all_metrics(monkeypatch):
    monkeypatch.setattr(MetricType.CACHE_MISS, "help", 'Help with a \\ backslash, a "quote" and a\nnewline.')
    manager = every_kind()
    registry = CollectorRegistry()
    registry.register(manager.collector())
    families = {f.name: f for f in registry.collect()}
    with_data = [m for m in MetricType if manager.get_all_metrics(m)]
    assert list(families) == [family_name(m) for m in with_data]  # one family per metric, in MetricType order
    assert {m.kind for m in with_data} == set(MetricKind)
    for m in with_data:
        family = families[family_name(m)]
        assert family.type == m.kind.value and family.documentation == m.help
        expected = manager.get_all_metrics(m)
        seen = set()
        for sample in family.samples:
            labels = dict(sample.labels)
            le = labels.pop("le", None)
            name = labels.pop("name", "")
            series = manager.get_metric_value(m, name, **labels)
            seen.add((name, tuple(sorted(labels.items()))))
            if m.kind is MetricKind.HISTOGRAM:
                suffix = sample.name[len(m.prometheus_name):]
                figure = series["buckets"][float(le)] if suffix == "_bucket" else series[suffix[1:]]
                assert suffix in ("_bucket", "_sum", "_count")
            else:
                assert sample.name == m.prometheus_name and le is None  # counters keep their _total
                figure = series
            assert sample.value == figure and type(sample.value) is type(figure), (m, sample)
        assert len(seen) == len(expected)  # every series, none twice
    huge = [s for s in families["odibi_ray_cache_hits"].samples if s.labels.get("name") == "huge"]
    assert [(s.value, s.labels["node"]) for s in huge] == [(HUGE, NASTY)]  # exact int, raw label value
    assert isinstance(MetricsCollector(manager).collect().__next__().samples[0].value, int)


def test_export_prometheus_is_generate_latest_of_the_collector_on_a_private_registry():
    manager = every_kind()
    registry = CollectorRegistry()
    registry.register(manager.collector())
    text = manager.export_prometheus()
    assert text == generate_latest(registry).decode()
    assert "odibi_ray" not in generate_latest(REGISTRY).decode()  # the global registry is left alone
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    expected = set()
    for m in MetricType:
        if manager.get_all_metrics(m):
            base = m.prometheus_name
            expected |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"} if m.kind is MetricKind.HISTOGRAM else {base}
    assert names == expected  # sample names exactly as before: odibi_ray_cache_hits_total, ..._bucket
    assert "# TYPE odibi_ray_cache_hits_total counter\n" in text
    assert 'le="4294967296.0"' in text and 'le="+Inf"' in text  # the le values as always (not 4.294967296e+09)
    assert 'node="say \\"hi\\"\\\\path\\nline2"' in text
    # the text holds floats: an int above 2**53 is written as its nearest float64, the value any reader
    # of the exposition (Prometheus included) would have read from the exact digits
    huge = [s for s in parse(text)["odibi_ray_cache_hits"].samples if s.labels.get("name") == "huge"]
    assert [s.value for s in huge] == [float(HUGE)] and float(HUGE) != HUGE
    assert "odibi_ray_bytes_read_total 1.2345678e+07\n" in text


def test_a_value_beyond_the_float_range_is_exported_as_inf():
    manager = MetricsManager()
    manager.increment(MetricType.CACHE_HIT, "c", 10 ** 400)
    manager.set_gauge(MetricType.NODES_RUNNING, "g", -(10 ** 400))
    assert manager.get_metric_value(MetricType.CACHE_HIT, "c") == 10 ** 400  # still exact in the manager
    text = manager.export_prometheus()
    assert 'odibi_ray_cache_hits_total{name="c"} +Inf\n' in text
    assert 'odibi_ray_nodes_running{name="g"} -Inf\n' in text


def test_an_empty_manager_exports_nothing_and_the_collector_yields_nothing():
    manager = MetricsManager()
    assert manager.export_prometheus() == ""
    assert list(manager.collector().collect()) == []
    assert "MetricsCollector(MetricsManager(0 series))" == repr(manager.collector())


# --- the rich summary -------------------------------------------------------------------------------------


def test_print_summary_writes_a_rich_table_to_the_given_console_only(capsys):
    manager = apply(MetricsManager(), EVENTS)
    buffer = io.StringIO()
    table = manager.print_summary(Console(file=buffer, width=160, color_system=None))
    out = buffer.getvalue()
    assert table.row_count == len([1 for series in manager.get_all_metrics().values() for _ in series]) + 1
    for word in ("cache_hit", "execution_time", "count 3", "cache_hit_rate", "66.7%", "bytes_written", "4097"):
        assert word in out, word
    assert capsys.readouterr() == ("", "")  # nothing printed behind the console's back
    empty = io.StringIO()
    MetricsManager().print_summary(Console(file=empty, width=120, color_system=None))
    assert "no metrics recorded" in empty.getvalue()


# --- with the real cache ----------------------------------------------------------------------------------


class FakeClock:
    """Seconds since the epoch that move only when the test says so (a TTL test without sleeping); picklable."""

    def __init__(self) -> None:
        self.now = 1_760_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_real_cache_reports_into_a_metrics_manager(tmp_path):
    clock = FakeClock()
    metrics = MetricsManager()
    cache = CloudCacheManager(LocalStorage(tmp_path / "store"), "cache/", metrics=metrics, clock=clock)
    assert cache.get("k") is None           # miss
    cache.put("k", {"v": 1})
    assert cache.get("k") == {"v": 1}        # hit
    cache.put("short", 2, ttl_s=1)
    clock.now += 5
    assert cache.get("short") is None        # eviction and miss
    assert metrics.get_all_metrics() == {"cache_hit": {"cache/": 1}, "cache_miss": {"cache/": 2},
                                         "cache_eviction": {"cache/": 1}}
    assert metrics.hit_rate("cache/") == pytest.approx(1 / 3)
    copy = pickle.loads(pickle.dumps(cache))  # a cache holding a manager still pickles
    assert copy.metrics.get_metric_value("cache_hit", "cache/") == 1
