"""KafkaLog and CloudAdapter("kafka") against a real Kafka-protocol broker on 127.0.0.1 (Tansu 0.6.0, started once
per session by tests/storage/fixtures_kafka.py).

What Tansu cannot do is tested another way or said untested here: TLS is not served by this build, and no SASL
login can succeed on it (users cannot be created; PLAIN is not offered), so the *accepted* SASL path is untested
against a server — the refused one is (StorageAuthError, fast), and the client configuration each option makes is
checked directly (``test_settings_*``).
"""

from __future__ import annotations

import json
import pickle
import time

import pyarrow as pa
import pytest

from odibi_ray import CloudAdapter, KafkaLog, OffsetRange
from odibi_ray.checkpoint.canonical import canonical_form
from odibi_ray.errors import (AlreadyExistsError, InvalidURIError, NotFoundError, StorageAuthError,
                              StorageUnavailableError)
from odibi_ray.storage.kafka import KafkaSettings
from tests.storage.fixtures_kafka import TansuBroker, make_topic, SASL_MECHANISMS

SECRET = "s3cr3t-Pa55-do-not-show"


def rows(a: int, b: int) -> pa.Table:
    return pa.table({"id": list(range(a, b)), "name": [f"n{i}" for i in range(a, b)],
                     "value": [i / 4 for i in range(a, b)]})


@pytest.fixture
def klog(kafka_broker) -> KafkaLog:
    return KafkaLog(kafka_broker.bootstrap, timeout_s=5)


# --- topics -------------------------------------------------------------------------------------------


def test_topics_create_list_exists_delete(klog):
    name = "odibi-topic-admin"
    assert not klog.exists(name)
    klog.create_topic(name, partitions=2)
    try:
        assert klog.exists(name) and name in klog.topics()
        assert klog.partitions(name) == [0, 1]
        with pytest.raises(AlreadyExistsError, match=name):
            klog.create_topic(name)
    finally:
        assert klog.delete_topic(name) is True
    assert not klog.exists(name)
    assert klog.delete_topic(name) is False  # gone: False, like Storage.delete
    with pytest.raises(NotFoundError, match="no such topic"):
        klog.partitions(name)


# --- writing and reading ------------------------------------------------------------------------------


def test_write_then_read_everything_back(klog, kafka_topic):
    assert klog.write(kafka_topic, rows(0, 2500), key_column="id") == 2500
    marks = klog.watermarks(kafka_topic)
    # Tansu's ListOffsets lags (last batch's base offset + 1): the watermarks are confirmed by a fetch
    assert sum(high for _low, high in marks.values()) == 2500
    table = klog.read(kafka_topic)
    assert table.num_rows == 2500
    assert table.sort_by("id").equals(rows(0, 2500))


def test_keys_route_rows_and_metadata_columns_say_where_each_came_from(klog, kafka_topic):
    klog.write(kafka_topic, rows(0, 300), key_column="name")
    table = klog.read(kafka_topic, metadata_columns=True)
    assert table.column_names == ["id", "name", "value", "_partition", "_offset", "_timestamp", "_key"]
    got = table.to_pylist()
    assert all(r["_key"] == r["name"].encode() for r in got)
    by_key: dict[bytes, set[int]] = {}
    for r in got:
        by_key.setdefault(r["_key"], set()).add(r["_partition"])
    assert all(len(parts) == 1 for parts in by_key.values())  # one key, one partition
    assert {r["_partition"] for r in got} == {0, 1, 2}
    for p in range(3):  # offsets within a partition: 0..n-1, in order
        offs = [r["_offset"] for r in got if r["_partition"] == p]
        assert offs == list(range(len(offs)))


def test_a_read_is_bounded_by_its_range_even_when_more_arrives(klog, kafka_topic):
    klog.write(kafka_topic, rows(0, 600))
    rng = klog.next_range(kafka_topic)
    assert rng.size == 600 and rng.starts == {0: 0, 1: 0, 2: 0}
    klog.write(kafka_topic, rows(600, 900))  # after the range was fixed
    assert sorted(klog.read(kafka_topic, rng).column("id").to_pylist()) == list(range(600))
    rest = OffsetRange(kafka_topic, {p: (e, h) for (p, e), (_l, h) in
                                     zip(rng.ends.items(), klog.watermarks(kafka_topic).values())})
    assert sorted(klog.read(kafka_topic, rest).column("id").to_pylist()) == list(range(600, 900))


