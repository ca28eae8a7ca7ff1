"""Checkpoint cost against its floor: what writing every node's output costs odibi_ray, compared with raw Ray
tasks that write the same outputs themselves in the cheapest sensible way; resume; plan time; latency.

1. **layered**: seeded layered DAGs (L levels of W nodes; every node of level k > 0 takes 2 random nodes of
   level k-1). Cases: 300 nodes (15 x 20) with small outputs (an int), 1000 nodes (20 x 50) small, 300 nodes
   with 100 KB outputs (``bytes`` of 100,000, derived cheaply from the inputs). Engines:
   ``raw_ray`` (tasks chained by object refs, no storage); ``floor_local`` (the same tasks, each also writing
   its pickled output to a temp file in one fresh folder per run and renaming it in place); ``floor_azurite``
   (each task one ``BlobClient.upload_blob(pickled, overwrite=True)`` into Azurite, through a ContainerClient
   cached per worker process); ``odibi_local`` (``odibi_ray.run(dag, storage=<fresh folder>)``);
   ``odibi_azurite`` (``run(dag, storage="abfss://...", storage_options={endpoint, account_key})``, a fresh
   container per run); ``odibi_nostore`` (``run(dag)``, reference). Every engine must produce the same leaf
   values (checksum; the script fails otherwise). Targets: odibi_local / floor_local and odibi_azurite /
   floor_azurite <= 1.15.
2. **resume**: a 1000-node layered run on a fresh local folder whose last level fails (its nodes raise while
   the file named by their ``fail_flag_path`` param exists), not timed; the flag is removed, then the call
   ``run(dag, storage=<same folder>, resume="latest")`` is timed. The resumed run must succeed, every node of
   the earlier levels must be ``resumed`` or ``cached``, and the leaves must equal raw Ray's. Also on Azurite.
   Target: <= 0.3 s.
3. **plan**: ``plan_checkpoints(dag, order, storage, run_id)`` for the 1000-node DAG on an empty store vs a
   store pre-filled (setup, not timed: ``storage.put`` from 4 threads locally; on Azurite signed raw "Put Blob"
   requests from 8 threads, 3x faster than the SDK here) with 100,000 objects of 20 other pipelines:
   random 64-hex keys, stored where and with the metadata the engine under test stores outputs
   (found by a probe run of one node: ``objects/<k[:2]>/<k>`` in layout 1, ``objects/<pipeline>/<k[:2]>/<k>``
   in layout 2); ``--foreign-layout flat`` forces the layout-1 keys (a store an older engine filled). On a
   local folder and on Azurite. Target: full / empty <= 1.2. Since keys cover the inputs' data versions
   (issue 20, 2026-12-03) a plan on a store without the pipeline's outputs keys and looks up the first level only
   (the rest is keyed as it runs), so figures from before then measured more work.
4. **latency**: a 100-node chain (each node takes the one before) with ``storage=LatencyStorage(local
   folder)``, a wrapper that sleeps 20 ms before every storage call (as ADLS does from another region), vs
   ``run(dag)`` without storage. Raw Ray and a plain local folder are shown for reference. Target <= 1.15.
   The driver's storage calls are counted and reported (workers' calls happen in other processes).

``--quick`` (about 3 minutes) drops the 1000-node layered case and pre-fills 20,000 objects (the report says
so); the default run takes 6-8 minutes on 2 cores, 2 of them filling Azurite with 100,000 objects.
Scenarios run in the order layered, resume, latency, plan (``--only`` picks some).

One process; one local Ray (``num_cpus=2``, 127.0.0.1, no dashboard) and one in-memory Azurite on 127.0.0.1
(``--disableTelemetry``). Engines run in rounds, one run each per round, the order rotated every round; the
first round is a warm-up and is not counted; medians of ``--repeats`` (>= 3) rounds. Folders and containers
are made before a run and removed after it, outside the timing; after every checkpointed odibi_ray run the
store must hold one output per node (a run() that returned before its checkpoints were written fails this).
Node functions, task bodies and LatencyStorage are module-level and run under the module's import name (see
the end of the file), so Ray pickles them by reference and the workers import this module, as they would a
user's pipeline module: run from the repo root (or with it on PYTHONPATH). The human table comes first; the
last line of stdout is one JSON object with every figure.

    python -m benchmarks.bench_checkpoint [--quick] [--repeats N] [--only layered,resume,plan,latency]
                                          [--no-azurite] [--foreign-layout engine|flat] [--tiny (tests only)]
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import loopback  # noqa: F401,E402  (network safety: before ray is imported)

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import logging
import pickle
import random
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Protocol
from collections.abc import Callable, Iterator, Mapping

import ray

import odibi_ray
from odibi_ray import DAG, Node
from odibi_ray.storage import open_storage
from odibi_ray.storage.base import ObjectInfo, Storage

log = logging.getLogger("bench_checkpoint")

NUM_CPUS = 2
MB = 1024 * 1024
BIG_BYTES = 100_000
LATENCY_S = 0.020
FLOOR_TARGET = 1.15  # odibi checkpointed run / the floor on the same storage
RESUME_TARGET_S = 0.3
PLAN_TARGET = 1.2  # plan on a full store / plan on an empty store
LATENCY_TARGET = 1.15  # chain with a 20 ms-per-call store / chain without storage
#: Azurite pre-fill threads (signed raw "Put Blob" requests, see BlobPutter): 1100 puts/s with 8 or 16 threads
#: on 2 cores, 950 with 4 (the SDK's client managed 430 with 8 threads, 315 with 32: its CPU under the GIL).
AZURITE_PREFILL_THREADS = 8
LAYERED_ENGINES = ("raw_ray", "floor_local", "floor_azurite", "odibi_local", "odibi_azurite", "odibi_nostore")


# --- shapes (seeded plain data) ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """A DAG as plain data: nodes in a topological order with their inputs; a seed value per source."""

    name: str
    levels: list[list[str]]
    inputs: dict[str, tuple[str, ...]]
    values: dict[str, int]  # source node -> its seeded value
    kind: str  # "small" (int outputs) or "big" (100 KB bytes outputs)

    @property
    def order(self) -> list[str]:
        return [n for level in self.levels for n in level]

    @property
    def leaves(self) -> list[str]:
        return list(self.levels[-1])

    def __len__(self) -> int:
        return len(self.inputs)


def layered(n_levels: int, width: int, kind: str, seed: int = 0) -> Shape:
    """``n_levels`` levels of ``width`` nodes; every node of level k > 0 takes 2 random nodes of level k-1."""
    rng = random.Random(f"layered-{n_levels}-{width}-{seed}")
    levels = [[f"l{k:02d}_{i:04d}" for i in range(width)] for k in range(n_levels)]
    inputs = {n: tuple(rng.sample(levels[k - 1], 2)) if k else () for k, lvl in enumerate(levels) for n in lvl}
    values = {n: rng.randrange(1 << 16) for n in levels[0]}
    return Shape(f"ckpt_{kind}_{n_levels}x{width}", levels, inputs, values, kind)


def chain(n: int) -> Shape:
    """A chain of ``n`` nodes, each taking the one before it (one node per level)."""
    names = [f"c{i:04d}" for i in range(n)]
    inputs = {name: (names[i - 1],) if i else () for i, name in enumerate(names)}
    return Shape(f"ckpt_chain_{n}", [[name] for name in names], inputs, {names[0]: 1}, "chain")


def checksum(leaves: Mapping[str, Any]) -> str:
    """A fingerprint of the leaf values, independent of dict order."""
    h = hashlib.sha256()
    for name in sorted(leaves):
        v = leaves[name]
        h.update(name.encode() + b"=" + (v if isinstance(v, bytes) else repr(v).encode()) + b";")
    return h.hexdigest()[:16]


# --- node bodies (module level: Ray workers import them) -----------------------------------------------------

def small_source(v: int) -> int:
    return v


def small_combine(a: int, b: int) -> int:
    return (a * 31 + b + 1) & 0xFFFFFFF


def big_source(v: int) -> bytes:
    return hashlib.sha256(str(v).encode()).digest() * (BIG_BYTES // 32)


def big_combine(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(a[:32] + b[:32]).digest() * (BIG_BYTES // 32)


def chain_source(v: int) -> int:
    return v


def chain_step(a: int) -> int:
    return a + 1


def fail_combine(a: int, b: int, fail_flag_path: str) -> int:
    """``small_combine``, but raises while the file ``fail_flag_path`` exists (the resume scenario)."""
    if os.path.exists(fail_flag_path):
        raise RuntimeError(f"failing on purpose: {fail_flag_path} exists")
    return small_combine(a, b)


BODIES: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "small": (small_source, small_combine), "big": (big_source, big_combine), "chain": (chain_source, chain_step)}


def compute(kind: str, v: int | None, *ups: Any) -> Any:
    """A node's value from its inputs (or its seed value for a source)."""
    source, combine = BODIES[kind]
    return combine(*ups) if ups else source(v)


