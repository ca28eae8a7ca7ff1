"""Live metrics as rows (observe/live.py): once a run's last batch is in, the metrics actor's figures (gauges left
out, zero series ignored) are exactly ``metrics_from_result(result, result.inputs)``, with many runs open at once, a
driver killed mid-run, sends that fail (the last one too), retries, mapped items and an item's output lost and made
again; rows carry only what figures need; and a Ray run with every kind of task argument (a large function by
object-store ref, mapped items, a consumer of a mapped node, a fused chain, worker-keyed nodes) ends exact. Most tests
came from a review of the change (the first four failed on the first version, which kept rows in the actor).
"""

from __future__ import annotations

import logging
import pickle
import time
import uuid
from typing import Any

import pytest

from odibi_ray import DAG, Node, RetryPolicy, run
from odibi_ray.execution.attempt import TAIL_CHARS
from odibi_ray.execution.backends.local import LocalBackend
from odibi_ray.execution.result import AttemptRecord, ErrorInfo, NodeRecord, NodeStatus
from odibi_ray.execution.scheduler import Scheduler
from odibi_ray.observe.live import LivePublisher
from odibi_ray.observe.metrics import MetricsManager
from odibi_ray.observe.run_metrics import MetricsActor, RowBatch, actor_metrics, metrics_from_result

from .test_metrics_cost import _LosingBackend, _View, _figures, _records


# --- helpers ---------------------------------------------------------------------------------------------------

class _Result:
    def __init__(self, records: dict[str, NodeRecord], stats: dict[str, int] | None = None) -> None:
        self.pipeline, self.stats = "p", stats or {}
        self.nodes = {n: r for n, r in records.items() if "[" not in n}  # items live in their node's record


STATUS = {"counts": {}, "levels": [], "slowest": []}


def _publisher(actor: MetricsActor, run_id: str = "r", pipeline: str = "p", fail: Any = None,
               sizes: list[int] | None = None, **kw: Any) -> LivePublisher:
    """A publisher sending to ``actor`` as the runner does (pickled); ``fail(batch)`` True: that send raises;
    ``sizes``: each batch's pickled size."""
    def send(batch: RowBatch, status: dict[str, Any]) -> None:
        if fail is not None and fail(batch):
            raise ConnectionError("the metrics actor is not reachable right now")
        pickled = pickle.dumps(batch, protocol=5)
        if sizes is not None:
            sizes.append(len(pickled))
        actor.push_rows(pickled, status)
    return LivePublisher(pipeline, run_id, send, **kw)


def _diff(got: dict[str, Any], want: dict[str, Any]) -> dict[Any, Any]:
    return {(k, s): ((got.get(k) or {}).get(s), (want.get(k) or {}).get(s)) for k in set(got) | set(want)
            for s in set(got.get(k) or {}) | set(want.get(k) or {})
            if (got.get(k) or {}).get(s) != (want.get(k) or {}).get(s)}


def _assert_exact(actor_figures: MetricsManager, want: MetricsManager) -> None:
    got, exp = _figures(actor_figures), _figures(want)
    assert got == exp, f"actor (got) vs records (want): {_diff(got, exp)}"


def _retrying() -> dict[str, NodeRecord]:
    """One node whose first attempt failed and which waits to retry (status RUNNING: still open)."""
    err = ErrorInfo("builtins.ValueError", "boom", "Traceback ...", mro=("builtins.ValueError",))
    return {"n": NodeRecord("n", 0, NodeStatus.RUNNING, [AttemptRecord(1, 0.0, 0.1, 0.2, "w1", 1, err)])}


def _retried_and_done(records: dict[str, NodeRecord]) -> None:
    records["n"].attempt_history.append(AttemptRecord(2, 0.3, 0.4, 0.6, "w1", 1))
    records["n"].status = NodeStatus.SUCCEEDED


# --- many runs at once, and a driver killed mid-run ------------------------------------------------------------

