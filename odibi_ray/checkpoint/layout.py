"""Where checkpoints live in a storage root (one layout for cache and resume, see DESIGN.md).

```
objects/<key[:2]>/<key>                     node output, written once (create-only), content-addressed by
                                            the node's cache key; metadata: sha256, size, codec, created,
                                            expires_at, node
runs/<pipeline>/<run_id>/run.json           run manifest (driver; status changes by ETag compare-and-swap)
runs/<pipeline>/<run_id>/nodes/<node>.json  node record (written by the worker after its object)
```
"""

from __future__ import annotations

import re

_SAFE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def object_key(cache_key: str) -> str:
    return f"objects/{cache_key[:2]}/{cache_key}"


def runs_prefix(pipeline: str) -> str:
    return f"runs/{_safe(pipeline, 'pipeline')}/"


def run_prefix(pipeline: str, run_id: str) -> str:
    return f"{runs_prefix(pipeline)}{_safe(run_id, 'run id')}/"


def manifest_key(pipeline: str, run_id: str) -> str:
    return run_prefix(pipeline, run_id) + "run.json"


def records_prefix(pipeline: str, run_id: str) -> str:
    return run_prefix(pipeline, run_id) + "nodes/"


def record_key(pipeline: str, run_id: str, node: str) -> str:
    return records_prefix(pipeline, run_id) + _safe(node, "node") + ".json"


def _safe(part: str, what: str) -> str:
    if not _SAFE.match(part) or part in (".", ".."):
        raise ValueError(f"{what} {part!r} cannot be used in a storage path: use letters, digits, '_', '-', '.'")
    return part