def test_an_explicit_range_reads_exactly_its_offsets(klog):
    topic = make_topic(klog.settings.bootstrap_servers, partitions=1)
    klog.write(topic, rows(0, 100))
    part = klog.read(topic, OffsetRange(topic, {0: (10, 20)}), metadata_columns=True)
    assert part.column("id").to_pylist() == list(range(10, 20))
    assert part.column("_offset").to_pylist() == list(range(10, 20))
    assert klog.read(topic, OffsetRange(topic, {0: (5, 5)})).num_rows == 0  # an empty range: no wait
    klog.delete_topic(topic)


def test_consumer_group_offsets_commit_and_drive_the_next_range(klog, kafka_topic):
    group = f"g-{kafka_topic}"
    assert klog.committed(kafka_topic, group) == {0: None, 1: None, 2: None}
    klog.write(kafka_topic, rows(0, 90))
    first = klog.next_range(kafka_topic, group)
    assert first.size == 90
    klog.commit(kafka_topic, group, first.ends)
    assert klog.committed(kafka_topic, group) == first.ends
    assert klog.next_range(kafka_topic, group).empty
    klog.write(kafka_topic, rows(90, 100))
    second = klog.next_range(kafka_topic, group)
    assert second.starts == first.ends and second.size == 10
    assert sorted(klog.read(kafka_topic, group=group).column("id").to_pylist()) == list(range(90, 100))


def test_schema_types_the_columns_and_an_empty_range_keeps_them(klog, kafka_topic):
    schema = pa.schema([("id", pa.int32()), ("name", pa.string()), ("value", pa.float64())])
    klog.write(kafka_topic, rows(0, 5))
    assert klog.read(kafka_topic, schema=schema).schema == schema
    empty = klog.read(kafka_topic, OffsetRange(kafka_topic, {0: (0, 0)}), schema=schema)
    assert empty.num_rows == 0 and empty.schema == schema


def test_values_written_over_several_lines_by_another_producer_are_read(klog, kafka_broker, kafka_topic):
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    for i in range(5):
        p.produce(kafka_topic, json.dumps({"id": i, "tags": ["a", "b"]}, indent=2).encode(), partition=0)
    assert p.flush(10) == 0
    got = klog.read(kafka_topic)
    assert sorted(got.column("id").to_pylist()) == list(range(5))
    assert got.column("tags").to_pylist()[0] == ["a", "b"]


def test_bytes_format_round_trips_raw_values(klog, kafka_topic):
    values = [b"\x00\x01binary", b"", "é".encode()]
    klog.write(kafka_topic, pa.table({"value": pa.array(values, pa.binary())}), format="bytes")
    assert sorted(klog.read(kafka_topic, format="bytes").column("value").to_pylist()) == sorted(values)
    with pytest.raises(ValueError, match="Avro"):
        klog.write(kafka_topic, rows(0, 1), format="avro")


def test_unknown_topic_and_partition_are_not_found(klog, kafka_topic):
    with pytest.raises(NotFoundError, match="no such topic"):
        klog.read("odibi-no-such-topic", OffsetRange("odibi-no-such-topic", {0: (0, 5)}))
    with pytest.raises(NotFoundError, match=r"no partition\(s\) \[7\]"):
        klog.read(kafka_topic, OffsetRange(kafka_topic, {7: (0, 1)}))
    with pytest.raises(NotFoundError, match="create=False"):
        klog.write("odibi-no-such-topic", rows(0, 1), create=False)


def test_write_creates_a_missing_topic(klog):
    name = "odibi-created-by-write"
    try:
        klog.write(name, rows(0, 10), partitions=2)
        assert klog.partitions(name) == [0, 1]
        assert klog.read(name).num_rows == 10
    finally:
        klog.delete_topic(name)


# --- faults -------------------------------------------------------------------------------------------


@pytest.fixture
def lone_broker(tmp_path):
    """A broker of this test's own (stopping the session's broker would drop every other test's topics)."""
    broker = TansuBroker(workdir=str(tmp_path / "tansu"), name="outage").start()
    yield broker
    broker.close()


