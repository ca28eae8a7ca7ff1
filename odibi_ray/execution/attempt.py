"""One attempt of one node, as run inside a worker (a Ray task or a local thread).

The node function's own exceptions are caught here and returned as data, so the driver can tell an
application error (the policy's ``retry_on`` decides) from a system failure (the task itself died).
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, NamedTuple
from collections.abc import Callable, Mapping, Sequence

import cloudpickle

from . import context
from .fanout import Collect, MapItem, regroup
from ..checkpoint.codecs import CodecError
from ..checkpoint.store import OutputTarget, Provenance, StoredRef, read_output_sized, write_output_versioned
from ..checkpoint.writeback import write_behind
from ..errors import CorruptObjectError, NodeTimeoutError, NotFoundError, StorageError
from .result import ErrorInfo, ErrorKind


class IOCounts(NamedTuple):
    """The storage traffic of one attempt, counted in its worker."""

    bytes_written: int  # checkpoint bytes written (0 when written behind: the driver confirms those)
    bytes_read: int  # stored inputs read
    storage_s: float  # seconds spent in storage calls


NO_IO = IOCounts(0, 0, 0.0)


class _IOTally:
    """The :class:`IOCounts` of an attempt while it runs."""

    __slots__ = ("bytes_written", "bytes_read", "storage_s")

    def __init__(self) -> None:
        self.bytes_written = 0
        self.bytes_read = 0
        self.storage_s = 0.0

    def counts(self) -> IOCounts:
        return IOCounts(self.bytes_written, self.bytes_read, self.storage_s)


class AttemptMeta(NamedTuple):
    """What a worker sends back to the driver about one attempt (the output itself travels apart from it).

    A NamedTuple, not a dataclass: code written for the positional record (``started, ended, node_id, pid, error,
    io, *tail = meta``) still reads it. The Ray backend does not pickle it as it is (slower): a task returns a
    success without output as packed bytes and anything else as a plain tuple (``ray_tasks._wire_meta``).
    """

    started_at: float | None  # None: the attempt's task failed before it could say (a system failure)
    ended_at: float
    worker_node_id: str | None  # Ray node id, "local" on the local backend; None when unknown
    pid: int | None
    error: ErrorInfo | None  # None: the attempt succeeded
    io: IOCounts
    output_tail: str = ""  # the end of what the node function printed (:class:`OutputTail`); "" when nothing
    #: The SHA-256 (hex) of the checkpoint the worker encoded: the output's data version, which the keys of the
    #: nodes below it cover (checkpoint/keys.py); "" when nothing was checkpointed.
    output_sha256: str = ""
    output_codec: str = ""  # the codec of that checkpoint (part of the data version, see checkpoint/keys.py)
    #: The cache key the worker gave the node (a node keyed in its worker: execution/backends/worker_keys.py); ""
    #: when the driver keyed it.
    cache_key: str = ""
    #: "cached" or "resumed": the worker found the node's output stored under that key and did not run it.
    reused: str = ""

#: How long a timed-out attempt may ignore its alarm before a Ray worker process kills itself.
HARD_KILL_GRACE_S = 5.0


class UpstreamFailed:
    """The output slot of a failed attempt. A task that receives one as input returns at once."""

    __slots__ = ()

    def __reduce__(self):
        return (UpstreamFailed, ())


FAILED = UpstreamFailed()


def error_info(exc: BaseException, kind: ErrorKind = ErrorKind.APPLICATION,
               traceback_text: str | None = None) -> ErrorInfo:
    """Describe an exception so that it can cross processes and be matched by type name."""
    tp = type(exc)
    mro = tuple(f"{c.__module__}.{c.__qualname__}" for c in tp.__mro__)
    if traceback_text is None:
        traceback_text = "".join(traceback.format_exception(tp, exc, exc.__traceback__))
    try:
        exc_bytes: bytes | None = cloudpickle.dumps(exc)
    except Exception:
        exc_bytes = None
    return ErrorInfo(type=mro[0], message=str(exc), traceback=traceback_text, kind=kind, mro=mro,
                     exception_bytes=exc_bytes)


_TIMEOUT_TYPE = f"{NodeTimeoutError.__module__}.{NodeTimeoutError.__qualname__}"
_UPSTREAM_FAILED = ErrorInfo("odibi_ray.execution.attempt.UpstreamFailed", "an input's attempt failed", "",
                             kind=ErrorKind.UPSTREAM_FAILED)


def run_attempt(fn: Callable[..., Any], params: Mapping[str, Any], input_names: Sequence[str],
                input_values: Sequence[Any], ctx: context.NodeContext, worker_node_id: str,
                timeout_s: float | None = None, hard_kill: bool = False,
                target: OutputTarget | None = None,
                still_wanted: Callable[[], bool] | None = None,
                groups: Sequence[Collect | None] | None = None,
                item: MapItem | None = None) -> tuple[AttemptMeta, Any]:
    """Call the node function once with its inputs and params; never raises for the function's errors.

    With ``timeout_s`` and on the main thread (a Ray worker), an alarm raises
    :class:`NodeTimeoutError` inside the function once it has run that long; with ``hard_kill`` a
    function that ignores the alarm for :data:`HARD_KILL_GRACE_S` more gets its process killed.
    Inputs that are :class:`StoredRef` are read from storage here; with ``target`` the output is
    checkpointed here (one object with its metadata) before the attempt counts as succeeded — unless
    ``still_wanted()`` says the driver gave up on this attempt (a timed-out local thread). What the function
    writes to sys.stdout/sys.stderr still goes there, and its end (:class:`OutputTail`) comes back in the
    metadata's ``output_tail``.

    ``groups`` (a consumer of a mapped node): the flat ``input_values`` are regrouped per input
    (:func:`~odibi_ray.execution.fanout.regroup`; a ``reduce`` that raises fails this attempt). ``item`` (an item of
    a mapped node): its value is passed as ``item.param``."""
    started = time.time()
    pid = process_id()
    stored = False
    for v in input_values:  # one pass: a task's Python runs cold between Ray's own per-task work (~5x its hot cost)
        if v.__class__ is UpstreamFailed:
            return AttemptMeta(started, started, worker_node_id, pid, _UPSTREAM_FAILED, NO_IO), FAILED
        if v.__class__ is StoredRef:
            stored = True
    io = _IOTally()
    if stored:
        input_values, error = _load_stored(input_values, io)
        if error is not None:
            return AttemptMeta(started, time.time(), worker_node_id, pid, error, io.counts()), FAILED
    kwargs = dict(params)
    if groups is None:
        kwargs.update(zip(input_names, input_values))
    if item is not None:
        kwargs[item.param] = item.value
    token = context._set(ctx)
    if sys.stdout.__class__ is not _Tee or sys.stderr.__class__ is not _Tee:
        _install_tees()
    tail = OutputTail()
    capture = _CAPTURE.set(tail)
    alarm = _Alarm(ctx, timeout_s, hard_kill) if timeout_s else None
    try:
        try:
            if alarm:
                alarm.start()
            if groups is not None:  # here: a reduce that raises is this attempt's failure
                kwargs.update(zip(input_names, regroup(input_values, groups)))
            value = fn(**kwargs)
            error = None
        finally:  # disarm before anything else: an alarm firing up to here is caught just below
            if alarm:
                alarm.stop()
    except Exception as exc:  # the node's own failure: reported, not raised
        value, error = FAILED, error_info(exc)
    except SystemExit as exc:  # sys.exit() inside a node is a failure of that node, not of the worker
        value, error = FAILED, error_info(exc)
    finally:
        _CAPTURE.reset(capture)
        context._reset(token)
    if alarm is not None and alarm.fired:
        # Timed out, even if the function caught the NodeTimeoutError and returned or raised something else.
        if error is None or error.type != _TIMEOUT_TYPE:
            error = error_info(alarm.exception(), traceback_text="(the node caught its NodeTimeoutError)")
        value, error = FAILED, dataclasses.replace(error, kind=ErrorKind.TIMEOUT)
    ended = time.time()
    sha256 = codec = ""
    if error is None and target is not None and (still_wanted is None or still_wanted()):
        # Checkpoint from the worker: one object, its metadata saying what made it.
        made = Provenance(ctx.attempt, worker_node_id, pid, started, ended)
        t0 = time.perf_counter()
        try:
            if target.write_behind:  # encoded now, queued on this process's writer threads; the driver confirms it
                sha256, codec = write_behind(target, value, made)
            else:
                io.bytes_written, sha256, codec = write_output_versioned(target, value, made)
        except StorageError as exc:
            value, error = FAILED, error_info(exc, kind=ErrorKind.STORAGE)
        except Exception as exc:  # noqa: BLE001 - not encodable (CodecError): the node's failure, any backend
            value, error = FAILED, error_info(_naming_node(ctx.where, exc))
        if not target.write_behind:
            io.storage_s += time.perf_counter() - t0
    text = tail.text() if tail.size else ""
    if error is not None:
        sha256 = codec = ""
    return AttemptMeta(started, ended, worker_node_id, pid, error, io.counts(), text, sha256, codec), value


_PID = os.getpid()


def process_id() -> int:
    """This process's id, read once (and again in a forked child): ``os.getpid()`` is a system call, ~5 µs of a
    no-op task's time in a Ray worker on the test VM (cProfile in the worker)."""
    return _PID


