"""ETL example: ingest orders and customers, clean, join, aggregate, write partitioned Parquet, on Ray.

    python examples/etl_pipeline.py                        # about a million orders, local Ray,
                                                           # checkpoints in .odibi/etl
    python examples/etl_pipeline.py                        # again: every node is `cached`, no task runs
    python examples/etl_pipeline.py --rows 200000 --fail-at join     # the run fails at `join` ...
    python examples/etl_pipeline.py --rows 200000 --resume latest    # ... and resume finishes it
    python examples/etl_pipeline.py --yaml examples/etl_pipeline.yaml   # the same pipeline, defined in YAML
    python examples/etl_pipeline.py --storage abfss://lake@acct.dfs.core.windows.net/etl \\
        --storage-option account_key=env://AZ_KEY         # checkpoints on ADLS (Azurite: endpoint=http://127.0.0.1:10000/devstoreaccount1)

The data is generated (seeded) by the ingest nodes. It shows levels (two sources run side by side), a flaky
step (`clean_orders` fails on attempt 1 with a ConnectionError; its RetryPolicy retries it), caching on a
re-run, and resume after an injected failure. The partitioned Parquet goes to ``--out`` (a folder on the
machine whose worker runs the write node).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never report usage to the internet
os.environ.setdefault("RAY_USAGE_STATS_REPORT_URL", "http://127.0.0.1:9/")  # nor that it is disabled
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep a local Ray on 127.0.0.1
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # pyarrow/boto3: no cloud metadata probe


def keep_http_on_loopback() -> None:
    """Ray's dashboard probes cloud metadata addresses on start: send non-loopback HTTP to a closed local port.

    Called unless the run targets a real cloud endpoint (whose clients, in this process and in the Ray
    workers it starts, must then reach the internet)."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY"):
        os.environ.setdefault(var, "http://127.0.0.1:9")
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost,127.0.0.0/8,::1")


