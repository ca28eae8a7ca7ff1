"""Fault catalogue, outputs and workers: every run ends with a clear account.

- A node whose output cannot be serialised fails itself (its name and the output's type in the error), its
  consumers are skipped, and no result access raises a Ray error for a node reported succeeded.
- A worker that dies (``os._exit``, SIGKILL) fails or retries its node exactly as the policy says, and the tasks
  the engine discarded never show up as Ray "Unhandled error" lines.
- Bit rot in a stored checkpoint that keeps its size and mtime is caught by the SHA-256 check and recomputed.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import stat
import threading
import time
import uuid
from pathlib import Path

import pytest

from odibi_ray import (
    DAG,
    Node,
    NodeStatus,
    OutputUnavailableError,
    RetryPolicy,
    current_context,
    run,
)
from odibi_ray.checkpoint import layout
from odibi_ray.checkpoint.codecs import CodecError
from odibi_ray.errors import UnserialisableOutputError

from .cp_nodes import ran

# --- node functions (module level: Ray workers import them by reference) ----------------------------

def _mark(marks: str, name: str) -> None:
    Path(marks, f"{name}.{uuid.uuid4().hex[:8]}").write_text(str(os.getpid()))


def make_lock(marks: str):
    _mark(marks, "producer")
    return threading.Lock()


def make_generator(marks: str):
    _mark(marks, "producer")
    return (i for i in range(3))


def make_dict_holding_a_lock(marks: str):
    _mark(marks, "producer")
    return {"rows": [1, 2, 3], "lock": threading.Lock()}


def consume(value, marks: str):
    _mark(marks, "consumer")
    return f"consumed {type(value).__name__}"


def independent(marks: str):
    _mark(marks, "independent")
    return {"answer": 42}


def dies_on_first_attempt(marks: str, how: str):
    _mark(marks, "a")
    if current_context().attempt == 1:
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(1)  # the worker process dies, as on a segfault
    return 10


def add_one(x, marks: str, me: str):
    _mark(marks, me)
    return x + 1


def wait_forever(marks: str):
    _mark(marks, "slow")
    time.sleep(60)
    return "too late"


def numbers(marks: str):
    _mark(marks, "src")
    return list(range(100))


def doubled_sum(xs, marks: str):
    _mark(marks, "dbl")
    return 2 * sum(xs)


PRODUCERS = {
    "lock": (make_lock, "_thread.lock", "cannot pickle '_thread.lock' object"),
    "generator": (make_generator, "builtins.generator", "cannot pickle 'generator' object"),
    "nested": (make_dict_holding_a_lock, "builtins.dict", "cannot pickle '_thread.lock' object"),
}


def output_dag(kind: str, marks, retry: RetryPolicy | None = None) -> DAG:
    dag = DAG(f"unserialisable_{kind}")
    dag.add_node(Node("producer", PRODUCERS[kind][0], params={"marks": str(marks)}, retry=retry))
    dag.add_node(Node("consumer", consume, inputs={"value": "producer"}, params={"marks": str(marks)}))
    dag.add_node(Node("independent", independent, params={"marks": str(marks)}))
    return dag


def every_succeeded_output_is_readable(result) -> None:
    """No node reported as having its output raises anything (a Ray error least of all) when it is read."""
    for name, rec in result.nodes.items():
        if rec.status.ok:
            result[name]
        else:
            with pytest.raises(OutputUnavailableError, match=f"node {name!r} has no output"):
                result[name]


# --- unserialisable outputs ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(PRODUCERS))
def test_an_unserialisable_output_fails_its_own_node_on_ray(ray_local, marks, kind):
    _, type_name, reason = PRODUCERS[kind]
    result = run(output_dag(kind, marks), progress=False)
    producer, consumer = result.nodes["producer"], result.nodes["consumer"]
    assert producer.status is NodeStatus.FAILED and producer.attempts == 1
    assert producer.error.type_name == "UnserialisableOutputError" and producer.error.kind == "application"
    assert producer.error.message == (f"node 'producer' returned a value of type {type_name} that cannot be "
                                      f"serialised for its consumers: TypeError: {reason}")
    exc = producer.error.exception()
    assert isinstance(exc, UnserialisableOutputError)
    assert (exc.node, exc.value_type) == ("producer", type_name)
    assert consumer.status is NodeStatus.SKIPPED and consumer.attempts == 0
    assert consumer.reason == "upstream node 'producer' failed"
    assert result.nodes["independent"].status is NodeStatus.SUCCEEDED
    assert result["independent"] == {"answer": 42}
    every_succeeded_output_is_readable(result)
    with pytest.raises(Exception) as raised:
        result.raise_for_status()
    assert "UnserialisableOutputError" in str(raised.value) and "'producer'" in str(raised.value)
    assert ran(marks) == {"producer": 1, "independent": 1}  # the consumer's body never ran


def test_an_unserialisable_output_is_retried_only_when_the_policy_says_so(ray_local, tmp_path):
    """An application error of the node: ``retry_on`` decides, as for anything else the node raises."""
    for retry, attempts in ((RetryPolicy(max_attempts=3, delay_s=0), 3),  # retry_on=(Exception,): every error
                            (RetryPolicy(max_attempts=3, delay_s=0, retry_on=(IOError,)), 1)):
        marks = tmp_path / f"marks{attempts}"
        marks.mkdir()
        result = run(output_dag("lock", marks, retry=retry), progress=False)
        rec = result.nodes["producer"]
        assert rec.status is NodeStatus.FAILED and rec.attempts == attempts
        assert [a.error.type_name for a in rec.attempt_history] == ["UnserialisableOutputError"] * attempts
        assert result.nodes["consumer"].status is NodeStatus.SKIPPED
        assert ran(marks) == {"producer": attempts, "independent": 1}


@pytest.mark.parametrize("backend", ["local", "ray"])
@pytest.mark.parametrize("kind", ["lock", "nested"])
def test_with_storage_an_unserialisable_output_is_a_codec_error_of_its_node(backend, kind, tmp_path, marks,
                                                                             request):
    if backend == "ray":
        request.getfixturevalue("ray_local")
    _, type_name, reason = PRODUCERS[kind]
    result = run(output_dag(kind, marks), backend=backend, storage=str(tmp_path / "store"), progress=False)
    producer = result.nodes["producer"]
    assert producer.status is NodeStatus.FAILED and producer.attempts == 1
    assert producer.error.type_name == "CodecError" and producer.error.kind == "application"  # on both backends
    assert producer.error.message == (f"node 'producer': cannot serialise a node output of type {type_name}: "
                                      f"TypeError: {reason}")
    assert isinstance(producer.error.exception(), CodecError)
    assert result.nodes["consumer"].status is NodeStatus.SKIPPED and result.nodes["consumer"].attempts == 0
    assert result.nodes["independent"].status is NodeStatus.SUCCEEDED
    assert result["independent"] == {"answer": 42}
    every_succeeded_output_is_readable(result)
    assert ran(marks) == {"producer": 1, "independent": 1}


def test_an_output_the_backend_cannot_fetch_is_an_odibi_error_naming_its_node():
    """E.g. an output lost with its Ray node after the node succeeded: never the backend's bare error."""
    from odibi_ray import RunResult
    from odibi_ray.execution.result import NodeRecord

    class LostObject(Exception):  # stands for Ray's ObjectLostError
        pass

    def fetch(names):
        if "lost" in names:
            raise LostObject("object 00ff was lost with its node")
        return [f"value of {n}" for n in names]

    nodes = {n: NodeRecord(n, 0, status=NodeStatus.SUCCEEDED) for n in ("kept", "lost")}
    result = RunResult("p", "r", "ray", [["kept", "lost"]], nodes, 0.0, 1.0, _fetch=fetch)
    with pytest.raises(OutputUnavailableError, match="node 'lost' succeeded but its output cannot be fetched: "
                                                     "LostObject: object 00ff was lost") as raised:
        result.outputs()
    assert isinstance(raised.value.__cause__, LostObject)
    assert result["kept"] == "value of kept"  # what could be fetched is there


