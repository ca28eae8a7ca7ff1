"""A bounded range of a topic: for each partition, the first offset read and the offset after the last one.

It crosses process boundaries (driver → worker as a node parameter, driver → run manifest for a resume) as its
JSON form, which is also what a Kafka source's cache key hashes: the topic and the range, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping


@dataclass(frozen=True)
class OffsetRange:
    """``partitions[p] = (start, end)``: offsets ``start <= o < end`` of partition ``p`` of ``topic``."""

    topic: str
    partitions: Mapping[int, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clean: dict[int, tuple[int, int]] = {}
        for p, bounds in sorted(self.partitions.items()):
            start, end = (int(b) for b in bounds)
            if start < 0 or end < start:
                raise ValueError(f"invalid offset range of {self.topic!r} partition {p}: [{start}, {end})")
            clean[int(p)] = (start, end)
        object.__setattr__(self, "partitions", clean)

    @property
    def size(self) -> int:
        """How many offsets the range covers (messages, unless the topic is compacted or transactional)."""
        return sum(end - start for start, end in self.partitions.values())

    @property
    def empty(self) -> bool:
        return self.size == 0

    @property
    def starts(self) -> dict[int, int]:
        return {p: s for p, (s, _e) in self.partitions.items()}

    @property
    def ends(self) -> dict[int, int]:
        return {p: e for p, (_s, e) in self.partitions.items()}

    def to_json(self) -> dict[str, Any]:
        """The JSON form (partition numbers as strings, JSON object keys), stable: sorted by partition."""
        return {"topic": self.topic, "partitions": {str(p): [s, e] for p, (s, e) in self.partitions.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OffsetRange:
        try:
            return cls(str(data["topic"]), {int(p): (int(b[0]), int(b[1])) for p, b in data["partitions"].items()})
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ValueError(f"not an offset range: {data!r} ({exc})") from None

    def __str__(self) -> str:
        parts = ", ".join(f"{p}:[{s},{e})" for p, (s, e) in self.partitions.items())
        return f"{self.topic} {{{parts}}} ({self.size} offsets)"
