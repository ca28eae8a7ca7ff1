"""One runner per engine for ``benchmarks.run``; run as ``python -m benchmarks.engines`` it times ONE engine.

``benchmarks.run`` starts this module once per engine (one process per engine, so engines never share a
Ray instance, a Dask cluster or imported state), passing the cases as JSON on stdin; the last line of
stdout is one JSON object with every case's timings and a checksum of its leaf values.

The seeded DAG shapes are plain data, shared by every engine: ``nodes`` maps each node name (in a
topological order) to its input names (0, 1 or 2 of them); ``sleep_ms`` is each node's seeded sleep.
Node bodies are module-level functions so every engine's workers import the same code. Heavy imports
(ray, odibi_ray, distributed) happen inside the runner of the engine that needs them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any
from collections.abc import Callable

# Before ray / distributed are imported (network safety: no usage stats, local cluster only, no proxy).
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["HTTP_PROXY"] = os.environ["HTTPS_PROXY"] = "http://127.0.0.1:9"
os.environ["http_proxy"] = os.environ["https_proxy"] = "http://127.0.0.1:9"
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,127.0.0.0/8,::1"

log = logging.getLogger("benchmarks.engines")

SHAPES = ("wide", "chain", "layered20", "diamond")
BODIES = ("noop", "sleep")
MAX_SLEEP_MS = 20.0

Shape = dict[str, Any]  # {"nodes": {name: [input names]}, "sleep_ms": {name: ms}, "leaves": [names]}


# --- DAG shapes (seeded plain data) ---------------------------------------------------------------

def make_shape(kind: str, size: int, seed: int) -> Shape:
    """Build the seeded shape ``kind`` with about ``size`` nodes (exact for chain, wide and diamond)."""
    if kind not in SHAPES:
        raise ValueError(f"unknown shape {kind!r}; expected one of {', '.join(SHAPES)}")
    if size < 4:
        raise ValueError(f"size must be >= 4, got {size}")
    rng = random.Random(f"{kind}-{size}-{seed}")
    nodes: dict[str, list[str]] = {}
    if kind == "chain":  # deep chain: every node takes the one before it
        names = [f"c{i:05d}" for i in range(size)]
        for i, n in enumerate(names):
            nodes[n] = [names[i - 1]] if i else []
    elif kind in ("wide", "layered20"):  # random layered DAG (bench_overhead's shape): 2 inputs from level k-1
        n_levels = 2 if kind == "wide" else 20
        per = max(2, size // n_levels)
        levels = [[f"l{k:02d}_{i:05d}" for i in range(per)] for k in range(n_levels)]
        for k, level in enumerate(levels):
            for n in level:
                nodes[n] = sorted(rng.sample(levels[k - 1], 2)) if k else []
    else:  # diamond lattice: width w, node (k, j) takes (k-1, j) and (k-1, j+1 mod w)
        w = max(2, round(math.sqrt(size)))
        depth = max(2, size // w)
        grid = [[f"d{k:03d}_{j:03d}" for j in range(w)] for k in range(depth)]
        for k, row in enumerate(grid):
            for j, n in enumerate(row):
                nodes[n] = [grid[k - 1][j], grid[k - 1][(j + 1) % w]] if k else []
    consumed = {u for ups in nodes.values() for u in ups}
    return {"nodes": nodes, "sleep_ms": {n: rng.uniform(0.0, MAX_SLEEP_MS) for n in nodes},
            "leaves": [n for n in nodes if n not in consumed]}


def checksum(leaves: dict[str, int]) -> int:
    """Fingerprint (independent of dict order) of the leaf values (every engine must compute the same one)."""
    return sum(v * (i + 1) for i, (_, v) in enumerate(sorted(leaves.items()))) & 0xFFFFFFFF


# --- node bodies (the same functions for every engine) --------------------------------------------

def body(*ups: int, ms: float = 0.0) -> int:
    """Positional-input body used by raw Ray and Dask: optional sleep, then a cheap combine."""
    if ms:
        time.sleep(ms / 1000.0)
    return (sum(ups) + 1) & 0xFFFF


def body0(ms: float = 0.0) -> int:
    """Source node body for odibi_ray (keyword inputs)."""
    return body(ms=ms)


def body1(a: int, ms: float = 0.0) -> int:
    """One-input node body for odibi_ray."""
    return body(a, ms=ms)


def body2(a: int, b: int, ms: float = 0.0) -> int:
    """Two-input node body for odibi_ray."""
    return body(a, b, ms=ms)


def _ms(shape: Shape, name: str, sleep: bool) -> float:
    return shape["sleep_ms"][name] if sleep else 0.0


# --- runners: each takes (shape, sleep) and returns the leaf values; setup/teardown per engine ------

def setup_ray(workers: int) -> Callable[[], None]:
    """Start a local Ray with ``workers`` CPUs (no dashboard); return its shutdown."""
    import ray

    ray.init(num_cpus=workers, include_dashboard=False, object_store_memory=200 * 1024**2,
             logging_level="warning", _node_ip_address="127.0.0.1")
    return ray.shutdown


def run_raw_ray(shape: Shape, sleep: bool) -> dict[str, int]:
    """Raw Ray: every node one task, submitted at once with its input ObjectRefs; wait, then get leaves."""
    import ray

    remote = ray.remote(body)
    refs: dict[str, Any] = {}
    for n, ups in shape["nodes"].items():
        refs[n] = remote.remote(*(refs[u] for u in ups), ms=_ms(shape, n, sleep))
    ray.wait(list(refs.values()), num_returns=len(refs), fetch_local=False)
    return dict(zip(shape["leaves"], ray.get([refs[n] for n in shape["leaves"]])))


def _odibi_dag(shape: Shape, sleep: bool) -> Any:
    from odibi_ray import DAG, Node

    fns = (body0, body1, body2)
    dag = DAG("bench_compare")
    for n, ups in shape["nodes"].items():
        ins = dict(zip(("a", "b"), ups))
        dag.add_node(Node(name=n, fn=fns[len(ups)], inputs=ins, params={"ms": _ms(shape, n, sleep)}, num_cpus=1))
    return dag


def run_odibi(shape: Shape, sleep: bool) -> dict[str, int]:
    """odibi_ray with storage off (DAG built inside the timing: it is part of what a user pays)."""
    import odibi_ray

    result = odibi_ray.run(_odibi_dag(shape, sleep), backend="ray", progress=False)
    result.raise_for_status()
    return result.outputs(shape["leaves"])


def run_odibi_ckpt_local(shape: Shape, sleep: bool) -> dict[str, int]:
    """odibi_ray with checkpoints to a fresh local folder per run (so nothing is ever cached)."""
    import odibi_ray

    folder = tempfile.mkdtemp(prefix="odibi_bench_ckpt_")
    try:
        result = odibi_ray.run(_odibi_dag(shape, sleep), backend="ray", progress=False, storage=folder)
        result.raise_for_status()
        return result.outputs(shape["leaves"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # inside the timing, but small next to the run


_azurite: dict[str, Any] = {}


def setup_ray_azurite(workers: int) -> Callable[[], None]:
    """Local Ray plus one in-memory Azurite on 127.0.0.1 (telemetry off) with one container for the runs."""
    from tests.storage.fixtures_azurite import ACCOUNT, ACCOUNT_KEY, AzuriteServer, new_container

    shutdown = setup_ray(workers)
    server = AzuriteServer().start()
    _azurite.update(server=server, container=new_container(server), account=ACCOUNT, key=ACCOUNT_KEY)

    def close() -> None:
        shutdown()
        server.close()
    return close


def run_odibi_ckpt_azurite(shape: Shape, sleep: bool) -> dict[str, int]:
    """odibi_ray with checkpoints to Azurite (the Azure Blob protocol), a fresh prefix per run (no cache hit)."""
    import uuid

    import odibi_ray

    uri = f"abfss://{_azurite['container']}@{_azurite['account']}.dfs.core.windows.net/run-{uuid.uuid4().hex[:12]}"
    result = odibi_ray.run(_odibi_dag(shape, sleep), backend="ray", progress=False, storage=uri,
                           storage_options={"endpoint": _azurite["server"].endpoint, "account_key": _azurite["key"]})
    result.raise_for_status()
    return result.outputs(shape["leaves"])


_dask_client: Any = None


def setup_dask(workers: int) -> Callable[[], None]:
    """Start a Dask LocalCluster of ``workers`` single-thread processes on 127.0.0.1; return its close."""
    global _dask_client
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    _dask_client = Client(cluster)

    def close() -> None:
        _dask_client.close()
        cluster.close()
    return close


def run_dask(shape: Shape, sleep: bool) -> dict[str, int]:
    """Dask distributed: every node one ``client.submit`` with its input futures; wait, gather leaves."""
    from distributed import wait

    futs: dict[str, Any] = {}
    for n, ups in shape["nodes"].items():
        futs[n] = _dask_client.submit(body, *(futs[u] for u in ups), ms=_ms(shape, n, sleep), pure=False)
    wait(list(futs.values()))
    values = _dask_client.gather([futs[n] for n in shape["leaves"]])
    return dict(zip(shape["leaves"], values))


# engine name -> (setup returning teardown, runner)
ENGINES: dict[str, tuple[Callable[[int], Callable[[], None]], Callable[[Shape, bool], dict[str, int]]]] = {
    "raw_ray": (setup_ray, run_raw_ray),
    "odibi_ray": (setup_ray, run_odibi),
    "odibi_ray_ckpt_local": (setup_ray, run_odibi_ckpt_local),
    "odibi_ray_ckpt_azurite": (setup_ray_azurite, run_odibi_ckpt_azurite),
    "dask": (setup_dask, run_dask),
}


def _register_prefect() -> None:
    """Prefect 3 + prefect-ray, when installed (the ``bench`` extra); its module sets Prefect's safety settings."""
    from benchmarks.engine_prefect import run_prefect, setup_prefect

    ENGINES["prefect_ray"] = (setup_prefect, run_prefect)