def test_without_storage_the_local_backend_passes_an_unpicklable_output_in_memory(marks):
    result = run(output_dag("lock", marks), backend="local", progress=False).raise_for_status()
    assert type(result["producer"]) is type(threading.Lock())
    assert result["consumer"] == "consumed lock"
    assert result["independent"] == {"answer": 42}
    assert ran(marks) == {"producer": 1, "consumer": 1, "independent": 1}


# --- dead workers, and no "Unhandled error" for what the engine discarded ------------------------------

class _Captured(logging.Handler):
    """Ray's "Unhandled error" lines: Ray logs them on its worker logger in the driver process."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def unhandled_errors():
    handler = _Captured()
    logger = logging.getLogger("ray._private.worker")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def raises_later():
    time.sleep(0.3)
    raise ValueError("nobody reads this")


def settle_and_collect(ray, handler: _Captured) -> list[str]:
    """Drop what the run left, then wait until Ray has had every chance to log an unhandled error.

    A control task's error, whose ref is dropped while it is pending, must be reported: that proves the capture
    works, and it is submitted after the run, so discarded tasks (which fail as soon as their crashed input's
    failure reaches them) had as long to be reported."""
    gc.collect()
    control = ray.remote(max_retries=0)(raises_later).options(name="control_task").remote()
    del control
    deadline = time.monotonic() + 30
    while not any("control_task" in m for m in handler.messages) and time.monotonic() < deadline:
        time.sleep(0.05)
        gc.collect()
    assert any("control_task" in m for m in handler.messages), "Ray's unhandled-error log was not captured"
    time.sleep(0.5)
    gc.collect()
    return [m for m in handler.messages if "control_task" not in m]


CRASH_CASES = {
    # how the worker dies, RetryPolicy of the crashing node, fail_fast
    "exit-no-retry": ("exit", RetryPolicy(max_attempts=3, retry_system_failures=False), False),
    "sigkill-no-retry": ("sigkill", RetryPolicy(max_attempts=1), False),
    "exit-fail-fast": ("exit", RetryPolicy(max_attempts=1), True),
    "exit-retried": ("exit", RetryPolicy(max_attempts=2, delay_s=0.01), False),
    "sigkill-retried": ("sigkill", RetryPolicy(max_attempts=2, delay_s=0.01, retry_system_failures=True), False),
}


@pytest.mark.parametrize("case", sorted(CRASH_CASES))
def test_a_dead_worker_is_accounted_for_and_discarded_tasks_are_never_unhandled_errors(ray_local, marks, case,
                                                                                          unhandled_errors):
    how, retry, fail_fast = CRASH_CASES[case]
    m = str(marks)
    dag = DAG(f"crash_{case.replace('-', '_')}")
    dag.add_node(Node("a", dies_on_first_attempt, params={"marks": m, "how": how}, retry=retry))
    dag.add_node(Node("b", add_one, inputs={"x": "a"}, params={"marks": m, "me": "b"}))
    dag.add_node(Node("c", add_one, inputs={"x": "b"}, params={"marks": m, "me": "c"}))
    dag.add_node(Node("d", add_one, inputs={"x": "a"}, params={"marks": m, "me": "d"}))
    if fail_fast:  # holds a CPU until the run fails fast and cancels it
        dag.add_node(Node("slow", wait_forever, params={"marks": m}))
    result = run(dag, progress=False, fail_fast=fail_fast)
    statuses = {n: (r.status, r.attempts) for n, r in result.nodes.items()}
    a = result.nodes["a"]
    assert a.attempt_history[0].error.kind == "worker_died"
    assert a.attempt_history[0].error.type_name == "SystemFailureError"
    if retry.max_attempts > 1 and retry.retry_system_failures:
        assert statuses == {"a": (NodeStatus.SUCCEEDED, 2), "b": (NodeStatus.SUCCEEDED, 1),
                            "c": (NodeStatus.SUCCEEDED, 1), "d": (NodeStatus.SUCCEEDED, 1)}
        assert result.outputs() == {"a": 10, "b": 11, "c": 12, "d": 11}
        # the attempts discarded with a's first one never ran their bodies; none counts as an attempt
        assert ran(marks) == {"a": 2, "b": 1, "c": 1, "d": 1}
    else:
        expected = {"a": (NodeStatus.FAILED, 1), "b": (NodeStatus.SKIPPED, 0), "c": (NodeStatus.SKIPPED, 0),
                    "d": (NodeStatus.SKIPPED, 0)}
        if fail_fast:
            expected["slow"] = (NodeStatus.CANCELLED, 1)
        assert statuses == expected
        assert a.error.kind == "worker_died"
        assert all(result.nodes[n].reason == "upstream node 'a' failed" for n in "bcd")
        assert {k: v for k, v in ran(marks).items() if k != "slow"} == {"a": 1}
        every_succeeded_output_is_readable(result)
    del result, a
    leaked = settle_and_collect(ray_local, unhandled_errors)
    assert not [msg for msg in leaked if "Unhandled error" in msg], leaked


# --- bit rot that keeps size and mtime -----------------------------------------------------------------

def rot_in_place(storage, key: str) -> None:
    """Flip one bit of one digit of a stored JSON output in place: same size, mtime put back, the adapter's
    metadata record (size, mtime) still matching. The payload still decodes, to a wrong value: only the SHA-256
    can tell."""
    path = Path(storage.root, *key.split("/"))
    before = os.stat(path)
    data = path.read_bytes()
    at = next(i for i in range(len(data) // 2, len(data)) if data[i:i + 1].isdigit())
    os.chmod(path, before.st_mode | stat.S_IWUSR)
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(bytes([data[at] ^ 0x01]))  # '0' <-> '1', '2' <-> '3', ...: still a digit
    os.chmod(path, stat.S_IMODE(before.st_mode))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert path.read_bytes() != data
    assert storage.head(key).metadata["sha256"]  # still trusted as a record: the plan cannot see the rot


def rot_dag(marks, dbl_version: str = "1") -> DAG:
    dag = DAG("rot")
    dag.add_node(Node("src", numbers, params={"marks": str(marks)}))
    dag.add_node(Node("dbl", doubled_sum, inputs={"xs": "src"}, params={"marks": str(marks)}, version=dbl_version))
    return dag


@pytest.mark.parametrize("backend", ["local", "ray"])
@pytest.mark.parametrize("rotten", ["src", "dbl"])
def test_bit_rot_that_keeps_size_and_mtime_is_caught_by_the_sha256_and_recomputed(local_storage, marks, backend,
                                                                                   rotten, request):
    if backend == "ray":
        request.getfixturevalue("ray_local")
    expected = 2 * sum(range(100))
    first = run(rot_dag(marks), backend=backend, storage=local_storage, progress=False).raise_for_status()
    assert first["dbl"] == expected and ran(marks) == {"src": 1, "dbl": 1}
    rot_in_place(local_storage, layout.object_key("rot", first.nodes[rotten].cache_key))
    if rotten == "src":
        # dbl changed: it runs and reads src's stored output in its worker, which finds the rot
        again = run(rot_dag(marks, dbl_version="2"), backend=backend, storage=local_storage, progress=False)
        assert again.nodes["src"].status is NodeStatus.SUCCEEDED
        assert again.nodes["src"].reason == "stored output was corrupt or missing; recomputed"
        assert again.nodes["dbl"].status is NodeStatus.SUCCEEDED and again.nodes["dbl"].attempts == 1
        assert again.stats["corrupt_objects"] == 1
        assert again["src"] == list(range(100)) and again["dbl"] == expected
        assert ran(marks) == {"src": 2, "dbl": 2}
    else:
        # nothing changed: both reused, the result reads dbl from storage and finds the rot
        again = run(rot_dag(marks), backend=backend, storage=local_storage, progress=False)
        assert {n: r.status for n, r in again.nodes.items()} == {"src": NodeStatus.CACHED, "dbl": NodeStatus.CACHED}
        assert again["dbl"] == expected  # never the rotten value
        assert again.nodes["dbl"].status is NodeStatus.SUCCEEDED and "unusable" in again.nodes["dbl"].reason
        assert again.stats["corrupt_objects"] == 1
        assert ran(marks) == {"src": 1, "dbl": 2}
    third = run(rot_dag(marks, dbl_version="2" if rotten == "src" else "1"), backend=backend, storage=local_storage,
                progress=False)
    assert {r.status for r in third.nodes.values()} == {NodeStatus.CACHED}  # repaired in storage
    assert third["dbl"] == expected and third["src"] == list(range(100)) and third.stats["corrupt_objects"] == 0
