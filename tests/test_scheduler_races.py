"""Scheduler orderings that real Ray cannot be made to produce on demand (which completion lands in
which batch), driven through the real Scheduler by a scripted backend.

This is a stand-in, said plainly: the backend below runs no code; it answers "done / failed how" from
a script. Everything it exercises is also run on real Ray elsewhere (tests/test_cluster.py loses an
object with its node); here only the batch orders vary.
"""

from __future__ import annotations

import itertools
import logging
import time

import pytest

from odibi_ray import DAG, Node, NodeStatus
from odibi_ray.execution.attempt import NO_IO, AttemptMeta, error_info
from odibi_ray.errors import SystemFailureError
from odibi_ray.execution.scheduler import Scheduler


class Handle:
    ids = itertools.count()

    def __init__(self, name, attempt):
        self.name, self.attempt, self.id = name, attempt, next(Handle.ids)


class ScriptedBackend:
    """``script(backend, handle)`` -> None (still running) or (node_id, error kind or None)."""

    name = "scripted"
    worker_timeouts = True

    def __init__(self, script, speculative=True):
        self.script, self.speculative = script, speculative
        self.tick, self.alive, self.submitted = 0, {"N1", "N2"}, []

    def prepare(self, nodes, targets=None):
        pass

    def submit(self, node, ctx, inputs):
        h = Handle(node.name, ctx.attempt)
        self.submitted.append(h)
        return h

    def wait(self, handles, timeout, all_of=False):
        self.tick += 1
        assert self.tick < 200, "no progress"
        return [h for h in handles if self.script(self, h) is not None]

    def outcomes(self, handles):
        out = []
        for h in handles:
            node_id, kind = self.script(self, h)
            err = None if kind is None else error_info(SystemFailureError(kind, "scripted"), kind=kind)
            now = time.time()
            out.append(AttemptMeta(now, now, node_id, 1, err, NO_IO))
        return out

    def started(self, handle):
        return None

    def cancel(self, handle):
        pass

    def forget(self, handle):
        pass

    def fetch_many(self, handles):
        return [f"value of {h.name}#{h.attempt}" for h in handles]

    def alive_nodes(self):
        return set(self.alive)

    def close(self):
        pass


def lost_object_dag():
    dag = DAG("lost")
    dag.add_node(Node("big", lambda: 1))
    dag.add_node(Node("gate", lambda: 1))
    dag.add_node(Node("s1", lambda big: big, inputs=["big"]))  # a second consumer of big, done early
    dag.add_node(Node("use", lambda big, gate: 1, inputs=["big", "gate"]))
    dag.add_node(Node("t", lambda s1, gate: 1, inputs=["s1", "gate"]))
    return dag


def lost_object_script(t_tick):
    """big#1 ran on N1; `use` finds big's object lost (N1 died) at tick 4; t finishes at ``t_tick``."""
    first_use = []

    def script(be, h):
        if h.name == "big":
            return ("N1", None) if h.attempt == 1 else ("N2", None)
        if h.name == "s1":
            return ("N2", None)
        if h.name in ("gate", "t"):
            return ("N2", None) if be.tick >= (3 if h.name == "gate" else t_tick) else None
        if h.name == "use":
            if be.tick < 4:
                return None
            if not first_use:
                first_use.append(h)
            if h is first_use[0]:
                be.alive.discard("N1")
                return ("N2", "object_lost")
            return ("N2", None)
        raise AssertionError(h.name)

    return script


@pytest.mark.parametrize("speculative, barrier, t_tick", [
    (True, False, 3),  # t finished before use's object_lost arrives
    (True, False, 4),  # t finishes in the same batch
    (False, True, 4),  # level-barrier mode
])
def test_lost_object_recomputes_its_producer_and_keeps_finished_consumers(speculative, barrier, t_tick, caplog):
    dag = lost_object_dag()
    backend = ScriptedBackend(lost_object_script(t_tick), speculative=speculative)
    with caplog.at_level(logging.WARNING):
        result = Scheduler(dag, backend, run_id="r", levels=dag.levels(), barrier=barrier).run()
    assert {n: (r.status, r.attempts) for n, r in result.nodes.items()} == {
        "big": (NodeStatus.SUCCEEDED, 2), "gate": (NodeStatus.SUCCEEDED, 1), "s1": (NodeStatus.SUCCEEDED, 1),
        "use": (NodeStatus.SUCCEEDED, 1), "t": (NodeStatus.SUCCEEDED, 1)}
    assert result["s1"] == "value of s1#1" and result["t"] == "value of t#1"  # kept, not recomputed
    names = [h.name for h in backend.submitted]
    assert names.count("use") == 2  # its first submission was discarded (and not counted as an attempt)
    assert names.count("s1") == 1 and names.count("t") == 1
    assert "output of node 'big' was lost" in caplog.text


def test_consumer_completing_before_its_failed_input_is_seen_is_discarded():
    """Speculative mode: `child` reports (an error propagated from its input) in an earlier batch than
    the input's own failure. It must not be charged an attempt, and must run again after the retry."""
    dag = DAG("order")
    from odibi_ray import RetryPolicy

    dag.add_node(Node("src", lambda: 1, retry=RetryPolicy(max_attempts=2, delay_s=0)))
    dag.add_node(Node("child", lambda x: x, inputs={"x": "src"}))

    def script(be, h):
        if h.name == "child" and h.attempt == 1 and be.tick == 1:
            return ("N1", "worker_died")  # what Ray reports for a task whose input's worker died
        if h.name == "src" and h.attempt == 1:
            return ("N1", "worker_died") if be.tick >= 2 else None
        return ("N2", None)

    backend = ScriptedBackend(script)
    result = Scheduler(dag, backend, run_id="r", levels=dag.levels()).run()
    assert result.nodes["src"].attempts == 2 and result.nodes["src"].status is NodeStatus.SUCCEEDED
    assert result.nodes["child"].attempts == 1 and result.nodes["child"].status is NodeStatus.SUCCEEDED
    assert result["child"] == "value of child#1"
