"""Cloud demo (the seed's): CloudAdapter, CloudCacheManager.get_or_compute, DistributedCheckpointManager, metrics.

    python examples/run_cloud_demo.py                      # simulation: a stateful local stand-in for ADLS
    python examples/run_cloud_demo.py --backend ray        # the cache hit happens in a Ray worker process
    python examples/run_cloud_demo.py --azure-endpoint http://127.0.0.1:10000/devstoreaccount1 \\
        --account devstoreaccount1 --account-key env://AZURITE_KEY --container demo     # Azurite
    AZURE_STORAGE_ACCOUNT=myacct AZURE_STORAGE_KEY=... python examples/run_cloud_demo.py   # real ADLS Gen2

Simulation needs no account: what it writes lands in a machine-wide folder (``ODIBI_RAY_SIMULATION_DIR``) with
the semantics of the real backend, so the second ``get_or_compute`` really is a cache hit (the seed's simulation
recomputed every time). Against Azure the container must exist. The account key is passed as a reference
(``env://VAR``), resolved in the process that uses it, and never printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never report usage to the internet
os.environ.setdefault("RAY_USAGE_STATS_REPORT_URL", "http://127.0.0.1:9/")  # nor that it is disabled
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep a local Ray on 127.0.0.1


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

# The imports follow the Ray environment set above (Ray reads it when it is imported).
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from odibi_ray import Checkpoint, CloudAdapter, CloudCacheManager, DistributedCheckpointManager  # noqa: E402
from odibi_ray.errors import NotFoundError  # noqa: E402
from odibi_ray.observe.metrics import MetricsManager, MetricType  # noqa: E402

PIPELINE = "cloud_demo"
log = logging.getLogger(__name__)


def sales_table(rows: int, seed: int = 3) -> pa.Table:
    """A seeded sales table (the demo's "raw file")."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return pa.table({"region": pa.array(rng.choice(["north", "south", "east", "west"], rows)),
                     "amount": rng.gamma(2.0, 30.0, rows).round(2)})


def summarise(table: pa.Table) -> pa.Table:
    """The "expensive transform" the cache saves: revenue and orders per region."""
    return (table.group_by("region").aggregate([("amount", "sum"), ("amount", "count")])
            .rename_columns(["region", "revenue", "orders"]).sort_by("region"))


def make_adapter(args: argparse.Namespace) -> CloudAdapter:
    """The simulated adapter, or a real one for Azurite / ADLS Gen2 when an account is given."""
    if args.simulate:
        return CloudAdapter.create("azure", account_name=args.account or "demoaccount", simulate=True).connect()
    options: dict[str, Any] = {"account_key": args.account_key}
    if args.azure_endpoint:
        options["endpoint"] = args.azure_endpoint
    return CloudAdapter.create("azure", account_name=args.account, **options).connect()


