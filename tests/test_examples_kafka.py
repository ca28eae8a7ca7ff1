"""The Kafka example (examples/kafka_ingest.py) against the session's Tansu broker on 127.0.0.1, on real Ray: two
rounds of new events land in the lake exactly once (rows checked against the sample events cleaned directly), and
a round with nothing new is fully cached and writes nothing."""

from __future__ import annotations

import importlib
import uuid

import pytest


@pytest.fixture(scope="module")
def example():
    return importlib.import_module("examples.kafka_ingest")


def test_rounds_land_each_event_once_and_a_quiet_round_runs_nothing(example, kafka_broker, tmp_path, capsys,
                                                                    ray_local):
    from examples import kafka_steps

    topic, lake = f"orders-{uuid.uuid4().hex[:8]}", tmp_path / "lake"
    common = ["--bootstrap", kafka_broker.bootstrap, "--topic", topic, "--lake", str(lake),
              "--storage", str(tmp_path / "cp")]
    assert example.main([*common, "--events", "400", "--rounds", "2"]) == 0
    want = sum(kafka_steps.clean(_with_meta(kafka_steps.sample_events(start, 400))).num_rows for start in (0, 400))
    assert kafka_steps.lake_rows(str(lake)) == want and len(list(lake.glob("part-*.parquet"))) == 2
    capsys.readouterr()
    assert example.main([*common, "--events", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("cached") == 3 and "succeeded" not in out, out
    assert kafka_steps.lake_rows(str(lake)) == want and len(list(lake.glob("part-*.parquet"))) == 2


def _with_meta(table):
    """The sample events as the source hands them over (the metadata columns clean keeps)."""
    import pyarrow as pa

    n = table.num_rows
    return table.append_column("_partition", pa.array([0] * n, pa.int32())).append_column(
        "_offset", pa.array(range(n), pa.int64()))
