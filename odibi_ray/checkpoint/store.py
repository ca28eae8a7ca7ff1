"""Reading and writing checkpoints through a storage adapter: node outputs and records (worker side),
run manifests and the plan's lookups (driver side). The layout is in :mod:`.layout`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from ..errors import AlreadyExistsError, CorruptObjectError, ExecutionError, NotFoundError, PreconditionFailedError
from ..storage.base import ObjectInfo, Storage
from . import layout
from .codecs import decode, encode

log = logging.getLogger(__name__)

#: A running driver refreshes its manifest this often; three missed beats mark the run abandoned.
HEARTBEAT_S = 15.0


@dataclass(frozen=True)
class StoredRef:
    """A node output that lives in storage; passed to tasks instead of the value (the worker reads it)."""

    storage: Storage
    key: str  # object key
    node: str

    def load(self) -> Any:
        return read_output(self.storage, self.key)


@dataclass(frozen=True)
class OutputTarget:
    """Where a worker checkpoints its node's output and record (pickled once per node and run)."""

    storage: Storage
    pipeline: str
    run_id: str
    node: str
    cache_key: str
    ttl_s: float | None

    @property
    def object_key(self) -> str:
        return layout.object_key(self.cache_key)


# --- worker side ---------------------------------------------------------------------------------

def read_output(storage: Storage, key: str) -> Any:
    """A stored output, checked against its SHA-256 (:class:`CorruptObjectError` if it does not match)."""
    return read_output_sized(storage, key)[0]


def read_output_sized(storage: Storage, key: str) -> tuple[Any, int]:
    """:func:`read_output`, with the number of bytes read."""
    data, info = storage.get_with_info(key)
    if not _intact(data, info):
        raise CorruptObjectError(f"stored output {key!r} does not match its SHA-256 (altered or truncated)", key=key)
    return decode(info.metadata.get("codec", "pickle"), data), len(data)


def _intact(data: bytes, info: ObjectInfo) -> bool:
    return hashlib.sha256(data).hexdigest() == info.metadata.get("sha256")


def _fresh(info: ObjectInfo, now: float) -> bool:
    expires = info.metadata.get("expires_at", "")
    return not expires or float(expires) > now


def write_output(target: OutputTarget, value: Any, record: dict[str, Any]) -> int:
    """Store a node's output (create-only: a concurrent run's intact object is reused), then its record.

    Returns the number of bytes written. The record is written only after the object is complete, so a
    reader never trusts a partial checkpoint.
    """
    codec, payload = encode(value)
    digest = hashlib.sha256(payload).hexdigest()
    now = time.time()
    meta = {"sha256": digest, "size": str(len(payload)), "codec": codec, "created": f"{now:.6f}",
            "expires_at": f"{now + target.ttl_s:.6f}" if target.ttl_s else "", "node": target.node}
    storage, okey = target.storage, target.object_key
    written = 0
    try:
        storage.put(okey, payload, meta, if_none_match=True)
        written = len(payload)
    except AlreadyExistsError:
        written = _replace_if_unusable(storage, okey, payload, meta, now)
    body = dict(record, object=okey, sha256=digest, size=len(payload), codec=codec, cache_key=target.cache_key)
    storage.put(layout.record_key(target.pipeline, target.run_id, target.node),
                json.dumps(body, sort_keys=True).encode(),
                {"status": "succeeded", "cache_key": target.cache_key, "object": okey, "sha256": digest,
                 "attempt": str(record.get("attempt", ""))})
    return written


def _replace_if_unusable(storage: Storage, okey: str, payload: bytes, meta: dict[str, str], now: float) -> int:
    """Another writer got there first: reuse its object if intact and fresh, else replace it (CAS)."""
    try:
        data, info = storage.get_with_info(okey)
    except NotFoundError:  # deleted meanwhile (purge): write ours
        storage.put(okey, payload, meta, if_none_match=True)
        return len(payload)
    if _intact(data, info) and _fresh(info, now):
        return 0  # the winner's object: equal by its key
    try:
        storage.put(okey, payload, meta, if_match=info.etag)
        return len(payload)
    except PreconditionFailedError:
        return 0  # someone else replaced it just now


# --- driver side ---------------------------------------------------------------------------------

def fresh_objects(storage: Storage, cache_keys: dict[str, str]) -> tuple[dict[str, ObjectInfo], list[str], list[str]]:
    """The stored, unexpired, complete objects among ``cache_keys`` (node -> key); the nodes whose stored
    object is damaged (size or metadata not as recorded: truncated or foreign); the nodes whose object expired."""
    now = time.time()
    wanted = {layout.object_key(k): n for n, k in cache_keys.items()}
    found: dict[str, ObjectInfo] = {}
    if len(wanted) <= 32:
        for okey, node in wanted.items():
            try:
                found[node] = storage.head(okey)
            except NotFoundError:
                pass
    else:
        for info in storage.list("objects/", with_metadata=True):
            node = wanted.get(info.key)
            if node is not None:
                found[node] = info
    damaged = [n for n, i in found.items() if i.metadata.get("size") != str(i.size) or "sha256" not in i.metadata]
    expired = [n for n, i in found.items() if n not in damaged and not _fresh(i, now)]
    return {n: i for n, i in found.items() if n not in damaged and n not in expired}, damaged, expired


