"""Opening and closing a run on checkpoint storage: a new run's manifest, or the run being resumed and what its
nodes had done; the per-node states the driver writes into the manifest (there is no record per node)."""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple
from collections.abc import Mapping

from ..definition.dag import DAG
from ..errors import ExecutionError, NotFoundError, PreconditionFailedError, RunStillRunningError
from ..execution.result import NodeRecord
from ..storage.base import Storage
from . import layout
from .legacy import legacy_records
from .objectmeta import CheckpointMeta
from .liveness import HEARTBEAT_S, DriverLease
from .store import RunManifest, who_drives, effective_status, list_runs

log = logging.getLogger(__name__)

#: How much of an error message a manifest keeps per node (the full error is in the run's result).
ERROR_CHARS = 500


def open_new_run(storage: Storage, dag: DAG, run_id: str, keys: Mapping[str, str], levels: list[list[str]],
                 lease: DriverLease, heartbeat_s: float = HEARTBEAT_S,
                 refresh: set[str] | frozenset[str] = frozenset(), sources: Mapping[str, Any] | None = None
                 ) -> RunManifest:
    """Create the manifest of a new run (create-only: a run id is never reused by accident). ``refresh``: the
    nodes it recomputes on purpose (a resume of it recomputes those it did not finish, see open_resumed_run);
    ``sources``: the range each incremental source node reads (a resume reads the same)."""
    manifest = RunManifest(storage, dag.name, run_id)
    manifest.refreshed = set(refresh)
    manifest.sources = dict(sources or {})
    body: dict[str, Any] = {"started_at": time.time(), "heartbeat_s": heartbeat_s, "refresh": sorted(refresh),
                            "nodes": {n: {"key": keys.get(n), "level": level, "status": "pending"}  # None: keyed
                                      for level, names in enumerate(levels) for n in names}}  # when inputs have run
    if sources:
        body["sources"] = manifest.sources
    manifest.create(body, lease)
    return manifest


#: How many times a resume reads the manifest again after its takeover lost a race (see open_resumed_run).
TAKEOVER_TRIES = 3


def open_resumed_run(storage: Storage, dag: DAG, resume: str, lease: DriverLease, *, force: bool = False,
                     heartbeat_s: float = HEARTBEAT_S, refresh: set[str] | frozenset[str] = frozenset()
                     ) -> tuple[RunManifest, dict[str, PriorNode]]:
    """The manifest of the run to resume (``"latest"`` or a run id) and what it says of its nodes.

    A run whose driver is still driving it is refused (:class:`RunStillRunningError`) unless ``force`` (an
    operator who knows that driver is dead; if it is not, it finds the run taken over and stops). A failed,
    abandoned (driver stopped or killed) or succeeded run is taken over and marked running again, by a
    compare-and-swap: of several resumers exactly one wins. One that lost to a write that did not take the run
    (the old driver's late close) reads the manifest again and retries. Nodes the run was recomputing on
    purpose (its ``refresh``) and had not finished are recomputed again, not taken from their stale objects;
    ``refresh`` adds more. ``manifest.refreshed`` holds the result.
    """
    run_id = _resolve(storage, dag, resume)
    manifest = RunManifest(storage, dag.name, run_id)
    forced_out: Any = None  # the driver force applies to: the one first seen (never one that won a race since)
    for attempt in range(TAKEOVER_TRIES):
        try:
            body, checked = manifest.read()
        except NotFoundError:
            raise ExecutionError(
                f"cannot resume: no run {run_id!r} of pipeline {dag.name!r} in {storage.uri}") from None
        status = effective_status(body)
        if attempt == 0:
            forced_out = body.get("driver")
        if status == "running" and not (force and body.get("driver") == forced_out):
            age = time.time() - float(body.get("updated_at") or 0)
            raise RunStillRunningError(
                f"run {run_id!r} of {dag.name!r} is still running (driver {who_drives(body)}, "
                f"last write {age:.0f} s ago); resume it once it has stopped, "
                f"or with force=True (--force) if that driver is known dead")
        if status == "running":
            log.warning("run %s of %r: taking it over from a driver said to be dead (%s), by force", run_id,
                        dag.name, who_drives(body))
        statuses = node_statuses(storage, dag.name, run_id, body)
        unfinished = {n for n in body.get("refresh") or () if n in dag
                      and statuses.get(n, PriorNode("", "")).status not in ("succeeded", "cached", "resumed")}
        manifest.refreshed = unfinished | set(refresh)
        try:
            manifest.take_over(checked, body, lease, status="running", resumes=int(body.get("resumes", 0)) + 1,
                               resumed_from_status=status, heartbeat_s=heartbeat_s,
                               refresh=sorted(manifest.refreshed))
        except PreconditionFailedError:
            if attempt + 1 < TAKEOVER_TRIES:
                continue
            raise ExecutionError(f"run {run_id!r} of {dag.name!r} kept changing while this driver was taking it "
                                 "over (another driver is resuming it?)") from None
        manifest.resumed_from = status
        manifest.sources = dict(body.get("sources") or {})
        done = sum(1 for s in statuses.values() if s.status in ("succeeded", "cached", "resumed"))
        if status == "succeeded":
            log.warning("run %s of %r had already succeeded: resuming it runs only what is no longer stored",
                        run_id, dag.name)
        else:
            log.info("resuming run %s of %r (was %s; %d node(s) done)", run_id, dag.name, status, done)
        return manifest, statuses
    raise AssertionError("unreachable")


