"""What crosses between a worker and the driver: AttemptMeta, ErrorInfo with its ErrorKind, the Ray task spec, and
the Backend attributes the scheduler reads."""

from __future__ import annotations

import json
import os
import pickle
import sys
from typing import get_type_hints

import cloudpickle
import pytest

import odibi_ray
from odibi_ray import DAG, ErrorInfo, ErrorKind, Node, RetryPolicy, run
from odibi_ray.execution.attempt import FAILED, NO_IO, AttemptMeta, IOCounts, error_info, run_attempt
from odibi_ray.execution.backends import ray_tasks
from odibi_ray.execution.backends.base import Backend
from odibi_ray.execution.backends.local import LocalBackend
from odibi_ray.execution.backends.ray_tasks import RayBackend, TaskSpec
from odibi_ray.execution.context import NodeContext
from odibi_ray.execution.result import AttemptRecord, NodeRecord, NodeStatus, RunResult

ALL_KINDS = {"application", "timeout", "cancelled", "upstream_failed", "corrupt_input", "storage", "worker_died",
             "node_lost", "oom", "object_lost", "system"}
SYSTEM_KINDS = {"worker_died", "node_lost", "oom", "object_lost", "system", "storage"}


# --- ErrorKind ------------------------------------------------------------------------------------

def test_error_kind_has_every_kind_the_engine_uses():
    assert {k.value for k in ErrorKind} == ALL_KINDS
    assert odibi_ray.ErrorKind is ErrorKind and "ErrorKind" in odibi_ray.__all__


def test_is_system_is_the_retry_system_failures_set():
    assert {k.value for k in ErrorKind if k.is_system} == SYSTEM_KINDS
    assert not ErrorKind.APPLICATION.is_system and not ErrorKind.TIMEOUT.is_system
    assert not ErrorKind.CANCELLED.is_system and not ErrorKind.CORRUPT_INPUT.is_system


def test_every_member_is_commented():
    source = open(sys.modules[ErrorKind.__module__].__file__, encoding="utf-8").read()
    for kind in ErrorKind:
        line = next(ln for ln in source.splitlines() if ln.strip().startswith(f'{kind.name} = "{kind.value}"'))
        assert "  # " in line, line


def test_error_kind_reads_and_prints_as_its_string():
    kind = ErrorKind.TIMEOUT
    assert kind == "timeout" and "timeout" == kind and kind in {"timeout"}
    assert str(kind) == f"{kind}" == "timeout" and f"({kind})" == "(timeout)" and f"{kind:>8}" == " timeout"
    assert json.dumps({"kind": kind}) == '{"kind": "timeout"}'


def test_error_info_takes_a_plain_string_kind():
    err = ErrorInfo("builtins.ValueError", "bad", "", kind="worker_died")
    assert err.kind is ErrorKind.WORKER_DIED and err.kind.is_system
    assert ErrorInfo("builtins.ValueError", "bad", "").kind is ErrorKind.APPLICATION
    with pytest.raises(ValueError):
        ErrorInfo("builtins.ValueError", "bad", "", kind="no_such_kind")


# --- ErrorInfo and AttemptMeta round trips ----------------------------------------------------------

@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_error_info_pickle_round_trip_keeps_every_field(dumps):
    err = error_info(KeyError("k"), kind=ErrorKind.CORRUPT_INPUT)
    err = ErrorInfo(err.type, err.message, err.traceback, err.kind, err.mro, "producer", err.exception_bytes)
    back = pickle.loads(dumps(err))
    assert back == err and back.kind is ErrorKind.CORRUPT_INPUT
    assert (back.mro, back.detail, back.exception_bytes) == (err.mro, "producer", err.exception_bytes)
    assert isinstance(back.exception(), KeyError)


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_attempt_meta_pickle_round_trip(dumps):
    meta = AttemptMeta(1.0, 2.5, "node-a", 42, error_info(ValueError("x"), kind=ErrorKind.TIMEOUT),
                       IOCounts(10, 20, 0.5), "printed\n")
    back = pickle.loads(dumps(meta))
    assert back == meta and type(back) is AttemptMeta and type(back.io) is IOCounts
    assert back.error.kind is ErrorKind.TIMEOUT and back.io.bytes_read == 20 and back.output_tail == "printed\n"


