"""Incremental Kafka source nodes (odibi_ray.sources.kafka) on real Ray, a real Kafka-protocol broker (Tansu on
127.0.0.1) and checkpoint storage (a local folder, and ADLS on Azurite): the issue's scenario — produce 1,000; run;
produce 500; a failed run; resume; run again with nothing new — with bodies counted and exact values."""

from __future__ import annotations

import pyarrow as pa
import pytest

import odibi_ray as orr
from odibi_ray import DAG, KafkaLog, Node, kafka_source
from odibi_ray.errors import InvalidPolicyError, StorageUnavailableError
from odibi_ray.sources.kafka import START_GROUP_SUFFIX
from tests.cp_nodes import ran
from tests.kafka_nodes import clean, summary
from tests.storage.fixtures_kafka import TansuBroker, make_topic


def produce(klog: KafkaLog, topic: str, a: int, b: int) -> None:
    klog.write(topic, pa.table({"id": list(range(a, b)), "note": [f"event {i}" for i in range(a, b)]}),
               key_column="id")


def pipeline(klog: KafkaLog, topic: str, marks, flag) -> DAG:
    dag = DAG("kafka_ingest")
    dag.add_node(kafka_source("raw", klog, topic))
    dag.add_node(Node("clean", clean, inputs=["raw"], params={"marks": str(marks), "fail_flag": str(flag)}))
    dag.add_node(Node("summary", summary, inputs=["clean"], params={"marks": str(marks)}))
    return dag


def expect(lo: int, hi: int) -> dict:
    return {"rows": hi - lo, "sum": sum(range(lo, hi)), "min": lo, "max": hi - 1}


@pytest.mark.parametrize("backend", ["ray"], indirect=True)
def test_the_incremental_scenario(backend, kafka_broker, kafka_topic, store, marks, tmp_path):
    klog = KafkaLog(kafka_broker.bootstrap, timeout_s=5)
    flag = tmp_path / "fail-clean"
    dag = pipeline(klog, kafka_topic, marks, flag)
    group = f"odibi_ray.{dag.name}.raw"

    def go(**kw):
        return orr.run(dag, backend=backend, storage=store, progress=False, **kw)

    produce(klog, kafka_topic, 0, 1000)
    first = go()
    assert first.succeeded and first["summary"] == expect(0, 1000)
    assert ran(marks) == {"clean": 1, "summary": 1}  # (the source node itself leaves no mark: its status says)
    assert first.nodes["raw"].status.value == "succeeded"
    assert first.sources["raw"].committed
    assert sum(klog.committed(kafka_topic, group).values()) == 1000

    produce(klog, kafka_topic, 1000, 1500)
    flag.write_text("on")
    failed = go()
    assert not failed.succeeded and failed.nodes["clean"].status.value == "failed"
    assert failed.nodes["raw"].status.value == "succeeded"
    assert not failed.sources["raw"].committed and "did not succeed" in failed.sources["raw"].reason
    assert sum(klog.committed(kafka_topic, group).values()) == 1000  # nothing committed by a failed run
    failed_range = failed.sources["raw"].range
    assert sum(e - s for s, e in failed_range["partitions"].values()) == 500

    produce(klog, kafka_topic, 1500, 1600)  # arrives between the failure and the resume
    flag.unlink()
    before = ran(marks)
    resumed = go(resume=failed.run_id)
    assert resumed.succeeded and resumed.nodes["raw"].status.value == "resumed"
    assert resumed["summary"] == expect(1000, 1500)  # exactly the failed run's range, not the 100 that came after
    assert resumed.sources["raw"].range == failed_range and resumed.sources["raw"].committed
    assert ran(marks)["clean"] - before["clean"] == 1 and ran(marks)["summary"] - before["summary"] == 1
    assert sum(klog.committed(kafka_topic, group).values()) == 1500

    after_resume = go()  # the 100 that arrived meanwhile
    assert after_resume["summary"] == expect(1500, 1600)
    assert sum(klog.committed(kafka_topic, group).values()) == 1600

    before = ran(marks)
    quiet = go()  # nothing new: the last range again, same keys, nothing runs
    assert quiet.succeeded
    assert {n: r.status.value for n, r in quiet.nodes.items()} == {"raw": "cached", "clean": "cached",
                                                                    "summary": "cached"}
    assert ran(marks) == before
    assert quiet["summary"] == expect(1500, 1600)
    assert quiet.sources["raw"].range == after_resume.sources["raw"].range
    assert sum(klog.committed(kafka_topic, group).values()) == 1600
    assert sum(klog.committed(kafka_topic, group + START_GROUP_SUFFIX).values()) == 1500


