"""Fan-out at run time (issue 17): one mapped node over N no-op items against raw Ray submitting the same N tasks.

The pipeline: a source node returning a list of N strings, a node mapped over it (a no-op: each item returns its
string), and a collect node receiving the list of the items' results (it returns the count and the first and
last result, so every engine must agree).

Engines, on one local Ray (``--ray-cpus``, default 2, 127.0.0.1, no dashboard), for each size (``--items``,
default 1,000 and 10,000):

- ``raw_ray``: what a user writes by hand on Ray, the *floor*: ``ray.get`` the source task's list, then
  ``[f.remote(x) for x in items]``, then a collect task receiving every item's ref (Ray resolves them), and
  ``ray.get`` of its result.
- ``raw_ray_get``: the same, but the driver ``ray.get``s every item's result and collects them itself (shown, no
  target).
- ``odibi_ray``: ``odibi_ray.run(dag, progress=False)``, no storage, metrics on (the default of ``run``);
  ``odibi_ray_metrics_off``: the same with ``metrics=False``. Target: odibi_ray <= 1.3 x raw_ray.
- ``odibi_local_cold``: ``run(dag, storage=<a fresh folder>)``: every item checkpointed by its worker (N + 2
  objects per run; the folder is removed after the run, untimed).
- ``odibi_local_cached``: a fully cached re-run on a folder one cold run filled before the timings. Target: it
  submits no task. Checked once per size on an untimed re-run (besides the warm-up's check of every engine's
  value): every node and every item of the mapped node is ``cached`` with 0 attempts, no checkpoint object carries
  the re-run's id, and the driver submitted no Ray task (``RemoteFunction._remote`` counted while it ran; actor
  calls are counted apart: with metrics on, a run sends its figures to the metrics actor in one call; the same
  counter must see N + 2 tasks in the cold run that filled the folder).

Each engine gets one warm-up run (whose value must equal the others'), then the repeats are interleaved (the
engine order rotates every repeat) so the machine's drift hits all alike; medians and minima. The driver's CPU
time of every run (``time.process_time``: all of its threads, Ray's included) is reported too: on a 2-core
machine every driver CPU second is taken from the workers. When odibi_ray misses the target at some size (or with
``--profile``), one odibi_ray run of the largest size is profiled (cProfile of the driver, top 25 by cumulative
and by own time) into ``benchmarks/results/bench_map_profile_<N>.txt``. The last line of stdout is one JSON
object.

    python -m benchmarks.bench_map [--items 1000,10000] [--repeats 5] [--ray-cpus 2] [--quick] [--profile]
    python -m benchmarks.bench_map --no-storage          # raw Ray and odibi_ray without storage only
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import loopback  # noqa: F401,E402  (network safety: before ray is imported)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import ray  # noqa: E402

import odibi_ray  # noqa: E402
from odibi_ray import DAG, Node  # noqa: E402
from odibi_ray.checkpoint import layout  # noqa: E402
from odibi_ray.execution.result import NodeStatus, RunResult  # noqa: E402
from odibi_ray.execution.runner import open_checkpoint_storage  # noqa: E402
from odibi_ray.storage.base import Storage  # noqa: E402

NUM_CPUS = 2
SIZES = (1000, 10_000)
QUICK_SIZES = (200, 1000)
TARGET = 1.3  # odibi_ray / raw_ray, one mapped node over N no-op items
MB = 1024 * 1024
RESULTS = Path(__file__).resolve().parent / "results"


# --- node bodies (module level: run under the module's import name, see the end of the file) ------------------

def make_items(n: int) -> list[str]:
    """The source: N distinct short strings (as a folder listing would be)."""
    return [f"item-{i:06d}" for i in range(n)]


def noop_item(x: str) -> str:
    return x


def collect(xs: list[str]) -> tuple[int, str, str]:
    return len(xs), xs[0], xs[-1]


def collect_args(*xs: str) -> tuple[int, str, str]:
    return collect(list(xs))


_raw_source = ray.remote(make_items)
_raw_item = ray.remote(noop_item)
_raw_collect = ray.remote(collect_args)


# --- engines ---------------------------------------------------------------------------------------------------

def build_dag(n: int) -> DAG:
    dag = DAG(f"bench_map_{n}")
    dag.add_node(Node(name="items", fn=make_items, params={"n": n}))
    dag.add_node(Node(name="work", fn=noop_item, map_over="items"))
    dag.add_node(Node(name="collect", fn=collect, inputs={"xs": "work"}))
    return dag


def run_raw(n: int) -> tuple[int, str, str]:
    """The floor: the list in the driver, one task per item, one collect task given every item's ref."""
    items = ray.get(_raw_source.remote(n))
    refs = [_raw_item.remote(x) for x in items]
    return ray.get(_raw_collect.remote(*refs))


