"""One attempt of one node, as run inside a worker (a Ray task or a local thread).

The node function's own exceptions are caught here and returned as data, so the driver can tell an
application error (the policy's ``retry_on`` decides) from a system failure (the task itself died).
"""

from __future__ import annotations

import os
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

import cloudpickle

from . import context
from .result import ErrorInfo

#: What a worker sends back about an attempt: (started_at, ended_at, worker_node_id, pid, error or None).
AttemptMeta = tuple[float, float, str, int, "ErrorInfo | None"]


def error_info(exc: BaseException, kind: str = "application", traceback_text: str | None = None) -> ErrorInfo:
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


def run_attempt(fn: Callable[..., Any], params: Mapping[str, Any], input_names: Sequence[str],
                input_values: Sequence[Any], ctx: context.NodeContext, worker_node_id: str) -> tuple[AttemptMeta, Any]:
    """Call the node function once with its inputs and params; never raises for the function's errors."""
    kwargs = dict(params)
    kwargs.update(zip(input_names, input_values))
    token = context._set(ctx)
    started = time.time()
    try:
        value = fn(**kwargs)
        error = None
    except Exception as exc:  # the node's own failure: reported, not raised
        value, error = None, error_info(exc)
    except SystemExit as exc:  # sys.exit() inside a node is a failure of that node, not of the worker
        value, error = None, error_info(exc)
    finally:
        context._reset(token)
    return (started, time.time(), worker_node_id, os.getpid(), error), value