def _resolve(storage: Storage, dag: DAG, resume: str) -> str:
    if resume != "latest":
        return resume
    runs = list_runs(storage, dag.name)
    if not runs:
        raise ExecutionError(f"nothing to resume: pipeline {dag.name!r} has no runs in {storage.uri}")
    return runs[0]["run_id"]


class PriorNode(NamedTuple):
    """What a run's manifest (or a layout-1 run's record) says of one of its nodes."""

    status: str
    key: str  # the cache key the node had in that run
    version: str = ""  # the data version of its output then (checkpoint/keys.py); "" when the manifest has none


def node_statuses(storage: Storage, pipeline: str, run_id: str, body: Mapping[str, Any]) -> dict[str, PriorNode]:
    """node -> status and key in a run, from its manifest (layout 2) or from its node records (layout 1)."""
    if int(body.get("layout") or 1) >= 2:
        nodes = body.get("nodes") or {}
        return {n: PriorNode(str(e.get("status", "")), str(e.get("key") or ""), str(e.get("version") or ""))
                for n, e in nodes.items() if isinstance(e, dict)}
    return {n: PriorNode("succeeded", r.get("cache_key", ""))
            for n, r in legacy_records(storage, pipeline, run_id).items()}


def run_checkpoints(storage: Storage, pipeline: str, run_id: str) -> dict[str, CheckpointMeta]:
    """The checkpoints a run's workers wrote (node -> their metadata: attempt, Ray node, pid, times, ...), read
    from the objects themselves (one listing of the pipeline's objects). Objects another run wrote first, which
    this run reused, are not included."""
    out: dict[str, CheckpointMeta] = {}
    for info in storage.list(layout.objects_prefix(pipeline), with_metadata=True):
        meta = CheckpointMeta.from_info(info)
        if meta is not None and meta.run_id == run_id:
            out[meta.node] = meta
    return out


def node_entries(records: Mapping[str, NodeRecord], unconfirmed: set[str] | frozenset[str] = frozenset()
                 ) -> dict[str, dict[str, Any]]:
    """What the manifest keeps of each node: key, level, status, attempts, where its last attempt ran, its
    error (type and message) or the reason it did not run. A node in ``unconfirmed`` (succeeded, its checkpoint
    written behind and not confirmed yet) is ``computed``, not ``succeeded``: a resume must look it up."""
    out: dict[str, dict[str, Any]] = {}
    for name, rec in records.items():
        status = "computed" if name in unconfirmed else rec.status.value
        entry: dict[str, Any] = {"key": rec.cache_key, "level": rec.level, "status": status,
                                 "attempts": rec.attempts}
        last = rec.attempt_history[-1] if rec.attempt_history else None
        # what its consumers' keys cover: a resume keys them without a look-up. Not when its last attempt kept another
        # run's object at its key (0 bytes written): the stored bytes may not be the ones this run computed (a node
        # that is not deterministic), so a resume looks the object up and keys from what is stored
        if rec.data_version and not (rec.status.value == "succeeded" and last is not None and not last.bytes_written):
            entry["version"] = rec.data_version
        if last is not None and last.worker_node_id:
            entry.update(worker=last.worker_node_id, pid=last.worker_pid, bytes_written=last.bytes_written)
        if rec.items is not None:  # a mapped node: nothing is stored under its own key; its items say how it went
            entry["items"] = rec.item_counts()
        if rec.error is not None:
            entry["error"] = f"{rec.error.type_name}: {rec.error.message}"[:ERROR_CHARS]
        elif rec.reason:
            entry["reason"] = rec.reason[:ERROR_CHARS]
        out[name] = entry
    return out
