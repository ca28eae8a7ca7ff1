"""Driver overhead of odibi_ray against raw Ray tasks, on many DAG shapes, at 2 and at 8 Ray CPUs (issue 19).

What it runs, for each Ray CPU setting (``--cpus``, default ``2,8``: one local Ray per setting, started with that
``num_cpus`` in a fresh process of its own, used for everything below):

- **noop**: no-op node bodies on every shape (below). Engines: raw Ray tasks chained by object refs, all submitted
  at once, then one ``ray.get`` of every ref (what a user would write by hand); ``odibi_ray.run(dag, backend="ray",
  progress=False)`` without storage, metrics on (the default), including fetching the last level's outputs; the
  same with ``metrics=False``. Target: odibi_ray / raw <= 1.3 on every shape, at both CPU settings.
- **sleep**: each node sleeps a seeded 0-20 ms, on a few shapes. odibi_ray vs raw Ray dependency-driven (refs
  chained) vs raw Ray level barrier (``ray.get`` per level). Target: odibi_ray / raw dependency-driven <= 1.05.
- **fixed**: the per-run fixed cost, on 10-node runs (a chain of 10; 2 levels of 5): odibi_ray's wall time minus
  raw Ray's, and where odibi_ray's time goes (timers wrapped around the driver's steps). Target: <= 30 ms.
- **fuse**: chains of cheap nodes (``chain{N}``; ``chains{K}x{L}``: K parallel chains of L nodes), no-op and 1 ms
  bodies. Raw Ray one task per node (refs chained) vs ``run(dag)`` vs ``run(dag, fuse=True)`` (a chain's nodes in
  one Ray task, execution/fusion.py). Target (the issue's moonshot): fused odibi_ray faster than raw Ray (< 1.0).

Shapes (seeded, the same plain data for every engine):

- ``layered{L}x{W}``: L even levels of W nodes, each node of level k > 0 taking 2 distinct random nodes of level
  k-1: 15 x 20 (300 nodes) and 20 x 50 (1000).
- ``skip{N}-s{seed}``: N nodes in levels of uneven random widths (5-120); each node of level k > 0 has a fan-in of
  1-4: one input from level k-1 (so that it is on level k) and the others from any of the 4 levels before it
  (skip connections: many refs alive across levels). N = 300, 1500, 5000; seeds 0, 1, 2.

Timing: each engine gets one warm-up run per shape, then ``--repeats`` rounds; a round runs every engine once, the
order rotated every round, so the machine's drift hits all alike. Reported per shape: the median wall time of each
engine, ratio = median odibi / median raw, and the median of the per-round ratios; the driver process's CPU time
(all its threads) per run; the attempts odibi_ray discarded and ran again (and runs that raised, e.g. a stalled
scheduler: reported, the rounds go on). Every engine must compute the same leaf values. The machine's load
average and other benchmark processes seen running are reported per shape (this 2-core VM is shared). The last line
of stdout is one JSON object with every figure.

    python benchmarks/bench_overhead.py                 # full: both CPU settings, every shape (~25 min on 2 cores)
    python benchmarks/bench_overhead.py --quick         # < 3 min: 300-node shapes, a 100-node sleep run
    python benchmarks/bench_overhead.py --cpus 2 --only noop --shapes skip1500-s0,layered20x50 --repeats 7
    python benchmarks/bench_overhead.py --cpus 2 --profile skip1500-s1   # cProfile of the driver on one shape
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import loopback  # noqa: F401,E402  (network safety: before ray is imported)

import argparse  # noqa: E402
import cProfile  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import ray  # noqa: E402

import odibi_ray  # noqa: E402
from odibi_ray import DAG, Node  # noqa: E402

NOOP_TARGET = 1.3
SLEEP_TARGET = 1.05
FIXED_TARGET_MS = 30.0
MAX_SLEEP_MS = 20.0
SMALL_NODES = 500  # no-op shapes this small get --small-repeats rounds
INPUT_PARAMS = ("a", "b", "c", "d")  # a node's inputs, in order (fan-in 1-4)

Shape = dict[str, Any]  # name, kind, levels (lists of names), inputs (name -> upstream names), sleep_ms


# --- DAG shapes (plain data, shared by every engine) -----------------------------------------------

def _shape(name: str, kind: str, levels: list[list[str]], inputs: dict[str, tuple[str, ...]],
           rng: random.Random) -> Shape:
    sleep_ms = {n: rng.uniform(0.0, MAX_SLEEP_MS) for level in levels for n in level}
    return {"name": name, "kind": kind, "levels": levels, "inputs": inputs, "sleep_ms": sleep_ms,
            "nodes": sum(map(len, levels))}


def _names(widths: list[int]) -> list[list[str]]:
    return [[f"n{k:03d}_{i:03d}" for i in range(w)] for k, w in enumerate(widths)]


def make_layered(n_levels: int, per_level: int, seed: int = 0) -> Shape:
    """``n_levels`` even levels of ``per_level`` nodes; each node of level k > 0 takes 2 distinct random nodes of
    level k-1 (the shape bench_overhead always measured)."""
    if per_level < 2 and n_levels > 1:
        raise ValueError("need at least 2 nodes per level to pick 2 distinct inputs")
    rng = random.Random(seed)
    levels = _names([per_level] * n_levels)
    inputs = {n: tuple(rng.sample(levels[k - 1], 2)) if k else () for k, level in enumerate(levels) for n in level}
    return _shape(f"layered{n_levels}x{per_level}", "layered", levels, inputs, rng)


def make_skip(n_nodes: int, seed: int, min_width: int = 5, max_width: int = 120, max_back: int = 4,
              max_fan_in: int = 4) -> Shape:
    """``n_nodes`` nodes in levels of random widths in [min_width, max_width]; each node of level k > 0 has a random
    fan-in of 1..max_fan_in: one input from level k-1, the rest distinct nodes of levels k-max_back..k-1."""
    rng = random.Random(f"skip-{n_nodes}-{seed}")
    widths: list[int] = []
    left = n_nodes
    while left > 0:
        w = rng.randint(min_width, max_width)
        if left - w < min_width:  # the last level(s): keep every width within bounds
            w = left if left <= max_width else left - min_width
        widths.append(w)
        left -= w
    levels = _names(widths)
    inputs: dict[str, tuple[str, ...]] = {}
    for k, level in enumerate(levels):
        pool = [n for lv in levels[max(0, k - max_back):k] for n in lv]
        for name in level:
            if not k:
                inputs[name] = ()
                continue
            first = rng.choice(levels[k - 1])
            others = [n for n in pool if n != first]
            inputs[name] = (first, *rng.sample(others, min(rng.randint(1, max_fan_in) - 1, len(others))))
    return _shape(f"skip{n_nodes}-s{seed}", "skip", levels, inputs, rng)


def make_chain(n: int) -> Shape:
    levels = _names([1] * n)
    inputs = {level[0]: (levels[k - 1][0],) if k else () for k, level in enumerate(levels)}
    return _shape(f"chain{n}", "chain", levels, inputs, random.Random(0))


def make_chains(k: int, length: int) -> Shape:
    """``k`` parallel chains of ``length`` nodes (node i of level j reads node i of level j-1)."""
    levels = _names([k] * length)
    inputs = {n: (levels[j - 1][i],) if j else () for j, level in enumerate(levels) for i, n in enumerate(level)}
    return _shape(f"chains{k}x{length}", "chains", levels, inputs, random.Random(0))


def describe(shape: Shape) -> str:
    widths = [len(lv) for lv in shape["levels"]]
    fan = [len(v) for v in shape["inputs"].values() if v]
    edges = sum(fan)
    return (f"{shape['name']}: {shape['nodes']} nodes, {len(widths)} levels (widths {min(widths)}-{max(widths)}), "
            f"{edges} edges (fan-in {min(fan, default=0)}-{max(fan, default=0)}, mean {edges / max(1, len(fan)):.2f})")


# --- node bodies (module level: the same functions for odibi_ray and raw Ray) ----------------------

def noop_source() -> int:
    return 0


def noop_combine(a: int, b: int = 0, c: int = 0, d: int = 0) -> int:
    return (a + b + c + d + 1) & 0xFFFF


def sleep_source(ms: float) -> int:
    time.sleep(ms / 1000.0)
    return 0


def sleep_combine(a: int, b: int = 0, c: int = 0, d: int = 0, ms: float = 0.0) -> int:
    time.sleep(ms / 1000.0)
    return (a + b + c + d + 1) & 0xFFFF


_raw_noop_source = ray.remote(noop_source)
_raw_noop_combine = ray.remote(noop_combine)
_raw_sleep_source = ray.remote(sleep_source)
_raw_sleep_combine = ray.remote(sleep_combine)


# --- engines --------------------------------------------------------------------------------------

def build_dag(shape: Shape, sleep: bool) -> DAG:
    dag = DAG(f"bench_{'sleep' if sleep else 'noop'}_{shape['name']}")
    for level in shape["levels"]:
        for name in level:
            ups = shape["inputs"][name]
            ins = dict(zip(INPUT_PARAMS, ups))
            if sleep:
                fn, params = (sleep_combine if ups else sleep_source), {"ms": shape["sleep_ms"][name]}
            else:
                fn, params = (noop_combine if ups else noop_source), {}
            dag.add_node(Node(name=name, fn=fn, inputs=ins, params=params, num_cpus=1))
    return dag


def run_odibi(dag: DAG, leaves: list[str], metrics: bool = True, fuse: bool = False) -> dict[str, Any]:
    result = odibi_ray.run(dag, backend="ray", progress=False, metrics=metrics, fuse=fuse)
    result.raise_for_status()
    return result.outputs(leaves)


def _submit_raw(shape: Shape, name: str, args: list[Any], sleep: bool) -> Any:
    if sleep:
        ms = shape["sleep_ms"][name]
        return _raw_sleep_combine.remote(*args, ms=ms) if args else _raw_sleep_source.remote(ms)
    return _raw_noop_combine.remote(*args) if args else _raw_noop_source.remote()


def run_raw_deps(shape: Shape, sleep: bool) -> dict[str, Any]:
    """All tasks submitted at once, each receiving its input ObjectRefs; then one ray.get of all refs."""
    refs: dict[str, Any] = {}
    inputs = shape["inputs"]
    for level in shape["levels"]:
        for name in level:
            refs[name] = _submit_raw(shape, name, [refs[u] for u in inputs[name]], sleep)
    values = dict(zip(refs, ray.get(list(refs.values()))))
    return {name: values[name] for name in shape["levels"][-1]}


def run_raw_barrier(shape: Shape, sleep: bool) -> dict[str, Any]:
    """Level by level: submit one level, ray.get it, pass the values to the next."""
    values: dict[str, Any] = {}
    inputs = shape["inputs"]
    for level in shape["levels"]:
        refs = [_submit_raw(shape, name, [values[u] for u in inputs[name]], sleep) for name in level]
        values.update(zip(level, ray.get(refs)))
    return {name: values[name] for name in shape["levels"][-1]}


def odibi_engines(shape: Shape, sleep: bool, metrics_off: bool = True) -> dict[str, Callable[[], dict[str, Any]]]:
    dag, leaves = build_dag(shape, sleep), shape["levels"][-1]
    engines = {"raw_ray": lambda: run_raw_deps(shape, sleep), "odibi_ray": lambda: run_odibi(dag, leaves)}
    if metrics_off:
        engines["odibi_ray_metrics_off"] = lambda: run_odibi(dag, leaves, metrics=False)
    return engines


# --- timing ---------------------------------------------------------------------------------------

#: Attempts odibi_ray's scheduler discarded (``RayBackend.forget``: it saw an input not done, failed or replaced
#: under a finished attempt, and runs the node again), counted while :func:`count_discards` is on.
DISCARDED = [0]


def count_discards() -> None:
    """Count the attempts the scheduler discards (each one is run again: a task more than raw Ray's)."""
    from odibi_ray.execution.backends.ray_tasks import RayBackend

    forget = RayBackend.forget
    if forget.__name__ == "counted":
        return

    def counted(self: Any, handle: Any) -> None:
        DISCARDED[0] += 1
        forget(self, handle)

    RayBackend.forget = counted  # type: ignore[method-assign]


def time_engines(engines: dict[str, Callable[[], dict[str, Any]]], repeats: int) -> dict[str, dict[str, list[Any]]]:
    """One warm-up per engine (its leaf values must agree with the others'), then ``repeats`` rounds of every
    engine, the order rotated each round. Per engine and round: wall seconds, driver-process CPU seconds, the
    machine's busy CPU seconds (:func:`machine_cpu_s`), attempts discarded; a run that raised is not timed, its
    error is kept (``errors``) and the rounds go on."""
    names = list(engines)
    out: dict[str, dict[str, list[Any]]] = {n: {"wall": [], "cpu": [], "machine_cpu": [], "discarded": [], "errors": []}
                                            for n in names}
    reference: dict[str, Any] | None = None
    for name in names:
        try:
            leaves = engines[name]()
        except Exception as exc:  # noqa: BLE001 - reported with the figures (e.g. a stalled scheduler)
            out[name]["errors"].append(f"warm-up: {_brief(exc)}")
            continue
        if reference is None:
            reference = leaves
        elif leaves != reference:
            raise AssertionError(f"engine {name!r} computed different leaf values from the first engine's")
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate: nobody always goes first
        for name in order:
            m0 = machine_cpu_s()
            d0, c0, t0 = DISCARDED[0], time.process_time(), time.perf_counter()
            try:
                engines[name]()
            except Exception as exc:  # noqa: BLE001
                out[name]["errors"].append(f"round {r}: {_brief(exc)}")
                continue
            out[name]["wall"].append(time.perf_counter() - t0)
            out[name]["cpu"].append(time.process_time() - c0)
            m1 = machine_cpu_s()
            if m0 is not None and m1 is not None:
                out[name]["machine_cpu"].append(m1 - m0)
            out[name]["discarded"].append(DISCARDED[0] - d0)
    return out


def machine_cpu_s() -> float | None:
    """CPU seconds this machine (VM) has spent busy since boot, every process together (``/proc/stat``: user, nice,
    system, irq, softirq; not idle, iowait or time stolen by the hypervisor); None where there is no /proc/stat.
    Ray's workers, raylet, GCS, agents and the metrics actor are other processes than the driver: with more Ray
    CPUs than cores the run is CPU-bound, and this total, not the driver's, is what its wall time follows."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _brief(exc: BaseException) -> str:
    """An error in one line (a stalled scheduler's message lists node states on the lines after)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


def _errors(t: dict[str, dict[str, list[Any]]]) -> dict[str, list[str]]:
    return {k: v["errors"] for k, v in t.items() if v["errors"]}


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def _round_ratios(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b)]


def interference() -> dict[str, Any]:
    """The load average and any other benchmark (or Ray worker of another driver) running now: this VM is shared."""
    others = []
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if "benchmarks/" in cmd or "benchmarks." in cmd or "pytest" in cmd:
            others.append(" ".join(cmd.split()[1:3])[:80])
    return {"load1": round(os.getloadavg()[0], 2), "others": sorted(set(others))}


def _seen(notes: list[dict[str, Any]]) -> str:
    others = sorted({o for n in notes for o in n["others"]})
    loads = [n["load1"] for n in notes]
    return f"load {min(loads):.1f}-{max(loads):.1f}" + (f"; also running: {', '.join(others)}" if others else "")


def timed_row(shape: Shape, cpus: int, repeats: int,
              engines: dict[str, Callable[[], dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, dict[str, list]]]:
    """Time ``engines`` on ``shape`` (see :func:`time_engines`): the row every part starts from, and the timings."""
    before = interference()
    t = time_engines(engines, repeats)
    notes = [before, interference()]
    row: dict[str, Any] = {
        "shape": shape["name"], "kind": shape["kind"], "nodes": shape["nodes"], "levels": len(shape["levels"]),
        "cpus": cpus, "repeats": repeats, "interference": _seen(notes), "errors": _errors(t),
        "runs": {k: [round(x, 4) for x in v["wall"]] for k, v in t.items()},
        "discarded": {k: v["discarded"] for k, v in t.items() if k != "raw_ray"},
    }
    return row, t


def measure_noop(shape: Shape, cpus: int, repeats: int) -> dict[str, Any]:
    row, t = timed_row(shape, cpus, repeats, odibi_engines(shape, sleep=False))
    if _any_failed(t):
        return dict(row, meets_target=False, ratio=None, failed=True)
    raw, odi, off = (t[k]["wall"] for k in ("raw_ray", "odibi_ray", "odibi_ray_metrics_off"))
    return dict(
        row, raw_s=_med(raw), odibi_s=_med(odi), odibi_off_s=_med(off), ratio=_ratio(odi, raw),
        ratio_off=_ratio(off, raw), ratio_rounds=_ratio_rounds(odi, raw), ratio_off_rounds=_ratio_rounds(off, raw),
        raw_cpu_s=_med(t["raw_ray"]["cpu"]), odibi_cpu_s=_med(t["odibi_ray"]["cpu"]),
        odibi_off_cpu_s=_med(t["odibi_ray_metrics_off"]["cpu"]), **_machine_cpu(t),
        meets_target=_ratio(odi, raw) <= NOOP_TARGET and not row["errors"])


def _machine_cpu(t: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
    """The machine's busy CPU seconds per run (median, every process: see :func:`machine_cpu_s`) of raw Ray,
    odibi_ray and odibi_ray without metrics, and odibi_ray's over raw Ray's; empty without /proc/stat."""
    raw, odi, off = (t[k]["machine_cpu"] for k in ("raw_ray", "odibi_ray", "odibi_ray_metrics_off"))
    if not (raw and odi and off):
        return {}
    return {"raw_machine_cpu_s": _med(raw), "odibi_machine_cpu_s": _med(odi), "odibi_off_machine_cpu_s": _med(off),
            "machine_cpu_ratio": _ratio(odi, raw)}


def _any_failed(t: dict[str, dict[str, list[Any]]]) -> bool:
    """An engine with no timed run (every run raised)."""
    return any(not v["wall"] for v in t.values())


def _med(xs: list[float]) -> float:
    return round(_median(xs), 4)


def _ratio(a: list[float], b: list[float]) -> float:
    """Median of ``a`` over median of ``b``."""
    return round(_median(a) / _median(b), 3)


def _ratio_rounds(a: list[float], b: list[float]) -> float:
    """The median of the per-round ratios ``a / b``."""
    return round(_median(_round_ratios(a, b)), 3)


def measure_sleep(shape: Shape, cpus: int, repeats: int) -> dict[str, Any]:
    before = interference()
    engines = odibi_engines(shape, sleep=True, metrics_off=False)
    engines["raw_ray_barrier"] = lambda: run_raw_barrier(shape, sleep=True)
    t = time_engines(engines, repeats)
    notes = [before, interference()]
    total_sleep = sum(shape["sleep_ms"].values()) / 1000.0
    row: dict[str, Any] = {
        "shape": shape["name"], "nodes": shape["nodes"], "cpus": cpus, "repeats": repeats,
        "total_sleep_s": round(total_sleep, 3), "floor_s": round(total_sleep / cpus, 3),
        "interference": _seen(notes), "errors": _errors(t), "discarded": t["odibi_ray"]["discarded"],
        "runs": {k: [round(x, 4) for x in v["wall"]] for k, v in t.items()},
    }
    raw, odi, bar = (t[k]["wall"] for k in ("raw_ray", "odibi_ray", "raw_ray_barrier"))
    if not (raw and odi and bar):
        return dict(row, meets_target=False, ratio=None, failed=True)
    return dict(
        row, raw_s=round(_median(raw), 4), odibi_s=round(_median(odi), 4), barrier_s=round(_median(bar), 4),
        ratio=round(_median(odi) / _median(raw), 3), ratio_rounds=round(_median(_round_ratios(odi, raw)), 3),
        barrier_ratio=round(_median(bar) / _median(raw), 3),
        meets_target=_median(odi) / _median(raw) <= SLEEP_TARGET and not row["errors"])


FUSE_BODIES = {"noop": None, "1ms": 1.0}  # body -> its sleep in ms (None: no-op)


def measure_fuse(shape: Shape, body: str, cpus: int, repeats: int) -> dict[str, Any]:
    """A chain shape with ``body`` bodies: raw Ray (one task per node) vs odibi_ray vs odibi_ray fused."""
    ms = FUSE_BODIES[body]
    sleep = ms is not None
    if sleep:
        shape = dict(shape, sleep_ms=dict.fromkeys(shape["sleep_ms"], ms))
    dag, leaves = build_dag(shape, sleep), shape["levels"][-1]
    row, t = timed_row(shape, cpus, repeats, {
        "raw_ray": lambda: run_raw_deps(shape, sleep), "odibi_ray": lambda: run_odibi(dag, leaves),
        "odibi_ray_fused": lambda: run_odibi(dag, leaves, fuse=True)})
    row["body"] = body
    if _any_failed(t):
        return dict(row, meets_target=False, ratio=None, failed=True)
    raw, odi, fused = (t[k]["wall"] for k in ("raw_ray", "odibi_ray", "odibi_ray_fused"))
    return dict(
        row, raw_s=_med(raw), odibi_s=_med(odi), fused_s=_med(fused), ratio=_ratio(fused, raw),
        ratio_unfused=_ratio(odi, raw), ratio_rounds=_ratio_rounds(fused, raw), raw_cpu_s=_med(t["raw_ray"]["cpu"]),
        fused_cpu_s=_med(t["odibi_ray_fused"]["cpu"]), meets_target=_ratio(fused, raw) < 1.0 and not row["errors"])


# --- fixed cost per run: timers around the driver's steps --------------------------------------------

class Timers:
    """Wraps named functions with wall-clock timers (each call's inclusive time); :meth:`restore` puts them back."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = defaultdict(list)
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        orig = getattr(owner, attr)
        calls = self.calls[label]

        @functools.wraps(orig)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                calls.append(time.perf_counter() - t0)

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, orig))

    def mark(self) -> dict[str, int]:
        return {label: len(c) for label, c in self.calls.items()}

    def since(self, mark: dict[str, int]) -> dict[str, list[float]]:
        """Each label's calls since ``mark``."""
        return {label: c[mark.get(label, 0):] for label, c in self.calls.items()}

    def restore(self) -> None:
        for owner, attr, orig in reversed(self._undo):
            setattr(owner, attr, orig)
        self._undo.clear()


#: What the breakdown times: (depth, label, module path, attribute). A label's time includes those below it.
#: Module-level functions are wrapped where the caller looks them up (runner, ray_tasks, ray).
BREAKDOWN: list[tuple[int, str, str, str]] = [
    (0, "gc.freeze + gc.unfreeze (run's decorator)", "gc", "freeze"),
    (0, "gc.freeze + gc.unfreeze (run's decorator)", "gc", "unfreeze"),
    (0, "DAG.levels (validate, plan levels)", "odibi_ray.definition.dag:DAG", "levels"),
    (0, "new_run_id", "odibi_ray.execution.runner", "new_run_id"),
    (0, "pin_ranges + with_ranges (incremental sources)", "odibi_ray.execution.runner", "pin_ranges"),
    (0, "pin_ranges + with_ranges (incremental sources)", "odibi_ray.execution.runner", "with_ranges"),
    (0, "make_backend", "odibi_ray.execution.runner", "make_backend"),
    (0, "LivePublisher() (metrics on)", "odibi_ray.observe.live:LivePublisher", "__init__"),
    (0, "Scheduler() (maps, records, states)", "odibi_ray.execution.scheduler:Scheduler", "__init__"),
    (0, "Scheduler.run (prepare + loop + RunResult)", "odibi_ray.execution.scheduler:Scheduler", "run"),
    (1, "RayBackend.prepare", "odibi_ray.execution.backends.ray_tasks:RayBackend", "prepare"),
    (2, "ensure_ray (ray.is_initialized)", "odibi_ray.execution.backends.ray_tasks", "ensure_ray"),
    (2, "ray.nodes() (for check_schedulable)", "ray", "nodes"),
    (2, "check_schedulable", "odibi_ray.execution.backends.ray_tasks", "check_schedulable"),
    (2, "ray.remote(...) (a new remote function)", "ray", "remote"),
    (1, "Scheduler._loop", "odibi_ray.execution.scheduler:Scheduler", "_loop"),
    (2, "Scheduler._submit_ready", "odibi_ray.execution.scheduler:Scheduler", "_submit_ready"),
    (3, "RayBackend.submit (spec pickling, .remote())", "odibi_ray.execution.backends.ray_tasks:RayBackend",
     "submit"),
    (4, "RayBackend._pickle_spec", "odibi_ray.execution.backends.ray_tasks:RayBackend", "_pickle_spec"),
    (4, "Ray's function export (first .remote() of a new remote function: pickle, dis, GCS put)",
     "ray._private.function_manager:FunctionActorManager", "export"),
    (2, "RayBackend.wait (blocks while tasks run)", "odibi_ray.execution.backends.ray_tasks:RayBackend", "wait"),
    (2, "RayBackend.outcomes (ray.get of the metadata)", "odibi_ray.execution.backends.ray_tasks:RayBackend",
     "outcomes"),
    (2, "Scheduler._finish_attempt", "odibi_ray.execution.scheduler:Scheduler", "_finish_attempt"),
    (2, "LivePublisher.publish (live batches)", "odibi_ray.observe.live:LivePublisher", "publish"),
    (1, "RunResult() (result building)", "odibi_ray.execution.result:RunResult", "__init__"),
    (0, "RayBackend.close", "odibi_ray.execution.backends.ray_tasks:RayBackend", "close"),
    (0, "_publish_metrics (metrics on)", "odibi_ray.execution.runner", "_publish_metrics"),
    (1, "_ray_connected (ray.is_initialized)", "odibi_ray.execution.runner", "_ray_connected"),
    (1, "Scheduler.live_status (for the final batch)", "odibi_ray.execution.scheduler:Scheduler", "live_status"),
    (1, "LivePublisher.finish (the rows changed since the last batch, pickled, sent)",
     "odibi_ray.observe.live:LivePublisher", "finish"),
    (2, "metrics_actor (actor lookup, cached handle)", "odibi_ray.execution.runner", "metrics_actor"),
    (1, "run_metrics_of (derive the whole run: for a manifest)", "odibi_ray.execution.runner", "run_metrics_of"),
    (1, "MetricsManager.snapshot", "odibi_ray.observe.metrics:MetricsManager", "snapshot"),
    (0, "RunResult.summary (log.info argument, built even when not logged)", "odibi_ray.execution.result:RunResult",
     "summary"),
]
#: Timed by the benchmark around the calls it makes after run() returns.
AFTER_RUN = ("result.raise_for_status", "result.outputs(leaves) (fetch the last level)")


def _owner(path: str) -> Any:
    import importlib

    module, _, cls = path.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, cls) if cls else obj


def measure_fixed(shape: Shape, cpus: int, pairs: int, breakdown_runs: int) -> dict[str, Any]:
    """Per-run fixed cost on a small shape: odibi_ray's wall time minus raw Ray's (medians of alternating rounds),
    then odibi_ray alone with timers around its steps (ms per run)."""
    before = interference()
    t = time_engines(odibi_engines(shape, sleep=False), pairs)
    if _errors(t):
        raise RuntimeError(f"runs failed: {_errors(t)}")
    raw, odi, off = (t[k]["wall"] for k in ("raw_ray", "odibi_ray", "odibi_ray_metrics_off"))
    diffs = [(o - r) * 1000 for o, r in zip(odi, raw)]
    diffs_off = [(o - r) * 1000 for o, r in zip(off, raw)]

    dag, leaves = build_dag(shape, sleep=False), shape["levels"][-1]
    timers = Timers()
    seen: set[tuple[str, str]] = set()
    for _, label, path, attr in BREAKDOWN:
        if (path, attr) not in seen:
            seen.add((path, attr))
            timers.wrap(_owner(path), attr, label)
    per_run: list[dict[str, list[float]]] = []  # each run: label -> its calls' seconds
    walls = []
    try:
        for _ in range(breakdown_runs):
            mark = timers.mark()
            t0 = time.perf_counter()
            result = odibi_ray.run(dag, backend="ray", progress=False)
            t1 = time.perf_counter()
            result.raise_for_status()
            t2 = time.perf_counter()
            result.outputs(leaves)
            t3 = time.perf_counter()
            calls = timers.since(mark)
            calls[AFTER_RUN[0]], calls[AFTER_RUN[1]] = [t2 - t1], [t3 - t2]
            per_run.append(calls)
            walls.append(t3 - t0)
    finally:
        timers.restore()
    labels = list(dict.fromkeys([label for _, label, _, _ in BREAKDOWN] + list(AFTER_RUN)))
    depth = {label: d for d, label, _, _ in BREAKDOWN}
    steps = []
    for label in labels:
        totals = [sum(run.get(label, [])) * 1000 for run in per_run]
        firsts = [run[label][0] * 1000 for run in per_run if run.get(label)]
        steps.append({"depth": depth.get(label, 0), "step": label, "ms_per_run": round(_median(totals), 3),
                      "mean_ms_per_run": round(statistics.mean(totals), 3),
                      "first_call_ms": round(_median(firsts), 3) if firsts else None,
                      "calls_per_run": round(statistics.mean(len(run.get(label, [])) for run in per_run), 1)})
    wall_ms = _median(walls) * 1000
    top = sum(s["ms_per_run"] for s in steps if s["depth"] == 0)
    steps.append({"depth": 0, "step": "the rest (wall median minus the top-level medians above)",
                  "ms_per_run": round(wall_ms - top, 3), "mean_ms_per_run": None, "first_call_ms": None,
                  "calls_per_run": 1.0})
    notes = [before, interference()]
    return {
        "shape": shape["name"], "nodes": shape["nodes"], "cpus": cpus, "pairs": pairs,
        "raw_ms": round(_median(raw) * 1000, 2), "odibi_ms": round(_median(odi) * 1000, 2),
        "odibi_off_ms": round(_median(off) * 1000, 2),
        "fixed_ms": round(_median(diffs), 2), "fixed_off_ms": round(_median(diffs_off), 2),
        "fixed_ms_of_medians": round((_median(odi) - _median(raw)) * 1000, 2),
        "raw_cpu_ms": round(_median(t["raw_ray"]["cpu"]) * 1000, 2),
        "odibi_cpu_ms": round(_median(t["odibi_ray"]["cpu"]) * 1000, 2),
        "breakdown_runs": breakdown_runs, "breakdown_wall_ms": round(wall_ms, 2), "breakdown": steps,
        "interference": _seen(notes), "meets_target": _median(diffs) <= FIXED_TARGET_MS,
    }


# --- cProfile of the driver on one shape ----------------------------------------------------------

def profile_shape(shape: Shape, cpus: int, runs: int, top: int = 30) -> dict[str, Any]:
    """Warm up, time ``runs`` plain rounds of each engine, then cProfile odibi_ray runs (metrics on) until ``runs``
    of them completed (at most 2 x ``runs`` tries: a run that raises is left out of the profile and reported) and
    print the top ``top`` functions by cumulative and by own time, and the odibi_ray frames alone."""
    engines = odibi_engines(shape, sleep=False, metrics_off=False)
    t = time_engines(engines, runs)
    raw_s = _median(t["raw_ray"]["wall"])
    odi_s = _median(t["odibi_ray"]["wall"]) if t["odibi_ray"]["wall"] else float("nan")
    run = engines["odibi_ray"]
    stats: pstats.Stats | None = None
    walls: list[float] = []
    discarded: list[int] = []
    failed: list[str] = [f"unprofiled {e}" for e in t["odibi_ray"]["errors"]]
    for _ in range(2 * runs):
        if len(walls) == runs:
            break
        prof = cProfile.Profile()
        d0, t0 = DISCARDED[0], time.perf_counter()
        prof.enable()
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - e.g. a stalled scheduler: reported, not profiled
            failed.append(f"profiled run: {_brief(exc)}")
            continue
        finally:
            prof.disable()
        walls.append(time.perf_counter() - t0)
        discarded.append(DISCARDED[0] - d0)
        stats = pstats.Stats(prof) if stats is None else stats.add(prof)
    total = sum(walls)
    print(f"## cProfile of the driver: {describe(shape)}; Ray num_cpus={cpus}")
    print(f"unprofiled medians of {runs} alternating rounds: raw Ray {raw_s:.3f} s, odibi_ray {odi_s:.3f} s "
          f"(ratio {odi_s / raw_s:.3f}); {len(walls)} profiled odibi_ray runs: {total:.3f} s in all "
          f"({', '.join(f'{w:.3f}' for w in walls)}); shares below are of that total")
    print(f"attempts discarded (and run again) by odibi_ray: unprofiled runs {t['odibi_ray']['discarded']}, "
          f"profiled runs {discarded}")
    if failed:
        print(f"runs that failed (not in the profile): {len(failed)}\n" + "\n".join(f"- {f}" for f in failed))
    out: dict[str, Any] = {"shape": shape["name"], "nodes": shape["nodes"], "cpus": cpus, "runs": len(walls),
                           "raw_s": round(raw_s, 4), "odibi_s": round(odi_s, 4), "failed": failed,
                           "discarded_unprofiled": t["odibi_ray"]["discarded"], "discarded_profiled": discarded}
    if stats is None:
        return out
    for sort, title, restrict in (("cumulative", "cumulative, all frames", ()),
                                  ("tottime", "own time (tottime), all frames", ()),
                                  ("cumulative", "cumulative, odibi_ray frames only", ("odibi_ray",))):
        buf = io.StringIO()
        stats.stream = buf  # type: ignore[attr-defined]
        stats.sort_stats(sort).print_stats(*restrict, top)
        print(f"\n### top {top} by {title}\n")
        print(buf.getvalue())
    rows = []
    for (path, line, fn), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{_short_path(path)}:{line}({fn})", "calls_per_run": round(nc / len(walls), 1),
                     "tottime_s": round(tt / len(walls), 4), "cumtime_s": round(ct / len(walls), 4),
                     "share": round(ct / total, 3)})
    rows.sort(key=lambda r: -r["cumtime_s"])
    return dict(out, profiled_s_per_run=round(total / len(walls), 4), top_cumulative=rows[:top],
                top_tottime=sorted(rows, key=lambda r: -r["tottime_s"])[:top])


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# --- report ---------------------------------------------------------------------------------------