def test_attempt_meta_still_unpacks_positionally():
    meta = AttemptMeta(1.0, 2.0, "local", 7, None, NO_IO)
    started, ended, node_id, pid, error, io, *tail = meta
    assert (started, ended, node_id, pid, error, io) == (1.0, 2.0, "local", 7, None, (0, 0, 0.0))
    assert tail == ["", "", "", "", ""]  # output tail, SHA-256, codec, worker's key, reused (output_tail's default "")
    assert AttemptRecord(1, 0.0).output_tail == ""
    written, read, storage_s = io
    assert (written, read, storage_s) == (0, 0, 0.0)


def _record(kind: ErrorKind) -> NodeRecord:
    err = error_info(RuntimeError(kind.value), kind=kind)
    att = AttemptRecord(1, 0.0, 1.0, 2.0, "n", 1, err, output_tail="out")
    return NodeRecord(kind.value, 0, NodeStatus.FAILED, [att], err)


def test_run_result_json_round_trip_gives_error_kinds_back():
    nodes = {k.value: _record(k) for k in ErrorKind}
    result = RunResult("p", "r", "local", [list(nodes)], nodes, 0.0, 1.0)
    body = json.loads(result.to_json())
    assert {n["error"]["kind"] for n in body["nodes"].values()} == ALL_KINDS  # stored as the plain strings
    back = RunResult.from_json(result.to_json())
    for kind in ErrorKind:
        rec = back.nodes[kind.value]
        assert rec.error.kind is kind and rec.attempt_history[0].error.kind is kind
        assert rec.attempt_history[0].output_tail == "out"


# --- what a worker returns -----------------------------------------------------------------------

def _ctx() -> NodeContext:
    return NodeContext("p", "r", "n", 1, 1)


def test_run_attempt_returns_named_meta():
    meta, value = run_attempt(lambda x: x + 1, {}, ["x"], [1], _ctx(), "local")
    assert value == 2 and type(meta) is AttemptMeta and type(meta.io) is IOCounts
    assert meta.error is None and meta.io == NO_IO and meta.output_tail == "" and meta.pid == os.getpid()
    assert meta.worker_node_id == "local" and meta.started_at <= meta.ended_at


def test_run_attempt_failure_and_output_tail():
    def loud():
        print("hello from the node")
        raise ValueError("nope")

    meta, value = run_attempt(loud, {}, [], [], _ctx(), "local")
    assert value is FAILED and meta.error.kind is ErrorKind.APPLICATION and meta.error.type_name == "ValueError"
    assert "hello from the node" in meta.output_tail


def test_run_attempt_on_a_failed_input_is_upstream_failed():
    meta, value = run_attempt(lambda x: x, {}, ["x"], [FAILED], _ctx(), "local")
    assert value is FAILED and meta.error.kind is ErrorKind.UPSTREAM_FAILED and meta.io == NO_IO


@pytest.mark.parametrize("meta", [
    AttemptMeta(1.0, 2.0, "ab" * 28, 99, None, IOCounts(5, 6, 0.25)),  # success without output: packed bytes
    AttemptMeta(1.0, 2.0, "ab" * 28, 99, None, IOCounts(5, 6, 0.25), "", "cd" * 32, "pickle"),  # with a data version
    AttemptMeta(1.0, 2.0, "ab" * 28, 99, None, IOCounts(5, 6, 0.25), "printed"),
    AttemptMeta(1.0, 2.0, "ab" * 28, 99, None, IOCounts(5, 6, 0.25), "printed", "ef" * 32),
    AttemptMeta(1.0, 2.0, "ab" * 28, 99, None, IOCounts(0, 0, 0.01), "", "cd" * 32, "json", "12" * 32, "cached"),
    AttemptMeta(1.0, 2.0, "ab" * 28, 99, None, IOCounts(5, 6, 0.25), "", "cd" * 32, "arrow", "34" * 32),
    AttemptMeta(1.0, 2.0, "ab" * 28, 99, error_info(OSError("disk"), kind=ErrorKind.STORAGE), NO_IO),
], ids=["packed", "packed-sha", "output", "output-sha", "keyed-in-worker-reused", "keyed-in-worker-ran", "error"])
def test_ray_wire_form_round_trip(meta):
    wire = ray_tasks._wire_meta(meta)
    if meta.error is None and not meta.output_tail:
        assert type(wire) is bytes
    else:  # a plain tuple, all the way down: Ray pickles it faster than a NamedTuple
        assert type(wire) is tuple and type(wire[5]) is tuple
    back = ray_tasks._unpack_meta(pickle.loads(cloudpickle.dumps(wire)))
    assert back == meta and type(back) is AttemptMeta and type(back.io) is IOCounts
    if meta.error is not None:
        assert back.error.kind is meta.error.kind


