"""A Kafka topic as a log of table rows: produce a table, read a *bounded* offset range back as a table, manage
topics and consumer-group offsets. The client is confluent-kafka (librdkafka's Python binding): maintained, with
wheels for every platform; benchmarks/bench_kafka.py measures the adapter against it used by hand.

Every operation ends within ``timeout_s`` of the broker going silent, and errors are the storage hierarchy's:
no answer → :class:`StorageUnavailableError`; refused credentials (SASL, TLS) → :class:`StorageAuthError`;
an unknown topic → :class:`NotFoundError`; an existing one on create → :class:`AlreadyExistsError`.

A read always ends: its range is fixed before it starts (explicit offsets, or a consumer group's committed
offsets up to each partition's high watermark at that moment). The high watermark is taken from ListOffsets and
confirmed by one fetch at the last offset it names (:meth:`KafkaLog.watermarks`): Tansu 0.6.0, the broker the
tests run, answers ListOffsets with the last record *batch's* base offset + 1; the fetch response's high
watermark is right there and on Kafka alike.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from collections.abc import Callable, Mapping

import pyarrow as pa

from ...errors import (AlreadyExistsError, NotFoundError, StorageAuthError, StorageError,
                       StorageUnavailableError)
from .codec import check_format, decode_values, encode_keys, encode_values
from .config import KafkaSettings
from .offsets import OffsetRange

log = logging.getLogger(__name__)

#: The consumer group a plain read is made under: it never commits (offsets are committed only by commit()).
READER_GROUP = "odibi_ray.reader"
#: How many messages one consume() call hands back at most (one Python call per batch, not per message).
CONSUME_BATCH = 10_000
#: How long one metadata request may wait before refused credentials are looked for (see KafkaLog._metadata).
METADATA_SLICE_S = 0.5
#: How often the producer is polled for delivery reports while a table is written (every N messages).
POLL_EVERY = 10_000

class _ClientLog(logging.LoggerAdapter):  # type: ignore[type-arg,unused-ignore]  # generic in newer typeshed
    """librdkafka's log lines (they name brokers and errors, never secrets), at DEBUG: a broker that is down is
    retried every few milliseconds, each retry an error line, and the outcome reaches the caller as an exception."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)


_CLIENT_LOG = _ClientLog(logging.getLogger("odibi_ray.storage.kafka.client"), {})

_CODES: dict[str, set[int]] = {}  # filled on first use: confluent_kafka is imported only when Kafka is used


def _codes() -> dict[str, set[int]]:
    if not _CODES:
        from confluent_kafka import KafkaError as E

        _CODES.update(
            auth={E._AUTHENTICATION, E.SASL_AUTHENTICATION_FAILED, E._SSL, E.TOPIC_AUTHORIZATION_FAILED,
                  E.GROUP_AUTHORIZATION_FAILED, E.CLUSTER_AUTHORIZATION_FAILED, E.ILLEGAL_SASL_STATE,
                  E.UNSUPPORTED_SASL_MECHANISM},
            missing={E.UNKNOWN_TOPIC_OR_PART, E._UNKNOWN_TOPIC, E._UNKNOWN_PARTITION},
            exists={E.TOPIC_ALREADY_EXISTS},
        )
    return _CODES


