"""The ETL example's node functions (importable as ``examples.etl_steps`` by every Ray worker).

Used by both definitions of the same pipeline: ``examples/etl_pipeline.py`` (Python) and
``examples/etl_pipeline.yaml`` (``fn: examples.etl_steps:<function>``). The data is generated, seeded, with
numpy and pyarrow, so the example needs no source system: orders (with the dirt a real feed has: null and
negative amounts, cancelled orders) and customers (with duplicate rows).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from odibi_ray import current_context

log = logging.getLogger(__name__)

COUNTRIES = ["DE", "FR", "GB", "NL", "SE", "US"]
SEGMENTS = ["consumer", "smb", "enterprise"]
STATUSES = ["completed", "completed", "completed", "completed", "cancelled", "returned"]


class InjectedFailure(RuntimeError):
    """The failure ``--fail-at NODE`` injects (not retryable: the run fails, ``--resume`` finishes it)."""


def ingest_orders(rows: int, customers: int, seed: int) -> pa.Table:
    """Generate ``rows`` seeded orders (stands in for reading an order feed)."""
    rng = np.random.default_rng(seed)
    amount = rng.gamma(2.0, 40.0, rows).round(2)
    refund = rng.random(rows) < 0.01  # 1 % booked as negative amounts
    amount[refund] = -amount[refund]
    valid = rng.random(rows) >= 0.02  # 2 % of amounts missing
    day = rng.integers(0, 365, rows).astype("int32") + np.int32(19723)  # days since epoch: 2024
    return pa.table({
        "order_id": pa.array(np.arange(rows, dtype="int64")),
        "customer_id": pa.array(rng.integers(0, customers, rows, dtype="int64")),
        "order_date": pa.array(day, pa.int32()).cast(pa.date32()),
        "amount": pa.array(amount, mask=~valid),
        "status": pa.array(rng.choice(STATUSES, rows)),
    })


def ingest_customers(customers: int, seed: int) -> pa.Table:
    """Generate the customer master data, with about 5 % duplicate rows (a real extract has them)."""
    rng = np.random.default_rng(seed + 1)
    ids = np.arange(customers, dtype="int64")
    dup = rng.choice(ids, customers // 20) if customers >= 20 else ids[:0]
    all_ids = np.concatenate([ids, dup])
    country = rng.choice(COUNTRIES, customers)
    segment = rng.choice(SEGMENTS, customers)
    return pa.table({
        "customer_id": pa.array(all_ids),
        "country": pa.array(country[all_ids]),  # a duplicate repeats its customer's attributes
        "segment": pa.array(segment[all_ids]),
    })


def clean_orders(orders: pa.Table) -> pa.Table:
    """Keep completed orders with a positive amount. Attempt 1 fails like a flaky source; the policy retries."""
    if current_context().attempt == 1:
        raise ConnectionError("simulated flaky connection while reading orders (the retry policy handles it)")
    keep = pc.and_(pc.equal(orders["status"], "completed"), pc.greater(pc.fill_null(orders["amount"], 0.0), 0.0))
    return orders.filter(keep).drop_columns(["status"])


def clean_customers(customers: pa.Table) -> pa.Table:
    """One row per customer (duplicates removed)."""
    return (customers.group_by("customer_id", use_threads=False)
            .aggregate([("country", "first"), ("segment", "first")])
            .rename_columns(["customer_id", "country", "segment"])
            .sort_by("customer_id"))


def join_orders(orders: pa.Table, customers: pa.Table) -> pa.Table:
    """Orders enriched with their customer's country and segment, plus the order month (``YYYY-MM``)."""
    joined = orders.join(customers, "customer_id", join_type="inner")
    month = pc.strftime(joined["order_date"].cast(pa.timestamp("s")), format="%Y-%m")
    return joined.append_column("month", month).sort_by("order_id")


def aggregate_sales(enriched: pa.Table) -> pa.Table:
    """Revenue and order count per country, segment and month."""
    return (enriched.group_by(["country", "segment", "month"])
            .aggregate([("amount", "sum"), ("order_id", "count")])
            .rename_columns(["country", "segment", "month", "revenue", "orders"])
            .sort_by([("country", "ascending"), ("segment", "ascending"), ("month", "ascending")]))


def write_parquet(table: pa.Table, out: str, partition_by: list[str]) -> dict[str, Any]:
    """Write ``table`` as hive-partitioned Parquet under ``out`` (replacing earlier partitions); a summary."""
    import pyarrow.dataset as ds

    Path(out).mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    ds.write_dataset(table, out, format="parquet", partitioning=partition_by, partitioning_flavor="hive",
                     existing_data_behavior="delete_matching", basename_template="part-{i}.parquet",
                     file_visitor=lambda f: written.append(f.path))
    log.info("wrote %d rows in %d files under %s", table.num_rows, len(written), out)
    return {"out": out, "rows": table.num_rows, "files": len(written),
            "partitions": sorted({str(Path(p).parent.relative_to(out)) for p in written})}


def inject_failure(fn: Callable[..., Any], node: str) -> Callable[..., Any]:
    """``fn`` made to fail with :class:`InjectedFailure` (same cache key: the wrapper unwraps to ``fn``)."""
    @functools.wraps(fn)
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise InjectedFailure(f"failure injected into node {node!r} (--fail-at); run again with --resume latest")

    return failing