def test_task_spec_is_read_back_named():
    spec = TaskSpec("key", b"fn", None, ("a", "b"), "p", "r-1", "n", 3, 1.5, None)
    back = ray_tasks._spec(cloudpickle.dumps(tuple(spec), protocol=5))
    assert back == spec and type(back) is TaskSpec and back.input_names == ("a", "b") and back.timeout_s == 1.5


@pytest.mark.parametrize("fn_size", [10, ray_tasks._SPEC_KEY_MAX + 1], ids=["small", "large"])
def test_task_spec_cache_tells_specs_apart_and_reads_each_once(monkeypatch, fn_size):
    """A worker unpickles a spec once: again only for different bytes (here: another run id)."""
    monkeypatch.setattr(ray_tasks, "_SPECS", {})
    loads = []
    real = ray_tasks.cloudpickle.loads
    monkeypatch.setattr(ray_tasks.cloudpickle, "loads", lambda b: loads.append(1) or real(b))
    specs = [TaskSpec("key", b"f" * fn_size, None, ("a",), "p", run, "n", 3, None, None) for run in ("r-1", "r-2")]
    wires = [pickle.dumps(tuple(s), protocol=5) for s in specs]
    assert [ray_tasks._spec(w) for w in wires + [bytes(w) for w in wires]] == specs + specs
    assert len(loads) == 2


def test_process_id_is_the_childs_after_a_fork():
    from odibi_ray.execution.attempt import process_id

    assert process_id() == os.getpid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report what it reads, and leave at once
        os.write(write, str(process_id() == os.getpid()).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    assert os.read(read, 16) == b"True"
    os.close(read)



@pytest.mark.parametrize("call", [1, 7, (2, None, (0, "x", "p", None), None)], ids=["first", "seventh", "tuple"])
def test_task_head_carries_the_spec_and_the_call(call):
    """A plain attempt's number travels in the spec's bytes (one task argument); a call tuple stays an argument."""
    spec = TaskSpec("key", b"fn", None, ("a",), "p", "r-1", "n", 3, None, None)
    head, apart = ray_tasks._head(pickle.dumps(tuple(spec), protocol=5), call)
    assert type(head) is bytes and apart == isinstance(call, tuple)
    args = ((call,) if apart else ()) + ("input",)
    back, got, inputs = ray_tasks._read_head(head, args)
    assert back == spec and got == call and list(inputs) == ["input"]

# --- the Backend protocol -------------------------------------------------------------------------

def test_backend_protocol_declares_the_scheduler_switches():
    hints = get_type_hints(Backend)
    assert hints["speculative"] is bool and hints["worker_timeouts"] is bool


@pytest.mark.parametrize("backend, speculative, worker_timeouts", [
    (LocalBackend(max_workers=1), False, False),
    (RayBackend(), True, True),  # constructing it does not connect to Ray
], ids=["local", "ray"])
def test_both_backends_define_the_switches(backend, speculative, worker_timeouts):
    for name, want in (("speculative", speculative), ("worker_timeouts", worker_timeouts)):
        assert name in type(backend).__dict__ and getattr(backend, name) is want


# --- end to end -----------------------------------------------------------------------------------

def _chatty_failure():
    print("about to fail")
    raise ValueError("on purpose")


def test_failure_and_output_cross_a_real_backend(backend):
    dag = DAG("boundary")
    dag.add_node(Node("bad", _chatty_failure, retry=RetryPolicy(max_attempts=1)))
    dag.add_node(Node("after", lambda x: x, inputs={"x": "bad"}))
    result = run(dag, backend=backend, progress=False)
    att = result.nodes["bad"].attempt_history[0]
    assert att.error.kind is ErrorKind.APPLICATION and "about to fail" in att.output_tail
    assert att.worker_pid and att.worker_node_id and att.started_at <= att.ended_at
    assert result.nodes["after"].status is NodeStatus.SKIPPED