def _forked() -> None:
    global _PID
    _PID = os.getpid()


os.register_at_fork(after_in_child=_forked)


def _naming_node(node: str, exc: Exception) -> Exception:
    """A :class:`CodecError` that says which node's output it is about (the codec knows only the value's type);
    any other exception as it is."""
    if not isinstance(exc, CodecError) or repr(node) in str(exc):
        return exc
    named = CodecError(f"node {node!r}: {exc}")
    named.__cause__ = exc
    return named


def _load_stored(values: Sequence[Any], io: _IOTally) -> tuple[list[Any], ErrorInfo | None]:
    """Replace stored inputs (outputs of cached or resumed nodes) by their values, read here in the worker;
    ``io`` gains the bytes read and the seconds it took."""
    out = []
    for v in values:
        if v.__class__ is StoredRef:
            t0 = time.perf_counter()
            try:
                v, nbytes = read_output_sized(v.storage, v.key, v.trust)
                io.bytes_read += nbytes
                io.storage_s += time.perf_counter() - t0
            except (CorruptObjectError, CodecError) as exc:  # altered, truncated, or no longer decodable
                try:
                    v.storage.delete(v.key)  # never trusted again: the producer runs and writes it anew
                except StorageError:
                    pass
                return [], dataclasses.replace(error_info(exc, kind=ErrorKind.CORRUPT_INPUT), detail=v.node)
            except NotFoundError as exc:  # purged meanwhile: the producer must run again
                return [], dataclasses.replace(error_info(exc, kind=ErrorKind.CORRUPT_INPUT), detail=v.node)
            except StorageError as exc:
                return [], error_info(exc, kind=ErrorKind.STORAGE)
        out.append(v)
    return out, None