def _failures(r: dict[str, Any]) -> str:
    """Failed runs and discarded attempts of a row, for the tables ("" when none)."""
    parts = [f"{k}: {len(v)} failed ({v[0]})" for k, v in (r.get("errors") or {}).items()]
    for k, v in (r.get("discarded") or {}).items() if isinstance(r.get("discarded"), dict) else []:
        if any(v):
            parts.append(f"{k}: {sum(v)} attempts discarded in {sum(1 for x in v if x)}/{len(v)} runs")
    if isinstance(r.get("discarded"), list) and any(r["discarded"]):
        parts.append(f"odibi_ray: {sum(r['discarded'])} attempts discarded")
    return "; ".join(parts)


def _table(title: str, columns: list[str], rows: list[dict[str, Any]],
           cells: Callable[[dict[str, Any]], list[Any]]) -> None:
    """A markdown table; a failed row shows shape, nodes, cpus and why."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        row = ([r["shape"], r["nodes"], r["cpus"], f"failed: {_failures(r)}"] if r.get("failed") else cells(r))
        print("| " + " | ".join(map(str, row + [""] * (len(columns) - len(row)))) + " |")


def print_noop(rows: list[dict[str, Any]]) -> None:
    _table(f"no-op bodies: odibi_ray / raw Ray (target <= {NOOP_TARGET} on every shape)",
           ["shape", "nodes", "cpus", "raw s", "odibi s", "ratio", "ratio metrics off", "ratio (rounds)",
            "odibi metrics off s", "levels", "driver CPU s raw / odibi / off",
            "machine CPU s raw / odibi / off (ratio)", "failures", "interference"], rows,
           lambda r: [r["shape"], r["nodes"], r["cpus"], f"{r['raw_s']:.3f}", f"{r['odibi_s']:.3f}",
                      f"{r['ratio']:.3f}" + ("" if r["ratio"] <= NOOP_TARGET else " **>1.3**"),
                      f"{r['ratio_off']:.3f}", f"{r['ratio_rounds']:.3f}", f"{r['odibi_off_s']:.3f}", r["levels"],
                      f"{r['raw_cpu_s']:.2f} / {r['odibi_cpu_s']:.2f} / {r['odibi_off_cpu_s']:.2f}", _machine_cells(r),
                      _failures(r), r["interference"]])


def _machine_cells(r: dict[str, Any]) -> str:
    if "machine_cpu_ratio" not in r:
        return "n/a"
    return (f"{r['raw_machine_cpu_s']:.2f} / {r['odibi_machine_cpu_s']:.2f} / {r['odibi_off_machine_cpu_s']:.2f} "
            f"({r['machine_cpu_ratio']:.2f})")


def print_sleep(rows: list[dict[str, Any]]) -> None:
    _table(f"sleep bodies (0-20 ms): odibi_ray / raw Ray dependency-driven (target <= {SLEEP_TARGET})",
           ["shape", "nodes", "cpus", "raw deps s", "odibi s", "ratio", "ratio (rounds)", "raw barrier s",
            "barrier ratio", "sleep / cpus s", "failures", "interference"], rows,
           lambda r: [r["shape"], r["nodes"], r["cpus"], f"{r['raw_s']:.3f}", f"{r['odibi_s']:.3f}",
                      f"{r['ratio']:.3f}", f"{r['ratio_rounds']:.3f}", f"{r['barrier_s']:.3f}",
                      f"{r['barrier_ratio']:.3f}", f"{r['floor_s']:.2f}", _failures(r), r["interference"]])


def print_fixed(rows: list[dict[str, Any]]) -> None:
    _table(f"per-run fixed cost, 10-node runs (target <= {FIXED_TARGET_MS:.0f} ms)",
           ["shape", "nodes", "cpus", "pairs", "raw ms", "odibi ms", "odibi metrics off ms",
            "fixed ms (median of round diffs)", "fixed ms metrics off", "driver CPU ms raw / odibi", "interference"],
           rows,
           lambda r: [r["shape"], r["nodes"], r["cpus"], r["pairs"], f"{r['raw_ms']:.1f}", f"{r['odibi_ms']:.1f}",
                      f"{r['odibi_off_ms']:.1f}", f"{r['fixed_ms']:.1f}", f"{r['fixed_off_ms']:.1f}",
                      f"{r['raw_cpu_ms']:.1f} / {r['odibi_cpu_ms']:.1f}", r["interference"]])
    rows = [r for r in rows if not r.get("failed")]
    for r in rows:
        print(f"\nWhere odibi_ray's {r['shape']} run goes at {r['cpus']} CPUs (timers around the driver's steps, "
              f"medians of {r['breakdown_runs']} runs, metrics on; {r['breakdown_wall_ms']:.1f} ms per run from "
              "run() to the leaves; a step's time includes the indented steps below it):\n")
        print("| step | ms per run (median) | mean | first call ms | calls per run |")
        print("|---|---|---|---|---|")
        for s in r["breakdown"]:
            pad = "&nbsp;&nbsp;" * s["depth"] + ("- " if s["depth"] else "")
            mean = "" if s["mean_ms_per_run"] is None else f"{s['mean_ms_per_run']:.2f}"
            first = "" if s["first_call_ms"] is None or s["calls_per_run"] <= 1 else f"{s['first_call_ms']:.2f}"
            print(f"| {pad}{s['step']} | {s['ms_per_run']:.2f} | {mean} | {first} | {s['calls_per_run']:g} |")


def print_fuse(rows: list[dict[str, Any]]) -> None:
    _table("chains, fused: odibi_ray fuse=True / raw Ray one task per node (target < 1.0)",
           ["shape", "nodes", "cpus", "body", "raw s", "odibi s", "fused s", "ratio fused", "ratio unfused",
            "ratio fused (rounds)", "driver CPU s raw / fused", "failures", "interference"], rows,
           lambda r: [r["shape"], r["nodes"], r["cpus"], r["body"], f"{r['raw_s']:.3f}", f"{r['odibi_s']:.3f}",
                      f"{r['fused_s']:.3f}", f"{r['ratio']:.3f}" + ("" if r["ratio"] < 1.0 else " **>=1**"),
                      f"{r['ratio_unfused']:.3f}", f"{r['ratio_rounds']:.3f}",
                      f"{r['raw_cpu_s']:.2f} / {r['fused_cpu_s']:.2f}", _failures(r), r["interference"]])


def shapes_for(args: argparse.Namespace) -> list[Shape]:
    shapes = [make_layered(15, 20)] + ([] if args.quick else [make_layered(20, 50)])
    shapes += [make_skip(n, s) for n in args.sizes for s in args.seeds]
    if args.shapes:
        wanted = set(args.shapes.split(","))
        known = {s["name"]: s for s in shapes}
        for name in wanted - set(known):
            known[name] = shape_by_name(name)
        shapes = [known[n] for n in args.shapes.split(",")]
    return shapes


def shape_by_name(name: str) -> Shape:
    """``layered{L}x{W}``, ``skip{N}-s{seed}``, ``chain{N}`` or ``chains{K}x{L}``."""
    if name.startswith("layered"):
        levels, per = name[len("layered"):].split("x")
        return make_layered(int(levels), int(per))
    if name.startswith("skip"):
        n, seed = name[len("skip"):].split("-s")
        return make_skip(int(n), int(seed))
    if name.startswith("chains"):
        k, length = name[len("chains"):].split("x")
        return make_chains(int(k), int(length))
    if name.startswith("chain"):
        return make_chain(int(name[len("chain"):]))
    raise ValueError(f"unknown shape {name!r}: layered{{L}}x{{W}}, skip{{N}}-s{{seed}}, chain{{N}} or "
                     "chains{K}x{L}")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--cpus", type=_ints, default=[2, 8],
                    help="Ray num_cpus settings (default 2,8); with several, each runs in a fresh process of its own")
    ap.add_argument("--quick", action="store_true", help="300-node shapes, 3 rounds, a 100-node sleep run (< 3 min)")
    ap.add_argument("--only", default="noop,sleep,fixed,fuse", help="which parts: noop,sleep,fixed,fuse (default all)")
    ap.add_argument("--fuse-shapes", default=None, help="fuse-scenario shapes (default chain200,chains8x50; "
                    "quick chain100)")
    ap.add_argument("--sizes", type=_ints, default=None, help="skip-shape sizes (default 300,1500,5000; quick 300)")
    ap.add_argument("--seeds", type=_ints, default=None, help="skip-shape seeds (default 0,1,2; quick 0)")
    ap.add_argument("--shapes", default="", help="run only these noop shapes, by name (e.g. skip1500-s0,layered20x50)")
    ap.add_argument("--sleep-shapes", default=None,
                    help="sleep-scenario shapes (default layered20x50,skip1500-s0; quick layered10x10)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds per noop shape (default 7, quick 3)")
    ap.add_argument("--small-repeats", type=int, default=9,
                    help=f"rounds per noop shape of at most {SMALL_NODES} nodes, if more than --repeats (default 9: "
                         "their runs last ~0.2 s, and one disturbed round moved a median of 5 by up to 0.25)")
    ap.add_argument("--sleep-repeats", type=int, default=None, help="rounds per sleep shape (default 5, quick 3)")
    ap.add_argument("--fixed-pairs", type=int, default=None,
                    help="rounds of the 10-node runs, and runs timed step by step (default 30, quick 10)")
    ap.add_argument("--profile", default=None, metavar="SHAPE",
                    help="only cProfile the driver on SHAPE (per --cpus setting) and print the top functions")
    ap.add_argument("--profile-runs", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one CPU setting, JSON only
    args = ap.parse_args(argv)
    q = args.quick
    args.sizes = args.sizes or ([300] if q else [300, 1500, 5000])
    args.seeds = args.seeds if args.seeds is not None else ([0] if q else [0, 1, 2])
    args.repeats = args.repeats or (3 if q else 7)
    args.sleep_repeats = args.sleep_repeats or (3 if q else 5)
    args.fixed_pairs = args.fixed_pairs or (10 if q else 30)
    if args.fuse_shapes is None:
        args.fuse_shapes = "chain100" if q else "chain200,chains8x50"
    if args.sleep_shapes is None:
        args.sleep_shapes = "layered10x10" if q else "layered20x50,skip1500-s0"
    if min(args.repeats, args.sleep_repeats) < 3:
        print("warning: fewer than 3 rounds: medians are not meaningful", file=sys.stderr)
    return args


def measure(args: argparse.Namespace, cpus: int) -> dict[str, list[dict[str, Any]]]:
    """Everything asked, on one local Ray of ``cpus`` CPUs started here (and shut down at the end)."""
    parts = set(args.only.split(","))
    noop_shapes = shapes_for(args) if "noop" in parts and not args.profile else []
    sleep_shapes = ([shape_by_name(n) for n in args.sleep_shapes.split(",") if n]
                    if "sleep" in parts and not args.profile else [])
    fixed_shapes = [make_chain(10), make_layered(2, 5)] if "fixed" in parts and not args.profile else []
    fuse_runs = ([(shape_by_name(n), body) for n in args.fuse_shapes.split(",") if n for body in FUSE_BODIES]
                 if "fuse" in parts and not args.profile else [])
    out: dict[str, list[dict[str, Any]]] = {"noop": [], "sleep": [], "fixed": [], "fuse": [], "profiles": []}

    def progress(part: str, shape: Shape, figure: Any) -> None:
        print(f"  [{time.strftime('%H:%M:%S')}] cpus={cpus} {part} {shape['name']}: {figure}", file=sys.stderr,
              flush=True)

    count_discards()
    ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=300 * 1024**2, logging_level="warning")
    try:
        if args.profile:
            out["profiles"].append(profile_shape(shape_by_name(args.profile), cpus, args.profile_runs))
        for part, shapes, fn in (("noop", noop_shapes, lambda sh: measure_noop(sh, cpus, noop_rounds(sh, args))),
                                 ("sleep", sleep_shapes, lambda sh: measure_sleep(sh, cpus, args.sleep_repeats)),
                                 ("fuse", fuse_runs, lambda run: measure_fuse(run[0], run[1], cpus, args.repeats)),
                                 # last: Ray's workers are all started and warm by now
                                 ("fixed", fixed_shapes, lambda sh: measure_fixed(sh, cpus, args.fixed_pairs,
                                                                                  args.fixed_pairs))):
            for what in shapes:
                shape = what[0] if isinstance(what, tuple) else what  # (a fuse run: shape and body)
                try:
                    row = fn(what)
                except Exception as exc:  # noqa: BLE001 - one shape's failure is a figure, not the end of the run
                    row = {"shape": shape["name"], "nodes": shape["nodes"], "cpus": cpus, "ratio": None,
                           "meets_target": False, "failed": True, "errors": {"run": [f"{_brief(exc)}"]}}
                out[part].append(row)
                figure = row.get("fixed_ms", row.get("ratio"))
                progress(part, shape, f"{figure}{' ERRORS ' + str(row['errors']) if row.get('errors') else ''}")
                gc.collect()
    finally:
        ray.shutdown()
    return out


def noop_rounds(shape: Shape, args: argparse.Namespace) -> int:
    """Rounds of a no-op shape: more for the small ones, whose short runs one disturbance moves most."""
    return max(args.repeats, args.small_repeats) if shape["nodes"] <= SMALL_NODES and not args.quick else args.repeats


def in_child(argv: list[str], cpus: int) -> dict[str, list[dict[str, Any]]]:
    """Run one CPU setting in a fresh process (a Ray started after another's shutdown in the same process is not
    the same as a fresh one: odibi_ray's metrics actor handle, cached per process, pointed at the old cluster's
    actor in a trial run). Its stderr passes through, and its stdout but the last line, its figures."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--cpus", str(cpus), "--child"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the run at {cpus} CPUs failed (exit {proc.returncode}): {' '.join(cmd)}")
    if lines[:-1]:  # what it printed besides its figures (a profile)
        print("\n".join(lines[:-1]), flush=True)
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args, args.cpus[0])), flush=True)
        return 0
    started = time.time()
    print(f"bench_overhead: Ray CPU settings {args.cpus}; machine: {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, Ray {ray.__version__}; started {time.strftime('%Y-%m-%d %H:%M:%S')}")
    if args.profile:
        print(f"  shape {describe(shape_by_name(args.profile))}")
    else:
        parts = set(args.only.split(","))
        shown = (shapes_for(args) if "noop" in parts else []) + (
            [shape_by_name(n) for n in args.sleep_shapes.split(",") if n] if "sleep" in parts else []) + (
            [make_chain(10), make_layered(2, 5)] if "fixed" in parts else []) + (
            [shape_by_name(n) for n in args.fuse_shapes.split(",") if n] if "fuse" in parts else [])
        for shape in {s["name"]: s for s in shown}.values():
            print(f"  shape {describe(shape)}")
        print(f"  rounds: noop {args.repeats} ({max(args.repeats, args.small_repeats)} for shapes of at most "
              f"{SMALL_NODES} nodes), sleep {args.sleep_repeats}, fixed {args.fixed_pairs} (after 1 warm-up "
              f"per engine and shape); one fresh process and Ray per CPU setting", flush=True)
    results = ([measure(args, args.cpus[0])] if len(args.cpus) == 1
               else [in_child(argv, cpus) for cpus in args.cpus])
    rows = {part: [r for res in results for r in res.get(part, [])]
            for part in ("noop", "sleep", "fixed", "fuse", "profiles")}
    if rows["noop"]:
        print_noop(rows["noop"])
    if rows["sleep"]:
        print_sleep(rows["sleep"])
    if rows["fixed"]:
        print_fixed(rows["fixed"])
    if rows["fuse"]:
        print_fuse(rows["fuse"])
    noop, sleep, fixed = rows["noop"], rows["sleep"], rows["fixed"]

    def span(rs: list[dict[str, Any]], key: str) -> list[float] | None:
        xs = [r[key] for r in rs if r.get(key) is not None]
        return [min(xs), max(xs)] if xs else None

    summary: dict[str, Any] = {
        "noop_ratio_range": span(noop, "ratio"), "noop_ratio_off_range": span(noop, "ratio_off"),
        "noop_all_meet_target": all(r["meets_target"] for r in noop),
        "sleep_ratio_range": span(sleep, "ratio"), "sleep_all_meet_target": all(r["meets_target"] for r in sleep),
        "fixed_ms_range": span(fixed, "fixed_ms"), "fixed_all_meet_target": all(r["meets_target"] for r in fixed),
        "fuse_ratio_range": span(rows["fuse"], "ratio"),
        "fuse_unfused_ratio_range": span(rows["fuse"], "ratio_unfused"),
        "fuse_all_beat_raw": all(r["meets_target"] for r in rows["fuse"]),
    }
    for cpus in args.cpus:
        mine = [r for r in noop if r["cpus"] == cpus and r.get("ratio") is not None]
        if mine:
            worst = max(mine, key=lambda r: r["ratio"])
            summary[f"noop_worst_{cpus}cpus"] = {"shape": worst["shape"], "ratio": worst["ratio"]}
            print(f"\nno-op at {cpus} CPUs: ratios {min(r['ratio'] for r in mine):.3f}-{worst['ratio']:.3f} (worst "
                  f"{worst['shape']}), metrics off {min(r['ratio_off'] for r in mine):.3f}-"
                  f"{max(r['ratio_off'] for r in mine):.3f}; {sum(r['meets_target'] for r in mine)}/{len(mine)} "
                  f"shapes within {NOOP_TARGET}")
    broken = [f"{r['shape']} at {r['cpus']} CPUs: {_failures(r)}" for part in ("noop", "sleep", "fixed", "fuse")
              for r in rows[part] if _failures(r)]
    summary["failures"] = broken
    if broken:
        print("\nfailed runs / discarded attempts:\n" + "\n".join(f"- {b}" for b in broken))
    print(f"\ntotal {time.time() - started:.0f} s")
    out = {"benchmark": "bench_overhead", "machine_cpus": os.cpu_count(), "ray": ray.__version__,
           "python": platform.python_version(), "cpus": args.cpus, "quick": args.quick,
           "rounds": {"noop": args.repeats, "noop_small": max(args.repeats, args.small_repeats),
                      "sleep": args.sleep_repeats, "fixed": args.fixed_pairs},
           "targets": {"noop": NOOP_TARGET, "sleep": SLEEP_TARGET, "fixed_ms": FIXED_TARGET_MS},
           "summary": summary, **rows}
    sys.stdout.flush()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
