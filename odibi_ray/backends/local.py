"""In-process backend: node attempts run in a thread pool, no Ray needed (debugging, small jobs)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import time
from typing import Any, Sequence

from ..attempt import AttemptMeta, error_info, run_attempt
from ..context import NodeContext
from ..errors import SystemFailureError
from ..node import Node


class LocalBackend:
    """Runs each attempt as a call in a :class:`~concurrent.futures.ThreadPoolExecutor`.

    Same scheduling, retries and records as the Ray backend. Resource requests are not enforced
    (only ``max_workers`` bounds concurrency). Timeouts are timed by the scheduler from the thread's
    start; a timed-out attempt cannot be killed: it is recorded as failed and its thread is abandoned
    (its result ignored) until it returns.
    """

    name = "local"
    speculative = False  # a thread waiting for its inputs would hold a pool slot
    worker_timeouts = False  # the scheduler times attempts (from their start) and abandons the thread

    def __init__(self, max_workers: int | None = None) -> None:
        self.max_workers = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self._pool: cf.ThreadPoolExecutor | None = None
        self._starts: dict[cf.Future, list[float]] = {}

    def prepare(self, nodes: Sequence[Node]) -> None:
        self._pool = cf.ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="odibi-node")

    def submit(self, node: Node, ctx: NodeContext, inputs: Sequence[cf.Future]) -> cf.Future:
        assert self._pool is not None, "prepare() first"
        values = [f.result()[1] for f in inputs]  # inputs are done: the scheduler waits for them
        names = list(node.inputs)
        box: list[float] = []
        fut = self._pool.submit(_timed, box, node.fn, node.params, names, values, ctx)
        self._starts[fut] = box
        return fut

    def started(self, handle: cf.Future) -> float | None:
        """When the attempt's thread began (``time.monotonic``), or None while it is queued."""
        box = self._starts.get(handle)
        return box[0] if box else None

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
                now = time.time()
                err = error_info(SystemFailureError("system", f"{type(exc).__name__}: {exc}"), kind="system")
                out.append((now, now, "local", os.getpid(), err))
        return out

    def cancel(self, handle: cf.Future) -> None:
        self._starts.pop(handle, None)
        handle.cancel()  # only stops an attempt that has not started; a running thread is abandoned

    def fetch(self, handle: cf.Future) -> Any:
        return handle.result()[1]

    def fetch_many(self, handles: Sequence[cf.Future]) -> list[Any]:
        return [h.result()[1] for h in handles]

    def alive_nodes(self) -> set[str]:
        return {"local"}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _timed(box: list[float], fn: Any, params: Any, names: Any, values: Any, ctx: NodeContext) -> Any:
    box.append(time.monotonic())
    return run_attempt(fn, params, names, values, ctx, "local")
