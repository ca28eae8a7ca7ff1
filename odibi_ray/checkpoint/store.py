"""Reading and writing checkpoints through a storage adapter: node outputs (worker side) and run manifests
(driver side). The layout is in :mod:`.layout`, the objects' metadata in :mod:`.objectmeta`."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from ..errors import (AlreadyExistsError, CorruptObjectError, NotFoundError, PreconditionFailedError, RunTakenOverError,
                      StorageError, UntrustedObjectError)
from ..storage.base import ObjectInfo, Storage
from . import layout
from .codecs import decode, encode
from .liveness import HEARTBEAT_S, DriverLease, driver_state
from .objectmeta import CheckpointMeta
from .trust import TRUST_ALL, Trust

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredRef:
    """A node output that lives in storage; passed to tasks instead of the value (the worker reads it)."""

    storage: Storage
    key: str  # object key
    node: str
    trust: Trust = TRUST_ALL  # what the reader accepts (signature, pickle)

    def load(self) -> Any:
        return read_output(self.storage, self.key, self.trust)


class StoredHandle:
    """The 'handle' of a node reused from storage: consumers get the :class:`StoredRef` and read it themselves.

    Works as an input for both backends: Ray passes ``.value`` as a task argument, the local backend
    takes ``.result()[1]``.
    """

    __slots__ = ("ref",)

    def __init__(self, ref: StoredRef) -> None:
        self.ref = ref

    @property
    def value(self) -> StoredRef:
        return self.ref

    def result(self) -> tuple[None, StoredRef]:
        return None, self.ref


def discard_unusable(ref: StoredRef, exc: Exception) -> str:
    """A stored output that could not be read (``exc``: corrupt, gone, no longer decodable) is never trusted
    again: log it, delete it (best effort) so its producer writes it anew, and say what was wrong."""
    problem = f"{type(exc).__name__}: {exc}"
    log.warning("stored output of node %r is unusable (%s); computing it again", ref.node, problem)
    try:
        ref.storage.delete(ref.key)
    except StorageError:
        pass
    return problem


@dataclass(frozen=True)
class OutputTarget:
    """Where a worker checkpoints its node's output (pickled once per node and run)."""

    storage: Storage
    pipeline: str
    run_id: str
    node: str
    cache_key: str
    ttl_s: float | None
    write_behind: bool = False  # the worker queues the write and returns (see .writeback)
    replace: bool = False  # refreshed on purpose: an object already at the key is stale, written over (CAS)
    trust: Trust = TRUST_ALL  # signs what it writes; what it accepts of an object already there

    @property
    def object_key(self) -> str:
        return layout.object_key(self.pipeline, self.cache_key)


@dataclass(frozen=True)
class Provenance:
    """What made an output: written into its checkpoint's metadata by the worker."""

    attempt: int
    ray_node_id: str
    pid: int
    started_at: float
    ended_at: float


# --- worker side ---------------------------------------------------------------------------------

def read_output(storage: Storage, key: str, trust: Trust = TRUST_ALL) -> Any:
    """A stored output, checked against its SHA-256 (:class:`CorruptObjectError` if it does not match) and
    against ``trust`` (:class:`UntrustedObjectError`: unsigned, wrongly signed, a pickle not allowed)."""
    return read_output_sized(storage, key, trust)[0]


def read_output_sized(storage: Storage, key: str, trust: Trust = TRUST_ALL) -> tuple[Any, int]:
    """:func:`read_output`, with the number of bytes read.

    Streamed (:meth:`Storage.get_into`): the metadata is judged before the payload is fetched (an untrusted object
    is not even downloaded, where the adapter streams), the bytes land in one buffer that grows in place, hashed
    as they come, and decoded in place: a large output is held once as its payload and once as its
    value, never more."""
    sink: _PayloadSink | None = None

    def open_sink(info: ObjectInfo) -> _PayloadSink:
        nonlocal sink
        refused = trust.refusal(key, info.metadata)
        if refused is not None:  # never decoded: a signature or a codec the reader does not accept
            raise UntrustedObjectError(f"stored output {key!r} is not trusted: {refused}", key=key)
        meta = CheckpointMeta.from_info(info)
        if meta is None:
            raise _corrupt(key)
        sink = _PayloadSink(key, meta, keep=True)
        return sink

    storage.get_into(key, open_sink)
    assert sink is not None
    if not sink.intact():
        raise _corrupt(key)
    codec, payload = sink.meta.codec, sink.payload()
    sink = None  # the BytesIO goes: the payload is held once
    return decode(codec, payload), len(payload)


