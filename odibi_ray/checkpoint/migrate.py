"""Moving a layout-1 store's output objects into layout 2 (``objects/<key[:2]>/<key>`` ->
``objects/<pipeline>/<key[:2]>/<key>``), so its runs stop paying a look-up per missing output at the old keys.

Which pipeline an old object belongs to is told by the run manifests that name its key. Each object is copied
(bytes and metadata unchanged but for ``pipeline``, written create-only), read back and checked against its
SHA-256, and only then is the old one deleted: an interrupted migration leaves both copies, never neither. Old
objects no manifest names are left where they are (``purge`` removes them by age). When none is left, the
store's layout marker stops saying ``legacy``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field

from ..errors import AlreadyExistsError, NotFoundError
from ..storage.base import Storage
from . import layout, legacy
from .objectmeta import CheckpointMeta

log = logging.getLogger(__name__)


@dataclass
class MigrationReport:
    moved: list[str] = field(default_factory=list)  # new keys
    left: list[str] = field(default_factory=list)  # layout-1 keys no manifest names (or damaged ones)
    bytes: int = 0
    dry_run: bool = False

    def __str__(self) -> str:
        verb = "would move" if self.dry_run else "moved"
        return (f"{verb} {len(self.moved)} object(s) ({self.bytes} bytes) to layout {layout.LAYOUT_VERSION}; "
                f"left {len(self.left)} layout-1 object(s) no run names")


def migrate(storage: Storage, *, dry_run: bool = False) -> MigrationReport:
    """Move every layout-1 output object a run manifest names to its pipeline's folder (see module doc)."""
    owner = _owners(storage)
    report = MigrationReport(dry_run=dry_run)
    for info in storage.list(layout.OBJECTS, with_metadata=True):
        if not layout.is_legacy_object_key(info.key):
            continue  # layout 2 already
        key = layout.cache_key_of(info.key)
        pipeline = owner.get(key)
        if pipeline is None or CheckpointMeta.from_info(info) is None:
            report.left.append(info.key)
            continue
        new = layout.object_key(pipeline, key)
        if not dry_run and not _move(storage, info.key, new, pipeline):
            report.left.append(info.key)
            continue
        report.moved.append(new)
        report.bytes += info.size
    if not dry_run and not report.left:
        storage.put(layout.MARKER_KEY, json.dumps({"layout": layout.LAYOUT_VERSION, "legacy": False}).encode(),
                    {"layout": str(layout.LAYOUT_VERSION)})
        legacy.forget_layouts()
    log.info("migrate %s: %s", storage.uri, report)
    return report


def _owners(storage: Storage) -> dict[str, str]:
    """cache key -> pipeline, from every run manifest's node keys."""
    out: dict[str, str] = {}
    for info in storage.list(layout.RUNS):
        run = layout.parse_manifest_key(info.key)
        if run is not None:
            try:
                body = json.loads(storage.get(info.key))
            except (NotFoundError, ValueError):
                continue
            for entry in (body.get("nodes") or {}).values():
                if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                    out.setdefault(entry["key"], run[0])
    return out


def _move(storage: Storage, old: str, new: str, pipeline: str) -> bool:
    """Copy, check, then delete the old copy; False (nothing deleted) when the object or its copy is not intact."""
    data, info = storage.get_with_info(old)
    meta = CheckpointMeta.from_info(info)
    if meta is None or meta.payload_problem(len(data), _sha256(data)) is not None:
        log.warning("not migrating %s: it does not match its SHA-256", old)
        return False
    metadata = dict(info.metadata, pipeline=dataclasses.replace(meta, pipeline=pipeline).to_metadata()["pipeline"])
    try:
        storage.put(new, data, metadata, if_none_match=True)
    except AlreadyExistsError:
        pass  # a layout-2 run (or an earlier migration) wrote it: equal by its key
    back, back_info = storage.get_with_info(new)
    copied = CheckpointMeta.from_info(back_info)
    if copied is None or copied.payload_problem(len(back), _sha256(back)) is not None:
        log.warning("not migrating %s: the object at %s is not intact", old, new)
        return False
    storage.delete(old)
    return True


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
