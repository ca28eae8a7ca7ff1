"""Engine comparison (issue 7): odibi_ray against raw Ray, Dask distributed and Prefect 3 on Ray, on seeded DAGs.

``python -m benchmarks.run [--quick]`` times, in one sitting, every engine on the same seeded shapes
(wide-and-shallow, deep chain, 20-level layered, diamond lattice), sizes (100, 1000, 5000; 10000 for
odibi_ray and raw Ray) and bodies (no-op, seeded 0-20 ms sleep). Every engine runs in its OWN subprocess
(``python -m benchmarks.engines``: engines never share a Ray instance, a cluster or imported state) with
``--workers`` worker processes. The repeats are rounds: round r starts every engine once (in an order
rotated per round), so drift of the machine hits every engine alike; each engine process warms up before
its timed runs. Then ``benchmarks.bench_driver`` measures the driver alone (10,000-node validate + plan,
peak memory, fully cached re-run).

Writes a Markdown table of medians and ratios to raw Ray (``benchmarks/results/compare.md``) and a chart
of wall time against node count (``benchmarks/results/compare.png``); the last line of stdout is one JSON
object with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.engines import BIG_ENGINES, BODIES, ENGINE_NAMES, SHAPES

log = logging.getLogger("benchmarks.run")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BASELINE = "raw_ray"
DEFAULT_ENGINES = ("raw_ray", "odibi_ray", "odibi_ray_ckpt_local", "odibi_ray_ckpt_azurite", "dask", "prefect_ray")
BIG = 10000  # sizes above 5000 run only on BIG_ENGINES

Key = tuple[str, str, int, str]  # (engine, shape, size, body)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "AWS_EC2_METADATA_DISABLED": "true"}


def run_module(module: str, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run ``python -m module`` with ``request`` as JSON on stdin; its last stdout line is the result JSON."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", module], input=json.dumps(request), capture_output=True,
                              text=True, cwd=ROOT, env=_env(), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s", "cases": []}
    log.info("%s %s finished in %.1f s (exit %d)", module, request.get("engine", ""), time.perf_counter() - t0,
             proc.returncode)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-5:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"[:500], "cases": []}
    return json.loads(lines[-1])


def cases_for(engine: str, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in cases if c["size"] < BIG or engine in BIG_ENGINES]


def run_rounds(engines: list[str], cases: list[dict[str, Any]], rounds: int, workers: int, seed: int,
               budget_s: float, timeout_s: float) -> tuple[dict[Key, dict[str, Any]], dict[str, Any]]:
    """Every round starts each engine once (order rotated per round) and times each of its cases once.
    Returns (engine, shape, size, body) -> {nodes, runs, checksums, skipped?, error?} and per-engine info."""
    idx: dict[Key, dict[str, Any]] = {}
    info: dict[str, Any] = {e: {"setup_s": []} for e in engines}
    for r in range(rounds):
        order = engines[r % len(engines):] + engines[:r % len(engines)]
        for eng in order:
            todo = [c for c in cases_for(eng, cases)
                    if not {"skipped", "error"} & set(idx.get((eng, c["shape"], c["size"], c["body"]), {}))]
            if not todo:
                continue
            log.info("round %d/%d: %s, %d cases", r + 1, rounds, eng, len(todo))
            res = run_module("benchmarks.engines", {"engine": eng, "cases": todo, "workers": workers, "repeats": 1,
                                                    "seed": seed, "budget_s": budget_s}, timeout_s)
            if "error" in res:
                info[eng]["error"] = res["error"]
                for c in todo:
                    idx.setdefault((eng, c["shape"], c["size"], c["body"]), {"nodes": c["size"]})["error"] = \
                        f"engine process failed: {res['error']}"
                continue
            info[eng]["setup_s"].append(res.get("setup_s"))
            for c in res["cases"]:
                rec = idx.setdefault((eng, c["shape"], c["size"], c["body"]), {"nodes": c["nodes"], "runs": [],
                                                                               "checksums": []})
                for k in ("skipped", "error"):
                    if k in c:
                        rec[k] = c[k]
                rec.setdefault("runs", []).extend(c.get("all_s", []))
                if "checksum" in c:
                    rec.setdefault("checksums", []).append(c["checksum"])
    for rec in idx.values():
        if rec.get("runs"):
            rec["median_s"] = round(statistics.median(rec["runs"]), 4)
            rec["min_s"] = round(min(rec["runs"]), 4)
    return idx, info


def check_agreement(idx: dict[Key, dict[str, Any]]) -> list[str]:
    """Every engine, in every round, must compute the same leaf checksum per case; return the disagreements."""
    seen: dict[tuple[str, int, str], tuple[str, int]] = {}
    bad = []
    for (eng, shape, size, body), c in sorted(idx.items()):
        for value in c.get("checksums", []):
            first = seen.setdefault((shape, size, body), (eng, value))
            if first[1] != value:
                bad.append(f"{shape}/{size}/{body}: {eng} checksum {value} != {first[0]} {first[1]}")
    return bad


def _cell(c: dict[str, Any]) -> str:
    if "median_s" in c and "error" not in c:
        return f"{c['median_s']:.3f}"
    if "skipped" in c:
        return "over budget"
    return "failed" if "error" in c else "n/a"


def markdown(idx: dict[Key, dict[str, Any]], engines: list[str], cases: list[dict[str, Any]], header: str) -> str:
    """Markdown tables (one per body): per case, each engine's median seconds and its ratio to raw Ray."""
    out = [header]
    for body in dict.fromkeys(c["body"] for c in cases):
        cols = " | ".join(f"{e}" for e in engines)
        out += ["", f"### {body} bodies: median s (ratio to raw Ray)", "", f"| shape | nodes | {cols} |",
                "|---|---|" + "---|" * len(engines)]
        for case in (c for c in cases if c["body"] == body):
            key = (case["shape"], case["size"], body)
            base = idx.get((BASELINE, *key), {}).get("median_s")
            nodes = next((idx[(e, *key)]["nodes"] for e in engines if (e, *key) in idx), case["size"])
            cells = []
            for e in engines:
                c = idx.get((e, *key))
                if c is None:
                    cells.append("")
                    continue
                cell = _cell(c)
                if e != BASELINE and "median_s" in c and base and "error" not in c:
                    cell += f" ({c['median_s'] / base:.2f})"
                cells.append(cell)
            out.append(f"| {case['shape']} | {nodes} | {' | '.join(cells)} |")
    return "\n".join(out) + "\n"


