"""The folder example's node functions (importable as ``examples.map_steps`` by every Ray worker).

Used by both definitions of the same pipeline: ``examples/map_folder.py`` (Python) and ``examples/map_folder.yaml``
(``fn: examples.map_steps:<function>``). A landing folder receives one CSV of sales per shop and day; the pipeline
lists it, cleans every file in its own task (a mapped node: one item per file) and combines the cleaned tables into
one Parquet file plus a summary.

The items are small descriptions of the files (path, size, modification time), not their contents: the driver
reads the listing to split it into items, while each file is read by the worker that cleans it. Size and time are
part of the item, so a file rewritten in place is a new item (cleaned again), and an unchanged file keeps its
cache key (reused).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

SHOPS = ["amsterdam", "berlin", "lyon", "madrid", "oslo", "porto", "turin", "vienna"]
PRODUCTS = ["apples", "bread", "cheese", "coffee", "eggs", "milk", "tea"]


# --- the pipeline's nodes -----------------------------------------------------------------------------------

def list_files(folder: str, pattern: str = "*.csv") -> list[dict[str, Any]]:
    """The files of ``folder`` matching ``pattern``, sorted by name: one item each for the mapped node."""
    files = sorted(p for p in Path(folder).glob(pattern) if p.is_file())
    return [{"path": str(p), "size": (st := p.stat()).st_size, "mtime_ns": st.st_mtime_ns} for p in files]


def folder_state(params: dict[str, Any]) -> str:
    """Cache key function of ``list_files``: the listing itself (names, sizes, times). An unchanged folder gives
    the same key (the listing is reused and nothing runs); a new or changed file gives a new one."""
    listing = list_files(params["folder"], params.get("pattern", "*.csv"))
    return hashlib.sha256(repr(listing).encode()).hexdigest()


def clean_file(file: dict[str, Any]) -> pa.Table:
    """One landed file, cleaned: rows without a product or with a missing or non-positive amount dropped,
    product names trimmed and lower-cased, and a ``source`` column naming the file."""
    table = pacsv.read_csv(file["path"], convert_options=pacsv.ConvertOptions(
        column_types={"shop": pa.string(), "day": pa.date32(), "product": pa.string(), "quantity": pa.int64(),
                      "amount": pa.float64()}))
    product = pc.utf8_lower(pc.utf8_trim_whitespace(table["product"]))
    table = table.set_column(table.schema.get_field_index("product"), "product", product)
    keep = pc.and_(pc.is_valid(table["product"]), pc.greater(pc.fill_null(table["amount"], 0.0), 0.0))
    keep = pc.and_(keep, pc.not_equal(pc.fill_null(table["product"], ""), ""))
    table = table.filter(keep)
    return table.append_column("source", pa.array([Path(file["path"]).name] * table.num_rows, pa.string()))


def combine(tables: list[pa.Table], out: str) -> dict[str, Any]:
    """The cleaned tables (one per file, in file order) as one Parquet file at ``out``, and a summary."""
    combined = pa.concat_tables(tables) if tables else pa.table({})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    pq.write_table(combined, tmp)
    os.replace(tmp, out)  # readers never see half a file
    revenue = pc.sum(combined["amount"]).as_py() if combined.num_rows else 0.0
    by_shop: dict[str, float] = {}
    if combined.num_rows:
        grouped = combined.group_by("shop", use_threads=False).aggregate([("amount", "sum")]).sort_by("shop")
        by_shop = {s: round(v, 2) for s, v in zip(grouped["shop"].to_pylist(), grouped["amount_sum"].to_pylist())}
    return {"files": len(tables), "rows": combined.num_rows, "revenue": round(revenue or 0.0, 2),
            "by_shop": by_shop, "out": out}


# --- sample data (not part of the pipeline) -------------------------------------------------------------------

def write_sample_file(folder: str | Path, index: int, rows: int = 500, seed: int = 11) -> Path:
    """Write landed file number ``index`` (``sales-0007.csv``): seeded sales of one shop and day, with the dirt a
    real export has (missing and negative amounts, blank and badly cased product names)."""
    rng = np.random.default_rng(seed * 100_003 + index)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shop = SHOPS[index % len(SHOPS)]
    day = np.datetime64("2025-01-01") + np.timedelta64(index // len(SHOPS), "D")
    products = rng.choice(PRODUCTS, rows).astype(object)
    products[rng.random(rows) < 0.03] = ""
    upper = rng.random(rows) < 0.2
    products[upper] = [f"  {p.upper()} " for p in products[upper]]
    amounts = rng.gamma(2.0, 3.5, rows).round(2)
    amounts[rng.random(rows) < 0.01] *= -1
    missing = rng.random(rows) < 0.02
    lines = ["shop,day,product,quantity,amount"]
    for product, quantity, amount, gone in zip(products, rng.integers(1, 6, rows), amounts, missing):
        lines.append(f"{shop},{day},{product},{quantity},{'' if gone else amount}")
    path = folder / f"sales-{index:04d}.csv"
    tmp = path.with_suffix(".part")  # a file lands whole: written aside, then renamed (never listed half-written)
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def next_sample_index(folder: str | Path) -> int:
    """The number of the next sample file: one past the highest already landed (0 in an empty folder)."""
    numbers = [int(p.stem.split("-")[1]) for p in Path(folder).glob("sales-*.csv") if p.stem.split("-")[1].isdigit()]
    return max(numbers, default=-1) + 1


def landed(folder: str | Path) -> int:
    """How many files the folder holds (what ``list_files`` will list)."""
    return len(list_files(str(folder)))