def test_broker_down_is_storage_unavailable_within_the_timeout(lone_broker):
    klog = KafkaLog(lone_broker.bootstrap, timeout_s=2)
    topic = make_topic(lone_broker.bootstrap, partitions=1)
    klog.write(topic, rows(0, 10))
    rng = klog.next_range(topic)
    lone_broker.stop()
    for what, call in [("topics", klog.topics), ("write", lambda: klog.write(topic, rows(10, 20))),
                       ("read", lambda: klog.read(topic, rng)), ("commit", lambda: klog.commit(topic, "g", {0: 1})),
                       ("connect", KafkaLog(lone_broker.bootstrap, timeout_s=2).connect)]:
        start = time.monotonic()
        with pytest.raises(StorageUnavailableError, match=f"kafka://{lone_broker.bootstrap}"):
            call()
        took = time.monotonic() - start
        assert took < 2 * 2 + 1.5, f"{what} took {took:.1f} s with timeout_s=2"
    lone_broker.start()  # back (memory storage: empty)
    assert KafkaLog(lone_broker.bootstrap, timeout_s=5).topics() == []


def test_refused_credentials_are_storage_auth_errors_at_once(kafka_broker_auth, monkeypatch):
    monkeypatch.setenv("ODIBI_TEST_KAFKA_PW", SECRET)
    for mechanism in SASL_MECHANISMS:
        klog = KafkaLog(kafka_broker_auth.bootstrap, sasl_mechanism=mechanism, sasl_username="etl",
                        sasl_password="env://ODIBI_TEST_KAFKA_PW", timeout_s=8)
        start = time.monotonic()
        with pytest.raises(StorageAuthError, match="refused the credentials") as err:
            klog.connect()
        assert time.monotonic() - start < 4, "a refused login is reported before the timeout"
        assert SECRET not in str(err.value) and SECRET not in repr(klog)


def test_a_secret_reference_that_does_not_resolve_is_an_auth_error(kafka_broker):
    klog = KafkaLog(kafka_broker.bootstrap, sasl_username="etl", sasl_password="env://ODIBI_TEST_UNSET_PW_XYZ")
    with pytest.raises(StorageAuthError, match="sasl_password"):
        klog.topics()


# --- configuration, secrets, pickling -------------------------------------------------------------------


def test_settings_make_the_client_config_and_never_show_secrets(monkeypatch):
    """What each auth option gives librdkafka (the accepted-login path cannot be run against Tansu)."""
    monkeypatch.setenv("ODIBI_TEST_KAFKA_PW", SECRET)
    scram = KafkaSettings("b1:9093,b2:9093", sasl_mechanism="SCRAM-SHA-512", sasl_username="etl",
                          sasl_password="env://ODIBI_TEST_KAFKA_PW", ssl_ca_location="/ca.pem")
    conf = scram.librdkafka()
    assert conf["security.protocol"] == "SASL_SSL" and conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.username"] == "etl" and conf["sasl.password"] == SECRET
    assert conf["ssl.ca.location"] == "/ca.pem"
    hubs = KafkaSettings("ns.servicebus.windows.net:9093", connection_string="env://ODIBI_TEST_KAFKA_PW").librdkafka()
    assert (hubs["security.protocol"], hubs["sasl.mechanism"], hubs["sasl.username"], hubs["sasl.password"]) == \
        ("SASL_SSL", "PLAIN", "$ConnectionString", SECRET)
    tls = KafkaSettings("b:9093", ssl_ca_location="/ca.pem", ssl_certificate_location="/c.pem",
                        ssl_key_location="/k.pem", ssl_key_password=SECRET).librdkafka()
    assert tls["security.protocol"] == "SSL" and tls["ssl.key.password"] == SECRET
    assert KafkaSettings("b:9092").librdkafka()["security.protocol"] == "PLAINTEXT"
    for shown in (repr(scram), repr(KafkaLog(scram)), repr(CloudAdapter.create("kafka", bootstrap_servers="b:1",
                                                                                   sasl_username="u",
                                                                                   sasl_password=SECRET))):
        assert SECRET not in shown and "ODIBI_TEST_KAFKA_PW" not in shown


