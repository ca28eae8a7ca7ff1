"""The one exception hierarchy of odibi_ray.

Every error the library raises on purpose derives from :class:`OdibiError`, so callers can catch
the whole family, or one precise fault (a cycle, an unknown input, ...) by its own type.
"""

from __future__ import annotations

from collections.abc import Sequence


class OdibiError(Exception):
    """Base class of every error odibi_ray raises on purpose."""


# --- definition / validation -------------------------------------------------------------------


class DAGValidationError(OdibiError):
    """The DAG (or one of its nodes) is invalid; raised before anything runs."""

    def __init__(self, message: str, nodes: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.nodes: tuple[str, ...] = tuple(nodes)


class CycleError(DAGValidationError):
    """The DAG has a cycle; ``cycle`` holds its path, first node repeated at the end."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle: tuple[str, ...] = tuple(cycle)
        super().__init__(f"cycle in DAG: {' -> '.join(self.cycle)}", nodes=self.cycle[:-1])


class UnknownInputError(DAGValidationError):
    """A node names an input that is no node of the DAG."""

    def __init__(self, node: str, param: str, missing: str) -> None:
        self.node, self.param, self.missing = node, param, missing
        super().__init__(
            f"node {node!r}: input {param!r} names {missing!r}, which is not a node of the DAG",
            nodes=(node,),
        )


class DuplicateNodeError(DAGValidationError):
    """Two nodes share one name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"duplicate node name {name!r}", nodes=(name,))


class SignatureMismatchError(DAGValidationError):
    """A node function's parameters do not match the node's inputs and params."""


class InvalidPolicyError(DAGValidationError, ValueError):
    """A retry policy, timeout or resource request holds a value that cannot work."""


class UnpicklableNodeError(DAGValidationError):
    """A node's function or params cannot be serialised for a Ray worker."""


class UnschedulableNodeError(DAGValidationError):
    """A node asks for resources that no machine of the Ray cluster has (it would wait forever)."""


class InvalidNodeError(DAGValidationError):
    """A node is malformed in another way (bad name, not callable, ...)."""


# --- execution ---------------------------------------------------------------------------------


class ExecutionError(OdibiError):
    """Something went wrong while running a DAG."""


class MapSplitError(ExecutionError, TypeError):
    """The output a mapped node maps over cannot be split into items (not a list, tuple or Arrow table; no such
    column); the mapped node fails with it, naming itself and the node it maps over."""


class NodeTimeoutError(ExecutionError, TimeoutError):
    """One attempt of a node ran longer than its ``timeout_s``; the attempt was cancelled."""


class SystemFailureError(ExecutionError):
    """The process or machine running an attempt failed (worker died, node lost, out of memory).

    ``kind`` is the :class:`~odibi_ray.execution.result.ErrorKind` of the failure (``worker_died``,
    ``node_lost``, ``oom``, ``object_lost``, ``cancelled``, ``system``; an ``ErrorKind`` is a ``str``).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class UnserialisableOutputError(ExecutionError):
    """A node returned a value that cannot be serialised for its consumers (a lock, a generator, an open
    connection, ...): the node's own failure, raised where its Ray worker hands the value to Ray.

    ``node`` names the node, ``value_type`` is the returned value's type (``module.qualname``), ``reason`` what
    the serialiser said. An application error of the node: its ``RetryPolicy.retry_on`` decides a retry, as for
    any exception it raises. (With checkpoint storage the worker encodes the output first and the same fault is a
    ``CodecError``; the local backend passes values in memory, so there an unpicklable output is fine.)
    """

    def __init__(self, node: str, value_type: str, reason: str) -> None:
        self.node, self.value_type, self.reason = node, value_type, reason
        super().__init__(f"node {node!r} returned a value of type {value_type} that cannot be serialised for its "
                         f"consumers: {reason}")

    def __reduce__(self):
        return (type(self), (self.node, self.value_type, self.reason))


class NodeFailedError(ExecutionError):
    """A node failed for good. Carries the original exception's type name, message and traceback."""

    def __init__(self, node: str, error_type: str, message: str, traceback_text: str, attempts: int) -> None:
        self.node = node
        self.error_type = error_type
        self.error_message = message
        self.traceback_text = traceback_text
        self.attempts = attempts
        super().__init__(
            f"node {node!r} failed after {attempts} attempt(s): {error_type}: {message}"
        )


class RunFailedError(ExecutionError):
    """A run ended with failed nodes; ``failures`` maps node name to its :class:`NodeFailedError`."""

    def __init__(self, pipeline: str, failures: dict[str, NodeFailedError], skipped: Sequence[str]) -> None:
        self.pipeline = pipeline
        self.failures = failures
        self.skipped = tuple(skipped)
        parts = [str(e) for e in failures.values()]
        msg = f"pipeline {pipeline!r} failed: " + "; ".join(parts)
        if skipped:
            msg += f" ({len(skipped)} node(s) not run: {', '.join(sorted(skipped)[:10])}"
            msg += ", ...)" if len(skipped) > 10 else ")"
        super().__init__(msg)


class RunTakenOverError(ExecutionError):
    """Another driver took this run over (a resume, maybe forced): the driver that gets this stops driving it."""


class RunStillRunningError(ExecutionError):
    """A resume found the run still driven by a live driver (pass ``force=True`` if that driver is known dead)."""


class OutputUnavailableError(ExecutionError, KeyError):
    """The output of a node was asked for, but the node did not succeed (or is unknown)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


# --- storage -----------------------------------------------------------------------------------


class StorageError(OdibiError):
    """A storage adapter could not do what was asked. ``key`` is the object key involved, if any.

    Messages never contain credentials (keys, SAS tokens, bearer tokens): adapters build them from the
    URI without its query string and from the key only.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class NotFoundError(StorageError, KeyError):
    """The object (or container/bucket) does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class AlreadyExistsError(StorageError):
    """A create-only put found the key already there."""


class PreconditionFailedError(StorageError):
    """A compare-and-swap put found another ETag than the one it was given."""


class StorageUnavailableError(StorageError):
    """The storage endpoint could not be reached or kept failing after bounded retries."""


class StorageAuthError(StorageError):
    """The credentials were refused or are missing. Never retried."""


class InvalidURIError(StorageError, ValueError):
    """A storage URI is malformed or names an unknown scheme."""


class CorruptObjectError(StorageError):
    """A stored node output does not match its recorded SHA-256 (altered or truncated): a cache miss."""


class UntrustedObjectError(CorruptObjectError):
    """A stored object the reader must not decode: unsigned or wrongly signed while signing is on, or a pickle
    while ``allow_pickle`` is off. Like a corrupt object it is a cache miss, never a value."""

