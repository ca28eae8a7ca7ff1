"""Housekeeping of checkpoint storage: purge output objects (by expiry, age, node, pipeline), remove old run
folders (``keep_last_n``, ``purge_runs``), never anything a running run still needs.

Everything goes through the :class:`~odibi_ray.storage.base.Storage` interface, so it works on every adapter.
Which objects a run *references*: the cache keys its manifest lists for every node (cached nodes included), at
their layout-2 and layout-1 places, plus, for a layout-1 run, the objects its node records name. Objects under
``objects/<pipeline>/`` belong to that pipeline (layout 2).

Temp files: a writer killed mid-put leaves a partial temp file in a local folder store (``.odibi-tmp-*``, never
listed). Every housekeeping call removes those that have not changed for ``temp_older_than_s`` (default
:data:`TEMP_MAX_AGE_S`, an hour; None: keep them) in its scope: ``purge`` the whole store (with ``pipeline=``,
that pipeline's objects and runs), ``keep_last_n`` / ``purge_runs`` the pipeline's objects and runs. A younger
temp file may be a live writer's and is never touched. Remote stores leave none to find: an S3 put is one
PutObject (all or nothing); an ADLS put of more than 64 MiB stages blocks and commits them in one request, and a
killed one leaves only uncommitted blocks, which no listing shows and Azure discards after 7 days. (The HDFS path
of ``ArrowFSStorage`` writes hidden ``.<name>.odibi-tmp-*`` files that are not swept.)

Limit: a run that is planning at the very moment of a purge (its plan found an object, its manifest is not
written yet) is invisible to the purge; if that object is removed, the node reading it fails and
``run(..., resume=run_id)`` recomputes it. Run housekeeping when no run of the affected pipelines is starting.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import overload

from ..definition.names import item_parent
from ..errors import NotFoundError
from ..storage.base import ObjectInfo, Storage
from . import layout
from .lookup import head_each
from .objectmeta import CheckpointMeta
from .store import effective_status

log = logging.getLogger(__name__)

#: Statuses ``purge_runs(status=...)`` accepts (a running run is never removed).
REMOVABLE_STATUSES = frozenset({"succeeded", "failed", "abandoned"})
#: Housekeeping removes temp files of unfinished puts that have not changed for this long (seconds): a live put
#: writes its temp file without pause, then moves it in place within seconds.
TEMP_MAX_AGE_S = 3600.0


@dataclass
class PurgeReport:
    """What a housekeeping call removed (with ``dry_run``: would remove), and what it kept because a run
    still references it."""

    objects: list[str] = field(default_factory=list)  # object keys (``objects/ab/ab...``)
    runs: list[str] = field(default_factory=list)  # ``<pipeline>/<run_id>``
    bytes: int = 0  # total size of the removed objects
    kept: list[str] = field(default_factory=list)  # objects that matched but a (running / kept) run references
    dry_run: bool = False
    temp_files: int = 0  # temp files of unfinished puts removed (past ``temp_older_than_s``)
    temp_bytes: int = 0  # their total size

    def __str__(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        temp = (f"; {verb} {self.temp_files} temp file(s) ({self.temp_bytes} bytes) of interrupted writes"
                if self.temp_files else "")
        return (f"{verb} {len(self.objects)} object(s) ({self.bytes} bytes) and {len(self.runs)} run(s); "
                f"kept {len(self.kept)} object(s) still referenced{temp}")


@dataclass
class _Run:
    """One run folder as found in a listing: its manifest metadata (None: no manifest) and record objects."""

    pipeline: str
    run_id: str
    meta: dict[str, str] | None = None
    record_objects: set[str] = field(default_factory=set)
    body: dict | None = None
    unreadable: bool = False  # the manifest exists but is not JSON: treated as still in use

    @property
    def name(self) -> str:
        return f"{self.pipeline}/{self.run_id}"

    @property
    def started_at(self) -> float:
        return _float((self.meta or {}).get("started_at")) or 0.0


# --- public API ------------------------------------------------------------------------------------

def purge(storage: Storage, *, expired: bool = False, older_than_s: float | None = None, node: str | None = None,
          pipeline: str | None = None, now: float | None = None, dry_run: bool = False,
          temp_older_than_s: float | None = TEMP_MAX_AGE_S) -> PurgeReport:
    """Remove output objects matching every given filter (AND), except those a running run references.

    ``expired``: its ``expires_at`` has passed; ``older_than_s``: created more than that many seconds
    before ``now``; ``node``: written for a node of that name; ``pipeline``: referenced by a run of exactly
    that pipeline (and by no run of another pipeline). At least one filter is required. ``now`` (default:
    the clock) judges expiry and age only; whether a run is still running is judged on the real clock.
    Run folders are left alone: a record whose object is gone is a miss (recomputed), never an error.
    ``temp_older_than_s``: also remove temp files of unfinished puts unchanged for that long (in the whole store;
    with ``pipeline``, in its objects and runs); None: keep them.
    """
    _check_storage(storage)
    older_than_s = _check_seconds(older_than_s, "older_than_s")
    temp_older_than_s = _check_seconds(temp_older_than_s, "temp_older_than_s")
    if not isinstance(expired, bool):
        raise TypeError(f"expired must be True or False, got {type(expired).__name__}")
    if node is not None and not isinstance(node, str):
        raise TypeError(f"node must be a string, got {type(node).__name__}")
    if node == "":
        raise ValueError("node must be a non-empty node name")
    if pipeline is not None:
        _check_pipeline(pipeline)
    if not (expired or older_than_s is not None or node is not None or pipeline is not None):
        raise ValueError("purge needs at least one filter: expired=True, older_than_s=, node= or pipeline= "
                         f"(to empty a storage, delete its {layout.OBJECTS!r} prefix explicitly)")
    now = time.time() if now is None else _check_seconds(now, "now")
    report = PurgeReport(dry_run=dry_run)
    cutoff = None if older_than_s is None else now - older_than_s
    matched = [i for i in storage.list(layout.OBJECTS, with_metadata=True)
               if _matches(i, now=now, expired=expired, cutoff=cutoff, node=node)]
    runs = _scan_runs(storage)  # after the object listing: every run started before it is seen
    in_use: set[str] = set()
    own: set[str] = set()
    if pipeline is not None:  # layout 2: the pipeline's own folder of objects
        own |= {i.key for i in matched if i.key.startswith(layout.objects_prefix(pipeline))}
    for run in runs.values():
        if pipeline is not None and run.pipeline == pipeline:
            own |= _references(storage, run)
        elif pipeline is not None:
            in_use |= _references(storage, run)  # another pipeline's object is not this purge's business
        if _status(storage, run) in ("running", "unreadable"):
            in_use |= _references(storage, run)
    for info in matched:
        if pipeline is not None and info.key not in own:
            continue
        if info.key in in_use:
            report.kept.append(info.key)
            continue
        _remove_object(storage, info.key, info.size, report)
    _sweep_temp(storage, [""] if pipeline is None else _pipeline_prefixes(pipeline), temp_older_than_s, report)
    _log(storage, "purge", report)
    return report


def keep_last_n(storage: Storage, pipeline: str, n: int, *, dry_run: bool = False,
                temp_older_than_s: float | None = TEMP_MAX_AGE_S) -> PurgeReport:
    """Keep the ``n`` newest runs of exactly ``pipeline`` (by ``started_at``; a running run is always kept),
    remove the older runs' folders, then the objects only those runs referenced.

    An object still referenced by any remaining run, of any pipeline, is kept; an object no run ever
    referenced (e.g. written by a crashed run whose folder is gone) is left to :func:`purge`. Temp files of
    unfinished puts unchanged for ``temp_older_than_s`` in the pipeline's objects and runs go too (None: kept).
    """
    _check_storage(storage)
    _check_pipeline(pipeline)
    temp_older_than_s = _check_seconds(temp_older_than_s, "temp_older_than_s")
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an integer, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1 (runs to keep), got {n}; use purge_runs to remove every run")
    runs = _pipeline_runs(storage, pipeline)
    victims = []
    for run in runs[n:]:
        status = _status(storage, run)
        if status in ("running", "unreadable"):
            log.info("keep_last_n: keeping run %s of %r: it is %s", run.run_id, pipeline, status)
        elif status != "gone":
            victims.append(run)
    return _remove_runs(storage, victims, dry_run, "keep_last_n", pipeline, temp_older_than_s)


def purge_runs(storage: Storage, pipeline: str, *, older_than_s: float | None = None,
               status: str | Iterable[str] | None = None, now: float | None = None,
               dry_run: bool = False, temp_older_than_s: float | None = TEMP_MAX_AGE_S) -> PurgeReport:
    """Remove run folders of exactly ``pipeline`` that started more than ``older_than_s`` before ``now``
    and/or whose status is in ``status`` (succeeded, failed, abandoned), then the objects only they
    referenced (as :func:`keep_last_n` does, temp files included). No filter: every run that is not running."""
    _check_storage(storage)
    _check_pipeline(pipeline)
    older_than_s = _check_seconds(older_than_s, "older_than_s")
    temp_older_than_s = _check_seconds(temp_older_than_s, "temp_older_than_s")
    statuses = _check_statuses(status)
    now = time.time() if now is None else _check_seconds(now, "now")
    victims = []
    for run in _pipeline_runs(storage, pipeline):
        if older_than_s is not None and run.started_at >= now - older_than_s:
            continue
        st = _status(storage, run)
        if st in ("running", "unreadable", "gone") or (statuses is not None and st not in statuses):
            continue
        victims.append(run)
    return _remove_runs(storage, victims, dry_run, "purge_runs", pipeline, temp_older_than_s)


# --- runs and their references ---------------------------------------------------------------------

def _scan_runs(storage: Storage, pipeline: str | None = None) -> dict[tuple[str, str], _Run]:
    """Every run folder (of ``pipeline``, or of all pipelines) from one listing with metadata."""
    prefix = layout.RUNS if pipeline is None else layout.runs_prefix(pipeline)
    runs: dict[tuple[str, str], _Run] = {}
    for info in storage.list(prefix, with_metadata=True):
        manifest = layout.parse_manifest_key(info.key)
        if manifest is not None:
            runs.setdefault(manifest, _Run(*manifest)).meta = dict(info.metadata)
            continue
        record = layout.parse_legacy_record_key(info.key)
        if record is not None:
            run = runs.setdefault(record[:2], _Run(*record[:2]))
            obj = info.metadata.get("object")
            if obj:
                run.record_objects.add(obj)
    return runs


def _pipeline_runs(storage: Storage, pipeline: str) -> list[_Run]:
    """The runs of exactly ``pipeline`` that have a manifest, newest first (as ``list_runs`` orders them)."""
    runs = [r for r in _scan_runs(storage, pipeline).values() if r.meta is not None]
    runs.sort(key=lambda r: (r.started_at, r.run_id), reverse=True)
    return runs


def _body(storage: Storage, run: _Run) -> dict | None:
    """The run's manifest body, read once (None if it has none, it vanished, or it is not JSON)."""
    if run.body is None and run.meta is not None and not run.unreadable:
        problem = "not a JSON object"
        try:
            body = json.loads(storage.get(layout.manifest_key(run.pipeline, run.run_id)))
        except NotFoundError:
            run.meta = None  # removed since the listing
            return None
        except ValueError as exc:
            body, problem = None, f"not JSON: {exc}"
        if isinstance(body, dict):
            run.body = body
        else:
            run.unreadable = True
            log.warning("manifest of run %s in %s is unreadable (%s): treating the run as in use",
                        run.name, storage.uri, problem)
    return run.body


