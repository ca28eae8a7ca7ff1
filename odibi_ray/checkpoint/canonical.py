"""The one canonical form of values for hashing into cache keys: JSON-able, collision-free (no two different
values look alike), equal across processes, runs and machines.

It has two tag sets, chosen by :class:`Form`, because stored keys pin both: ``NATIVE`` is what the engine's
node keys have always hashed (params, closure values: a tuple is not a list), ``SEED`` what
``CloudCacheManager.compute_key`` has always hashed (the seed's API: a tuple *is* a list; tables, frames and
other values by the SHA-256 of their codec payload). Making the two one tag set would change every key of one
kind, and every output stored under it would miss once; keeping both costs one argument.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
from typing import Any

import cloudpickle


class Form(enum.Enum):
    """Which tag set :func:`canonical_form` writes (see the module doc)."""

    NATIVE = "native"
    SEED = "seed"


def canonical_form(value: Any, form: Form = Form.NATIVE) -> Any:
    """A JSON-able, type-tagged form of ``value`` for hashing.

    Both forms: ``None``, bools, ints, strings and finite floats are themselves; lists are lists; sets are
    their members' sorted JSON (order-free); non-finite floats are tagged. NATIVE tags tuples (not lists),
    dicts (``dict``, or ``dict_items`` when a key is not a string), bytes and other objects (their
    cloudpickle's SHA-256, or the canonical form of what their class's ``__odibi_key__()`` returns: a connection
    object is keyed by what it connects to, not by its credentials). SEED writes tuples as lists, tags dict keys
    (``=`` for a string, ``~`` plus the canonical JSON of any other key, so no user dict looks like a tagged form:
    those start with ``#``) and hashes other values' codec payload (Parquet for tables and frames, raw bytes,
    cloudpickle for the rest).
    """
    seed = form is Form.SEED
    mark = "#" if seed else ""  # the seed's tags cannot be dict keys of user values (theirs start = or ~)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {mark + "float": repr(value)}
    if isinstance(value, list) or (seed and isinstance(value, tuple)):
        return [canonical_form(v, form) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [canonical_form(v, form) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {mark + "set": sorted(_member_text(canonical_form(v, form), form) for v in value)}
    if isinstance(value, dict):
        return _seed_dict(value) if seed else _native_dict(value)
    return _seed_opaque(value) if seed else _native_opaque(value)


def canonical_json(form_value: Any) -> str:
    """The text that is hashed: compact JSON with sorted keys (a canonical form holds no NaN: it is tagged)."""
    return json.dumps(form_value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _member_text(form_value: Any, form: Form) -> str:
    """The text a set member or a non-string dict key sorts and hashes by. NATIVE keeps ``json.dumps``'s
    default separators (``", "``, ``": "``): its stored keys were hashed with them."""
    if form is Form.SEED:
        return canonical_json(form_value)
    return json.dumps(form_value, sort_keys=True)


def _native_dict(value: dict[Any, Any]) -> dict[str, Any]:
    if all(isinstance(k, str) for k in value):
        return {"dict": {k: canonical_form(v) for k, v in value.items()}}
    return {"dict_items": sorted([_member_text(canonical_form(k), Form.NATIVE), canonical_form(v)]
                                 for k, v in value.items())}


def _seed_dict(value: dict[Any, Any]) -> dict[str, Any]:
    out = {}
    for k, v in value.items():
        tag = "=" + k if isinstance(k, str) else "~" + _member_text(canonical_form(k, Form.SEED), Form.SEED)
        out[tag] = canonical_form(v, Form.SEED)
    return out


def _native_opaque(value: Any) -> dict[str, str]:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": hashlib.sha256(bytes(value)).hexdigest()}
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    identity = getattr(type(value), "__odibi_key__", None)
    if identity is not None:  # an object that says what identifies it (a KafkaLog: its cluster, no credential)
        return {"object": kind, "key": canonical_form(identity(value))}
    try:
        blob = cloudpickle.dumps(value)
    except Exception:  # noqa: BLE001 - an unpicklable value is still keyed, by its repr
        blob = repr(value).encode()
    return {"object": kind, "sha256": hashlib.sha256(blob).hexdigest()}


def _seed_opaque(value: Any) -> dict[str, str]:
    from .codecs import encode  # pyarrow and pandas only when a key holds such a value

    codec, payload = encode(value)
    return {"#codec": codec, "#sha256": hashlib.sha256(payload).hexdigest()}
