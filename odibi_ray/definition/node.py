"""A node of a pipeline: a Python function, where its inputs come from, and how it is run."""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, cast
from collections.abc import Callable, Mapping, Sequence

from .names import MAX_NAME_LEN
from ..errors import InvalidNodeError, InvalidPolicyError, SignatureMismatchError
from .policy import CachePolicy, RetryPolicy, _short

#: Upper bounds of a node's numbers (``num_cpus: 1e300`` or ``memory: 999999999999TiB`` is a typo, not a request).
MAX_RESOURCE = 1e6  # num_cpus, num_gpus and each custom resource
MAX_MEMORY = 2**50  # bytes: 1 PiB
MAX_TIMEOUT_S = 365 * 86400.0  # one attempt: 365 days

#: A node name: matched whole (``fullmatch``; a ``$`` would let a trailing newline through), at most
#: :data:`~odibi_ray.definition.names.MAX_NAME_LEN` characters.
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


@dataclass
class Node:
    """One step of a DAG.

    ``inputs`` maps a parameter of ``fn`` to the upstream node whose output it receives; a list of
    node names is shorthand for ``{name: name}``. ``params`` are constant keyword arguments.
    ``retry`` (default: the DAG's policy) decides what happens when an attempt fails; ``cache`` (default:
    the DAG's) whether a stored output is reused (see :class:`CachePolicy`); ``timeout_s``
    bounds one attempt. ``num_cpus``, ``num_gpus``, ``memory`` (bytes) and ``resources`` (custom
    Ray resources) are the resource request of the Ray task.
    """

    name: str
    fn: Callable[..., Any]
    inputs: Mapping[str, str] | Sequence[str] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    retry: RetryPolicy | None = None
    cache: CachePolicy | bool | None = None
    timeout_s: float | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None
    resources: Mapping[str, float] = field(default_factory=dict)
    version: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not callable(self.fn):
            raise InvalidNodeError(f"node {self.name!r}: fn must be callable, got {type(self.fn).__name__}",
                                   (self.name,))
        if isinstance(self.inputs, str):
            self.inputs = [self.inputs]
        if not isinstance(self.inputs, Mapping):
            self.inputs = {str(n): str(n) for n in self.inputs}
        self.inputs = dict(self.inputs)
        self.params = dict(self.params)
        self.resources = dict(self.resources or {})
        self._check_values()

    def _check_values(self) -> None:
        problems = []
        if self.retry is not None and not isinstance(self.retry, RetryPolicy):
            problems.append(f"retry must be a RetryPolicy, got {type(self.retry).__name__}")
        if self.cache is not None and not isinstance(self.cache, (CachePolicy, bool)):
            problems.append(f"cache must be a CachePolicy, True or False, got {type(self.cache).__name__}")
        if self.timeout_s is not None and (not _number(self.timeout_s) or not 0 < self.timeout_s <= MAX_TIMEOUT_S):
            problems.append(f"timeout_s must be a finite number of seconds > 0 and <= {MAX_TIMEOUT_S:g} (365 days), "
                            f"got {_short(self.timeout_s)}")
        for attr in ("num_cpus", "num_gpus"):
            value = getattr(self, attr)
            if not _number(value) or not 0 <= value <= MAX_RESOURCE:
                problems.append(f"{attr} must be a finite number from 0 to {MAX_RESOURCE:g}, got {_short(value)}")
        if self.memory is not None and (not _number(self.memory) or not 0 < self.memory <= MAX_MEMORY):
            problems.append(f"memory must be a number of bytes > 0 and <= {MAX_MEMORY} (1 PiB), "
                            f"got {_short(self.memory)}")
        for res, amount in self.resources.items():
            if res in ("CPU", "GPU", "memory"):
                problems.append(f"resource {_short(res)} goes in num_cpus / num_gpus / memory, not resources")
            elif not _number(amount) or not 0 <= amount <= MAX_RESOURCE:
                problems.append(f"resource {_short(res)} must be a finite number from 0 to {MAX_RESOURCE:g}, "
                                f"got {_short(amount)}")
        for param, upstream in self.input_map.items():
            if not isinstance(upstream, str):
                problems.append(f"input {param!r} must name a node, got {upstream!r}")
        overlap = sorted(set(self.inputs) & set(self.params))
        if overlap:
            raise SignatureMismatchError(
                f"node {self.name!r}: {overlap} given both as inputs and as params", nodes=(self.name,)
            )
        if problems:
            raise InvalidPolicyError(f"node {self.name!r}: " + "; ".join(problems), nodes=(self.name,))

    @property
    def input_map(self) -> dict[str, str]:
        """``inputs`` as the constructor normalised it (a list of names becomes ``{name: name}``): parameter of
        ``fn`` -> upstream node."""
        return cast("dict[str, str]", self.inputs)  # __post_init__ made it a dict; the field's type is the input's

    @property
    def upstream(self) -> list[str]:
        """Names of the nodes this node reads from (each once, in parameter order)."""
        return list(dict.fromkeys(self.input_map.values()))

    def check_signature(self) -> None:
        """Raise :class:`SignatureMismatchError` if ``fn`` cannot be called with the inputs and params."""
        try:
            sig = inspect.signature(self.fn)
        except (TypeError, ValueError):  # builtins and some C callables have no signature
            return
        given = set(self.inputs) | set(self.params)
        accepts_any = False
        accepted: set[str] = set()
        required: set[str] = set()
        for p in sig.parameters.values():
            if p.kind is p.VAR_KEYWORD:
                accepts_any = True
            elif p.kind is p.VAR_POSITIONAL:
                continue
            elif p.kind is p.POSITIONAL_ONLY:
                if p.default is p.empty:
                    required.add(p.name)  # cannot be passed by keyword: always a mismatch
            else:
                accepted.add(p.name)
                if p.default is p.empty:
                    required.add(p.name)
        missing = sorted(required - given)
        unexpected = sorted(given - accepted) if not accepts_any else []
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"parameter(s) {missing} receive no input or param")
            if unexpected:
                parts.append(f"input(s)/param(s) {unexpected} match no parameter")
            raise SignatureMismatchError(
                f"node {self.name!r}: function {getattr(self.fn, '__qualname__', self.fn)!s}{sig}: "
                + "; ".join(parts),
                nodes=(self.name,),
            )

    def ray_options(self) -> dict[str, Any]:
        """The Ray task options of this node's resource request."""
        opts: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            opts["num_gpus"] = self.num_gpus
        if self.memory:
            opts["memory"] = int(self.memory)
        if self.resources:
            opts["resources"] = dict(self.resources)
        return opts


def _check_name(name: object) -> None:
    """:class:`InvalidNodeError` unless ``name`` can name a node (in checkpoints and their metadata too)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidNodeError(
            f"invalid node name {name!r:.80}: use letters, digits, '_', '-', '.'; start with a letter or '_'",
            nodes=(str(name)[:MAX_NAME_LEN],),
        )
    if len(name) > MAX_NAME_LEN:
        raise InvalidNodeError(f"invalid node name {name[:40]!r}...: {len(name)} characters, at most {MAX_NAME_LEN} "
                               "fit in checkpoint storage", nodes=(name[:MAX_NAME_LEN],))


def _number(value: object) -> bool:
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False