@pytest.mark.parametrize("bad, match", [
    (dict(bootstrap_servers=""), "bootstrap_servers"),
    (dict(bootstrap_servers="a:1,,b:2"), "bootstrap_servers"),
    (dict(bootstrap_servers="a:1", security_protocol="TLS"), "security_protocol"),
    (dict(bootstrap_servers="a:1", sasl_mechanism="GSSAPI", sasl_username="u", sasl_password="p"), "sasl_mechanism"),
    (dict(bootstrap_servers="a:1", sasl_username="u"), "sasl_password"),
    (dict(bootstrap_servers="a:1", client_config={"sasl.password": "x"}), "must not carry secrets"),
    (dict(bootstrap_servers="a:1", timeout_s=0), "timeout_s"),
])
def test_bad_settings_are_refused_with_the_reason(bad, match):
    with pytest.raises((ValueError, InvalidURIError), match=match):
        KafkaSettings(**bad)


def test_a_log_pickles_as_configuration_and_keys_by_its_cluster(klog, kafka_topic):
    klog.write(kafka_topic, rows(0, 3))
    copy = pickle.loads(pickle.dumps(klog))
    assert copy._producer is None and copy.read(kafka_topic).num_rows == 3
    a = KafkaLog("b:9092", sasl_username="u", sasl_password="one")
    b = KafkaLog("b:9092", sasl_username="v", sasl_password="two")
    assert canonical_form(a) == canonical_form(b)  # rotating a password does not change cache keys
    assert canonical_form(a) != canonical_form(KafkaLog("c:9092"))
    assert "one" not in json.dumps(canonical_form(a))


# --- the seed face ------------------------------------------------------------------------------------


def test_cloud_adapter_kafka_face(kafka_broker):
    adapter = CloudAdapter.create("kafka", bootstrap_servers=kafka_broker.bootstrap, timeout_s=5)
    assert isinstance(adapter, CloudAdapter) and adapter.connect() is adapter and adapter.connected
    topic = "odibi-face-events"
    try:
        adapter.write([{"id": i, "v": f"x{i}"} for i in range(50)], topic, key_column="id", partitions=2)
        assert adapter.exists(topic) and topic in adapter.list("odibi-face") and adapter.list(pattern="*events")
        frame = adapter.read(topic, as_pandas=True)
        assert sorted(frame["id"]) == list(range(50))
        got = adapter.read(topic, group="face", commit=True)
        assert got.num_rows == 50 and adapter.read(topic, group="face").num_rows == 0  # committed: nothing new
        adapter.write(pa.table({"id": [50]}), topic)
        assert adapter.read(topic, group="face").column("id").to_pylist() == [50]
        part = adapter.read(topic, offsets={0: (0, 1)})
        assert part.num_rows == 1
        with pytest.raises(ValueError, match="metadata"):
            adapter.write([{"id": 1}], topic, metadata={"a": "b"})
        with pytest.raises(TypeError, match="holds topics"):
            adapter.locate(topic)
    finally:
        assert adapter.delete(topic) is True
    assert not adapter.exists(topic) and adapter.delete(topic) is False
    adapter.disconnect()
    assert not adapter.connected
    direct = CloudAdapter("kafka", bootstrap_servers=kafka_broker.bootstrap)
    assert type(direct).__name__ == "KafkaCloudAdapter"
    with pytest.raises(ValueError, match="simulate"):
        CloudAdapter.create("kafka", bootstrap_servers="b:1", simulate=True)


def test_row_json_is_the_standard_librarys_and_refuses_nan():
    import datetime
    import decimal

    from odibi_ray.storage.kafka.codec import _json_default, encode_values

    table = pa.table({"t": [datetime.datetime(2026, 1, 2, 3, 4, 5)], "d": pa.array([decimal.Decimal("1.10")]),
                      "s": ['é"x\n'], "l": [[1, None]], "b": [b"\x00"]})
    std = json.JSONEncoder(separators=(",", ":"), default=_json_default, allow_nan=False)
    assert encode_values(table, "json") == [std.encode(r).encode() for r in table.to_pylist()]
    with pytest.raises(ValueError, match="JSON"):
        encode_values(pa.table({"x": [float("nan")]}), "json")