# --- raw Ray and the floors: tasks chained by refs, each writing its own output --------------------------------

_CONTAINERS: dict[tuple[str, str], Any] = {}
_CONTAINERS_LOCK = threading.Lock()


def _container(conn_str: str, container: str) -> Any:
    """This process's ContainerClient for ``container`` (created once per process, as a user would cache it)."""
    key = (conn_str, container)
    client = _CONTAINERS.get(key)
    if client is None:
        from azure.storage.blob import ContainerClient

        with _CONTAINERS_LOCK:
            client = _CONTAINERS.setdefault(key, ContainerClient.from_connection_string(conn_str, container))
    return client


def write_floor(sink: tuple[str, ...], name: str, data: bytes) -> None:
    """The cheapest sensible checkpoint: ``("local", folder)``: temp file + rename; ``("azure", conn_str,
    container, prefix)``: one ``upload_blob(overwrite=True)``."""
    if sink[0] == "local":
        final = os.path.join(sink[1], name)
        tmp = f"{final}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, final)
    else:
        _, conn_str, container, prefix = sink
        _container(conn_str, container).get_blob_client(f"{prefix}/{name}").upload_blob(data, overwrite=True)


def raw_task(kind: str, v: int | None, *ups: Any) -> Any:
    return compute(kind, v, *ups)


def floor_task(sink: tuple[str, ...], name: str, kind: str, v: int | None, *ups: Any) -> Any:
    value = compute(kind, v, *ups)
    write_floor(sink, name, pickle.dumps(value, protocol=5))
    return value


_raw_remote = ray.remote(raw_task)
_floor_remote = ray.remote(floor_task)


