"""An incremental Kafka source node: each run reads what arrived on a topic since the last run that succeeded.

Where it stands is kept in Kafka itself, as two consumer-group commits made only after a run succeeded: the group
``G`` (default ``odibi_ray.<pipeline>.<node>``) holds the end of the last range consumed, i.e. where the next run
starts; ``G.range-start`` holds where that range began. A run reads from ``G``'s offsets to each partition's high
watermark when it starts. With nothing new, it answers the last range again (``G.range-start`` .. ``G``): the same
key as the run that read it, so with checkpoints on, the node and everything downstream are reused (nothing runs).
(Kafka's commit metadata could hold the start too, but Tansu, the tests' broker, drops it; a second group works on
every broker.) The two commits are not atomic; made in this order (start, then end), an interruption between them
leaves the end where it was, so the next run reads the new range again (at least once), never past it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping

import pyarrow as pa

from ..definition.node import Node
from ..storage.kafka import KafkaLog, OffsetRange

log = logging.getLogger(__name__)

#: The suffix of the consumer group that holds where the last consumed range began.
START_GROUP_SUFFIX = ".range-start"


@dataclass(frozen=True)
class KafkaSource:
    """The :class:`~odibi_ray.definition.incremental.IncrementalSource` of one topic (see the module doc)."""

    log: KafkaLog
    topic: str
    group: str | None = None
    param: str = field(default="offsets")

    def group_for(self, pipeline: str, node: str) -> str:
        return self.group or f"odibi_ray.{pipeline}.{node}"

    def next_range(self, pipeline: str, node: str) -> dict[str, Any]:
        group = self.group_for(pipeline, node)
        rng = self.log.next_range(self.topic, group)
        if rng.empty:  # nothing new: the last range consumed, so that the key (and what depends on it) stays
            starts = self.log.committed(self.topic, group + START_GROUP_SUFFIX, list(rng.partitions))
            rng = OffsetRange(self.topic, {p: (_at_most(starts.get(p), e), e) for p, (_s, e) in rng.partitions.items()})
            log.info("source %s: nothing new on %s since the last run; its last range again: %s", node, self.topic, rng)
        else:
            log.info("source %s: reads %s (group %s)", node, rng, group)
        return rng.to_json()

    def commit(self, pipeline: str, node: str, rng: Mapping[str, Any]) -> None:
        """Commit ``rng`` — unless the group is already past it (an old run resumed after newer runs committed):
        offsets never go back, which would make the next run read again what newer runs consumed."""
        group, read = self.group_for(pipeline, node), OffsetRange.from_json(rng)
        now = self.log.committed(self.topic, group)
        ahead = {p: at for p, at in now.items() if at is not None and p in read.partitions and at > read.ends[p]}
        if ahead:
            log.info("source %s: group %s is already past %s (at %s): nothing to commit", node, group, read, ahead)
            return
        self.log.commit(self.topic, group + START_GROUP_SUFFIX, read.starts)
        self.log.commit(self.topic, group, read.ends)
        log.info("source %s: committed %s for group %s", node, read, group)


def _at_most(start: int | None, end: int) -> int:
    return end if start is None or start > end else start


def read_offsets(offsets: Mapping[str, Any], log: KafkaLog, format: str = "json", schema: pa.Schema | None = None,
                 metadata_columns: bool = True) -> pa.Table:
    """The body of a Kafka source node: the messages of ``offsets`` (an :class:`OffsetRange`'s JSON) as a table."""
    rng = OffsetRange.from_json(offsets)
    return log.read(rng.topic, rng, format=format, schema=schema, metadata_columns=metadata_columns)


def kafka_source(name: str, log: KafkaLog | str, topic: str, *, group: str | None = None, format: str = "json",
                 schema: pa.Schema | None = None, metadata_columns: bool = True, **node_options: Any) -> Node:
    """A node that reads, each run, what arrived on ``topic`` since the last run of its pipeline that succeeded
    (a table: the JSON objects' columns, typed by ``schema`` if given, and ``_partition``, ``_offset``,
    ``_timestamp``, ``_key`` unless ``metadata_columns=False``). Its cache key is its cluster, topic and offset
    range; the range is committed (consumer group ``group``, default ``odibi_ray.<pipeline>.<name>``) only when
    the whole run succeeds, and a resume of a failed run reads the same range again. ``log``: a
    :class:`KafkaLog` or its bootstrap servers; ``node_options``: :class:`Node`'s (retry, cache, timeout_s...)."""
    kafka = log if isinstance(log, KafkaLog) else KafkaLog(log)
    return Node(name, read_offsets, params={"log": kafka, "format": format, "schema": schema,
                                            "metadata_columns": metadata_columns},
                source=KafkaSource(kafka, topic, group), **node_options)
