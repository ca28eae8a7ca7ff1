"""Kafka: topics as logs of table rows (:class:`KafkaLog`), bounded offset ranges (:class:`OffsetRange`), and
the settings that reach a cluster (:class:`KafkaSettings`). Needs the ``kafka`` extra (confluent-kafka)."""

from .config import KafkaSettings
from .log import KafkaLog
from .offsets import OffsetRange

__all__ = ["KafkaLog", "KafkaSettings", "OffsetRange"]