def is_loopback_endpoint(endpoint: str | None) -> bool:
    """Whether an endpoint URL is on this machine (Azurite, moto) rather than a real cloud."""
    from urllib.parse import urlparse

    host = urlparse(endpoint or "").hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python examples/etl_pipeline.py` from anywhere: examples.etl_steps importable
    sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402 - after the sys.path setup above
from rich.table import Table  # noqa: E402 - after the sys.path setup above

from examples import etl_steps  # noqa: E402 - after the sys.path setup above
from odibi_ray import DAG, NodeStatus, RetryPolicy, RunResult, RunStatus, run  # noqa: E402 - after the sys.path setup above

PIPELINE = "etl_sales"
NODES = ("ingest_orders", "ingest_customers", "clean_orders", "clean_customers", "join", "aggregate",
         "write_orders", "write_summary")
log = logging.getLogger(__name__)


def build_dag(rows: int = 1_000_000, customers: int = 50_000, seed: int = 7, out: str = "out/etl") -> DAG:
    """The pipeline in Python (examples/etl_pipeline.yaml is the same DAG in YAML)."""
    dag = DAG(PIPELINE)
    t = 600
    dag.add_node(name="ingest_orders", fn=etl_steps.ingest_orders, timeout_s=t,
                 params={"rows": rows, "customers": customers, "seed": seed})
    dag.add_node(name="ingest_customers", fn=etl_steps.ingest_customers, timeout_s=t,
                 params={"customers": customers, "seed": seed})
    dag.add_node(name="clean_orders", fn=etl_steps.clean_orders, inputs={"orders": "ingest_orders"}, timeout_s=t,
                 retry=RetryPolicy(max_attempts=3, delay_s=0.2, backoff=2.0, jitter=0.1, retry_on=(ConnectionError,)))
    dag.add_node(name="clean_customers", fn=etl_steps.clean_customers, inputs={"customers": "ingest_customers"},
                 timeout_s=t)
    dag.add_node(name="join", fn=etl_steps.join_orders,
                 inputs={"orders": "clean_orders", "customers": "clean_customers"}, num_cpus=1, timeout_s=t)
    dag.add_node(name="aggregate", fn=etl_steps.aggregate_sales, inputs={"enriched": "join"}, timeout_s=t)
    dag.add_node(name="write_orders", fn=etl_steps.write_parquet, inputs={"table": "join"}, timeout_s=t,
                 params={"out": f"{out}/orders", "partition_by": ["country"]})
    dag.add_node(name="write_summary", fn=etl_steps.write_parquet, inputs={"table": "aggregate"}, timeout_s=t,
                 params={"out": f"{out}/summary", "partition_by": ["country"]})
    return dag


def configure(dag: DAG, *, rows: int, customers: int, seed: int, out: str) -> DAG:
    """Set sizes, seed and the (absolute) output folder on either definition, so both get equal cache keys."""
    dag["ingest_orders"].params.update(rows=rows, customers=customers, seed=seed)
    dag["ingest_customers"].params.update(customers=customers, seed=seed)
    base = Path(out).resolve()
    dag["write_orders"].params["out"] = str(base / "orders")
    dag["write_summary"].params["out"] = str(base / "summary")
    return dag


def load_yaml(path: str) -> DAG:
    """The pipeline from its YAML definition (needs odibi_ray.definition.spec)."""
    from odibi_ray.definition.spec import load_pipeline  # type: ignore[import-not-found]

    return load_pipeline(path).to_dag()


def _options(pairs: list[str]) -> dict[str, str | bool]:
    """KEY=VALUE storage options; true/false become booleans (managed_identity=false must mean False)."""
    options: dict[str, str | bool] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--storage-option takes KEY=VALUE (e.g. account_key=env://AZ_KEY), got {pair!r}")
        low = value.strip().lower()
        options[key] = True if low == "true" else False if low == "false" else value
    return options


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="orders to generate (default 1,000,000)")
    parser.add_argument("--customers", type=int, default=None, help="customers (default rows/20, at most 50,000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--storage", default=".odibi/etl", help="checkpoint storage URI (default: a local folder)")
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="storage option, e.g. endpoint=URL or account_key=env://VAR (repeatable)")
    parser.add_argument("--backend", choices=["ray", "local"], default="ray")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray, or the "
                        "cluster this job was submitted to)")
    parser.add_argument("--out", default="out/etl", help="folder for the partitioned Parquet output")
    parser.add_argument("--fail-at", choices=NODES, default=None, help="make this node fail (then --resume latest)")
    parser.add_argument("--resume", default=None, metavar="latest|RUN_ID", help="finish a failed run")
    parser.add_argument("--yaml", default=None, metavar="PATH", help="load the pipeline from YAML instead")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error(f"--rows must be >= 1, got {args.rows}")
    if args.customers is None:
        args.customers = max(10, min(50_000, args.rows // 20))
    if args.customers < 1:
        parser.error(f"--customers must be >= 1, got {args.customers}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the ETL pipeline once; 0 when it succeeded, 1 when a node failed (``--resume latest`` then)."""
    args = parse_args(argv)
    options = _options(args.storage_option)
    endpoint = options.get("endpoint") or options.get("endpoint_override")
    cloud = args.storage.split("://", 1)[0].lower() in ("abfss", "abfs", "az", "s3", "hdfs", "gs")
    if not cloud or is_loopback_endpoint(endpoint):
        keep_http_on_loopback()
    console = Console(width=None if sys.stdout.isatty() else 120)
    dag = load_yaml(args.yaml) if args.yaml else build_dag()
    configure(dag, rows=args.rows, customers=args.customers, seed=args.seed, out=args.out)
    if args.fail_at:
        node = dag[args.fail_at]
        node.fn = etl_steps.inject_failure(node.fn, args.fail_at)
    source = f"YAML {args.yaml}" if args.yaml else "Python"
    console.print(f"[bold]{dag.name}[/] ({source}): {len(dag)} nodes, {args.rows:,} orders, "
                  f"{args.customers:,} customers")
    for i, names in enumerate(dag.levels()):
        console.print(f"  level {i}: {', '.join(names)}")
    # when odibi_ray starts Ray itself, its workers can import examples.etl_steps wherever this is run from
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    init: dict = {"runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}}}
    if args.address is None and not os.environ.get("RAY_ADDRESS"):  # sizes only for a Ray this process starts
        init.update(num_cpus=os.cpu_count() or 2, include_dashboard=False, object_store_memory=512 * 1024 * 1024)
    # --fail-at NODE runs that node again even when it is cached (refresh): the injected failure always happens
    result = run(dag, backend=args.backend, address=args.address, ray_init_kwargs=init, seed=0,
                 storage=args.storage, storage_options=options, resume=args.resume,
                 refresh=[args.fail_at] if args.fail_at else None)
    if result.resumed_from == "succeeded":
        console.print(f"[yellow]run {result.run_id} had already succeeded[/]: nothing was left to finish")
    show(console, result)
    if result.status is not RunStatus.SUCCEEDED:
        failed = [r.name for r in result.nodes.values() if r.status is NodeStatus.FAILED]
        console.print(f"[red]run {result.run_id} failed at {', '.join(failed)}[/]: finish it with "
                      f"--resume latest (or --resume {result.run_id}); nodes done are not run again")
        return 1
    orders, summary = result["write_orders"], result["write_summary"]
    console.print(f"wrote {orders['rows']:,} orders in {orders['files']} files under {orders['out']} "
                  f"(partitions: {', '.join(orders['partitions'])})")
    console.print(f"wrote {summary['rows']:,} summary rows under {summary['out']}")
    console.print(f"checkpoints in {args.storage}: run again and every node is reused (cached)")
    return 0


def show(console: Console, result: RunResult) -> None:
    """The per-node table, grouped by level."""
    table = Table(title=f"run {result.run_id} on {result.backend}: {result.status.value}")
    for col in ("level", "node", "status", "attempts", "seconds", "worker", "errors"):
        table.add_column(col)
    for level in result.by_level():
        for rec in level:
            errors = ", ".join(a.error.type_name for a in rec.attempt_history if a.error)
            table.add_row(str(rec.level), rec.name, rec.status.value, str(rec.attempts),
                          f"{rec.duration_s or 0:.3f}", (rec.worker_node_id or "")[:12], errors)
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
