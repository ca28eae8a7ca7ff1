"""A node of a pipeline: a Python function, where its inputs come from, and how it is run."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, cast
from collections.abc import Callable, Mapping, Sequence

from .incremental import IncrementalSource
from .mapping import MapSpec
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

    ``map_over`` (an upstream node's name, or a :class:`~odibi_ray.definition.mapping.MapSpec`) makes it a
    *mapped* node: ``fn`` runs once per item of that node's output, each item its own task, cache entry and
    checkpoint (see :mod:`odibi_ray.definition.mapping`); the parameter receiving the item is added to
    ``inputs``.

    ``source`` (an :class:`~odibi_ray.definition.incremental.IncrementalSource`, e.g.
    :func:`odibi_ray.sources.kafka_source`) makes it an *incremental source*: each run reads the range the source
    gives when the run starts (in the parameter ``source.param``), and the source commits it once the run succeeds.

    ``fuse`` (default None: as the run says, ``run(fuse=...)``): whether this node may share one Ray task with the
    node before it and the node after it in a chain (each with one consumer; see
    :mod:`odibi_ray.execution.fusion`). It changes how the node is scheduled, never its key, record or output.
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
    map_over: MapSpec | str | None = None
    source: IncrementalSource | None = None
    fuse: bool | None = None

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
        if self.map_over is not None:
            self.map_over = self._resolve_map(self.map_over)
        self._check_values()

    @property
    def mapping(self) -> MapSpec | None:
        """How this node fans out (its ``param`` resolved), or None for a plain node."""
        return self.map_over if isinstance(self.map_over, MapSpec) else None

    def _resolve_map(self, spec: MapSpec | str) -> MapSpec:
        """``map_over`` as a :class:`MapSpec` whose ``param`` is known and is an input of ``over``."""
        if isinstance(spec, str):
            spec = MapSpec(over=spec)
        if not isinstance(spec, MapSpec):
            raise InvalidNodeError(f"node {self.name!r}: map_over must name a node or be a MapSpec, got "
                                   f"{type(spec).__name__}", (self.name,))
        problems = spec.problems()
        if problems:
            raise InvalidPolicyError(f"node {self.name!r}: " + "; ".join(problems), nodes=(self.name,))
        inputs = self.input_map
        param = spec.param
        if param is None:
            fed = [p for p, up in inputs.items() if up == spec.over]
            if len(fed) > 1:
                raise InvalidNodeError(f"node {self.name!r}: parameters {fed} all read {spec.over!r}; say which one "
                                       "receives the items (MapSpec(param=...))", (self.name,))
            param = fed[0] if fed else _first_free_param(self.fn, set(inputs) | set(self.params))
            if param is None:
                raise SignatureMismatchError(
                    f"node {self.name!r}: no parameter of {getattr(self.fn, '__qualname__', self.fn)!s} is left to "
                    f"receive the items of {spec.over!r} (all are inputs, params or have defaults: name one with "
                    "MapSpec(param=...))", nodes=(self.name,))
        elif inputs.get(param, spec.over) != spec.over:
            raise InvalidNodeError(f"node {self.name!r}: map param {param!r} is already the input of "
                                   f"{inputs[param]!r}, not of {spec.over!r}", (self.name,))
        if param in self.params:
            raise SignatureMismatchError(f"node {self.name!r}: map param {param!r} is also given as a param",
                                         nodes=(self.name,))
        inputs[param] = spec.over
        return dataclasses.replace(spec, param=param)

    def _check_values(self) -> None:
        problems = []
        if self.retry is not None and not isinstance(self.retry, RetryPolicy):
            problems.append(f"retry must be a RetryPolicy, got {type(self.retry).__name__}")
        if self.cache is not None and not isinstance(self.cache, (CachePolicy, bool)):
            problems.append(f"cache must be a CachePolicy, True or False, got {type(self.cache).__name__}")
        if self.fuse is not None and not isinstance(self.fuse, bool):
            problems.append(f"fuse must be True, False or None, got {type(self.fuse).__name__}")
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
        if self.source is not None:
            problems.extend(self._source_problems())
        spec = self.mapping
        if spec is not None:
            problems.extend(spec.problems())
            if spec.param is None or self.input_map.get(spec.param) != spec.over:
                problems.append(f"map param {spec.param!r} must be the input of {spec.over!r}")
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

    def _source_problems(self) -> list[str]:
        source = self.source
        if not isinstance(source, IncrementalSource):
            return [f"source must be an IncrementalSource (param, next_range, commit), got {type(source).__name__}"]
        if source.param in self.input_map:
            return [f"source parameter {source.param!r} is also an input"]
        if self.mapping is not None:
            return ["an incremental source cannot also be a mapped node"]
        return []

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
        given = set(self.inputs) | set(self.params) | ({self.source.param} if self.source is not None else set())
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


def _first_free_param(fn: Callable[..., Any], taken: set[str]) -> str | None:
    """The first parameter of ``fn`` that can be passed by keyword, has no default and is not in ``taken`` (a
    parameter with a default is an option, not where items go: name it with ``MapSpec(param=...)``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    for p in params:
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in taken and p.default is p.empty:
            return p.name
    return None


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
