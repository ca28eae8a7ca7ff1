"""The scheduler's per-node state machine, tested directly: every legal move is taken, every other refused,
the containers agree with the states (``check_invariants``), a stall names where each node is.

The runs here use the scripted stand-in backend of tests/test_scheduler_races.py (it runs no code; said
plainly there); every real-Ray test also checks the invariants after each batch (tests/conftest.py).
"""

from __future__ import annotations

import itertools

import pytest

from odibi_ray import DAG, Node, NodeStatus, RetryPolicy
from odibi_ray.execution.scheduler import _MOVES, _STATUS, Scheduler, SchedulerStateError, _State
from tests.test_scheduler_races import ScriptedBackend


def chain_dag(max_attempts: int = 3) -> DAG:
    dag = DAG("states")
    dag.add_node(Node("a", lambda: 1, retry=RetryPolicy(max_attempts=max_attempts, delay_s=0)))
    dag.add_node(Node("b", lambda a: a, inputs=["a"]))
    dag.add_node(Node("c", lambda b: b, inputs=["b"]))
    return dag


def scheduler(script=None, dag: DAG | None = None) -> Scheduler:
    dag = dag or chain_dag()
    backend = ScriptedBackend(script or (lambda be, h: ("N1", None)))
    return Scheduler(dag, backend, run_id="r", levels=dag.levels())


def force(s: Scheduler, name: str, state: _State) -> None:
    """Put ``name`` in ``state`` without a move (to test moves from any state)."""
    s._in[s._state[name]].discard(name)
    s._in[state].add(name)
    s._state[name] = state
    s.records[name].status = _STATUS[state]
    s._left_in_level[s.records[name].level] = int(state.open)


@pytest.mark.parametrize("old, new", list(itertools.product(_State, _State)), ids=lambda s: s.value)
def test_every_legal_move_is_taken_and_every_other_refused(old, new):
    s = scheduler()
    force(s, "a", old)
    if new in _MOVES[old]:
        s._move("a", new)
        assert s._state["a"] is new and "a" in s._in[new] and "a" not in s._in[old]
        assert s.records["a"].status is _STATUS[new]
        assert s._left_in_level[0] == int(new.open)
    else:
        with pytest.raises(SchedulerStateError, match=rf"node 'a': illegal move {old.value} -> {new.value}"):
            s._move("a", new)
        assert s._state["a"] is old and s.records["a"].status is _STATUS[old]


def test_closed_without_output_is_terminal_and_open_states_are_the_first_four():
    assert {st for st in _State if not _MOVES[st]} == {_State.FAILED, _State.SKIPPED, _State.CANCELLED}
    assert {st for st in _State if st.open} == {_State.PENDING, _State.WAITING_RETRY, _State.IN_FLIGHT,
                                                 _State.MAPPING}
    assert {_STATUS[st] for st in _State} == set(NodeStatus)  # every public status comes from one state


def test_progress_reports_a_node_once_even_when_it_is_reopened():
    s = scheduler()
    done = []
    s.progress.node_done = lambda name, level, status: done.append((name, status))
    force(s, "a", _State.IN_FLIGHT)
    s._live["a"] = object()
    s._move("a", _State.SUCCEEDED)
    s._move("a", _State.PENDING)  # its output was lost
    assert s._left_in_level[0] == 1 and s._open == 3
    s._move("a", _State.IN_FLIGHT)
    s._move("a", _State.SUCCEEDED)
    assert done == [("a", NodeStatus.SUCCEEDED)]


def test_a_stall_lists_which_nodes_are_in_which_state():
    s = scheduler()
    force(s, "a", _State.CACHED)
    s._live["a"] = object()
    # Nothing queued, in flight or waiting: the loop cannot go on (a bug the message must make findable).
    with pytest.raises(SchedulerStateError) as err:
        s._loop()
    text = str(err.value)
    assert "stalled with 2 open node(s)" in text
    assert "pending (2): b, c" in text and "cached (1): a" in text


def test_check_invariants_finds_containers_that_disagree_with_the_states():
    s = scheduler()
    s.check_invariants()  # a fresh scheduler is consistent
    s._live["b"] = object()  # a pending node holding a handle
    with pytest.raises(SchedulerStateError, match=r"live handles \['b'\] do not match"):
        s.check_invariants()
    del s._live["b"]
    s.records["c"].status = NodeStatus.RUNNING  # a status written behind the state machine's back
    with pytest.raises(SchedulerStateError, match="a record's status is not its state's"):
        s.check_invariants()


