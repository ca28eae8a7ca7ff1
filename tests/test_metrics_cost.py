"""The cheaper metrics paths (issue 19: driver overhead) give the very figures of the paths they replace: merging a
manager directly is merging its snapshot, a snapshot's fast checks accept and refuse what the general ones did, and
a run's last batch made from its snapshot is ``final - nothing`` plus the gauges. No Ray."""

from __future__ import annotations

import time
from fractions import Fraction
from typing import Any

import pytest

from odibi_ray import DAG, Node, RetryPolicy
from odibi_ray.execution.attempt import NO_IO, AttemptMeta
from odibi_ray.execution.backends.local import LocalBackend
from odibi_ray.execution.result import AttemptRecord, ErrorInfo, ErrorKind, NodeRecord, NodeStatus
from odibi_ray.execution.scheduler import Scheduler
from odibi_ray.observe import ray_export
from odibi_ray.observe.live import LivePublisher
from odibi_ray.observe.metrics import MetricError, MetricsManager, MetricType, _parse_fraction
from odibi_ray.observe.run_metrics import MetricsActor, metrics_from_result


def mixed(signed: bool = False) -> MetricsManager:
    """A manager with every kind: int and fractional counters, histograms with exact sums, gauges, labels."""
    m = MetricsManager(signed=signed)
    m.increment(MetricType.NODE_ATTEMPT, "a", pipeline="p", level="0", worker="w1")
    m.increment(MetricType.BYTES_READ, "a", value=0.5, pipeline="p")  # a Fraction
    m.observe_many(MetricType.EXECUTION_TIME, "a", [0.1, 0.2, 3.0], pipeline="p", level=0)
    m.record(MetricType.QUEUE_WAIT, "", value=1e-7)
    m.set_gauge(MetricType.NODES_RUNNING, "p", 3, pipeline="p")
    return m


def test_merging_a_manager_is_merging_its_snapshot():
    base, other = mixed(), mixed()  # other's gauge is the newer write
    for delta in (other, other.difference(None), MetricsManager().difference(other), other.difference(base)):
        direct, via = MetricsManager.from_snapshot(base.snapshot()), MetricsManager.from_snapshot(base.snapshot())
        direct.merge(delta)
        via.merge(delta.snapshot())
        assert direct.snapshot() == via.snapshot()
    taken_back = MetricsManager.from_snapshot(base.snapshot())
    taken_back.merge(MetricsManager().difference(base))  # negative counts and sums: every figure back to zero
    assert all(v == 0 or (isinstance(v, dict) and v["count"] == 0 and v["sum"] == 0)
               for k, series in taken_back.get_all_metrics().items() if k != "nodes_running" for v in series.values())


def test_merging_a_manager_keeps_nothing_of_it_shared():
    source, target = mixed(), MetricsManager()
    target.merge(source)
    source.observe_many(MetricType.EXECUTION_TIME, "a", [9.0], pipeline="p", level="0")
    assert target.get_metric_value(MetricType.EXECUTION_TIME, "a", pipeline="p", level="0")["count"] == 3


def test_a_difference_with_itself_is_gauges_only_and_empty_says_so():
    m = mixed()
    assert m.difference(m).get_all_metrics() == {"nodes_running": {'p{pipeline="p"}': 3}}
    assert MetricsManager().empty() and not m.empty() and not m.difference(m).empty()


@pytest.mark.parametrize("text", ["3/4", "-3/4", "6/8", "0/5", "3", " 3/4", "+3/4", "1_0/3"])
def test_fractions_parse_as_fraction_does(text):
    assert _parse_fraction(text) == Fraction(text)


@pytest.mark.parametrize("text, error", [("1/0", ZeroDivisionError), ("3/-4", ValueError), ("-/3", ValueError),
                                         ("²/3", ValueError), ("x/y", ValueError)])
def test_bad_fractions_are_refused_as_fraction_refuses_them(text, error):
    with pytest.raises(error):
        _parse_fraction(text)


