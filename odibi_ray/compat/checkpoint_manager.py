"""``DistributedCheckpointManager``: the seed's checkpoint face, in a cloud storage with a local copy.

Layout in each storage (the cloud one under ``cloud_path``, the local one at ``checkpoint_dir``)::

    data/<checkpoint_id>/<token>.bin    every state value's codec payload, concatenated (metadata: sha256, size)
    checkpoints/<checkpoint_id>.json    the marker: pipeline, created_at, metadata and, per state value, its
                                        codec, offset, length and SHA-256 (metadata: pipeline, created_at)
    pending/<checkpoint_id>.json        local folder only: saved locally, not yet known to be in the cloud

The data object is written first and the marker last, each atomically, so a checkpoint without a marker (a
save that died half-way) is never listed nor loaded; re-saving an id writes a new data object, swaps the marker,
then removes the old data. Loading checks every SHA-256, so a damaged copy is refused (the other copy is tried).

Sync both ways (the seed's "bi-directional sync" with "fallback to local"): ``save`` writes the local copy, then
a pending mark, then the cloud copy, and removes the mark once the cloud has it, so a cloud outage (or a crash
mid-upload) leaves a durable mark. Every public call first pushes the marked checkpoints (any manager on that
folder does; with none marked it costs one local listing). A push copies the local copy only once its SHA-256s
check out: a damaged one is never pushed and stays marked (reported on each call and by ``sync()``) until it is
re-saved or pruned; a marked checkpoint pruned locally meanwhile is dropped. A cloud copy of that id with the
same data (same SHA-256) is left as is; any other is replaced by the local one (the local save is the one the
caller made last). ``sync()`` also pushes local-only checkpoints and pulls cloud-only ones; a load served by the
cloud refreshes a missing, damaged or different local copy (unless that id is still marked: the local one is
newer and is about to be pushed).
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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptObjectError, NotFoundError, StorageError, StorageUnavailableError
from ..storage.base import Storage
from ..storage.local import LocalStorage
from .cache_manager import storage_at
from ..checkpoint.trust import trust_from

log = logging.getLogger(__name__)

FORMAT = "odibi-checkpoint/1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}\Z")
_MARKERS, _DATA, _PENDING = "checkpoints/", "data/", "pending/"


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


def _newest_first(items: Iterable[_Listed]) -> list[_Listed]:
    """Newest first by created_at; equal times ordered by checkpoint_id, the greater first (deterministic)."""
    return sorted(items, key=lambda c: (c.created_at, c.checkpoint_id), reverse=True)


def _id_in(key: str, prefix: str) -> str | None:
    """The checkpoint id that ``<prefix><id>.json`` names; None for any other key."""
    rel = key[len(prefix):]
    if "/" in rel or not rel.endswith(".json") or not _NAME.match(rel[:-5]):
        return None
    return rel[:-5]


def _pending_key(cid: str) -> str:
    return f"{_PENDING}{cid}.json"


def _encode(cp: Checkpoint, allow_pickle: bool = True) -> tuple[dict[str, Any], bytes]:
    """The marker document and the data object of ``cp``; a new data object name per save (see ``_write``)."""
    from ..checkpoint.codecs import encode

    chunks, entries, offset = [], [], 0
    for name, value in cp.state.items():
        codec, payload = encode(value, allow_pickle=allow_pickle)
        entries.append({"name": name, "codec": codec, "offset": offset, "length": len(payload),
                        "sha256": hashlib.sha256(payload).hexdigest()})
        chunks.append(payload)
        offset += len(payload)
    data = b"".join(chunks)
    marker = {"format": FORMAT, "checkpoint_id": cp.checkpoint_id, "pipeline": cp.pipeline,
              "created_at": float(cp.created_at), "metadata": dict(cp.metadata),
              "data": f"{_DATA}{cp.checkpoint_id}/{uuid.uuid4().hex}.bin",
              "data_sha256": hashlib.sha256(data).hexdigest(), "data_size": len(data), "entries": entries}
    return marker, data


@dataclass(frozen=True)
class SyncReport:
    """What ``sync()`` did: ids copied up to the cloud, ids copied down into the local folder, and ids it could
    not sync with the reason (a damaged copy, the cloud lost mid-way); those are tried again later."""

    pushed: list[str] = field(default_factory=list)
    pulled: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class DistributedCheckpointManager:
    """Save and load pipeline checkpoints in a cloud storage, with a local copy kept in sync both ways and used
    as the fallback when the cloud is unavailable."""

    def __init__(self, checkpoint_dir: str | os.PathLike[str], cloud_adapter: Any = None,
                 cloud_path: str = "checkpoints", keep_last_n: int | None = 10, sync_local: bool = True, *,
                 signing_key: Any = None, allow_pickle: bool = True) -> None:
        """``checkpoint_dir``: the local folder; ``cloud_adapter``: a CloudAdapter or any Storage (None: local
        only) with checkpoints under ``cloud_path``; ``keep_last_n``: checkpoints kept per pipeline (None: all);
        ``sync_local``: also write the local copy when there is a cloud. ``signing_key`` (a key, ``env://`` /
        ``kv://`` reference, or a list whose first key signs): markers are signed, and a copy whose marker is
        unsigned or wrongly signed is refused like a damaged one; ``allow_pickle=False``: state values only
        pickle can carry are refused by ``save``, stored pickles are refused (checkpoint/trust.py)."""
        if keep_last_n is not None and (isinstance(keep_last_n, bool) or not isinstance(keep_last_n, int)
                                        or keep_last_n < 1):
            raise ValueError(f"keep_last_n must be an integer >= 1 (or None to keep all), got {keep_last_n!r}")
        self.checkpoint_dir = os.fspath(checkpoint_dir)
        self.cloud_adapter, self.cloud_path = cloud_adapter, cloud_path
        self.keep_last_n, self.sync_local = keep_last_n, bool(sync_local)
        self.allow_pickle = bool(allow_pickle)
        self._trust = trust_from(signing_key, allow_pickle)
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
                "cloud_path": self.cloud_path, "keep_last_n": self.keep_last_n, "sync_local": self.sync_local,
                "signing_key": self._trust.signer, "allow_pickle": self.allow_pickle}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]  # mypy refuses a call of __init__; it rebuilds the clients

    def _stores(self) -> list[tuple[str, Storage, str]]:
        """(label, storage, key prefix) of every copy, the cloud first."""
        stores = [("cloud", *self._cloud)] if self._cloud else []
        return stores + [("local", self._local, "")]

    # --- save -----------------------------------------------------------------------------------

    def save(self, checkpoint: Checkpoint) -> str:
        """Write ``checkpoint`` locally (when ``sync_local`` or there is no cloud), then to the cloud; prune
        the pipeline to ``keep_last_n`` in each. Returns the id. A cloud failure raises after the local write,
        which stays marked pending: the next call (or ``sync()``) pushes it."""
        if not isinstance(checkpoint, Checkpoint):
            raise TypeError(f"save() takes a Checkpoint, got {type(checkpoint).__name__}")
        checkpoint.validate()
        self._push_pending()
        marker, data = _encode(checkpoint, self.allow_pickle)
        local = self.sync_local or self._cloud is None
        if local:  # the local copy first: it survives a cloud outage
            self._store_in(self._local, "", marker, data)
        if self._cloud is not None:
            self._save_to_cloud(marker, data, pending=local)
        log.info("saved checkpoint %r of %r (%d bytes) to %s", checkpoint.checkpoint_id, checkpoint.pipeline,
                 len(data), ", ".join(label for label, _, _ in self._stores() if label == "cloud" or local))
        return checkpoint.checkpoint_id

    def _save_to_cloud(self, marker: dict[str, Any], data: bytes, pending: bool) -> None:
        """The cloud write of ``save``. With a local copy, a pending mark is written before it and removed after
        it, so that an outage or a crash in between leaves a mark the next call pushes."""
        assert self._cloud is not None
        cid, (store, base) = marker["checkpoint_id"], self._cloud
        if pending:
            doc = {"checkpoint_id": cid, "pipeline": marker["pipeline"], "data_sha256": marker["data_sha256"]}
            self._local.put(_pending_key(cid), json.dumps(doc, sort_keys=True).encode())
        try:
            self._store_in(store, base, marker, data)
        except StorageError as exc:
            if not pending:
                raise
            log.warning("checkpoint %r saved in %s but not in the cloud %s", cid, self._local.uri, store.uri)
            raise type(exc)(f"checkpoint {cid!r} was saved locally in {self._local.uri} but not in the cloud "
                            f"{store.uri} ({exc}); it will be pushed to the cloud on the next call or sync()",
                            key=exc.key) from exc
        if pending:
            self._local.delete(_pending_key(cid))

    def _store_in(self, store: Storage, base: str, marker: dict[str, Any], data: bytes) -> None:
        self._write(store, base, marker, data)
        self._prune(store, base, marker["pipeline"])

    def _write(self, store: Storage, base: str, marker: dict[str, Any], data: bytes) -> None:
        """Data object first, then the marker; then remove the data the replaced marker pointed to."""
        cid, data_rel = marker["checkpoint_id"], marker["data"]
        marker_key = f"{base}{_MARKERS}{cid}.json"
        try:
            previous = json.loads(store.get(marker_key)).get("data")
        except NotFoundError:
            previous = None
        except (ValueError, AttributeError):  # an unreadable marker: its data is found by nobody anyway
            previous = None
        store.put(base + data_rel, data, {"sha256": marker["data_sha256"], "size": str(len(data))})
        raw = json.dumps(marker, sort_keys=True, separators=(",", ":")).encode()
        md = {"pipeline": marker["pipeline"], "created_at": repr(float(marker["created_at"])),
              "sha256": hashlib.sha256(raw).hexdigest()}
        store.put(marker_key, raw, self._trust.seal(f"{_MARKERS}{cid}.json", md))  # signed: key relative to base
        if isinstance(previous, str) and previous != data_rel and previous.startswith(f"{_DATA}{cid}/"):
            store.delete(base + previous)

    def _prune(self, store: Storage, base: str, pipeline: str) -> None:
        """Delete ``pipeline``'s checkpoints beyond the newest ``keep_last_n``: marker first, then data."""
        if self.keep_last_n is None:
            return
        for old in self._beyond_keep(self._list(store, base, pipeline)):
            store.delete(f"{base}{_MARKERS}{old.checkpoint_id}.json")
            store.delete_prefix(f"{base}{_DATA}{old.checkpoint_id}/")
            log.debug("pruned checkpoint %r of %r in %s", old.checkpoint_id, pipeline, store.uri)

    def _beyond_keep(self, items: list[_Listed]) -> list[_Listed]:
        """Those of ``items`` beyond the newest ``keep_last_n`` of their own pipeline."""
        if self.keep_last_n is None:
            return []
        by_pipeline: dict[str, list[_Listed]] = {}
        for item in _newest_first(items):
            by_pipeline.setdefault(item.pipeline, []).append(item)
        return [old for group in by_pipeline.values() for old in group[self.keep_last_n:]]

    # --- list -----------------------------------------------------------------------------------

    def _list(self, store: Storage, base: str, pipeline: str | None) -> list[_Listed]:
        """The complete checkpoints (those with a marker) in one storage, of ``pipeline`` exactly (None: all)."""
        prefix = base + _MARKERS
        found = []
        for info in store.list(prefix, with_metadata=True):
            cid, md = _id_in(info.key, prefix), info.metadata
            if cid is None:
                continue
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
        self._push_pending()
        return [c.checkpoint_id for c in self._list_all(pipeline)]

    # --- load -----------------------------------------------------------------------------------

    def load(self, checkpoint_id: str) -> Checkpoint:
        """The checkpoint from the cloud, else from the local copy (cloud unreachable, lacking it, or damaged).
        A cloud load refreshes a missing, damaged or different local copy (with ``sync_local``; best effort).

        ``NotFoundError`` if no copy has it; ``StorageUnavailableError`` if the cloud is unreachable and there
        is no local copy; ``CheckpointCorruptError`` if every copy found is damaged.
        """
        _check_name(checkpoint_id, "checkpoint_id")
        self._push_pending()
        return self._load_any(checkpoint_id)

    def load_latest(self, pipeline: str) -> Checkpoint | None:
        """The newest checkpoint (by created_at) of exactly ``pipeline``; None if it has none.

        A newest checkpoint whose every copy is damaged is skipped with a warning for the next newest.
        """
        _check_name(pipeline, "pipeline")
        self._push_pending()
        for listed in self._list_all(pipeline):
            try:
                return self._load_any(listed.checkpoint_id)
            except (NotFoundError, CheckpointCorruptError) as exc:  # pruned meanwhile, or damaged everywhere
                log.warning("checkpoint %r of %r cannot be loaded (%s); trying the next newest",
                            listed.checkpoint_id, pipeline, exc)
        return None

    def _load_any(self, checkpoint_id: str) -> Checkpoint:
        """``load`` without the push of pending checkpoints (its callers did it)."""
        problems: list[StorageError] = []
        for label, store, base in self._stores():
            try:
                marker, data = self._read_verified(store, base, checkpoint_id)
                checkpoint = self._decode(store, checkpoint_id, marker, data)
            except (NotFoundError, StorageUnavailableError, CheckpointCorruptError) as exc:
                if not isinstance(exc, NotFoundError):
                    log.warning("checkpoint %r: the %s copy cannot be read (%s)", checkpoint_id, label, exc)
                problems.append(exc)
                continue
            if label == "cloud" and self.sync_local:
                self._refresh_local(marker, data)
            return checkpoint
        where = " or ".join(f"{s.uri}/{b}".rstrip("/") for _, s, b in self._stores())
        for kind in (CheckpointCorruptError, StorageUnavailableError):
            if any(isinstance(p, kind) for p in problems):
                first = next(p for p in problems if isinstance(p, kind))
                raise kind(f"checkpoint {checkpoint_id!r} could not be loaded from {where}: {first}",
                           key=checkpoint_id) from None
        raise NotFoundError(f"checkpoint {checkpoint_id!r} not found in {where}", key=checkpoint_id)

    def _refresh_local(self, marker: dict[str, Any], data: bytes) -> None:
        """After a cloud load: make the local copy the cloud's if it is missing, damaged or different. Best
        effort: the caller has its checkpoint, so a local failure is only logged."""
        cid = marker["checkpoint_id"]
        try:
            if self._local_is_current(marker):
                return
            self._store_in(self._local, "", marker, data)
            log.info("checkpoint %r: refreshed the local copy in %s from the cloud", cid, self._local.uri)
        except StorageError as exc:
            log.warning("checkpoint %r: the local copy in %s could not be refreshed from the cloud (%s)", cid,
                        self._local.uri, exc)

    def _local_is_current(self, marker: dict[str, Any]) -> bool:
        """Whether the local copy is intact and holds the same data, or is intact and still pending (then it
        is the newer save, about to be pushed: never overwrite it with the cloud's)."""
        cid = marker["checkpoint_id"]
        try:
            mine, _ = self._read_verified(self._local, "", cid)
        except (NotFoundError, CheckpointCorruptError):
            return False
        return mine["data_sha256"] == marker["data_sha256"] or self._local.exists(_pending_key(cid))

    def _marker(self, store: Storage, base: str, cid: str) -> dict[str, Any]:
        raw, info = store.get_with_info(f"{base}{_MARKERS}{cid}.json")
        refused = self._trust.refusal(f"{_MARKERS}{cid}.json", {**info.metadata, "codec": ""})
        if refused is not None:  # never parsed: its entries could name any codec
            raise CheckpointCorruptError(f"checkpoint {cid!r} in {store.uri}: its marker is not trusted ({refused})",
                                         key=cid)
        want = info.metadata.get("sha256")
        if want is not None and hashlib.sha256(raw).hexdigest() != want:
            raise CheckpointCorruptError(f"checkpoint {cid!r} in {store.uri}: its marker does not match its "
                                         "SHA-256", key=cid)
        try:
            marker = json.loads(raw)
            ok = (isinstance(marker, dict) and marker.get("format") == FORMAT and marker["checkpoint_id"] == cid
                  and isinstance(marker["pipeline"], str) and isinstance(marker["entries"], list)
                  and isinstance(marker["data"], str) and marker["data"].startswith(f"{_DATA}{cid}/")
                  and isinstance(marker["metadata"], dict)
                  and isinstance(marker["created_at"], (int, float)))
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise CheckpointCorruptError(f"checkpoint {cid!r} in {store.uri}: its marker is not a valid "
                                         f"{FORMAT} document", key=cid)
        return marker

    def _read_verified(self, store: Storage, base: str, cid: str) -> tuple[dict[str, Any], bytes]:
        """The marker and the data object of ``cid`` in one storage, the data checked against the marker's size
        and SHA-256. ``NotFoundError`` if it has no marker, ``CheckpointCorruptError`` if damaged."""
        marker = self._marker(store, base, cid)
        try:
            data = store.get(base + marker["data"])
        except NotFoundError:
            raise CheckpointCorruptError(f"checkpoint {cid!r} in {store.uri}: its data object is missing",
                                         key=cid) from None
        if len(data) != marker.get("data_size") or hashlib.sha256(data).hexdigest() != marker.get("data_sha256"):
            raise CheckpointCorruptError(f"checkpoint {cid!r} in {store.uri}: its data does not match its SHA-256 "
                                         "(damaged or truncated)", key=cid)
        return marker, data

    def _decode(self, store: Storage, cid: str, marker: dict[str, Any], data: bytes) -> Checkpoint:
        """The checkpoint a verified marker and data object hold, every state value checked by its SHA-256."""
        from ..checkpoint.codecs import decode

        state: dict[str, Any] = {}
        try:
            for e in marker["entries"]:
                if e["codec"] == "pickle" and not self.allow_pickle:
                    raise ValueError(f"state value {e['name']!r} is a pickle and allow_pickle is off")
                payload = data[e["offset"]:e["offset"] + e["length"]]
                if hashlib.sha256(payload).hexdigest() != e["sha256"]:
                    raise ValueError(f"state value {e['name']!r} does not match its SHA-256")
                state[e["name"]] = decode(e["codec"], payload)
        except Exception as exc:  # noqa: BLE001 - any failure to rebuild checked bytes means a damaged copy
            raise CheckpointCorruptError(f"checkpoint {cid!r} in {store.uri}: cannot rebuild its state "
                                         f"({type(exc).__name__}: {exc})", key=cid) from None
        return Checkpoint(cid, marker["pipeline"], float(marker["created_at"]), state,
                          {str(k): str(v) for k, v in marker["metadata"].items()})

    # --- sync -----------------------------------------------------------------------------------

    def sync(self) -> SyncReport:
        """Push pending and local-only checkpoints to the cloud and, with ``sync_local``, pull cloud-only ones
        into the local folder (each copy verified by SHA-256), among the newest ``keep_last_n`` of each pipeline;
        then prune the pipelines written to. No cloud: nothing to do.

        ``StorageUnavailableError`` if the cloud cannot be listed (nothing changed, pending marks kept); past
        that, a checkpoint that cannot be synced is reported in ``failed`` (and a pending one stays pending).
        """
        if self._cloud is None:
            return SyncReport()
        store, base = self._cloud
        local = {c.checkpoint_id: c for c in self._list(self._local, "", None)}
        cloud = {c.checkpoint_id: c for c in self._list(store, base, None)}
        pending = set(self._pending_ids())
        # what the prunes would delete right after: not worth copying (a pending one is just unmarked)
        beyond = {c.checkpoint_id for c in self._beyond_keep(list({**cloud, **local}.values()))}
        for cid in sorted(pending & beyond):
            self._local.delete(_pending_key(cid))
        failed: dict[str, str] = {}
        up = sorted(c for c in local.keys() | pending if c not in beyond and (c in pending or c not in cloud))
        pushed = self._each("push", up, self._push_one, failed)
        down = sorted(cloud.keys() - local.keys() - beyond) if self.sync_local else []
        pulled = self._each("pull", down, self._pull_one, failed)
        self._prune_quietly(store, base, set(pushed.values()))
        self._prune_quietly(self._local, "", set(pulled.values()))
        log.info("synced %s with %s: %d pushed, %d pulled, %d failed", self._local.uri, store.uri, len(pushed),
                 len(pulled), len(failed))
        return SyncReport(list(pushed), list(pulled), failed)

    def _pending_ids(self) -> list[str]:
        """Ids marked pending in the local folder (saved locally, not yet known to be in the cloud)."""
        ids = (_id_in(info.key, _PENDING) for info in self._local.list(_PENDING))
        return [cid for cid in ids if cid is not None]

    def _push_pending(self) -> None:
        """Run first by every public method: push what earlier saves left pending. With nothing pending it costs
        one local listing and no cloud call; a failure is logged, never raised (the call goes on as usual)."""
        if self._cloud is None:
            return
        try:
            pending = self._pending_ids()
        except StorageError as exc:
            log.warning("pending checkpoints in %s cannot be listed: %s", self._local.uri, exc)
            return
        if pending:
            pushed = self._each("push", sorted(pending), self._push_one, {})
            self._prune_quietly(*self._cloud, set(pushed.values()))

    def _each(self, verb: str, ids: list[str], copy: Callable[[str], str | None],
              failed: dict[str, str]) -> dict[str, str]:
        """``copy`` each id (push or pull one checkpoint): {id: pipeline} of those copied. A damaged or vanished
        checkpoint fails alone; any other storage error (the cloud lost) fails the rest at once, so an outage
        costs one wait and one warning, not one per checkpoint."""
        done: dict[str, str] = {}
        for i, cid in enumerate(ids):
            try:
                pipeline = copy(cid)
            except (CheckpointCorruptError, NotFoundError) as exc:
                failed[cid] = f"not {verb}ed: {exc}"
                log.warning("checkpoint %r not %sed: %s", cid, verb, exc)
                continue
            except StorageError as exc:
                failed.update(dict.fromkeys(ids[i:], f"not {verb}ed: {exc}"))
                log.warning("cloud sync stopped, %d checkpoint(s) not %sed (%s): %s", len(ids) - i, verb,
                            ", ".join(ids[i:]), exc)
                break
            if pipeline is not None:
                done[cid] = pipeline
                log.info("checkpoint %r %sed", cid, verb)
        return done

    def _push_one(self, cid: str) -> str | None:
        """Copy the verified local copy of ``cid`` to the cloud unless the cloud holds the same data, then clear
        its pending mark; the pipeline if copied. No local copy any more (pruned meanwhile): the mark is dropped.
        A damaged local copy raises CheckpointCorruptError before anything is written, and stays pending."""
        assert self._cloud is not None
        try:
            marker, data = self._read_verified(self._local, "", cid)
        except NotFoundError:
            self._local.delete(_pending_key(cid))
            log.info("pending checkpoint %r is no longer in %s (pruned): dropped", cid, self._local.uri)
            return None
        store, base = self._cloud
        copied = not self._holds(store, base, marker)
        if copied:
            self._write(store, base, marker, data)
        self._local.delete(_pending_key(cid))
        return marker["pipeline"] if copied else None

    def _pull_one(self, cid: str) -> str:
        """Copy the verified cloud copy of ``cid`` into the local folder; its pipeline."""
        assert self._cloud is not None
        marker, data = self._read_verified(*self._cloud, cid)
        self._write(self._local, "", marker, data)
        return marker["pipeline"]

    def _holds(self, store: Storage, base: str, marker: dict[str, Any]) -> bool:
        """Whether ``store`` has a valid marker of that checkpoint for the same data (SHA-256 and size) and its
        data object: a push then leaves that copy as is."""
        try:
            theirs = self._marker(store, base, marker["checkpoint_id"])
            info = store.head(base + theirs["data"])
        except (NotFoundError, CheckpointCorruptError):
            return False
        return theirs.get("data_sha256") == marker["data_sha256"] and info.size == marker["data_size"]

    def _prune_quietly(self, store: Storage, base: str, pipelines: set[str]) -> None:
        """Prune the pipelines a push or pull wrote to. Housekeeping only: a failure is logged (the next save
        of that pipeline prunes again)."""
        for pipeline in sorted(pipelines):
            try:
                self._prune(store, base, pipeline)
            except StorageError as exc:
                log.warning("checkpoints of %r in %s not pruned: %s", pipeline, store.uri, exc)
                return
