"""The one metadata type of a stored node output (a checkpoint object): what made it and how to trust it.

Written by the worker with the object in a single put (the object *is* the checkpoint: there is no separate
node record), read by the plan, by resume, by housekeeping and by the CLI. Storage metadata is a flat
``str -> str`` map of ASCII values, so names that may hold other characters (node, pipeline) are
percent-encoded. Objects written by layout 1 carry only ``sha256``, ``size``, ``codec``, ``created``,
``expires_at`` and ``node``; the other fields then read as empty.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from ..storage.base import ObjectInfo

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class CheckpointMeta:
    """A checkpoint object's metadata. Times are seconds since the epoch."""

    sha256: str
    size: int
    codec: str
    created: float
    expires_at: float | None = None  # None: never expires
    node: str = ""
    pipeline: str = ""
    run_id: str = ""  # the run whose worker wrote it (with cache hits, maybe not the run reading it)
    attempt: int = 0
    ray_node_id: str = ""
    pid: int = 0
    started_at: float = 0.0
    ended_at: float = 0.0
    layout: int = 1

    def to_metadata(self) -> dict[str, str]:
        """The storage metadata map written with the object."""
        return {"layout": str(self.layout), "sha256": self.sha256, "size": str(self.size), "codec": self.codec,
                "created": f"{self.created:.6f}",
                "expires_at": "" if self.expires_at is None else f"{self.expires_at:.6f}",
                "node": _quote(self.node), "pipeline": _quote(self.pipeline), "run_id": _quote(self.run_id),
                "attempt": str(self.attempt), "ray_node_id": self.ray_node_id, "pid": str(self.pid),
                "started_at": f"{self.started_at:.6f}", "ended_at": f"{self.ended_at:.6f}"}

    @classmethod
    def from_info(cls, info: ObjectInfo) -> "CheckpointMeta | None":
        """The metadata of a stored object, or None when it cannot be trusted to describe the bytes (missing or
        malformed sha256/size/codec, or a size that is not the object's: truncated, or not ours)."""
        md = info.metadata
        try:
            size = int(md.get("size", ""))
            meta = cls(sha256=md.get("sha256", ""), size=size, codec=md.get("codec", ""),
                       created=_num(md.get("created")) or 0.0, expires_at=_num(md.get("expires_at")),
                       node=_unquote(md.get("node", "")), pipeline=_unquote(md.get("pipeline", "")),
                       run_id=_unquote(md.get("run_id", "")), attempt=int(md.get("attempt") or 0),
                       ray_node_id=md.get("ray_node_id", ""), pid=int(md.get("pid") or 0),
                       started_at=_num(md.get("started_at")) or 0.0, ended_at=_num(md.get("ended_at")) or 0.0,
                       layout=int(md.get("layout") or 1))
        except ValueError:
            return None
        if not _SHA256.match(meta.sha256) or not meta.codec or size != info.size:
            return None
        return meta

    def fresh(self, now: float, ttl_s: float | None = None) -> bool:
        """Unexpired at ``now``: by the expiry written with it and by today's ``ttl_s`` (a shorter TTL counts)."""
        if self.expires_at is not None and self.expires_at <= now:
            return False
        return ttl_s is None or self.created + ttl_s > now


def _num(value: str | None) -> float | None:
    return float(value) if value else None


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _unquote(text: str) -> str:
    return urllib.parse.unquote(text)