def _status(storage: Storage, run: _Run) -> str:
    """``running``/``succeeded``/``failed``/``abandoned``, or ``unreadable`` / ``gone`` / ``none``."""
    listed = (run.meta or {}).get("status")
    if run.body is None and listed in ("succeeded", "failed"):
        return listed  # final: the manifest's metadata says so (written with its body); no read needed
    body = _body(storage, run)
    if run.unreadable:
        return "unreadable"
    if body is None:
        return "gone" if run.meta is None and not run.record_objects else "none"
    return effective_status(body)


def _references(storage: Storage, run: _Run) -> set[str]:
    """Object keys the run references: its manifest's node keys and its records' objects."""
    refs = set(run.record_objects)
    body = _body(storage, run) or {}
    nodes = body.get("nodes")
    if isinstance(nodes, dict):
        for entry in nodes.values():
            key = entry.get("key") if isinstance(entry, dict) else None
            if isinstance(key, str) and key:
                refs.add(layout.object_key(run.pipeline, key))
                refs.add(layout.legacy_object_key(key))
    return refs


def _remove_runs(storage: Storage, victims: list[_Run], dry_run: bool, what: str, pipeline: str,
                 temp_older_than_s: float | None) -> PurgeReport:
    """Remove the victims' folders, then the objects they referenced that no remaining run references."""
    report = PurgeReport(dry_run=dry_run)
    referenced: set[str] = set()
    for run in victims:
        referenced |= _references(storage, run)
    for run in victims:
        if not dry_run:
            storage.delete_prefix(layout.run_prefix(run.pipeline, run.run_id))
        report.runs.append(run.name)
    gone = {(r.pipeline, r.run_id) for r in victims}
    still: set[str] = set()  # scanned after the folders went: every run started before now is seen
    for ident, run in _scan_runs(storage).items():
        if ident not in gone:
            still |= _references(storage, run)
    infos = _existing(storage, referenced)
    for key in sorted(infos):
        if key in still:
            report.kept.append(key)
        else:
            _remove_object(storage, key, infos[key].size, report)
    _sweep_temp(storage, _pipeline_prefixes(pipeline), temp_older_than_s, report)
    _log(storage, what, report)
    return report


