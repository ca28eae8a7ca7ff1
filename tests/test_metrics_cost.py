"""The cheaper metrics paths (issue 19: driver overhead) give the very figures of the paths they replace: merging a
manager directly is merging its snapshot, a snapshot's fast checks accept and refuse what the general ones did, and
the live batches (nodes' records, whose figures the actor derives) leave the actor with exactly the run's
record-derived figures. No Ray."""

from __future__ import annotations

import pickle
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
from odibi_ray.observe.metrics import MetricError, MetricKind, MetricsManager, MetricType, _parse_fraction
from odibi_ray.observe.run_metrics import MetricsActor, RowBatch, metrics_from_result


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


def _publisher(actor: MetricsActor, batches: list[RowBatch] | None = None, run_id: str = "r",
               pipeline: str = "p", **kw: Any) -> LivePublisher:
    """A publisher sending to ``actor`` as the runner does (pickled), keeping each batch in ``batches``."""
    def send(batch: RowBatch, status: dict[str, Any]) -> None:
        if batches is not None:
            batches.append(batch)
        actor.push_rows(pickle.dumps(batch, protocol=5), status)
    return LivePublisher(pipeline, run_id, send, **kw)


def test_the_actor_ends_exact_after_live_batches_and_a_node_changed_after_it_was_sent():
    records = _records(6)
    actor = MetricsActor()
    live = _publisher(actor)
    view = _View(records)
    view.changed = {"n0", "n1", "n2"}
    live.publish(view)
    assert actor.metrics.get_metric_value(MetricType.NODE_SUCCESS, "n1", pipeline="p", level="1") == 1
    records["n1"].status = NodeStatus.FAILED  # changed after it was sent: its newest row replaces the first
    live.finish(view, {"n1", "n3", "n4", "n5"}, dict(STATUS), {})
    final = metrics_from_result(_Result(records), view.inputs)  # type: ignore[arg-type]
    assert _figures(actor.metrics) == _figures(final)
    assert actor.metrics.get_metric_value(MetricType.NODE_SUCCESS, "n1", pipeline="p", level="1") == 0
    assert actor.metrics.get_metric_value(MetricType.NODES_DONE, "p", pipeline="p", level="1") == 1  # the gauges


def test_the_last_batch_adds_the_runs_counters_and_every_attempt_of_a_retried_node():
    records = _records(6)
    records["n4"].attempt_history.insert(0, AttemptRecord(1, 0.0, 0.1, 0.2, "w2", 2))  # a retried node
    actor = MetricsActor()
    batches: list[RowBatch] = []
    live = _publisher(actor, batches)
    view = _View(records)
    view.changed = {"n0", "n1", "n2"}
    live.publish(view)
    view.changed = {"n3", "n4", "n5"}  # closed since the last batch
    stats = {"cache_evictions": 2, "corrupt_objects": 1}
    live.finish(view, view.take_changed(), dict(STATUS), stats)
    result = _Result(records)
    result.stats = stats
    final = metrics_from_result(result, view.inputs)  # type: ignore[arg-type]
    assert [sorted(r.name for r in b.rows) for b in batches] == [["n0", "n1", "n2"], ["n3", "n4", "n5"]]
    assert _figures(actor.metrics) == _figures(final)
    assert actor.metrics.get_metric_value(MetricType.CACHE_EVICTION, "p", pipeline="p") == 2
    assert actor.metrics.get_metric_value(MetricType.NODE_ATTEMPT, "n4", pipeline="p", level="1", worker="w2") == 1