def test_a_long_run_ends_exact_while_many_other_runs_send_batches():
    """The actor keeps nothing per run (the driver sends the rows it replaces), so other runs' batches in between,
    however many, cannot make it forget what a run sent (the first version kept 64 runs' rows, then dropped the
    oldest: a run still going was counted twice)."""
    actor = MetricsActor()
    records = _retrying()
    live = _publisher(actor, run_id="long")
    view = _View(records)
    live.publish(view)  # n: attempt 1 failed, waiting to retry
    for i in range(100):  # other drivers' runs, each sending one batch meanwhile
        _publisher(actor, run_id=f"other{i}", pipeline="q").publish(_View({}))
    _retried_and_done(records)
    live.finish(view, {"n"}, dict(STATUS), {})
    _assert_exact(actor.metrics, metrics_from_result(_Result(records), view.inputs))  # type: ignore[arg-type]
    assert set(vars(actor)) == {"metrics", "runs", "export", "_next_freeze"}  # nothing per run but its status


def test_a_run_resumed_after_its_driver_was_killed_adds_its_own_attempts():
    """A driver killed mid-run never sends its last batch: what it sent stays counted (those attempts ran). The
    driver that resumes the run (same run id) counts its own attempts on top, exactly."""
    actor = MetricsActor()
    dead = _publisher(actor, run_id="same")
    dead_records = _retrying()
    dead.publish(_View(dead_records))  # ... and the driver is killed
    resumed = _publisher(actor, run_id="same")
    records = _retrying()
    _retried_and_done(records)
    view = _View(records)
    resumed.publish(view)
    resumed.finish(view, set(), dict(STATUS, finished=True), {})
    want = metrics_from_result(_Result(dead_records), {"n": []})  # type: ignore[arg-type]
    want.merge(metrics_from_result(_Result(records), view.inputs))  # type: ignore[arg-type]
    _assert_exact(actor.metrics, want)


# --- rows hold what figures need: no output tails, tracebacks, or a mapped node's items ---------------------------

def test_rows_hold_only_what_figures_need():
    """A node's figures need a few numbers per attempt; its record also holds each attempt's output tail (up to
    64 KB), traceback and pickled exception. The first version sent (and kept) whole records: ~13 MB for 200 nodes
    that print."""
    err = ErrorInfo("builtins.ValueError", "boom", "Traceback (most recent call last):\n" + "  File x\n" * 200,
                    mro=("builtins.ValueError",), exception_bytes=b"\x80" * 4096)
    records: dict[str, NodeRecord] = {}
    for i in range(200):
        att = AttemptRecord(1, 0.0, 0.1, 0.2, "w1", 1, err, output_tail="x" * TAIL_CHARS)
        records[f"n{i}"] = NodeRecord(f"n{i}", 0, NodeStatus.RUNNING, [att])  # failed once, waiting to retry
    actor = MetricsActor()
    sizes: list[int] = []
    live = _publisher(actor, sizes=sizes)
    live.publish(_View(records))
    kept = len(pickle.dumps(live._sent, protocol=5))
    assert sizes[0] < 200 * 1024 and kept < 200 * 1024, f"batch {sizes[0]} bytes, kept {kept} bytes for 200 nodes"


def test_a_mapped_nodes_row_does_not_carry_its_items():
    """When a mapped node closes, its record holds every item record; its items went as rows of their own (the first
    version sent all of them again in the node's row)."""
    items = [NodeRecord(f"m[{i}]", 1, NodeStatus.SUCCEEDED, [AttemptRecord(1, 0.0, 0.1, 0.2, "w", 1)])
             for i in range(500)]
    records = {"m": NodeRecord("m", 1, NodeStatus.RUNNING, items=items), **{i.name: i for i in items}}
    actor = MetricsActor()
    batches: list[int] = []
    live = LivePublisher("p", "r", lambda b, s: (batches.append(len(pickle.dumps(b, protocol=5))),
                                                 actor.push_rows(pickle.dumps(b, protocol=5), s)))
    view = _View(records)
    view.changed = {i.name for i in items}  # the items closed: one row each
    live.publish(view)
    records["m"].status = NodeStatus.SUCCEEDED  # then the mapped node closes: one row, its own
    view.changed = {"m"}
    live.publish(view)
    assert live._sent["m"].mapped and batches[1] < 2000, f"the mapped node's batch was {batches[1]} bytes"
    _assert_exact(actor.metrics, metrics_from_result(_Result(records), view.inputs))  # type: ignore[arg-type]


