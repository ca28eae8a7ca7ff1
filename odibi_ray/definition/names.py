"""What a pipeline name or run id may hold: each is a folder of every key its run stores, so the rule is checked
where a name is defined (here, for :class:`~odibi_ray.definition.dag.DAG` and :class:`~odibi_ray.definition.node.Node`)
and again where a key is built (:mod:`odibi_ray.checkpoint.layout`). It lives here, imported by both, because the
definition layer must not import the checkpoint package."""

from __future__ import annotations

import re

#: The longest pipeline, run id or node name (characters, all ASCII), checked where each is defined. A pipeline
#: name and a run id are folder names of every key (``runs/<pipeline>/<run_id>/``; LocalStorage takes 255 bytes
#: per segment), a layout-1 node record was ``nodes/<node>.json`` (238 bytes for a key's last segment in
#: LocalStorage), and node, pipeline and run id all go in each object's metadata, which S3 caps at 2 KB in all.
MAX_NAME_LEN = 200
#: What a pipeline name or run id may hold: one whole key segment (matched with ``fullmatch``: no ``$`` that
#: would let a trailing newline through).
_SAFE = re.compile(r"[A-Za-z0-9_.\-]+")


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


def item_name(node: str, index: int) -> str:
    """The name of item ``index`` of mapped node ``node`` (``node[3]``) in records, logs, metrics' sources and
    checkpoint metadata. A node name cannot hold ``[``, so no item name is a node name."""
    return f"{node}[{index}]"


def item_parent(name: str) -> str | None:
    """The mapped node of an item's name (``node[i]``); None for a node's name."""
    cut = name.find("[")
    return name[:cut] if cut > 0 and name.endswith("]") else None
