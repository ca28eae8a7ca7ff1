"""The driver loop: submit nodes in level order, collect completions in batches, retry, propagate failure.

Backend-independent: the same loop drives Ray tasks and local threads, so both give the same records.
Retries live here and only here: a task runs one attempt, and on failure :func:`should_retry` and
:func:`~odibi_ray.definition.policy.compute_delay` decide; the wait is a timer, never a sleep that blocks others.

On a *speculative* backend (Ray) a node is submitted as soon as its inputs are *submitted*, with their
output refs as arguments: Ray starts it when they are done, without a round trip through this loop.
When an input's attempt fails, the tasks already submitted downstream of it are discarded (they see
the failure marker and return at once) and submitted again after the input's retry. Other backends
submit a node when its inputs have succeeded. ``barrier=True`` runs level by level on any backend.

State
-----
Every node is in exactly one :class:`_State` at any time, and moves only through :meth:`Scheduler._move`, which
refuses a move not in :data:`_MOVES` (like Dagster's ``ActiveExecution`` buckets):

- ``PENDING``       not started: waits for its inputs, or is a candidate in ``_ready`` (a queue of *hints*, each
                    checked again when popped: a stale entry is dropped).
- ``WAITING_RETRY`` an attempt failed and the policy grants another: a timer in ``_timers`` makes it PENDING.
- ``IN_FLIGHT``     one attempt submitted (queued or running): its handle is in ``_inflight`` and ``_live``.
- ``MAPPING``       a mapped node whose items are made (:meth:`Scheduler._expand`) and not all closed.
- ``SUCCEEDED``     computed in this run; the backend holds its output (handle in ``_live``).
- ``CACHED`` / ``RESUMED``  reused from storage; consumers read it there (a :class:`StoredHandle` in ``_live``).
- ``FAILED`` / ``SKIPPED`` / ``CANCELLED``  closed without an output; terminal.

The first four are *open*; the loop ends when none is. A node with an output can be reopened (PENDING again)
when that output is lost with its machine or found unusable in storage; a SUCCEEDED node becomes FAILED after
the loop if its checkpoint, written behind, could not be stored. The public ``NodeRecord.status`` is derived
from the state (:data:`_STATUS`) and written nowhere else. An attempt enters ``NodeRecord.attempt_history``
only once its outcome is accepted: an attempt discarded because an input failed (or was lost) under it never
ran as itself and is not counted.

The other containers: ``_inflight`` (handle -> :class:`_InFlight`: node, input handles, its attempt record),
``_live`` (node -> handle of its in-flight or output-holding attempt), ``_deadlines`` (driver-side timeouts,
local backend), ``_left_in_level`` (open nodes per level, for ``barrier``), ``_reported`` (progress reports
a node once). :meth:`Scheduler.check_invariants` states how they agree with the states.

Fused chains
------------
With fusion on (``run(fuse=True)``, ``Node.fuse``; execution/fusion.py), a node about to be submitted whose chain
successors (``_next``) are PENDING is submitted with them as one task (:meth:`Scheduler._submit_chain`, at most
``MAX_FUSED``): each node still gets its own handle, attempt record and state (IN_FLIGHT), its ``_InFlight`` naming
the task's nodes (``fused``) and, as its input, the handle of the node before it. Outcomes are then handled node by
node as for any task: a node that fails discards the ones after it (they report a failed input) and retries under
its own policy, with the rest of the chain in a new task. A task that failed as a whole (no metadata: its worker
died) charges none of its nodes (:meth:`Scheduler._unfuse`: they go back to PENDING and run unfused for the rest of
the run), nor does an abort while it runs.

Mapped nodes
------------
A mapped node (``Node.map_over``) becomes submittable like any node once its inputs have their outputs; then,
instead of an attempt, :meth:`Scheduler._expand` reads the output it maps over in the driver, splits it into items
(execution/fanout.py) and adds one *item* per element: a node of this state machine of its own, named
``node[i]``, with the mapped node's function, policy and timeout, its own record (``NodeRecord.items``), cache key
and checkpoint; items the store already holds are ``CACHED``/``RESUMED`` at once. The mapped node is ``MAPPING``
while any item is open (``_MapRun.open``) and closes when the last one does (:meth:`Scheduler._close_map`):
succeeded (or cached/resumed when every item was), failed when an item failed for good (unless
``allow_partial``), skipped or cancelled with them. Its output handle (:class:`~.fanout.MapOutput`) holds its
items' handles: consumers receive the items' values, never through the driver. An item that is reopened (its
output lost or found unusable) reopens its mapped node (``-> MAPPING``) and discards its consumers' attempts.
Items count in no level (``_left_in_level``) and have no children; ``max_parallel`` holds items beyond it in
``_MapRun.backlog`` until one in flight leaves that state. With checkpoints, a closed mapped node's key becomes
its items' keys (``CheckpointPlan.close_map``), so the nodes downstream of it (``_deferred``) get their keys, and
are looked up in storage, only when they are about to run (:meth:`Scheduler._resolve`).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import heapq
import itertools
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol
from collections.abc import Hashable, Mapping

from .attempt import HARD_KILL_GRACE_S, AttemptMeta, error_info
from .backends.base import Backend
from .backends.worker_keys import WorkerKey
from .context import NodeContext
from .fanout import Collect, MapItem, MapOutput, item_digest, item_name, split_items
from .fusion import MAX_FUSED, fused_links
from ..definition.mapping import FailedItem, MapSpec
from ..definition.dag import DAG
from ..checkpoint.codecs import CodecError
from ..errors import CorruptObjectError, NodeTimeoutError, NotFoundError, OutputUnavailableError, StorageError
from ..definition.policy import RetryPolicy, compute_delay
from ..checkpoint.keys import data_version
from ..checkpoint.plan import CheckpointPlan
from ..checkpoint.store import Provenance, StoredHandle, StoredRef, discard_unusable
from ..checkpoint.writeback import Confirmed, confirm_writes
from ..observe.progress import ProgressSink
from .result import UNCHANGED_OUTPUT, AttemptRecord, ErrorInfo, ErrorKind, NodeRecord, NodeStatus, RunResult

log = logging.getLogger(__name__)

#: Speculative mode: how many in-flight attempts one wait watches (see ``Scheduler._wait_window``), and
#: how long it may block before the loop looks at timers again.
WAIT_WINDOW = 1024
POLL_S = 0.05
#: Driver-side timeouts (local backend): how often a queued attempt's start is looked for.
QUEUED_RECHECK_S = 0.05
#: How often the loop offers the manifest writer a heartbeat (it writes at its own period, off the loop) and
#: learns of a takeover, while long nodes run.
HEARTBEAT_POLL_S = 1.0
#: How long to wait for the cluster to declare dead the machine that held a lost input.
LOST_NODE_WAIT_S = 5.0
#: How many of the longest in-flight nodes the live status names.
SLOWEST_SHOWN = 5


class _State(enum.Enum):
    """Where a node is in this run (see the module docstring's "State" section)."""

    PENDING = "pending"
    WAITING_RETRY = "waiting_retry"
    IN_FLIGHT = "in_flight"
    MAPPING = "mapping"
    SUCCEEDED = "succeeded"
    CACHED = "cached"
    RESUMED = "resumed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    #: hashed by identity (members are singletons, compared by identity): Enum's own ``__hash__`` is a Python call,
    #: and the driver hashed an enum ~20 times a node (cProfile of bench_overhead's skip5000-s1), mostly these
    __hash__ = object.__hash__

    @property
    def open(self) -> bool:
        return self in _OPEN


_OPEN = frozenset({_State.PENDING, _State.WAITING_RETRY, _State.IN_FLIGHT, _State.MAPPING})
_WITH_OUTPUT = frozenset({_State.SUCCEEDED, _State.CACHED, _State.RESUMED})

#: The legal moves. Anything else is a bug in this module and raises :class:`SchedulerStateError`.
_MOVES: dict[_State, frozenset[_State]] = {
    _State.PENDING: frozenset({_State.IN_FLIGHT, _State.CACHED, _State.RESUMED, _State.SKIPPED, _State.CANCELLED,
                               _State.MAPPING}),  # a mapped node: its items are made
    _State.WAITING_RETRY: frozenset({_State.PENDING, _State.SKIPPED, _State.CANCELLED}),
    _State.IN_FLIGHT: frozenset({_State.PENDING,  # discarded: an input failed or was lost under it
                                 _State.WAITING_RETRY, _State.SUCCEEDED, _State.FAILED, _State.CANCELLED,
                                 _State.CACHED, _State.RESUMED}),  # keyed in its worker, which found it stored
    # a mapped node, once its items are closed; it closes as they do (the items' own states say why)
    _State.MAPPING: frozenset({_State.SUCCEEDED, _State.CACHED, _State.RESUMED, _State.FAILED, _State.SKIPPED,
                               _State.CANCELLED}),
    _State.SUCCEEDED: frozenset({_State.PENDING,  # its output was lost with its machine
                                 _State.FAILED,  # its checkpoint, written behind, could not be stored
                                 _State.MAPPING}),  # a mapped node: one of its items' outputs was lost
    _State.CACHED: frozenset({_State.PENDING, _State.MAPPING}),  # its stored output (an item's) was found unusable
    _State.RESUMED: frozenset({_State.PENDING, _State.MAPPING}),
    _State.FAILED: frozenset(),
    _State.SKIPPED: frozenset(),
    _State.CANCELLED: frozenset(),
}

#: The public status each state shows in ``NodeRecord.status``.
_STATUS: dict[_State, NodeStatus] = {
    _State.PENDING: NodeStatus.PENDING, _State.WAITING_RETRY: NodeStatus.PENDING,
    _State.IN_FLIGHT: NodeStatus.RUNNING, _State.MAPPING: NodeStatus.RUNNING, _State.SUCCEEDED: NodeStatus.SUCCEEDED,
    _State.CACHED: NodeStatus.CACHED, _State.RESUMED: NodeStatus.RESUMED, _State.FAILED: NodeStatus.FAILED,
    _State.SKIPPED: NodeStatus.SKIPPED, _State.CANCELLED: NodeStatus.CANCELLED,
}

_REUSED = {NodeStatus.CACHED: _State.CACHED, NodeStatus.RESUMED: _State.RESUMED}
_REUSED_REASON = {NodeStatus.CACHED: "output reused from the cache",
                  NodeStatus.RESUMED: "output kept from the run being resumed"}


@dataclass
class _MapRun:
    """A mapped node's items while the run goes: their names (in item order) and values, how many are still open
    and in flight, and the items held back by ``max_parallel``."""

    spec: MapSpec
    items: list[str]
    values: list[Any]
    open: int = 0
    flying: int = 0
    backlog: collections.deque[str] = field(default_factory=collections.deque)


class SchedulerStateError(RuntimeError):
    """A bug in the scheduler, not a user error: an illegal move, a broken invariant or a stalled loop.
    The message lists which nodes are in which state."""


class LiveObserver(Protocol):
    """Looks at the run while it goes (the live metrics, observe/live.py): asked on every pass of the loop
    whether it is due (a clock read), then given the scheduler (see :meth:`Scheduler.live_status`)."""

    period_s: float

    def due(self, now: float) -> bool: ...

    def publish(self, view: Scheduler) -> None: ...


class _InFlight(NamedTuple):
    """A submitted attempt, by its backend handle."""

    node: str
    inputs: tuple[Hashable, ...]  # the handles of its inputs' attempts it was given, in parameter order
    attempt: AttemptRecord  # enters the node's history once its outcome is accepted
    fused: tuple[str, ...] = ()  # the nodes of its fused task (execution/fusion.py), this one included


def should_retry(policy: RetryPolicy, error: ErrorInfo, attempt: int) -> bool:
    """Whether attempt number ``attempt`` (1-based), which failed with ``error``, gets another try."""
    if attempt >= policy.max_attempts:
        return False
    if error.kind is ErrorKind.APPLICATION:
        return policy.retries_exception(error.mro)
    if error.kind is ErrorKind.TIMEOUT:
        return policy.retry_on_timeout
    if error.kind.is_system:
        return policy.retry_system_failures
    return False  # cancelled (upstream_failed and corrupt_input never reach here: the scheduler handles them)


class Scheduler:
    """Runs one validated DAG once on one backend. Use :func:`odibi_ray.run` rather than this."""

    #: Check :meth:`check_invariants` after every batch of outcomes (tests turn it on; it costs O(nodes) a batch).
    check_each_step = False

    def __init__(self, dag: DAG, backend: Backend, *, run_id: str, levels: list[list[str]], barrier: bool = False,
                 fail_fast: bool = False, rng: random.Random | None = None,
                 progress: ProgressSink | None = None, default_retry: RetryPolicy | None = None,
                 checkpoint: CheckpointPlan | None = None, observer: LiveObserver | None = None,
                 fuse: bool = False) -> None:
        self.dag, self.backend, self.run_id = dag, backend, run_id
        self.levels = levels
        self.barrier, self.fail_fast = barrier, fail_fast
        self.speculative = backend.speculative and not barrier
        self.worker_timeouts = backend.worker_timeouts
        self.rng = rng or random.Random()
        self.progress = progress or ProgressSink()
        self.checkpoint = checkpoint
        self.observer = observer
        self.stats = {"corrupt_objects": 0, "early_cutoff": 0}
        self.reopened = 0  # closed nodes (and items) opened again: their outputs lost or found unusable
        # The DAG, read only.
        self._nodes = dag.nodes
        self._inputs = {n: list(node.input_map.values()) for n, node in self._nodes.items()}
        self.inputs = {n: list(dict.fromkeys(ups)) for n, ups in self._inputs.items()}  # node -> its upstream nodes
        self._children = dag.downstream_map()
        self._level_of = {n: i for i, names in enumerate(levels) for n in names}
        # level order; a mapped node's items rank between it and the next node, in item order
        self._rank: dict[str, float] = {n: i for i, n in enumerate(itertools.chain.from_iterable(levels))}
        default = default_retry or dag.retry
        self._policy = {n: self._nodes[n].retry or default for n in self._rank}
        # The state machine: each node's state, the nodes in each state, and the public records derived from it.
        self.records = {n: NodeRecord(n, self._level_of[n]) for n in self._rank}
        self._state = dict.fromkeys(self._rank, _State.PENDING)
        self._in: dict[_State, set[str]] = {s: set() for s in _State}
        self._in[_State.PENDING].update(self._rank)
        self._left_in_level = [len(names) for names in levels]
        self._current_level = 0
        self._reported: set[str] = set()
        self._changed: set[str] | None = set() if observer is not None else None  # for the live metrics
        self._fail_fast_reason: str | None = None  # set by a final failure with fail_fast; the loop aborts
        # What the open states hold.
        self._ready: list[tuple[float, str]] = []  # candidates (rank, name): level order, then insertion order
        self._timers: list[tuple[float, int, str]] = []  # (due, seq, name): WAITING_RETRY nodes
        self._deadlines: list[tuple[float, int, Hashable]] = []  # driver-side timeouts (local backend)
        self._inflight: dict[Hashable, _InFlight] = {}
        self._live: dict[str, Hashable] = {}  # node -> handle of its in-flight or output-holding attempt
        self._rotation = 0
        self._seq = itertools.count()
        # Mapped nodes (see "Mapped nodes" in the module docstring).
        self._top = list(self._rank)  # the DAG's own nodes, in level order (items are added to the maps above)
        self._mapped = {n for n in self._rank if self._nodes[n].mapping is not None}
        self._maps: dict[str, _MapRun] = {}  # mapped node -> its items, once made
        self._parent: dict[str, str] = {}  # item -> its mapped node
        self._index: dict[str, int] = {}  # item -> its position
        # nodes downstream of a mapped node: their keys are computed when they are about to run (see _resolve)
        self._deferred = checkpoint.deferred if checkpoint is not None else frozenset()
        self._keyed: dict[str, tuple] = {}  # node -> the inputs' data versions its key covers (keyed so far)
        # every node with inputs is keyed again before it is submitted when those versions changed (an input reopened
        # and recomputed: a node that is not deterministic writes other bytes), the plan's keys included
        self._rekey = frozenset(n for n in self._rank if self._inputs[n]) if checkpoint is not None else frozenset()
        if checkpoint is not None:
            self._keyed.update((n, checkpoint.input_versions(n)) for n in checkpoint.keys if n in self._rekey)
        # Fusion (execution/fusion.py): node -> the next node of its chain; nodes whose fused task died run unfused
        # (a backend that can fuse has submit_chain: RayBackend; the local one has no per-task cost to save)
        self._submit_fused: Any = getattr(backend, "submit_chain", None) if self.speculative else None
        fusing = self._submit_fused is not None and (fuse or any(node.fuse for node in self._nodes.values()))
        self._next = fused_links(dag, fuse) if fusing else {}
        self._unfused: set[str] = set()

    # --- the state machine ----------------------------------------------------------------------

    def _move(self, name: str, new: _State) -> None:
        """The one way a node changes state: checks the move, keeps the buckets, the record's status, the
        per-level open counts and the progress reports in step."""
        old = self._state[name]
        if new not in _MOVES[old]:
            raise SchedulerStateError(f"node {name!r}: illegal move {old.value} -> {new.value}\n{self.describe()}")
        self._in[old].discard(name)
        self._in[new].add(name)
        self._state[name] = new
        rec = self.records[name]
        rec.status = _STATUS[new]
        if self._changed is not None:
            self._changed.add(name)
        parent = self._parent.get(name)
        if parent is not None:
            self._item_moved(parent, name, old, new)
            return
        if old.open == new.open:
            return
        if new.open:  # reopened
            self.reopened += 1
            self._left_in_level[rec.level] += 1
            return
        self._left_in_level[rec.level] -= 1
        while (self._current_level < len(self._left_in_level) - 1
               and self._left_in_level[self._current_level] == 0):
            self._current_level += 1
        if name not in self._reported:  # a recomputed node is reported once
            self._reported.add(name)
            self.progress.node_done(name, rec.level, rec.status)

    def _item_moved(self, parent: str, item: str, old: _State, new: _State) -> None:
        """Keep a mapped node in step with one of its items: counts, ``max_parallel``, and its own state."""
        m = self._maps[parent]
        if new is _State.IN_FLIGHT:
            m.flying += 1
        elif old is _State.IN_FLIGHT:
            m.flying -= 1
            while m.backlog:  # a slot is free: the next held-back item still pending may go
                held = m.backlog.popleft()
                if self._state[held] is _State.PENDING:
                    heapq.heappush(self._ready, (self._rank[held], held))
                    break
        if old.open and not new.open:
            m.open -= 1
            self.progress.item_done(parent, self.records[item].level, _STATUS[new])
            if m.open == 0 and self._state[parent] is _State.MAPPING:
                self._close_map(parent)
        elif new.open and not old.open:
            self.reopened += 1
            m.open += 1
            if self._state[parent] in _WITH_OUTPUT:  # its output included this item's: not whole any more
                self._live.pop(parent, None)
                self._forget_version(parent)
                self._move(parent, _State.MAPPING)
                self._discard_consumers(parent)

    @property
    def _open(self) -> int:
        """How many nodes (and items) are still open (pending, waiting to retry, in flight or mapping)."""
        return (len(self._in[_State.PENDING]) + len(self._in[_State.WAITING_RETRY]) + len(self._in[_State.IN_FLIGHT])
                + len(self._in[_State.MAPPING]))

    def describe(self) -> str:
        """Which nodes are in which state (at most 20 names per state), for errors and logs."""
        lines = []
        for state in _State:
            names = sorted(self._in[state], key=self._rank.__getitem__)
            if names:
                shown = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
                lines.append(f"  {state.value} ({len(names)}): {shown}")
        return "\n".join(lines)

    def check_invariants(self) -> None:
        """Raise :class:`SchedulerStateError` if the containers disagree with the states."""
        problems = []
        if sum(len(b) for b in self._in.values()) != len(self._state) or any(
                name not in self._in[s] for name, s in self._state.items()):
            problems.append("a node is not in exactly the bucket of its state")
        flying = {f.node for f in self._inflight.values()}
        if flying != self._in[_State.IN_FLIGHT] or len(flying) != len(self._inflight):
            problems.append(f"in-flight attempts {sorted(flying)} != IN_FLIGHT nodes (one attempt each)")
        for handle, f in self._inflight.items():
            if self._live.get(f.node) is not handle:
                problems.append(f"node {f.node!r}: its in-flight handle is not its live one")
        expect_live = self._in[_State.IN_FLIGHT] | self._in[_State.SUCCEEDED] | self._in[_State.CACHED] \
            | self._in[_State.RESUMED]
        if set(self._live) != expect_live:
            problems.append(f"live handles {sorted(set(self._live) ^ expect_live)} do not match the states")
        if {n for _, _, n in self._timers if self._state[n] is _State.WAITING_RETRY} != self._in[_State.WAITING_RETRY]:
            problems.append("a node waiting to retry has no timer")
        if any(r.status is not _STATUS[self._state[n]] for n, r in self.records.items()):
            problems.append("a record's status is not its state's")
        for level, names in enumerate(self.levels):
            if self._left_in_level[level] != sum(self._state[n].open for n in names):
                problems.append(f"level {level}: open count {self._left_in_level[level]} is wrong")
        for parent, m in self._maps.items():
            states = [self._state[i] for i in m.items]
            if m.open != sum(s.open for s in states) or m.flying != states.count(_State.IN_FLIGHT):
                problems.append(f"mapped node {parent!r}: open/in-flight item counts {m.open}/{m.flying} are wrong")
            if (self._state[parent] is _State.MAPPING) != (m.open > 0) and self._state[parent].open:
                problems.append(f"mapped node {parent!r} is {self._state[parent].value} with {m.open} open item(s)")
        if self._in[_State.MAPPING] - set(self._maps):
            problems.append("a node is mapping without items")
        if problems:
            raise SchedulerStateError("; ".join(problems) + "\n" + self.describe())

    # --- what the live metrics read -----------------------------------------------------------------

    def detach_observer(self) -> None:
        """Stop showing the run live (it has ended and sent its final figures): a recomputation when the result
        is read later must not send a batch after the last one."""
        self.observer, self._changed = None, None

    def take_changed(self) -> set[str]:
        """Nodes whose record changed since the last call (their state, or a checkpoint confirmed)."""
        changed, self._changed = self._changed or set(), set()
        return changed

    def live_status(self) -> dict[str, Any]:
        """The run now, for ``odibi-ray status --watch``: nodes by state (``running``: in flight with its inputs
        done, running or queued for a worker; ``waiting``: in flight behind inputs not done yet, on Ray;
        ``ready``: pending with its inputs done, not submitted yet; ``pending``: the other pending ones), each
        level's ``[done, total]``, and the :data:`SLOWEST_SHOWN` in-flight nodes longest in flight since ready."""
        counts = {state.value: len(names) for state, names in self._in.items() if names}
        ok = _WITH_OUTPUT
        running = [f for f in self._inflight.values() if all(self._state[u] in ok for u in self._inputs[f.node])]
        ready = sum(1 for n in self._in[_State.PENDING] if all(self._state[u] in ok for u in self._inputs[n]))
        counts.pop(_State.IN_FLIGHT.value, None)
        counts.update(running=len(running), waiting=len(self._inflight) - len(running), ready=ready,
                      pending=len(self._in[_State.PENDING]) - ready)
        now = time.time()
        since = sorted(((now - max([f.attempt.submitted_at] + [self.records[u].ended_at or 0.0
                                                              for u in self._inputs[f.node]]), f.node)
                        for f in running), reverse=True)[:SLOWEST_SHOWN]
        maps = {name: [len(m.items) - m.open, len(m.items)] for name, m in self._maps.items()}
        return {"counts": counts, "open": self._open, "items": maps,
                "levels": [[len(names) - self._left_in_level[i], len(names)] for i, names in enumerate(self.levels)],
                "slowest": [[name, round(seconds, 3)] for seconds, name in since]}

    # --- main loop ------------------------------------------------------------------------------

    def run(self) -> RunResult:
        started = time.time()
        cp = self.checkpoint
        reused = cp.reuse if cp else {}
        # Nodes reused from storage are not prepared (no pickling, no task options) unless they must run after
        # all (a corrupt stored output): the backend prepares such a node on its first submit.
        # Mapped nodes and nodes downstream of them are looked up while the run goes: when nothing else runs, they
        # are prepared on their first submit, so that a run whose items (and consumers) are all stored too never
        # starts Ray.
        to_run = [n for n in self._rank if n not in reused]
        later = self._mapped | (cp.deferred if cp is not None else frozenset())
        if all(n in later for n in to_run):
            to_run = []
        self.backend.prepare([self._nodes[n] for n in to_run], cp.targets if cp else None)
        self.progress.start(self.levels)
        try:
            if cp is not None:
                self._reuse_stored(cp)
            for n in self._rank:
                if not self._inputs[n]:
                    heapq.heappush(self._ready, (self._rank[n], n))
            self._loop()
            self._confirm_writes()
        finally:
            self.progress.stop()
        return RunResult(self.dag.name, self.run_id, self.backend.name, self.levels, self.node_records(), started,
                         time.time(), _fetch=self._fetch, stats=self.stats,  # shared: a fetch may count more
                         inputs=self.inputs)

    def _reuse_stored(self, cp: CheckpointPlan) -> None:
        """Close the nodes the plan reuses from storage (no task at all); their consumers read them there."""
        self.stats["corrupt_objects"] += len(cp.damaged)
        self.stats["cache_evictions"] = len(cp.expired)
        for name, key in cp.keys.items():
            self.records[name].cache_key = key
        for name, version in cp.versions.items():
            self.records[name].data_version = version
        for name, (status, ref) in cp.reuse.items():
            self._close_reused(name, status, StoredHandle(ref))

    def node_records(self) -> dict[str, NodeRecord]:
        """The records of the DAG's nodes (a mapped node's items are in its record's ``items``)."""
        return {n: self.records[n] for n in self._top}

    def _fetch(self, names: list[str]) -> list[Any]:
        """Outputs for the result: stored ones read from storage here, the rest from the backend, in one go (a
        mapped node's: its items', assembled as its consumers get them)."""
        handles = [self._live[n] for n in names]
        leaves = [pair for n, h in zip(names, handles) for pair in self._leaves(n, h)]
        remote = [h for _, h in leaves if not isinstance(h, StoredHandle)]
        fetched = iter(self.backend.fetch_many(remote) if remote else [])
        values = {n: self._load_stored(n, h.ref) if isinstance(h, StoredHandle) else self._stored_or(n, next(fetched))
                  for n, h in leaves}
        return [h.collect.assemble([values[i] for i, _ in self._leaves(n, h)]) if h.__class__ is MapOutput
                else values[n] for n, h in zip(names, handles)]

    def _stored_or(self, name: str, value: Any) -> Any:
        """A value from the backend, or the stored output it points to: a node its worker keyed and found stored
        returned a :class:`StoredRef` (execution/backends/worker_keys.py)."""
        return self._load_stored(name, value) if value.__class__ is StoredRef else value

    @staticmethod
    def _leaves(name: str, handle: Any) -> list[tuple[str, Any]]:
        """(name, handle) of what holds a node's output: the node itself, or a mapped node's items."""
        if handle.__class__ is MapOutput:
            return list(zip(handle.names, handle.items))
        return [(name, handle)]

    def _load_stored(self, name: str, ref: StoredRef) -> Any:
        """A reused output asked for by the result. One found unusable now (bit rot the plan's size check cannot
        see) is counted, removed, and computed again on the backend (with whatever of its inputs must run too),
        so the caller gets the right value, never a wrong one; if that fails, a clear error says why."""
        try:
            return ref.load()
        except (CorruptObjectError, NotFoundError, CodecError) as exc:
            problem = discard_unusable(ref, exc)
        self.stats["corrupt_objects"] += 1
        self._reopen(name, "stored output was unusable when the result read it; recomputed")
        self._loop()
        self._confirm_writes()
        rec = self.records[name]
        if rec.status is not NodeStatus.SUCCEEDED:
            detail = f" ({rec.error.type_name}: {rec.error.message})" if rec.error else ""
            raise OutputUnavailableError(f"the stored output of node {name!r} was unusable ({problem}) and computing "
                                         f"it again failed{detail}")
        return self.backend.fetch(self._live[name])

    def _loop(self) -> None:
        heartbeat = self.checkpoint.heartbeat if self.checkpoint else None
        observer = self.observer
        while self._open:
            now = time.monotonic()
            if heartbeat is not None:
                stop = heartbeat()
                if stop is not None:  # another driver took the run over: it runs what is left
                    self._abort(f"driver stopped: {stop}")
                    break
            if observer is not None and observer.due(now):
                observer.publish(self)
            while self._timers and self._timers[0][0] <= now:
                _, _, name = heapq.heappop(self._timers)
                if self._state[name] is _State.WAITING_RETRY:  # else skipped or cancelled meanwhile
                    self._move(name, _State.PENDING)
                    heapq.heappush(self._ready, (self._rank[name], name))
            self._submit_ready()
            self._expire_deadlines(now)
            if self._fail_fast_reason is not None and self._open:  # a timeout failed a node for good
                self._abort(self._fail_fast_reason)
            if not self._open:
                break
            wake = [t[0][0] for t in (self._timers, self._deadlines) if t]
            timeout = max(0.0, min(wake) - time.monotonic()) if wake else None
            if heartbeat is not None:  # look at the manifest's heartbeat (and takeovers) while long nodes run
                timeout = HEARTBEAT_POLL_S if timeout is None else min(timeout, HEARTBEAT_POLL_S)
            if observer is not None:  # and send the live metrics on time
                timeout = observer.period_s if timeout is None else min(timeout, observer.period_s)
            if not self._inflight:
                if not self._timers:  # nothing runs and nothing will: a bug, not a user error; say where each node is
                    raise SchedulerStateError(f"scheduler stalled with {self._open} open node(s) and nothing in "
                                              f"flight or waiting:\n{self.describe()}")
                time.sleep(timeout if timeout is not None else POLL_S)
                continue
            if self.speculative:
                # Ray chains the submitted tasks itself: the loop only has to observe them, in batches, so
                # the driver does not compete with the workers for CPU.
                done = self.backend.wait(self._wait_window(), min(POLL_S, timeout) if timeout is not None
                                         else POLL_S, all_of=True)
            else:
                done = self.backend.wait(list(self._inflight), timeout)
            if done:
                if self.speculative and len(self._inflight) > WAIT_WINDOW:  # the wait watched only a window
                    done = self._with_finished_inputs(done)
                done.sort(key=lambda h: self._rank[self._inflight[h].node])  # inputs before their consumers
                for handle, meta in zip(done, self.backend.outcomes(done)):
                    self._finish_attempt(handle, meta)
                if self._fail_fast_reason is not None:  # after the whole batch: its finished attempts count as such
                    self._abort(self._fail_fast_reason)
                if self.check_each_step:
                    self.check_invariants()

    def unconfirmed(self) -> set[str]:
        """Nodes that succeeded but whose checkpoint, written behind, is not confirmed stored yet."""
        cp = self.checkpoint
        if cp is None:
            return set()
        return {name for name in self._in[_State.SUCCEEDED] if name not in self._mapped  # (its items write)
                and cp.targets[name].write_behind and not self.records[name].attempt_history[-1].confirmed}

    def pending_writes(self) -> dict[str, Provenance]:
        """The unconfirmed nodes (see :meth:`unconfirmed`) and what their attempts were."""
        pending = {}
        for name in self.unconfirmed():
            att = self.records[name].attempt_history[-1]
            pending[name] = Provenance(att.number, att.worker_node_id or "", att.worker_pid or 0,
                                       att.started_at or 0.0, att.ended_at or 0.0)
        return pending

    def accept_confirmed(self, found: Mapping[str, Confirmed], pending: Mapping[str, Provenance]) -> None:
        """Checkpoints found stored while the run goes on (the manifest writer looks at each heartbeat): their
        nodes count as checkpointed, unless they were run again since."""
        for name, outcome in found.items():
            rec = self.records[name]
            att = rec.attempt_history[-1] if rec.attempt_history else None
            if self._state[name] is _State.SUCCEEDED and att is not None and att.number == pending[name].attempt:
                att.bytes_written, att.confirmed = outcome.bytes_written, True
                if self._changed is not None:
                    self._changed.add(name)

    def _confirm_writes(self) -> None:
        """Wait for the checkpoints workers wrote behind (see checkpoint/writeback.py): a node counts as
        checkpointed only once its object is stored. One that cannot be written at all fails its node."""
        cp = self.checkpoint
        pending = self.pending_writes()
        if cp is None or not pending:
            return
        for name, outcome in confirm_writes(cp.targets, pending, lambda n: self.backend.fetch(self._live[n])).items():
            rec = self.records[name]
            att = rec.attempt_history[-1]
            att.bytes_written, att.confirmed = outcome.bytes_written, True
            if self._changed is not None:  # (its bytes written: a figure of the live metrics)
                self._changed.add(name)
            if outcome.error is not None:  # computed (its consumers used it) but never checkpointed: not done
                kind = ErrorKind.STORAGE if isinstance(outcome.error, StorageError) else ErrorKind.OBJECT_LOST
                att.error = rec.error = error_info(_unconfirmed(name, outcome.error), kind=kind)
                self._live.pop(name, None)
                self._move(name, _State.FAILED)
                log.error("node %r: its checkpoint could not be written: %s", name, outcome.error)
                parent = self._parent.get(name)
                if (parent is not None and self._state[parent] is _State.SUCCEEDED
                        and not self._maps[parent].spec.allow_partial):  # the mapped node's output is not whole
                    self.records[parent].error = dataclasses.replace(att.error, message=f"{name}: {att.error.message}")
                    self._live.pop(parent, None)
                    self._move(parent, _State.FAILED)

    def _wait_window(self) -> list[Hashable]:
        """The in-flight attempts one wait watches: all of them when few; else the oldest half-window
        (completions mostly follow submission order) plus a slice of the rest that rotates on every
        call, so a failure anywhere is seen within ``len(inflight) / (WAIT_WINDOW / 2)`` polls."""
        inflight = self._inflight
        if len(inflight) <= WAIT_WINDOW:
            return list(inflight)
        half = WAIT_WINDOW // 2
        handles = list(inflight)
        rest = len(handles) - half
        start = half + self._rotation % rest
        self._rotation += half
        window = handles[:half] + handles[start:start + half]
        if start + half > len(handles):
            window += handles[half:half + start + half - len(handles)]
        return window

    def _submittable(self, name: str) -> bool:
        if self._state[name] is not _State.PENDING:
            return False
        if name in self._mapped:  # its items are made from an input's value: that must be there
            return all(self._state[u] in _WITH_OUTPUT for u in self._inputs[name])
        parent = self._parent.get(name)
        if parent is not None:
            m = self._maps[parent]
            cap = m.spec.max_parallel
            if cap is not None and m.flying >= cap:
                m.backlog.append(name)  # goes when an item in flight leaves (see _item_moved)
                return False
        if self.speculative:
            return all(u in self._live for u in self._inputs[name])
        return all(self._state[u] in _WITH_OUTPUT for u in self._inputs[name])

    def _submit_ready(self) -> None:
        ready = self._ready
        while ready:
            rank, name = ready[0]
            if self.barrier and self._level_of[name] > self._current_level:
                return
            heapq.heappop(ready)
            if not self._submittable(name):
                continue  # a stale hint: not pending any more, or an input was discarded meanwhile
            wkey = None
            if self._needs_key(name):
                if all(self._state[u] in _WITH_OUTPUT for u in self._inputs[name]):
                    if self._resolve(name):
                        continue  # reused from storage: closed
                else:  # inputs still running (chained by Ray): its worker keys it from their hashes
                    wkey = self._worker_key(name)
            if name in self._mapped:
                self._expand(name)
                continue
            if name in self._next and self._submit_chain(name, wkey):
                continue
            node = self._nodes[name]
            attempt = AttemptRecord(number=self.records[name].attempts + 1, submitted_at=time.time())
            inputs = tuple(self._live[u] for u in self._inputs[name])
            parent = self._parent.get(name)
            if parent is None:
                ctx = NodeContext(self.dag.name, self.run_id, name, attempt.number, self._policy[name].max_attempts)
                # (a backend that is never given keys, e.g. one not speculative, need not take the argument)
                handle = self.backend.submit(node, ctx, inputs, key=wkey) if wkey is not None else \
                    self.backend.submit(node, ctx, inputs)
            else:
                i = self._index[name]
                m = self._maps[parent]
                ctx = NodeContext(self.dag.name, self.run_id, parent, attempt.number, self._policy[name].max_attempts,
                                  i)
                item = MapItem(i, m.values[i], m.spec.param or "", self.records[name].cache_key)
                handle = self.backend.submit(node, ctx, inputs, item)
            self._in_flight(name, handle, inputs, attempt)
            if node.timeout_s is not None and not self.worker_timeouts:
                heapq.heappush(self._deadlines, (time.monotonic() + node.timeout_s, next(self._seq), handle))
            if self.speculative:
                for child in self._children[name]:
                    heapq.heappush(ready, (self._rank[child], child))

    def _in_flight(self, name: str, handle: Hashable, inputs: tuple[Hashable, ...], attempt: AttemptRecord,
                   fused: tuple[str, ...] = ()) -> None:
        """Node ``name`` has an attempt submitted (``handle``): in flight until its outcome is read."""
        self._inflight[handle] = _InFlight(name, inputs, attempt, fused)
        self._live[name] = handle
        self._move(name, _State.IN_FLIGHT)

    def _needs_key(self, name: str) -> bool:
        """Whether ``name`` is keyed (again) before it is submitted: its key does not cover its inputs' data versions
        now (never keyed, or an input recomputed since)."""
        return name in self._rekey and self._keyed.get(name) != self._key_inputs(name)

    def _submit_chain(self, name: str, wkey: WorkerKey | None) -> bool:
        """Submit ``name`` and the pending nodes after it in its chain as one fused task (execution/fusion.py); False
        when no node after it can go with it (it is submitted alone)."""
        chain = [name]
        unfused = self._unfused
        while len(chain) < MAX_FUSED and chain[-1] not in unfused:
            nxt = self._next.get(chain[-1])
            if nxt is None or nxt in unfused or self._state[nxt] is not _State.PENDING:
                break
            chain.append(nxt)
        if len(chain) == 1:
            return False
        # a node after the first is keyed in the task from the data version of the one before (when it is keyed)
        keys = [wkey] + [self._worker_key(n) if self._needs_key(n) else None for n in chain[1:]]
        now = time.time()
        attempts = [AttemptRecord(number=self.records[n].attempts + 1, submitted_at=now) for n in chain]
        ctxs = [NodeContext(self.dag.name, self.run_id, n, att.number, self._policy[n].max_attempts)
                for n, att in zip(chain, attempts)]
        inputs = tuple(self._live[u] for u in self._inputs[name])
        handles = self._submit_fused([self._nodes[n] for n in chain], ctxs, inputs, keys)
        members = tuple(chain)
        for n, handle, att in zip(chain, handles, attempts):
            self._in_flight(n, handle, inputs, att, members)
            inputs = (handle,) * len(self._inputs[self._next[n]]) if n in self._next else ()
        for child in self._children[chain[-1]]:
            heapq.heappush(self._ready, (self._rank[child], child))
        return True

    def _unfuse(self, name: str, flight: _InFlight, error: ErrorInfo) -> None:
        """A fused task failed as a whole (its worker died, ran out of memory or lost its machine): it cannot say
        which of its nodes was running, so none is charged; its nodes run one task each from now on."""
        log.warning("fused task %s..%s failed (%s: %s); its %d nodes run again, one task each", flight.fused[0],
                    flight.fused[-1], error.kind.value, error.message, len(flight.fused))
        self._unfused.update(flight.fused)
        self._discard(name)
        for n in flight.fused:
            other = self._inflight.get(self._live.get(n))
            if other is not None and other.fused is flight.fused:
                self._discard(n)

    # --- mapped nodes ---------------------------------------------------------------------------------

    def _key_inputs(self, name: str) -> tuple:
        """The data versions of ``name``'s inputs now (a deferred node is keyed again when they change: an input
        recomputed after a lost output may write other bytes)."""
        cp = self.checkpoint
        return cp.input_versions(name) if cp is not None else ()

    def _forget_version(self, name: str) -> None:
        """``name``'s output is gone (it runs again): its data version is unknown until it has a new one."""
        self.records[name].data_version = None
        if self.checkpoint is not None:
            self.checkpoint.versions.pop(name, None)

    def _worker_key(self, name: str) -> WorkerKey:
        """What a Ray worker needs to key deferred node ``name`` itself (its inputs have not all finished): see
        execution/backends/worker_keys.py."""
        cp = self.checkpoint
        assert cp is not None
        # None: from the running input's attempt metadata, which Ray hands the task (a node with an output always
        # has a version: set_version, the plan, close_map)
        versions = [cp.versions[u] if self._state[u] in _WITH_OUTPUT else None for u in self._inputs[name]]
        policy = self.dag.cache_policy_of(name)
        look_up = name not in cp.refresh and (policy.enabled or cp.resuming) and not cp.lookups_paused()
        candidates = cp.index.candidates(name) if look_up and cp.index is not None else None
        return WorkerKey(cp.recipe(name), tuple(versions), look_up, cp.resuming, self.run_id, candidates)

    def _keyed_in_worker(self, name: str, meta: AttemptMeta, ok: bool) -> bool:
        """Node ``name`` was keyed in its worker: take its key (and where its checkpoint is: a failed attempt's too,
        for the manifest and a retry); when the worker found its output stored (it did not run), close it as reused.
        True when it did."""
        cp = self.checkpoint
        assert cp is not None
        rec = self.records[name]
        rec.cache_key = cp.keys[name] = meta.cache_key
        cp.targets[name] = dataclasses.replace(cp.targets[name], cache_key=meta.cache_key)
        self._keyed[name] = self._key_inputs(name)
        if not meta.reused or not ok:
            return False
        rec.data_version = cp.set_version(name, meta.output_sha256, meta.output_codec)
        self._close_reused(name, NodeStatus(meta.reused))  # its live handle's value: a StoredRef to the stored output
        return True

    def _resolve(self, name: str) -> bool:
        """A deferred node about to run: its inputs have run (a mapped input's items are closed), so their data
        versions are known; compute its key and look it up (a mapped node only gets its key: its items are looked
        up). True when its stored output is reused (it is closed): when an input of it ran in this run, that
        input's output was unchanged (early cutoff), and both records say so."""
        cp = self.checkpoint
        assert cp is not None
        self._keyed[name] = self._key_inputs(name)
        if name in self._mapped:
            self.records[name].cache_key = cp.rekey(name)
            return False
        damaged, expired = len(cp.damaged), len(cp.expired)
        found = cp.resolve(name)
        self.stats["corrupt_objects"] += len(cp.damaged) - damaged
        self.stats["cache_evictions"] += len(cp.expired) - expired
        self.records[name].cache_key = cp.keys[name]
        if found is None:
            return False
        status, ref = found
        self.records[name].data_version = cp.versions.get(name)
        self._close_reused(name, status, StoredHandle(ref))
        return True

    def _close_reused(self, name: str, status: NodeStatus, handle: StoredHandle | None = None) -> None:
        """Close node ``name`` as reused from storage (``handle``: its output; None: the live handle it has): the
        plan's reuse, a deferred node's look-up, or its worker's. When inputs of it ran in this run, that is an
        early cutoff, and the records say so."""
        self.records[name].reason = _REUSED_REASON[status]
        ran = [u for u in dict.fromkeys(self._inputs[name]) if self._state[u] is _State.SUCCEEDED]
        if ran:
            self._early_cutoff(name, ran)
        if handle is not None:
            self._live[name] = handle
        self._move(name, _REUSED[status])
        for child in self._children[name]:
            heapq.heappush(self._ready, (self._rank[child], child))

    def _early_cutoff(self, name: str, ran: list[str]) -> None:
        """``name`` is reused although inputs of it (``ran``) ran in this run: they wrote what they wrote before."""
        self.stats["early_cutoff"] += 1
        self.records[name].unchanged_inputs = tuple(ran)
        self.records[name].reason = f"output reused: unchanged output of {', '.join(ran)}"
        self.progress.early_cutoff(name, tuple(ran))
        for u in ran:
            up = self.records[u]
            if UNCHANGED_OUTPUT not in up.reason:
                up.reason = f"{up.reason}; {UNCHANGED_OUTPUT}" if up.reason else UNCHANGED_OUTPUT
                log.info("node %r ran and wrote the output it had before: %s", u, UNCHANGED_OUTPUT)

    def _expand(self, name: str) -> None:
        """Make the items of mapped node ``name`` from the output it maps over (see "Mapped nodes" above)."""
        node = self._nodes[name]
        spec = node.mapping
        assert spec is not None
        over = self._over_value(spec.over)
        if over is _UNAVAILABLE:
            return  # its stored output was unusable: it runs again, and this node waits for it (still PENDING)
        self._move(name, _State.MAPPING)
        rec = self.records[name]
        try:
            if isinstance(over, _Failed):
                raise over.exc
            values = split_items(over, spec, name)
            names = [item_name(name, i) for i in range(len(values))]
            damaged = len(self.checkpoint.damaged) if self.checkpoint is not None else 0
            plan = (self.checkpoint.plan_items(name, names, [item_digest(v) for v in values])
                    if self.checkpoint is not None else None)
        except Exception as exc:  # noqa: BLE001 - a value that cannot be split or hashed fails this node
            rec.error = error_info(exc)
            log.warning("mapped node %r failed: %s: %s", name, type(exc).__name__, exc)
            self._move(name, _State.FAILED)
            self._skip_descendants(name)
            return
        if self.checkpoint is not None:
            self.stats["corrupt_objects"] += len(self.checkpoint.damaged) - damaged
        self._maps[name] = _MapRun(spec, names, values, open=len(names))
        rec.items = []
        level, rank, n = rec.level, self._rank[name], len(names)
        inputs = [up for p, up in node.input_map.items() if p != spec.param]
        policy = self._policy[name]
        for i, item in enumerate(names):
            self._parent[item], self._index[item] = name, i
            self._nodes[item], self._inputs[item], self._children[item] = node, inputs, []
            self._level_of[item], self._rank[item], self._policy[item] = level, rank + (i + 1) / (n + 1), policy
            self.records[item] = NodeRecord(item, level, cache_key=plan.keys[i] if plan is not None else None)
            rec.items.append(self.records[item])
            self._state[item] = _State.PENDING
            self._in[_State.PENDING].add(item)
        for u in dict.fromkeys(inputs):  # an input reopened under its items discards their attempts
            self._children[u].extend(names)
        self.progress.items_added(name, level, n)
        log.info("mapped node %r: %d item(s) of %r%s", name, n, spec.over,
                 f", {len(plan.reuse)} reused from storage" if plan is not None and plan.reuse else "")
        if plan is not None:
            for item, (status, ref) in plan.reuse.items():
                self.records[item].data_version = self.checkpoint.versions.get(item) if self.checkpoint else None
                self.records[item].reason = _REUSED_REASON[status]
                self._live[item] = StoredHandle(ref)
                self._move(item, _REUSED[status])  # the last one closes the mapped node
        if n == 0:
            self._close_map(name)
            return
        for item in names:
            if self._state[item] is _State.PENDING:
                heapq.heappush(self._ready, (self._rank[item], item))

    def _over_value(self, name: str) -> Any:
        """The output of ``name`` here in the driver, to split into items; :data:`_UNAVAILABLE` when a stored
        output of it was unusable (it is reopened, and runs again), a :class:`_Failed` when it cannot be had."""
        handle = self._live[name]
        leaves = self._leaves(name, handle)
        try:
            remote = [h for _, h in leaves if not isinstance(h, StoredHandle)]
            fetched = iter(self.backend.fetch_many(remote) if remote else [])
            values, unusable = [], False
            for n, h in leaves:
                ref = h.ref if isinstance(h, StoredHandle) else next(fetched)
                if ref.__class__ is not StoredRef:  # a value (not a stored output a worker found and returned)
                    values.append(ref)
                    continue
                try:
                    values.append(ref.load())
                except (CorruptObjectError, NotFoundError, CodecError) as exc:
                    discard_unusable(ref, exc)
                    self.stats["corrupt_objects"] += 1
                    self._reopen(n, "stored output was unusable when a mapped node read it; recomputed")
                    unusable = True
            if unusable:
                return _UNAVAILABLE
            return handle.collect.assemble(values) if handle.__class__ is MapOutput else values[0]
        except Exception as exc:  # noqa: BLE001 - e.g. the object was lost, or a reduce raised: the node fails
            return _Failed(exc)

    def _close_map(self, name: str) -> None:
        """Every item of mapped node ``name`` is closed: close it as they did."""
        m = self._maps[name]
        rec = self.records[name]
        states = [self._state[i] for i in m.items]
        failed = [i for i, s in zip(m.items, states) if s is _State.FAILED]
        if _State.CANCELLED in states or _State.SKIPPED in states:
            new = _State.CANCELLED if _State.CANCELLED in states else _State.SKIPPED
            rec.reason = rec.reason or f"{states.count(new)} of {len(states)} item(s) {new.value}"
            self._move(name, new)
            return
        if failed and not m.spec.allow_partial:
            first = self.records[failed[0]].error
            assert first is not None
            rec.error = dataclasses.replace(first, message=f"{len(failed)} of {len(states)} item(s) failed; "
                                                           f"{failed[0]}: {first.message}")
            log.warning("mapped node %r failed: %s", name, rec.error.message)
            self._move(name, _State.FAILED)
            self._skip_descendants(name)
            return
        ok = [i for i, s in zip(m.items, states) if s in _WITH_OUTPUT]
        fails = tuple(FailedItem(self._index[i], m.values[self._index[i]], err.type_name if err else "",
                                 err.message if err else "") for i in failed for err in [self.records[i].error])
        collect = Collect(len(ok), m.spec.reduce, m.spec.allow_partial, tuple(self._index[i] for i in ok), fails)
        if self.checkpoint is not None:  # its consumers' keys cover its items' keys, not the listing's
            rec.cache_key = self.checkpoint.close_map(name, [self.records[i].cache_key or "" for i in ok],
                                                      [self._index[i] for i in failed],
                                                      [self.records[i].data_version for i in ok])
            rec.data_version = self.checkpoint.versions[name]
        self._live[name] = MapOutput(tuple(self._live[i] for i in ok), collect, tuple(ok))
        if failed:
            rec.reason = f"{len(failed)} of {len(states)} item(s) failed (allow_partial)"
        reused = {s for s in states if s in (_State.CACHED, _State.RESUMED)}
        if states and not failed and len(reused) == 1 and all(s in reused for s in states):
            new = reused.pop()  # every item reused, and from one source: so is the node
        else:
            new = _State.SUCCEEDED
        self._move(name, new)
        for child in self._children[name]:
            heapq.heappush(self._ready, (self._rank[child], child))

    def _expire_deadlines(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, handle = heapq.heappop(self._deadlines)
            flight = self._inflight.get(handle)
            if flight is None:
                continue  # finished in time, or discarded
            name = flight.node
            started = self.backend.started(handle)
            timeout_s = self._nodes[name].timeout_s
            assert timeout_s is not None  # only an attempt of a node with a timeout has a deadline
            due = (now + QUEUED_RECHECK_S) if started is None else started + timeout_s
            if due > now:  # the clock starts when the attempt starts, not when it was queued
                heapq.heappush(self._deadlines, (due, next(self._seq), handle))
                continue
            del self._inflight[handle]
            self.backend.cancel(handle)
            att = flight.attempt
            att.ended_at = time.time()
            exc = NodeTimeoutError(f"node {name!r} attempt {att.number} exceeded timeout_s="
                                   f"{self._nodes[name].timeout_s} and was cancelled")
            self._attempt_failed(name, att, error_info(exc, kind=ErrorKind.TIMEOUT, traceback_text=str(exc)))

    # --- outcomes -------------------------------------------------------------------------------

    def _finish_attempt(self, handle: Hashable, meta: AttemptMeta) -> None:
        flight = self._inflight.pop(handle, None)
        if flight is None:
            return  # timed out, cancelled or discarded already
        name = flight.node
        error = meta.error
        if not self._inputs_still_valid(name, flight.inputs) or (
                error is not None and error.kind is ErrorKind.UPSTREAM_FAILED):
            self._discard(name)  # ran (or not) on an input attempt that failed: not an attempt of its own
            return
        if (flight.fused and error is not None and meta.started_at is None and error.kind.is_system
                and error.kind is not ErrorKind.OBJECT_LOST):  # (a lost input is recomputed below, as for any task)
            self._unfuse(name, flight, error)
            return
        att = flight.attempt
        att.started_at, att.ended_at = meta.started_at, meta.ended_at
        att.worker_node_id, att.worker_pid = meta.worker_node_id, meta.pid
        att.bytes_written, att.bytes_read, att.storage_s = meta.io
        att.output_tail = meta.output_tail  # "" when the node printed nothing
        if meta.cache_key and self.checkpoint is not None and self._keyed_in_worker(name, meta, error is None):
            return  # reused: not run, no attempt of its own
        if error is not None and error.kind is ErrorKind.OBJECT_LOST and self._recompute_lost_inputs(name):
            return
        if error is not None and error.kind is ErrorKind.CORRUPT_INPUT and self._recompute_stored_input(name, error):
            return
        if error is not None:
            if error.kind is ErrorKind.WORKER_DIED and self.worker_timeouts and self._overran(name, att):
                error = error_info(NodeTimeoutError(
                    f"node {name!r} attempt {att.number} ignored its timeout_s={self._nodes[name].timeout_s}; "
                    "its worker process was killed"), kind=ErrorKind.TIMEOUT, traceback_text=error.traceback)
            self._attempt_failed(name, att, error)
            return
        rec = self.records[name]
        rec.attempt_history.append(att)
        if self.checkpoint is not None:  # what the keys of the nodes below it cover (checkpoint/keys.py)
            if name not in self._parent:
                rec.data_version = self.checkpoint.set_version(name, meta.output_sha256, meta.output_codec)
            else:  # an item: what its mapped node's data version covers (close_map)
                rec.data_version = data_version(meta.output_sha256, meta.output_codec) if meta.output_sha256 else None
        self._move(name, _State.SUCCEEDED)
        for child in self._children[name]:
            heapq.heappush(self._ready, (self._rank[child], child))

    def _with_finished_inputs(self, done: list[Hashable]) -> list[Hashable]:
        """``done`` and every in-flight input attempt (transitively) a done attempt was given. Ray starts a task only
        once its inputs' tasks have finished, so those are finished too; but a wait over many in-flight attempts
        watches a window of them (see :meth:`_wait_window`) and can see a consumer before its input. Reading the
        inputs' outcomes in the same batch (inputs first, by rank) keeps the consumer's result: without it, the
        consumer looked like it ran on an input that was not done, was discarded and ran again — and a node whose
        re-queue hints had all come while its old attempt was in flight could be left pending (a stall)."""
        inflight = self._inflight
        seen, out, todo = set(done), list(done), list(done)
        while todo:
            wanted = []
            for handle in todo:
                flight = inflight.get(handle)
                for up in flight.inputs if flight is not None else ():
                    if up not in seen and up in inflight:
                        seen.add(up)
                        wanted.append(up)
            # asked, not assumed: only what the backend says is done (on Ray, all of them; a zero-timeout wait)
            todo = self.backend.wait(wanted, 0.0, all_of=True) if wanted else []
            out.extend(todo)
        return out

    def _inputs_still_valid(self, name: str, inputs: tuple) -> bool:
        live, state = self._live, self._state
        return all(live.get(u) is h and state[u] in _WITH_OUTPUT for u, h in zip(self._inputs[name], inputs))

    def _overran(self, name: str, att: AttemptRecord) -> bool:
        """Whether a worker that died had run past its timeout plus the kill grace (the in-worker
        watchdog kills it then). The start is estimated from below: the attempt cannot have started
        before it was submitted nor before its inputs ended."""
        timeout = self._nodes[name].timeout_s
        if timeout is None:
            return False
        earliest = max([att.submitted_at] + [self.records[u].ended_at or 0.0 for u in self._inputs[name]])
        return time.time() - earliest >= timeout + HARD_KILL_GRACE_S * 0.9

    def _discard(self, name: str) -> None:
        """Forget a submitted attempt that depended on a failed or lost input attempt; the node goes
        back to pending and is submitted again. Not counted as an attempt of its own."""
        if self._state[name] is not _State.IN_FLIGHT:
            return
        handle = self._live.pop(name)
        self._inflight.pop(handle, None)
        self.backend.forget(handle)
        self._move(name, _State.PENDING)
        # the hints its inputs pushed may all have come while this attempt was in flight (and been dropped as
        # stale): look at it again (a hint for a node that is not submittable yet is dropped harmlessly)
        heapq.heappush(self._ready, (self._rank[name], name))

    def _discard_consumers(self, name: str) -> None:
        """Discard every in-flight attempt that (through other in-flight attempts) reads ``name``'s
        current output. Nodes that already succeeded keep their outputs, and so do their consumers."""
        todo = list(self._children[name])
        seen: set[str] = set()
        while todo:
            n = todo.pop()
            if n in seen or not self._state[n].open:
                continue  # a finished node keeps its output, and so do its consumers
            seen.add(n)
            self._discard(n)  # only a running attempt is discarded; a pending node may still have running consumers
            todo.extend(self._children[n])

    def _recompute_lost_inputs(self, name: str) -> bool:
        """An input's output object was lost with the machine that held it: run that input again.

        Ray cannot rebuild it (its own retries are off), so the driver does. The consumer's attempt
        is discarded (it never ran) and submitted again after the recomputed inputs.
        """
        lost: list[str] = []
        deadline = time.monotonic() + LOST_NODE_WAIT_S
        while True:  # the cluster may take a moment to declare the machine dead
            alive = self.backend.alive_nodes()
            lost = [u for u in self._producers(name) if self._state[u] is _State.SUCCEEDED
                    and self.records[u].worker_node_id not in alive]
            if lost or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if not lost:
            return False
        self._discard(name)
        for u in lost:
            log.warning("output of node %r was lost with its Ray node %s; computing it again", u,
                        self.records[u].worker_node_id)
            self._reopen(u)
        return True

    def _producers(self, name: str) -> list[str]:
        """The nodes whose attempts made ``name``'s inputs: its inputs, a mapped input's items in its place."""
        out: list[str] = []
        for u in dict.fromkeys(self._inputs[name]):
            m = self._maps.get(u)
            out.extend(m.items if m is not None else [u])
        return out

    def _recompute_stored_input(self, name: str, error: ErrorInfo) -> bool:
        """A reused input's stored object was corrupt (or gone): it is a cache miss, so run its producer."""
        producer = error.detail
        if self._state.get(producer) not in (_State.CACHED, _State.RESUMED):
            return False
        self.stats["corrupt_objects"] += 1
        log.warning("stored output of node %r is unusable (%s); computing it again", producer, error.message)
        self._discard(name)
        self._reopen(producer, "stored output was corrupt or missing; recomputed")
        return True

    def _reopen(self, name: str, reason: str = "output lost with its Ray node; recomputed") -> None:
        """Make a node with an output pending again (its output is gone); consumers already submitted are
        discarded, and keyed again from its new output's data version when they are submitted again."""
        self.records[name].reason = reason
        self._forget_version(name)
        self._live.pop(name, None)
        self._move(name, _State.PENDING)
        self._discard_consumers(name)
        heapq.heappush(self._ready, (self._rank[name], name))

    def _attempt_failed(self, name: str, att: AttemptRecord, error: ErrorInfo) -> None:
        rec = self.records[name]
        att.error = error
        rec.attempt_history.append(att)
        self._live.pop(name, None)
        self._discard_consumers(name)
        policy = self._policy[name]
        if should_retry(policy, error, rec.attempts):
            delay = compute_delay(policy, rec.attempts, self.rng)
            log.info("node %r attempt %d failed (%s: %s); retrying in %.2fs", name, rec.attempts, error.type_name,
                     error.message, delay)
            self._move(name, _State.WAITING_RETRY)
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), name))
            return
        log.warning("node %r failed after %d attempt(s): %s: %s", name, rec.attempts, error.type_name, error.message)
        rec.error = error
        self._move(name, _State.FAILED)
        self._skip_descendants(name)

    def _skip_descendants(self, name: str) -> None:
        """``name`` failed for good: skip every open node downstream of it (fail_fast: abort the run)."""
        for d in self._descendants(name):
            if self._state[d].open:
                self._discard(d)  # one still in flight downstream of a node that succeeded before: not used
                self.records[d].reason = f"upstream node {name!r} failed"
                self._move(d, _State.SKIPPED)
        if self.fail_fast and self._fail_fast_reason is None:
            self._fail_fast_reason = f"fail_fast: node {name!r} failed"

    def _abort(self, reason: str) -> None:
        """Cancel every running attempt and every node not yet finished."""
        self._fail_fast_reason = None  # done: a recomputation after the run (result[name]) is not aborted again
        fused: dict[str, tuple[str, ...]] = {}
        for handle, flight in list(self._inflight.items()):
            self.backend.cancel(handle)
            self._live.pop(flight.node, None)
            if flight.fused:  # which node of its fused task was running is not known: none is charged (see _unfuse)
                fused[flight.node] = flight.fused
                continue
            if any(self._state[u] not in _WITH_OUTPUT for u in self._inputs[flight.node]):
                continue  # queued behind its inputs: it never started, so it is no attempt
            att = flight.attempt
            att.ended_at = time.time()
            att.error = ErrorInfo("odibi_ray.errors.ExecutionError", reason, "", kind=ErrorKind.CANCELLED)
            self.records[flight.node].attempt_history.append(att)
        self._inflight.clear()
        self._ready.clear()
        self._timers.clear()
        self._deadlines.clear()
        for name in sorted(self._in[_State.PENDING] | self._in[_State.WAITING_RETRY] | self._in[_State.IN_FLIGHT]
                           | self._in[_State.MAPPING], key=self._rank.__getitem__):
            if self._state[name].open:  # (a mapped node closes with its last item)
                task = fused.get(name)
                self.records[name].reason = reason if task is None else (
                    f"{reason} (in fused task {task[0]}..{task[-1]}, no attempt counted: which of its nodes was "
                    "running is not known)")
                self._move(name, _State.CANCELLED)

    def _descendants(self, name: str) -> list[str]:
        """Every node downstream of ``name``, in level order."""
        seen: set[str] = set()
        todo = list(self._children[name])
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(self._children[n])
        return sorted(seen, key=self._rank.__getitem__)


def _unconfirmed(name: str, exc: Exception) -> Exception:
    """``exc``, of the same type, saying that it kept ``name``'s checkpoint from being confirmed stored."""
    if not isinstance(exc, StorageError):
        return exc
    try:
        return type(exc)(f"the checkpoint of node {name!r} could not be confirmed stored: {exc}", key=exc.key)
    except Exception:  # noqa: BLE001 - an adapter's own subclass with another signature: keep it as it is
        return exc


def new_run_id() -> str:
    """A sortable, unique run id: UTC timestamp plus random suffix."""
    import secrets

    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


class _Failed(NamedTuple):
    """The output a mapped node maps over could not be had in the driver (``exc`` says why): the node fails."""

    exc: Exception


#: The output a mapped node maps over was stored and found unusable: its producer runs again first.
_UNAVAILABLE = object()