def run_raw(shape: Shape, sink: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every node one task, all submitted at once with their inputs' refs (``sink``: each also checkpoints)."""
    refs: dict[str, Any] = {}
    for n in shape.order:
        ups, v = [refs[u] for u in shape.inputs[n]], shape.values.get(n)
        refs[n] = (_raw_remote.remote(shape.kind, v, *ups) if sink is None
                   else _floor_remote.remote(sink, n, shape.kind, v, *ups))
    ray.wait(list(refs.values()), num_returns=len(refs), fetch_local=False)
    return dict(zip(shape.leaves, ray.get([refs[n] for n in shape.leaves])))


# --- odibi_ray ------------------------------------------------------------------------------------------------

def build_dag(shape: Shape, fail_flag_path: str | None = None) -> DAG:
    """The shape as an odibi_ray DAG; with ``fail_flag_path``, the last level's nodes use ``fail_combine``."""
    source, combine = BODIES[shape.kind]
    last = set(shape.levels[-1])
    dag = DAG(shape.name)
    for n in shape.order:
        ups = shape.inputs[n]
        if not ups:
            dag.add_node(Node(n, source, params={"v": shape.values[n]}))
        elif fail_flag_path is not None and n in last:
            dag.add_node(Node(n, fail_combine, inputs=dict(zip("ab", ups)), params={"fail_flag_path": fail_flag_path}))
        else:
            dag.add_node(Node(n, combine, inputs=dict(zip(("a", "b", "c")[:len(ups)], ups))))
    return dag


def run_odibi(dag: DAG, leaves: list[str], storage: str | Storage | None = None,
              options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``odibi_ray.run`` (raises if any node failed); the leaf values, fetched."""
    result = odibi_ray.run(dag, storage=storage, storage_options=options, progress=False)
    result.raise_for_status()
    return result.outputs(leaves)


# --- Azurite --------------------------------------------------------------------------------------------------

class Azurite:
    """One in-memory Azurite on 127.0.0.1 (telemetry off; started here unless ``server`` is given) and what the
    engines need to reach it."""

    def __init__(self, server: Any = None) -> None:
        from tests.storage.fixtures_azurite import ACCOUNT, ACCOUNT_KEY, AzuriteServer

        self.account, self.key = ACCOUNT, ACCOUNT_KEY
        self._owned = server is None
        self.server = AzuriteServer().start() if server is None else server
        self.conn_str = self.server.connection_string

    def new_container(self) -> str:
        from tests.storage.fixtures_azurite import new_container

        return new_container(self.server)

    def drop_container(self, name: str) -> None:
        from azure.storage.blob import BlobServiceClient

        with BlobServiceClient.from_connection_string(self.conn_str) as svc:
            svc.delete_container(name)

    def uri(self, container: str, prefix: str) -> str:
        return f"abfss://{container}@{self.account}.dfs.core.windows.net/{prefix}"

    @property
    def options(self) -> dict[str, Any]:
        return {"endpoint": self.server.endpoint, "account_key": self.key}

    def storage(self, container: str, prefix: str) -> Storage:
        return open_storage(self.uri(container, prefix), **self.options)

    def close(self) -> None:
        if self._owned:
            self.server.close()


class BlobPutter:
    """Setup only (the plan scenario's pre-fill): "Put Blob" requests signed with the account key (SharedKey)
    over one keep-alive connection per thread. The same blobs and metadata ``ADLSStorage.put`` writes under
    ``prefix`` (the fill is checked through the adapter), at about 3x the SDK's rate on 2 cores (1100 vs
    330-430 puts/s), where the SDK client's CPU is the limit."""

    API_VERSION = "2021-08-06"

    def __init__(self, az: Azurite, container: str, prefix: str) -> None:
        self.port, self.account, self.container, self.prefix = az.server.port, az.account, container, prefix
        self._key = base64.b64decode(az.key)
        self._local = threading.local()
        self._conns: list[http.client.HTTPConnection] = []

    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        path = f"/{self.account}/{self.container}/{self.prefix}/{key}"
        headers = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": self.API_VERSION,
                   "x-ms-blob-type": "BlockBlob", **{f"x-ms-meta-{k}": v for k, v in (metadata or {}).items()}}
        canonical = "".join(f"{k}:{headers[k]}\n" for k in sorted(headers))
        to_sign = f"PUT\n\n\n{len(data)}\n\n\n\n\n\n\n\n\n{canonical}/{self.account}{path}"
        signature = base64.b64encode(hmac.new(self._key, to_sign.encode(), hashlib.sha256).digest()).decode()
        headers.update({"Authorization": f"SharedKey {self.account}:{signature}", "Content-Length": str(len(data))})
        for attempt in (1, 2):  # once more on a fresh connection if Azurite closed the kept-alive one
            conn = self._conn(fresh=attempt == 2)
            try:
                conn.request("PUT", path, body=data, headers=headers)
                reply = conn.getresponse()
                body = reply.read()
            except (http.client.HTTPException, ConnectionError):
                if attempt == 2:
                    raise
                continue
            if reply.status != 201:
                raise RuntimeError(f"pre-fill put of {key}: HTTP {reply.status} {body[:200]!r}")
            return

    def _conn(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self._conns.append(conn)
        return conn

    def close(self) -> None:
        for conn in self._conns:
            conn.close()


# --- timing: rounds of engines, the order rotated, round 0 a warm-up ------------------------------------------

#: an engine prepares (untimed) and returns (the timed run returning leaf values, the untimed cleanup)
Engine = Callable[[], tuple[Callable[[], Any], Callable[[], None]]]


def time_rounds(engines: dict[str, Engine], repeats: int, label: str) -> tuple[dict[str, list[float]], str]:
    """Round 0 warms up; then ``repeats`` rounds, one run per engine each, the order rotated per round.
    Every run's leaves must have the same checksum (AssertionError naming the engine otherwise)."""
    names = list(engines)
    times: dict[str, list[float]] = {n: [] for n in names}
    want: str | None = None
    for r in range(repeats + 1):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, cleanup = engines[name]()
            try:
                t0 = time.perf_counter()
                leaves = fn()
                elapsed = time.perf_counter() - t0
            finally:
                cleanup()
            got = checksum(leaves)
            if want is None:
                want = got
            elif got != want:
                raise AssertionError(f"{label}: engine {name!r} computed other leaf values ({got} != {want})")
            if r:
                times[name].append(elapsed)
        log.info("%s: round %d done", label, r)
    assert want is not None
    return times, want


def check_stored(storage: Storage, nodes: int, label: str) -> None:
    """Every node's output is in ``storage`` once ``run()`` has returned (a run that is fast because its
    checkpoints are still being written would not be a checkpointed run)."""
    stored = sum(1 for _ in storage.list("objects/"))
    if stored != nodes:
        raise AssertionError(f"{label}: run() returned with {stored} stored outputs for {nodes} nodes")


def local_engine(root: str, run: Callable[[str], Any], nodes: int | None = None) -> Engine:
    """An engine on a fresh folder under ``root`` per run (made before; after the run, if ``nodes``, checked to
    hold that many outputs, then removed)."""
    def prepare() -> tuple[Callable[[], Any], Callable[[], None]]:
        folder = tempfile.mkdtemp(prefix="run-", dir=root)

        def cleanup() -> None:
            try:
                if nodes is not None:
                    check_stored(open_storage(folder), nodes, f"odibi on {folder}")
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        return (lambda: run(folder)), cleanup
    return prepare


def azurite_engine(az: Azurite, run: Callable[[str], Any], prefix: str | None = None,
                   nodes: int | None = None) -> Engine:
    """An engine on a fresh Azurite container per run (made before; after the run, if ``nodes``, checked to
    hold that many outputs under ``prefix``, then deleted)."""
    def prepare() -> tuple[Callable[[], Any], Callable[[], None]]:
        container = az.new_container()

        def cleanup() -> None:
            try:
                if nodes is not None and prefix is not None:
                    check_stored(az.storage(container, prefix), nodes, f"odibi on Azurite {container}")
            finally:
                az.drop_container(container)
        return (lambda: run(container)), cleanup
    return prepare


def plain_engine(run: Callable[[], Any]) -> Engine:
    return lambda: (run, lambda: None)


def layered_engines(shape: Shape, root: str, az: Azurite | None) -> dict[str, Engine]:
    """The six engines of scenario 1 for ``shape`` (the Azurite ones only with ``az``)."""
    dag = build_dag(shape)
    leaves = shape.leaves
    engines: dict[str, Engine] = {
        "raw_ray": plain_engine(lambda: run_raw(shape)),
        "floor_local": local_engine(root, lambda folder: run_raw(shape, ("local", folder))),
        "odibi_local": local_engine(root, lambda folder: run_odibi(dag, leaves, folder), len(shape)),
        "odibi_nostore": plain_engine(lambda: run_odibi(dag, leaves)),
    }
    if az is not None:
        prefix = f"run-{uuid.uuid4().hex[:12]}"
        engines["floor_azurite"] = azurite_engine(
            az, lambda c: run_raw(shape, ("azure", az.conn_str, c, prefix)))
        engines["odibi_azurite"] = azurite_engine(
            az, lambda c: run_odibi(dag, leaves, az.uri(c, prefix), az.options), prefix, len(shape))
    return {n: engines[n] for n in LAYERED_ENGINES if n in engines}


# --- scenario 2: resume -------------------------------------------------------------------------------------

def resume_once(shape: Shape, storage: str, options: dict[str, Any] | None, flag: str,
                want: str) -> tuple[float, float, Counter]:
    """A failed run (last level raises; not timed in the figure), then the timed ``resume="latest"`` run.
    Returns (failed run s, resume s, the resumed run's status counts)."""
    dag = build_dag(shape, fail_flag_path=flag)
    last = set(shape.levels[-1])
    open(flag, "w").close()
    quiet = logging.getLogger("odibi_ray")  # one log line per node failed on purpose: not news
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        t0 = time.perf_counter()
        failed = odibi_ray.run(dag, storage=storage, storage_options=options, progress=False)
        t_failed = time.perf_counter() - t0
    finally:
        quiet.setLevel(level)
        os.remove(flag)
    bad = {n for n, rec in failed.nodes.items() if rec.status.value != "succeeded"}
    if bad != last:
        raise AssertionError(f"resume setup: expected exactly the last level to fail, got {len(bad)} non-succeeded "
                             f"nodes ({failed.summary()})")
    t0 = time.perf_counter()
    result = odibi_ray.run(dag, storage=storage, storage_options=options, resume="latest", progress=False)
    t_resume = time.perf_counter() - t0  # the run() call only: the leaves are fetched below, untimed
    result.raise_for_status()
    leaves = result.outputs(shape.leaves)
    not_reused = [n for n in shape.order if n not in last and result.nodes[n].status.value not in ("resumed", "cached")]
    if not_reused:
        raise AssertionError(f"resume: {len(not_reused)} earlier-level node(s) ran again, e.g. {not_reused[:5]}")
    if checksum(leaves) != want:
        raise AssertionError("resume: the resumed run's leaves differ from raw Ray's")
    return t_failed, t_resume, Counter(rec.status.value for rec in result.nodes.values())


def bench_resume(shape: Shape, fresh: Callable[[], tuple[str, dict[str, Any] | None, Callable[[], None]]],
                 root: str, repeats: int, want: str) -> dict[str, Any]:
    """``repeats`` timed resumes after one warm-up, each on a fresh store from ``fresh()``."""
    failed_s, resume_s = [], []
    statuses: Counter = Counter()
    for r in range(repeats + 1):
        storage, options, cleanup = fresh()
        try:
            t_failed, t_resume, statuses = resume_once(shape, storage, options, os.path.join(root, "fail.flag"), want)
        finally:
            cleanup()
        if r:
            failed_s.append(t_failed)
            resume_s.append(t_resume)
    return {"resume": summary(resume_s), "failed_run": summary(failed_s), "statuses": dict(statuses),
            "target_s": RESUME_TARGET_S, "meets_target": statistics.median(resume_s) <= RESUME_TARGET_S}


# --- scenario 3: plan time on an empty vs a full store -------------------------------------------------------

@dataclass(frozen=True)
class ForeignStyle:
    """How the engine stores a node output: under its pipeline (``objects/<pipeline>/<k[:2]>/<k>``) or flat
    (``objects/<k[:2]>/<k>``), and with which metadata fields (values are replaced per foreign object)."""

    per_pipeline: bool
    metadata: dict[str, str]


def probe_style(root: str) -> ForeignStyle:
    """Find out where and with what metadata the engine under test stores outputs: one 1-node run on a scratch
    folder (so the foreign objects look like this engine's, whatever its layout)."""
    folder = tempfile.mkdtemp(prefix="probe-", dir=root)
    try:
        dag = DAG("bench_probe")
        dag.add_node(Node("probe", small_source, params={"v": 1}))
        odibi_ray.run(dag, storage=folder, progress=False).raise_for_status()
        objects = list(open_storage(folder).list("objects/", with_metadata=True))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if len(objects) != 1:
        raise AssertionError(f"probe: expected 1 stored object under objects/, found {[o.key for o in objects]}")
    return ForeignStyle(objects[0].key.split("/")[1] == "bench_probe", dict(objects[0].metadata))


FLAT_STYLE = ForeignStyle(False, {"sha256": "", "size": "", "codec": "pickle", "created": "", "expires_at": "",
                                  "node": ""})


def foreign_object(rng: random.Random, style: ForeignStyle) -> tuple[str, bytes, dict[str, str]]:
    """One object of another pipeline (one of 20), keyed and described as ``style`` says."""
    key = f"{rng.getrandbits(256):064x}"
    pipeline = f"other_{rng.randrange(20):02d}"
    data = rng.randbytes(rng.randrange(8, 64))
    meta = dict(style.metadata, sha256=hashlib.sha256(data).hexdigest(), size=str(len(data)),
                created=f"{time.time():.6f}")
    for name, value in (("node", f"n{rng.randrange(1000):03d}"), ("pipeline", pipeline),
                        ("run_id", f"r{rng.getrandbits(48):012x}")):
        if name in meta:
            meta[name] = value
    folder = f"objects/{pipeline}/" if style.per_pipeline else "objects/"
    return f"{folder}{key[:2]}/{key}", data, meta


class Putter(Protocol):
    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> Any: ...


def prefill(storage: Putter, count: int, threads: int, style: ForeignStyle, seed: int = 0) -> tuple[float, list[str]]:
    """Put ``count`` foreign objects into ``storage`` with ``threads`` threads (a failed put raises); the seconds
    it took and the keys written."""
    t0 = time.perf_counter()
    per = -(-count // threads)

    def fill(t: int) -> list[str]:
        rng = random.Random(f"prefill-{seed}-{t}")
        keys = []
        for _ in range(max(0, min(per, count - t * per))):
            key, data, meta = foreign_object(rng, style)
            storage.put(key, data, meta)
            keys.append(key)
        return keys

    with ThreadPoolExecutor(threads) as pool:
        keys = [k for part in pool.map(fill, range(threads)) for k in part]
    return time.perf_counter() - t0, keys


def check_filled(storage: Storage, keys: list[str], style: ForeignStyle, sample: int = 20) -> None:
    """A sample of the pre-filled objects reads back through the adapter with the metadata written (the fill is
    where the plan looks; listing all of them would cost Azurite minutes)."""
    want = set(style.metadata) | {"sha256", "size", "created"}
    for key in random.Random(0).sample(keys, min(sample, len(keys))):
        info = storage.head(key)
        if set(info.metadata) != want or info.metadata["size"] != str(info.size):
            raise AssertionError(f"plan: a pre-filled object reads back with other metadata: {dict(info.metadata)}")


def plan_once(dag: DAG, order: list[str], storage: Storage) -> float:
    """One timed ``plan_checkpoints`` (a fresh run id); it must find nothing to reuse."""
    from odibi_ray.checkpoint.plan import plan_checkpoints

    t0 = time.perf_counter()
    plan = plan_checkpoints(dag, order, storage, f"bench-{uuid.uuid4().hex[:12]}")
    elapsed = time.perf_counter() - t0
    # keys cover inputs' data versions: on a store without this pipeline's outputs only the first level is keyed
    if plan.reuse or set(plan.keys) | plan.deferred != set(order):
        raise AssertionError(f"plan: {len(plan.reuse)} node(s) reused on a store without this pipeline's objects")
    return elapsed


def bench_plan(shape: Shape, stores: dict[str, Storage], count: int, threads: int, style: ForeignStyle,
               repeats: int, filler: Putter | None = None) -> dict[str, Any]:
    """Pre-fill ``stores["full"]`` (not timed; through ``filler`` if given, else its ``put``), then plan on every
    store in turn, the order rotated per round (round 0 a warm-up). ``stores`` has at least "empty" and "full"."""
    fill_s, keys = prefill(filler or stores["full"], count, threads, style)
    check_filled(stores["full"], keys, style)
    dag = build_dag(shape)
    order = [n for lvl in dag.levels() for n in lvl]
    names = list(stores)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats + 1):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t = plan_once(dag, order, stores[name])
            if r:
                times[name].append(t)
    figs = {n: summary(ts) for n, ts in times.items()}
    ratio = round(figs["full"]["median_s"] / figs["empty"]["median_s"], 3)
    return {"objects": count, "prefill_s": round(fill_s, 2), "prefill_threads": threads, **figs, "ratio": ratio,
            "target": PLAN_TARGET, "meets_target": ratio <= PLAN_TARGET}


# --- scenario 4: a chain on a store with 20 ms per call --------------------------------------------------------

#: storage calls made in this process through LatencyStorage, by method (the driver's, when read in the driver)
CALLS: Counter = Counter()


class LatencyStorage(Storage):
    """Delegates every call to ``inner`` after sleeping ``latency_s`` (plus one more sleep per further 5000
    listed objects, as a paged listing costs). Pickles as (inner's class and state, latency_s) through
    ``Storage.__reduce__``, which uses ``__getstate__``/``__setstate__``.

    The inner adapter is kept as its class and ``__getstate__``, not as the adapter itself: unpickling a
    Storage goes through ``storage.base._restore``, which holds a (non-reentrant) lock while it calls
    ``__setstate__``, so an inner adapter pickled whole would call ``_restore`` again under that lock and
    hang the worker (seen with odibi_ray up to 8e742ea; this way works with or without that lock).
    ``local_lookups`` stays False (the Storage default): this is a remote store, a request per call."""

    PAGE = 5000

    def __init__(self, inner: Storage, latency_s: float = LATENCY_S) -> None:
        self.inner, self.latency_s = inner, latency_s
        self.uri = f"latency+{inner.uri}"

    def __getstate__(self) -> dict[str, Any]:
        return {"inner_cls": type(self.inner), "inner_state": self.inner.__getstate__(),  # type: ignore[attr-defined]
                "latency_s": self.latency_s}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        inner = state["inner_cls"].__new__(state["inner_cls"])
        inner.__setstate__(state["inner_state"])
        self.__init__(inner, state["latency_s"])  # type: ignore[misc]

    def _wait(self, method: str) -> None:
        CALLS[method] += 1
        time.sleep(self.latency_s)

    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None, *,
            if_none_match: bool = False, if_match: str | None = None) -> ObjectInfo:
        self._wait("put")
        return self.inner.put(key, data, metadata, if_none_match=if_none_match, if_match=if_match)

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        self._wait("get")
        return self.inner.get(key, start, end)

    def get_with_info(self, key: str) -> tuple[bytes, ObjectInfo]:
        self._wait("get_with_info")
        return self.inner.get_with_info(key)

    def head(self, key: str) -> ObjectInfo:
        self._wait("head")
        return self.inner.head(key)

    def list(self, prefix: str = "", *, with_metadata: bool = False) -> Iterator[ObjectInfo]:
        self._wait("list")
        for i, info in enumerate(self.inner.list(prefix, with_metadata=with_metadata)):
            if i and i % self.PAGE == 0:
                self._wait("list_page")
            yield info

    def delete(self, key: str, *, missing_ok: bool = True) -> bool:
        self._wait("delete")
        return self.inner.delete(key, missing_ok=missing_ok)

    def delete_prefix(self, prefix: str) -> int:
        self._wait("delete_prefix")
        return self.inner.delete_prefix(prefix)

    def exists(self, key: str) -> bool:
        self._wait("exists")
        return self.inner.exists(key)

    def close(self) -> None:
        closer = getattr(self.inner, "close", None)
        if closer is not None:
            closer()


def chain_engines(shape: Shape, root: str, latency_s: float) -> dict[str, Engine]:
    """The engines of scenario 4 (raw Ray and a plain folder for reference)."""
    dag, leaves = build_dag(shape), shape.leaves
    return {
        "raw_ray": plain_engine(lambda: run_raw(shape)),
        "odibi_nostore": plain_engine(lambda: run_odibi(dag, leaves)),
        "odibi_local": local_engine(root, lambda folder: run_odibi(dag, leaves, folder), len(shape)),
        "odibi_latency": local_engine(root, lambda folder: run_odibi(
            dag, leaves, LatencyStorage(open_storage(folder, fsync=False), latency_s)), len(shape)),
    }


# --- reporting --------------------------------------------------------------------------------------------

def summary(ts: list[float]) -> dict[str, Any]:
    return {"median_s": round(statistics.median(ts), 4), "min_s": round(min(ts), 4),
            "all_s": [round(t, 4) for t in ts]}


def ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    return round(a["median_s"] / b["median_s"], 3)


def verdict(value: float, target: float) -> str:
    return f"target <= {target}: {'ok' if value <= target else 'MISSED'}"


def layered_report(case: str, shape: Shape, times: dict[str, list[float]], digest: str) -> dict[str, Any]:
    figs = {n: summary(ts) for n, ts in times.items()}
    ratios = {f"{n}/raw_ray": ratio(figs[n], figs["raw_ray"]) for n in figs if n != "raw_ray"}
    ratios_min, checks = {}, {}
    for odibi, floor in (("odibi_local", "floor_local"), ("odibi_azurite", "floor_azurite")):
        if odibi in figs and floor in figs:
            ratios[f"{odibi}/{floor}"] = r = ratio(figs[odibi], figs[floor])
            ratios_min[f"{odibi}/{floor}"] = round(figs[odibi]["min_s"] / figs[floor]["min_s"], 3)
            checks[f"{odibi}/{floor}"] = r <= FLOOR_TARGET
    return {"case": case, "nodes": len(shape), "levels": len(shape.levels), "width": len(shape.levels[0]),
            "output": "100 KB bytes" if shape.kind == "big" else "int", "engines": figs, "ratios": ratios,
            "ratios_of_min": ratios_min, "target": FLOOR_TARGET, "meets_target": checks, "checksum": digest}


def print_layered(rec: dict[str, Any]) -> None:
    print(f"\n[layered] {rec['case']}: {rec['nodes']} nodes = {rec['levels']} x {rec['width']}, "
          f"outputs {rec['output']}")
    print(f"  {'engine':<15} {'median s':>9} {'min s':>8}  {'vs raw_ray':>10}  vs floor")
    figs, ratios = rec["engines"], rec["ratios"]
    for n, f in figs.items():
        floor = {"odibi_local": "floor_local", "odibi_azurite": "floor_azurite"}.get(n)
        vs_floor = (f"{ratios[f'{n}/{floor}']:.3f} ({verdict(ratios[f'{n}/{floor}'], FLOOR_TARGET)})"
                    if floor and f"{n}/{floor}" in ratios else "")
        vs_raw = "1.000" if n == "raw_ray" else f"{ratios[f'{n}/raw_ray']:.3f}"
        print(f"  {n:<15} {f['median_s']:>9.3f} {f['min_s']:>8.3f}  {vs_raw:>10}  {vs_floor}")


def print_resume(where: str, rec: dict[str, Any], nodes: int) -> None:
    r = rec["resume"]
    print(f"  {where:<8} resume {r['median_s']:.3f} s median (min {r['min_s']:.3f}; "
          f"{verdict(r['median_s'], RESUME_TARGET_S)}), the failed run before it "
          f"{rec['failed_run']['median_s']:.3f} s; {nodes} nodes: {rec['statuses']}")


def print_plan(where: str, rec: dict[str, Any]) -> None:
    beside = (f"; an empty prefix in the full store's container {rec['empty_beside']['median_s']:.4f} s"
              if "empty_beside" in rec else "")
    print(f"  {where:<8} empty {rec['empty']['median_s']:.4f} s, full ({rec['objects']:,} foreign objects, filled "
          f"in {rec['prefill_s']:.0f} s) {rec['full']['median_s']:.4f} s: {rec['ratio']:.2f}x "
          f"({verdict(rec['ratio'], PLAN_TARGET)}){beside}")


def print_chain(rec: dict[str, Any]) -> None:
    figs = rec["engines"]
    print(f"\n[latency] {rec['nodes']}-node chain; LatencyStorage = local folder + {rec['latency_s'] * 1000:.0f} ms "
          "before every storage call")
    print(f"  {'engine':<15} {'median s':>9} {'min s':>8}  vs odibi_nostore")
    for n, f in figs.items():
        note = f"{f['median_s'] / figs['odibi_nostore']['median_s']:.3f}"
        if n == "odibi_latency":
            note += f" ({verdict(rec['ratio'], LATENCY_TARGET)})"
        print(f"  {n:<15} {f['median_s']:>9.3f} {f['min_s']:>8.3f}  {note}")
    print(f"  driver storage calls in the last odibi_latency run: {rec['driver_calls_per_run']}")


# --- main -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sizes:
    cases: dict[str, tuple[int, int, str]]  # case -> (levels, width, kind)
    resume: tuple[int, int]
    prefill: int
    chain: int


SIZES = {
    "full": Sizes({"300_small": (15, 20, "small"), "1000_small": (20, 50, "small"), "300_100KB": (15, 20, "big")},
                  (20, 50), 100_000, 100),
    "quick": Sizes({"300_small": (15, 20, "small"), "300_100KB": (15, 20, "big")}, (20, 50), 20_000, 100),
    "tiny": Sizes({"20_small": (4, 5, "small"), "20_100KB": (4, 5, "big")}, (4, 5), 300, 10),
}
SCENARIOS = ("layered", "resume", "latency", "plan")  # plan last: Azurite is busy after its 100,000 puts


def start_ray() -> bool:
    """A local Ray (2 CPUs, 127.0.0.1, no dashboard) unless one is up already; whether it was started here."""
    if ray.is_initialized():
        return False
    ray.init(address="local", num_cpus=NUM_CPUS, include_dashboard=False, object_store_memory=300 * MB,
             logging_level="warning", _node_ip_address="127.0.0.1")
    return True


def scenario_layered(sizes: Sizes, root: str, az: Azurite | None, repeats: int, seed: int) -> list[dict[str, Any]]:
    out = []
    for case, (n_levels, width, kind) in sizes.cases.items():
        shape = layered(n_levels, width, kind, seed)
        times, digest = time_rounds(layered_engines(shape, root, az), repeats, f"layered {case}")
        rec = layered_report(case, shape, times, digest)
        print_layered(rec)
        out.append(rec)
    return out


def scenario_resume(sizes: Sizes, root: str, az: Azurite | None, repeats: int, seed: int) -> dict[str, Any]:
    shape = layered(*sizes.resume, "small", seed)
    want = checksum(run_raw(shape))

    def fresh_local() -> tuple[str, None, Callable[[], None]]:
        folder = tempfile.mkdtemp(prefix="resume-", dir=root)
        return folder, None, lambda: shutil.rmtree(folder, ignore_errors=True)

    def fresh_azurite() -> tuple[str, dict[str, Any], Callable[[], None]]:
        assert az is not None
        container = az.new_container()
        return az.uri(container, "resume"), az.options, lambda: az.drop_container(container)

    print(f"\n[resume] {len(shape)} nodes = {sizes.resume[0]} x {sizes.resume[1]}, the last level failed once; "
          "timed: run(..., resume='latest')")
    out: dict[str, Any] = {"nodes": len(shape), "levels": sizes.resume[0], "width": sizes.resume[1]}
    for where, fresh in (("local", fresh_local), ("azurite", fresh_azurite)):
        if where == "azurite" and az is None:
            continue
        out[where] = bench_resume(shape, fresh, root, repeats, want)
        print_resume(where, out[where], len(shape))
    return out


def scenario_plan(sizes: Sizes, root: str, az: Azurite | None, repeats: int, seed: int, cut: bool,
                  flat: bool) -> dict[str, Any]:
    shape = layered(*sizes.resume, "small", seed)
    style = FLAT_STYLE if flat else probe_style(root)
    where = "objects/<pipeline>/<k[:2]>/<k>" if style.per_pipeline else "objects/<k[:2]>/<k>"
    print(f"\n[plan] plan_checkpoints for {len(shape)} nodes: empty store vs {sizes.prefill:,} objects of 20 other "
          f"pipelines" + (" (cut from 100,000 by --quick)" if cut else "") + f", stored as {where} with "
          f"{'the layout-1 metadata (--foreign-layout flat)' if flat else 'the metadata this engine writes'}")
    out: dict[str, Any] = {"nodes": len(shape), "prefill": sizes.prefill, "prefill_cut_by_quick": cut,
                           "foreign_keys": where, "foreign_metadata": sorted(style.metadata)}
    local = {n: open_storage(tempfile.mkdtemp(prefix=f"plan-{n}-", dir=root), fsync=False) for n in ("empty", "full")}
    plan_repeats = max(3 * repeats, 9)  # a plan takes milliseconds: more repeats, steadier medians
    out["local"] = bench_plan(shape, local, sizes.prefill, 4, style, plan_repeats)
    print_plan("local", out["local"])
    if az is not None:
        # The empty store has its own container; "empty_beside" is an empty prefix in the full store's container,
        # to tell the engine's cost from Azurite's (its in-memory listing may slow down with the container's size).
        # The containers are not dropped: deleting 100,000 blobs keeps Azurite busy for minutes (it stops next).
        full_container = az.new_container()
        stores = {"empty": az.storage(az.new_container(), "empty"), "full": az.storage(full_container, "full"),
                  "empty_beside": az.storage(full_container, "empty")}
        putter = BlobPutter(az, full_container, "full")
        try:
            out["azurite"] = bench_plan(shape, stores, sizes.prefill, AZURITE_PREFILL_THREADS, style, plan_repeats,
                                        putter)
        finally:
            putter.close()
        print_plan("azurite", out["azurite"])
    return out


def scenario_latency(sizes: Sizes, root: str, repeats: int, latency_s: float) -> dict[str, Any]:
    shape = chain(sizes.chain)
    engines = chain_engines(shape, root, latency_s)
    counted = engines["odibi_latency"]
    calls: list[Counter] = []

    def counting() -> tuple[Callable[[], Any], Callable[[], None]]:
        fn, cleanup = counted()
        before = CALLS.copy()

        def done() -> None:
            calls.append(CALLS - before)
            cleanup()
        return fn, done

    engines["odibi_latency"] = counting
    times, digest = time_rounds(engines, repeats, "latency chain")
    figs = {n: summary(ts) for n, ts in times.items()}
    per_run = calls[-1] if calls else Counter()
    rec = {"nodes": len(shape), "latency_s": latency_s, "engines": figs,
           "ratio": ratio(figs["odibi_latency"], figs["odibi_nostore"]), "target": LATENCY_TARGET,
           "driver_calls_per_run": dict(sorted(per_run.items())), "checksum": digest}
    rec["meets_target"] = rec["ratio"] <= LATENCY_TARGET
    print_chain(rec)
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="no 1000-node layered case; pre-fill the plan stores with 20,000 objects, not 100,000")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (the tests): figures are meaningless")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up (medians need >= 3)")
    ap.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    ap.add_argument("--no-azurite", action="store_true", help="skip every Azurite engine")
    ap.add_argument("--foreign-layout", choices=("engine", "flat"), default="engine",
                    help="plan scenario: store the foreign objects where this engine stores outputs (default, found "
                         "by a probe run) or flat at objects/<k[:2]>/<k> (layout 1)")
    ap.add_argument("--latency-ms", type=float, default=LATENCY_S * 1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario(s) {sorted(unknown)}; expected some of {','.join(SCENARIOS)}")
    if args.repeats < 3:
        print(f"warning: --repeats {args.repeats} < 3: medians are not meaningful", file=sys.stderr)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # 32 pre-fill threads, a pool of 10
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    sizes = SIZES[mode]

    t_start = time.perf_counter()
    root = tempfile.mkdtemp(prefix="bench-checkpoint-")
    started = start_ray()
    az = None if args.no_azurite else Azurite()
    out: dict[str, Any] = {"benchmark": "bench_checkpoint", "mode": mode, "repeats": args.repeats, "seed": args.seed,
                           "ray_num_cpus": ray.cluster_resources().get("CPU"), "machine_cpus": os.cpu_count(),
                           "azurite": az is not None}
    print(f"bench_checkpoint ({mode}): one Ray ({out['ray_num_cpus']:.0f} CPUs) on {os.cpu_count()} cores; "
          f"{args.repeats} timed rounds after a warm-up round, engine order rotated per round; medians")
    scenarios: dict[str, Callable[[], Any]] = {
        "layered": lambda: scenario_layered(sizes, root, az, args.repeats, args.seed),
        "resume": lambda: scenario_resume(sizes, root, az, args.repeats, args.seed),
        "latency": lambda: scenario_latency(sizes, root, args.repeats, args.latency_ms / 1000.0),
        "plan": lambda: scenario_plan(sizes, root, az, args.repeats, args.seed, cut=mode == "quick",
                                      flat=args.foreign_layout == "flat"),
    }
    errors: dict[str, str] = {}
    load: dict[str, list[float]] = {}  # 1-minute load average before and after each scenario (other work shows)
    try:
        for name in (s for s in SCENARIOS if s in only):
            load[name] = [round(os.getloadavg()[0], 2)]
            try:
                out[name] = scenarios[name]()
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others' figures
                log.exception("scenario %s failed", name)
                errors[name] = f"{type(exc).__name__}: {exc}"[:500]
                print(f"\n[{name}] FAILED: {errors[name]}")
            load[name].append(round(os.getloadavg()[0], 2))
    finally:
        if az is not None:
            az.close()
        if started:
            ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    out["errors"], out["loadavg_1m"] = errors, load
    out["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    print(f"\n{out['elapsed_s']:.0f} s in all; 1-minute load average before/after each scenario: "
          + ", ".join(f"{k} {v[0]:.1f}/{v[-1]:.1f}" for k, v in load.items())
          + (f"; FAILED scenarios: {', '.join(errors)}" if errors else ""))
    sys.stdout.flush()
    print(json.dumps(out), flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    # Run the module under its import name, so Ray pickles the node functions, the task bodies and
    # LatencyStorage by reference and the workers import them (as they would a user's pipeline module),
    # rather than shipping copies of ``__main__``'s functions by value.
    from benchmarks import bench_checkpoint

    sys.exit(bench_checkpoint.main())
