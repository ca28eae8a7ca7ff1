"""Cache keys, computed in the driver before anything runs (Merkle-style: a node's key covers its inputs' keys)."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import textwrap
from typing import Any, Callable

import cloudpickle

from ..dag import DAG

log = logging.getLogger(__name__)


def code_fingerprint(fn: Callable[..., Any], version: str | None = None) -> str:
    """``version`` if given, else a hash of the function's source (its bytecode when there is no source)."""
    if version is not None:
        return "v:" + version
    target = getattr(fn, "__wrapped__", fn)
    try:
        src = textwrap.dedent(inspect.getsource(target))
        return "src:" + hashlib.sha256(src.encode()).hexdigest()
    except (OSError, TypeError):
        try:
            return "pickle:" + hashlib.sha256(cloudpickle.dumps(target)).hexdigest()
        except Exception:
            return "name:" + getattr(target, "__qualname__", repr(target))


def canonical(value: Any) -> str:
    """A stable text for params: canonical JSON when possible, else a hash of the pickled value."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return "pickle:" + hashlib.sha256(cloudpickle.dumps(value)).hexdigest()


def cache_keys(dag: DAG, order: list[str], namespace: str | None = None) -> dict[str, str]:
    """Every node's cache key, in topological ``order`` (inputs first)."""
    ns = dag.name if namespace is None else namespace
    keys: dict[str, str] = {}
    fingerprints: dict[int, str] = {}  # one source hash per function object (many nodes may share one)
    for name in order:
        node = dag[name]
        policy = dag.cache_policy_of(name)
        version = policy.version or node.version
        if version is None:
            code = fingerprints.get(id(node.fn))
            if code is None:
                code = fingerprints[id(node.fn)] = code_fingerprint(node.fn)
        else:
            code = code_fingerprint(node.fn, version)
        parts = {
            "namespace": ns,
            "node": name,
            "code": code,
            "params": canonical(node.params),
            "inputs": [[param, keys[up]] for param, up in node.inputs.items()],
        }
        if policy.key_fn is not None:
            parts["key_fn"] = str(policy.key_fn(dict(node.params)))
        keys[name] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return keys