def test_without_storage_every_run_reads_what_is_new(kafka_broker, kafka_topic, marks, tmp_path):
    klog = KafkaLog(kafka_broker.bootstrap, timeout_s=5)
    dag = pipeline(klog, kafka_topic, marks, tmp_path / "never")
    produce(klog, kafka_topic, 0, 10)
    assert orr.run(dag, backend="local", progress=False)["summary"] == expect(0, 10)
    produce(klog, kafka_topic, 10, 25)
    assert orr.run(dag, backend="local", progress=False)["summary"] == expect(10, 25)
    empty = orr.run(dag, backend="local", progress=False)  # no cache: the last range is read and run again
    assert empty["summary"] == expect(10, 25)


def test_the_range_is_in_the_manifest_and_the_key(kafka_broker, kafka_topic, marks, tmp_path, local_storage):
    klog = KafkaLog(kafka_broker.bootstrap, timeout_s=5)
    dag = pipeline(klog, kafka_topic, marks, tmp_path / "never")
    produce(klog, kafka_topic, 0, 5)
    one = orr.run(dag, backend="local", storage=local_storage, progress=False)
    produce(klog, kafka_topic, 5, 6)
    two = orr.run(dag, backend="local", storage=local_storage, progress=False)
    assert one.nodes["raw"].cache_key != two.nodes["raw"].cache_key  # a new range: a new key
    from odibi_ray.checkpoint.store import RunManifest

    body, _info = RunManifest(local_storage, dag.name, two.run_id).read()
    assert body["sources"]["raw"] == two.sources["raw"].range
    assert body["summary"]["sources"] == {"raw": {"committed": True, "reason": ""}}


def test_a_source_that_cannot_answer_stops_the_run_before_anything_runs(tmp_path, marks, local_storage):
    broker = TansuBroker(workdir=str(tmp_path / "tansu"), name="down").start()
    klog = KafkaLog(broker.bootstrap, timeout_s=2)
    topic = make_topic(broker.bootstrap, 1)
    dag = pipeline(klog, topic, marks, tmp_path / "never")
    broker.close()
    with pytest.raises(StorageUnavailableError, match="source node 'raw'"):
        orr.run(dag, backend="local", storage=local_storage, progress=False)
    assert ran(marks) == {}


def test_a_commit_that_fails_leaves_the_run_succeeded_and_the_range_to_read_again(kafka_broker, kafka_topic, marks,
                                                                                  tmp_path, local_storage):
    klog = KafkaLog(kafka_broker.bootstrap, timeout_s=5)
    dag = pipeline(klog, kafka_topic, marks, tmp_path / "never")
    produce(klog, kafka_topic, 0, 20)

    def refuse(*_a, **_k):
        raise StorageUnavailableError("kafka://test: commit refused (a stand-in for a broker that went away)")

    source = dag["raw"].source
    original = type(source).commit
    type(source).commit = refuse  # a fault injected into the commit step (the broker itself stays up)
    try:
        res = orr.run(dag, backend="local", storage=local_storage, progress=False)
    finally:
        type(source).commit = original
    assert res.succeeded and not res.sources["raw"].committed and "commit refused" in res.sources["raw"].reason
    again = orr.run(dag, backend="local", storage=local_storage, progress=False)
    assert again.sources["raw"].range == res.sources["raw"].range  # same range: cached, nothing lost
    assert again.nodes["summary"].status.value == "cached" and again.sources["raw"].committed


def test_a_source_node_is_validated(kafka_broker):
    klog = KafkaLog(kafka_broker.bootstrap)
    with pytest.raises(InvalidPolicyError, match="also an input"):
        Node("x", lambda offsets: offsets, inputs={"offsets": "y"},
             source=kafka_source("s", klog, "t").source)
    with pytest.raises(InvalidPolicyError, match="IncrementalSource"):
        Node("x", lambda offsets: offsets, source="not a source")


def test_resuming_an_old_run_never_moves_the_offsets_back(kafka_broker, kafka_topic, marks, tmp_path, local_storage):
    klog = KafkaLog(kafka_broker.bootstrap, timeout_s=5)
    dag = pipeline(klog, kafka_topic, marks, tmp_path / "never")
    group = f"odibi_ray.{dag.name}.raw"
    produce(klog, kafka_topic, 0, 30)
    old = orr.run(dag, backend="local", storage=local_storage, progress=False)
    produce(klog, kafka_topic, 30, 40)
    orr.run(dag, backend="local", storage=local_storage, progress=False)
    assert sum(klog.committed(kafka_topic, group).values()) == 40
    again = orr.run(dag, backend="local", storage=local_storage, progress=False, resume=old.run_id)
    assert again.succeeded and again.sources["raw"].range == old.sources["raw"].range
    assert sum(klog.committed(kafka_topic, group).values()) == 40  # not back to 30
    produce(klog, kafka_topic, 40, 45)
    assert orr.run(dag, backend="local", storage=local_storage, progress=False)["summary"] == expect(40, 45)
