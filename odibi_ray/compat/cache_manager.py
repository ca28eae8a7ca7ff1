"""``CloudCacheManager``: the seed's content-addressed cache face over any storage adapter.

Entries are single objects ``<prefix><key>`` holding a codec payload (see :mod:`odibi_ray.checkpoint.codecs`)
with the metadata every stored object has (:class:`~.objectmeta.CheckpointMeta`: ``sha256``, ``size``,
``codec``, ``created`` and ``expires_at``, seconds since the epoch or empty for never; entries written before
the cache used that type say ``never``, which still reads as never). A read checks expiry and the payload's
SHA-256 before decoding, so an expired, corrupted or truncated entry is a miss (and is deleted), never a wrong
value. Storage faults (unavailable, auth) are not misses: they raise the storage error, so an outage is never
mistaken for an empty cache. Keys hash the SEED canonical form (:mod:`.canonical`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from typing import Any, TypeVar
from collections.abc import Callable, Mapping

from ..errors import InvalidURIError, NotFoundError
from ..storage.base import ObjectInfo, Storage
from ..checkpoint import layout
from ..checkpoint.canonical import Form, canonical_form, canonical_json
from ..checkpoint.objectmeta import CheckpointMeta
from ..checkpoint.trust import trust_from

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The metric kinds this cache reports through ``metrics.increment(kind, name)``.
METRIC_KINDS = ("cache_hit", "cache_miss", "cache_eviction", "cache_corruption")
KEY_FORMAT = "odibi-cache-key/1"  # bump when the canonical encoding changes (it changes every key)
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}\Z")
_MISSING = object()


def storage_at(adapter: Any, prefix: str, what: str) -> tuple[Storage, str]:
    """The storage and the key prefix (``""`` or ending in ``/``) that ``prefix`` names on ``adapter``.

    ``adapter`` is a :class:`~odibi_ray.storage.base.Storage` (``prefix`` is a key prefix in it) or a
    :class:`~odibi_ray.compat.cloud.CloudAdapter` (``prefix`` is one of its paths: ``<container>/...`` for Azure/S3).
    """
    if not isinstance(prefix, str):
        raise TypeError(f"{what} must be a string, got {type(prefix).__name__}")
    clean = prefix.strip("/")
    if isinstance(adapter, Storage):
        if not clean:
            return adapter, ""
        _check_prefix(clean, what)
        return adapter, clean + "/"
    split = getattr(adapter, "locate", None)
    if not callable(split):
        raise TypeError(f"adapter must be a Storage or a CloudAdapter, got {type(adapter).__name__}")
    store, key = split(f"{clean}/x" if clean else "x")  # the storage and key of a child of the prefix
    base = key[:-1]
    if base:
        _check_prefix(base.rstrip("/"), what)
    return store, base


def _check_prefix(prefix: str, what: str) -> None:
    from ..storage.base import check_key

    try:
        check_key(prefix)
    except InvalidURIError:
        raise InvalidURIError(f"invalid {what} {prefix!r}: use 'a/b' segments without '.', '..' or empty "
                              "ones") from None


class CloudCacheManager:
    """A content-addressed cache of values in any storage, with TTL, integrity checks and hit/miss metrics."""

    def __init__(self, adapter: Any, prefix: str = "cache/", default_ttl_s: float | None = 3600,
                 metrics: Any = None, *, clock: Callable[[], float] = time.time, signing_key: Any = None,
                 allow_pickle: bool = True) -> None:
        """``adapter``: a CloudAdapter or any Storage; ``prefix``: where entries live in it;
        ``default_ttl_s``: lifetime of an entry put without ``ttl_s`` (None: never expires); ``metrics``:
        anything with ``increment(kind, name)``; ``clock``: seconds since the epoch (tests pass a fake one).
        ``signing_key`` (a key or ``env://``/``kv://`` reference, or a list: the first signs): entries are
        signed, and unsigned or wrongly signed ones are misses, never decoded; ``allow_pickle=False``: values
        only pickle can carry are refused by ``put``, stored pickles are misses (see checkpoint/trust.py)."""
        self._store, self._base = storage_at(adapter, prefix, "cache prefix")
        self.signing_key, self.allow_pickle = signing_key, allow_pickle
        self._trust = trust_from(signing_key, allow_pickle)
        self.adapter, self.prefix = adapter, prefix
        self.default_ttl_s = _check_ttl(default_ttl_s, "default_ttl_s")
        self.metrics = metrics
        self.clock = clock
        self.stats: dict[str, int] = {"hits": 0, "misses": 0, "evictions": 0, "corruptions": 0}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CloudCacheManager({self._store.uri!r}, prefix={self._base!r})"

    def __getstate__(self) -> dict[str, Any]:
        """Configuration only (the adapter pickles as its URI and options); counters start at zero."""
        return {"adapter": self.adapter, "prefix": self.prefix, "default_ttl_s": self.default_ttl_s,
                "metrics": self.metrics, "clock": self.clock, "signing_key": self._trust.signer,
                "allow_pickle": self.allow_pickle}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        # mypy refuses a call of __init__ (misc); it rebuilds the store, trust and counters from the configuration
        self.__init__(state["adapter"], state["prefix"], state["default_ttl_s"], state["metrics"],  # type: ignore[misc]
                      clock=state["clock"], signing_key=state.get("signing_key"),
                      allow_pickle=state.get("allow_pickle", True))

    # --- keys ---------------------------------------------------------------------------------

    @staticmethod
    def compute_key(namespace: str, inputs: Any, version: str | int | None = None) -> str:
        """SHA-256 hex of namespace, canonical inputs and version: equal across processes, runs and machines."""
        if not isinstance(namespace, str) or not namespace:
            raise TypeError(f"namespace must be a non-empty string, got {namespace!r}")
        if version is not None and (not isinstance(version, (str, int)) or isinstance(version, bool)):
            raise TypeError(f"version must be a string, an int or None, got {type(version).__name__}")
        text = canonical_json([KEY_FORMAT, namespace, canonical_form(inputs, Form.SEED), version])
        return hashlib.sha256(text.encode("ascii")).hexdigest()

    def _key(self, key: str) -> str:
        if not isinstance(key, str) or not _KEY.match(key):
            raise InvalidURIError(f"invalid cache key {key!r}: use 1-200 characters of letters, digits, '_', '-' "
                                  "and '.', starting with a letter or digit (compute_key gives such keys)",
                                  key=key if isinstance(key, str) else None)
        return self._base + key

    # --- entries ------------------------------------------------------------------------------

    def put(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        """Store ``value`` under ``key`` (replacing any entry) for ``ttl_s`` seconds (None: the default TTL)."""
        from ..checkpoint.codecs import encode

        skey = self._key(key)
        ttl = self.default_ttl_s if ttl_s is None else _check_ttl(ttl_s, "ttl_s")
        codec, payload = encode(value, allow_pickle=self.allow_pickle)
        now = self.clock()
        meta = CheckpointMeta(sha256=hashlib.sha256(payload).hexdigest(), size=len(payload), codec=codec,
                              created=now, expires_at=None if ttl is None else now + ttl, layout=layout.LAYOUT_VERSION)
        self._store.put(skey, payload, self._trust.seal(skey, meta.to_metadata()))
        log.debug("cache put %s/%s (%d bytes, codec %s)", self._store.uri, skey, len(payload), codec)

    def get(self, key: str, default: Any = None) -> Any:
        """The cached value, or ``default`` on a miss (absent, expired or corrupt entries are all misses)."""
        value = self._lookup(key)
        return default if value is _MISSING else value

    def exists(self, key: str) -> bool:
        """Whether a fresh entry whose metadata is intact is stored under ``key`` (the payload is not read)."""
        skey = self._key(key)
        try:
            info = self._store.head(skey)
        except NotFoundError:
            return False
        meta = CheckpointMeta.from_info(info)
        return (meta is not None and not meta.expired(self.clock())
                and self._trust.refusal(skey, info.metadata) is None)

    def invalidate(self, key: str) -> bool:
        """Delete the entry under ``key``; True if there was one."""
        return self._store.delete(self._key(key))

    def get_or_compute(self, key: str, compute: Callable[[], T], ttl_s: float | None = None) -> T:
        """The cached value; on a miss, ``compute()`` once, store its result and return it.

        An exception from ``compute`` propagates and nothing is stored. Storage faults propagate too.
        """
        if not callable(compute):
            raise TypeError(f"compute must be callable, got {type(compute).__name__}")
        value = self._lookup(key)
        if value is not _MISSING:
            return value
        value = compute()
        self.put(key, value, ttl_s)
        return value

    # --- internals ----------------------------------------------------------------------------

    def _lookup(self, key: str) -> Any:
        """The value under ``key`` or ``_MISSING``, counting hit / miss / eviction / corruption."""
        skey = self._key(key)
        try:
            payload, info = self._store.get_with_info(skey)
        except NotFoundError:
            self._count("cache_miss")
            return _MISSING
        meta, problem = CheckpointMeta.read(info)
        # Expiry first: an expired entry is evicted, whatever else is wrong with it.
        if (meta or CheckpointMeta.salvage(info)).expired(self.clock()):
            log.debug("cache entry %s/%s expired; deleting it", self._store.uri, skey)
            self._drop(skey, info)
            self._count("cache_eviction")
            self._count("cache_miss")
            return _MISSING
        value = None
        if meta is not None:
            value, problem = self._decoded(skey, payload, info, meta)
        if problem is not None:
            log.warning("cache entry %s/%s is corrupt (%s): treated as a miss and deleted", self._store.uri,
                        skey, problem)
            self._drop(skey, info)
            self._count("cache_corruption")
            self._count("cache_miss")
            return _MISSING
        self._count("cache_hit")
        return value

    def _decoded(self, skey: str, payload: bytes, info: ObjectInfo, meta: CheckpointMeta) -> tuple[Any, str | None]:
        """The value of an entry whose metadata reads, or None and why it must not be used (not trusted, bytes
        other than the ones its metadata describes, or a payload that does not decode)."""
        from ..checkpoint.codecs import decode

        refused = self._trust.refusal(skey, info.metadata)
        if refused is not None:  # never decoded
            return None, f"it is not trusted: {refused}"
        problem = meta.payload_problem(len(payload), hashlib.sha256(payload).hexdigest())
        if problem is not None:
            return None, problem
        try:
            return decode(meta.codec, payload), None
        except Exception as exc:  # noqa: BLE001 - any decoding failure of checked bytes is corruption
            return None, f"its {meta.codec!r} payload does not decode ({type(exc).__name__})"

    def _drop(self, skey: str, info: ObjectInfo) -> None:
        """Delete a bad entry unless another writer has just replaced it (best effort: a cache only)."""
        try:
            if self._store.head(skey).etag == info.etag:
                self._store.delete(skey)
        except NotFoundError:
            pass

    def _count(self, kind: str) -> None:
        stat = {"cache_hit": "hits", "cache_miss": "misses", "cache_eviction": "evictions",
                "cache_corruption": "corruptions"}[kind]
        with self._lock:
            self.stats[stat] += 1
        if self.metrics is not None:
            try:
                self.metrics.increment(kind, self.prefix)
            except Exception:  # noqa: BLE001 - metrics are fire-and-forget; a cache read never fails over them
                log.warning("metrics.increment(%r, %r) failed; the cache goes on", kind, self.prefix, exc_info=True)


def _check_ttl(ttl: Any, name: str) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"{name} must be a positive number of seconds (or None), got {ttl!r}")
    return float(ttl)
