"""The driver loop: submit ready nodes in level order, collect completions in batches, retry, propagate.

Backend-independent: the same loop drives Ray tasks and local threads, so both give the same records.
Retries live here and only here: a task runs one attempt, and on failure :func:`should_retry` and
:func:`~odibi_ray.policy.compute_delay` decide; the wait is a timer, never a sleep that blocks others.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import time
from typing import Any, Hashable

from .attempt import error_info
from .backends.base import Backend
from .context import NodeContext
from .dag import DAG
from .errors import NodeTimeoutError
from .policy import SYSTEM_FAILURE_KINDS, RetryPolicy, compute_delay
from .result import AttemptRecord, ErrorInfo, NodeRecord, NodeStatus, RunResult

log = logging.getLogger(__name__)


def should_retry(policy: RetryPolicy, error: ErrorInfo, attempt: int) -> bool:
    """Whether attempt number ``attempt`` (1-based), which failed with ``error``, gets another try."""
    if attempt >= policy.max_attempts:
        return False
    if error.kind == "application":
        return policy.retries_exception(error.mro)
    if error.kind == "timeout":
        return policy.retry_on_timeout
    if error.kind in SYSTEM_FAILURE_KINDS:
        return policy.retry_system_failures
    return False  # cancelled


class ProgressSink:
    """Receives progress events from the scheduler; the default does nothing."""

    def start(self, levels: list[list[str]]) -> None: ...

    def node_done(self, name: str, level: int, status: NodeStatus) -> None: ...

    def stop(self) -> None: ...


class Scheduler:
    """Runs one validated DAG once on one backend. Use :func:`odibi_ray.run` rather than this."""

    def __init__(self, dag: DAG, backend: Backend, *, run_id: str, levels: list[list[str]], barrier: bool = False,
                 fail_fast: bool = False, rng: random.Random | None = None,
                 progress: ProgressSink | None = None) -> None:
        self.dag, self.backend, self.run_id = dag, backend, run_id
        self.levels = levels
        self.barrier, self.fail_fast = barrier, fail_fast
        self.rng = rng or random.Random()
        self.progress = progress or ProgressSink()
        self._nodes = dag.nodes
        self._children = dag.downstream_map()
        self._level_of = {n: i for i, names in enumerate(levels) for n in names}
        self._rank = {n: i for i, n in enumerate(itertools.chain.from_iterable(levels))}
        self.records = {n: NodeRecord(n, self._level_of[n]) for n in self._rank}
        self._waiting_on = {n: len(self._nodes[n].upstream) for n in self._rank}
        self._left_in_level = [len(names) for names in levels]
        self._current_level = 0
        self._ready: list[tuple[int, str]] = []  # (rank, name): level order, then insertion order
        self._timers: list[tuple[float, int, str]] = []  # (due, seq, name) for retries
        self._deadlines: list[tuple[float, int, Hashable]] = []
        self._running: dict[Hashable, str] = {}
        self._outputs: dict[str, Hashable] = {}  # handle of each node's successful attempt
        self._seq = itertools.count()
        self._open = len(self._rank)

    # --- main loop ------------------------------------------------------------------------------

    def run(self) -> RunResult:
        started = time.time()
        self.backend.prepare([self._nodes[n] for n in self._rank])
        self.progress.start(self.levels)
        try:
            for n, waiting in self._waiting_on.items():
                if waiting == 0:
                    heapq.heappush(self._ready, (self._rank[n], n))
            self._loop()
        finally:
            self.progress.stop()
        outputs = self._outputs
        backend = self.backend
        return RunResult(self.dag.name, self.run_id, backend.name, self.levels, self.records, started, time.time(),
                         _fetch=lambda name: backend.fetch(outputs[name]))

    def _loop(self) -> None:
        while self._open:
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, name = heapq.heappop(self._timers)
                heapq.heappush(self._ready, (self._rank[name], name))
            self._submit_ready()
            self._expire_deadlines(now)
            if not self._open:
                break
            wake = [t[0][0] for t in (self._timers, self._deadlines) if t]
            timeout = max(0.0, min(wake) - time.monotonic()) if wake else None
            if not self._running:
                if timeout is None:
                    raise RuntimeError(f"scheduler stalled with {self._open} open node(s)")  # a bug, not a user error
                time.sleep(timeout)
                continue
            done = self.backend.wait(list(self._running), timeout)
            if done:
                for handle, meta in zip(done, self.backend.outcomes(done)):
                    self._finish_attempt(handle, meta)

    def _submit_ready(self) -> None:
        while self._ready:
            rank, name = self._ready[0]
            if self.barrier and self._level_of[name] > self._current_level:
                return
            heapq.heappop(self._ready)
            node = self._nodes[name]
            rec = self.records[name]
            attempt = rec.attempts + 1
            ctx = NodeContext(self.dag.name, self.run_id, name, attempt, self.dag.policy_of(name).max_attempts)
            rec.attempt_history.append(AttemptRecord(number=attempt, submitted_at=time.time()))
            rec.status = NodeStatus.RUNNING
            handle = self.backend.submit(node, ctx, [self._outputs[u] for u in node.inputs.values()])
            self._running[handle] = name
            if node.timeout_s is not None:
                heapq.heappush(self._deadlines, (time.monotonic() + node.timeout_s, next(self._seq), handle))

    def _expire_deadlines(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, handle = heapq.heappop(self._deadlines)
            name = self._running.pop(handle, None)
            if name is None:
                continue  # finished in time
            self.backend.cancel(handle)
            node = self._nodes[name]
            att = self.records[name].attempt_history[-1]
            att.ended_at = time.time()
            exc = NodeTimeoutError(f"node {name!r} attempt {att.number} exceeded timeout_s={node.timeout_s} "
                                   "and was cancelled")
            self._attempt_failed(name, error_info(exc, kind="timeout", traceback_text=str(exc)))

    # --- outcomes -------------------------------------------------------------------------------

    def _finish_attempt(self, handle: Hashable, meta: Any) -> None:
        name = self._running.pop(handle, None)
        if name is None:
            return  # timed out or cancelled already
        started, ended, node_id, pid, error = meta
        att = self.records[name].attempt_history[-1]
        att.started_at, att.ended_at, att.worker_node_id, att.worker_pid = started, ended, node_id, pid
        if error is not None:
            self._attempt_failed(name, error)
            return
        self._outputs[name] = handle
        self._close(name, NodeStatus.SUCCEEDED)
        for child in self._children[name]:
            self._waiting_on[child] -= 1
            if self._waiting_on[child] == 0 and self.records[child].status is NodeStatus.PENDING:
                heapq.heappush(self._ready, (self._rank[child], child))

    def _attempt_failed(self, name: str, error: ErrorInfo) -> None:
        rec = self.records[name]
        rec.attempt_history[-1].error = error
        policy = self.dag.policy_of(name)
        if should_retry(policy, error, rec.attempts):
            delay = compute_delay(policy, rec.attempts, self.rng)
            log.info("node %r attempt %d failed (%s: %s); retrying in %.2fs", name, rec.attempts, error.type_name,
                     error.message, delay)
            rec.status = NodeStatus.PENDING
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), name))
            return
        log.warning("node %r failed after %d attempt(s): %s: %s", name, rec.attempts, error.type_name, error.message)
        rec.error = error
        self._close(name, NodeStatus.FAILED)
        for d in self._descendants(name):
            if not self.records[d].status.done:
                self.records[d].reason = f"upstream node {name!r} failed"
                self._close(d, NodeStatus.SKIPPED)
        if self.fail_fast:
            self._abort(f"fail_fast: node {name!r} failed")

    def _abort(self, reason: str) -> None:
        """Cancel every running attempt and every node not yet finished."""
        for handle, name in list(self._running.items()):
            self.backend.cancel(handle)
            att = self.records[name].attempt_history[-1]
            att.ended_at = time.time()
            att.error = ErrorInfo("odibi_ray.errors.ExecutionError", reason, "", kind="cancelled")
        self._running.clear()
        self._ready.clear()
        self._timers.clear()
        self._deadlines.clear()
        for name, rec in self.records.items():
            if not rec.status.done:
                rec.reason = reason
                self._close(name, NodeStatus.CANCELLED)

    def _close(self, name: str, status: NodeStatus) -> None:
        rec = self.records[name]
        rec.status = status
        self._open -= 1
        level = rec.level
        self._left_in_level[level] -= 1
        while (self._current_level < len(self._left_in_level) - 1
               and self._left_in_level[self._current_level] == 0):
            self._current_level += 1
        self.progress.node_done(name, level, status)

    def _descendants(self, name: str) -> list[str]:
        seen: dict[str, None] = {}
        todo = list(self._children[name])
        while todo:
            n = todo.pop()
            if n not in seen:
                seen[n] = None
                todo.extend(self._children[n])
        return list(seen)


def new_run_id() -> str:
    """A sortable, unique run id: UTC timestamp plus random suffix."""
    import secrets

    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