def node_records(storage: Storage, pipeline: str, run_id: str) -> dict[str, dict[str, str]]:
    """The succeeded node records of a run (node -> record metadata), from one listing."""
    prefix = layout.records_prefix(pipeline, run_id)
    out = {}
    for info in storage.list(prefix, with_metadata=True):
        name = info.key[len(prefix):]
        if name.endswith(".json") and info.metadata.get("status") == "succeeded":
            out[name[:-5]] = dict(info.metadata)
    return out


class RunManifest:
    """The driver's record of a run: created create-only, every change by ETag compare-and-swap."""

    def __init__(self, storage: Storage, pipeline: str, run_id: str) -> None:
        self.storage, self.pipeline, self.run_id = storage, pipeline, run_id
        self.key = layout.manifest_key(pipeline, run_id)
        self._last_beat = 0.0
        self.owner: dict[str, Any] | None = None  # the driver identity this process writes as

    def read(self) -> tuple[dict[str, Any], ObjectInfo]:
        data, info = self.storage.get_with_info(self.key)
        return json.loads(data), info

    def create(self, body: dict[str, Any]) -> None:
        body = dict(body, pipeline=self.pipeline, run_id=self.run_id, status="running", resumes=0)
        self._write(body, if_none_match=True)
        self.owner = body.get("driver")

    def take_over(self, checked: ObjectInfo, body: dict[str, Any], **changes: Any) -> None:
        """Become this run's driver, if the manifest is still the one that was checked (``checked.etag``):
        of two drivers resuming one run at once, exactly one wins."""
        me = driver_identity()
        new = dict(body, **changes, driver=me, updated_at=time.time())
        try:
            self._write(new, if_match=checked.etag)
        except PreconditionFailedError:
            raise ExecutionError(f"run {self.run_id!r} of {self.pipeline!r} changed while this driver was taking it "
                                 "over (another driver is resuming it?)") from None
        self.owner = me

    def update(self, **changes: Any) -> dict[str, Any]:
        """Apply ``changes`` with compare-and-swap, retrying if another writer got in between. Refused
        (:class:`ExecutionError`) once another driver has taken the run over."""
        for _ in range(20):
            body, info = self.read()
            if self.owner is not None and body.get("driver") != self.owner:
                raise ExecutionError(f"run {self.run_id!r} of {self.pipeline!r} was taken over by another driver "
                                     f"({body.get('driver')}); this driver no longer writes its manifest")
            body.update(changes)
            try:
                self._write(body, if_match=info.etag)
                return body
            except PreconditionFailedError:
                time.sleep(0.05)
        raise PreconditionFailedError(f"run manifest {self.key!r} kept changing under this driver", key=self.key)

    def heartbeat(self) -> None:
        """Refresh ``updated_at`` at most every :data:`HEARTBEAT_S` (cheap to call from the driver loop)."""
        now = time.time()
        if now - self._last_beat >= HEARTBEAT_S:
            self._last_beat = now
            try:
                self.update(updated_at=now)
            except Exception as exc:  # a missed beat is not worth failing the run
                log.warning("could not refresh the run manifest: %s", exc)

    def _write(self, body: dict[str, Any], **cond: Any) -> None:
        body["updated_at"] = body.get("updated_at") or time.time()
        self.storage.put(self.key, json.dumps(body, sort_keys=True, default=str).encode(),
                         {"status": body["status"], "started_at": f"{body.get('started_at', 0):.6f}",
                          "updated_at": f"{float(body['updated_at']):.6f}"}, **cond)


def effective_status(body: dict[str, Any], now: float | None = None) -> str:
    """``succeeded``, ``failed``, ``running`` or ``abandoned``: running, but its driver is gone (a dead
    process on this host, or no heartbeat for three periods from anywhere)."""
    status = body.get("status", "")
    if status == "running":
        driver = body.get("driver") or {}
        if driver.get("host") == socket.gethostname():  # on this host the driver's process tells
            return "running" if _alive(int(driver.get("pid") or 0)) else "abandoned"
        updated = float(body.get("updated_at") or 0)
        if (now or time.time()) - updated > 3 * HEARTBEAT_S:
            return "abandoned"
    return status


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (killed, not yet reaped) is not a running driver
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def driver_identity() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def list_runs(storage: Storage, pipeline: str) -> list[dict[str, str]]:
    """Manifests of a pipeline's runs (metadata plus run_id), newest first."""
    prefix = layout.runs_prefix(pipeline)
    runs = []
    for info in storage.list(prefix, with_metadata=True):
        rest = info.key[len(prefix):]
        if rest.count("/") == 1 and rest.endswith("/run.json"):
            runs.append(dict(info.metadata, run_id=rest.split("/", 1)[0]))
    runs.sort(key=lambda m: (float(m.get("started_at") or 0), m["run_id"]), reverse=True)
    return runs
