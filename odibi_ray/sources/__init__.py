"""Incremental sources: nodes that read what is new since the last successful run (see
:mod:`odibi_ray.definition.incremental`). Kafka: :func:`kafka_source`."""

from .kafka import KafkaSource, kafka_source, read_offsets

__all__ = ["KafkaSource", "kafka_source", "read_offsets"]