@pytest.mark.parametrize("late", ["n1", "m[0]"])
def test_a_node_or_item_changed_after_it_was_counted_closed_is_counted_again_exactly(late):
    records = _records(3)
    records["m"] = NodeRecord("m", 1, NodeStatus.SUCCEEDED, items=[])
    records["m[0]"] = NodeRecord("m[0]", 1, NodeStatus.SUCCEEDED, [AttemptRecord(1, 0.0, 0.1, 0.2, "w", 1)])
    records["m"].items = [records["m[0]"]]
    actor = MetricsActor()
    live = _publisher(actor)
    view = _View(records)
    live.publish(view)  # every one counted closed
    records[late].status = NodeStatus.FAILED  # then changed
    records[late].attempt_history.append(AttemptRecord(2, 0.3, 0.4, 0.9, "w3", 3))
    live.finish(view, {late}, dict(STATUS), {})
    nodes = {n: r for n, r in records.items() if n != "m[0]"}  # a run's nodes: the item is in its node's items
    final = metrics_from_result(_Result(nodes), view.inputs)  # type: ignore[arg-type]
    assert _figures(actor.metrics) == _figures(final)


def test_a_node_with_nothing_finished_is_sent_once_it_has_a_figure():
    records = _records(2)
    records["n1"] = NodeRecord("n1", 1, NodeStatus.RUNNING)  # submitted: no attempt finished, not closed
    actor = MetricsActor()
    batches: list[RowBatch] = []
    live = _publisher(actor, batches)
    view = _View(records)
    live.publish(view)
    assert [r.name for r in batches[0].rows] == ["n0"]  # thousands are in flight at each batch: not sent
    records["n1"] = _records(2)["n1"]
    live.finish(view, {"n1"}, dict(STATUS), {})
    assert [r.name for r in batches[1].rows] == ["n1"]
    assert _figures(actor.metrics) == _figures(metrics_from_result(_Result(records), view.inputs))  # type: ignore


def test_a_cached_node_sent_then_opened_again_is_sent_even_with_nothing_finished():
    records = {"c": NodeRecord("c", 0, NodeStatus.CACHED)}
    actor = MetricsActor()
    batches: list[RowBatch] = []
    live = _publisher(actor, batches)
    view = _View(records)
    live.publish(view)
    assert actor.metrics.get_metric_value(MetricType.CACHE_HIT, "c", pipeline="p", level="0", source="cached") == 1
    records["c"].status = NodeStatus.PENDING  # its stored output was unusable: it runs after all
    view.changed = {"c"}
    live.publish(view)
    assert actor.metrics.get_metric_value(MetricType.CACHE_HIT, "c", pipeline="p", level="0", source="cached") == 0


def test_two_drivers_of_one_run_id_count_their_own_rows():
    """A resumed run keeps its run id: the driver that resumes it must not replace the rows of the one before."""
    actor = MetricsActor()
    for _ in range(2):
        _publisher(actor, run_id="same").publish(_View(_records(1)))
    assert actor.metrics.get_metric_value(MetricType.NODE_SUCCESS, "n0", pipeline="p", level="0") == 2


def test_an_abandoned_run_sends_its_status_and_no_figures():
    actor = MetricsActor()
    live = _publisher(actor, run_id="r2")
    live.publish(_View(_records(2)))
    before = _figures(actor.metrics)
    live.abandon(dict(STATUS, finished=True, status="failed"))
    assert actor.run_status("r2")["status"] == "failed" and _figures(actor.metrics) == before


def test_a_row_unchanged_since_it_was_sent_is_not_sent_again():
    records = _records(2)
    actor = MetricsActor()
    batches: list[RowBatch] = []
    live = _publisher(actor, batches)
    view = _View(records)
    live.publish(view)
    view.changed = {"n0", "n1"}  # e.g. marked changed, but nothing its figures depend on moved
    live.publish(view)
    assert [len(b.rows) for b in batches] == [2, 0] and not batches[1].replaced


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


def test_the_last_batch_after_an_input_sent_closed_is_recomputed_sends_every_row():
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
    batches: list[RowBatch] = []
    live = _publisher(actor, batches, "r1", "exact", period_s=0.02)
    sched = Scheduler(dag, _LosingBackend("y"), run_id="r1", levels=dag.levels(), observer=live)
    result = sched.run()
    assert {n: r.status for n, r in result.nodes.items()} == dict.fromkeys("uxy", NodeStatus.SUCCEEDED)
    assert result.nodes["u"].attempts == 3  # failed, succeeded, recomputed after its output was lost
    assert live.batches >= 2
    # u was sent closed, then run again: its end moved, and x's queue wait (sent) counts from it: the last batch
    # looks at every node, and sends x again though x did not change (u went in an earlier batch)
    assert sched.reopened
    _finish_as_the_runner_does(sched, live, result, actor)
    assert "x" in {r.name for r in batches[-1].rows}