def _counter_snapshot(labels: dict[str, Any], value: Any = 1, **extra: Any) -> dict[str, Any]:
    return {"format": "odibi-metrics/1",
            "metrics": {"cache_hit": {"kind": "counter", "series": [{"labels": labels, "value": value, **extra}]}}}


def test_an_empty_name_label_is_left_out_and_label_order_does_not_matter():
    m = MetricsManager()
    m.merge(_counter_snapshot({"name": "", "pipeline": "p"}))
    m.merge(_counter_snapshot({"pipeline": "p"}))
    m.merge(_counter_snapshot({"pipeline": "p", "name": "n"}))
    m.merge(_counter_snapshot({"name": "n", "pipeline": "p"}))
    assert m.get_metric_value(MetricType.CACHE_HIT, "", pipeline="p") == 2
    assert m.get_metric_value(MetricType.CACHE_HIT, "n", pipeline="p") == 2


@pytest.mark.parametrize("labels, message", [({"pipeline": 3}, "label values must be strings"),
                                             ({"name": None}, "label values must be strings"),
                                             ({"__x": "1"}, "invalid label name"),
                                             ({"9x": "1"}, "invalid label name")])
def test_bad_labels_are_refused(labels, message):
    with pytest.raises(MetricError, match=message):
        MetricsManager().merge(_counter_snapshot(labels))


def test_counts_of_an_int_subclass_are_read_and_bools_refused():
    class Count(int):
        pass

    series = {"labels": {}, "count": 1, "sum": 0.5, "bucket_counts": [Count(0)] * 21 + [Count(1)]}
    snap = {"format": "odibi-metrics/1", "metrics": {"execution_time": {
        "kind": "histogram", "buckets": list(MetricType.EXECUTION_TIME.buckets), "series": [series]}}}
    m = MetricsManager()
    m.merge(snap)
    assert m.get_metric_value(MetricType.EXECUTION_TIME)["count"] == 1
    series["bucket_counts"] = [False] * 21 + [True]
    with pytest.raises(MetricError, match="bucket_counts must be"):
        m.merge(snap)
    with pytest.raises(MetricError, match="is negative"):
        m.merge(_counter_snapshot({}, value=-1))
    with pytest.raises(MetricError, match="must be a finite number"):
        m.merge(_counter_snapshot({}, value=True))
    m.merge(_counter_snapshot({}, value=0.75, value_exact="3/4"))
    assert m.get_metric_value(MetricType.CACHE_HIT) == 0.75


# --- a run's last batch --------------------------------------------------------------------------------------


class _View:
    def __init__(self, records: dict[str, NodeRecord]) -> None:
        self.records, self.changed = records, set(records)
        self.inputs = {n: [] for n in records}
        self.reopened = 0

    def take_changed(self) -> set[str]:
        changed, self.changed = self.changed, set()
        return changed

    def live_status(self) -> dict[str, Any]:
        return {"counts": {}, "levels": [], "slowest": []}


class _Result:
    def __init__(self, records: dict[str, NodeRecord]) -> None:
        self.pipeline, self.nodes, self.stats = "p", records, {}


def _records(n: int) -> dict[str, NodeRecord]:
    return {f"n{i}": NodeRecord(f"n{i}", i % 3, NodeStatus.SUCCEEDED,
                                [AttemptRecord(1, 0.0, 0.01 * i, 0.01 * i + 0.3, "w", 1)]) for i in range(n)}