# --- a last batch whose send fails is tried again -----------------------------------------------------------------

def test_a_last_batch_whose_send_failed_once_still_reaches_the_actor():
    """An earlier batch that could not be sent goes with the next one; the last one has no next: it is tried again
    (the first version dropped it with a warning, leaving the actor partial for good)."""
    actor = MetricsActor()
    failed = []

    def fail_last_once(batch: RowBatch) -> bool:
        if _last(batch) and not failed:
            failed.append(1)
            return True
        return False

    records = _retrying()
    live = _publisher(actor, fail=fail_last_once)
    view = _View(records)
    live.publish(view)
    _retried_and_done(records)
    live.finish(view, {"n"}, dict(STATUS, finished=True), {})
    _assert_exact(actor.metrics, metrics_from_result(_Result(records), view.inputs))  # type: ignore[arg-type]
    assert failed and live.batches == 2


def test_a_last_batch_that_never_goes_is_logged_as_an_error(caplog):
    actor = MetricsActor()
    live = _publisher(actor, fail=_last)
    view = _View(_retrying())
    live.publish(view)
    with caplog.at_level(logging.ERROR):
        live.finish(view, {"n"}, dict(STATUS, finished=True), {})
    assert "its figures for the run are partial" in caplog.text and live.batches == 1


def _last(batch: RowBatch) -> bool:
    """A run's last batch (the only one with the run's counters)."""
    return batch.counters is not None


# --- checked, fine: the real Scheduler, a batch on every pass of its loop ------------------------------------------

def _finish_as_the_runner_does(sched: Scheduler, live: LivePublisher, result: Any, actor: MetricsActor) -> None:
    changed = sched.take_changed()
    sched.detach_observer()
    status = dict(sched.live_status(), finished=True, status=result.status.value, duration_s=1.0)
    live.finish(sched, changed, status, result.stats)
    _assert_exact(actor.metrics, metrics_from_result(result, result.inputs))


def _every_other_send_fails(batch: RowBatch, _n: list[int] = [0]) -> bool:  # noqa: B006 - a counter
    _n[0] += 1
    return not _last(batch) and _n[0] % 2 == 0


@pytest.mark.parametrize("fail", [None, _every_other_send_fails], ids=["sent", "every-other-send-fails"])
def test_retried_items_and_an_items_lost_output_end_exact_with_a_batch_every_pass(fail, caplog):
    caplog.set_level(logging.ERROR)
    tries: dict[int, int] = {}

    def source():
        return list(range(5))

    def item(x):
        tries[x] = tries.get(x, 0) + 1
        time.sleep(0.01 * x)
        if x % 2 and tries[x] == 1:
            raise ValueError("first try fails")
        return x

    def slow(m):
        time.sleep(0.05)
        return sum(m)

    dag = DAG("p")
    dag.add_node(Node("s", source))
    dag.add_node(Node("m", item, map_over="s", retry=RetryPolicy(max_attempts=3, delay_s=0.01)))
    dag.add_node(Node("c", lambda m: sum(m), inputs={"m": "m"}))
    dag.add_node(Node("y", slow, inputs={"m": "m"}))  # reports an item's output lost once: the item runs again
    actor = MetricsActor()
    live = _publisher(actor, fail=fail, period_s=0.0)
    sched = Scheduler(dag, _LosingBackend("y"), run_id="r", levels=dag.levels(), observer=live)
    result = sched.run()
    assert result.succeeded and sched.reopened and live.batches > 10
    _finish_as_the_runner_does(sched, live, result, actor)


def test_fail_fast_with_a_batch_every_pass_ends_exact(caplog):
    caplog.set_level(logging.ERROR)

    def bad():
        time.sleep(0.05)
        raise ValueError("x")

    def slow():
        time.sleep(0.3)
        return 1

    dag = DAG("p")
    dag.add_node(Node("a", bad))
    dag.add_node(Node("b", slow))
    dag.add_node(Node("c", lambda b: b, inputs={"b": "b"}))
    actor = MetricsActor()
    live = _publisher(actor, period_s=0.0)
    sched = Scheduler(dag, LocalBackend(max_workers=4), run_id="r", levels=dag.levels(), observer=live,
                      fail_fast=True)
    result = sched.run()
    assert result.nodes["b"].status is NodeStatus.CANCELLED and result.nodes["b"].attempts == 1
    _finish_as_the_runner_does(sched, live, result, actor)