class _Errors:
    """Errors librdkafka reports outside a call (error_cb): a refused login shows up only there, while the call
    itself just times out. Thread-safe (the callback runs in librdkafka's threads or in poll)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen: list[Any] = []

    def __call__(self, err: Any) -> None:
        with self._lock:
            self.seen.append(err)
            del self.seen[:-20]

    def auth(self) -> Any | None:
        with self._lock:
            return next((e for e in reversed(self.seen) if e.code() in _codes()["auth"]), None)


class KafkaLog:
    """Topics of one Kafka cluster as logs of table rows (picklable configuration; clients open lazily, one set
    per process). ``KafkaLog("127.0.0.1:9092")``; options as :class:`KafkaSettings`."""

    def __init__(self, bootstrap_servers: str | KafkaSettings, **options: Any) -> None:
        self.settings = (bootstrap_servers if isinstance(bootstrap_servers, KafkaSettings)
                         else KafkaSettings(bootstrap_servers, **options))
        self._lock = threading.Lock()
        self._admin: Any = None
        self._producer: Any = None
        self._errors = _Errors()
        self._delivery_failures: list[Any] = []

    @property
    def uri(self) -> str:
        return self.settings.uri

    @property
    def timeout_s(self) -> float:
        return self.settings.timeout_s

    def __repr__(self) -> str:
        s = self.settings
        auth = f", sasl={s.mechanism} user={s.user!r}" if s.protocol.startswith("SASL") else ""
        return f"KafkaLog({s.bootstrap_servers!r}, {s.protocol}{auth})"

    def __odibi_key__(self) -> dict[str, str]:
        """What a cache key holds of this log when it is a node parameter: the cluster, not its credentials."""
        return self.settings.identity()

    # pickling: configuration only (a Ray worker opens its own clients)
    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"])  # type: ignore[misc]  # rebuilds what pickling left out

    # --- clients ------------------------------------------------------------------------------------

    def _conf(self, **extra: Any) -> dict[str, Any]:
        try:
            import confluent_kafka  # noqa: F401 - only to say clearly what is missing
        except ImportError:
            raise ImportError("Kafka needs the confluent-kafka client: pip install 'odibi_ray[kafka]'") from None
        # librdkafka's own log lines go to Python logging (it writes to stderr otherwise)
        return {**self.settings.librdkafka(), "error_cb": self._errors, "logger": _CLIENT_LOG, **extra}

    def _admin_client(self) -> Any:
        with self._lock:
            if self._admin is None:
                from confluent_kafka.admin import AdminClient

                self._admin = AdminClient(self._conf())
            return self._admin

    def _producer_client(self) -> Any:
        with self._lock:
            if self._producer is None:
                from confluent_kafka import Producer

                self._producer = Producer(self._conf(**{
                    "linger.ms": 20, "batch.num.messages": 10_000, "queue.buffering.max.messages": 1_000_000,
                    "message.timeout.ms": int(self.timeout_s * 1000), "enable.idempotence": False,
                    "on_delivery": self._failed_delivery, "delivery.report.only.error": True}))
            return self._producer

    def _consumer(self, group: str = READER_GROUP, **extra: Any) -> Any:
        from confluent_kafka import Consumer

        return Consumer(self._conf(**{"group.id": group, "enable.auto.commit": False,
                                      "enable.auto.offset.store": False, "auto.offset.reset": "error",
                                      "fetch.wait.max.ms": 50,
                                      # librdkafka pauses a partition's fetches for 1 s (the default) once its local
                                      # queue is full; a bounded read drains it in a fraction of that, then waited:
                                      # 10 ms made a 1,000,000-row read 2x faster (benchmarks/bench_kafka.py)
                                      "fetch.queue.backoff.ms": 10, **extra}))

    def _failed_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._delivery_failures.append(err)

    def connect(self) -> KafkaLog:
        """Check the brokers answer (and take the credentials) within ``timeout_s``."""
        self._metadata()
        log.info("%r connected", self)
        return self

    def close(self) -> None:
        """Drop this process's clients (messages not yet delivered are abandoned: write() flushes its own)."""
        with self._lock:
            self._admin = self._producer = None

    # --- errors -------------------------------------------------------------------------------------

    def _error(self, exc: BaseException | Any, what: str, topic: str | None = None) -> StorageError:
        """The storage error for a librdkafka error (an exception or a KafkaError) while doing ``what``."""
        err = exc.args[0] if isinstance(exc, BaseException) and exc.args else exc
        code = err.code() if hasattr(err, "code") else None
        text = err.str() if hasattr(err, "str") else str(err)
        where = f"{self.uri}{'/' + topic if topic else ''}"
        auth = self._errors.auth()
        if code in _codes()["auth"] or auth is not None:
            cause = auth if auth is not None else err
            return StorageAuthError(f"{where}: {what}: the broker refused the credentials or the TLS handshake "
                                    f"({cause.str() if hasattr(cause, 'str') else cause})", key=topic)
        if code in _codes()["missing"]:
            return NotFoundError(f"{where}: {what}: no such topic or partition ({text})", key=topic)
        if code in _codes()["exists"]:
            return AlreadyExistsError(f"{where}: {what}: the topic already exists", key=topic)
        return StorageUnavailableError(f"{where}: {what}: no usable answer from the brokers within "
                                       f"{self.timeout_s:g} s ({text})", key=topic)

    def _call(self, what: str, fn: Callable[[], Any], topic: str | None = None) -> Any:
        from confluent_kafka import KafkaException

        try:
            result = fn()
        except KafkaException as exc:
            raise self._error(exc, what, topic) from None
        auth = self._errors.auth()
        if auth is not None:
            raise self._error(auth, what, topic)
        return result

    # --- topics -------------------------------------------------------------------------------------

    def _metadata(self, topic: str | None = None) -> Any:
        """The cluster's metadata, asked in short slices: a refused login reaches only the error callback (served
        by ``poll``) while the call itself would wait its whole timeout, so it is checked between slices and
        reported at once."""
        from confluent_kafka import KafkaException

        admin = self._admin_client()
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                meta = admin.list_topics(topic=topic, timeout=max(0.05, min(METADATA_SLICE_S, left)))
            except KafkaException as exc:
                admin.poll(0)  # serves error_cb
                if self._errors.auth() is not None or time.monotonic() >= deadline:
                    raise self._error(exc, "list topics", topic) from None
                continue
            if self._errors.auth() is not None:
                raise self._error(self._errors.auth(), "list topics", topic)
            return meta

    def topics(self) -> list[str]:
        """The cluster's topics (internal ones, ``__*``, left out), sorted."""
        return sorted(t for t in self._metadata().topics if not t.startswith("__"))

    def exists(self, topic: str) -> bool:
        return topic in self._metadata().topics

    def partitions(self, topic: str) -> list[int]:
        """The topic's partition numbers; :class:`NotFoundError` if there is no such topic."""
        meta = self._metadata().topics.get(topic)
        if meta is None or (meta.error is not None and meta.error.code() in _codes()["missing"]):
            raise NotFoundError(f"{self.uri}/{topic}: no such topic", key=topic)
        return sorted(meta.partitions)

    def create_topic(self, topic: str, partitions: int = 1, config: Mapping[str, str] | None = None) -> None:
        """Create ``topic`` with ``partitions`` partitions (replication: the broker's default)."""
        from confluent_kafka.admin import NewTopic

        new = NewTopic(topic, num_partitions=partitions, config=dict(config or {}))
        futures = self._call("create topic", lambda: self._admin_client().create_topics(
            [new], operation_timeout=self.timeout_s, request_timeout=self.timeout_s), topic)
        self._call("create topic", lambda: futures[topic].result(self.timeout_s + 1), topic)
        self._await(lambda: self.exists(topic), f"topic {topic} to appear")

    def delete_topic(self, topic: str) -> bool:
        """Delete ``topic``; True if it existed."""
        if not self.exists(topic):
            return False
        futures = self._call("delete topic", lambda: self._admin_client().delete_topics(
            [topic], operation_timeout=self.timeout_s, request_timeout=self.timeout_s), topic)
        try:
            self._call("delete topic", lambda: futures[topic].result(self.timeout_s + 1), topic)
        except NotFoundError:
            return False
        self._await(lambda: not self.exists(topic), f"topic {topic} to go")
        return True

    def _await(self, done: Callable[[], bool], what: str) -> None:
        """Metadata catches up with a topic change a moment later: wait for it, bounded by ``timeout_s``."""
        deadline = time.monotonic() + self.timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise StorageUnavailableError(f"{self.uri}: waited {self.timeout_s:g} s for {what}")
            time.sleep(0.02)

    # --- writing ------------------------------------------------------------------------------------

    def write(self, topic: str, table: pa.Table, *, key_column: str | None = None, format: str = "json",
              create: bool = True, partitions: int = 1) -> int:
        """Produce one message per row of ``table`` (JSON objects, or the ``value`` column for
        ``format="bytes"``), keyed by ``key_column`` if given; returns how many. Every message is acknowledged by
        the broker before this returns (or it raises: nothing is reported written that was not). A missing topic
        is created with ``partitions`` partitions unless ``create=False`` (then :class:`NotFoundError`)."""
        check_format(format)
        if not self.exists(topic):
            if not create:
                raise NotFoundError(f"{self.uri}/{topic}: no such topic (create=False)", key=topic)
            try:
                self.create_topic(topic, partitions)
            except AlreadyExistsError:
                pass  # created meanwhile by another writer
        values, keys = encode_values(table, format), encode_keys(table, key_column)
        self._produce(topic, values, keys)
        return len(values)

    def _produce(self, topic: str, values: list[bytes], keys: Any) -> None:
        producer = self._producer_client()
        self._delivery_failures.clear()
        produce, poll = producer.produce, producer.poll
        for i, value in enumerate(values):
            key = keys[i] if keys is not None else None
            while True:
                try:
                    produce(topic, value, key)
                    break
                except BufferError:  # the local queue is full: let librdkafka send, then go on
                    poll(0.05)
            if i % POLL_EVERY == 0:
                poll(0)
        deadline = time.monotonic() + self.timeout_s
        remaining = producer.flush(0.1)
        while remaining and time.monotonic() < deadline and self._errors.auth() is None:
            remaining = producer.flush(0.1)  # in slices: refused credentials are reported at once
        if self._delivery_failures:
            raise self._error(self._delivery_failures[0], f"write {len(self._delivery_failures)} message(s)", topic)
        if remaining:
            raise StorageUnavailableError(f"{self.uri}/{topic}: {remaining} of {len(values)} message(s) not "
                                          f"acknowledged within {self.timeout_s:g} s", key=topic)
        auth = self._errors.auth()
        if auth is not None:
            raise self._error(auth, "write", topic)

    # --- offsets ------------------------------------------------------------------------------------

    def watermarks(self, topic: str) -> dict[int, tuple[int, int]]:
        """``{partition: (low, high)}``: the first offset still held and the offset after the last one."""
        from confluent_kafka import TopicPartition

        parts = self.partitions(topic)
        # end-of-partition events: a probe at a last offset that is a control record (transactions) still ends
        consumer = self._consumer(READER_GROUP, **{"enable.partition.eof": True})

        def marks_of(p: int) -> tuple[int, int]:
            return self._call("read watermarks", lambda: consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=self.timeout_s), topic)

        try:
            return self._confirm_highs(consumer, topic, {p: marks_of(p) for p in parts})
        finally:
            consumer.close()

    def _confirm_highs(self, consumer: Any, topic: str, marks: dict[int, tuple[int, int]]
                       ) -> dict[int, tuple[int, int]]:
        """The high watermarks as a fetch at each partition's last reported offset sees them (see the module
        doc: Tansu's ListOffsets lags behind the last batch). One fetch per non-empty partition."""
        from confluent_kafka import KafkaError, TopicPartition

        probe = {p: high - 1 for p, (low, high) in marks.items() if high > low}
        if not probe:
            return marks
        consumer.assign([TopicPartition(topic, p, o) for p, o in probe.items()])
        waiting, deadline = set(probe), time.monotonic() + self.timeout_s
        while waiting and time.monotonic() < deadline:
            for m in consumer.consume(CONSUME_BATCH, 0.2):
                err = m.error()
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    raise self._error(err, "confirm high watermarks", topic)
                waiting.discard(m.partition())
        if waiting:
            raise StorageUnavailableError(f"{self.uri}/{topic}: partitions {sorted(waiting)} did not answer a "
                                          f"fetch within {self.timeout_s:g} s", key=topic)
        out = dict(marks)
        for p in probe:
            _low, fetched = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
            out[p] = (marks[p][0], max(marks[p][1], fetched))
        return out

    def committed(self, topic: str, group: str, partitions: list[int] | None = None) -> dict[int, int | None]:
        """``{partition: offset}`` committed by consumer group ``group`` (None: nothing committed), for the topic's
        partitions (``partitions`` when the caller has just read them: no second metadata request)."""
        from confluent_kafka import TopicPartition

        parts = partitions if partitions is not None else self.partitions(topic)
        consumer = self._consumer(group)
        try:
            got = self._call("read committed offsets", lambda: consumer.committed(
                [TopicPartition(topic, p) for p in parts], timeout=self.timeout_s), topic)
        finally:
            consumer.close()
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in got}

    def commit(self, topic: str, group: str, offsets: Mapping[int, int]) -> None:
        """Commit ``{partition: next offset to read}`` for consumer group ``group``; returns once the broker has
        accepted it (bounded by ``timeout_s``: librdkafka's synchronous commit has no timeout of its own, so the
        commit is made asynchronously and its callback awaited)."""
        from confluent_kafka import TopicPartition

        if not offsets:
            return
        self.partitions(topic)  # the topic exists and the brokers answer, or a clear error now
        outcome: list[tuple[Any, Any]] = []
        consumer = self._consumer(group, on_commit=lambda err, parts: outcome.append((err, parts)))
        try:
            self._call("commit offsets", lambda: consumer.commit(
                offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=True), topic)
            deadline = time.monotonic() + self.timeout_s
            while not outcome and time.monotonic() < deadline:
                consumer.poll(0.05)  # serves the commit callback
        finally:
            consumer.close()
        if not outcome:
            raise StorageUnavailableError(f"{self.uri}/{topic}: commit of group {group!r} not acknowledged within "
                                          f"{self.timeout_s:g} s", key=topic)
        err, parts = outcome[0]
        failed = [tp for tp in parts or () if tp.error is not None]
        if err is not None or failed:
            raise self._error(err if err is not None else failed[0].error, f"commit offsets of group {group!r}", topic)

    def next_range(self, topic: str, group: str | None = None) -> OffsetRange:
        """What is there to read now: from ``group``'s committed offsets (or each partition's first offset: no
        group, or nothing committed, or committed offsets already removed by retention) to the high watermarks."""
        marks = self.watermarks(topic)
        done = self.committed(topic, group, list(marks)) if group is not None else {}
        parts = {}
        for p, (low, high) in marks.items():
            start = done.get(p)
            if start is not None and start < low:
                log.warning("%s/%s partition %d: offsets %d-%d were removed by retention before group %r read "
                            "them", self.uri, topic, p, start, low - 1, group)
            parts[p] = (min(max(start if start is not None else low, low), high), high)
        return OffsetRange(topic, parts)

    # --- reading ------------------------------------------------------------------------------------

    def read(self, topic: str, offsets: OffsetRange | None = None, *, group: str | None = None,
             format: str = "json", schema: pa.Schema | None = None, metadata_columns: bool = False) -> pa.Table:
        """The messages of ``offsets`` (default: :meth:`next_range` of ``group``) as a table: one row per
        message, columns from the JSON objects (``schema`` fixes their types), or a binary ``value`` column for
        ``format="bytes"``. ``metadata_columns`` adds ``_partition``, ``_offset``, ``_timestamp`` (ms) and
        ``_key``. Nothing is committed (see :meth:`commit`)."""
        check_format(format)
        rng = offsets if offsets is not None else self.next_range(topic, group)
        if rng.topic != topic:
            raise ValueError(f"offset range of topic {rng.topic!r} given to read {topic!r}")
        if offsets is not None:  # (a range of next_range was just checked)
            unknown = sorted(set(rng.partitions) - set(self.partitions(topic)))
            if unknown:
                raise NotFoundError(f"{self.uri}/{topic}: no partition(s) {unknown}", key=topic)
        values, meta = self._fetch(rng, metadata_columns)
        table = decode_values(values, format, schema)
        if metadata_columns:
            for name, (typ, column) in meta.items():
                table = table.append_column(name, pa.array(column, typ))
        return table

    def _fetch(self, rng: OffsetRange, with_meta: bool) -> tuple[list[bytes], dict[str, Any]]:
        """The values (and metadata) of every message in ``rng``, in partition-interleaved arrival order."""
        from confluent_kafka import KafkaError, TopicPartition

        todo = {p: (s, e) for p, (s, e) in rng.partitions.items() if e > s}
        values: list[bytes] = []
        meta: dict[str, Any] = {"_partition": (pa.int32(), []), "_offset": (pa.int64(), []),
                                "_timestamp": (pa.timestamp("ms"), []), "_key": (pa.binary(), [])}
        if not todo:
            return values, meta
        ends = {p: e for p, (_s, e) in todo.items()}
        consumer = self._consumer(READER_GROUP, **{"enable.partition.eof": True})
        try:
            consumer.assign([TopicPartition(rng.topic, p, s) for p, (s, _e) in todo.items()])
            stalled_at = time.monotonic() + self.timeout_s
            eof = KafkaError._PARTITION_EOF
            while ends:
                batch = consumer.consume(CONSUME_BATCH, 0.2)
                if batch:
                    stalled_at = time.monotonic() + self.timeout_s
                elif time.monotonic() > stalled_at:
                    raise StorageUnavailableError(
                        f"{self.uri}/{rng.topic}: reading {rng} stalled: no message for {self.timeout_s:g} s "
                        f"with partitions {sorted(ends)} unfinished", key=rng.topic)
                for m in batch:
                    p, o = m.partition(), m.offset()
                    end = ends.get(p)
                    err = m.error()
                    if err is not None:
                        if err.code() == eof:
                            if end is not None and o >= end:
                                del ends[p]
                            continue
                        raise self._read_error(err, rng, p)
                    if end is None or o >= end:  # past the range (more arrived since it was fixed)
                        ends.pop(p, None)
                        continue
                    values.append(m.value() or b"")
                    if with_meta:
                        self._add_meta(meta, m)
                    if o == end - 1:
                        del ends[p]
                if not ends:
                    break
        finally:
            consumer.close()
        return values, meta

    def _read_error(self, err: Any, rng: OffsetRange, partition: int) -> StorageError:
        from confluent_kafka import KafkaError

        if err.code() in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET):
            return NotFoundError(f"{self.uri}/{rng.topic} partition {partition}: offsets of {rng} are no longer "
                                 f"held by the broker (removed by retention?): {err.str()}", key=rng.topic)
        return self._error(err, f"read {rng}", rng.topic)

    @staticmethod
    def _add_meta(meta: dict[str, Any], m: Any) -> None:
        meta["_partition"][1].append(m.partition())
        meta["_offset"][1].append(m.offset())
        ts = m.timestamp()[1]
        meta["_timestamp"][1].append(ts if ts >= 0 else None)
        meta["_key"][1].append(m.key())