def chart(idx: dict[Key, dict[str, Any]], engines: list[str], bodies: list[str], path: Path) -> None:
    """PNG: one panel per (body, shape), median wall time against node count, one line per engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(bodies), len(SHAPES), figsize=(4.2 * len(SHAPES), 3.6 * len(bodies)),
                             squeeze=False)
    for r, body in enumerate(bodies):
        for s, shape in enumerate(SHAPES):
            ax = axes[r][s]
            for eng in engines:
                pts = sorted((c["nodes"], c["median_s"]) for (e, sh, _, b), c in idx.items()
                             if e == eng and sh == shape and b == body and "median_s" in c and "error" not in c)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=eng)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{shape}, {body}")
            ax.set_xlabel("nodes")
            ax.set_ylabel("median wall s")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def machine_line(workers: int, rounds: int, seed: int) -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024**2:.0f} GiB"
    except (OSError, ValueError, IndexError):
        mem = "? GiB"
    import ray

    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), {mem}, Python "
            f"{platform.python_version()}, Ray {ray.__version__}; {workers} worker processes per engine; "
            f"{rounds} rounds (one timed run per engine and case per round, after a warm-up); seed {seed}")


def driver_markdown(d: dict[str, Any]) -> str:
    """The driver measurements as a small table."""
    if "error" in d:
        return f"\n### Driver (10,000 nodes)\n\nfailed: {d['error']}\n"
    rows = [("validate (DAG.levels) of 10,000 nodes", f"{d['validate_s']:.3f} s"),
            ("checkpoint plan (cache keys + one listing), empty local store", f"{d['plan_s']:.3f} s"),
            ("run, storage off: wall / driver peak RSS above its start",
             f"{d['run_s']:.2f} s / {d['run_peak_rss_mib']:.0f} MiB"),
            ("raw Ray, same DAG: wall / driver peak RSS above its start",
             f"{d['raw_ray_s']:.2f} s / {d['raw_ray_peak_rss_mib']:.0f} MiB"),
            ("cold run with local checkpoints", f"{d['cold_ckpt_s']:.2f} s"),
            ("fully cached re-run (every node `cached`, 0 tasks)",
             f"{d['cached_rerun_s']:.3f} s ({d['cached_rerun_s'] / d['cold_ckpt_s']:.3f} x cold)")]
    return ("\n### Driver (10,000-node layered DAG, no-op bodies)\n\n| measurement | value |\n|---|---|\n"
            + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the rounds and the driver measurements, write the table, chart and JSON line."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="sizes 100 and 1000, no-op bodies, 3 rounds, no driver measurement (a smoke run)")
    ap.add_argument("--engines", default=",".join(DEFAULT_ENGINES), help=f"comma list of {', '.join(ENGINE_NAMES)}")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--sizes", default=None,
                    help=f"comma list of node counts (default 100,1000,5000,{BIG}; quick 100,1000); sizes >= {BIG} "
                         f"run only on {', '.join(BIG_ENGINES)}")
    ap.add_argument("--bodies", default=None, help="noop,sleep (default both; quick: noop)")
    ap.add_argument("--rounds", type=int, default=3, help="timed runs per engine and case, one per round (>= 3)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes per engine (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, default=120.0,
                    help="seconds one run may take: a case whose smaller size, scaled linearly, would take longer "
                         "is skipped (reported as over budget)")
    ap.add_argument("--timeout", type=float, default=5400.0, help="seconds allowed per engine process")
    ap.add_argument("--no-driver", action="store_true", help="skip the driver measurements (bench_driver)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for compare.md and compare.png")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    engines = [e for e in args.engines.split(",") if e]
    shapes = [s for s in args.shapes.split(",") if s]
    bodies = [b for b in (args.bodies or ("noop" if args.quick else ",".join(BODIES))).split(",") if b]
    sizes = [int(x) for x in (args.sizes or ("100,1000" if args.quick else f"100,1000,5000,{BIG}")).split(",")]
    for name, got, allowed in (("engine", engines, ENGINE_NAMES), ("shape", shapes, SHAPES), ("body", bodies, BODIES)):
        unknown = [g for g in got if g not in allowed]
        if unknown:
            ap.error(f"unknown {name} {unknown}; expected from {', '.join(allowed)}")
    if BASELINE not in engines:
        engines.insert(0, BASELINE)  # ratios need it
    if args.rounds < 3:
        log.warning("--rounds %d < 3: medians are not meaningful", args.rounds)
    cases = [{"shape": s, "size": n, "body": b} for b in bodies for n in sorted(sizes) for s in shapes]

    t0 = time.perf_counter()
    idx, info = run_rounds(engines, cases, args.rounds, args.workers, args.seed, args.budget, args.timeout)
    disagreements = check_agreement(idx)
    for d in disagreements:
        log.error("engines disagree: %s", d)
    driver: dict[str, Any] = {}
    if not (args.quick or args.no_driver):
        driver = run_module("benchmarks.bench_driver", {"size": BIG, "workers": args.workers, "seed": args.seed},
                            args.timeout)

    setup = ", ".join(f"{e} {statistics.median(v['setup_s']):.1f} s" for e, v in info.items() if v["setup_s"])
    header = (f"## Engine comparison\n\n{time.strftime('%Y-%m-%d')}, "
              f"{machine_line(args.workers, args.rounds, args.seed)}. Median wall seconds per run, from building "
              f"the engine's graph to holding the leaf values; in brackets the ratio to raw Ray's median. Engine "
              f"start-up (Ray, Dask cluster, Prefect server, Azurite) is not timed: median {setup}. "
              f"\"over budget\": not run, because the engine's run of the next smaller size, scaled linearly, "
              f"would take more than {args.budget:.0f} s.")
    errors = {e: v["error"] for e, v in info.items() if "error" in v}
    errors.update({f"{e}/{s}/{n}/{b}": c["error"] for (e, s, n, b), c in idx.items() if "error" in c})
    table = markdown(idx, engines, cases, header)
    if driver:
        table += driver_markdown(driver)
    if errors or disagreements:
        table += "\nFailures:\n\n" + "\n".join([f"- {k}: {v}" for k, v in errors.items()]
                                               + [f"- {d}" for d in disagreements]) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.md").write_text(table)
    chart(idx, engines, bodies, args.out / "compare.png")
    print(table)

    figures = {f"{e}/{s}/{n}/{b}": {k: c[k] for k in ("nodes", "median_s", "min_s", "runs", "skipped", "error")
                                    if k in c} for (e, s, n, b), c in idx.items()}
    ratios = {}
    for (e, s, n, b), c in idx.items():
        base = idx.get((BASELINE, s, n, b), {}).get("median_s")
        if e != BASELINE and base and "median_s" in c:
            ratios[f"{e}/{s}/{n}/{b}"] = round(c["median_s"] / base, 3)
    out = {"benchmark": "compare", "engines": engines, "shapes": shapes, "sizes": sizes, "bodies": bodies,
           "workers": args.workers, "rounds": args.rounds, "seed": args.seed, "machine_cpus": os.cpu_count(),
           "wall_s": round(time.perf_counter() - t0, 1),
           "setup_s": {e: v["setup_s"] for e, v in info.items()}, "figures": figures,
           "ratios_to_raw_ray": ratios, "driver": driver, "errors": errors, "disagreements": disagreements,
           "table": str(args.out / "compare.md"), "chart": str(args.out / "compare.png")}
    sys.stdout.flush()
    print(json.dumps(out), flush=True)
    return 1 if disagreements or errors or "error" in driver else 0


if __name__ == "__main__":
    sys.exit(main())