def _existing(storage: Storage, keys: set[str]) -> dict[str, ObjectInfo]:
    """The stored objects among ``keys`` (a node that never produced output has a key but no object), looked up
    one by one (concurrently on remote stores): the cost grows with the runs removed, not with the store."""
    return head_each(storage, {k: k for k in keys})


# --- objects ---------------------------------------------------------------------------------------

def _matches(info: ObjectInfo, *, now: float, expired: bool, cutoff: float | None, node: str | None) -> bool:
    """Whether an object passes every given filter (expired at ``now``, created before ``cutoff``, node). Judged
    by what its metadata says even when it is damaged (a damaged object is filtered like any other)."""
    meta = CheckpointMeta.salvage(info)
    if expired and not meta.expired(now):
        return False
    if cutoff is not None:
        created = meta.created or info.last_modified  # no creation time written: the store's own
        if created is None or created >= cutoff:
            return False
    return node is None or meta.node == node or item_parent(meta.node) == node  # a mapped node's: its items too


def _remove_object(storage: Storage, key: str, size: int, report: PurgeReport) -> None:
    if report.dry_run or storage.delete(key):
        report.objects.append(key)
        report.bytes += size
        log.debug("%s %s from %s", "would remove" if report.dry_run else "removed", key, storage.uri)