def run_raw_get(n: int) -> tuple[int, str, str]:
    """The same, collecting in the driver: ``ray.get`` of every item's result."""
    items = ray.get(_raw_source.remote(n))
    return collect(ray.get([_raw_item.remote(x) for x in items]))


def odibi(dag: DAG, **kwargs: Any) -> RunResult:
    result = odibi_ray.run(dag, backend="ray", progress=False, **kwargs)
    result.raise_for_status()
    return result


def leaf(result: RunResult) -> tuple[int, str, str]:
    return tuple(result.outputs(["collect"])["collect"])  # type: ignore[return-value]


class Folders:
    """Fresh checkpoint folders under one root: one per cold run (removed after it, untimed), and one filled
    once for the cached re-runs."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.used: list[str] = []

    def fresh(self, tag: str, keep: bool = False) -> Storage:
        path = tempfile.mkdtemp(prefix=f"{tag}-", dir=self.root)
        if not keep:
            self.used.append(path)
        return open_checkpoint_storage(path)

    def clean(self) -> None:
        while self.used:
            shutil.rmtree(self.used.pop(), ignore_errors=True)


# --- checks (untimed) ------------------------------------------------------------------------------------------

def check_ran(result: RunResult, n: int) -> None:
    """Every item of the mapped node ran once and succeeded."""
    rec = result.nodes["work"]
    items = rec.items or []
    bad = [i.name for i in items if i.status is not NodeStatus.SUCCEEDED or i.attempts != 1]
    if len(items) != n or bad or rec.status is not NodeStatus.SUCCEEDED:
        raise AssertionError(f"run: {len(items)} items for {n}, {len(bad)} not succeeded once, e.g. {bad[:3]} "
                             f"({result.summary()})")


def check_cold(result: RunResult, storage: Storage, dag: DAG, n: int) -> None:
    """Every item ran and its worker left its checkpoint object (N + source + collect)."""
    check_ran(result, n)
    objects = [i for i in storage.list(layout.objects_prefix(dag.name), with_metadata=True)
               if i.metadata.get("run_id") == result.run_id]
    if len(objects) != n + 2:
        raise AssertionError(f"cold run: {len(objects)} checkpoint objects for {n} items + 2 nodes")


def check_cached(result: RunResult, storage: Storage, dag: DAG, n: int) -> dict[str, int]:
    """Every node and item of the re-run is ``cached`` with 0 attempts, and no object carries the re-run's id."""
    records = list(result.nodes.values()) + list(result.nodes["work"].items or [])
    bad = [r.name for r in records if r.status is not NodeStatus.CACHED or r.attempts]
    if bad or len(result.nodes["work"].items or []) != n:
        raise AssertionError(f"cached re-run: {len(bad)} node(s)/item(s) not cached or attempted, e.g. {bad[:5]} "
                             f"({result.summary()})")
    written = [i for i in storage.list(layout.objects_prefix(dag.name), with_metadata=True)
               if i.metadata.get("run_id") == result.run_id]
    if written:
        raise AssertionError(f"cached re-run: {len(written)} checkpoint(s) written, so something ran")
    return {"records_cached": len(records), "attempts": sum(r.attempts for r in records),
            "objects_written": len(written)}