#: engines that also run the 10,000-node cases (the others stop at 5,000: issue 7)
BIG_ENGINES = ("raw_ray", "odibi_ray")
ENGINE_NAMES = tuple(ENGINES) + ("prefect_ray",)


def time_cases(engine: str, cases: list[dict[str, Any]], workers: int, repeats: int, seed: int,
               budget_s: float = float("inf")) -> dict[str, Any]:
    """Set up ``engine`` once, warm it up (one untimed 100-node run per body), then time each case
    ``repeats`` times, recording the leaf checksum of every run. A case is skipped (and says why) when
    the same shape and body at a smaller size, scaled linearly to this size, would take longer than
    ``budget_s`` per run."""
    if engine == "prefect_ray" and engine not in ENGINES:
        _register_prefect()
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINE_NAMES)}")
    setup, runner = ENGINES[engine]
    t0 = time.perf_counter()
    teardown = setup(workers)
    setup_s = time.perf_counter() - t0
    out: list[dict[str, Any]] = []
    last: dict[tuple[str, str], tuple[int, float]] = {}  # (shape, body) -> (size, slowest run) so far
    try:
        for body_kind in sorted({c["body"] for c in cases}):
            runner(make_shape("layered20", 100, seed + 1), body_kind == "sleep")  # warm workers and imports
        for case in cases:
            shape = make_shape(case["shape"], case["size"], seed)
            sleep = case["body"] == "sleep"
            rec: dict[str, Any] = {**case, "nodes": len(shape["nodes"])}
            prev = last.get((case["shape"], case["body"]))
            if prev is not None and prev[1] * case["size"] / prev[0] > budget_s:
                rec["skipped"] = (f"projected {prev[1] * case['size'] / prev[0]:.0f} s per run from the {prev[0]}-node "
                                  f"run ({prev[1]:.1f} s), over the {budget_s:.0f} s budget")
                out.append(rec)
                continue
            try:
                times, sums = [], []
                for _ in range(repeats):
                    t = time.perf_counter()
                    leaves = runner(shape, sleep)
                    times.append(time.perf_counter() - t)
                    sums.append(checksum(leaves))
                last[(case["shape"], case["body"])] = (case["size"], max(times))
                rec.update(checksum=sums[0], all_s=[round(t, 4) for t in times])
                if len(set(sums)) > 1:
                    rec["error"] = f"runs of one case gave different leaf checksums {sorted(set(sums))}"
            except Exception as exc:  # one failing case must not hide the others' figures
                log.exception("engine %s failed on %s", engine, case)
                rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
            log.info("%s %s", engine, rec)
            out.append(rec)
    finally:
        teardown()
    return {"engine": engine, "setup_s": round(setup_s, 3), "workers": workers, "repeats": repeats, "cases": out}


def main() -> int:
    """Read ``{"engine", "cases", "workers", "repeats", "seed", "budget_s"}`` as JSON on stdin; print the result
    JSON."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    req = json.load(sys.stdin)
    res = time_cases(req["engine"], req["cases"], int(req["workers"]), int(req["repeats"]), int(req["seed"]),
                     float(req.get("budget_s") or "inf"))
    sys.stdout.flush()
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