def _corrupt(key: str) -> CorruptObjectError:
    return CorruptObjectError(f"stored output {key!r} does not match its SHA-256 (altered or truncated)", key=key)


class _PayloadSink:
    """Where a checkpoint's bytes land as they are read, hashed as they come. With ``keep``: a ``BytesIO``, which
    grows in place (large buffers by ``realloc``/``mremap``, no copy) and hands its bytes over without a copy
    (:meth:`payload`); without: only the hash and the count. More bytes than the metadata says:
    :class:`CorruptObjectError` at once. An adapter downloading chunks in parallel writes out of order (after a
    ``seek``): then the hash is taken once at the end."""

    def __init__(self, key: str, meta: CheckpointMeta, *, keep: bool) -> None:
        self.key, self.meta = key, meta
        self._bio = io.BytesIO() if keep else None
        self._sha: Any = hashlib.sha256()
        self._pos = self._hashed = self._received = 0

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        start, end = self._pos, self._pos + n
        if end > self.meta.size:
            raise _corrupt(self.key)
        if self._bio is not None:
            self._bio.write(data)
        if self._sha is not None and start == self._hashed:
            self._sha.update(data)
            self._hashed = end
        elif self._bio is not None:
            self._sha = None  # out of order: hash the whole payload at the end
        else:
            raise ValueError("a checksum-only sink takes its bytes in order")
        self._pos, self._received = end, self._received + n
        return n

    def seekable(self) -> bool:
        return self._bio is not None

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        assert self._bio is not None
        self._pos = self._bio.seek(offset, whence)
        return self._pos

    def intact(self) -> bool:
        """Whether the bytes received are the ones the metadata describes (:meth:`CheckpointMeta.payload_problem`)."""
        digest = self._sha.hexdigest() if self._sha is not None else hashlib.sha256(self.payload()).hexdigest()
        return self.meta.payload_problem(self._received, digest) is None

    def payload(self) -> bytes:
        assert self._bio is not None
        return self._bio.getvalue()  # the buffer itself (no other view of it is open): no copy


class _Unusable(Exception):
    """The object already at a key cannot be reused (stops reading it)."""


def write_output(target: OutputTarget, value: Any, made: Provenance) -> int:
    """Checkpoint a node's output: one create-only put of the object with its metadata (no separate record).

    Returns the number of bytes written: 0 when a concurrent run's intact, fresh object under the same key
    (equal by its key) was there first. The object appears whole or not at all, so a reader never trusts a
    partial checkpoint.
    """
    return write_output_versioned(target, value, made)[0]


def write_output_versioned(target: OutputTarget, value: Any, made: Provenance) -> tuple[int, str, str]:
    """:func:`write_output`, and the SHA-256 and codec of the payload encoded (the output's data version)."""
    payload, md = encode_output(target, value, made)
    return store_encoded(target, payload, md), md["sha256"], md["codec"]


def encode_output(target: OutputTarget, value: Any, made: Provenance) -> tuple[bytes | bytearray, dict[str, str]]:
    """The bytes and metadata of a node's checkpoint (encoded now: a value changed later is not what is stored).
    A Parquet payload is the ``bytearray`` the encoder filled, passed on without a copy."""
    codec, payload = encode(value, allow_pickle=target.trust.allow_pickle)
    now = time.time()
    meta = CheckpointMeta(sha256=hashlib.sha256(payload).hexdigest(), size=len(payload), codec=codec, created=now,
                          expires_at=now + target.ttl_s if target.ttl_s else None, node=target.node,
                          pipeline=target.pipeline, run_id=target.run_id, attempt=made.attempt,
                          ray_node_id=made.ray_node_id, pid=made.pid, started_at=made.started_at,
                          ended_at=made.ended_at, layout=layout.LAYOUT_VERSION)
    return payload, target.trust.seal(target.object_key, meta.to_metadata())