def _without_set_at(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A snapshot with its gauges' write times left out (they are the clock's)."""
    out = dict(snapshot, metrics=dict(snapshot["metrics"]))
    for name, family in out["metrics"].items():
        if family["kind"] == "gauge":
            out["metrics"][name] = dict(family, series=[{k: v for k, v in s.items() if k != "set_at"}
                                                        for s in family["series"]])
    return out


STATUS = {"counts": {"running": 0}, "levels": [[2, 2], [1, 1]], "slowest": []}


def test_a_run_that_sent_no_batch_sends_its_snapshot_with_the_gauges_the_same_batch_as_before():
    records = _records(5)
    final = metrics_from_result(_Result(records), {n: [] for n in records})  # type: ignore[arg-type]
    batches: list[dict[str, Any]] = []
    LivePublisher("p", "r", lambda s, st: batches.append(s)).finish(final, dict(STATUS), final.snapshot())
    # what finish sent before it reused the snapshot: a snapshot of final - nothing, with the gauges set on it
    before = final.difference(MetricsManager(signed=True))
    LivePublisher("p", "r", lambda s, st: None)._gauges(before, STATUS)
    assert _without_set_at(batches[0]) == _without_set_at(before.snapshot())
    assert list(batches[0]["metrics"]) == list(before.snapshot()["metrics"])  # families in the same order


def test_the_last_batch_after_live_batches_ends_the_actor_exact():
    records = _records(6)
    actor = MetricsActor()
    live = LivePublisher("p", "r", lambda s, st: actor.push(s, st))
    live.publish(_View({n: r for n, r in records.items() if n in ("n0", "n1", "n2")}))
    records["n1"].status = NodeStatus.FAILED  # changed after it was sent: the end corrects it
    final = metrics_from_result(_Result(records), {n: [] for n in records})  # type: ignore[arg-type]
    live.finish(final, dict(STATUS), final.snapshot())
    assert _figures(actor.metrics) == _figures(final)
    assert actor.metrics.get_metric_value(MetricType.NODES_DONE, "p", pipeline="p", level="1") == 1


def test_the_exact_last_batch_is_final_minus_sent_without_the_final_figures():
    records = _records(6)
    records["n4"].attempt_history.insert(0, AttemptRecord(1, 0.0, 0.1, 0.2, "w2", 2))  # a retried node
    actor = MetricsActor()
    batches: list[dict[str, Any]] = []
    live = LivePublisher("p", "r", lambda s, st: (batches.append(s), actor.push(s, st)))
    view = _View(records)
    view.changed = {"n0", "n1", "n2"}
    live.publish(view)
    view.changed = {"n3", "n4", "n5"}  # closed since the last batch
    stats = {"cache_evictions": 2, "corrupt_objects": 1}
    assert live.finish_exact(view, view.take_changed(), dict(STATUS), stats)
    result = _Result(records)
    result.stats = stats
    final = metrics_from_result(result, view.inputs)  # type: ignore[arg-type]
    assert len(batches) == 2 and _figures(actor.metrics) == _figures(final)
    assert actor.metrics.get_metric_value(MetricType.CACHE_EVICTION, "p", pipeline="p") == 2
    assert actor.metrics.get_metric_value(MetricType.NODES_DONE, "p", pipeline="p", level="1") == 1


@pytest.mark.parametrize("late", ["n1", "m[0]"])
def test_a_node_or_item_changed_after_it_was_counted_closed_takes_the_difference_path(late):
    records = _records(3)
    records["m[0]"] = NodeRecord("m[0]", 1, NodeStatus.SUCCEEDED, [AttemptRecord(1, 0.0, 0.1, 0.2, "w", 1)])
    actor = MetricsActor()
    batches: list[dict[str, Any]] = []
    live = LivePublisher("p", "r", lambda s, st: (batches.append(s), actor.push(s, st)))
    view = _View(records)
    live.publish(view)  # every one counted closed
    records[late].status = NodeStatus.FAILED  # then changed: only the final figures say how
    view.changed = {late}
    assert not live.finish_exact(view, view.take_changed(), dict(STATUS), {})
    assert len(batches) == 1  # nothing sent: the caller sends final - sent


def test_sent_is_the_sum_of_every_batch_also_past_the_batches_kept_apart(monkeypatch):
    from odibi_ray.observe import live as live_module

    monkeypatch.setattr(live_module, "SENT_KEPT", 3)
    records = _records(8)
    live = LivePublisher("p", "r", lambda s, st: None)
    view = _View(records)
    for name in records:  # one batch per node: 8 batches, summed every time more than 3 are kept apart
        view.changed = {name}
        live.publish(view)
        assert len(live._sent) <= 4
    final = metrics_from_result(_Result(records), view.inputs)  # type: ignore[arg-type]
    assert _figures(live.sent) == _figures(final)


def test_nodes_counted_together_give_the_figures_of_each_counted_alone():
    from odibi_ray.observe.run_metrics import add_node_metrics, add_nodes_metrics

    records = _records(6)
    records["n1"].attempt_history.insert(0, AttemptRecord(1, 0.0, 0.1, 0.2, "w2", 2))  # retried
    records["n2"].status = NodeStatus.FAILED
    records["n3"] = NodeRecord("n3", 1, NodeStatus.CACHED, unchanged_inputs=("n0",))
    records["n4"] = NodeRecord("n4", 2, NodeStatus.SKIPPED)
    records["n5"].attempt_history[0].bytes_written, records["n5"].attempt_history[0].storage_s = 7, 0.25
    inputs = {n: ["n0"] if n != "n0" else [] for n in records}
    alone, together = MetricsManager(), MetricsManager()
    for rec in records.values():
        add_node_metrics(alone, "p", rec, records, inputs, True)
    add_nodes_metrics(together, "p", records.values(), records, inputs, True)
    assert together.snapshot() == alone.snapshot()
    assert together.get_metric_value(MetricType.EARLY_CUTOFF, "n3", pipeline="p", level="1") == 1


def test_a_snapshot_with_a_zero_series_takes_the_difference_path():
    final = MetricsManager()
    final.increment(MetricType.BYTES_READ, "a", value=0, pipeline="p")
    final.increment(MetricType.NODE_SUCCESS, "a", pipeline="p")
    batches: list[dict[str, Any]] = []
    LivePublisher("p", "r", lambda s, st: batches.append(s)).finish(final, dict(STATUS), final.snapshot())
    assert "bytes_read" not in batches[0]["metrics"]  # as difference() leaves it out
    assert batches[0]["metrics"]["node_success"]["series"][0]["value"] == 1


def _figures(m: MetricsManager) -> dict[str, Any]:
    return {k: {s: v for s, v in series.items() if v != 0 and not (isinstance(v, dict) and v["count"] == 0)}
            for k, series in m.get_all_metrics().items() if MetricType(k).kind.value != "gauge"}


# --- a run's last batch, on the real scheduler --------------------------------------------------------------


class _LosingBackend(LocalBackend):
    """Reports the first attempt of node ``victim`` as OBJECT_LOST (its input's machine died), once."""

    def __init__(self, victim):
        super().__init__(max_workers=4)
        self.victim, self.names, self.lost_once, self.dead = victim, {}, False, False

    def submit(self, node, ctx, inputs, item=None, key=None):
        fut = super().submit(node, ctx, inputs, item)
        self.names[fut] = node.name
        return fut

    def outcomes(self, handles):
        out = super().outcomes(handles)
        for i, h in enumerate(handles):
            if self.names.get(h) == self.victim and not self.lost_once:
                self.lost_once = self.dead = True
                err = ErrorInfo("ray.exceptions.ObjectLostError", "lost", "", kind=ErrorKind.OBJECT_LOST)
                out[i] = AttemptMeta(None, time.time(), None, None, err, NO_IO)
        return out

    def alive_nodes(self):
        if self.dead:
            self.dead = False
            return set()  # the machine that held u's output is gone
        return {"local"}


def test_the_last_batch_after_an_input_sent_closed_is_recomputed_is_final_minus_sent():
    """Found in review: the real Scheduler on a local backend that loses u's output once (its machine died)."""
    calls = {"u": 0}

    def u():
        calls["u"] += 1
        if calls["u"] == 1:
            raise RuntimeError("first call fails")
        return 1

    def slow(a):
        time.sleep(0.6)
        return a

    dag = DAG("exact")
    dag.add_node(Node("u", u, retry=RetryPolicy(max_attempts=3, delay_s=0.3, backoff=1.0)))
    dag.add_node(Node("x", lambda a: a, inputs={"a": "u"}))
    dag.add_node(Node("y", slow, inputs={"a": "u"}))
    actor = MetricsActor()
    live = LivePublisher("exact", "r1", lambda snap, status: actor.push(snap, status), period_s=0.02)
    sched = Scheduler(dag, _LosingBackend("y"), run_id="r1", levels=dag.levels(), observer=live)
    result = sched.run()
    assert {n: r.status for n, r in result.nodes.items()} == dict.fromkeys("uxy", NodeStatus.SUCCEEDED)
    assert result.nodes["u"].attempts == 3  # failed, succeeded, recomputed after its output was lost
    assert live.batches >= 2
    # u was sent closed, then run again: its end moved, and x's queue wait (sent) counts from it: only the final
    # figures are exact, so the last batch is final - sent
    assert not _finish_as_the_runner_does(sched, live, result, actor)


def _finish_as_the_runner_does(sched: Scheduler, live: LivePublisher, result: Any, actor: MetricsActor) -> bool:
    """End the run's metrics as runner._publish_metrics does; check the actor then holds exactly the records'
    figures. True when the exact last batch was used (not final - sent)."""
    changed = sched.take_changed()
    sched.detach_observer()
    status = dict(sched.live_status(), finished=True, status="succeeded", duration_s=1.0)
    final = metrics_from_result(result, result.inputs)
    exact = live.finish_exact(sched, changed, status, result.stats)
    if not exact:
        live.finish(final, status, final.snapshot())
    got, want = _figures(actor.metrics), _figures(final)
    diff = {(k, s): ((got.get(k) or {}).get(s), (want.get(k) or {}).get(s)) for k in set(got) | set(want)
            for s in set(got.get(k) or {}) | set(want.get(k) or {})
            if (got.get(k) or {}).get(s) != (want.get(k) or {}).get(s)}
    assert got == want, f"actor (got) vs records (want): {diff}"
    return exact


def test_a_consumer_sent_closed_while_its_input_was_reopened_gets_exact_final_figures():
    """Found in the second review: x is sent closed while u, closed before, is open again (its output lost); when
    u closes again its end moves, and so does x's queue wait: the last batch must be final - sent."""
    calls = {"u": 0}

    def u():
        calls["u"] += 1
        if calls["u"] == 2:  # recomputed after its output was lost: open while the first batch goes
            time.sleep(1.5)
        return 1

    def slow(a):
        time.sleep(0.3)
        return a

    dag = DAG("exact2")
    dag.add_node(Node("u", u))
    dag.add_node(Node("x", lambda a: a, inputs={"a": "u"}))  # closes at once, before u is reopened
    dag.add_node(Node("y", slow, inputs={"a": "u"}))  # its attempt reports u's output lost: u runs again
    actor = MetricsActor()
    live = LivePublisher("exact2", "r1", lambda snap, status: actor.push(snap, status), period_s=0.9)
    sched = Scheduler(dag, _LosingBackend("y"), run_id="r1", levels=dag.levels(), observer=live)
    result = sched.run()
    assert {n: r.status for n, r in result.nodes.items()} == dict.fromkeys("uxy", NodeStatus.SUCCEEDED)
    assert result.nodes["u"].attempts == 2 and calls["u"] == 2
    assert live.batches >= 1
    assert not _finish_as_the_runner_does(sched, live, result, actor)


# --- Ray's metrics endpoint ----------------------------------------------------------------------------------


def test_ray_export_sends_every_tag_also_for_a_series_with_other_labels(monkeypatch):
    calls: list[tuple[str, float, dict[str, str]]] = []

    class Fake:
        def __init__(self, name: str, **_: Any) -> None:
            self.name = name

        def inc(self, value: float, tags: dict[str, str]) -> None:
            calls.append((self.name, value, tags))

        def set(self, value: float, tags: dict[str, str]) -> None:
            calls.append((self.name, value, tags))

    import ray.util.metrics

    monkeypatch.setattr(ray.util.metrics, "Counter", Fake)
    monkeypatch.setattr(ray.util.metrics, "Gauge", Fake)
    m = MetricsManager()
    m.increment(MetricType.NODE_SUCCESS, "a", pipeline="p", level="0")
    m.increment(MetricType.CACHE_HIT, "c", cache_dir="/x")  # a label Ray's series do not have: left out
    m.set_gauge(MetricType.NODES_RUNNING, "p", 2, pipeline="p")
    ray_export.RayExport().apply(m.snapshot())
    assert all(set(tags) == set(ray_export.TAG_KEYS) for _, _, tags in calls)
    by_name = {name: (value, tags) for name, value, tags in calls}
    assert by_name["odibi_ray_node_successes"] == (1.0, {**dict.fromkeys(ray_export.TAG_KEYS, ""), "name": "a",
                                                          "pipeline": "p", "level": "0"})
    assert by_name["odibi_ray_cache_hits"][1] == {**dict.fromkeys(ray_export.TAG_KEYS, ""), "name": "c"}
    assert by_name["odibi_ray_nodes_running"][0] == 2.0


# --- a run's series keyed without the general checks ---------------------------------------------------------


@pytest.mark.parametrize("series", [
    (MetricType.NODE_ATTEMPT, "n", "0", ("worker", "w1")), (MetricType.NODE_SKIP, "n", "2", ("reason", "skipped")),
    (MetricType.CACHE_HIT, "n", "1", ("source", "cached")), (MetricType.MAP_ITEM, "n", "1", ("status", "failed")),
    (MetricType.NODE_SUCCESS, "n", "0", None), (MetricType.NODE_SUCCESS, "", "0", None),
    (MetricType.NODE_SUCCESS, "n", 3, None), (MetricType.NODE_ATTEMPT, "n", "0", ("worker", 7)),
])
def test_a_runs_series_key_is_label_key(series):
    from odibi_ray.observe.metrics import label_key
    from odibi_ray.observe.run_metrics import _labels, _series_key

    assert _series_key("pipe", series) == label_key(series[1], **_labels("pipe", series))


def test_add_keyed_adds_as_increment_and_observe_many_and_refuses_whole():
    from odibi_ray.observe.metrics import label_key

    key = label_key("a", pipeline="p")
    keyed, plain = MetricsManager(), MetricsManager()
    for _ in range(2):
        keyed.add_keyed({(MetricType.NODE_SUCCESS, key): 2}, {(MetricType.EXECUTION_TIME, key): [0.1, 0.3, 7.0]})
        plain.increment(MetricType.NODE_SUCCESS, "a", value=2, pipeline="p")
        plain.observe_many(MetricType.EXECUTION_TIME, "a", [0.1, 0.3, 7.0], pipeline="p")
    assert keyed.snapshot() == plain.snapshot()
    for counts, values in (({(MetricType.NODE_SUCCESS, key): -1}, {}), ({(MetricType.NODE_SUCCESS, key): 1.5}, {}),
                           ({(MetricType.EXECUTION_TIME, key): 1}, {}),
                           ({(MetricType.NODE_SUCCESS, key): 1}, {(MetricType.NODE_SUCCESS, key): [1.0]}),
                           ({(MetricType.NODE_SUCCESS, key): 1}, {(MetricType.EXECUTION_TIME, key): [-1.0]})):
        with pytest.raises(MetricError):
            keyed.add_keyed(counts, values)  # type: ignore[arg-type]
    assert keyed.snapshot() == plain.snapshot()  # nothing of a refused call was added
