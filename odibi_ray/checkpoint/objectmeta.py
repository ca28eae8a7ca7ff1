"""The one metadata type of a stored object (a checkpoint object, or a seed cache entry): what made it, how to
trust it, when it expires. The only writer (:meth:`CheckpointMeta.to_metadata`) and reader
(:meth:`CheckpointMeta.read`) of that metadata, with the expiry rule (:meth:`~CheckpointMeta.expired`,
:meth:`~CheckpointMeta.fresh`) and the integrity rules (:meth:`~CheckpointMeta.read`,
:meth:`~CheckpointMeta.payload_problem`): the plan, resume, workers, housekeeping, the CLI and the seed's
``CloudCacheManager`` all judge an object by these.

Written by the worker with the object in a single put (the object *is* the checkpoint: there is no separate
node record). Storage metadata is a flat ``str -> str`` map of ASCII values, so names that may hold other
characters (node, pipeline) are percent-encoded. Objects written by layout 1 carry only ``sha256``, ``size``,
``codec``, ``created``, ``expires_at`` and ``node``; the other fields then read as empty.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from dataclasses import dataclass
from typing import Protocol, TypeVar
from collections.abc import Callable, Mapping

from ..storage.base import ObjectInfo

_SHA256 = re.compile(r"[0-9a-f]{64}")
#: ``expires_at`` values that mean "never expires". This module writes ``""``; ``CloudCacheManager`` wrote
#: ``"never"`` before it used this type, and its entries stored then must still read as never expiring.
_NEVER = frozenset({"", "never"})
_T = TypeVar("_T")


class _Malformed(ValueError):
    """A metadata field that is there but does not parse (its message says which)."""


@dataclass(frozen=True)
class CheckpointMeta:
    """A stored object's metadata. Times are seconds since the epoch."""

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

    # --- writing -----------------------------------------------------------------------------------

    def to_metadata(self) -> dict[str, str]:
        """The storage metadata map written with the object."""
        return {"layout": str(self.layout), "sha256": self.sha256, "size": str(self.size), "codec": self.codec,
                "created": f"{self.created:.6f}",
                "expires_at": "" if self.expires_at is None else f"{self.expires_at:.6f}",
                "node": _quote(self.node), "pipeline": _quote(self.pipeline), "run_id": _quote(self.run_id),
                "attempt": str(self.attempt), "ray_node_id": self.ray_node_id, "pid": str(self.pid),
                "started_at": f"{self.started_at:.6f}", "ended_at": f"{self.ended_at:.6f}"}

    # --- reading -----------------------------------------------------------------------------------

    @classmethod
    def read(cls, info: ObjectInfo) -> tuple[CheckpointMeta | None, str | None]:
        """The metadata of a stored object and None, or None and why it cannot be trusted to describe the bytes
        (missing or malformed sha256/size/codec or another field, or a size that is not the object's:
        truncated, or not ours)."""
        md = info.metadata
        missing = [name for name in ("sha256", "size", "codec") if not md.get(name)]
        if missing:
            return None, f"its metadata lacks {', '.join(missing)}"
        try:
            meta = cls._parse(md, _strict)
        except _Malformed as exc:
            return None, str(exc)
        if not _SHA256.fullmatch(meta.sha256):
            return None, "its sha256 metadata is malformed"
        if meta.size != info.size:
            return None, f"it holds {info.size} bytes where its metadata says {meta.size}"
        return meta, None

    @classmethod
    def from_info(cls, info: ObjectInfo) -> CheckpointMeta | None:
        """The metadata of a stored object, or None when it cannot be trusted (see :meth:`read`)."""
        return cls.read(info)[0]

    @classmethod
    def salvage(cls, info: ObjectInfo) -> CheckpointMeta:
        """Whatever reads of an object's metadata, trusted or not (a field that does not parse reads as unset):
        for listing and filtering damaged objects too, never for trusting their bytes."""
        return cls._parse(info.metadata, _lenient)

    @classmethod
    def _parse(cls, md: Mapping[str, str], field: _FieldReader) -> CheckpointMeta:
        return cls(sha256=md.get("sha256", ""), size=field(md, "size", _count, 0), codec=md.get("codec", ""),
                   created=field(md, "created", _finite, 0.0), expires_at=field(md, "expires_at", _expiry, None),
                   node=_unquote(md.get("node", "")), pipeline=_unquote(md.get("pipeline", "")),
                   run_id=_unquote(md.get("run_id", "")), attempt=field(md, "attempt", _count, 0),
                   ray_node_id=md.get("ray_node_id", ""), pid=field(md, "pid", _count, 0),
                   started_at=field(md, "started_at", _finite, 0.0), ended_at=field(md, "ended_at", _finite, 0.0),
                   layout=field(md, "layout", _count, 1))

    # --- the rules ---------------------------------------------------------------------------------

    def expired(self, now: float) -> bool:
        """Past the expiry written with it at ``now`` (an expiry equal to ``now`` has passed)."""
        return self.expires_at is not None and self.expires_at <= now

    def fresh(self, now: float, ttl_s: float | None = None) -> bool:
        """Unexpired at ``now``: by the expiry written with it and by today's ``ttl_s`` (a shorter TTL counts)."""
        if self.expired(now):
            return False
        return ttl_s is None or self.created + ttl_s > now

    def payload_problem(self, size: int, sha256: str) -> str | None:
        """Why a payload of ``size`` bytes whose SHA-256 (hex) is ``sha256`` is not the one this metadata
        describes (truncated, or altered), or None when it is."""
        if size != self.size:
            return f"it holds {size} bytes where its metadata says {self.size}"
        if sha256 != self.sha256:
            return "its SHA-256 does not match its metadata"
        return None


class _FieldReader(Protocol):
    """Reads one field of a metadata map: its parsed value, ``default`` when unset; a malformed value raises
    (:func:`_strict`) or reads as ``default`` (:func:`_lenient`)."""

    def __call__(self, md: Mapping[str, str], name: str, parse: Callable[[str], _T], default: _T) -> _T: ...


def _strict(md: Mapping[str, str], name: str, parse: Callable[[str], _T], default: _T) -> _T:
    raw = md.get(name, "")
    if not raw:  # unset: layout 1 wrote fewer fields; an unset expires_at never expires, like ""
        return default
    try:
        return parse(raw)
    except ValueError:
        raise _Malformed(f"its {name} metadata is malformed ({raw[:40]!r})") from None


def _lenient(md: Mapping[str, str], name: str, parse: Callable[[str], _T], default: _T) -> _T:
    try:
        return _strict(md, name, parse, default)
    except _Malformed:
        return default


def _count(raw: str) -> int:
    """A non-negative integer written by :meth:`CheckpointMeta.to_metadata` (digits only: no sign or spaces)."""
    if not raw.isascii() or not raw.isdigit():
        raise ValueError(raw)
    return int(raw)


def _finite(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


def _expiry(raw: str) -> float | None:
    """``expires_at`` as stored: a time, or one of the forms of never (see ``_NEVER``)."""
    if raw in _NEVER:
        return None
    value = float(raw)
    if math.isnan(value):
        raise ValueError(raw)
    return value


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _unquote(text: str) -> str:
    return urllib.parse.unquote(text)
