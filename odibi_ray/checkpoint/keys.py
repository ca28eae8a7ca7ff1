"""Cache keys, computed in the driver: a node's key covers its code, its params and the *data versions* of its
inputs — the content hash of each input's output (:func:`data_version`), not the input's key. A node recomputed
(new code, expired entry, ``cache=False``, refresh) whose output is byte-for-byte what it was leaves the keys of
the nodes below it unchanged, so they are reused ("early cutoff", as in Bazel, Shake, Hamilton or Dagster's data
versions). A node's key is therefore known once its inputs' outputs are: at plan time for inputs reused from
storage (their metadata carries the hash), else when the inputs have run (the scheduler keys it then)."""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import logging
import textwrap
import types
from typing import Any, NamedTuple
from collections.abc import Callable, Mapping, Sequence

import cloudpickle

from ..definition.dag import DAG
from .canonical import Form, canonical_form, canonical_json

log = logging.getLogger(__name__)


def _source_hash(fn: Callable[..., Any]) -> str:
    """The hash of a function's (or class's) code as its syntax tree: names, constants and structure, without
    comments, docstrings or formatting — rewording a comment or reformatting reruns nothing. Source that does not
    parse on its own (a lambda in the middle of an expression) is hashed as text."""
    target = inspect.unwrap(fn)
    try:
        source = textwrap.dedent(inspect.getsource(target))
    except (OSError, TypeError):
        source = None
    if source is not None:
        tree = _syntax_tree(source)
        if tree is not None:
            return "ast:" + hashlib.sha256(tree.encode()).hexdigest()
        return "src:" + hashlib.sha256(source.encode()).hexdigest()
    try:  # no source (made at run time, a C function): its pickle
        return "pickle:" + hashlib.sha256(cloudpickle.dumps(target)).hexdigest()
    except Exception:  # noqa: BLE001 - unpicklable too: its name is all there is
        return "name:" + getattr(target, "__qualname__", repr(target))


