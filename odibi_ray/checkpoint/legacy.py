"""Stores written by layout 1 (objects at ``objects/<key[:2]>/<key>``, one record per node under the run's
``nodes/`` folder): still read, never written. See :mod:`.layout`.

Which layout a store has is said once, by a marker object ``odibi-layout.json`` that the first layout-2 run
writes (create-only) at the store's root: ``{"layout": 2, "legacy": true}`` when the store already held
checkpoints then. Runs on a legacy store also look for outputs at their layout-1 keys (one look-up per key not
found at its layout-2 key), and resume reads a layout-1 run's node records. A store whose marker names a newer
layout is refused with a one-line error: this engine would misread it.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass

from ..errors import AlreadyExistsError, ExecutionError, NotFoundError
from ..storage.base import Storage
from . import layout

log = logging.getLogger(__name__)

_SEEN: dict[str, StoreLayout] = {}  # per process: the marker is read once per store
_SEEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class StoreLayout:
    version: int
    legacy: bool  # the store holds layout-1 checkpoints too


def store_layout(storage: Storage) -> StoreLayout:
    """The store's layout (read from its marker once per process; written by the first run on a store)."""
    seen = _SEEN.get(storage.uri)
    if seen is not None:
        return seen
    found = _read_marker(storage)
    if found is None:
        found = _write_marker(storage)
    _refuse_newer(storage, found)
    if found.legacy:
        log.warning("%s holds layout-1 checkpoints (objects/<key[:2]>/<key>): they are still read, at one look-up "
                    "per output not found in layout 2; `odibi-ray checkpoints migrate --storage URI` moves them",
                    storage.uri)
    with _SEEN_LOCK:
        _SEEN[storage.uri] = found
    return found


def check_readable(storage: Storage) -> None:
    """Refuse (one line) a store whose marker names a layout newer than this engine's; writes nothing."""
    found = _read_marker(storage)
    if found is not None:
        _refuse_newer(storage, found)


def _refuse_newer(storage: Storage, found: StoreLayout) -> None:
    if found.version > layout.LAYOUT_VERSION:
        raise ExecutionError(f"{storage.uri} holds checkpoints in layout {found.version}, newer than this odibi_ray "
                             f"reads (layout {layout.LAYOUT_VERSION}): upgrade odibi_ray, or use another storage")


def _read_marker(storage: Storage) -> StoreLayout | None:
    try:
        body = json.loads(storage.get(layout.MARKER_KEY))
        return StoreLayout(int(body["layout"]), bool(body.get("legacy")))
    except NotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        raise ExecutionError(f"{storage.uri}: its layout marker {layout.MARKER_KEY!r} is unreadable; it says "
                             "which checkpoint layout the store holds (restore or delete it)") from None


def _write_marker(storage: Storage) -> StoreLayout:
    """First layout-2 run on this store: note whether layout-1 checkpoints are already there."""
    legacy = _has_layout1(storage)
    mine = StoreLayout(layout.LAYOUT_VERSION, legacy)
    try:
        storage.put(layout.MARKER_KEY, json.dumps({"layout": mine.version, "legacy": legacy}).encode(),
                    {"layout": str(mine.version)}, if_none_match=True)
    except AlreadyExistsError:  # another run wrote it first
        return _read_marker(storage) or mine
    return mine


def _has_layout1(storage: Storage) -> bool:
    """Whether the store holds layout-1 objects (``objects/<2 hex>/<64 hex>``: the first key under ``objects/``,
    which sorts before any pipeline folder named longer than two characters). Called only while the store has
    no marker. Layout-1 *runs* need no flag: resume tells them by their manifest."""
    first = next(iter(storage.list(layout.OBJECTS)), None)
    return first is not None and layout.is_legacy_object_key(first.key)


def forget_layouts() -> None:
    """Forget the layouts read in this process (a store replaced under the same URI, in tests)."""
    with _SEEN_LOCK:
        _SEEN.clear()


def legacy_records(storage: Storage, pipeline: str, run_id: str) -> dict[str, dict[str, str]]:
    """The succeeded node records of a layout-1 run (node -> record metadata), from one listing."""
    out = {}
    for info in storage.list(layout.legacy_records_prefix(pipeline, run_id), with_metadata=True):
        record = layout.parse_legacy_record_key(info.key)
        if record is not None and info.metadata.get("status") == "succeeded":
            out[record[2]] = dict(info.metadata)
    return out