def lookup_in_worker(cache: CloudCacheManager, key: str, raw_path: str) -> tuple[pa.Table, dict[str, Any], int]:
    """In a Ray worker process: ``get_or_compute`` with the worker's own client; its metrics go back."""
    import os as _os

    cache.metrics = MetricsManager()
    value = cache.get_or_compute(key, lambda: summarise(cache.adapter.read(raw_path)))
    return value, cache.metrics.snapshot(), _os.getpid()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulate", action="store_true", help="force simulation (the default without an account)")
    parser.add_argument("--account", default=env.get("AZURE_STORAGE_ACCOUNT"), help="storage account name")
    parser.add_argument("--account-key", default=None, metavar="env://VAR|kv://VAULT/NAME",
                        help="account key reference (default env://AZURE_STORAGE_KEY when that is set)")
    parser.add_argument("--azure-endpoint", default=env.get("AZURE_STORAGE_ENDPOINT"),
                        help="account endpoint (Azurite: http://127.0.0.1:10000/devstoreaccount1)")
    parser.add_argument("--container", default="odibi-demo", help="container (filesystem) holding the demo")
    parser.add_argument("--checkpoint-dir", default=".odibi/cloud_demo_checkpoints", help="local checkpoint copy")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--backend", choices=["local", "ray"], default="local",
                        help="ray: the second get_or_compute runs in a Ray worker process")
    args = parser.parse_args(argv)
    args.simulate = args.simulate or not args.account
    if not args.simulate:
        if args.account_key is None and env.get("AZURE_STORAGE_KEY"):
            args.account_key = "env://AZURE_STORAGE_KEY"
        if not args.account_key:
            parser.error("Azure mode needs --account-key env://VAR (or AZURE_STORAGE_KEY in the environment)")
    if args.rows < 1:
        parser.error(f"--rows must be >= 1, got {args.rows}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the four demo steps; 0 when the second lookup was a cache hit and the checkpoint round-tripped."""
    args = parse_args(argv)
    if args.simulate or is_loopback_endpoint(args.azure_endpoint):
        keep_http_on_loopback()
    console = Console(width=None if sys.stdout.isatty() else 120)
    metrics = MetricsManager()
    adapter = make_adapter(args)
    mode = "simulation" if args.simulate else f"Azure account {args.account!r}"
    console.rule(f"[bold]DEMO 1[/]: CloudAdapter ({mode})")
    raw_path = f"{args.container}/raw/sales.parquet"
    try:
        adapter.write(sales_table(args.rows), raw_path, format="parquet")
    except NotFoundError as exc:
        console.print(f"[red]{exc}[/]: create the container first (e.g. `az storage container create -n "
                      f"{args.container}`)")
        return 2
    raw = adapter.read(raw_path)
    console.print(f"wrote and read back {raw_path}: {raw.num_rows:,} rows; listed: "
                  f"{adapter.list(args.container + '/raw/', pattern='*.parquet')}")

    console.rule("[bold]DEMO 2[/]: CloudCacheManager.get_or_compute")
    cache = CloudCacheManager(adapter, prefix=f"{args.container}/cache", default_ttl_s=3600, metrics=metrics)
    key = cache.compute_key("summarise", {"file": raw_path, "rows": args.rows}, version="v1")
    cache.invalidate(key)  # start cold so that both the miss and the hit are shown on every run
    calls = []

    def compute() -> pa.Table:
        calls.append(1)
        return summarise(adapter.read(raw_path))

    timings = Table(title=f"cache key {key[:16]}...")
    for col in ("call", "where", "result", "seconds"):
        timings.add_column(col)
    t0 = time.perf_counter()
    first = cache.get_or_compute(key, compute)
    took = time.perf_counter() - t0
    metrics.record(MetricType.EXECUTION_TIME, "get_or_compute", value=took, call="1")
    timings.add_row("1", f"driver pid {os.getpid()}", "miss: computed and stored", f"{took:.4f}")
    t0 = time.perf_counter()
    if args.backend == "ray":
        import ray

        if not ray.is_initialized():
            ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024)
        second, snapshot, pid = ray.get(ray.remote(lookup_in_worker).remote(cache, key, raw_path))
        metrics.merge(snapshot)
        where = f"Ray worker pid {pid}"
    else:
        second, where = cache.get_or_compute(key, compute), f"driver pid {os.getpid()}"
    took = time.perf_counter() - t0
    metrics.record(MetricType.EXECUTION_TIME, "get_or_compute", value=took, call="2")
    hits = metrics.get_metric_value(MetricType.CACHE_HIT, cache.prefix)
    hit = bool(hits) and len(calls) == 1 and second.equals(first)
    timings.add_row("2", where, "hit: read from storage" if hit else "MISS (unexpected)", f"{took:.4f}")
    console.print(timings)
    console.print(f"compute() ran {len(calls)} time(s); revenue per region:",
                  dict(zip(first["region"].to_pylist(), first["revenue"].to_pylist())))

    console.rule("[bold]DEMO 3[/]: DistributedCheckpointManager")
    manager = DistributedCheckpointManager(args.checkpoint_dir, cloud_adapter=adapter,
                                           cloud_path=f"{args.container}/checkpoints", keep_last_n=5)
    checkpoint = Checkpoint.new(PIPELINE, {"summary": first, "rows": args.rows, "step": "summarised"},
                                metadata={"source": raw_path})
    manager.save(checkpoint)
    loaded = manager.load(checkpoint.checkpoint_id)
    latest = manager.load_latest(PIPELINE)
    same = loaded.state["summary"].equals(first) and loaded.state["rows"] == args.rows
    console.print(f"saved {checkpoint.checkpoint_id} (cloud + {args.checkpoint_dir}); loaded back "
                  f"{'identical' if same else 'DIFFERENT'}; latest of {PIPELINE!r}: "
                  f"{latest.checkpoint_id if latest else None}; kept: {len(manager.list_checkpoints(PIPELINE))}")
    total = pc.sum(loaded.state["summary"]["revenue"]).as_py()
    console.print(f"checkpointed revenue total: {total:,.2f}")

    console.rule("[bold]Metrics[/]")
    metrics.print_summary(console)
    rate = metrics.hit_rate(cache.prefix)
    console.print(f"cache hit rate: {rate:.0%}" if rate is not None else "cache hit rate: -")
    return 0 if hit and same and latest is not None and latest.checkpoint_id == checkpoint.checkpoint_id else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
