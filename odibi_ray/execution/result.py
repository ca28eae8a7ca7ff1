"""What a run leaves behind: per-node records (status, attempts, timings, worker, error) and lazy outputs."""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable, Iterator

from ..errors import NodeFailedError, OdibiError, OutputUnavailableError, RunFailedError

log = logging.getLogger(__name__)


class NodeStatus(str, enum.Enum):
    """Final (or current) state of a node in a run."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    CACHED = "cached"  # not run: a fresh stored output under its cache key was reused
    RESUMED = "resumed"  # not run: the resumed run had already produced it
    FAILED = "failed"
    SKIPPED = "skipped"  # not run because an upstream node failed
    CANCELLED = "cancelled"  # not run / stopped because the run failed fast

    @property
    def done(self) -> bool:
        return self not in (NodeStatus.PENDING, NodeStatus.RUNNING)

    @property
    def ok(self) -> bool:
        """The node has its output: it ran and succeeded, or it was reused from storage."""
        return self in _OK


_OK = frozenset({NodeStatus.SUCCEEDED, NodeStatus.CACHED, NodeStatus.RESUMED})


class RunStatus(str, enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ErrorKind(str, enum.Enum):
    """Why an attempt failed (:attr:`ErrorInfo.kind`); the driver's retry decision depends on it.

    A ``str`` enum: a member equals its value (``ErrorKind.TIMEOUT == "timeout"``), prints as it and is written to
    JSON as it, so results written before the enum existed read back unchanged.
    """

    APPLICATION = "application"  # the node function raised; the policy's retry_on decides
    TIMEOUT = "timeout"  # the attempt ran past the node's timeout_s and was stopped; retry_on_timeout decides
    CANCELLED = "cancelled"  # stopped on purpose (fail_fast, a driver takeover, a Ray cancel); never retried
    UPSTREAM_FAILED = "upstream_failed"  # not run: an input's attempt failed; not an attempt of its own
    CORRUPT_INPUT = "corrupt_input"  # a stored input was corrupt or gone (``detail``: its producer, run again)
    STORAGE = "storage"  # the node ran but its checkpoint could not be written or confirmed stored
    WORKER_DIED = "worker_died"  # the worker process died (crash, os._exit, killed past its timeout)
    NODE_LOST = "node_lost"  # the machine running the attempt left the cluster
    OOM = "oom"  # Ray killed the worker for lack of memory
    OBJECT_LOST = "object_lost"  # an input's output object was lost (its machine or owner died)
    SYSTEM = "system"  # any other failure of the backend around the node (not the node's own)

    @property
    def is_system(self) -> bool:
        """A failure of the machinery, not of the node: retried when the policy's ``retry_system_failures``."""
        return self in _SYSTEM_KINDS

    # "timeout", not "ErrorKind.TIMEOUT": what the plain strings this enum replaced printed (since Python 3.11,
    # str() and format() of a str-mixed enum give the member's name).
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return self.value.__format__(spec)


_SYSTEM_KINDS = frozenset({ErrorKind.WORKER_DIED, ErrorKind.NODE_LOST, ErrorKind.OOM, ErrorKind.OBJECT_LOST,
                           ErrorKind.SYSTEM, ErrorKind.STORAGE})


