"""Where checkpoints live in a storage root (one layout for cache and resume, see DESIGN.md). Layout 2:

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

import re

#: The layout this engine writes; manifests and objects carry it.
LAYOUT_VERSION = 2

#: The longest pipeline, run id or node name (characters, all ASCII), checked where each is defined. A pipeline
#: name and a run id are folder names of every key (``runs/<pipeline>/<run_id>/``; LocalStorage takes 255 bytes
#: per segment), a layout-1 node record was ``nodes/<node>.json`` (238 bytes for a key's last segment in
#: LocalStorage), and node, pipeline and run id all go in each object's metadata, which S3 caps at 2 KB in all.
MAX_NAME_LEN = 200
#: What a pipeline name or run id may hold: one whole key segment (matched with ``fullmatch``: no ``$`` that
#: would let a trailing newline through).
_SAFE = re.compile(r"[A-Za-z0-9_.\-]+")
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


def check_name(part: object, what: str) -> str:
    """``part`` if it can be a pipeline name or run id in storage paths, else ValueError saying why."""
    if not isinstance(part, str):
        raise ValueError(f"{what} must be a string, got {type(part).__name__} {part!r:.80}")
    if not _SAFE.fullmatch(part) or part in (".", ".."):
        raise ValueError(f"{what} {part!r:.80} cannot be used in a storage path: use letters, digits, '_', '-', '.'")
    if len(part) > MAX_NAME_LEN:
        raise ValueError(f"{what} {part[:40]!r}... is {len(part)} characters long: at most {MAX_NAME_LEN} fit in "
                         "a storage path")
    return part
