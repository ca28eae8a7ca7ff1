"""Kafka example: every "hour", take what arrived on a topic since the last good run, clean it, write it to the lake.

    python examples/kafka_ingest.py --start-broker            # a Tansu broker on 127.0.0.1 for the demo (needs the
                                                              # test extra: pip install -e '.[test]'), 3 rounds
    python examples/kafka_ingest.py --bootstrap 127.0.0.1:9092 --topic orders   # your broker: one round

Each round produces ``--events`` sample order events to the topic, then runs the pipeline:

    raw (kafka_source: what is new on the topic) -> clean -> write_lake (one Parquet file per batch)

``raw`` is an incremental Kafka source: the run fixes its offset range (from the consumer group's committed offsets
to the high watermarks) before anything runs, its cache key is the topic and that range, and the range is committed
only when the whole run succeeds. So a failed run commits nothing and ``--resume`` re-reads exactly the same range;
a round with nothing new (``--events 0``) is fully ``cached``: nothing runs, nothing is written twice.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python examples/kafka_ingest.py` from anywhere: examples.kafka_steps importable
    sys.path.insert(0, str(REPO))

from examples.loopback import keep_on_loopback  # noqa: E402 - after the sys.path setup above

keep_on_loopback()  # before Ray is imported

from rich.console import Console  # noqa: E402 - after the sys.path setup above

from examples import kafka_steps  # noqa: E402 - after the sys.path setup above
from odibi_ray import DAG, KafkaLog, RetryPolicy, RunResult, kafka_source, run  # noqa: E402 - after the setup above

PIPELINE = "kafka_ingest"


def build_dag(log: KafkaLog, topic: str, lake: str) -> DAG:
    """topic -> clean -> Parquet on the lake."""
    dag = DAG(PIPELINE)
    dag.add_node(kafka_source("raw", log, topic, schema=kafka_steps.EVENT_SCHEMA,
                              retry=RetryPolicy(max_attempts=3, delay_s=0.5)))
    dag.add_node(name="clean", fn=kafka_steps.clean, inputs=["raw"])
    dag.add_node(name="write_lake", fn=kafka_steps.write_lake, inputs=["clean"],
                 params={"lake": str(Path(lake).resolve())})
    return dag


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--bootstrap", help="the Kafka bootstrap servers (host:port)")
    where.add_argument("--start-broker", action="store_true", help="start a Tansu broker on 127.0.0.1 for the demo")
    parser.add_argument("--topic", default="orders")
    parser.add_argument("--events", type=int, default=1000, help="sample events produced before each round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds to run (default: 3 with --start-broker, "
                        "the last with nothing new; else 1)")
    parser.add_argument("--lake", default="out/kafka_ingest/lake", help="folder the Parquet files go to")
    parser.add_argument("--storage", default=".odibi/kafka_ingest", help="checkpoint storage URI")
    parser.add_argument("--backend", choices=["ray", "local"], default="ray")
    parser.add_argument("--resume", default=None, help="resume this run id (or 'latest') instead of a new round")
    args = parser.parse_args(argv)
    if args.events < 0:
        parser.error("--events must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the rounds; 0 when every run succeeded."""
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 120)
    broker = None
    if args.start_broker:
        from tests.storage.fixtures_kafka import TansuBroker  # the test suite's launcher (test extra)

        broker = TansuBroker(name="kafka-ingest").start()
        console.print(f"started a Tansu broker on {broker.bootstrap} (in memory: gone when this ends)")
    try:
        return rounds(args, console, broker.bootstrap if broker is not None else args.bootstrap)
    finally:
        if broker is not None:
            broker.close()


def rounds(args: argparse.Namespace, console: Console, bootstrap: str) -> int:
    log = KafkaLog(bootstrap, timeout_s=10)
    if not log.exists(args.topic):
        log.create_topic(args.topic, partitions=3)
    dag = build_dag(log, args.topic, args.lake)
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    init: dict = {"runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}}, "include_dashboard": False,
                  "num_cpus": os.cpu_count() or 2, "object_store_memory": 256 * 1024 * 1024}
    count = args.rounds if args.rounds is not None else (3 if args.start_broker and args.resume is None else 1)
    produced = sum(high for _low, high in log.watermarks(args.topic).values())
    for i in range(count):
        events = 0 if args.start_broker and args.rounds is None and i == count - 1 else args.events
        if args.resume is None and events:
            log.write(args.topic, kafka_steps.sample_events(produced, events), key_column="order_id")
            produced += events
        console.print(f"[bold]round {i + 1}[/]: {events} new event(s) on {args.topic}")
        result = run(dag, backend=args.backend, storage=args.storage, resume=args.resume, ray_init_kwargs=init,
                     progress=False)
        show(console, result)
        if not result.succeeded:
            console.print(f"[red]run {result.run_id} failed: nothing committed; resume it with --resume "
                          f"{result.run_id}[/]")
            return 1
        args.resume = None
    console.print(f"the lake holds {kafka_steps.lake_rows(args.lake):,} rows in {args.lake}")
    return 0


def show(console: Console, result: RunResult) -> None:
    """One line per node, and what the source read."""
    for rec in result.nodes.values():
        console.print(f"  {rec.name:<11} {rec.status.value}")
    read = result.sources.get("raw")
    if read is not None:
        size = sum(e - s for s, e in read.range["partitions"].values())
        console.print(f"  raw read {size} offset(s) {read.range['partitions']}; committed: {read.committed}")
    if result.succeeded:
        console.print(f"  lake: {result['write_lake']}")


if __name__ == "__main__":
    sys.exit(main())