def _syntax_tree(source: str) -> str | None:
    """``ast.dump`` of ``source`` without docstrings and positions (None if it does not parse alone)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def code_fingerprint(fn: Callable[..., Any], version: str | None = None) -> str:
    """``version`` if given, else a hash of the function's source plus what it closes over and the plain
    globals it reads, with the source of the functions it calls by name (one level deep: for changes
    deeper than that, or in imported libraries, give ``version=``)."""
    if version is not None:
        return "v:" + version
    target = inspect.unwrap(fn)
    parts = [_source_hash(target)]
    try:
        cv = inspect.getclosurevars(target)
        referenced = sorted(cv.nonlocals.items()) + sorted(cv.globals.items())
    except (TypeError, ValueError):
        referenced = []
    for name, value in referenced:
        if isinstance(value, types.ModuleType):
            continue
        if inspect.isfunction(value) or inspect.ismethod(value) or inspect.isclass(value):
            parts.append(f"{name}={_source_hash(value)}")
        else:
            parts.append(f"{name}={canonical(value)}")
    return "code:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def canonical(value: Any) -> str:
    """A stable text for params (equal across processes and runs for equal plain values): the NATIVE canonical
    form (a tuple is not a list; see :mod:`.canonical`, which the seed cache's keys share)."""
    return canonical_json(canonical_form(value, Form.NATIVE))


def data_version(sha256: str, codec: str) -> str:
    """The data version of an output stored with this SHA-256 and codec (its checkpoint's :class:`CheckpointMeta`
    has both): the codec too, because two codecs can write the same bytes for different values (``b'{"a":1}'`` as
    bytes, ``{"a": 1}`` as JSON)."""
    return f"sha256:{codec}:{sha256}"


def map_version(node: Any, item_versions: Sequence[str | None], failed: list[int], key: str) -> str:
    """The data version of a mapped node's output: how its consumers see its items (reduce, partial), each item's
    output's data version in order and which failed — so a mapped node that reruns and writes what it wrote before
    lets its consumers be reused. When an item's version is not known, the node's key stands in (``key``, see
    :func:`map_key`: it covers each item's key)."""
    if any(v is None for v in item_versions):
        return "map-key:" + key
    spec = node.mapping
    view = {"reduce": code_fingerprint(spec.reduce) if spec.reduce is not None else None,
            "partial": spec.allow_partial}
    body = json.dumps({"view": view, "items": list(item_versions), "failed": failed}, separators=(",", ":"),
                      sort_keys=True)
    return "map:" + hashlib.sha256(body.encode()).hexdigest()


def key_version(key: str) -> str:
    """The stand-in data version of an output whose content hash is not known (nothing stored it): its key, as
    before data versions (correct, only without the cutoff)."""
    return "key:" + key


def cache_keys(dag: DAG, order: list[str], versions: Mapping[str, str], namespace: str | None = None,
               run_id: str | None = None) -> dict[str, str]:
    """The cache key of every node in topological ``order`` whose inputs all have a data version in ``versions``
    (node -> :func:`data_version` of its output); the others are left out (keyed once their inputs have run).

    A node whose cache policy is disabled gets a key salted with ``run_id`` (its own output is never shared with
    another run); the nodes below it are keyed on its output's content, so they are reused when it is unchanged.
    """
    keys: dict[str, str] = {}
    fingerprints: dict[tuple[int, str | None], str] = {}  # per function and version (many nodes share one)
    for name in order:
        if all(up in versions for up in dag[name].input_map.values()):
            keys[name] = node_key(dag, name, versions, namespace, run_id, fingerprints)
    return keys


def node_key(dag: DAG, name: str, versions: Mapping[str, str], namespace: str | None = None,
             run_id: str | None = None, fingerprints: dict[tuple[int, str | None], str] | None = None) -> str:
    """One node's cache key from its code, params and its inputs' data versions in ``versions`` (see
    :func:`cache_keys`). A node without inputs has the key it had before data versions (stores keep hitting)."""
    recipe = key_recipe(dag, name, namespace, run_id, fingerprints)
    return recipe.key([versions[up] for up in dag[name].input_map.values()])


class KeyRecipe(NamedTuple):
    """Everything of a node's cache key but its inputs' data versions: the driver makes it, and a Ray worker whose
    inputs ran just before it (chained by Ray, not yet seen by the driver) finishes it with the hashes their attempts
    sent back (``execution/backends/ray_tasks.py``). One formula for both: :meth:`key`."""

    template: str  # the key's parts as JSON (sorted keys), "inputs" a placeholder: one short string to send
    params: tuple[str, ...]  # the parameter each input is passed as, in ``input_map`` order
    salt: str | None  # the run id when the node's cache policy is off (its key is this run's own)

    def key(self, versions: Sequence[str]) -> str:
        """The key for these data versions of the inputs (in ``params`` order): the SHA-256 of the parts' JSON with
        ``"inputs": [[param, version], ...]``, exactly as ``json.dumps(parts, sort_keys=True)`` writes it."""
        inputs = json.dumps([[param, v] for param, v in zip(self.params, versions)])
        key = hashlib.sha256(self.template.replace(_INPUTS_HOLE, inputs, 1).encode()).hexdigest()
        return key if self.salt is None else hashlib.sha256(f"{key}:{self.salt}".encode()).hexdigest()


_INPUTS_HOLE = json.dumps("\x00inputs\x00")  # a JSON string no parts value can hold (a NUL inside)


def key_recipe(dag: DAG, name: str, namespace: str | None = None, run_id: str | None = None,
               fingerprints: dict[tuple[int, str | None], str] | None = None) -> KeyRecipe:
    """The :class:`KeyRecipe` of node ``name`` (see :func:`node_key`)."""
    node = dag[name]
    policy = dag.cache_policy_of(name)
    version = _version(dag, name)
    fp_key = (id(node.fn), version)
    code = None if fingerprints is None else fingerprints.get(fp_key)
    if code is None:
        code = code_fingerprint(node.fn, version)
        if fingerprints is not None:
            fingerprints[fp_key] = code
    parts = _key_parts(dag.name if namespace is None else namespace, name, node, code, policy, {})
    parts["inputs"] = "\x00inputs\x00"
    if node.mapping is not None:  # what decides its items and how consumers see them (a plain node has none)
        spec = node.mapping
        parts["map"] = canonical(spec.split_options())
        if spec.reduce is not None:
            parts["reduce"] = code_fingerprint(spec.reduce)
        parts["partial"] = spec.allow_partial
    return KeyRecipe(json.dumps(parts, sort_keys=True), tuple(node.input_map), None if policy.enabled else str(run_id))


def _version(dag: DAG, name: str) -> str | None:
    """The most specific version: the node's own CachePolicy, then Node(version=), then the DAG's."""
    node = dag[name]
    policy = dag.cache_policy_of(name)
    own = node.cache if isinstance(node.cache, type(policy)) else None
    return (own.version if own is not None else None) or node.version or policy.version


def map_key(base: str, node: Any, item_keys: list[str], failed: list[int]) -> str:
    """The key a mapped node has for its consumers once its items are closed: what its items share
    (:func:`item_key_base`), how consumers see them (reduce, partial) and its items' keys in order (and which
    failed, when partial). Two runs whose items are the same give the same key, whatever the key of the node
    mapped over: a listing that is never cached, with nothing new, leaves its consumers cached."""
    spec = node.mapping
    view = {"reduce": code_fingerprint(spec.reduce) if spec.reduce is not None else None,
            "partial": spec.allow_partial}
    body = json.dumps({"base": base, "view": view, "items": item_keys, "failed": failed}, separators=(",", ":"),
                      sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _key_parts(ns: str, name: str, node: Any, code: str, policy: Any, versions: Mapping[str, str],
               skip_param: str | None = None) -> dict[str, Any]:
    parts: dict[str, Any] = {
        "namespace": ns,
        "node": name,
        "code": code,
        "params": canonical(node.params),
        "inputs": [[param, versions.get(up)] for param, up in node.input_map.items() if param != skip_param],
    }
    if policy.key_fn is not None:
        parts["key_fn"] = str(policy.key_fn(dict(node.params)))
    return parts


def item_key_base(dag: DAG, name: str, versions: Mapping[str, str], namespace: str | None = None) -> str:
    """What every item key of mapped node ``name`` shares: its code, params and its *other* inputs' data versions —
    not the node it maps over, so that an item whose content is unchanged keeps its key when that node reruns
    (one new file in a folder of 1,000 runs one item)."""
    node = dag[name]
    spec = node.mapping
    assert spec is not None
    policy = dag.cache_policy_of(name)
    code = code_fingerprint(node.fn, _version(dag, name))
    parts = _key_parts(dag.name if namespace is None else namespace, name, node, code, policy, versions,
                       skip_param=spec.param)
    parts["item_param"] = spec.param
    return json.dumps(parts, sort_keys=True)


def item_key(base: str, digest: str, run_id: str | None = None) -> str:
    """The cache key of one item: :func:`item_key_base` and the item's content hash (salted with ``run_id`` when
    the node's cache policy is off, like :func:`cache_keys`)."""
    key = hashlib.sha256(f"{base}\nitem:{digest}".encode()).hexdigest()
    return key if run_id is None else hashlib.sha256(f"{key}:{run_id}".encode()).hexdigest()
