"""YAML pipelines: load a pipeline file, apply ``--set`` overrides, validate it (pydantic), build the DAG.

A pipeline file (every field but ``name`` and ``nodes`` optional; unknown fields are errors)::

    name: sales
    storage: abfss://lake@acct.dfs.core.windows.net/odibi     # default: the local folder .odibi/<name>
    storage_options: {account_key: env://AZ_KEY}              # values may be env:// or kv:// references
    signing_key: env://ODIBI_SIGNING_KEY                       # sign and check every checkpoint (a list: rotation)
    allow_pickle: false                                        # outputs only pickle can carry fail their node
    defaults:
      retry: {max_attempts: 2, delay_s: 0.5}                  # DAG(retry=...)
      cache: {ttl_s: 86400}                                   # DAG(cache=...): false, true or a policy
      resources: {num_cpus: 1}                                # for nodes without their own
      timeout_s: 600
      fuse: true                                              # chains share one Ray task (execution/fusion.py)
    nodes:
      extract: {fn: mypkg.steps:extract, params: {rows: 1000}}
      clean:
        fn: mypkg.steps:clean
        inputs: {raw: extract}                                # or a list: [extract]
        retry: {max_attempts: 4, backoff: 2.0, jitter: 0.2, retry_on: [builtins.IOError]}
        cache: false                                          # or {ttl_s: 3600, version: "2", key_fn: m:f}
        resources: {num_cpus: 2, num_gpus: 0, memory: 2GiB, custom: {bigmem: 1}}
        timeout_s: 60
        version: "3"
        fuse: false                                           # never share a task (default: defaults.fuse)
      list_files: {fn: mypkg.steps:list_files, params: {folder: landing/}, cache: false}
      read_file:                                              # a mapped node: one task per item of list_files
        fn: mypkg.steps:read_file
        map: {over: list_files, max_parallel: 8}              # also param, allow_partial, batch_rows, by, reduce
      combine: {fn: mypkg.steps:combine, inputs: [read_file]} # gets the list of read_file's results

:meth:`PipelineSpec.to_dag` builds the same :class:`~odibi_ray.definition.dag.DAG` (equal :class:`Node` objects) as the
Python API would. Every error is a :class:`SpecError` naming the file, the field path and what was expected.
A key given twice in a mapping, aliases that expand past :data:`MAX_ALIAS_NODES` values, nesting deeper than
:data:`MAX_YAML_DEPTH` and numbers past their bounds (``max_attempts``, delays, ``timeout_s``, ``ttl_s``,
resources) are errors too; a message quotes at most a short prefix of a value, and never a secret option's.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import re
from pathlib import Path
from typing import Annotated, Any
from collections.abc import Sequence

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, ValidationError, field_validator,
                      model_validator)

from .dag import DAG
from ..errors import DAGValidationError, OdibiError
from .mapping import MAX_PARALLEL, MapSpec
from .node import MAX_MEMORY, MAX_RESOURCE, MAX_TIMEOUT_S, Node
from .policy import MAX_ATTEMPTS, MAX_BACKOFF, MAX_DELAY_S, MAX_TTL_S, CachePolicy, RetryPolicy, _short

log = logging.getLogger(__name__)

__all__ = ["SpecError", "SpecFileNotFoundError", "PipelineSpec", "NodeSpec", "MapNodeSpec", "load_pipeline",
           "apply_overrides", "import_object", "default_storage"]

_FN_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_NODE_NAME = r"^[A-Za-z_][A-Za-z0-9_.\-]*\z"  # pydantic's Rust regex: \z is the very end (no trailing \n)
#: A function named by ``module:function``, a dotted path ``package.module.function`` or a builtin's name (``sum``).
_OBJECT_RE = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?\z"
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")

#: Bounds of a pipeline file's YAML (and of a ``--set`` value): aliases (``*name``) may add at most
#: MAX_ALIAS_NODES values to the document (a "billion laughs" file nests aliases to expand exponentially), and
#: mappings / lists may nest at most MAX_YAML_DEPTH levels deep.
MAX_ALIAS_NODES = 50_000
MAX_YAML_DEPTH = 100
#: How much of a value an error message quotes.
MAX_QUOTED = 80
#: Option names whose values are never quoted in an error message: every storage adapter's secret options and
#: the checkpoint signing key, plus any name that looks like one (``*_key``, ``*secret*``, ``*token*``, ...).
SECRET_OPTIONS = frozenset({"account_key", "client_secret", "sas_token", "connection_string", "access_key",
                            "secret_key", "session_token", "signing_key", "password"})
_SECRET_NAME = re.compile(r"(secret|passw|token|credential|connection_string|signing|(^|_)key(s)?$)", re.I)


class SpecError(OdibiError, ValueError):
    """A pipeline file is unreadable or invalid; the message names the file, the field path and what was expected."""

    def __init__(self, message: str, file: str = "", path: str = "") -> None:
        super().__init__(message)
        self.file, self.path = file, path


class SpecFileNotFoundError(SpecError, FileNotFoundError):
    """The pipeline file does not exist."""


def _cut(text: str, limit: int = MAX_QUOTED) -> str:
    """``text`` cut to ``limit`` characters (``...`` marks the cut)."""
    return text if len(text) <= limit else text[:limit] + "..."


def _is_secret(path: Sequence[Any]) -> bool:
    """True when a field path names a secret option (its value is never quoted)."""
    return any(isinstance(p, str) and (p in SECRET_OPTIONS or _SECRET_NAME.search(p)) for p in path)


def _shown(path: Sequence[Any], value: Any) -> str:
    """How an error message quotes ``value`` found at ``path``: a short prefix, or only its type for a secret."""
    if _is_secret(path):
        return f"a {type(value).__name__} (the value of a secret option is not shown)"
    return _short(value)


# --- schema ------------------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RetrySpec(_Strict):
    """``retry:`` of a node or of ``defaults``: the fields of :class:`RetryPolicy` (unset ones keep its defaults)."""

    max_attempts: int = Field(1, ge=1, le=MAX_ATTEMPTS)
    delay_s: float = Field(1.0, ge=0, le=MAX_DELAY_S, allow_inf_nan=False)
    backoff: float = Field(2.0, ge=1, le=MAX_BACKOFF, allow_inf_nan=False)
    max_delay_s: float = Field(60.0, ge=0, le=MAX_DELAY_S, allow_inf_nan=False)
    jitter: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    retry_on: list[Annotated[str, Field(pattern=r"^[A-Za-z_][\w.:]*$")]] = Field(
        default_factory=lambda: ["builtins.Exception"])
    retry_system_failures: bool = True
    retry_on_timeout: bool = True


class CacheSpec(_Strict):
    """``cache:`` as a mapping: the fields of :class:`CachePolicy`; ``key_fn`` is a ``module:function`` path."""

    ttl_s: float | None = Field(None, gt=0, le=MAX_TTL_S, allow_inf_nan=False)
    version: str | None = None
    key_fn: Annotated[str, Field(pattern=_FN_RE.pattern)] | None = None
    enabled: bool = True


def _cache_tag(value: Any) -> str:
    return "<flag>" if isinstance(value, bool) else "<policy>"


def _inputs_tag(value: Any) -> str:
    return "<list>" if isinstance(value, (list, tuple)) else "<map>"


CacheField = Annotated[Annotated[bool, Tag("<flag>")] | Annotated[CacheSpec, Tag("<policy>")],
                       Discriminator(_cache_tag)]
InputsField = Annotated[Annotated[list[str], Tag("<list>")] | Annotated[dict[str, str], Tag("<map>")],
                        Discriminator(_inputs_tag)]


class ResourcesSpec(_Strict):
    """``resources:``: the Ray task's request; ``memory`` in bytes or with a unit (``512MiB``, ``2GB``)."""

    num_cpus: float | None = Field(None, ge=0, le=MAX_RESOURCE, allow_inf_nan=False)
    num_gpus: float | None = Field(None, ge=0, le=MAX_RESOURCE, allow_inf_nan=False)
    memory: int | str | None = None
    custom: dict[str, float] = Field(default_factory=dict)

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: int | str | None) -> int | str | None:
        if value is None:
            return None
        n = parse_memory(value)
        if n <= 0:
            raise ValueError("memory must be > 0 bytes")
        return value  # parse_memory refused more than MAX_MEMORY

    @field_validator("custom")
    @classmethod
    def _custom(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if name in ("CPU", "GPU", "memory"):
                raise ValueError(f"resource {_short(name)} goes in num_cpus / num_gpus / memory, not custom")
            if not math.isfinite(amount) or not 0 <= amount <= MAX_RESOURCE:
                raise ValueError(f"custom resource {_short(name)} must be a finite number from 0 to "
                                 f"{MAX_RESOURCE:g}, got {_short(amount)}")
        return value


class MapNodeSpec(_Strict):
    """``map:`` of a node: the fields of :class:`~odibi_ray.definition.mapping.MapSpec`; ``reduce`` is a
    ``module:function`` path (or a dotted path, or a builtin's name such as ``sum``)."""

    over: Annotated[str, Field(pattern=_NODE_NAME)]
    param: Annotated[str, Field(pattern=r"^[A-Za-z_]\w*\z")] | None = None
    max_parallel: int | None = Field(None, ge=1, le=MAX_PARALLEL)
    allow_partial: bool = False
    batch_rows: int | None = Field(None, ge=1)
    by: Annotated[str, Field(min_length=1)] | None = None
    reduce: Annotated[str, Field(pattern=_OBJECT_RE)] | None = None

    @model_validator(mode="after")
    def _one_split(self) -> MapNodeSpec:
        if self.batch_rows is not None and self.by is not None:
            raise ValueError("give batch_rows (rows per item) or by (one item per value of a column), not both")
        return self


def _map_tag(value: Any) -> str:
    return "<node>" if isinstance(value, str) else "<spec>"


#: ``map: list_files`` is short for ``map: {over: list_files}``.
MapField = Annotated[Annotated[Annotated[str, Field(pattern=_NODE_NAME)], Tag("<node>")]
                     | Annotated[MapNodeSpec, Tag("<spec>")], Discriminator(_map_tag)]


class NodeSpec(_Strict):
    """One entry of ``nodes:`` (its key is the node's name)."""

    fn: Annotated[str, Field(pattern=_FN_RE.pattern)]
    inputs: InputsField = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    retry: RetrySpec | None = None
    cache: CacheField | None = None
    resources: ResourcesSpec | None = None
    timeout_s: float | None = Field(None, gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)
    version: str | None = None
    description: str = ""
    map: MapField | None = None  # a mapped node: fn runs once per item of the output of map.over
    fuse: bool | None = None  # Node.fuse (None: defaults.fuse, else the run's)

    @property
    def map_spec(self) -> MapNodeSpec | None:
        """``map`` as a :class:`MapNodeSpec` (the short form ``map: NODE`` too), None for a plain node."""
        return MapNodeSpec(over=self.map) if isinstance(self.map, str) else self.map


class DefaultsSpec(_Strict):
    """``defaults:``: the DAG's retry and cache policies, and resources / timeout for nodes without their own."""

    retry: RetrySpec | None = None
    cache: CacheField = True
    resources: ResourcesSpec | None = None
    timeout_s: float | None = Field(None, gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)
    fuse: bool | None = None  # Node.fuse of nodes without their own


class PipelineSpec(_Strict):
    """A validated pipeline file; :meth:`to_dag` builds its DAG."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+\z")]
    description: str = ""
    storage: str | None = None
    storage_options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    signing_key: str | list[str] | None = None  # env:// or kv:// references (a list: the first signs)
    allow_pickle: bool | None = None
    defaults: DefaultsSpec = Field(default_factory=DefaultsSpec)
    nodes: dict[Annotated[str, Field(pattern=_NODE_NAME)], NodeSpec] = Field(min_length=1)
    _source: str = PrivateAttr(default="<pipeline>")

    @property
    def source(self) -> str:
        """The file this spec was loaded from (used in error messages)."""
        return self._source

    @property
    def checkpoint_options(self) -> dict[str, object]:
        """``storage_options`` plus the checkpoint rules (``signing_key``, ``allow_pickle``) when given."""
        options: dict[str, object] = dict(self.storage_options)
        if self.signing_key is not None:
            options["signing_key"] = self.signing_key
        if self.allow_pickle is not None:
            options["allow_pickle"] = self.allow_pickle
        return options

    @property
    def storage_uri(self) -> str:
        """The checkpoint storage URI: ``storage`` if given, else the local folder ``.odibi/<name>``."""
        return self.storage or default_storage(self.name)

    def to_dag(self, *, validate: bool = True) -> DAG:
        """Import every ``fn`` and build the DAG; with ``validate`` (default) it is validated as a whole."""
        dag = DAG(self.name, retry=self._retry(self.defaults.retry, "defaults.retry"),
                  cache=self._cache(self.defaults.cache, "defaults.cache"), description=self.description)
        for name, spec in self.nodes.items():
            where = f"nodes.{name}"
            fn = self._import(spec.fn, f"{where}.fn", f"node {name!r}")
            if not callable(fn):
                raise self._error(f"{where}.fn", f"{_short(spec.fn)} is a {type(fn).__name__}, expected a function")
            res = spec.resources or self.defaults.resources or ResourcesSpec()
            kwargs: dict[str, Any] = {}
            if res.num_cpus is not None:
                kwargs["num_cpus"] = res.num_cpus
            if res.num_gpus is not None:
                kwargs["num_gpus"] = res.num_gpus
            if res.memory is not None:
                kwargs["memory"] = parse_memory(res.memory)
            timeout = spec.timeout_s if spec.timeout_s is not None else self.defaults.timeout_s
            kwargs.update(name=name, fn=fn, params=dict(spec.params), retry=self._retry(spec.retry, f"{where}.retry"),
                          cache=None if spec.cache is None else self._cache(spec.cache, f"{where}.cache"),
                          timeout_s=timeout, resources=dict(res.custom), version=spec.version,
                          description=spec.description, fuse=spec.fuse if spec.fuse is not None else self.defaults.fuse)
            inputs = list(spec.inputs) if isinstance(spec.inputs, list) else dict(spec.inputs)
            try:
                node = Node(inputs=inputs, **kwargs)
            except DAGValidationError as exc:
                raise self._error(where, str(exc)) from exc
            mapping = spec.map_spec
            if mapping is not None:  # the same node mapped: what fails now is the map's (the path says so)
                map_over = self._map(mapping, f"{where}.map")
                if mapping.param is not None and not _takes(fn, mapping.param):
                    raise self._error(f"{where}.map.param", f"{_short(mapping.param)} is not a parameter of "
                                      f"{_signature(fn)}")
                try:
                    node = Node(inputs=inputs, map_over=map_over, **kwargs)
                except DAGValidationError as exc:
                    raise self._error(f"{where}.map", str(exc)) from exc
            dag.add_node(node)
        if validate:
            try:
                dag.validate()
            except DAGValidationError as exc:
                where = f"nodes.{exc.nodes[0]}" if exc.nodes else "nodes"
                raise self._error(where, f"{type(exc).__name__}: {exc}") from exc
        return dag

    # --- helpers -----------------------------------------------------------------------------------

    def _error(self, path: str, what: str) -> SpecError:
        return SpecError(f"{self._source}: {path}: {_cut(what, 2000)}", file=self._source, path=path)

    def _import(self, target: str, path: str, owner: str) -> Any:
        try:
            return import_object(target)
        except ImportError as exc:
            raise self._error(path, f"cannot import {_short(target)} for {owner}: {_cut(str(exc), 500)}") from exc

    def _retry(self, spec: RetrySpec | None, path: str) -> RetryPolicy | None:
        if spec is None:
            return None
        given = spec.model_dump(exclude_unset=True)
        if "retry_on" in given:
            types = []
            for i, tp in enumerate(spec.retry_on):
                obj = self._import(tp if (":" in tp or "." in tp) else f"builtins.{tp}", f"{path}.retry_on.{i}",
                                   "an exception type")
                if not (isinstance(obj, type) and issubclass(obj, BaseException)):
                    raise self._error(f"{path}.retry_on.{i}", f"{_short(tp)} is not an exception type")
                types.append(obj)
            given["retry_on"] = tuple(types)
        try:
            return RetryPolicy(**given)
        except DAGValidationError as exc:
            raise self._error(path, str(exc)) from exc

    def _map(self, spec: MapNodeSpec, path: str) -> MapSpec:
        reduce = None
        if spec.reduce is not None:
            target = spec.reduce if (":" in spec.reduce or "." in spec.reduce) else f"builtins.{spec.reduce}"
            reduce = self._import(target, f"{path}.reduce", "a reduce function")
            if not callable(reduce):
                raise self._error(f"{path}.reduce", f"{_short(spec.reduce)} is a {type(reduce).__name__}, expected a "
                                  "function")
        return MapSpec(over=spec.over, param=spec.param, max_parallel=spec.max_parallel,
                       allow_partial=spec.allow_partial, batch_rows=spec.batch_rows, by=spec.by, reduce=reduce)

    def _cache(self, spec: bool | CacheSpec, path: str) -> CachePolicy | bool:
        if isinstance(spec, bool):
            return spec
        given = spec.model_dump(exclude_unset=True)
        if "key_fn" in given and given["key_fn"] is not None:
            given["key_fn"] = self._import(given["key_fn"], f"{path}.key_fn", "a cache key function")
        try:
            return CachePolicy(**given)
        except DAGValidationError as exc:
            raise self._error(path, str(exc)) from exc

    @model_validator(mode="after")
    def _inputs_name_nodes(self) -> PipelineSpec:
        """Check that every input, and every map's ``over``, names a node of the pipeline (the path names it)."""
        for name, spec in self.nodes.items():
            pairs = (((i, v) for i, v in enumerate(spec.inputs)) if isinstance(spec.inputs, list)
                     else spec.inputs.items())
            for param, upstream in pairs:
                if upstream not in self.nodes:
                    raise ValueError(f"nodes.{name}.inputs.{_cut(str(param))}: names {_short(upstream)}, which is "
                                     f"not a node of the pipeline (nodes: {_cut(', '.join(self.nodes), 200)})")
            mapping = spec.map_spec
            if mapping is not None and mapping.over not in self.nodes:
                where = f"nodes.{name}.map" + (".over" if isinstance(spec.map, MapNodeSpec) else "")
                raise ValueError(f"{where}: names {_short(mapping.over)}, which is not a node of the pipeline "
                                 f"(nodes: {_cut(', '.join(self.nodes), 200)})")
        return self


# --- loading -----------------------------------------------------------------------------------------

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _PipelineYAMLError(yaml.MarkedYAMLError):
    """A pipeline file (or ``--set`` value) breaks one of the loader's rules: a duplicate key, aliases that
    expand too far, a recursive alias, nesting too deep. ``problem`` is a complete sentence."""


class _PipelineLoader(yaml.SafeLoader):
    """YAML's safe loader, plus: a key may appear once per mapping (not "the last one wins"), aliases may add at
    most :data:`MAX_ALIAS_NODES` values to the document (counted as if each were written out, so a "billion
    laughs" file fails at once instead of expanding in whatever walks it later), and no recursive aliases."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> the number of values it stands for, aliases expanded
        self._alias_nodes = 0
        self._depth = 0

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        # the scanner looks ahead across open [ and { (quadratic in their depth): refuse before it does
        if self.flow_level >= MAX_YAML_DEPTH:
            raise _PipelineYAMLError(None, None, f"mappings and lists nested more than {MAX_YAML_DEPTH} levels "
                                     "deep", self.get_mark())
        super().fetch_flow_collection_start(token_class)

    def compose_document(self) -> Any:
        self._sizes, self._alias_nodes, self._depth = {}, 0, 0
        return super().compose_document()

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)  # the anchored node itself (not a copy)
            size = self._sizes.get(id(node))
            if size is None:  # its anchor is still open: the alias is inside what it names
                raise _PipelineYAMLError(None, None, "an alias (*name) inside the value its anchor (&name) names: "
                                         "recursive aliases are not allowed", mark)
            self._alias_nodes += size
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise _PipelineYAMLError(None, None, f"aliases (*name) expand to more than {MAX_ALIAS_NODES} "
                                         "values (nested aliases multiply: a 'billion laughs' file?); write the "
                                         "values out or nest fewer aliases", mark)
            return node
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _PipelineYAMLError(None, None, f"mappings and lists nested more than {MAX_YAML_DEPTH} levels "
                                         "deep", self.peek_event().start_mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.SequenceNode):
            children: list[Any] = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        self._sizes[id(node)] = 1 + sum(self._sizes.get(id(c), 1) for c in children)
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:  # before merge keys (<<) are flattened: they may be overridden
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable: the base class says so
                    continue
                if first is not None:
                    raise _PipelineYAMLError(
                        None, None, f"duplicate key {_short(key)} (first at line {first.start_mark.line + 1}, column "
                        f"{first.start_mark.column + 1}): a key may appear once in a mapping", key_node.start_mark)
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:  # a date like 2024-13-45: a SpecError with a line, not a crash
            raise _PipelineYAMLError(None, None, f"cannot read this value ({type(exc).__name__}: "
                                     f"{_cut(str(exc), 200)})", node.start_mark) from None

    def construct_yaml_int(self, node: Any) -> Any:
        text = self.construct_scalar(node)
        if len(text) > 100:  # int() of thousands of digits is slow, then refused by Python itself
            raise _PipelineYAMLError(None, None, f"an integer of {len(text)} characters is too long", node.start_mark)
        return super().construct_yaml_int(node)


_PipelineLoader.add_constructor("tag:yaml.org,2002:int", _PipelineLoader.construct_yaml_int)


def _load_yaml(text: str) -> Any:
    """The value of a YAML document, read by :class:`_PipelineLoader` (a safe loader: no Python objects)."""
    return yaml.load(text, Loader=_PipelineLoader)  # noqa: S506 - _PipelineLoader is a SafeLoader


def _yaml_problem(exc: yaml.YAMLError, secret: bool = False) -> str:
    """``line L, column C: problem`` of a YAML error, without the snippet of the document PyYAML adds (it would
    quote the value, which may be long or a secret)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or type(exc).__name__
    if not isinstance(exc, _PipelineYAMLError):  # PyYAML's own: a scanner's problem may quote a character or tag
        problem = "invalid YAML" if secret else f"invalid YAML: {problem}"
    return where + _cut(problem, 300)

def _takes(fn: Any, param: str) -> bool:
    """Whether ``fn`` can receive ``param`` by keyword (True when its signature cannot be read)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return True
    p = params.get(param)
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def _signature(fn: Any) -> str:
    """``name(a, b=1)``: the function's name and parameters (no annotations)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return "the function"
    bare = sig.replace(parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
                       return_annotation=sig.empty)
    return _cut(f"{getattr(fn, '__qualname__', 'the function')}{bare}", 200)


def default_storage(pipeline: str) -> str:
    """The default checkpoint storage of a pipeline: the local folder ``.odibi/<pipeline>`` (cwd-relative)."""
    return f".odibi/{pipeline}"


def parse_memory(value: int | str) -> int:
    """Bytes from an int or a string with a unit (``512MiB``, ``2GB``, ``1024``); ValueError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        n: float = value
    else:
        m = _MEMORY_RE.match(str(value)) if len(str(value)) <= 100 else None
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"memory must be bytes or a number with a unit ({', '.join(u for u in _UNITS if u)}), "
                             f"got {_short(value)}")
        n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not n <= MAX_MEMORY:  # also inf
        raise ValueError(f"memory must be at most {MAX_MEMORY} bytes (1 PiB), got {_short(value)}")
    return int(n)


def import_object(target: str) -> Any:
    """The object named by ``package.module:qualname`` (or ``package.module.name``); ImportError if missing."""
    module_name, _, qualname = target.partition(":") if ":" in target else target.rpartition(".")
    if not module_name or not qualname:
        raise ImportError(f"{_short(target)} is not of the form package.module:function")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"module {_short(module_name)} cannot be imported ({type(exc).__name__}: "
                          f"{_cut(str(exc), 300)})") from exc
    except Exception as exc:  # the module itself raised while importing
        raise ImportError(f"module {_short(module_name)} raised while importing ({type(exc).__name__}: "
                          f"{_cut(str(exc), 300)})") from exc
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {_short(module_name)} has no attribute {_short(qualname)}") from None
    return obj


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], source: str = "<pipeline>") -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (value parsed as YAML: ``rows=1000`` is an int) to a raw pipeline mapping.

    A path part may itself contain dots when that whole name is a key (node names like ``a.b``); missing
    mappings on the way are created. The input is not modified; the result is validated afterwards.
    """
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:  # no value: quote it (cut), it may be a mistyped path
            shown = _short(item) if not isinstance(item, str) or not _is_secret([item]) else "(a secret option)"
            raise SpecError(f"{source}: --set {shown}: expected key.path=value", file=source)
        path, _, raw = item.partition("=")
        parts = [p for p in path.strip().split(".")]
        if not path.strip() or any(not p for p in parts):
            raise SpecError(f"{source}: --set {_short(path)}=...: expected key.path=value", file=source)
        path = _cut(path, 200)
        try:
            value = _load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:  # never PyYAML's str(exc): it quotes the value
            raise SpecError(f"{source}: --set {path}: value is not valid YAML "
                            f"({_yaml_problem(exc, _is_secret(parts))})", file=source, path=path) from None
        node: Any = out
        i, done = 0, list[str]()
        while True:
            if not isinstance(node, dict):
                raise SpecError(f"{source}: --set {path}: {'.'.join(done) or 'the pipeline'} is not a mapping",
                                file=source, path=path)
            # the longest run of parts that is an existing key (a node may be named "a.b")
            j = next((j for j in range(len(parts), i, -1) if ".".join(parts[i:j]) in node), i + 1)
            key = ".".join(parts[i:j])
            done.append(key)
            if j == len(parts):
                node[key] = value
                break
            node = node.setdefault(key, {})
            i = j
        log.debug("override %s = %s", path, _shown(parts, value))
    return out


def parse_spec(data: Any, source: str = "<pipeline>", overrides: Sequence[str] = ()) -> PipelineSpec:
    """Validate a raw pipeline mapping (after ``overrides``); :class:`SpecError` names ``source`` and the path."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping with 'name' and 'nodes' at the top, got "
                        f"{type(data).__name__}", file=source)
    data = apply_overrides(data, overrides, source)
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise _spec_error(exc, source) from None
    spec._source = source
    return spec


def load_pipeline(path: str | Path, overrides: Sequence[str] = ()) -> PipelineSpec:
    """Read, override and validate a pipeline YAML file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecFileNotFoundError(f"{source}: no such pipeline file", file=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{source}: cannot read the pipeline file ({type(exc).__name__}: {exc})", file=source) from None
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: {_yaml_problem(exc)}", file=source) from None
    return parse_spec(data, source, overrides)


#: The label pydantic puts after the path of one member of a union (``storage_options.x.str``), and what the
#: member's type error expected; the members' errors become one "expected a string or an integer" message.
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\])$")
_EXPECTED = {"string_type": "a string", "int_type": "an integer", "int_from_float": "an integer",
             "float_type": "a number", "bool_type": "a boolean", "list_type": "a list", "dict_type": "a mapping"}