@dataclass(frozen=True)
class ErrorInfo:
    """A failure, in a form that travels between processes without the user's exception classes.

    ``kind`` says why the attempt failed, one :class:`ErrorKind`: ``application`` (the node raised), ``timeout``,
    ``cancelled``, ``upstream_failed``, ``corrupt_input``, or a system failure (``storage``, ``worker_died``,
    ``node_lost``, ``oom``, ``object_lost``, ``system``: :attr:`ErrorKind.is_system`). A plain string naming a
    member is accepted and becomes that member (an ErrorInfo rebuilt from JSON).
    """

    type: str  # module.qualname of the exception class
    message: str
    traceback: str
    kind: ErrorKind = ErrorKind.APPLICATION
    mro: tuple[str, ...] = ()
    detail: str = ""  # e.g. the producer of a corrupt input
    exception_bytes: bytes | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind.__class__ is not ErrorKind:  # a plain string (JSON, older callers): the member, or ValueError
            object.__setattr__(self, "kind", ErrorKind(self.kind))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Every failure crosses from a worker to the driver pickled (by Ray's cloudpickle). As its fields in order,
        # the kind as its plain value, it pickles as fast as before ErrorKind: an enum member made a round trip
        # ~5 us (~60 %) slower; rebuilt through __init__, the kind becomes the member again.
        return (self.__class__, (self.type, self.message, self.traceback, self.kind.value, self.mro, self.detail,
                                 self.exception_bytes))

    @property
    def type_name(self) -> str:
        """The exception class's short name (``ValueError``)."""
        return self.type.rsplit(".", 1)[-1]

    def exception(self) -> BaseException | None:
        """The original exception object, if it could be carried over; else None."""
        if self.exception_bytes is None:
            return None
        try:
            return pickle.loads(self.exception_bytes)
        except Exception:
            return None

    def user_traceback(self, frames: int | None = 5) -> str:
        """The traceback without the engine's frames (odibi_ray's and Ray's), keeping the last ``frames`` frames of
        each exception of the chain (None: all that are not the engine's); "" when none was recorded."""
        return user_traceback(self.traceback, frames)


_FRAME = re.compile(r'^( *)File "([^"]*)", line \d+')
#: Files of the engine in a traceback: odibi_ray's and Ray's (installed, or Ray's Cython ``python/ray/...``), and
#: Python's import machinery.
_ENGINE_FILE = re.compile(r"[/\\](?:site|dist)-packages[/\\](?:odibi_ray|ray)[/\\]|^python[/\\]ray[/\\]|^<frozen ")
_ENGINE_DIRS: list[str] = []


def _engine_dirs() -> list[str]:
    if not _ENGINE_DIRS:
        import importlib.util

        dirs = [os.path.dirname(os.path.abspath(__file__)) + os.sep]
        try:
            spec = importlib.util.find_spec("ray")  # locates Ray without importing it
            if spec is not None and spec.origin:
                dirs.append(os.path.dirname(spec.origin) + os.sep)
        except (ImportError, ValueError):
            pass
        _ENGINE_DIRS[:] = dirs
    return _ENGINE_DIRS


def _is_engine(path: str) -> bool:
    return bool(_ENGINE_FILE.search(path)) or path.startswith(tuple(_engine_dirs()))


def user_traceback(text: str, frames: int | None = 5) -> str:
    """A Python traceback text without the engine's frames (see :data:`_ENGINE_FILE`), and with at most the last
    ``frames`` of the others per exception of the chain; a line says how many frames were left out. Text that is
    not a traceback comes back as it is."""
    lines = text.splitlines()
    out: list[str] = []
    section: list[tuple[bool, list[str]]] = []  # the frames of the exception being read: (engine's, lines)

    def flush() -> None:
        kept = [body for engine, body in section if not engine]
        hidden = len(section) - len(kept)
        if frames is not None and len(kept) > frames:
            hidden += len(kept) - frames
            kept = kept[len(kept) - frames:]
        if hidden:
            out.append(f"  [{hidden} frame(s) not shown: odibi_ray's and Ray's own, or earlier calls]")
        for body in kept:
            out.extend(body)
        section.clear()

    i = 0
    while i < len(lines):
        m = _FRAME.match(lines[i])
        if m is None:
            flush()
            out.append(lines[i])
            i += 1
            continue
        indent, body = len(m.group(1)), [lines[i]]
        i += 1
        while (i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip(" ")) > indent
               and not _FRAME.match(lines[i])):
            body.append(lines[i])
            i += 1
        section.append((_is_engine(m.group(2)), body))
    flush()
    return "\n".join(out)


def span_s(start: float | None, end: float | None) -> float | None:
    """Seconds from ``start`` to ``end`` (never negative: two machines' clocks may disagree), None if either is
    unknown: how long an attempt (or a mapped node's items) ran, wherever it is shown or counted."""
    if start is None or end is None:
        return None
    return max(0.0, end - start)


@dataclass
class AttemptRecord:
    """One try of a node. Times are seconds since the epoch."""

    number: int
    submitted_at: float
    started_at: float | None = None
    ended_at: float | None = None
    worker_node_id: str | None = None
    worker_pid: int | None = None
    error: ErrorInfo | None = None
    bytes_written: int = 0  # checkpoint bytes this attempt wrote (0 when a concurrent run's object was reused)
    bytes_read: int = 0  # stored inputs it read
    storage_s: float = 0.0  # seconds it spent in storage calls
    confirmed: bool = False  # its checkpoint, written behind, was confirmed stored (checkpoint/writeback.py)
    output_tail: str = ""  # the end of what the node function printed (stdout and stderr; attempt.OutputTail)

    @property
    def duration_s(self) -> float | None:
        return span_s(self.started_at, self.ended_at)

    @property
    def queue_wait_s(self) -> float | None:
        """Time from submission to the attempt starting on a worker."""
        if self.started_at is None:
            return None
        return max(0.0, self.started_at - self.submitted_at)


