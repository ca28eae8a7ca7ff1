"""Where checkpoints live in a storage root: one layout for cache and resume (the README's "Checkpoints, cache
and resume" explains it). Layout 2:

```
objects/<pipeline>/<key[:2]>/<key>   node output, written once (create-only) by the worker that computed it,
                                     content-addressed by the node's cache key. It *is* the checkpoint: its
                                     metadata (:class:`~.objectmeta.CheckpointMeta`) says what made it (node,
                                     run, attempt, Ray node, pid, times) and how to trust it (sha256, size,
                                     codec, expiry). One object per node: no separate record.
runs/<pipeline>/<run_id>/run.json    run manifest (driver only; created create-only, changed by ETag CAS): the
                                     run's status, and per node its key, level, status, attempts, worker and
                                     error, written on the driver's heartbeat and when the run ends.
```

Objects sit under their pipeline so that planning lists (or looks up) only the pipeline's own objects, never
the whole store. Layout 1 (before 2026-12) kept objects at ``objects/<key[:2]>/<key>`` and one record per node
under ``runs/<pipeline>/<run_id>/nodes/``: those are still read (:mod:`.legacy`), never written.
"""

from __future__ import annotations

# The name rule (re-exported: MAX_NAME_LEN is part of the layout), checked again where keys are built.
from ..definition.names import MAX_NAME_LEN as MAX_NAME_LEN, check_name

#: The layout this engine writes; manifests and objects carry it.
LAYOUT_VERSION = 2

#: Every stored output (each pipeline's under its own folder) and every run manifest: the two top folders.
OBJECTS = "objects/"
RUNS = "runs/"
#: The layout marker at the store's root: which layout the store holds (see :mod:`.legacy`).
MARKER_KEY = "odibi-layout.json"
_MANIFEST = "run.json"
_RECORDS = "nodes/"  # layout 1: a run's node records


def objects_prefix(pipeline: str) -> str:
    """Every stored output of ``pipeline``."""
    return f"{OBJECTS}{check_name(pipeline, 'pipeline')}/"


def object_key(pipeline: str, cache_key: str) -> str:
    """The stored output of the node whose cache key is ``cache_key``."""
    return f"{objects_prefix(pipeline)}{cache_key[:2]}/{cache_key}"


def legacy_object_key(cache_key: str) -> str:
    """Where layout 1 kept the output of ``cache_key`` (read only)."""
    return f"{OBJECTS}{cache_key[:2]}/{cache_key}"


def runs_prefix(pipeline: str) -> str:
    """Every run of ``pipeline``."""
    return f"{RUNS}{check_name(pipeline, 'pipeline')}/"


def run_prefix(pipeline: str, run_id: str) -> str:
    return f"{runs_prefix(pipeline)}{check_name(run_id, 'run id')}/"


def manifest_key(pipeline: str, run_id: str) -> str:
    return run_prefix(pipeline, run_id) + _MANIFEST


def legacy_records_prefix(pipeline: str, run_id: str) -> str:
    """Where layout 1 kept a run's node records (read only)."""
    return run_prefix(pipeline, run_id) + _RECORDS


def parse_manifest_key(key: str) -> tuple[str, str] | None:
    """``(pipeline, run_id)`` of a run manifest's key (:func:`manifest_key`); None for any other key."""
    parts = key.split("/")
    if len(parts) == 4 and f"{parts[0]}/" == RUNS and parts[3] == _MANIFEST:
        return parts[1], parts[2]
    return None


def parse_legacy_record_key(key: str) -> tuple[str, str, str] | None:
    """``(pipeline, run_id, node)`` of a layout-1 node record's key (under :func:`legacy_records_prefix`, named
    ``<node>.json``); None for any other key."""
    parts = key.split("/")
    if len(parts) == 5 and f"{parts[0]}/" == RUNS and f"{parts[3]}/" == _RECORDS and parts[4].endswith(".json"):
        return parts[1], parts[2], parts[4][:-len(".json")]
    return None


def is_legacy_object_key(key: str) -> bool:
    """Whether ``key`` is where layout 1 kept an output (:func:`legacy_object_key`), not layout 2
    (:func:`object_key`, one folder deeper)."""
    return key.startswith(OBJECTS) and key.count("/") == 2


def cache_key_of(object_key: str) -> str:
    """The cache key an output's object key (either layout) ends with."""
    return object_key.rsplit("/", 1)[-1]