#: At most this many of pydantic's errors are spelt out in one SpecError.
_MAX_ERRORS = 20


def _spec_error(exc: ValidationError, source: str) -> SpecError:
    """One SpecError for all of pydantic's errors: ``file: path: what was expected (got value)``.

    A value is quoted cut to :data:`MAX_QUOTED` characters, and never for a secret option (only its type); the
    errors of a union's members (a non-scalar ``storage_options`` value) are one message, not one per member.
    """
    entries: dict[Any, list[Any]] = {}  # key -> [loc, raw path, message, or (expected, value) of a union]
    for err in exc.errors(include_url=False):
        raw, kind, value = tuple(err["loc"]), err["type"], err.get("input")
        union = bool(raw) and isinstance(raw[-1], str) and bool(_UNION_TAG.match(raw[-1])) and kind in _EXPECTED
        where = raw[:-1] if union else raw
        loc = ".".join(_cut(str(p)) for p in where if not (isinstance(p, str) and p.startswith("<")))
        if union:
            entries.setdefault(("union", where), [loc, where, ([], value)])[2][0].append(_EXPECTED[kind])
            continue
        msg = err["msg"]
        if kind == "value_error":  # our own validators: already a complete sentence
            msg = msg.removeprefix("Value error, ")
            if msg.startswith("nodes.") and ":" in msg:  # post-init checks carry their own path
                loc, _, msg = msg.partition(": ")
        elif kind == "extra_forbidden":
            msg = "unknown field (not allowed here)"
        elif kind == "missing":
            msg = "required field is missing"
        elif "input" in err and kind not in ("model_type", "dict_type"):
            msg += f" (got {_shown(raw, value)})"
        elif kind in ("model_type", "dict_type"):
            msg = f"expected a mapping, got {type(value).__name__} {_shown(raw, value)}"
        if raw and raw[-1] == "<map>" and kind == "dict_type":
            msg = f"expected a mapping {{parameter: node}} or a list of node names, got {_shown(raw, value)}"
        if raw and raw[-1] == "<spec>" and kind == "model_type":
            msg = (f"expected a node name or a mapping (over, param, max_parallel, allow_partial, batch_rows, by, "
                   f"reduce), got {_shown(raw, value)}")
        if raw and raw[-1] == "<policy>" and kind == "model_type":
            msg = f"expected false, true or a mapping (ttl_s, version, key_fn), got {_shown(raw, value)}"
        entries[("one", len(entries))] = [loc, raw, msg]
    parts = []
    for loc, raw, msg in entries.values():
        if isinstance(msg, tuple):
            expected, value = list(dict.fromkeys(msg[0])), msg[1]
            said = expected[0] if len(expected) == 1 else f"{', '.join(expected[:-1])} or {expected[-1]}"
            msg = f"expected {said}, got {_shown(raw, value)}"
        parts.append(f"{loc or '(top)'}: {_cut(msg, 500)}")
    first = next(iter(entries.values()))[0] if entries else ""
    if len(parts) > _MAX_ERRORS:
        parts = parts[:_MAX_ERRORS] + [f"... and {len(parts) - _MAX_ERRORS} more error(s)"]
    return SpecError(f"{source}: " + "; ".join(parts), file=source, path=first)


def load_dag_target(target: str) -> DAG:
    """A DAG from ``module:attr`` (a DAG, or a function returning one); :class:`SpecError` otherwise."""
    try:
        obj = import_object(target)
    except ImportError as exc:
        raise SpecError(f"{target}: cannot import the DAG: {exc}", file=target) from exc
    if not isinstance(obj, DAG) and callable(obj):
        obj = obj()
    if not isinstance(obj, DAG):
        raise SpecError(f"{target}: expected a DAG (or a function returning one), got {type(obj).__name__}",
                        file=target)
    return obj

