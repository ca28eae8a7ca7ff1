"""Finding a run's stored outputs before it runs, at a cost that grows with the pipeline, not with the store.

Two ways, picked by what is cheap on the adapter (measured in benchmarks/bench_checkpoint.py):
- a look-up per key (``head``): on a local folder one ``stat`` and one attribute read, microseconds each;
- on remote stores, where a request costs milliseconds, one listing of the pipeline's own prefix
  (``objects/<pipeline>/``), bounded: if the pipeline has stored many more objects than the run needs (a long
  history), the listing stops and the keys are looked up one by one, concurrently.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping

from ..errors import NotFoundError
from ..storage.base import ObjectInfo, Storage
from . import layout
from .objectmeta import CheckpointMeta

log = logging.getLogger(__name__)

#: Up to this many keys a remote store is asked key by key (a listing is one request, but pages of metadata).
HEAD_BELOW = 16
#: A listing stops after max(LIST_FLOOR, LIST_FACTOR x keys) entries: past that, look-ups are cheaper.
LIST_FLOOR = 5000
LIST_FACTOR = 4
#: Concurrent look-ups against a remote store.
LOOKUP_THREADS = 16
#: At most this many of a node's listed object keys travel with its task when a Ray worker keys it (else it looks
#: its key up whatever the listing says).
MAX_CANDIDATES = 64


def find_objects(storage: Storage, pipeline: str, wanted: Mapping[str, str],
                 known_stored: int = 0) -> dict[str, ObjectInfo]:
    """The stored objects among ``wanted`` (name -> object key under ``objects/<pipeline>/``), by name.
    ``known_stored``: how many objects the pipeline is known to have at least (a resume knows): when listing
    them would cost more than looking the wanted keys up (measured on Azurite: a listed entry ~0.6 ms, a
    look-up ~1.3 ms with 16 in flight), the keys are looked up."""
    return StoredIndex(storage, pipeline, len(wanted), known_stored).find(wanted)


class StoredIndex:
    """Finds a run's stored outputs as its keys become known — level by level while planning, then node by node
    while it runs (a node's key covers its inputs' data versions, see :mod:`.keys`) — with at most one listing of
    the pipeline's prefix for the whole run on a remote store (:func:`find_objects`' rule, applied once to every key
    the run may look up). Objects stored after that listing (a concurrent run's) are not seen: a miss, the node
    runs and its create-only write finds theirs."""

    def __init__(self, storage: Storage, pipeline: str, expected: int, known_stored: int = 0) -> None:
        self.storage, self.pipeline = storage, pipeline
        self.expected = expected  # how many keys the run may look up in all
        self.known_stored = known_stored
        self._listed: dict[str, ObjectInfo] | None = None
        self._by_node: dict[str, list[ObjectInfo]] | None = None  # the listing by the node that wrote each object
        self._tried = False
        self.requests = 0  # listings and look-ups made (for tests and benchmarks)

    def find(self, wanted: Mapping[str, str]) -> dict[str, ObjectInfo]:
        """The stored objects among ``wanted`` (name -> object key), by name."""
        if not wanted:
            return {}
        if self._listed is None and not self._tried and not self._heads_cheaper():
            self._tried = True
            self.requests += 1
            self._listed = _bounded_listing(self.storage, layout.objects_prefix(self.pipeline),
                                            max(LIST_FLOOR, LIST_FACTOR * self.expected))
            if self._listed is None:
                log.debug("pipeline %r has many stored objects: looking its keys up one by one", self.pipeline)
        if self._listed is not None:
            return {name: self._listed[key] for name, key in wanted.items() if key in self._listed}
        self.requests += len(wanted)
        return head_each(self.storage, wanted)

    def candidates(self, node: str) -> frozenset[str] | None:
        """The keys of the objects the run's listing holds for ``node``: a Ray worker keying it looks its key up only
        when it is one of them (execution/backends/worker_keys.py); None when there is no listing (a local folder, a
        long history: the worker looks its key up) or more than :data:`MAX_CANDIDATES` of them."""
        if self._listed is None:
            return None
        if self._by_node is None:
            self._by_node = {}
            for info in self._listed.values():
                meta = CheckpointMeta.from_info(info)
                if meta is not None:
                    self._by_node.setdefault(meta.node, []).append(info)
        found = self._by_node.get(node, [])
        return frozenset(info.key for info in found) if len(found) <= MAX_CANDIDATES else None

    def _heads_cheaper(self) -> bool:
        return (self.storage.local_lookups or self.expected < HEAD_BELOW
                or 2 * self.expected < self.known_stored)


def head_each(storage: Storage, wanted: Mapping[str, str]) -> dict[str, ObjectInfo]:
    """One ``head`` per key: in this thread on a local folder, else concurrently."""
    items = list(wanted.items())
    if storage.local_lookups or len(items) < 4:
        infos = [_head(storage, key) for _, key in items]
    else:
        with ThreadPoolExecutor(min(LOOKUP_THREADS, len(items)), thread_name_prefix="odibi-lookup") as pool:
            infos = list(pool.map(lambda item: _head(storage, item[1]), items))
    return {name: info for (name, _), info in zip(items, infos) if info is not None}


def _head(storage: Storage, key: str) -> ObjectInfo | None:
    try:
        return storage.head(key)
    except NotFoundError:
        return None


def _bounded_listing(storage: Storage, prefix: str, limit: int) -> dict[str, ObjectInfo] | None:
    """Every object under ``prefix`` with its metadata, or None once there are more than ``limit``."""
    out: dict[str, ObjectInfo] = {}
    for info in storage.list(prefix, with_metadata=True):
        out[info.key] = info
        if len(out) > limit:
            return None
    return out
