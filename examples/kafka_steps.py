"""The node functions of examples/kafka_ingest.py (a module of their own: Ray workers import it by name)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

#: The columns an event has on the topic (what the producer writes and the source reads, typed).
EVENT_SCHEMA = pa.schema([("order_id", pa.int64()), ("customer", pa.string()), ("amount", pa.float64()),
                          ("currency", pa.string())])


def sample_events(start: int, n: int, seed: int = 7) -> pa.Table:
    """``n`` sample order events with ids ``start..start+n-1``; about 1 in 20 is bad (no customer, or amount <= 0)."""
    rng = random.Random(seed + start)
    rows = []
    for i in range(start, start + n):
        bad = rng.random() < 0.05
        rows.append({"order_id": i, "customer": None if bad and i % 2 else f" Customer-{rng.randint(1, 40)} ",
                     "amount": -1.0 if bad and not i % 2 else round(rng.uniform(1, 500), 2),
                     "currency": rng.choice(["EUR", "usd", "GBP"])})
    return pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)


def clean(raw: pa.Table) -> pa.Table:
    """Drop bad events (no customer, amount <= 0); normalise names and currencies; keep where each came from."""
    if raw.num_rows == 0:
        return raw
    ok = pc.and_(pc.is_valid(raw["customer"]), pc.greater(raw["amount"], 0))
    good = raw.filter(ok)
    return pa.table({
        "order_id": good["order_id"],
        "customer": pc.utf8_lower(pc.utf8_trim_whitespace(good["customer"])),
        "amount": good["amount"],
        "currency": pc.utf8_upper(good["currency"]),
        "partition": good["_partition"],
        "offset": good["_offset"],
    })


def write_lake(clean: pa.Table, lake: str) -> dict:
    """Write the cleaned batch as one Parquet file under ``lake``, named by the offsets it came from: a batch that
    is written again (a resume, a retry) replaces the same file, never a second copy."""
    revenue = float(pc.sum(clean["amount"]).as_py() or 0) if clean.num_rows else 0.0
    if clean.num_rows == 0:
        return {"file": None, "rows": 0, "revenue": 0.0}
    path = Path(lake) / f"part-{batch_name(clean)}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(clean, tmp)
    tmp.replace(path)  # whole or not at all
    return {"file": str(path), "rows": clean.num_rows, "revenue": round(revenue, 2)}


def batch_name(clean: pa.Table) -> str:
    """A name for a batch from the (partition, offset) pairs of its rows."""
    pairs = sorted(zip(clean["partition"].to_pylist(), clean["offset"].to_pylist()))
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]


def lake_rows(lake: str) -> int:
    """How many rows the lake folder holds (every Parquet file in it)."""
    files = sorted(Path(lake).glob("part-*.parquet"))
    return sum(pq.read_metadata(f).num_rows for f in files)
