"""YAML pipelines: load a pipeline file, apply ``--set`` overrides, validate it (pydantic), build the DAG.

A pipeline file (every field but ``name`` and ``nodes`` optional; unknown fields are errors)::

    name: sales
    storage: abfss://lake@acct.dfs.core.windows.net/odibi     # default: the local folder .odibi/<name>
    storage_options: {account_key: env://AZ_KEY}              # values may be env:// or kv:// references
    defaults:
      retry: {max_attempts: 2, delay_s: 0.5}                  # DAG(retry=...)
      cache: {ttl_s: 86400}                                   # DAG(cache=...): false, true or a policy
      resources: {num_cpus: 1}                                # for nodes without their own
      timeout_s: 600
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

:meth:`PipelineSpec.to_dag` builds the same :class:`~odibi_ray.dag.DAG` (equal :class:`Node` objects) as the
Python API would. Every error is a :class:`SpecError` naming the file, the field path and what was expected.
"""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path
from typing import Annotated, Any, Sequence, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, ValidationError, field_validator,
                      model_validator)

from .dag import DAG
from .errors import DAGValidationError, OdibiError
from .node import Node
from .policy import CachePolicy, RetryPolicy

log = logging.getLogger(__name__)

__all__ = ["SpecError", "SpecFileNotFoundError", "PipelineSpec", "NodeSpec", "load_pipeline", "apply_overrides",
           "import_object", "default_storage"]

_FN_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_NODE_NAME = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class SpecError(OdibiError, ValueError):
    """A pipeline file is unreadable or invalid; the message names the file, the field path and what was expected."""

    def __init__(self, message: str, file: str = "", path: str = "") -> None:
        super().__init__(message)
        self.file, self.path = file, path


class SpecFileNotFoundError(SpecError, FileNotFoundError):
    """The pipeline file does not exist."""


# --- schema ------------------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RetrySpec(_Strict):
    """``retry:`` of a node or of ``defaults``: the fields of :class:`RetryPolicy` (unset ones keep its defaults)."""

    max_attempts: int = Field(1, ge=1)
    delay_s: float = Field(1.0, ge=0)
    backoff: float = Field(2.0, ge=1)
    max_delay_s: float = Field(60.0, ge=0)
    jitter: float = Field(0.0, ge=0, le=1)
    retry_on: list[Annotated[str, Field(pattern=r"^[A-Za-z_][\w.:]*$")]] = Field(default_factory=lambda: ["builtins.Exception"])
    retry_system_failures: bool = True
    retry_on_timeout: bool = True


class CacheSpec(_Strict):
    """``cache:`` as a mapping: the fields of :class:`CachePolicy`; ``key_fn`` is a ``module:function`` path."""

    ttl_s: float | None = Field(None, gt=0)
    version: str | None = None
    key_fn: Annotated[str, Field(pattern=_FN_RE.pattern)] | None = None
    enabled: bool = True


def _cache_tag(value: Any) -> str:
    return "<flag>" if isinstance(value, bool) else "<policy>"


def _inputs_tag(value: Any) -> str:
    return "<list>" if isinstance(value, (list, tuple)) else "<map>"


CacheField = Annotated[Union[Annotated[bool, Tag("<flag>")], Annotated[CacheSpec, Tag("<policy>")]],
                       Discriminator(_cache_tag)]
InputsField = Annotated[Union[Annotated[list[str], Tag("<list>")], Annotated[dict[str, str], Tag("<map>")]],
                        Discriminator(_inputs_tag)]