#: How much of an attempt's output (sys.stdout and sys.stderr, interleaved) is kept: its last lines, at most this
#: many characters. It travels back with the attempt's metadata and is kept in the run's result.
TAIL_LINES = 200
TAIL_CHARS = 64 * 1024

#: The output tail of the attempt running in this thread (context), if any.
_CAPTURE: contextvars.ContextVar[OutputTail | None] = contextvars.ContextVar("odibi_ray_output", default=None)
_INSTALL_LOCK = threading.Lock()


class OutputTail:
    """What one attempt wrote to sys.stdout and sys.stderr, bounded: the last :data:`TAIL_LINES` lines, at most
    :data:`TAIL_CHARS` characters. An attempt that writes nothing costs one empty object."""

    __slots__ = ("chunks", "size", "dropped", "writing")

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.size = 0  # characters in chunks
        self.dropped = 0  # characters cut from the front
        self.writing = False  # inside a tee's write (a tee wrapping a tee keeps the text once)

    def add(self, text: str) -> None:
        self.chunks.append(text)
        self.size += len(text)
        if self.size > 2 * TAIL_CHARS:  # memory stays bounded, whatever the node prints
            joined = "".join(self.chunks)
            cut = len(joined) - TAIL_CHARS
            self.dropped += cut
            self.chunks, self.size = [joined[cut:]], TAIL_CHARS

    def text(self) -> str:
        """The kept output; when some was cut, a first line says how much."""
        text = "".join(self.chunks)
        dropped = self.dropped
        if len(text) > TAIL_CHARS:
            dropped += len(text) - TAIL_CHARS
            text = text[-TAIL_CHARS:]
        if dropped:  # start at a line's start
            nl = text.find("\n")
            if 0 <= nl < len(text) - 1:
                dropped += nl + 1
                text = text[nl + 1:]
        if text.count("\n", 0, len(text) - 1) >= TAIL_LINES:
            lines = text.split("\n")
            keep = "\n".join(lines[-(TAIL_LINES + (1 if text.endswith("\n") else 0)):])
            dropped += len(text) - len(keep)
            text = keep
        if dropped:
            text = f"[odibi_ray: {dropped} earlier characters of output not kept]\n" + text
        return text