# --- temp files of unfinished puts -----------------------------------------------------------------

def _pipeline_prefixes(pipeline: str) -> list[str]:
    return [layout.objects_prefix(pipeline), layout.runs_prefix(pipeline)]


def _sweep_temp(storage: Storage, prefixes: list[str], older_than_s: float | None, report: PurgeReport) -> None:
    """Remove (``dry_run``: count) the temp files under ``prefixes`` unchanged for ``older_than_s`` seconds, on
    stores that keep them (a local folder; remote puts leave nothing to find)."""
    sweep = getattr(storage, "sweep_temp", None)
    if older_than_s is None or sweep is None:
        return
    for prefix in prefixes:
        count, size = sweep(older_than_s, prefix, dry_run=report.dry_run)
        report.temp_files += count
        report.temp_bytes += size


# --- checks and helpers ----------------------------------------------------------------------------

def _float(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]  # any object: what float() refuses gives None below
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _check_storage(storage: object) -> None:
    if not isinstance(storage, Storage):
        raise TypeError(f"storage must be a Storage adapter (see odibi_ray.storage.open_storage), "
                        f"got {type(storage).__name__}")


@overload
def _check_seconds(value: float, name: str) -> float: ...
@overload
def _check_seconds(value: float | None, name: str) -> float | None: ...
def _check_seconds(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_pipeline(pipeline: object) -> None:
    if not isinstance(pipeline, str):
        raise TypeError(f"pipeline must be a string, got {type(pipeline).__name__}")
    layout.runs_prefix(pipeline)  # ValueError for a name that cannot be a storage path


def _check_statuses(status: str | Iterable[str] | None) -> frozenset[str] | None:
    if status is None:
        return None
    wanted = frozenset([status] if isinstance(status, str) else status)
    bad = wanted - REMOVABLE_STATUSES
    if bad or not wanted:
        raise ValueError(f"status must be among {sorted(REMOVABLE_STATUSES)} (a running run is never removed), "
                         f"got {sorted(bad) or 'nothing'}")
    return wanted


def _log(storage: Storage, what: str, report: PurgeReport) -> None:
    log.info("%s on %s: %s", what, storage.uri, report)
