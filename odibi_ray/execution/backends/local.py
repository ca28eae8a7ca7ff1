"""In-process backend: node attempts run in threads of this process, no Ray needed (debugging, small jobs)."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import functools
import os
import threading
import time
from typing import Any, NamedTuple
from collections.abc import Callable, Sequence

from ..attempt import NO_IO, AttemptMeta, error_info, run_attempt
from ..fanout import MapItem, flatten_inputs, item_target, task_input_names
from ..context import NodeContext
from ...errors import SystemFailureError
from ...definition.node import Node
from ..result import ErrorKind


class _Queued(NamedTuple):
    """An attempt waiting for a free slot."""

    future: cf.Future  # its handle; the result is run_attempt's (metadata, output)
    node: str  # names its thread
    call: Callable[[], tuple[AttemptMeta, Any]]  # run_attempt with the attempt's arguments bound


class LocalBackend:
    """Runs each attempt in a daemon thread, at most ``max_workers`` at a time.

    Same scheduling, retries and records as the Ray backend. Resource requests are not enforced
    (only ``max_workers`` bounds concurrency). Timeouts are timed by the scheduler from the thread's
    start; a thread cannot be killed, so a timed-out attempt is recorded as failed and its thread is
    abandoned: it gives up its slot at once (a retry does not wait for it), its result is ignored, and
    being a daemon thread it does not keep the process alive.

    Outputs pass from node to node in memory and are never serialised, so an output that cannot be pickled (a
    lock, a generator, an open connection) is fine here: consumers and ``result[...]`` get the object itself. On
    Ray the same node fails with :class:`~odibi_ray.errors.UnserialisableOutputError`; with checkpoint storage it
    fails on both backends, with a ``CodecError`` naming the node (the worker encodes every output it stores).
    """

    name = "local"
    speculative: bool = False  # a thread waiting for its inputs would hold a slot
    worker_timeouts: bool = False  # the scheduler times attempts (from their start) and abandons the thread

    def __init__(self, max_workers: int | None = None) -> None:
        self.max_workers = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self._lock = threading.Lock()
        self._queue: collections.deque[_Queued] = collections.deque()
        self._running: set[cf.Future] = set()  # futures holding a slot
        self._starts: dict[cf.Future, float] = {}
        self._targets: dict[str, Any] = {}
        self._abandoned: set[cf.Future] = set()

    def prepare(self, nodes: Sequence[Node], targets: dict[str, Any] | None = None) -> None:
        self._targets = targets if targets is not None else {}  # shared: a late key (a mapped node's consumer) shows

    def submit(self, node: Node, ctx: NodeContext, inputs: Sequence[Any], item: MapItem | None = None,
               key: Any = None) -> cf.Future:
        assert key is None, "nodes are keyed in the driver here: their inputs are done when they are submitted"
        # inputs are done: the scheduler waits for them; a mapped input gives one value per item, regrouped in the
        # attempt (its reduce, if any, runs there)
        values, groups = flatten_inputs(inputs, lambda f: f.result()[1])
        mapped_input = any(g is not None for g in groups)
        target = self._targets.get(node.name)
        if item is not None:
            target = item_target(target, node.name, item)
        fut: cf.Future = cf.Future()
        call = functools.partial(run_attempt, node.fn, node.params, list(task_input_names(node)), values, ctx, "local",
                                 target=target, still_wanted=lambda: fut not in self._abandoned,
                                 groups=groups if mapped_input else None, item=item)
        with self._lock:
            self._queue.append(_Queued(fut, ctx.where, call))
            self._pump()
        return fut

    def _pump(self) -> None:
        """Start queued attempts while slots are free (caller holds the lock)."""
        while self._queue and len(self._running) < self.max_workers:
            fut, node, call = self._queue.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            self._running.add(fut)
            self._starts[fut] = time.monotonic()
            threading.Thread(target=self._work, args=(fut, call), daemon=True, name=f"odibi-node-{node}").start()

    def _work(self, fut: cf.Future, call: Callable[[], tuple[AttemptMeta, Any]]) -> None:
        try:
            result = call()
        except BaseException as exc:  # run_attempt reports the node's errors; this is a bug or an interrupt
            fut.set_exception(exc)
        else:
            fut.set_result(result)
        with self._lock:
            self._running.discard(fut)
            self._pump()

    def started(self, handle: cf.Future) -> float | None:
        """When the attempt's thread began (``time.monotonic``), or None while it is queued."""
        return self._starts.get(handle)

    def wait(self, handles: Sequence[cf.Future], timeout: float | None, all_of: bool = False) -> list[cf.Future]:
        done, _ = cf.wait(handles, timeout=timeout, return_when=cf.ALL_COMPLETED if all_of else cf.FIRST_COMPLETED)
        return [h for h in handles if h in done]

    def outcomes(self, handles: Sequence[cf.Future]) -> list[AttemptMeta]:
        out = []
        for h in handles:
            self._starts.pop(h, None)
            try:
                out.append(h.result()[0])
            except BaseException as exc:  # the wrapper itself failed, or the future was cancelled
                err = error_info(SystemFailureError(ErrorKind.SYSTEM, f"{type(exc).__name__}: {exc}"),
                                 kind=ErrorKind.SYSTEM)
                out.append(AttemptMeta(None, time.time(), "local", os.getpid(), err, NO_IO))
        return out

    def cancel(self, handle: cf.Future) -> None:
        """Drop a queued attempt; abandon a running one (its slot is freed, its thread runs on unobserved)."""
        with self._lock:
            self._starts.pop(handle, None)
            if not handle.cancel():
                self._running.discard(handle)
                self._abandoned.add(handle)  # its late result must not be checkpointed
                self._pump()

    def forget(self, handle: cf.Future) -> None:
        pass  # a local attempt is only submitted once its inputs succeeded: nothing to discard

    def fetch(self, handle: cf.Future) -> Any:
        return handle.result()[1]

    def fetch_many(self, handles: Sequence[cf.Future]) -> list[Any]:
        return [h.result()[1] for h in handles]

    def alive_nodes(self) -> set[str]:
        return {"local"}

    def close(self) -> None:
        with self._lock:
            for queued in self._queue:
                queued.future.cancel()
            self._queue.clear()