def test_a_retry_goes_through_waiting_retry_and_a_discarded_consumer_back_to_pending():
    def script(be, h):
        if h.name == "a" and h.attempt == 1:
            return ("N1", "worker_died")
        return ("N1", None)

    s = scheduler(script)
    moves: list[tuple[str, str, str]] = []
    move = s._move

    def logged(name: str, new: _State) -> None:
        moves.append((name, s._state[name].value, new.value))
        move(name, new)

    s._move = logged
    result = s.run()
    s.check_invariants()
    assert [(n, r.status, r.attempts) for n, r in result.nodes.items()] == [
        ("a", NodeStatus.SUCCEEDED, 2), ("b", NodeStatus.SUCCEEDED, 1), ("c", NodeStatus.SUCCEEDED, 1)]
    assert [m[1:] for m in moves if m[0] == "a"] == [
        ("pending", "in_flight"), ("in_flight", "waiting_retry"), ("waiting_retry", "pending"),
        ("pending", "in_flight"), ("in_flight", "succeeded")]
    # Speculative: b and c were submitted behind a's first attempt, then discarded when it failed (not counted).
    assert [m[1:] for m in moves if m[0] == "b"][:2] == [("pending", "in_flight"), ("in_flight", "pending")]
    assert result.nodes["a"].attempt_history[0].error.kind == "worker_died"
    assert s._in[_State.SUCCEEDED] == {"a", "b", "c"} and not s._inflight and s._open == 0


def test_a_final_failure_skips_descendants_and_discards_their_attempts():
    def script(be, h):
        return ("N1", "system") if h.name == "a" else None  # b and c would never finish by themselves

    s = scheduler(script, chain_dag(max_attempts=1))
    result = s.run()
    assert [(n, r.status, r.attempts) for n, r in result.nodes.items()] == [
        ("a", NodeStatus.FAILED, 1), ("b", NodeStatus.SKIPPED, 0), ("c", NodeStatus.SKIPPED, 0)]
    assert result.nodes["b"].reason == "upstream node 'a' failed"
    assert not s._inflight and not s._live  # the speculative attempts of b and c were discarded
    s.check_invariants()


def test_fail_fast_cancels_what_is_open_and_records_only_started_attempts():
    dag = DAG("ff")
    dag.add_node(Node("bad", lambda: 1, retry=RetryPolicy(max_attempts=1)))
    dag.add_node(Node("slow", lambda: 1))
    dag.add_node(Node("after", lambda slow: 1, inputs=["slow"]))

    def script(be, h):
        return ("N1", "system") if h.name == "bad" else None

    s = Scheduler(dag, ScriptedBackend(script), run_id="r", levels=dag.levels(), fail_fast=True)
    result = s.run()
    statuses = {n: (r.status, r.attempts) for n, r in result.nodes.items()}
    assert statuses == {"bad": (NodeStatus.FAILED, 1), "slow": (NodeStatus.CANCELLED, 1),
                        "after": (NodeStatus.CANCELLED, 0)}  # `after` was queued behind `slow`: never started
    assert result.nodes["slow"].attempt_history[0].error.kind == "cancelled"
    s.check_invariants()


def test_fail_fast_keeps_the_attempts_that_finished_in_the_same_batch():
    """A final failure and a success reported in one batch: the success counts (it is not 'cancelled')."""
    dag = DAG("ff_batch")
    dag.add_node(Node("bad", lambda: 1, retry=RetryPolicy(max_attempts=1)))
    dag.add_node(Node("good", lambda: 1))
    dag.add_node(Node("slow", lambda: 1))

    def script(be, h):
        if h.name == "slow":
            return None
        return ("N1", "system") if h.name == "bad" else ("N1", None)

    s = Scheduler(dag, ScriptedBackend(script), run_id="r", levels=dag.levels(), fail_fast=True)
    result = s.run()
    assert {n: r.status for n, r in result.nodes.items()} == {
        "bad": NodeStatus.FAILED, "good": NodeStatus.SUCCEEDED, "slow": NodeStatus.CANCELLED}
    s.check_invariants()


def test_a_stall_is_reported_even_while_a_heartbeat_or_observer_caps_the_wait():
    s = scheduler()
    force(s, "a", _State.CACHED)
    s._live["a"] = object()

    class Beat:
        heartbeat = staticmethod(lambda: None)

    s.checkpoint = Beat()  # type: ignore[assignment]  # only .heartbeat is read by the loop
    with pytest.raises(SchedulerStateError, match="stalled with 2 open node"):
        s._loop()