def store_encoded(target: OutputTarget, payload: bytes | bytearray, md: dict[str, str]) -> int:
    """Put an encoded checkpoint create-only; see :func:`write_output`. Written with
    :meth:`Storage.put_stream`: from the payload in place, never a second copy of it."""
    storage, okey = target.storage, target.object_key
    try:
        storage.put_stream(okey, payload, md, if_none_match=True)
        return len(payload)
    except AlreadyExistsError:
        if target.replace:
            return _replace(storage, okey, payload, md)
        return _replace_if_unusable(storage, okey, payload, md, time.time(), target.trust)


def _replace(storage: Storage, okey: str, payload: bytes | bytearray, md: dict[str, str]) -> int:
    """Write over the object at ``okey`` (a node refreshed on purpose: what is there is stale), by compare-and-
    swap on the ETag it has now, so that a concurrent writer's object is replaced whole or not at all."""
    for _ in range(5):
        try:
            info = storage.head(okey)
            storage.put_stream(okey, payload, md, if_match=info.etag)
            return len(payload)
        except NotFoundError:  # removed meanwhile: create it
            try:
                storage.put_stream(okey, payload, md, if_none_match=True)
                return len(payload)
            except AlreadyExistsError:
                continue
        except PreconditionFailedError:  # changed between the head and the put: look again
            continue
    raise PreconditionFailedError(f"checkpoint {okey!r} kept changing while it was being refreshed", key=okey)


def _replace_if_unusable(storage: Storage, okey: str, payload: bytes | bytearray, md: dict[str, str], now: float,
                         trust: Trust = TRUST_ALL) -> int:
    """Another writer got there first: reuse its object if intact, fresh and trusted, else replace it (CAS).
    Theirs is checked as it streams by (its SHA-256 and size only: never a second payload in memory; an
    object whose metadata already rules it out is not read at all, where the adapter streams)."""
    seen: dict[str, Any] = {}

    def open_sink(info: ObjectInfo) -> _PayloadSink:
        seen["info"] = info
        theirs = CheckpointMeta.from_info(info)
        if theirs is None or not theirs.fresh(now) or trust.refusal(okey, info.metadata) is not None:
            raise _Unusable()
        seen["sink"] = sink = _PayloadSink(okey, theirs, keep=False)
        return sink

    try:
        storage.get_into(okey, open_sink)
        if seen["sink"].intact():
            return 0  # the winner's object: equal by its key
    except NotFoundError:  # deleted meanwhile (purge): write ours
        storage.put_stream(okey, payload, md, if_none_match=True)
        return len(payload)
    except (_Unusable, CorruptObjectError):  # stale, untrusted, or longer than its metadata says
        pass
    info = seen["info"]
    try:
        storage.put_stream(okey, payload, md, if_match=info.etag)
        return len(payload)
    except PreconditionFailedError:
        return 0  # someone else replaced it just now