def _finish_as_the_runner_does(sched: Scheduler, live: LivePublisher, result: Any, actor: MetricsActor) -> None:
    """End the run's metrics as runner._publish_metrics does; check the actor then holds exactly the records'
    figures."""
    changed = sched.take_changed()
    sched.detach_observer()
    status = dict(sched.live_status(), finished=True, status="succeeded", duration_s=1.0)
    final = metrics_from_result(result, result.inputs)
    live.finish(sched, changed, status, result.stats)
    got, want = _figures(actor.metrics), _figures(final)
    diff = {(k, s): ((got.get(k) or {}).get(s), (want.get(k) or {}).get(s)) for k in set(got) | set(want)
            for s in set(got.get(k) or {}) | set(want.get(k) or {})
            if (got.get(k) or {}).get(s) != (want.get(k) or {}).get(s)}
    assert got == want, f"actor (got) vs records (want): {diff}"


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
    live = _publisher(actor, None, "r1", "exact2", period_s=0.9)
    sched = Scheduler(dag, _LosingBackend("y"), run_id="r1", levels=dag.levels(), observer=live)
    result = sched.run()
    assert {n: r.status for n, r in result.nodes.items()} == dict.fromkeys("uxy", NodeStatus.SUCCEEDED)
    assert result.nodes["u"].attempts == 2 and calls["u"] == 2
    assert live.batches >= 1 and sched.reopened
    _finish_as_the_runner_does(sched, live, result, actor)


# --- Ray's metrics endpoint ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["snapshot", "plain_values"])
def test_ray_export_sends_every_tag_also_for_a_series_with_other_labels(monkeypatch, path):
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
    if path == "snapshot":  # the seed's MetricsManager calls (MetricsActor.push)
        ray_export.RayExport().apply(m.snapshot())
    else:  # a run's live batches (MetricsActor.push_rows)
        ray_export.RayExport().apply_values(m.plain_values((MetricKind.COUNTER, MetricKind.GAUGE)))
    assert len(calls) == 3
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


def test_absorb_adds_as_merge_and_plain_values_are_the_public_values():
    """The metrics actor's live path: a batch's delta is absorbed (not copied) and mirrored from plain values."""
    def delta() -> MetricsManager:
        d = MetricsManager(signed=True)
        d.increment(MetricType.NODE_SUCCESS, "a", pipeline="p", level="0")
        d.increment(MetricType.BYTES_WRITTEN, "a", value=0.5, pipeline="p", level="0")  # a Fraction inside
        d.record(MetricType.EXECUTION_TIME, "a", value=0.1, pipeline="p", level="0")
        d.set_gauge(MetricType.NODES_RUNNING, "p", 3, pipeline="p")
        return d

    absorbed, merged = MetricsManager(), MetricsManager()
    for _ in range(2):
        absorbed.absorb(delta())
        merged.merge(delta())
    kinds = (MetricKind.COUNTER, MetricKind.HISTOGRAM)
    assert absorbed.snapshot(kinds=kinds) == merged.snapshot(kinds=kinds)
    assert absorbed.get_metric_value(MetricType.NODES_RUNNING, "p", pipeline="p") == 3
    values = {(m, dict(key).get("name")): v for m, key, v in absorbed.plain_values((MetricKind.COUNTER,
                                                                                     MetricKind.GAUGE))}
    assert values == {(MetricType.NODE_SUCCESS, "a"): 2, (MetricType.BYTES_WRITTEN, "a"): 1,
                      (MetricType.NODES_RUNNING, "p"): 3}
    assert all(type(v) in (int, float) for v in values.values())
    with pytest.raises(MetricError):
        absorbed.plain_values((MetricKind.HISTOGRAM,))