# --- checked, fine: Ray task arguments (19185a9) and the actor's figures of a real Ray run -------------------------

_BIG = bytes(range(256)) * 512  # 128 KB: a function closing over it travels by object-store ref


def _source():
    return [1, 2, 3]


def _double(x):
    return 2 * x


def _add_one(x):
    return x + 1


def test_a_ray_run_with_every_kind_of_task_argument_ends_exact_at_the_actor(ray_local, tmp_path):
    flag = tmp_path / "failed-once"
    big = _BIG

    def large(xs):  # its pickle is > INLINE_FN_BYTES: in the object store, its ref last among the arguments
        return sum(xs) + len(big) * 0

    def flaky(x):
        if not flag.exists():
            flag.write_text("1")
            raise ValueError("first attempt fails")
        return x

    dag = DAG("review_rows")
    dag.add_node(Node("s", _source))
    dag.add_node(Node("m", _double, map_over="s"))  # items: a call tuple with the item
    dag.add_node(Node("big", large, inputs={"xs": "m"}))  # a consumer of a mapped node: a call tuple with groups
    dag.add_node(Node("f1", flaky, inputs={"x": "big"}, retry=RetryPolicy(max_attempts=2, delay_s=0.0)))
    dag.add_node(Node("f2", _add_one, inputs={"x": "f1"}))  # f1 -> f2 -> f3: a fused chain
    dag.add_node(Node("f3", _add_one, inputs={"x": "f2"}))
    ns = f"review_{uuid.uuid4().hex[:8]}"
    result = run(dag, storage=str(tmp_path / "store"), fuse=True, progress=False, metrics_namespace=ns)
    result.raise_for_status()
    assert result["m"] == [2, 4, 6] and result["big"] == 12 and result["f3"] == 14
    assert result.nodes["f1"].attempts == 2
    _assert_exact(actor_metrics(ns), metrics_from_result(result, result.inputs))
    # and again, every node cached or keyed in its worker
    again = run(dag, storage=str(tmp_path / "store"), fuse=True, progress=False, metrics_namespace=ns + "b")
    assert again["f3"] == 14
    _assert_exact(actor_metrics(ns + "b"), metrics_from_result(again, again.inputs))


# --- checked, fine: DAG levels and topological order (19185a9) give what the per-node reads gave ------------------

@pytest.mark.parametrize("seed", range(5))
def test_levels_and_order_put_every_node_after_its_inputs(seed):
    import random

    rng = random.Random(seed)
    dag = DAG("shape")
    names: list[str] = []
    for i in range(60):
        name = f"n{rng.randrange(10**6)}_{i}"  # insertion order is not level order
        ups = rng.sample(names, k=min(len(names), rng.randrange(4)))
        if ups and rng.random() < 0.3:
            ups.append(ups[0])  # one input read by two parameters
        dag.add_node(Node(name, lambda **kw: None, inputs={f"p{j}": u for j, u in enumerate(ups)}))
        names.append(name)
    order = dag.topological_order()
    assert sorted(order) == sorted(names)
    position = {n: i for i, n in enumerate(order)}
    assert all(position[u] < position[n] for n in names for u in dag.nodes[n].upstream)
    level: dict[str, int] = {}
    for n in order:
        level[n] = 1 + max((level[u] for u in dag.nodes[n].upstream), default=-1)
    want = [[n for n in dag.nodes if level[n] == k] for k in range(1 + max(level.values()))]
    assert dag.levels() == want  # each level in insertion order


# --- the actor's process keeps its series out of the collector's walks ------------------------------------------------

def test_the_actor_freezes_what_it_keeps_only_in_its_own_process():
    import gc

    rows = _View(_records(3))
    plain = MetricsActor()  # as a test or a reader makes one: this process's objects must not be frozen
    _publisher(plain).publish(rows)
    assert gc.get_freeze_count() == 0
    actor = MetricsActor(freeze=True)  # as metrics_actor() makes the Ray actor
    try:
        _publisher(actor).publish(_View(_records(3)))
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()