@contextlib.contextmanager
def count_submissions() -> Iterator[dict[str, int]]:
    """Count the Ray tasks this process submits while the block runs: remote functions (``tasks``) and actor
    method calls (``actor_calls``), by wrapping Ray's two submission entry points."""
    from ray.actor import ActorMethod
    from ray.remote_function import RemoteFunction

    counts = {"tasks": 0, "actor_calls": 0}
    task_remote, actor_remote = RemoteFunction._remote, ActorMethod._remote

    def counted_task(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["tasks"] += 1
        return task_remote(self, *args, **kwargs)

    def counted_actor(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["actor_calls"] += 1
        return actor_remote(self, *args, **kwargs)

    RemoteFunction._remote, ActorMethod._remote = counted_task, counted_actor  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        RemoteFunction._remote, ActorMethod._remote = task_remote, actor_remote  # type: ignore[method-assign]


# --- timing ----------------------------------------------------------------------------------------------------

Engine = Callable[[], Any]


def time_engines(engines: dict[str, Engine], repeats: int, after: Callable[[], None] = lambda: None,
                 ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """One warm-up per engine (every engine's value must equal the first's), then ``repeats`` interleaved rounds
    (the order rotated every round). ``after`` runs untimed after every run (folder clean-up). Wall seconds and
    driver CPU seconds per engine and run."""
    names = list(engines)
    reference: Any = None
    for name in names:
        value = engines[name]()
        after()
        if reference is None:
            reference = value
        elif value != reference:
            raise AssertionError(f"engine {name!r} computed {value!r}, {names[0]!r} {reference!r}")
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate: nobody always goes first
            c0, t0 = time.process_time(), time.perf_counter()
            engines[name]()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            after()
    return wall, cpu


def summary(ts: list[float]) -> dict[str, Any]:
    return {"median_s": round(statistics.median(ts), 4), "min_s": round(min(ts), 4),
            "all_s": [round(t, 4) for t in ts]}


def profile_run(dag: DAG, n: int, path: Path, top: int = 25) -> None:
    """One odibi_ray run (no storage, metrics on) of the driver under cProfile: top ``top`` by cumulative and by
    own time, to ``path``."""
    prof = cProfile.Profile()
    c0, t0 = time.process_time(), time.perf_counter()
    prof.enable()
    odibi(dag)
    prof.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = [f"cProfile of one odibi_ray.run of {dag.name!r} (source -> mapped no-op over {n} items -> collect; no "
           f"storage, metrics on), driver only; {wall:.3f} s wall, {cpu:.3f} s driver CPU under the profiler "
           f"({time.strftime('%Y-%m-%d %H:%M')})"]
    for order in ("cumulative", "tottime"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(order).print_stats(top)
        out.append(f"--- top {top}, {order} ---\n{buf.getvalue()}")
    path.write_text("\n".join(out))


# --- one size --------------------------------------------------------------------------------------------------

def bench_size(n: int, repeats: int, storage: bool, folders: Folders) -> dict[str, Any]:
    dag = build_dag(n)
    engines: dict[str, Engine] = {
        "raw_ray": lambda: run_raw(n),
        "raw_ray_get": lambda: run_raw_get(n),
        "odibi_ray": lambda: leaf(odibi(dag)),
        "odibi_ray_metrics_off": lambda: leaf(odibi(dag, metrics=False)),
    }
    checks: dict[str, Any] = {}
    check_ran(odibi(dag), n)  # (untimed) every item ran once
    if storage:
        # the cached re-runs' folder: one cold run fills it, checked; one re-run is checked and its submissions
        # counted (untimed)
        cached_store = folders.fresh("cached", keep=True)
        with count_submissions() as cold_counts:  # the counter's positive control: N + 2 tasks
            cold = odibi(dag, storage=cached_store)
        check_cold(cold, cached_store, dag, n)
        if cold_counts["tasks"] != n + 2:
            raise AssertionError(f"the cold run submitted {cold_counts['tasks']} Ray tasks, expected {n + 2}")
        checks["cold_run_tasks"] = cold_counts["tasks"]
        with count_submissions() as counts:
            t0 = time.perf_counter()
            again = odibi(dag, storage=cached_store)
            checked_s = time.perf_counter() - t0
        checks["cached_rerun"] = {**check_cached(again, cached_store, dag, n), **counts,
                                  "wall_s": round(checked_s, 4)}
        if counts["tasks"]:
            raise AssertionError(f"cached re-run submitted {counts['tasks']} Ray task(s)")
        if leaf(again) != leaf(cold):
            raise AssertionError("the cached re-run's value differs from the cold run's")

        def cold_run() -> Any:
            store = folders.fresh("cold")
            result = odibi(dag, storage=store)
            if not checks.get("cold_checked"):
                check_cold(result, store, dag, n)
                checks["cold_checked"] = True
            return leaf(result)

        engines["odibi_local_cold"] = cold_run
        engines["odibi_local_cached"] = lambda: leaf(odibi(dag, storage=cached_store))
    load = [round(os.getloadavg()[0], 2)]
    wall, cpu = time_engines(engines, repeats, after=folders.clean)
    load.append(round(os.getloadavg()[0], 2))
    ws = {k: summary(v) for k, v in wall.items()}
    cs = {k: summary(v) for k, v in cpu.items()}
    checks.pop("cold_checked", None)
    return {"items": n, "wall": ws, "driver_cpu": cs, "checks": checks, "loadavg_1m": load}


def ratios(rec: dict[str, Any]) -> dict[str, Any]:
    ws = rec["wall"]

    def r(a: str, b: str, key: str = "median_s") -> float:
        return round(ws[a][key] / ws[b][key], 3)

    out = {"odibi_vs_raw": r("odibi_ray", "raw_ray"), "odibi_vs_raw_min": r("odibi_ray", "raw_ray", "min_s"),
           "metrics_off_vs_raw": r("odibi_ray_metrics_off", "raw_ray"),
           "metrics_off_vs_raw_min": r("odibi_ray_metrics_off", "raw_ray", "min_s"),
           "metrics_on_vs_off": r("odibi_ray", "odibi_ray_metrics_off"),
           "metrics_on_vs_off_min": r("odibi_ray", "odibi_ray_metrics_off", "min_s"),
           "raw_get_vs_raw": r("raw_ray_get", "raw_ray"), "raw_get_vs_raw_min": r("raw_ray_get", "raw_ray", "min_s")}
    out["meets_target"] = out["odibi_vs_raw"] <= TARGET
    if "odibi_local_cold" in ws:
        out.update(cold_vs_raw=r("odibi_local_cold", "raw_ray"),
                   cold_vs_raw_min=r("odibi_local_cold", "raw_ray", "min_s"),
                   cold_vs_odibi=r("odibi_local_cold", "odibi_ray"),
                   cached_vs_cold=r("odibi_local_cached", "odibi_local_cold"),
                   cached_vs_cold_min=r("odibi_local_cached", "odibi_local_cold", "min_s"),
                   cached_vs_raw=r("odibi_local_cached", "raw_ray"))
    cpu = rec["driver_cpu"]
    out["driver_cpu_odibi_vs_raw"] = round(cpu["odibi_ray"]["median_s"] / cpu["raw_ray"]["median_s"], 3)
    return out


# --- report ----------------------------------------------------------------------------------------------------

LABELS = {
    "raw_ray": "raw Ray (floor): get list, N tasks, collect task",
    "raw_ray_get": "raw Ray, ray.get of the N results",
    "odibi_ray": "odibi_ray, no storage, metrics on",
    "odibi_ray_metrics_off": "odibi_ray, no storage, metrics off",
    "odibi_local_cold": "odibi_ray + local folder, cold",
    "odibi_local_cached": "odibi_ray + local folder, fully cached re-run",
}


def ratio_note(name: str, rat: dict[str, Any]) -> str:
    if name == "raw_ray":
        return "1.000"
    if name == "raw_ray_get":
        return f"{rat['raw_get_vs_raw']:.3f} / {rat['raw_get_vs_raw_min']:.3f}"
    if name == "odibi_ray":
        return (f"{rat['odibi_vs_raw']:.3f} / {rat['odibi_vs_raw_min']:.3f}  (target <= {TARGET}: "
                f"{'ok' if rat['meets_target'] else 'MISSED'})")
    if name == "odibi_ray_metrics_off":
        return (f"{rat['metrics_off_vs_raw']:.3f} / {rat['metrics_off_vs_raw_min']:.3f}  "
                f"(metrics on/off {rat['metrics_on_vs_off']:.3f} / {rat['metrics_on_vs_off_min']:.3f})")
    if name == "odibi_local_cold":
        return f"{rat['cold_vs_raw']:.3f} / {rat['cold_vs_raw_min']:.3f}"
    if name == "odibi_local_cached":
        return f"{rat['cached_vs_raw']:.3f}  (vs cold: {rat['cached_vs_cold']:.3f} / {rat['cached_vs_cold_min']:.3f})"
    return ""


def print_table(recs: list[dict[str, Any]]) -> None:
    header = (f"{'items':>6}  {'engine':<47} {'median s':>9} {'min s':>8} {'drv CPU s':>10}   "
              "ratio vs raw Ray (median / min)")
    print(header)
    print("-" * len(header))
    for rec in recs:
        rat = rec["ratios"]
        for name, s in rec["wall"].items():
            print(f"{rec['items']:>6}  {LABELS[name]:<47} {s['median_s']:>9.3f} {s['min_s']:>8.3f} "
                  f"{rec['driver_cpu'][name]['median_s']:>10.3f}   {ratio_note(name, rat)}")
        chk = rec["checks"].get("cached_rerun")
        if chk:
            print(f"{'':>6}  cached re-run check: {chk['records_cached']} records (3 nodes + {rec['items']} items) "
                  f"cached, {chk['attempts']} attempts, {chk['objects_written']} objects written, "
                  f"{chk['tasks']} Ray tasks submitted ({chk['actor_calls']} actor call(s): the metrics actor; "
                  f"the cold run that filled the folder: {rec['checks']['cold_run_tasks']} tasks counted)")
        print()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", default=None,
                    help=f"comma-separated sizes, default {','.join(map(str, SIZES))} "
                         f"({','.join(map(str, QUICK_SIZES))} with --quick)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per engine, default 5 (3 with --quick)")
    ap.add_argument("--ray-cpus", type=int, default=NUM_CPUS, help=f"CPUs of the Ray instance, default {NUM_CPUS}")
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--no-storage", action="store_true", help="skip the local-folder engines (cold and cached)")
    ap.add_argument("--profile", action="store_true",
                    help="profile one odibi_ray run of the largest size even when it meets the target")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.items.split(",")] if args.items else list(QUICK_SIZES if args.quick else SIZES)
    repeats = args.repeats or (3 if args.quick else 5)
    if repeats < 3:
        print(f"warning: --repeats {repeats} < 3: medians are not meaningful", file=sys.stderr)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    t_start = time.perf_counter()
    root = tempfile.mkdtemp(prefix="bench-map-")
    folders = Folders(root)
    ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False, object_store_memory=300 * MB,
             logging_level="warning", _node_ip_address="127.0.0.1")
    recs: list[dict[str, Any]] = []
    profile_path = None
    try:
        for n in sizes:
            rec = bench_size(n, repeats, not args.no_storage, folders)
            rec["ratios"] = ratios(rec)
            recs.append(rec)
        if args.profile or not all(r["ratios"]["meets_target"] for r in recs):
            n = max(sizes)
            profile_path = RESULTS / f"bench_map_profile_{n}.txt"
            profile_run(build_dag(n), n, profile_path)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    elapsed = time.perf_counter() - t_start

    print(f"bench_map: source -> one node mapped over N no-op items -> collect; N = {', '.join(map(str, sizes))}; "
          f"{repeats} interleaved repeats per engine after 1 warm-up each; one Ray (num_cpus={args.ray_cpus}) on "
          f"{os.cpu_count()} cores; Python {platform.python_version()}, Ray {ray.__version__}; {elapsed:.0f} s in all")
    print("drv CPU s: the driver process's CPU time per run (median), all of its threads\n")
    print_table(recs)
    for rec in recs:
        rat = rec["ratios"]
        print(f"N={rec['items']}: odibi_ray / raw Ray {rat['odibi_vs_raw']:.3f} median, {rat['odibi_vs_raw_min']:.3f} "
              f"min (target <= {TARGET}: {'ok' if rat['meets_target'] else 'MISSED'}); driver CPU "
              f"{rat['driver_cpu_odibi_vs_raw']:.2f} x raw's; 1-minute load before/after "
              f"{rec['loadavg_1m'][0]}/{rec['loadavg_1m'][1]}")
    shown = str(profile_path.relative_to(RESULTS.parent.parent)) if profile_path is not None else None
    if shown is not None:
        print(f"driver profile of one odibi_ray run (N={max(sizes)}): {shown}")

    out = {"benchmark": "bench_map", "items": sizes, "repeats": repeats, "ray_num_cpus": args.ray_cpus,
           "machine_cpus": os.cpu_count(), "target": TARGET, "storage": not args.no_storage,
           "elapsed_s": round(elapsed, 1),
           "profile": shown,
           "sizes": {str(r["items"]): r for r in recs},
           "meets_target": all(r["ratios"]["meets_target"] for r in recs)}
    sys.stdout.flush()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    # Run the module under its import name, so Ray pickles the node functions by reference and the workers import
    # them (as they would a user's pipeline module), rather than shipping copies of ``__main__``'s by value.
    from benchmarks import bench_map

    sys.exit(bench_map.main())
