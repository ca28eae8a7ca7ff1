"""Fusion (execution/fusion.py): a chain of nodes, each the only consumer of the one before, runs as one Ray task
(``run(fuse=True)`` or ``Node(fuse=True)``), and every node keeps what makes it a node: its record (attempts, start
and end, worker, error), its output, its retry policy, its timeout, its cache key and its checkpoint.

Real Ray (the session's local Ray); checkpoints in a real local folder. Node bodies leave a mark file per call
(``name.<random>``, holding the worker's pid and Ray task id), so a test sees which bodies ran, how often, and which
of them shared one Ray task. Failing and dying "on the first N calls" is counted with the same marks, since workers
are other processes.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from odibi_ray import (DAG, DAGValidationError, ErrorKind, InvalidPolicyError, MapSpec, Node, NodeStatus,
                       RetryPolicy, RunStatus, run)
from odibi_ray.checkpoint import layout
from odibi_ray.checkpoint.objectmeta import CheckpointMeta
from odibi_ray.execution import scheduler as scheduler_module
from odibi_ray.execution.fusion import MAX_FUSED, fused_links
from odibi_ray.storage.local import LocalStorage

CHAIN = ["a", "b", "c", "d"]
FAST_RETRY = RetryPolicy(max_attempts=2, delay_s=0.01, backoff=1.0)


# --- node bodies (module level: Ray workers import them) ---------------------------------------------------------

def _task_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_task_id() or ""
    except Exception:  # noqa: BLE001 - the local backend: no Ray task
        return ""


def _mark(marks: str, name: str) -> int:
    """Leave a mark for this call; how many calls of ``name`` there have been, this one included."""
    Path(marks, f"{name}.{uuid.uuid4().hex[:8]}").write_text(f"{os.getpid()} {_task_id()}")
    return sum(1 for p in Path(marks).iterdir() if p.name.rsplit(".", 1)[0] == name)


def _body(name: str, marks: str, sleep: float, fail: int, die: int, deaf: bool = False) -> None:
    n = _mark(marks, name)
    if deaf:
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])  # like C code that never yields
    if sleep:
        time.sleep(sleep)
    if n <= die:
        os._exit(1)  # the worker process dies, as on a segfault
    if n <= fail:
        raise RuntimeError(f"{name} fails on call {n}")


def head(name: str, marks: str, path: str = "", sleep: float = 0.0, fail: int = 0, die: int = 0) -> list[str]:
    _body(name, marks, sleep, fail, die)
    return [Path(path).read_text()] if path else [name]


def step(x: list[str], name: str, marks: str, sleep: float = 0.0, fail: int = 0, die: int = 0,
         deaf: bool = False) -> list[str]:
    _body(name, marks, sleep, fail, die, deaf)
    return x + [name]


def both(x: list[str], y: list[str], name: str, marks: str) -> list[str]:
    _mark(marks, name)
    return x + y + [name]


def numbers(name: str, marks: str) -> list[int]:
    _mark(marks, name)
    return [1, 2, 3]


def tenfold(v: int, name: str, marks: str) -> int:
    _mark(marks, name)
    return 10 * v


def total(xs: list[int], name: str, marks: str) -> int:
    _mark(marks, name)
    return sum(xs)


def plus_one(x: int, name: str, marks: str) -> int:
    _mark(marks, name)
    return x + 1


def make_lock(x: list[str], name: str, marks: str):
    _mark(marks, name)
    return threading.Lock()  # cannot be pickled: the task cannot return it


# --- helpers -------------------------------------------------------------------------------------------------------

def chain(name: str, names: list[str], marks, options: dict[str, dict] | None = None, path: str = "") -> DAG:
    """``names[0] -> names[1] -> ...``, each node's output its name appended to its input's; ``options``: per node,
    more Node arguments (params among them are added to the node's)."""
    dag = DAG(name)
    prev = None
    for n in names:
        kw = dict((options or {}).get(n, {}))
        params = {"name": n, "marks": str(marks), **kw.pop("params", {})}
        if prev is None:
            if path:
                params["path"] = path
            dag.add_node(Node(n, head, params=params, **kw))
        else:
            dag.add_node(Node(n, step, inputs={"x": prev}, params=params, **kw))
        prev = n
    return dag


def calls(marks) -> dict[str, list[tuple[int, str]]]:
    """Node -> (pid, Ray task id) of each call of its body."""
    out: dict[str, list[tuple[int, str]]] = {}
    for p in Path(marks).iterdir():
        pid, _, tid = p.read_text().partition(" ")
        out.setdefault(p.name.rsplit(".", 1)[0], []).append((int(pid), tid))
    return out


def ran(marks) -> dict[str, int]:
    return {n: len(c) for n, c in calls(marks).items()}


def task_of(marks) -> dict[str, str]:
    """Node -> the Ray task id its body ran in (each ran once)."""
    out = {}
    for n, c in calls(marks).items():
        assert len(c) == 1, (n, c)
        out[n] = c[0][1]
    assert all(out.values()), out  # real Ray task ids
    return out


def groups(marks, names: list[str]) -> list[list[str]]:
    """``names`` grouped by the Ray task their bodies ran in, in order (each ran once)."""
    tasks = task_of(marks)
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(tasks[n], []).append(n)
    return list(out.values())


def statuses(result) -> dict[str, NodeStatus]:
    return {n: r.status for n, r in result.nodes.items()}


# --- one task, one record per node ---------------------------------------------------------------------------------

def test_a_fused_chain_runs_in_one_ray_task_and_each_node_keeps_its_own_record(ray_local, marks):
    result = run(chain("fused", CHAIN, marks), fuse=True, progress=False).raise_for_status()
    assert result["d"] == CHAIN
    tasks = task_of(marks)
    assert len(set(tasks.values())) == 1, tasks  # one Ray task ran the four bodies
    pids = {pid for c in calls(marks).values() for pid, _ in c}
    assert len(pids) == 1 and os.getpid() not in pids
    for name in CHAIN:
        rec = result.nodes[name]
        assert rec.status is NodeStatus.SUCCEEDED and rec.attempts == 1 and rec.error is None, rec
        att = rec.attempt_history[0]
        assert att.number == 1 and att.error is None
        assert att.worker_pid in pids and att.worker_node_id
        assert att.submitted_at <= att.started_at <= att.ended_at
    for before, after in zip(CHAIN, CHAIN[1:]):  # each timed on its own: one after the other in the one worker
        assert result.nodes[before].ended_at <= result.nodes[after].started_at
    assert result.stats["early_cutoff"] == 0


def test_without_fuse_each_node_of_the_chain_is_its_own_task(ray_local, marks):
    result = run(chain("unfused", CHAIN, marks), progress=False).raise_for_status()
    assert result["d"] == CHAIN
    assert len(set(task_of(marks).values())) == len(CHAIN)
    assert all(r.attempts == 1 for r in result.nodes.values())


def test_every_output_of_a_fused_chain_is_readable(ray_local, marks):
    result = run(chain("outputs", CHAIN, marks), fuse=True, progress=False).raise_for_status()
    assert len(set(task_of(marks).values())) == 1
    assert result["b"] == ["a", "b"]
    assert result.outputs() == {"a": ["a"], "b": ["a", "b"], "c": ["a", "b", "c"], "d": CHAIN}
    assert result.outputs(["c", "a"]) == {"c": ["a", "b", "c"], "a": ["a"]}


def test_chains_inside_a_larger_dag_fuse_and_nothing_else_does(ray_local, marks):
    # src -> l1 -> l2 -> join <- r2 <- r1 <- src; join -> tail: only l1-l2 and r1-r2 are links (src has two
    # consumers, join two inputs; join -> tail is a link)
    m = str(marks)
    dag = DAG("diamond")
    dag.add_node(Node("src", head, params={"name": "src", "marks": m}))
    for side in ("l", "r"):
        dag.add_node(Node(f"{side}1", step, inputs={"x": "src"}, params={"name": f"{side}1", "marks": m}))
        dag.add_node(Node(f"{side}2", step, inputs={"x": f"{side}1"}, params={"name": f"{side}2", "marks": m}))
    dag.add_node(Node("join", both, inputs={"x": "l2", "y": "r2"}, params={"name": "join", "marks": m}))
    dag.add_node(Node("tail", step, inputs={"x": "join"}, params={"name": "tail", "marks": m}))
    assert fused_links(dag, True) == {"l1": "l2", "r1": "r2", "join": "tail"}
    result = run(dag, fuse=True, progress=False).raise_for_status()
    assert result["tail"] == ["src", "l1", "l2", "src", "r1", "r2", "join", "tail"]
    assert result["l1"] == ["src", "l1"] and result["join"] == ["src", "l1", "l2", "src", "r1", "r2", "join"]
    together = sorted(sorted(g) for g in groups(marks, ["src", "l1", "l2", "r1", "r2", "join", "tail"]))
    assert together == [["join", "tail"], ["l1", "l2"], ["r1", "r2"], ["src"]]
    assert all(r.status is NodeStatus.SUCCEEDED and r.attempts == 1 for r in result.nodes.values())


def twice(marks) -> DAG:
    """a -> b -> c, b reading a through two parameters."""
    m = str(marks)
    dag = DAG("twice")
    dag.add_node(Node("a", head, params={"name": "a", "marks": m}))
    dag.add_node(Node("b", both, inputs={"x": "a", "y": "a"}, params={"name": "b", "marks": m}))
    dag.add_node(Node("c", step, inputs={"x": "b"}, params={"name": "c", "marks": m}))
    assert fused_links(dag, True) == {"a": "b", "b": "c"}
    return dag


def test_a_node_reading_its_one_input_twice_fuses_with_it(ray_local, marks):
    dag = twice(marks)
    result = run(dag, fuse=True, progress=False).raise_for_status()
    assert result["c"] == ["a", "a", "b", "c"] and result["b"] == ["a", "a", "b"]
    assert groups(marks, ["a", "b", "c"]) == [["a", "b", "c"]]


def test_a_chain_after_a_mapped_node_reads_its_items(ray_local, marks):
    # src -> each (mapped over src) -> sum -> inc: sum -> inc fuses; the head of that task reads the items
    m = str(marks)
    dag = DAG("after_map")
    dag.add_node(Node("src", numbers, params={"name": "src", "marks": m}))
    dag.add_node(Node("each", tenfold, params={"name": "each", "marks": m}, map_over=MapSpec("src", param="v")))
    dag.add_node(Node("sum", total, inputs={"xs": "each"}, params={"name": "sum", "marks": m}))
    dag.add_node(Node("inc", plus_one, inputs={"x": "sum"}, params={"name": "inc", "marks": m}))
    assert fused_links(dag, True) == {"sum": "inc"}
    result = run(dag, fuse=True, progress=False).raise_for_status()
    assert result["inc"] == 61 and result["sum"] == 60 and result["each"] == [10, 20, 30]
    tasks = {n: [t for _, t in c] for n, c in calls(marks).items()}
    assert len(tasks["each"]) == 3 and len(set(tasks["each"])) == 3  # one task per item
    assert tasks["sum"] == tasks["inc"] and not set(tasks["sum"]) & set(tasks["each"] + tasks["src"])


# --- which links fuse ----------------------------------------------------------------------------------------------

def _unit(name: str, inputs: dict[str, str] | None = None, fn=None, **kw) -> Node:
    params = {"name": name, "marks": "m"}
    if fn is None:
        fn = step if inputs else head
    return Node(name, fn, inputs=inputs or {}, params=params, **kw)


def test_fused_links_of_a_plain_chain_follow_the_run_and_node_settings():
    dag = chain("links", CHAIN, "m")
    assert fused_links(dag, True) == {"a": "b", "b": "c", "c": "d"}
    assert fused_links(dag, False) == {}
    dag["c"].fuse = False  # opts out of the run's fuse: neither b -> c nor c -> d
    assert fused_links(dag, True) == {"a": "b"}
    dag = chain("links2", CHAIN, "m", {"a": {"fuse": True}, "b": {"fuse": True}})
    assert fused_links(dag, False) == {"a": "b"}  # c has no say of its own and the run does not fuse
    assert fused_links(dag, True) == {"a": "b", "b": "c", "c": "d"}
    dag["b"].fuse = None
    assert fused_links(dag, False) == {}


def test_a_node_with_two_consumers_fuses_with_neither():
    dag = DAG("fan_out")
    dag.add_node(_unit("a"))
    dag.add_node(_unit("b", {"x": "a"}))
    dag.add_node(_unit("c", {"x": "a"}))
    dag.add_node(_unit("d", {"x": "c"}))
    assert fused_links(dag, True) == {"c": "d"}


def test_a_node_with_two_inputs_is_fused_to_neither():
    dag = DAG("fan_in")
    dag.add_node(_unit("a"))
    dag.add_node(_unit("b"))
    dag.add_node(_unit("c", {"x": "a", "y": "b"}, fn=both))
    dag.add_node(_unit("d", {"x": "c"}))
    assert fused_links(dag, True) == {"c": "d"}


def test_different_resources_break_the_link():
    dag = chain("resources", ["a", "b", "c", "d"], "m", {"c": {"num_cpus": 0.5}})
    assert fused_links(dag, True) == {"a": "b"}
    dag = chain("resources2", ["a", "b", "c"], "m", {"b": {"memory": 10 ** 8}, "c": {"memory": 10 ** 8}})
    assert fused_links(dag, True) == {"b": "c"}
    dag = chain("resources3", ["a", "b"], "m", {"b": {"resources": {"special": 1}}})
    assert fused_links(dag, True) == {}


def test_mapped_nodes_never_fuse():
    dag = DAG("mapped")
    dag.add_node(Node("src", numbers, params={"name": "src", "marks": "m"}))
    dag.add_node(Node("each", tenfold, params={"name": "each", "marks": "m"}, map_over="src", fuse=True))
    dag.add_node(Node("sum", total, inputs={"xs": "each"}, params={"name": "sum", "marks": "m"}))
    assert fused_links(dag, True) == {}


def test_node_fuse_false_opts_out_of_the_runs_fuse_on_ray(ray_local, marks):
    dag = chain("opt_out", CHAIN, marks, {"c": {"fuse": False}})
    result = run(dag, fuse=True, progress=False).raise_for_status()
    assert result["d"] == CHAIN
    assert groups(marks, CHAIN) == [["a", "b"], ["c"], ["d"]]


def test_node_fuse_true_fuses_two_nodes_without_the_runs_fuse(ray_local, marks):
    dag = chain("opt_in", CHAIN, marks, {"b": {"fuse": True}, "c": {"fuse": True}})
    result = run(dag, progress=False).raise_for_status()
    assert result["d"] == CHAIN
    assert groups(marks, CHAIN) == [["a"], ["b", "c"], ["d"]]


def test_max_fused_caps_the_nodes_of_one_task(ray_local, marks, monkeypatch):
    assert MAX_FUSED >= 2
    monkeypatch.setattr(scheduler_module, "MAX_FUSED", 3)
    names = [f"n{i}" for i in range(7)]
    result = run(chain("capped", names, marks), fuse=True, progress=False).raise_for_status()
    assert result[names[-1]] == names
    together = groups(marks, names)
    assert len(together) == math.ceil(len(names) / 3)
    assert together == [names[0:3], names[3:6], names[6:]]
    assert all(r.attempts == 1 for r in result.nodes.values())


# --- retries, failures, timeouts: per node -------------------------------------------------------------------------

@pytest.mark.parametrize("stored", [False, True], ids=["no_storage", "local_folder"])
def test_a_failed_node_of_a_fused_chain_is_retried_under_its_own_policy(ray_local, marks, tmp_path, stored):
    store = LocalStorage(tmp_path / "store") if stored else None
    dag = chain("retry", CHAIN, marks, {"b": {"retry": FAST_RETRY, "params": {"fail": 1}}})
    result = run(dag, fuse=True, storage=store, progress=False).raise_for_status()
    assert result["d"] == CHAIN and result["b"] == ["a", "b"]
    assert {n: r.attempts for n, r in result.nodes.items()} == {"a": 1, "b": 2, "c": 1, "d": 1}
    assert set(statuses(result).values()) == {NodeStatus.SUCCEEDED}
    b = result.nodes["b"]
    first, second = b.attempt_history
    assert first.error.kind is ErrorKind.APPLICATION and first.error.type_name == "RuntimeError"
    assert "b fails on call 1" in first.error.message and second.error is None and b.error is None
    assert [a.number for a in b.attempt_history] == [1, 2]
    assert result.nodes["c"].attempt_history[0].number == 1  # its discarded attempt was not counted
    assert ran(marks) == {"a": 1, "b": 2, "c": 1, "d": 1}  # a not rerun; c's body never ran on the failure
    c = calls(marks)
    (ta,), (tc,), (td,) = ({t for _, t in c[n]} for n in ("a", "c", "d"))
    assert {t for _, t in c["b"]} == {ta, tc} and ta != tc == td  # the retry holds b and the nodes after it
    if stored:
        keys = {n: r.cache_key for n, r in result.nodes.items()}
        assert all(keys.values()) and len(set(keys.values())) == 4
        for n, key in keys.items():
            assert CheckpointMeta.from_info(store.head(layout.object_key("retry", key))).node == n
        again = run(dag, fuse=True, storage=store, progress=False).raise_for_status()
        assert set(statuses(again).values()) == {NodeStatus.CACHED}
        assert {n: r.cache_key for n, r in again.nodes.items()} == keys and again["d"] == CHAIN
        assert ran(marks) == {"a": 1, "b": 2, "c": 1, "d": 1}


def test_a_node_of_a_fused_chain_that_fails_for_good_skips_only_the_nodes_after_it(ray_local, marks):
    dag = chain("fails", CHAIN, marks, {"b": {"params": {"fail": 99}}})
    result = run(dag, fuse=True, progress=False)
    assert result.status is RunStatus.FAILED
    assert statuses(result) == {"a": NodeStatus.SUCCEEDED, "b": NodeStatus.FAILED, "c": NodeStatus.SKIPPED,
                                "d": NodeStatus.SKIPPED}
    assert {n: r.attempts for n, r in result.nodes.items()} == {"a": 1, "b": 1, "c": 0, "d": 0}
    assert result.nodes["b"].error.kind is ErrorKind.APPLICATION and result.nodes["a"].error is None
    assert result.nodes["c"].reason == "upstream node 'b' failed"
    assert result["a"] == ["a"]
    assert ran(marks) == {"a": 1, "b": 1}
    assert len(set(task_of(marks).values())) == 1


def test_each_node_of_a_fused_chain_has_its_own_timeout(ray_local, marks):
    # a runs 0.6 s; b (timeout 0.5 s) runs 0.05 s: timed from its own start, it succeeds; c (timeout 0.5 s) sleeps
    # 5 s: the alarm stops it
    dag = chain("timeouts", CHAIN, marks, {"a": {"params": {"sleep": 0.6}},
                                           "b": {"timeout_s": 0.5, "params": {"sleep": 0.05}},
                                           "c": {"timeout_s": 0.5, "params": {"sleep": 5.0}}})
    result = run(dag, fuse=True, progress=False)
    assert statuses(result) == {"a": NodeStatus.SUCCEEDED, "b": NodeStatus.SUCCEEDED, "c": NodeStatus.FAILED,
                                "d": NodeStatus.SKIPPED}
    c = result.nodes["c"]
    assert c.attempts == 1 and c.error.kind is ErrorKind.TIMEOUT and c.error.type_name == "NodeTimeoutError"
    assert result.nodes["a"].attempts == result.nodes["b"].attempts == 1
    assert result["b"] == ["a", "b"]
    assert ran(marks) == {"a": 1, "b": 1, "c": 1}
    assert len(set(task_of(marks).values())) == 1


def test_a_fused_node_ignoring_its_timeout_is_killed_and_charged_once_it_runs_unfused(ray_local, marks):
    # c blocks its alarm and sleeps: its worker is killed past timeout_s + the grace. In the fused task that kill
    # is no node's (it cannot say which ran); c then runs alone, is killed again and charged with a timeout.
    dag = chain("deaf", ["a", "b", "c", "d"], marks, {"c": {"timeout_s": 0.2, "params": {"sleep": 30.0, "deaf": True}}})
    result = run(dag, fuse=True, progress=False)
    assert statuses(result) == {"a": NodeStatus.SUCCEEDED, "b": NodeStatus.SUCCEEDED, "c": NodeStatus.FAILED,
                                "d": NodeStatus.SKIPPED}
    assert {n: r.attempts for n, r in result.nodes.items()} == {"a": 1, "b": 1, "c": 1, "d": 0}
    assert result.nodes["c"].error.kind is ErrorKind.TIMEOUT
    assert ran(marks) == {"a": 2, "b": 2, "c": 2}
    assert result["b"] == ["a", "b"]


def test_an_unserialisable_output_fails_only_its_own_node_of_a_fused_chain(ray_local, marks):
    m = str(marks)
    dag = chain("unserialisable", ["a", "b"], marks)
    dag.add_node(Node("c", make_lock, inputs={"x": "b"}, params={"name": "c", "marks": m}))
    assert fused_links(dag, True) == {"a": "b", "b": "c"}
    result = run(dag, fuse=True, progress=False)
    assert statuses(result) == {"a": NodeStatus.SUCCEEDED, "b": NodeStatus.SUCCEEDED, "c": NodeStatus.FAILED}
    assert result.nodes["c"].error.type_name == "UnserialisableOutputError"
    assert result.nodes["a"].error is None and result.nodes["b"].error is None
    assert result["b"] == ["a", "b"]
    assert len(set(task_of(marks).values())) == 1


def appends(x: list[str], name: str, marks: str, fail: int = 0) -> list[str]:
    """Changes its input in place (as ``df["col"] = ...; return df`` does) before it may fail."""
    n = _mark(marks, name)
    x.append(name)
    if n <= fail:
        raise RuntimeError(f"{name} fails on call {n}")
    return x


def mutating_chain(name: str, marks, fail: int = 0) -> DAG:
    m = str(marks)
    dag = DAG(name)
    dag.add_node(Node("a", head, params={"name": "a", "marks": m}))
    dag.add_node(Node("b", appends, inputs={"x": "a"}, params={"name": "b", "marks": m, "fail": fail},
                      retry=FAST_RETRY))
    dag.add_node(Node("c", step, inputs={"x": "b"}, params={"name": "c", "marks": m}))
    return dag


def test_a_node_changing_its_input_in_place_leaves_the_output_of_the_node_before_it_as_it_was(ray_local, marks):
    """Each node's output is its own (fusion.py: "one Ray object per node, so result[name] ... read it as
    before"): unfused, b gets a copy of a's output; fused, the same output object must not be changed under a."""
    result = run(mutating_chain("mutates", marks), fuse=True, progress=False).raise_for_status()
    assert len(set(task_of(marks).values())) == 1
    assert result["b"] == ["a", "b"] and result["c"] == ["a", "b", "c"]
    assert result["a"] == ["a"]  # as without fuse


def test_a_retried_node_gets_the_input_its_first_attempt_got(ray_local, marks):
    """b changes its input in place, then fails on its first attempt: its retry must get a's output, not what the
    failed attempt left of it (without fuse: ["a", "b"])."""
    result = run(mutating_chain("mutates_retry", marks, fail=1), fuse=True, progress=False).raise_for_status()
    assert result.nodes["b"].attempts == 2
    assert result["b"] == ["a", "b"]
    assert result["a"] == ["a"]


def test_fail_fast_in_a_fused_chain(ray_local, marks):
    m = str(marks)
    dag = chain("fast", CHAIN, marks, {"b": {"params": {"fail": 99}}})
    dag.add_node(Node("other", head, params={"name": "other", "marks": m, "sleep": 0.3}))
    dag.add_node(Node("other2", step, inputs={"x": "other"}, params={"name": "other2", "marks": m}))
    result = run(dag, fuse=True, fail_fast=True, progress=False)
    assert result.status is RunStatus.FAILED
    st = statuses(result)
    assert (st["a"], st["b"], st["c"], st["d"]) == (NodeStatus.SUCCEEDED, NodeStatus.FAILED, NodeStatus.SKIPPED,
                                                    NodeStatus.SKIPPED)
    assert st["other"] in (NodeStatus.CANCELLED, NodeStatus.SUCCEEDED)
    assert result.nodes["b"].attempts == 1 and result.nodes["c"].attempts == 0
    tasks = task_of(marks)
    assert tasks["a"] == tasks["b"] and "c" not in tasks


# --- a fused task that dies ----------------------------------------------------------------------------------------

def test_a_fused_task_whose_worker_dies_charges_no_node_and_runs_its_nodes_one_task_each(ray_local, marks):
    # c kills its worker on its first call only; every policy is the default (one attempt): a node charged with
    # the death would fail the run
    dag = chain("dies_once", CHAIN, marks, {"c": {"params": {"die": 1}}})
    result = run(dag, fuse=True, progress=False).raise_for_status()
    assert result["d"] == CHAIN and result["b"] == ["a", "b"]
    for name in CHAIN:
        rec = result.nodes[name]
        assert rec.status is NodeStatus.SUCCEEDED and rec.attempts == 1, (name, rec)
        assert rec.attempt_history[0].error is None and rec.attempt_history[0].number == 1
    assert ran(marks) == {"a": 2, "b": 2, "c": 2, "d": 1}  # a and b ran once more, discarded, not charged
    c = calls(marks)
    fused = set.intersection(*({t for _, t in c[n]} for n in ("a", "b", "c")))
    assert len(fused) == 1  # their first calls shared the task that died
    after = [t for n in CHAIN for _, t in c[n] if t not in fused]
    assert len(after) == 4 and len(set(after)) == 4  # then one task each (d included)


def test_a_fused_task_whose_worker_dies_with_checkpoints(ray_local, marks, tmp_path):
    """As above, with a local folder: the task that died had already stored a's and b's outputs (a worker writes
    its node's checkpoint as soon as the node returns). Nobody is charged; b, keyed again in its own task, may find
    the object its discarded attempt stored and reuse it (cached, no attempt) instead of running once more."""
    store = LocalStorage(tmp_path / "store")
    dag = chain("dies_once_cp", CHAIN, marks, {"c": {"params": {"die": 1}}})
    result = run(dag, fuse=True, storage=store, progress=False).raise_for_status()
    assert result.outputs() == {"a": ["a"], "b": ["a", "b"], "c": ["a", "b", "c"], "d": CHAIN}
    assert all(a.error is None for r in result.nodes.values() for a in r.attempt_history)  # nobody charged
    st = statuses(result)
    assert (st["a"], st["c"], st["d"]) == (NodeStatus.SUCCEEDED,) * 3
    assert st["b"] in (NodeStatus.SUCCEEDED, NodeStatus.CACHED)
    assert {n: r.attempts for n, r in result.nodes.items()} == {
        "a": 1, "b": 1 if st["b"] is NodeStatus.SUCCEEDED else 0, "c": 1, "d": 1}
    assert ran(marks) == {"a": 2, "b": 2 if st["b"] is NodeStatus.SUCCEEDED else 1, "c": 2, "d": 1}
    keys = {n: r.cache_key for n, r in result.nodes.items()}
    assert all(keys.values()) and len(set(keys.values())) == 4
    before = ran(marks)
    again = run(dag, fuse=True, storage=store, progress=False).raise_for_status()
    assert set(statuses(again).values()) == {NodeStatus.CACHED} and again.outputs() == result.outputs()
    assert {n: r.cache_key for n, r in again.nodes.items()} == keys and ran(marks) == before


def test_a_node_that_kills_its_worker_is_charged_once_it_runs_unfused(ray_local, marks):
    dag = chain("dies_twice", CHAIN, marks, {"c": {"retry": FAST_RETRY, "params": {"die": 2}}})
    result = run(dag, fuse=True, progress=False).raise_for_status()
    assert result["d"] == CHAIN
    assert {n: r.attempts for n, r in result.nodes.items()} == {"a": 1, "b": 1, "c": 2, "d": 1}
    first, second = result.nodes["c"].attempt_history
    assert first.error.kind is ErrorKind.WORKER_DIED and second.error is None
    assert ran(marks) == {"a": 2, "b": 2, "c": 3, "d": 1}


def test_a_node_that_always_kills_its_worker_fails_alone(ray_local, marks):
    dag = chain("dies_always", CHAIN, marks, {"c": {"params": {"die": 99}}})
    result = run(dag, fuse=True, progress=False)
    assert statuses(result) == {"a": NodeStatus.SUCCEEDED, "b": NodeStatus.SUCCEEDED, "c": NodeStatus.FAILED,
                                "d": NodeStatus.SKIPPED}
    assert {n: r.attempts for n, r in result.nodes.items()} == {"a": 1, "b": 1, "c": 1, "d": 0}
    assert result.nodes["c"].error.kind is ErrorKind.WORKER_DIED
    assert result["b"] == ["a", "b"]
    assert ran(marks) == {"a": 2, "b": 2, "c": 2}


# --- checkpoints ---------------------------------------------------------------------------------------------------

def test_fused_nodes_keep_their_own_keys_checkpoints_and_early_cutoff(ray_local, marks, tmp_path):
    src = tmp_path / "source.txt"
    src.write_text("v1")
    store = LocalStorage(tmp_path / "store")
    dag = chain("cp", CHAIN, marks, path=str(src))
    first = run(dag, fuse=True, storage=store, progress=False).raise_for_status()
    assert first["d"] == ["v1", "b", "c", "d"]
    assert len(set(task_of(marks).values())) == 1
    keys = {n: r.cache_key for n, r in first.nodes.items()}
    versions = {n: r.data_version for n, r in first.nodes.items()}
    assert all(keys.values()) and len(set(keys.values())) == 4
    assert all(versions.values()) and len(set(versions.values())) == 4
    stored = {i.key for i in store.list(layout.objects_prefix("cp"))}
    assert stored == {layout.object_key("cp", k) for k in keys.values()}  # one object per node
    for n, k in keys.items():
        meta = CheckpointMeta.from_info(store.head(layout.object_key("cp", k)))
        assert (meta.node, meta.run_id, meta.attempt) == (n, first.run_id, 1)
        assert meta.pid == first.nodes[n].attempt_history[0].worker_pid

    # fusion never changes a key: the same DAG unfused, in another store, has the same keys and versions
    plain = run(chain("cp", CHAIN, marks, path=str(src)), storage=LocalStorage(tmp_path / "plain"),
                progress=False).raise_for_status()
    assert {n: r.cache_key for n, r in plain.nodes.items()} == keys
    assert {n: r.data_version for n, r in plain.nodes.items()} == versions
    before = ran(marks)

    second = run(dag, fuse=True, storage=store, progress=False).raise_for_status()
    assert set(statuses(second).values()) == {NodeStatus.CACHED}
    assert ran(marks) == before  # nothing ran
    assert second.outputs() == first.outputs()
    assert {n: r.cache_key for n, r in second.nodes.items()} == keys

    # a runs again and writes what it wrote before: b..d are reused (early cutoff)
    third = run(dag, fuse=True, storage=store, refresh="a", progress=False).raise_for_status()
    assert statuses(third) == {"a": NodeStatus.SUCCEEDED, "b": NodeStatus.CACHED, "c": NodeStatus.CACHED,
                               "d": NodeStatus.CACHED}
    assert third.stats["early_cutoff"] >= 1 and third.nodes["b"].unchanged_inputs == ("a",)
    assert ran(marks) == {**before, "a": before["a"] + 1}
    assert third.outputs() == first.outputs()
    assert {n: r.cache_key for n, r in third.nodes.items()} == keys
    assert {n: r.data_version for n, r in third.nodes.items()} == versions

    # c runs again (its input b is read from storage, as the head of a fused task c -> d): d is reused
    before = ran(marks)
    middle = run(dag, fuse=True, storage=store, refresh="c", progress=False).raise_for_status()
    assert statuses(middle) == {"a": NodeStatus.CACHED, "b": NodeStatus.CACHED, "c": NodeStatus.SUCCEEDED,
                                "d": NodeStatus.CACHED}
    assert ran(marks) == {**before, "c": before["c"] + 1}
    assert middle.outputs() == first.outputs() and middle.nodes["d"].unchanged_inputs == ("c",)

    # a runs again and writes something else: b..d run again, in one task with it, under new keys
    src.write_text("v2")
    before, seen = ran(marks), {t for c in calls(marks).values() for _, t in c}
    fourth = run(dag, fuse=True, storage=store, refresh="a", progress=False).raise_for_status()
    assert set(statuses(fourth).values()) == {NodeStatus.SUCCEEDED}
    assert fourth["d"] == ["v2", "b", "c", "d"] and fourth["b"] == ["v2", "b"]
    assert {n: c - before[n] for n, c in ran(marks).items()} == dict.fromkeys(CHAIN, 1)
    new_keys = {n: r.cache_key for n, r in fourth.nodes.items()}
    assert new_keys["a"] == keys["a"] and all(new_keys[n] != keys[n] for n in ("b", "c", "d"))
    assert len({t for c in calls(marks).values() for _, t in c} - seen) == 1  # one new task ran the four
    fifth = run(dag, fuse=True, storage=store, progress=False).raise_for_status()
    assert set(statuses(fifth).values()) == {NodeStatus.CACHED} and fifth["d"] == ["v2", "b", "c", "d"]


def test_a_fused_chain_keyed_in_its_task_after_inputs_still_running(ray_local, marks, tmp_path):
    # x, y -> j -> k -> l: j -> k -> l is one task, submitted while x and y run; j is keyed in it from their
    # attempts' metadata, k and l from the node before them
    m = str(marks)

    def dag_() -> DAG:
        dag = DAG("keyed")
        dag.add_node(Node("x", head, params={"name": "x", "marks": m, "sleep": 0.3}))
        dag.add_node(Node("y", head, params={"name": "y", "marks": m}))
        dag.add_node(Node("j", both, inputs={"x": "x", "y": "y"}, params={"name": "j", "marks": m}))
        dag.add_node(Node("k", step, inputs={"x": "j"}, params={"name": "k", "marks": m}))
        dag.add_node(Node("l", step, inputs={"x": "k"}, params={"name": "l", "marks": m}))
        return dag

    fused = run(dag_(), fuse=True, storage=LocalStorage(tmp_path / "f"), progress=False).raise_for_status()
    assert fused["l"] == ["x", "y", "j", "k", "l"]
    tasks = task_of(marks)
    assert tasks["j"] == tasks["k"] == tasks["l"] and len(set(tasks.values())) == 3
    plain = run(dag_(), storage=LocalStorage(tmp_path / "p"), progress=False).raise_for_status()
    assert {n: r.cache_key for n, r in fused.nodes.items()} == {n: r.cache_key for n, r in plain.nodes.items()}
    assert all(r.cache_key for r in fused.nodes.values())
    again = run(dag_(), fuse=True, storage=LocalStorage(tmp_path / "f"), progress=False).raise_for_status()
    assert set(statuses(again).values()) == {NodeStatus.CACHED} and again["l"] == fused["l"]


def test_a_resumed_run_fuses_what_is_left(ray_local, marks, tmp_path):
    store = LocalStorage(tmp_path / "store")
    dag = chain("resume", CHAIN, marks, {"c": {"params": {"fail": 1}}})
    failed = run(dag, fuse=True, storage=store, progress=False)
    assert statuses(failed) == {"a": NodeStatus.SUCCEEDED, "b": NodeStatus.SUCCEEDED, "c": NodeStatus.FAILED,
                                "d": NodeStatus.SKIPPED}
    resumed = run(dag, fuse=True, storage=store, resume="latest", progress=False).raise_for_status()
    assert statuses(resumed) == {"a": NodeStatus.RESUMED, "b": NodeStatus.RESUMED, "c": NodeStatus.SUCCEEDED,
                                 "d": NodeStatus.SUCCEEDED}
    assert resumed["d"] == CHAIN and resumed["b"] == ["a", "b"]
    assert ran(marks) == {"a": 1, "b": 1, "c": 2, "d": 1}
    c = calls(marks)
    assert c["c"][0][1] != c["c"][1][1] and c["d"][0][1] in {t for _, t in c["c"]}  # c -> d: one task


def test_a_fused_chain_writing_behind(ray_local, marks, tmp_path):
    store = LocalStorage(tmp_path / "store")
    dag = chain("behind", CHAIN, marks)
    first = run(dag, fuse=True, storage=store, write_behind=True, progress=False).raise_for_status()
    assert len(set(task_of(marks).values())) == 1
    assert all(r.attempt_history[-1].confirmed for r in first.nodes.values())
    keys = {n: r.cache_key for n, r in first.nodes.items()}
    assert {i.key for i in store.list(layout.objects_prefix("behind"))} == {
        layout.object_key("behind", k) for k in keys.values()}
    again = run(dag, fuse=True, storage=store, write_behind=True, progress=False).raise_for_status()
    assert set(statuses(again).values()) == {NodeStatus.CACHED} and again.outputs() == first.outputs()


# --- where fusion does not apply -----------------------------------------------------------------------------------

def test_fuse_has_no_effect_on_the_local_backend(marks):
    result = run(chain("local", CHAIN, marks), backend="local", fuse=True, progress=False).raise_for_status()
    assert result.outputs() == {"a": ["a"], "b": ["a", "b"], "c": ["a", "b", "c"], "d": CHAIN}
    assert all(r.status is NodeStatus.SUCCEEDED and r.attempts == 1 for r in result.nodes.values())
    assert ran(marks) == dict.fromkeys(CHAIN, 1)


def test_fuse_has_no_effect_with_a_barrier(ray_local, marks):
    result = run(chain("barrier", CHAIN, marks), barrier=True, fuse=True, progress=False).raise_for_status()
    assert result["d"] == CHAIN and result["b"] == ["a", "b"]
    assert len(set(task_of(marks).values())) == len(CHAIN)


@pytest.mark.parametrize("value", ["yes", 1, 0.0])
def test_node_fuse_must_be_a_bool_or_none(value):
    with pytest.raises(InvalidPolicyError, match="fuse must be True, False or None") as raised:
        Node("a", head, params={"name": "a", "marks": "m"}, fuse=value)
    assert isinstance(raised.value, DAGValidationError)
    for ok in (True, False, None):
        assert Node("a", head, params={"name": "a", "marks": "m"}, fuse=ok).fuse is ok


# --- found in review ------------------------------------------------------------------------------------------------

def test_a_fused_node_reading_the_node_before_it_twice_is_keyed_in_the_task(ray_local, marks, tmp_path):
    """b reads a through two parameters: keyed in the task, it gets a's metadata once per parameter."""
    dag = twice(marks)
    plain = run(dag, storage=LocalStorage(tmp_path / "p"), progress=False)
    fused = run(dag, fuse=True, storage=LocalStorage(tmp_path / "f"), progress=False)
    detail = {n: (r.status, r.attempts, r.error and r.error.type_name) for n, r in fused.nodes.items()}
    assert statuses(fused) == statuses(plain) == dict.fromkeys("abc", NodeStatus.SUCCEEDED), detail
    assert fused["c"] == plain["c"] == ["a", "a", "b", "c"]
    assert {n: r.cache_key for n, r in fused.nodes.items()} == {n: r.cache_key for n, r in plain.nodes.items()}


def _explode():
    raise RuntimeError("params cannot be loaded here")


class Bomb:
    """Pickles, but cannot be unpickled (in the worker)."""

    def __reduce__(self):
        return (_explode, ())


def with_bomb(x, name, marks, bomb=None):
    return x + [name]


@pytest.mark.parametrize("fuse", [False, True])
def test_a_node_whose_params_cannot_be_loaded_in_the_worker_is_charged_itself(ray_local, marks, fuse):
    """A failure of a fused task's node outside its function (here its params) is that node's, as unfused: the
    nodes before it keep their outputs."""
    m = str(marks)
    dag = DAG("charge")
    dag.add_node(Node("a", head, params={"name": "a", "marks": m}))
    dag.add_node(Node("b", with_bomb, inputs={"x": "a"}, params={"name": "b", "marks": m, "bomb": Bomb()}))
    dag.add_node(Node("c", step, inputs={"x": "b"}, params={"name": "c", "marks": m}))
    res = run(dag, fuse=fuse, progress=False)
    detail = {n: (r.status.value, r.attempts, r.error and r.error.type_name) for n, r in res.nodes.items()}
    assert statuses(res) == {"a": NodeStatus.SUCCEEDED, "b": NodeStatus.FAILED, "c": NodeStatus.SKIPPED}, detail
    assert res.nodes["a"].attempts == res.nodes["b"].attempts == 1 and res["a"] == ["a"]
    assert "params cannot be loaded here" in res.nodes["b"].error.message


def boom(name, marks):
    time.sleep(1.0)
    raise RuntimeError("fails at once")


def test_fail_fast_while_a_fused_task_runs_charges_none_of_its_nodes(ray_local, marks):
    """An abort kills a fused task: which of its nodes was running is not known (its outputs are all lost), so none
    gets an attempt, as when a fused task dies; each says so in its reason."""
    m = str(marks)
    dag = DAG("abort")
    dag.add_node(Node("a", head, params={"name": "a", "marks": m}))
    dag.add_node(Node("b", step, inputs={"x": "a"}, params={"name": "b", "marks": m, "sleep": 6.0}))
    dag.add_node(Node("f", boom, params={"name": "f", "marks": m}))
    res = run(dag, fuse=True, fail_fast=True, progress=False)
    assert {"a", "b"} <= set(calls(marks))  # a had finished and b was running in the fused task
    assert statuses(res) == {"a": NodeStatus.CANCELLED, "b": NodeStatus.CANCELLED, "f": NodeStatus.FAILED}
    for n in "ab":
        assert res.nodes[n].attempts == 0, res.nodes[n].attempt_history
        assert "in fused task a..b" in res.nodes[n].reason and "fail_fast" in res.nodes[n].reason