#: The reason a node that ran gets when its output was byte-for-byte the one it had before, so that nodes below it
#: were reused, not run (early cutoff: checkpoint/keys.py). Those nodes' reason names it.
UNCHANGED_OUTPUT = "unchanged output: descendants reused"


@dataclass
class NodeRecord:
    """The outcome of one node in one run."""

    name: str
    level: int
    status: NodeStatus = NodeStatus.PENDING
    attempt_history: list[AttemptRecord] = field(default_factory=list)
    error: ErrorInfo | None = None
    reason: str = ""  # why a node was skipped, cancelled, cached, resumed or recomputed
    cache_key: str | None = None  # with checkpoint storage: the key its output is stored under
    #: With checkpoint storage: its output's data version (``sha256:<hex>`` of the stored bytes), which the keys of
    #: the nodes below it cover (checkpoint/keys.py); None until it has an output.
    data_version: str | None = None
    #: A node reused although inputs of it ran in this run: those inputs, which wrote byte-for-byte the outputs
    #: they had before (early cutoff; :data:`UNCHANGED_OUTPUT`). Empty otherwise.
    unchanged_inputs: tuple[str, ...] = ()
    #: A mapped node: one record per item (named ``node[i]``, in item order), once its items are known; None for a
    #: plain node. The mapped node's own record has no attempts: its items do.
    items: list[NodeRecord] | None = None

    def item_counts(self) -> dict[str, int]:
        """A mapped node's items per status (empty for a plain node)."""
        counts: dict[str, int] = {}
        for item in self.items or ():
            counts[item.status.value] = counts.get(item.status.value, 0) + 1
        return counts

    @property
    def attempts(self) -> int:
        """How many attempts were started (0 for a skipped node)."""
        return len(self.attempt_history)

    @property
    def duration_s(self) -> float | None:
        """How long the last attempt ran on its worker (a mapped node: from its first item's start to its last
        item's end)."""
        if self.items is not None:
            return span_s(self.started_at, self.ended_at)
        return self.attempt_history[-1].duration_s if self.attempt_history else None

    @property
    def started_at(self) -> float | None:
        if self.items is not None:
            return min((s for s in (i.started_at for i in self.items) if s is not None), default=None)
        return self.attempt_history[0].started_at if self.attempt_history else None

    @property
    def ended_at(self) -> float | None:
        if self.items is not None:
            return max((e for e in (i.ended_at for i in self.items) if e is not None), default=None)
        return self.attempt_history[-1].ended_at if self.attempt_history else None

    @property
    def worker_node_id(self) -> str | None:
        """The Ray node (machine) id of the last attempt's worker; ``"local"`` on the local backend."""
        return self.attempt_history[-1].worker_node_id if self.attempt_history else None

    def retry_note(self) -> str:
        """``"retried after ConnectionError"`` for a node whose earlier attempts failed (``"retried 2 times after
        ConnectionError, TimeoutError"``); "" when its first attempt was its last."""
        failed = [a.error.type_name for a in self.attempt_history[:-1] if a.error is not None]
        if not failed:
            return ""
        times = "" if len(failed) == 1 else f" {len(failed)} times"
        return f"retried{times} after " + ", ".join(dict.fromkeys(failed))

    def failure(self) -> NodeFailedError:
        """This node's failure as an exception (carrying the original type, message and traceback)."""
        err = self.error or ErrorInfo("odibi_ray.errors.OdibiError", self.reason or "no error recorded", "")
        failed = [i for i in self.items or () if i.status is NodeStatus.FAILED]
        if failed:  # a mapped node: its first failed item's attempts
            exc = NodeFailedError(failed[0].name, err.type_name, err.message, err.traceback, failed[0].attempts)
            exc.node = self.name
            exc.__cause__ = err.exception()
            return exc
        exc = NodeFailedError(self.name, err.type_name, err.message, err.traceback, self.attempts)
        exc.__cause__ = err.exception()
        return exc


@dataclass(frozen=True)
class SourceRead:
    """What an incremental source node read in a run (its range, a JSON value) and whether the range was committed
    (only a run that succeeded commits; ``reason`` says why not)."""

    range: Any
    committed: bool
    reason: str = ""


