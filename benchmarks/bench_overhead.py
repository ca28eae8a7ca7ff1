"""Driver overhead of odibi_ray against raw Ray tasks on the same seeded DAG shape.

Scenario A ("noop"): no-op node bodies; raw Ray tasks chained by object refs (all submitted at once)
vs ``odibi_ray.run(dag, backend="ray", progress=False)``. Target: odibi/raw <= 1.3.

Scenario B ("sleep"): each node sleeps a seeded 0-20 ms; odibi_ray vs raw Ray dependency-driven
(refs chained, as in A) vs raw Ray level barrier (submit a level, ray.get it, then the next).
Target: odibi/raw-dependency <= 1.05.

One Ray instance (num_cpus=8, no dashboard) serves the whole script, both scenarios. Each engine gets
one warm-up run, then the repeats of the engines are interleaved (the engine order rotates every
repeat) so machine drift hits all of them alike. The last line of stdout is one JSON object.

    python -m benchmarks.bench_overhead [--quick] [--profile]
    python benchmarks/bench_overhead.py --levels 20 --nodes-per-level 50 --repeats 3 --seed 0
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import statistics
import sys
import time
from typing import Any
from collections.abc import Callable

# Before ray is imported (network safety: no usage stats, local cluster only).
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray  # noqa: E402

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import odibi_ray  # noqa: E402
from odibi_ray import DAG, Node  # noqa: E402

NUM_CPUS = 8
NOOP_TARGET = 1.3
SLEEP_TARGET = 1.05
METRICS_TARGET = 1.10  # odibi_ray with metrics on vs off, up to 300 nodes (issue 16)
METRICS_TARGET_LARGE = 1.05  # from 1000 nodes
MAX_SLEEP_MS = 20.0


# --- DAG shape (plain structure, shared by every engine) ------------------------------------------

def make_shape(levels: int, per_level: int, seed: int) -> dict[str, Any]:
    """The seeded DAG shape as plain data.

    ``levels``: list of levels, each a list of node names. ``inputs``: each node's input names (2
    distinct random nodes of the previous level; none on level 0). ``sleep_ms``: each node's seeded
    sleep in [0, 20] ms (used by scenario B only).
    """
    if per_level < 2 and levels > 1:
        raise ValueError("need at least 2 nodes per level to pick 2 distinct inputs")
    rng = random.Random(seed)
    names: list[list[str]] = [[f"n{k:03d}_{i:03d}" for i in range(per_level)] for k in range(levels)]
    inputs: dict[str, tuple[str, ...]] = {}
    for k, level in enumerate(names):
        for name in level:
            inputs[name] = tuple(rng.sample(names[k - 1], 2)) if k > 0 else ()
    sleep_ms = {name: rng.uniform(0.0, MAX_SLEEP_MS) for level in names for name in level}
    return {"levels": names, "inputs": inputs, "sleep_ms": sleep_ms}


# --- node bodies (module level: the same functions for odibi_ray and raw Ray) ----------------------

def noop_source() -> int:
    return 0


def noop_combine(a: int, b: int) -> int:
    return (a + b + 1) & 0xFFFF


def sleep_source(ms: float) -> int:
    time.sleep(ms / 1000.0)
    return 0


def sleep_combine(a: int, b: int, ms: float) -> int:
    time.sleep(ms / 1000.0)
    return (a + b + 1) & 0xFFFF


_raw_noop_source = ray.remote(noop_source)
_raw_noop_combine = ray.remote(noop_combine)
_raw_sleep_source = ray.remote(sleep_source)
_raw_sleep_combine = ray.remote(sleep_combine)


# --- engines --------------------------------------------------------------------------------------

def build_dag(shape: dict[str, Any], sleep: bool) -> DAG:
    dag = DAG("bench_sleep" if sleep else "bench_noop")
    for level in shape["levels"]:
        for name in level:
            ups = shape["inputs"][name]
            ins = {"a": ups[0], "b": ups[1]} if ups else {}
            if sleep:
                fn = sleep_combine if ups else sleep_source
                params = {"ms": shape["sleep_ms"][name]}
            else:
                fn, params = (noop_combine if ups else noop_source), {}
            dag.add_node(Node(name=name, fn=fn, inputs=ins, params=params, num_cpus=1))
    return dag


def run_odibi(dag: DAG, metrics: bool = True) -> dict[str, Any]:
    result = odibi_ray.run(dag, backend="ray", progress=False, metrics=metrics)
    result.raise_for_status()
    return result.outputs(result.levels[-1])


def run_raw_deps(shape: dict[str, Any], sleep: bool) -> dict[str, Any]:
    """All tasks submitted at once, each receiving its input ObjectRefs; then ray.get of all refs."""
    refs: dict[str, Any] = {}
    sms = shape["sleep_ms"]
    for level in shape["levels"]:
        for name in level:
            ups = shape["inputs"][name]
            if sleep:
                refs[name] = (_raw_sleep_combine.remote(refs[ups[0]], refs[ups[1]], sms[name]) if ups
                              else _raw_sleep_source.remote(sms[name]))
            else:
                refs[name] = _raw_noop_combine.remote(refs[ups[0]], refs[ups[1]]) if ups else _raw_noop_source.remote()
    values = dict(zip(refs, ray.get(list(refs.values()))))
    return {name: values[name] for name in shape["levels"][-1]}


def run_raw_barrier(shape: dict[str, Any], sleep: bool) -> dict[str, Any]:
    """Level by level: submit one level, ray.get it, pass the values to the next."""
    values: dict[str, Any] = {}
    sms = shape["sleep_ms"]
    for level in shape["levels"]:
        refs = []
        for name in level:
            ups = shape["inputs"][name]
            if sleep:
                refs.append(_raw_sleep_combine.remote(values[ups[0]], values[ups[1]], sms[name]) if ups
                            else _raw_sleep_source.remote(sms[name]))
            else:
                refs.append(_raw_noop_combine.remote(values[ups[0]], values[ups[1]]) if ups
                            else _raw_noop_source.remote())
        values.update(zip(level, ray.get(refs)))
    return {name: values[name] for name in shape["levels"][-1]}


# --- timing ---------------------------------------------------------------------------------------

def time_engines(engines: dict[str, Callable[[], dict[str, Any]]], repeats: int) -> dict[str, list[float]]:
    """One warm-up per engine (its leaf values must agree with the others), then interleaved repeats."""
    names = list(engines)
    reference: dict[str, Any] | None = None
    for name in names:
        leaves = engines[name]()
        if reference is None:
            reference = leaves
        elif leaves != reference:
            raise AssertionError(f"engine {name!r} computed different leaf values from {names[0]!r}")
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate: nobody always goes first
        for name in order:
            t0 = time.perf_counter()
            engines[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def summary(ts: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(ts), 4), "min_s": round(min(ts), 4),
            "all_s": [round(t, 4) for t in ts]}


def profile_odibi(dag: DAG, top: int = 25) -> None:
    prof = cProfile.Profile()
    prof.enable()
    run_odibi(dag)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
    print(f"--- cProfile of one odibi_ray run of {dag!r} (top {top}, cumulative) ---", file=sys.stderr)
    print(buf.getvalue(), file=sys.stderr)


def print_table(rows: list[tuple[str, str, dict[str, float], str]], title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text fallback
        print(title)
        print(f"{'scenario':<8} {'engine':<22} {'median s':>9} {'min s':>9}  ratio (median / min)")
        for scen, eng, s, ratio in rows:
            print(f"{scen:<8} {eng:<22} {s['median_s']:>9.3f} {s['min_s']:>9.3f}  {ratio}")
        return
    table = Table(title=title)
    for col, just in (("scenario", "left"), ("engine", "left"), ("median s", "right"), ("min s", "right"),
                      ("ratio vs raw deps (median / min)", "left")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for scen, eng, s, ratio in rows:
        table.add_row(scen, eng, f"{s['median_s']:.3f}", f"{s['min_s']:.3f}", ratio)
    Console(file=sys.stdout, width=110).print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes-per-level", type=int, default=None, help="default 50 (10 with --quick)")
    ap.add_argument("--levels", type=int, default=None, help="default 20 (5 with --quick)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per engine, default 3 (medians need >= 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ray-cpus", type=int, default=NUM_CPUS, help=f"CPUs of the Ray instance, default {NUM_CPUS}")
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--profile", action="store_true",
                    help="also run odibi_ray once (no-op DAG) under cProfile; top 25 cumulative to stderr")
    args = ap.parse_args(argv)
    per_level = args.nodes_per_level or (10 if args.quick else 50)
    n_levels = args.levels or (5 if args.quick else 20)
    repeats = args.repeats or 3
    if repeats < 3:
        print(f"warning: --repeats {repeats} < 3: medians are not meaningful", file=sys.stderr)

    shape = make_shape(n_levels, per_level, args.seed)
    n_nodes = n_levels * per_level
    metrics_target = METRICS_TARGET_LARGE if n_nodes >= 1000 else METRICS_TARGET
    noop_dag, sleep_dag = build_dag(shape, sleep=False), build_dag(shape, sleep=True)
    total_sleep_s = sum(shape["sleep_ms"].values()) / 1000.0

    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, object_store_memory=200 * 1024**2,
             logging_level="warning")
    try:
        noop = time_engines({
            "raw_ray": lambda: run_raw_deps(shape, sleep=False),
            "odibi_ray": lambda: run_odibi(noop_dag),
            "odibi_ray_metrics_off": lambda: run_odibi(noop_dag, metrics=False),
        }, repeats)
        sleep = time_engines({
            "raw_ray_deps": lambda: run_raw_deps(shape, sleep=True),
            "raw_ray_barrier": lambda: run_raw_barrier(shape, sleep=True),
            "odibi_ray": lambda: run_odibi(sleep_dag),
        }, repeats)
        if args.profile:
            profile_odibi(noop_dag)
    finally:
        ray.shutdown()

    ns = {k: summary(v) for k, v in noop.items()}
    ss = {k: summary(v) for k, v in sleep.items()}

    def ratio(a: dict[str, float], b: dict[str, float], key: str = "median_s") -> float:
        return round(a[key] / b[key], 3)

    noop_ratio, noop_ratio_min = ratio(ns["odibi_ray"], ns["raw_ray"]), ratio(ns["odibi_ray"], ns["raw_ray"], "min_s")
    sl_ratio, sl_ratio_min = (ratio(ss["odibi_ray"], ss["raw_ray_deps"]),
                              ratio(ss["odibi_ray"], ss["raw_ray_deps"], "min_s"))
    met_ratio, met_ratio_min = (ratio(ns["odibi_ray"], ns["odibi_ray_metrics_off"]),
                                ratio(ns["odibi_ray"], ns["odibi_ray_metrics_off"], "min_s"))
    bar_ratio, bar_ratio_min = (ratio(ss["raw_ray_barrier"], ss["raw_ray_deps"]),
                                ratio(ss["raw_ray_barrier"], ss["raw_ray_deps"], "min_s"))

    rows = [
        ("noop", "raw_ray (refs chained)", ns["raw_ray"], "1.000"),
        ("noop", "odibi_ray", ns["odibi_ray"], f"{noop_ratio:.3f} / {noop_ratio_min:.3f}  (target <= {NOOP_TARGET})"),
        ("noop", "odibi_ray, metrics off", ns["odibi_ray_metrics_off"],
         f"metrics on/off: {met_ratio:.3f} / {met_ratio_min:.3f}  (target <= {metrics_target})"),
        ("sleep", "raw_ray_deps", ss["raw_ray_deps"], "1.000"),
        ("sleep", "raw_ray_barrier", ss["raw_ray_barrier"], f"{bar_ratio:.3f} / {bar_ratio_min:.3f}"),
        ("sleep", "odibi_ray", ss["odibi_ray"], f"{sl_ratio:.3f} / {sl_ratio_min:.3f}  (target <= {SLEEP_TARGET})"),
    ]
    print(f"bench_overhead: {n_nodes} nodes = {n_levels} levels x {per_level}, seed {args.seed}; "
          f"{repeats} interleaved repeats per engine after 1 warm-up each")
    print(f"one Ray instance (num_cpus={args.ray_cpus}) for both scenarios, on a machine with {os.cpu_count()} cores; "
          f"sleep scenario: {total_sleep_s:.2f} s of sleeps in all (>= {total_sleep_s / args.ray_cpus:.2f} s on "
          f"{args.ray_cpus} CPUs)")
    print_table(rows, "odibi_ray vs raw Ray (seconds; ratio = engine / raw_ray deps)")

    out = {
        "benchmark": "bench_overhead", "nodes": n_nodes, "levels": n_levels, "nodes_per_level": per_level,
        "seed": args.seed, "repeats": repeats, "ray_num_cpus": args.ray_cpus, "machine_cpus": os.cpu_count(),
        "noop": {"raw_ray_s": ns["raw_ray"]["median_s"], "odibi_ray_s": ns["odibi_ray"]["median_s"],
                 "raw_ray_min_s": ns["raw_ray"]["min_s"], "odibi_ray_min_s": ns["odibi_ray"]["min_s"],
                 "ratio": noop_ratio, "ratio_min": noop_ratio_min, "target": NOOP_TARGET,
                 "meets_target": noop_ratio <= NOOP_TARGET, "runs": {k: v["all_s"] for k, v in ns.items()},
                 "metrics_off_s": ns["odibi_ray_metrics_off"]["median_s"], "metrics_on_off_ratio": met_ratio,
                 "metrics_on_off_ratio_min": met_ratio_min, "metrics_target": metrics_target,
                 "metrics_meets_target": met_ratio <= metrics_target},
        "sleep": {"raw_ray_deps_s": ss["raw_ray_deps"]["median_s"],
                  "raw_ray_barrier_s": ss["raw_ray_barrier"]["median_s"],
                  "odibi_ray_s": ss["odibi_ray"]["median_s"],
                  "raw_ray_deps_min_s": ss["raw_ray_deps"]["min_s"],
                  "raw_ray_barrier_min_s": ss["raw_ray_barrier"]["min_s"],
                  "odibi_ray_min_s": ss["odibi_ray"]["min_s"],
                  "ratio": sl_ratio, "ratio_min": sl_ratio_min,
                  "barrier_ratio": bar_ratio, "barrier_ratio_min": bar_ratio_min,
                  "target": SLEEP_TARGET, "meets_target": sl_ratio <= SLEEP_TARGET,
                  "total_sleep_s": round(total_sleep_s, 3), "runs": {k: v["all_s"] for k, v in ss.items()}},
    }
    sys.stdout.flush()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
