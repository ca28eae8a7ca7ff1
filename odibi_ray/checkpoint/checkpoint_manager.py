"""``DistributedCheckpointManager``: the seed's checkpoint face, in a cloud storage with a local copy.

Layout in each storage (the cloud one under ``cloud_path``, the local one at ``checkpoint_dir``)::

    data/<checkpoint_id>/<token>.bin    every state value's codec payload, concatenated (metadata: sha256, size)
    checkpoints/<checkpoint_id>.json    the marker: pipeline, created_at, metadata and, per state value, its
                                        codec, offset, length and SHA-256 (metadata: pipeline, created_at)

The data object is written first and the marker last, each atomically, so a checkpoint without a marker (a
save that died half-way) is never listed nor loaded; re-saving an id writes a new data object, swaps the marker,
then removes the old data. Loading checks every SHA-256, so a damaged copy is refused (the other copy is tried).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from ..errors import CorruptObjectError, NotFoundError, StorageError, StorageUnavailableError
from ..storage.base import Storage
from ..storage.local import LocalStorage
from .cache_manager import storage_at

log = logging.getLogger(__name__)

FORMAT = "odibi-checkpoint/1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
_MARKERS, _DATA = "checkpoints/", "data/"


class CheckpointCorruptError(CorruptObjectError):
    """A stored checkpoint failed its integrity checks (bad marker, missing data, SHA-256 mismatch)."""


@dataclass
class Checkpoint:
    """One saved pipeline state: ``state`` values are anything the codecs take (JSON, tables, bytes, ...)."""

    checkpoint_id: str
    pipeline: str
    created_at: float = field(default_factory=time.time)
    state: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def new(cls, pipeline: str, state: Mapping[str, Any] | None = None,
            metadata: Mapping[str, str] | None = None, *, clock: Callable[[], float] = time.time) -> Checkpoint:
        """A checkpoint of ``pipeline`` stamped now, with a fresh unique id (``<pipeline>-<utc time>-<random>``)."""
        now = clock()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
        return cls(f"{pipeline}-{stamp}-{uuid.uuid4().hex[:12]}", pipeline, now, dict(state or {}),
                   dict(metadata or {}))

    def validate(self) -> None:
        """Raise TypeError / ValueError naming the field that cannot be stored."""
        _check_name(self.checkpoint_id, "checkpoint_id")
        _check_name(self.pipeline, "pipeline")
        if isinstance(self.created_at, bool) or not isinstance(self.created_at, (int, float)) \
                or not math.isfinite(self.created_at):
            raise ValueError(f"checkpoint {self.checkpoint_id!r}: created_at must be a finite number of seconds "
                             f"since the epoch, got {self.created_at!r}")
        if not isinstance(self.state, dict) or not all(isinstance(k, str) for k in self.state):
            raise TypeError(f"checkpoint {self.checkpoint_id!r}: state must be a dict with string keys")
        if not isinstance(self.metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.metadata.items()):
            raise TypeError(f"checkpoint {self.checkpoint_id!r}: metadata must be a dict of strings to strings")


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"{what} {value!r} cannot be stored: use 1-200 characters of letters, digits, '_', '-' "
                         "and '.', starting with a letter or digit")
    return value


@dataclass(frozen=True)
class _Listed:
    checkpoint_id: str
    pipeline: str
    created_at: float


def _newest_first(items: Iterator[_Listed] | list[_Listed]) -> list[_Listed]:
    """Newest first by created_at; equal times ordered by checkpoint_id, the greater first (deterministic)."""
    return sorted(items, key=lambda c: (c.created_at, c.checkpoint_id), reverse=True)


class DistributedCheckpointManager:
    """Save and load pipeline checkpoints in a cloud storage, with a local copy and a local fallback."""

    def __init__(self, checkpoint_dir: str | os.PathLike[str], cloud_adapter: Any = None,
                 cloud_path: str = "checkpoints", keep_last_n: int | None = 10, sync_local: bool = True) -> None:
        """``checkpoint_dir``: the local folder; ``cloud_adapter``: a CloudAdapter or any Storage (None: local
        only) with checkpoints under ``cloud_path``; ``keep_last_n``: checkpoints kept per pipeline (None: all);
        ``sync_local``: also write the local copy when there is a cloud."""
        if keep_last_n is not None and (isinstance(keep_last_n, bool) or not isinstance(keep_last_n, int)
                                        or keep_last_n < 1):
            raise ValueError(f"keep_last_n must be an integer >= 1 (or None to keep all), got {keep_last_n!r}")
        self.checkpoint_dir = os.fspath(checkpoint_dir)
        self.cloud_adapter, self.cloud_path = cloud_adapter, cloud_path
        self.keep_last_n, self.sync_local = keep_last_n, bool(sync_local)
        self._local = LocalStorage(self.checkpoint_dir)
        self._cloud: tuple[Storage, str] | None = None
        if cloud_adapter is not None:
            self._cloud = storage_at(cloud_adapter, cloud_path, "cloud_path")

    def __repr__(self) -> str:
        cloud = f", cloud={self._cloud[0].uri + '/' + self._cloud[1]!r}" if self._cloud else ""
        return f"DistributedCheckpointManager({self.checkpoint_dir!r}{cloud})"

    def __getstate__(self) -> dict[str, Any]:
        """Configuration only: the adapters pickle as their URIs and options, never as open clients."""
        return {"checkpoint_dir": self.checkpoint_dir, "cloud_adapter": self.cloud_adapter,
                "cloud_path": self.cloud_path, "keep_last_n": self.keep_last_n, "sync_local": self.sync_local}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def _stores(self) -> list[tuple[str, Storage, str]]:
        """(label, storage, key prefix) of every copy, the cloud first."""
        stores = [("cloud", *self._cloud)] if self._cloud else []
        return stores + [("local", self._local, "")]

    # --- save -----------------------------------------------------------------------------------

    def save(self, checkpoint: Checkpoint) -> str:
        """Write ``checkpoint`` locally (when ``sync_local`` or there is no cloud), then to the cloud; prune
        the pipeline to ``keep_last_n`` in each. Returns the id. A cloud failure raises after the local write."""
        from .codecs import encode

        if not isinstance(checkpoint, Checkpoint):
            raise TypeError(f"save() takes a Checkpoint, got {type(checkpoint).__name__}")
        checkpoint.validate()
        chunks, entries, offset = [], [], 0
        for name, value in checkpoint.state.items():
            codec, payload = encode(value)
            entries.append({"name": name, "codec": codec, "offset": offset, "length": len(payload),
                            "sha256": hashlib.sha256(payload).hexdigest()})
            chunks.append(payload)
            offset += len(payload)
        data = b"".join(chunks)
        data_rel = f"{_DATA}{checkpoint.checkpoint_id}/{uuid.uuid4().hex}.bin"  # new per save: see _write
        targets = [s for s in self._stores() if s[0] == "cloud" or self.sync_local or self._cloud is None]
        targets.sort(key=lambda s: s[0] != "local")  # the local copy first: it survives a cloud outage
        for label, store, base in targets:
            try:
                self._write(store, base, checkpoint, data_rel, data, entries)
                self._prune(store, base, checkpoint.pipeline)
            except StorageError:
                if label == "cloud" and any(t[0] == "local" for t in targets):
                    log.warning("checkpoint %r saved in %s but not in the cloud %s", checkpoint.checkpoint_id,
                                self._local.uri, store.uri)
                raise
        log.info("saved checkpoint %r of %r (%d bytes) to %s", checkpoint.checkpoint_id, checkpoint.pipeline,
                 len(data), ", ".join(t[0] for t in targets))
        return checkpoint.checkpoint_id

    def _write(self, store: Storage, base: str, cp: Checkpoint, data_rel: str, data: bytes,
               entries: list[dict]) -> None:
        """Data object first, then the marker; then remove the data the replaced marker pointed to."""
        marker_key = f"{base}{_MARKERS}{cp.checkpoint_id}.json"
        try:
            previous = json.loads(store.get(marker_key)).get("data")
        except NotFoundError:
            previous = None
        except (ValueError, AttributeError):  # an unreadable marker: its data is found by nobody anyway
            previous = None
        digest = hashlib.sha256(data).hexdigest()
        store.put(base + data_rel, data, {"sha256": digest, "size": str(len(data))})
        marker = {"format": FORMAT, "checkpoint_id": cp.checkpoint_id, "pipeline": cp.pipeline,
                  "created_at": float(cp.created_at), "metadata": dict(cp.metadata), "data": data_rel,
                  "data_sha256": digest, "data_size": len(data), "entries": entries}
        raw = json.dumps(marker, sort_keys=True, separators=(",", ":")).encode()
        store.put(marker_key, raw, {"pipeline": cp.pipeline, "created_at": repr(float(cp.created_at)),
                                    "sha256": hashlib.sha256(raw).hexdigest()})
        if isinstance(previous, str) and previous != data_rel and previous.startswith(f"{_DATA}{cp.checkpoint_id}/"):
            store.delete(base + previous)

    def _prune(self, store: Storage, base: str, pipeline: str) -> None:
        """Delete ``pipeline``'s checkpoints beyond the newest ``keep_last_n``: marker first, then data."""
        if self.keep_last_n is None:
            return
        for old in _newest_first(self._list(store, base, pipeline))[self.keep_last_n:]:
            store.delete(f"{base}{_MARKERS}{old.checkpoint_id}.json")
            store.delete_prefix(f"{base}{_DATA}{old.checkpoint_id}/")
            log.debug("pruned checkpoint %r of %r in %s", old.checkpoint_id, pipeline, store.uri)

    # --- list -----------------------------------------------------------------------------------

    def _list(self, store: Storage, base: str, pipeline: str | None) -> list[_Listed]:
        """The complete checkpoints (those with a marker) in one storage, of ``pipeline`` exactly (None: all)."""
        prefix = base + _MARKERS
        found = []
        for info in store.list(prefix, with_metadata=True):
            rel = info.key[len(prefix):]
            if "/" in rel or not rel.endswith(".json") or not _NAME.match(rel[:-5]):
                continue
            cid, md = rel[:-5], info.metadata
            try:
                listed = _Listed(cid, md["pipeline"], float(md["created_at"]))
            except (KeyError, ValueError):  # no metadata (e.g. a copied folder): read the marker itself
                try:
                    marker = self._marker(store, base, cid)
                except NotFoundError:
                    continue
                except CheckpointCorruptError as exc:
                    log.warning("skipping checkpoint %r in %s: %s", cid, store.uri, exc)
                    continue
                listed = _Listed(cid, marker["pipeline"], float(marker["created_at"]))
            if pipeline is None or listed.pipeline == pipeline:
                found.append(listed)
        return found

    def _list_all(self, pipeline: str | None) -> list[_Listed]:
        """Checkpoints of every copy, deduplicated by id, newest first; an unreachable cloud is skipped."""
        seen: dict[str, _Listed] = {}
        for label, store, base in self._stores():
            try:
                items = self._list(store, base, pipeline)
            except StorageUnavailableError as exc:
                if label != "cloud":
                    raise
                log.warning("cloud checkpoints unavailable, listing local ones only: %s", exc)
                continue
            for item in items:
                seen.setdefault(item.checkpoint_id, item)
        return _newest_first(seen.values())

    def list_checkpoints(self, pipeline: str | None = None) -> list[str]:
        """Ids of the stored checkpoints (of exactly ``pipeline``, or all), newest first."""
        if pipeline is not None:
            _check_name(pipeline, "pipeline")
        return [c.checkpoint_id for c in self._list_all(pipeline)]

    # --- load -----------------------------------------------------------------------------------

    def load(self, checkpoint_id: str) -> Checkpoint:
        """The checkpoint from the cloud, else from the local copy (cloud unreachable, lacking it, or damaged).

        ``NotFoundError`` if no copy has it; ``StorageUnavailableError`` if the cloud is unreachable and there
        is no local copy; ``CheckpointCorruptError`` if every copy found is damaged.
        """
        _check_name(checkpoint_id, "checkpoint_id")
        problems: list[StorageError] = []
        for label, store, base in self._stores():
            try:
                return self._load(store, base, checkpoint_id)
            except (NotFoundError, StorageUnavailableError, CheckpointCorruptError) as exc:
                if not isinstance(exc, NotFoundError):
                    log.warning("checkpoint %r: the %s copy cannot be read (%s)", checkpoint_id, label, exc)
                problems.append(exc)
        where = " or ".join(f"{s.uri}/{b}".rstrip("/") for _, s, b in self._stores())
        for kind in (CheckpointCorruptError, StorageUnavailableError):
            if any(isinstance(p, kind) for p in problems):
                first = next(p for p in problems if isinstance(p, kind))
                raise kind(f"checkpoint {checkpoint_id!r} could not be loaded from {where}: {first}",
                           key=checkpoint_id) from None
        raise NotFoundError(f"checkpoint {checkpoint_id!r} not found in {where}", key=checkpoint_id)

    def load_latest(self, pipeline: str) -> Checkpoint | None:
        """The newest checkpoint (by created_at) of exactly ``pipeline``; None if it has none.

        A newest checkpoint whose every copy is damaged is skipped with a warning for the next newest.
        """
        _check_name(pipeline, "pipeline")
        for listed in self._list_all(pipeline):
            try:
                return self.load(listed.checkpoint_id)
            except (NotFoundError, CheckpointCorruptError) as exc:  # pruned meanwhile, or damaged everywhere
                log.warning("checkpoint %r of %r cannot be loaded (%s); trying the next newest",
                            listed.checkpoint_id, pipeline, exc)
        return None

    def _marker(self, store: Storage, base: str, cid: str) -> dict[str, Any]:
        raw, info = store.get_with_info(f"{base}{_MARKERS}{cid}.json")
        want = info.metadata.get("sha256")
        if want is not None and hashlib.sha256(raw).hexdigest() != want:
            raise CheckpointCorruptError(f"checkpoint {cid!r} in {store.uri}: its marker does not match its "
                                         "SHA-256", key=cid)
        try:
            marker = json.loads(raw)
            ok = (isinstance(marker, dict) and marker.get("format") == FORMAT and marker["checkpoint_id"] == cid
                  and isinstance(marker["pipeline"], str) and isinstance(marker["entries"], list)
                  and isinstance(marker["data"], str) and isinstance(marker["metadata"], dict)
                  and isinstance(marker["created_at"], (int, float)))
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise CheckpointCorruptError(f"checkpoint {cid!r} in {store.uri}: its marker is not a valid "
                                         f"{FORMAT} document", key=cid)
        return marker

    def _load(self, store: Storage, base: str, cid: str) -> Checkpoint:
        from .codecs import decode

        marker = self._marker(store, base, cid)
        try:
            data = store.get(base + marker["data"])
        except NotFoundError:
            raise CheckpointCorruptError(f"checkpoint {cid!r} in {store.uri}: its data object is missing",
                                         key=cid) from None
        if len(data) != marker.get("data_size") or hashlib.sha256(data).hexdigest() != marker.get("data_sha256"):
            raise CheckpointCorruptError(f"checkpoint {cid!r} in {store.uri}: its data does not match its SHA-256 "
                                         "(damaged or truncated)", key=cid)
        state: dict[str, Any] = {}
        try:
            for e in marker["entries"]:
                payload = data[e["offset"]:e["offset"] + e["length"]]
                if hashlib.sha256(payload).hexdigest() != e["sha256"]:
                    raise ValueError(f"state value {e['name']!r} does not match its SHA-256")
                state[e["name"]] = decode(e["codec"], payload)
        except Exception as exc:  # noqa: BLE001 - any failure to rebuild checked bytes means a damaged copy
            raise CheckpointCorruptError(f"checkpoint {cid!r} in {store.uri}: cannot rebuild its state "
                                         f"({type(exc).__name__}: {exc})", key=cid) from None
        return Checkpoint(cid, marker["pipeline"], float(marker["created_at"]), state,
                          {str(k): str(v) for k, v in marker["metadata"].items()})
