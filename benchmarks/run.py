"""Engine comparison (issue 7, first slice): odibi_ray vs raw Ray vs Dask distributed on seeded DAG shapes.

Each engine runs in its OWN subprocess (``python -m benchmarks.engines``), one after the other in one
sitting, on the same seeded shapes (wide-and-shallow, deep chain, 20-level layered, diamond lattice),
sizes and bodies; every engine gets ``--workers`` worker processes (Ray ``num_cpus``, Dask ``n_workers``
with one thread each). Writes a Markdown table of medians and ratios to raw Ray to
``benchmarks/results/compare.md``, a chart of wall time against node count to
``benchmarks/results/compare.png``; the last line of stdout is one JSON object.

    python -m benchmarks.run [--quick] [--engines raw_ray,odibi_ray,dask] [--bodies noop,sleep]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.engines import BODIES, ENGINES, SHAPES

log = logging.getLogger("benchmarks.run")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BASELINE = "raw_ray"


def run_engine(engine: str, cases: list[dict[str, Any]], workers: int, repeats: int, seed: int,
               timeout_s: float) -> dict[str, Any]:
    """Time ``cases`` on ``engine`` in a fresh subprocess; its last stdout line is the result JSON."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "AWS_EC2_METADATA_DISABLED": "true"}
    req = json.dumps({"engine": engine, "cases": cases, "workers": workers, "repeats": repeats, "seed": seed})
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.engines"], input=req, capture_output=True,
                              text=True, cwd=ROOT, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"engine": engine, "error": f"timed out after {timeout_s:.0f} s", "cases": []}
    log.info("%s finished in %.1f s (exit %d)", engine, time.perf_counter() - t0, proc.returncode)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-5:]
        return {"engine": engine, "error": f"exit {proc.returncode}: {' | '.join(tail)}"[:500], "cases": []}
    return json.loads(lines[-1])


def index(results: list[dict[str, Any]]) -> dict[tuple[str, str, int, str], dict[str, Any]]:
    """(engine, shape, size, body) -> case record."""
    return {(r["engine"], c["shape"], c["size"], c["body"]): c for r in results for c in r.get("cases", [])}


def check_agreement(idx: dict[tuple[str, str, int, str], dict[str, Any]]) -> list[str]:
    """Every engine must compute the same leaf checksum per case; return the disagreements."""
    seen: dict[tuple[str, int, str], tuple[str, int]] = {}
    bad = []
    for (eng, shape, size, body), c in sorted(idx.items()):
        if "checksum" not in c:
            continue
        first = seen.setdefault((shape, size, body), (eng, c["checksum"]))
        if first[1] != c["checksum"]:
            bad.append(f"{shape}/{size}/{body}: {eng} checksum {c['checksum']} != {first[0]} {first[1]}")
    return bad