class _Tee:
    """``sys.stdout``/``sys.stderr`` of a process that runs attempts: every write goes to the stream it wraps, as
    before (on Ray: the worker's log, which Ray forwards to the driver and ``ray logs`` reads), and also to the
    :class:`OutputTail` of the attempt running in the writing thread, if any (threads share sys.stdout, so the
    attempt is found in a context variable; a thread the node starts itself is not captured)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        tail = _CAPTURE.get()
        if tail is None or tail.writing or text.__class__ is not str:
            return self._stream.write(text)
        tail.add(text)
        tail.writing = True
        try:
            return self._stream.write(text)
        finally:
            tail.writing = False

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _install_tees() -> None:
    """Put a :class:`_Tee` on sys.stdout and sys.stderr (once per process, again if something replaced them).
    A handler of the root logger writing to either stream (``logging.basicConfig``) writes through the tee too."""
    with _INSTALL_LOCK:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is None or stream.__class__ is _Tee:
                continue
            tee = _Tee(stream)
            setattr(sys, name, tee)
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is stream:
                    handler.setStream(tee)


class _Alarm:
    """Per-attempt timeout inside the worker, counted from the start of the function (not from submission)."""

    def __init__(self, ctx: context.NodeContext, timeout_s: float, hard_kill: bool) -> None:
        self.ctx, self.timeout_s, self.hard_kill = ctx, timeout_s, hard_kill
        self._old: Any = None
        self._armed = False
        self.fired = False
        self._killer: threading.Timer | None = None

    def exception(self) -> NodeTimeoutError:
        return NodeTimeoutError(f"node {self.ctx.where!r} attempt {self.ctx.attempt} exceeded "
                                f"timeout_s={self.timeout_s} and was cancelled")

    def _fire(self, signum: int, frame: Any) -> None:
        if not self.fired:
            self.fired = True
            raise self.exception()

    def start(self) -> None:
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
            self._old = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
            self._armed = True
        if self.hard_kill:
            self._killer = threading.Timer(self.timeout_s + HARD_KILL_GRACE_S, os._exit, args=(70,))
            self._killer.daemon = True
            self._killer.start()

    def stop(self) -> None:
        if self._armed:
            self._armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old if self._old is not None else signal.SIG_DFL)
        if self._killer is not None:
            self._killer.cancel()
