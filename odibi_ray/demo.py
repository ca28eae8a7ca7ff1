"""The demo pipeline: a small sales pipeline run as Ray tasks on a local Ray (no cluster, no cloud account).

    odibi-ray demo [--backend ray|local] [--rows N]    # the installed package's demo
    ./dev demo                                         # in a source checkout: set up, then run it
    python examples/demo_pipeline.py [--backend ray|local] [--rows N]

It shows the levels, a flaky step that is retried by its RetryPolicy, per-node records and the outputs.
Checkpoints go to a local folder (the embedded default, ``.odibi/demo``): run it twice and the second run
reuses every node from the cache (status ``cached``, no task); ``--storage abfss://...`` works the same.
It ships inside the package (``odibi_ray.demo``) so that ``odibi-ray demo`` works after ``pip install``.
"""

from __future__ import annotations

import argparse
import os

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from odibi_ray import DAG, RetryPolicy, current_context, run

dag = DAG("demo_sales")
REGIONS = ["north", "south", "east", "west"]


@dag.node(params={"rows": 200_000, "seed": 7})
def extract(rows: int, seed: int) -> pa.Table:
    """Generate seeded sales rows (stands in for reading a source system)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return pa.table({
        "order_id": np.arange(rows),
        "region": pa.array(rng.choice(REGIONS, rows)),
        "product": pa.array(rng.choice(["widget", "gadget", "gizmo"], rows)),
        "amount": rng.gamma(2.0, 30.0, rows).round(2),
        "returned": rng.random(rows) < 0.03,
    })


@dag.node(inputs={"raw": "extract"},
          retry=RetryPolicy(max_attempts=3, delay_s=0.2, backoff=2.0, jitter=0.1, retry_on=(ConnectionError,)))
def clean(raw: pa.Table) -> pa.Table:
    """Drop returned orders. The first attempt fails as a flaky connection would; the policy retries it."""
    if current_context().attempt == 1:
        raise ConnectionError("simulated flaky connection to the source (the retry policy handles it)")
    return raw.filter(pc.invert(raw["returned"])).drop_columns(["returned"])


@dag.node(inputs={"sales": "clean"})
def by_region(sales: pa.Table) -> pa.Table:
    return sales.group_by("region").aggregate([("amount", "sum"), ("order_id", "count")]).sort_by("region")


@dag.node(inputs={"sales": "clean"})
def by_product(sales: pa.Table) -> pa.Table:
    return sales.group_by("product").aggregate([("amount", "mean")]).sort_by("product")


@dag.node(inputs={"regions": "by_region", "products": "by_product"})
def report(regions: pa.Table, products: pa.Table) -> dict:
    total = pc.sum(regions["amount_sum"]).as_py()
    best = regions.sort_by([("amount_sum", "descending")])["region"][0].as_py()
    return {"orders": pc.sum(regions["order_id_count"]).as_py(), "revenue": round(total, 2),
            "best_region": best, "products": products.num_rows}


def _loopback_only() -> None:
    """Keep the local Ray this demo starts on this machine, quiet towards the internet."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never report usage to the internet
    os.environ.setdefault("RAY_USAGE_STATS_REPORT_URL", "http://127.0.0.1:9/")  # nor that it is disabled
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep a local Ray on 127.0.0.1
    # Ray's dashboard probes cloud metadata addresses on start; send non-loopback HTTP to a closed local port.
    for var in ("HTTP_PROXY", "HTTPS_PROXY"):
        os.environ.setdefault(var, "http://127.0.0.1:9")
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost,127.0.0.0/8,::1")


def main(argv: list[str] | None = None) -> int:
    """Run the demo (argv as on the command line); 0 when every node succeeded."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["ray", "local"], default="ray")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--storage", default=".odibi/demo", help="checkpoint storage URI (default: a local folder)")
    parser.add_argument("--no-storage", action="store_true", help="run without checkpoints")
    args = parser.parse_args(argv)
    _loopback_only()
    dag["extract"].params = {**dag["extract"].params, "rows": args.rows}
    console = Console()
    console.print(f"[bold]{dag.name}[/]: {len(dag)} nodes in levels {dag.levels()}")
    init = dict(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024)
    result = run(dag, backend=args.backend, ray_init_kwargs=init, seed=0,
                 storage=None if args.no_storage else args.storage)
    table = Table(title=f"run {result.run_id} on {result.backend}: {result.status.value}")
    for col in ("level", "node", "status", "attempts", "seconds", "worker", "first error"):
        table.add_column(col)
    for level in result.by_level():
        for rec in level:
            first_error = next((a.error.type_name for a in rec.attempt_history if a.error), "")
            table.add_row(str(rec.level), rec.name, rec.status.value, str(rec.attempts),
                          f"{rec.duration_s or 0:.3f}", (rec.worker_node_id or "")[:12], first_error)
    console.print(table)
    if not args.no_storage:
        console.print(f"checkpoints in {args.storage}: run again and every node is reused (cached)")
    result.raise_for_status()
    console.print("report:", result["report"])
    console.print(result["by_region"].to_pandas() if _has_pandas() else result["by_region"])
    return 0


def _has_pandas() -> bool:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