def markdown(idx: dict[tuple[str, str, int, str], dict[str, Any]], engines: list[str], cases: list[dict[str, Any]],
             header: str) -> str:
    """Markdown table: per case, each engine's median seconds and its ratio to raw Ray's median."""
    cols = " | ".join(f"{e} s | {e} / raw" if e != BASELINE else f"{e} s" for e in engines)
    lines = [header, "", f"| shape | nodes | body | {cols} |",
             "|---|---|---|" + "---|" * sum(1 if e == BASELINE else 2 for e in engines)]
    for case in cases:
        key = (case["shape"], case["size"], case["body"])
        base = idx.get((BASELINE, *key), {}).get("median_s")
        nodes = next((idx[(e, *key)]["nodes"] for e in engines if (e, *key) in idx), case["size"])
        cells = []
        for e in engines:
            c = idx.get((e, *key), {})
            med = c.get("median_s")
            cells.append(f"{med:.3f}" if med is not None else "failed" if "error" in c else "n/a")
            if e != BASELINE:
                cells.append(f"{med / base:.2f}" if med is not None and base else "n/a")
        lines.append(f"| {case['shape']} | {nodes} | {case['body']} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def chart(idx: dict[tuple[str, str, int, str], dict[str, Any]], engines: list[str], bodies: list[str],
          path: Path) -> None:
    """PNG: one panel per (body, shape), median wall time against node count, one line per engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(bodies), len(SHAPES), figsize=(4 * len(SHAPES), 3.4 * len(bodies)),
                             squeeze=False)
    for r, body in enumerate(bodies):
        for s, shape in enumerate(SHAPES):
            ax = axes[r][s]
            for eng in engines:
                pts = sorted((c["nodes"], c["median_s"]) for (e, sh, _, b), c in idx.items()
                             if e == eng and sh == shape and b == body and "median_s" in c)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=eng)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{shape}, {body}")
            ax.set_xlabel("nodes")
            ax.set_ylabel("median wall s")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, time every engine in its own process, write the table, chart and JSON line."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="sizes 100 and 1000, no-op bodies only, 3 repeats")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma list of {', '.join(ENGINES)}")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--sizes", default=None, help="comma list of node counts (default 100,1000,5000; quick 100,1000)")
    ap.add_argument("--bodies", default=None, help="noop,sleep (default both; quick: noop)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per case after one warm-up (>= 3)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes per engine (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per engine process")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for compare.md and compare.png")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    engines = [e for e in args.engines.split(",") if e]
    shapes = [s for s in args.shapes.split(",") if s]
    bodies = [b for b in (args.bodies or ("noop" if args.quick else ",".join(BODIES))).split(",") if b]
    sizes = [int(x) for x in (args.sizes or ("100,1000" if args.quick else "100,1000,5000")).split(",")]
    for name, got, allowed in (("engine", engines, ENGINES), ("shape", shapes, SHAPES), ("body", bodies, BODIES)):
        unknown = [g for g in got if g not in allowed]
        if unknown:
            ap.error(f"unknown {name} {unknown}; expected from {', '.join(allowed)}")
    if BASELINE not in engines:
        engines.insert(0, BASELINE)  # ratios need it
    if args.repeats < 3:
        log.warning("--repeats %d < 3: medians are not meaningful", args.repeats)
    cases = [{"shape": s, "size": n, "body": b} for b in bodies for n in sizes for s in shapes]

    t0 = time.perf_counter()
    results = [run_engine(e, cases, args.workers, args.repeats, args.seed, args.timeout) for e in engines]
    idx = index(results)
    disagreements = check_agreement(idx)
    for d in disagreements:
        log.error("engines disagree: %s", d)

    machine = (f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}; {args.workers} workers per engine; {args.repeats} repeats after "
               f"1 warm-up; seed {args.seed}")
    header = (f"## Engine comparison (median wall seconds; ratio = engine median / raw Ray median)\n\n"
              f"{time.strftime('%Y-%m-%d')}, {machine}. Engine setup (Ray start / Dask cluster start) is not "
              f"timed: " + ", ".join(f"{r['engine']} {r.get('setup_s', 'n/a')} s" for r in results) + ".")
    errors = {r["engine"]: r["error"] for r in results if "error" in r}
    errors.update({f"{e}/{s}/{n}/{b}": c["error"] for (e, s, n, b), c in idx.items() if "error" in c})
    table = markdown(idx, engines, cases, header)
    if errors:
        table += "\nFailures:\n\n" + "\n".join(f"- {k}: {v}" for k, v in errors.items()) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.md").write_text(table)
    chart(idx, engines, bodies, args.out / "compare.png")
    print(table)

    figures = {f"{e}/{s}/{n}/{b}": {k: c[k] for k in ("nodes", "median_s", "min_s", "all_s") if k in c}
               for (e, s, n, b), c in idx.items()}
    ratios = {}
    for (e, s, n, b), c in idx.items():
        base = idx.get((BASELINE, s, n, b), {}).get("median_s")
        if e != BASELINE and base and "median_s" in c:
            ratios[f"{e}/{s}/{n}/{b}"] = round(c["median_s"] / base, 3)
    out = {"benchmark": "compare", "engines": engines, "shapes": shapes, "sizes": sizes, "bodies": bodies,
           "workers": args.workers, "repeats": args.repeats, "seed": args.seed, "machine_cpus": os.cpu_count(),
           "wall_s": round(time.perf_counter() - t0, 1), "setup_s": {r["engine"]: r.get("setup_s") for r in results},
           "figures": figures, "ratios_to_raw_ray": ratios, "errors": errors, "disagreements": disagreements,
           "table": str(args.out / "compare.md"), "chart": str(args.out / "compare.png")}
    sys.stdout.flush()
    print(json.dumps(out), flush=True)
    return 1 if disagreements or errors else 0


if __name__ == "__main__":
    sys.exit(main())