class RunManifest:
    """The driver's record of a run: created create-only, every change by ETag compare-and-swap.

    Safe to share between the driver loop's thread and the thread that writes its heartbeats: every write is a
    compare-and-swap, and a write that lost one re-reads before it tries again.
    """

    def __init__(self, storage: Storage, pipeline: str, run_id: str) -> None:
        self.storage, self.pipeline, self.run_id = storage, pipeline, run_id
        self.key = layout.manifest_key(pipeline, run_id)
        self.owner: dict[str, Any] | None = None  # the driver identity this process writes as
        self._mine: tuple[dict[str, Any], str] | None = None  # the body and ETag this driver last wrote
        self.resumed_from: str | None = None  # a resume: the status the run had when this driver took it over
        self.refreshed: set[str] = set()  # nodes this run recomputes on purpose (see runs.open_resumed_run)
        self.sources: dict[str, Any] = {}  # incremental source node -> the range this run reads (execution/sources.py)

    def read(self) -> tuple[dict[str, Any], ObjectInfo]:
        data, info = self.storage.get_with_info(self.key)
        return json.loads(data), info

    def create(self, body: dict[str, Any], lease: DriverLease | None = None) -> None:
        """Create the manifest, driven by ``lease`` (None: by the driver ``body`` names, e.g. in tools and tests)."""
        driver = lease.identity if lease is not None else body.get("driver")
        body = dict(body, pipeline=self.pipeline, run_id=self.run_id, status="running", resumes=0,
                    layout=layout.LAYOUT_VERSION, driver=driver)
        self._write(body, if_none_match=True)
        self.owner = driver

    def take_over(self, checked: ObjectInfo, body: dict[str, Any], lease: DriverLease, **changes: Any) -> None:
        """Become this run's driver, if the manifest is still the one that was checked (``checked.etag``):
        of two drivers resuming one run at once, exactly one wins (the other gets
        :class:`PreconditionFailedError`)."""
        new = dict(body, **changes, driver=lease.identity, updated_at=time.time(), layout=layout.LAYOUT_VERSION)
        self._write(new, if_match=checked.etag)
        self.owner = lease.identity

    def update(self, *, while_running: bool = False, **changes: Any) -> dict[str, Any] | None:
        """Apply ``changes`` with compare-and-swap, retrying if another writer got in between. Refused
        (:class:`RunTakenOverError`) once another driver has taken the run over. ``while_running``: change nothing
        (return None) once the run is closed (a heartbeat that lost the race to the final write)."""
        for attempt in range(20):
            mine = self._mine
            if attempt == 0 and mine is not None:  # most often nobody else wrote since: no read needed
                body, etag = dict(mine[0]), mine[1]
            else:
                body, info = self.read()
                etag = info.etag
            if self.owner is not None and body.get("driver") != self.owner:
                raise RunTakenOverError(f"run {self.run_id!r} of {self.pipeline!r} was taken over by another driver "
                                        f"({who_drives(body)}); this driver no longer writes its manifest")
            if while_running and body.get("status") != "running":
                return None
            body.update(changes)
            try:
                self._write(body, if_match=etag)
                return body
            except PreconditionFailedError:
                self._mine = None
                if attempt:
                    time.sleep(0.05)
        raise PreconditionFailedError(f"run manifest {self.key!r} kept changing under this driver", key=self.key)

    def _write(self, body: dict[str, Any], **cond: Any) -> None:
        body["updated_at"] = body.get("updated_at") or time.time()
        self._mine = None
        info = self.storage.put(self.key, json.dumps(body, sort_keys=True, default=str).encode(),
                                {"status": body["status"], "started_at": f"{body.get('started_at', 0):.6f}",
                                 "updated_at": f"{float(body['updated_at']):.6f}"}, **cond)
        self._mine = (dict(body), info.etag)


def who_drives(body: dict[str, Any]) -> str:
    """The driver a manifest names, for messages."""
    driver = body.get("driver") or {}
    return f"host {driver.get('host')}, pid {driver.get('pid')}" if isinstance(driver, dict) else "unknown"


def effective_status(body: dict[str, Any], now: float | None = None) -> str:
    """``succeeded``, ``failed``, ``running`` or ``abandoned``: running, but its driver stopped driving it (see
    :mod:`.liveness`: a released or dead driver on this host, or no heartbeat for three of its periods)."""
    status = body.get("status", "")
    if status == "running":
        return driver_state(body.get("driver") or {}, float(body.get("updated_at") or 0),
                            float(body.get("heartbeat_s") or HEARTBEAT_S), now)
    return status


def list_runs(storage: Storage, pipeline: str) -> list[dict[str, str]]:
    """Manifests of a pipeline's runs (metadata plus run_id), newest first."""
    runs = []
    for info in storage.list(layout.runs_prefix(pipeline), with_metadata=True):
        run = layout.parse_manifest_key(info.key)
        if run is not None:
            runs.append(dict(info.metadata, run_id=run[1]))
    runs.sort(key=lambda m: (float(m.get("started_at") or 0), m["run_id"]), reverse=True)
    return runs
