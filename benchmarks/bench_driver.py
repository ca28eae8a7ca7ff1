"""The driver alone on a 10,000-node DAG (issue 7): validate, plan, peak memory, fully cached re-run.

    python -m benchmarks.bench_driver [--size 10000] [--workers 2] [--seed 0]

(``benchmarks.run`` runs it after the engine comparison, passing its options as JSON on stdin.) One
process, one local Ray with ``--workers`` CPUs; the DAG is the seeded 20-level layered shape of
``benchmarks.engines`` (2 inputs per node), no-op bodies. Measures:

- ``validate_s``: ``DAG.levels()`` (cycle, missing-input and signature checks plus topological levels);
- ``plan_s``: the checkpoint plan of a run on an empty local store (cache keys of every node + one listing);
- ``run_s`` / ``run_peak_rss_mib``: a run without storage, and the driver's peak resident memory above its
  level just before (sampled every 5 ms from /proc/self/statm); the same for raw Ray tasks on the same DAG
  (each in a fresh process after a warm-up, so neither inherits the other's freed memory);
- ``cold_ckpt_s`` / ``cached_rerun_s``: a run with local checkpoints, then the same DAG again (every node
  must come back ``cached`` with no attempt: checked).

The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any
from collections.abc import Callable

from benchmarks import engines as E

log = logging.getLogger("benchmarks.bench_driver")
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_rss_above_start(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Run ``fn``; return (seconds, peak RSS above the start in MiB, fn's result), sampling RSS every 5 ms."""
    start = peak = rss_bytes()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, rss_bytes())
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    try:
        value = fn()
    finally:
        elapsed = time.perf_counter() - t0
        done.set()
        t.join()
    peak = max(peak, rss_bytes())
    return elapsed, (peak - start) / 1024**2, value


def memory_part(engine: str, size: int, workers: int, seed: int) -> dict[str, float]:
    """In this (fresh) process: start Ray, warm up, then one run of ``engine`` with its driver's peak RSS."""
    runner = {"raw_ray": E.run_raw_ray, "odibi_ray": E.run_odibi}[engine]
    shape = E.make_shape("layered20", size, seed)
    shutdown = E.setup_ray(workers)
    try:
        runner(E.make_shape("layered20", 100, seed + 1), False)  # warm-up
        s, mib, _ = peak_rss_above_start(lambda: runner(shape, False))
    finally:
        shutdown()
    return {"s": round(s, 3), "peak_rss_mib": round(mib, 1)}


def memory_in_subprocess(engine: str, size: int, workers: int, seed: int) -> dict[str, float]:
    """:func:`memory_part` in a new Python process (its last stdout line is the JSON figures)."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_driver", "--part", engine, "--size", str(size),
                           "--workers", str(workers), "--seed", str(seed)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"memory part {engine} failed: {proc.stderr.strip().splitlines()[-3:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(size: int, workers: int, seed: int) -> dict[str, Any]:
    """Every driver figure for the seeded layered DAG of ``size`` nodes."""
    import odibi_ray
    from odibi_ray.checkpoint.plan import plan_checkpoints
    from odibi_ray.storage.local import LocalStorage

    shape = E.make_shape("layered20", size, seed)
    out: dict[str, Any] = {"nodes": len(shape["nodes"]), "workers": workers}
    t = time.perf_counter()
    dag = E._odibi_dag(shape, False)
    out["build_s"] = round(time.perf_counter() - t, 4)
    t = time.perf_counter()
    levels = dag.levels()
    out["validate_s"] = round(time.perf_counter() - t, 4)
    order = [n for names in levels for n in names]
    folder = tempfile.mkdtemp(prefix="odibi_bench_driver_")
    try:
        t = time.perf_counter()
        plan_checkpoints(dag, order, LocalStorage(os.path.join(folder, "plan")), "plan-run")
        out["plan_s"] = round(time.perf_counter() - t, 4)

        for engine in ("raw_ray", "odibi_ray"):  # each in a fresh process: allocators keep freed memory
            fig = memory_in_subprocess(engine, size, workers, seed)
            prefix = "run" if engine == "odibi_ray" else "raw_ray"
            out.update({f"{prefix}_s": fig["s"], f"{prefix}_peak_rss_mib": fig["peak_rss_mib"]})
        shutdown = E.setup_ray(workers)
        try:
            E.run_odibi(E.make_shape("layered20", 100, seed + 1), False)  # warm-up
            store = os.path.join(folder, "ckpt")
            t = time.perf_counter()
            cold = odibi_ray.run(E._odibi_dag(shape, False), backend="ray", progress=False, storage=store)
            cold.raise_for_status()
            out["cold_ckpt_s"] = round(time.perf_counter() - t, 3)
            t = time.perf_counter()
            again = odibi_ray.run(E._odibi_dag(shape, False), backend="ray", progress=False, storage=store)
            leaves = again.outputs(shape["leaves"])
            out["cached_rerun_s"] = round(time.perf_counter() - t, 3)
            not_cached = [n for n, r in again.nodes.items() if r.status.value != "cached" or r.attempts]
            if not_cached:
                raise AssertionError(f"{len(not_cached)} nodes of the re-run were not cached: {not_cached[:5]}")
            out["cached_checksum_ok"] = E.checksum(leaves) == E.checksum(cold.outputs(shape["leaves"]))
            if not out["cached_checksum_ok"]:
                raise AssertionError("the cached re-run's leaf values differ from the cold run's")
        finally:
            shutdown()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out["cached_over_cold"] = round(out["cached_rerun_s"] / out["cold_ckpt_s"], 4)
    out["run_over_raw_ray"] = round(out["run_s"] / out["raw_ray_s"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    """Options from the command line, or as JSON on stdin when stdin is not a terminal and no option is given."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--size", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--part", choices=("raw_ray", "odibi_ray"), help="internal: one memory measurement")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    if argv is None and len(sys.argv) == 1 and not sys.stdin.isatty():
        req = json.loads(sys.stdin.read() or "{}")
        args.size, args.workers, args.seed = int(req.get("size", 10000)), int(req.get("workers", 2)), int(
            req.get("seed", 0))
    if args.part:
        print(json.dumps(memory_part(args.part, args.size, args.workers, args.seed)), flush=True)
        return 0
    figures = measure(args.size, args.workers, args.seed)
    for k, v in figures.items():
        log.info("%-22s %s", k, v)
    sys.stdout.flush()
    print(json.dumps({"benchmark": "driver", **figures}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