class ResourcesSpec(_Strict):
    """``resources:``: the Ray task's request; ``memory`` in bytes or with a unit (``512MiB``, ``2GB``)."""

    num_cpus: float | None = Field(None, ge=0)
    num_gpus: float | None = Field(None, ge=0)
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
        return value

    @field_validator("custom")
    @classmethod
    def _custom(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if name in ("CPU", "GPU", "memory"):
                raise ValueError(f"resource {name!r} goes in num_cpus / num_gpus / memory, not custom")
            if amount < 0:
                raise ValueError(f"custom resource {name!r} must be >= 0")
        return value


class NodeSpec(_Strict):
    """One entry of ``nodes:`` (its key is the node's name)."""

    fn: Annotated[str, Field(pattern=_FN_RE.pattern)]
    inputs: InputsField = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    retry: RetrySpec | None = None
    cache: CacheField | None = None
    resources: ResourcesSpec | None = None
    timeout_s: float | None = Field(None, gt=0)
    version: str | None = None
    description: str = ""


class DefaultsSpec(_Strict):
    """``defaults:``: the DAG's retry and cache policies, and resources / timeout for nodes without their own."""

    retry: RetrySpec | None = None
    cache: CacheField = True
    resources: ResourcesSpec | None = None
    timeout_s: float | None = Field(None, gt=0)


class PipelineSpec(_Strict):
    """A validated pipeline file; :meth:`to_dag` builds its DAG."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]+$")]
    description: str = ""
    storage: str | None = None
    storage_options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    defaults: DefaultsSpec = Field(default_factory=DefaultsSpec)
    nodes: dict[Annotated[str, Field(pattern=_NODE_NAME)], NodeSpec] = Field(min_length=1)
    _source: str = PrivateAttr(default="<pipeline>")

    @property
    def source(self) -> str:
        """The file this spec was loaded from (used in error messages)."""
        return self._source

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
                raise self._error(f"{where}.fn", f"{spec.fn!r} is a {type(fn).__name__}, expected a function")
            res = spec.resources or self.defaults.resources or ResourcesSpec()
            kwargs: dict[str, Any] = {}
            if res.num_cpus is not None:
                kwargs["num_cpus"] = res.num_cpus
            if res.num_gpus is not None:
                kwargs["num_gpus"] = res.num_gpus
            if res.memory is not None:
                kwargs["memory"] = parse_memory(res.memory)
            timeout = spec.timeout_s if spec.timeout_s is not None else self.defaults.timeout_s
            try:
                dag.add_node(Node(
                    name=name, fn=fn, inputs=list(spec.inputs) if isinstance(spec.inputs, list) else dict(spec.inputs),
                    params=dict(spec.params), retry=self._retry(spec.retry, f"{where}.retry"),
                    cache=None if spec.cache is None else self._cache(spec.cache, f"{where}.cache"),
                    timeout_s=timeout, resources=dict(res.custom), version=spec.version,
                    description=spec.description, **kwargs))
            except DAGValidationError as exc:
                raise self._error(where, str(exc)) from exc
        if validate:
            try:
                dag.validate()
            except DAGValidationError as exc:
                where = f"nodes.{exc.nodes[0]}" if exc.nodes else "nodes"
                raise self._error(where, f"{type(exc).__name__}: {exc}") from exc
        return dag

    # --- helpers -----------------------------------------------------------------------------------

    def _error(self, path: str, what: str) -> SpecError:
        return SpecError(f"{self._source}: {path}: {what}", file=self._source, path=path)

    def _import(self, target: str, path: str, owner: str) -> Any:
        try:
            return import_object(target)
        except ImportError as exc:
            raise self._error(path, f"cannot import {target!r} for {owner}: {exc}") from exc

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
                    raise self._error(f"{path}.retry_on.{i}", f"{tp!r} is not an exception type")
                types.append(obj)
            given["retry_on"] = tuple(types)
        try:
            return RetryPolicy(**given)
        except DAGValidationError as exc:
            raise self._error(path, str(exc)) from exc

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
    def _inputs_name_nodes(self) -> "PipelineSpec":
        """Check that every input names a node of the pipeline (the path names the input)."""
        for name, spec in self.nodes.items():
            pairs = ((i, v) for i, v in enumerate(spec.inputs)) if isinstance(spec.inputs, list) else spec.inputs.items()
            for param, upstream in pairs:
                if upstream not in self.nodes:
                    raise ValueError(f"nodes.{name}.inputs.{param}: names {upstream!r}, which is not a node of "
                                     f"the pipeline (nodes: {', '.join(self.nodes)})")
        return self


# --- loading -----------------------------------------------------------------------------------------

def default_storage(pipeline: str) -> str:
    """The default checkpoint storage of a pipeline: the local folder ``.odibi/<pipeline>`` (cwd-relative)."""
    return f".odibi/{pipeline}"


def parse_memory(value: int | str) -> int:
    """Bytes from an int or a string with a unit (``512MiB``, ``2GB``, ``1024``); ValueError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _MEMORY_RE.match(str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"memory must be bytes or a number with a unit ({', '.join(u for u in _UNITS if u)}), "
                         f"got {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def import_object(target: str) -> Any:
    """The object named by ``package.module:qualname`` (or ``package.module.name``); ImportError if missing."""
    module_name, _, qualname = target.partition(":") if ":" in target else target.rpartition(".")
    if not module_name or not qualname:
        raise ImportError(f"{target!r} is not of the form package.module:function")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"module {module_name!r} cannot be imported ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # the module itself raised while importing
        raise ImportError(f"module {module_name!r} raised while importing ({type(exc).__name__}: {exc})") from exc
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {qualname!r}") from None
    return obj


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], source: str = "<pipeline>") -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (value parsed as YAML: ``rows=1000`` is an int) to a raw pipeline mapping.

    A path part may itself contain dots when that whole name is a key (node names like ``a.b``); missing
    mappings on the way are created. The input is not modified; the result is validated afterwards.
    """
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise SpecError(f"{source}: --set {item!r}: expected key.path=value", file=source)
        path, _, raw = item.partition("=")
        parts = [p for p in path.strip().split(".")]
        if not path.strip() or any(not p for p in parts):
            raise SpecError(f"{source}: --set {item!r}: expected key.path=value", file=source)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise SpecError(f"{source}: --set {path}: value is not valid YAML ({exc})", file=source, path=path) from None
        node: Any = out
        i, done = 0, []
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
        log.debug("override %s = %r", path, value)
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
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{source}: {where}invalid YAML: {problem}", file=source) from None
    return parse_spec(data, source, overrides)


def _spec_error(exc: ValidationError, source: str) -> SpecError:
    """One SpecError for all of pydantic's errors: ``file: path: what was expected (got value)``."""
    parts, first = [], ""
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p.startswith("<")))
        msg = err["msg"]
        if err["type"] == "value_error":  # our own validators: already a complete sentence
            msg = msg.removeprefix("Value error, ")
            if msg.startswith("nodes.") and ":" in msg:  # post-init checks carry their own path
                loc, _, msg = msg.partition(": ")
        elif err["type"] == "extra_forbidden":
            msg = "unknown field (not allowed here)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and err["type"] not in ("model_type", "dict_type"):
            msg += f" (got {err['input']!r})"
        elif err["type"] in ("model_type", "dict_type"):
            msg = f"expected a mapping, got {type(err.get('input')).__name__} {err.get('input')!r}"
        if err["loc"] and err["loc"][-1] == "<map>" and err["type"] == "dict_type":
            msg = f"expected a mapping {{parameter: node}} or a list of node names, got {err.get('input')!r}"
        if err["loc"] and err["loc"][-1] == "<policy>" and err["type"] == "model_type":
            msg = f"expected false, true or a mapping (ttl_s, version, key_fn), got {err.get('input')!r}"
        first = first or loc
        parts.append(f"{loc or '(top)'}: {msg}")
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