@dataclass
class RunResult:
    """Everything one run produced. Outputs are fetched lazily: ``result["node"]``."""

    pipeline: str
    run_id: str
    backend: str
    levels: list[list[str]]
    nodes: dict[str, NodeRecord]
    started_at: float
    ended_at: float
    # Always given (the scheduler's fetch, or no_outputs for a result read back); the None default only lets this
    # field follow the required ones.
    _fetch: Callable[[list[str]], list[Any]] = field(repr=False, compare=False, default=None)  # type: ignore[assignment]
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    stats: dict[str, int] = field(default_factory=dict)  # e.g. corrupt_objects found and recomputed
    _metrics: Any = field(default=None, repr=False, compare=False)  # see ``metrics``
    _derive_metrics: Callable[[], Any] | None = field(default=None, repr=False, compare=False)
    inputs: dict[str, list[str]] = field(default_factory=dict, repr=False)  # node -> its upstream nodes
    stopped_reason: str | None = None  # why the driver stopped early (another driver took the run over)
    resumed_from: str | None = None  # a resume: the status the run had when this driver took it over
    manifest_error: str | None = None  # why the run's manifest could not be closed (it is retried in the background)
    sources: dict[str, SourceRead] = field(default_factory=dict)  # incremental source node -> what it read

    @property
    def metrics(self) -> Any:
        """The run's figures (a ``MetricsManager``) when metrics are on, else None. After a run whose live batches
        already sent them (observe/live.py) they are derived from the records when first read."""
        if self._metrics is None and self._derive_metrics is not None:
            self._metrics, self._derive_metrics = self._derive_metrics(), None
        return self._metrics

    @metrics.setter
    def metrics(self, value: Any) -> None:
        self._metrics, self._derive_metrics = value, None

    def derive_metrics_later(self, derive: Callable[[], Any]) -> None:
        """``metrics`` is ``derive()``, called on first read."""
        self._metrics, self._derive_metrics = None, derive

    @property
    def status(self) -> RunStatus:
        ok = all(r.status.ok for r in self.nodes.values())
        return RunStatus.SUCCEEDED if ok else RunStatus.FAILED

    @property
    def succeeded(self) -> bool:
        return self.status is RunStatus.SUCCEEDED

    @property
    def duration_s(self) -> float:
        return self.ended_at - self.started_at

    def by_status(self, status: NodeStatus) -> list[str]:
        return [n for n, r in self.nodes.items() if r.status is status]

    @property
    def failed(self) -> list[str]:
        return self.by_status(NodeStatus.FAILED)

    def by_level(self) -> list[list[NodeRecord]]:
        """Node records grouped by topological level."""
        return [[self.nodes[n] for n in level] for level in self.levels]

    def raise_for_status(self) -> RunResult:
        """Raise :class:`RunFailedError` if any node did not succeed; return self otherwise."""
        if self.succeeded:
            return self
        failures = {n: self.nodes[n].failure() for n in self.failed}
        not_run = [n for n, r in self.nodes.items() if r.status in (NodeStatus.SKIPPED, NodeStatus.CANCELLED)]
        err = RunFailedError(self.pipeline, failures, not_run)
        if failures:
            err.__cause__ = next(iter(failures.values()))
        raise err

    def output(self, name: str) -> Any:
        """The output of a node that succeeded (fetched from the cluster on first use)."""
        return self.outputs([name])[name]

    __getitem__ = output

    def __contains__(self, name: object) -> bool:
        return name in self.nodes

    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)

    def outputs(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """Outputs of the named nodes (default: every node that succeeded), fetched in one round trip."""
        names = list([n for n, r in self.nodes.items() if r.status.ok] if names is None else names)
        for name in names:
            rec = self.nodes.get(name)
            if rec is None:
                raise OutputUnavailableError(f"no node {name!r} in pipeline {self.pipeline!r}")
            if not rec.status.ok:
                raise OutputUnavailableError(f"node {name!r} has no output: it {rec.status.value}")
        missing = [n for n in names if n not in self._cache]
        if missing:
            try:
                self._cache.update(zip(missing, self._fetch(missing)))
            except OdibiError:
                raise
            except Exception as exc:  # noqa: BLE001 - the backend's own error (Ray's): name the node
                self._fetch_one_by_one(missing, exc)
        return {n: self._cache[n] for n in names}

    def _fetch_one_by_one(self, names: list[str], batch_error: Exception) -> None:
        """After a batch fetch failed with the backend's error: fetch the outputs one by one, and raise
        :class:`OutputUnavailableError` naming the first node whose output cannot be had (e.g. it was lost with
        its Ray node since the node succeeded), never the backend's bare error."""
        for name in names:
            try:
                self._cache[name] = self._fetch([name])[0]
            except OdibiError:
                raise
            except Exception as exc:  # reported, naming the node
                detail = f"{type(exc).__name__}: {exc}"
                if len(detail) > 1000:
                    detail = detail[:1000] + "..."
                raise OutputUnavailableError(f"node {name!r} {self.nodes[name].status.value} but its output cannot be "
                                             f"fetched: {detail}") from exc
        log.debug("outputs fetched one by one after a batch fetch failed: %s", batch_error)

    def report(self, path: str | os.PathLike[str], dag: Any = None, *, inputs: Any = None) -> Path:
        """Write this run's self-contained HTML report (DAG by level, worker timeline, table); return its path."""
        from ..observe.report import write_report

        if dag is None and inputs is None:
            inputs = self.inputs or None  # the edges this run had
        return write_report(self, path, dag, inputs=inputs)

    def to_json(self) -> bytes:
        """The run's records as JSON (no outputs, no pickled exceptions): what `odibi-ray report` re-renders."""
        nodes = {}
        for name, rec in self.nodes.items():
            nodes[name] = _record_json(rec)
        body = {"pipeline": self.pipeline, "run_id": self.run_id, "backend": self.backend,
                "levels": self.levels, "nodes": nodes, "started_at": self.started_at, "ended_at": self.ended_at,
                "stats": self.stats, "inputs": self.inputs, "stopped_reason": self.stopped_reason,
                "resumed_from": self.resumed_from,
                "manifest_error": self.manifest_error,
                "sources": {n: dataclasses.asdict(r) for n, r in self.sources.items()}}
        return json.dumps(body, default=str).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RunResult:
        """A RunResult (records only: no outputs) from :meth:`to_json`."""
        body = json.loads(data)

        def error(d: dict | None) -> ErrorInfo | None:
            return None if not d else ErrorInfo(**{**d, "mro": tuple(d.get("mro") or ())})

        def record(d: dict[str, Any]) -> NodeRecord:
            attempts = [AttemptRecord(**{**a, "error": error(a.get("error"))}) for a in d["attempt_history"]]
            items = d.get("items")
            return NodeRecord(name=d["name"], level=d["level"], status=NodeStatus(d["status"]),
                              attempt_history=attempts, error=error(d.get("error")), reason=d.get("reason", ""),
                              cache_key=d.get("cache_key"), items=None if items is None else [record(i) for i in items])

        nodes = {name: record(d) for name, d in body["nodes"].items()}

        def no_outputs(names: list[str]) -> list[Any]:
            raise OdibiError("outputs are not kept in a re-read run result; read them from the checkpoint storage")

        return cls(pipeline=body["pipeline"], run_id=body["run_id"], backend=body["backend"], levels=body["levels"],
                   nodes=nodes, started_at=body["started_at"], ended_at=body["ended_at"], _fetch=no_outputs,
                   stats=body.get("stats", {}), inputs=body.get("inputs", {}),
                   stopped_reason=body.get("stopped_reason"), manifest_error=body.get("manifest_error"),
                   resumed_from=body.get("resumed_from"),
                   sources={n: SourceRead(**r) for n, r in (body.get("sources") or {}).items()})

    def summary(self) -> str:
        """One line: counts per status and the wall time."""
        counts: dict[str, int] = {}
        for r in self.nodes.values():
            counts[r.status.value] = counts.get(r.status.value, 0) + 1
        parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        line = f"{self.pipeline} run {self.run_id}: {self.status.value} ({parts}) in {self.duration_s:.2f}s"
        cutoff = self.stats.get("early_cutoff", 0)
        if cutoff:
            ran = sum(1 for r in self.nodes.values() if UNCHANGED_OUTPUT in r.reason)
            line += f"; {ran} node(s) ran with an unchanged output: {cutoff} node(s) below reused (early cutoff)"
        if self.resumed_from == "succeeded":
            line += "; this run had already succeeded before this resume"
        if self.stopped_reason:
            line += f"; {self.stopped_reason}"
        if self.manifest_error:
            line += "; its manifest could not be closed (retried in the background; resumable now)"
        return line


def _record_json(rec: NodeRecord) -> dict[str, Any]:
    """A record as JSON-able data (no pickled exceptions); a mapped node's items likewise."""
    d = dataclasses.asdict(dataclasses.replace(rec, items=None))  # (its items once each, below)
    d["items"] = None if rec.items is None else [_record_json(i) for i in rec.items]
    for err in [d.get("error")] + [a.get("error") for a in d["attempt_history"]]:
        if err:
            err.pop("exception_bytes", None)
    d["status"] = rec.status.value
    return d
