"""Rows of a table as Kafka message values and back: JSON (one object per message), or raw bytes.

Avro is not offered: confluent-kafka's Avro serialisers need a schema registry service and fastavro, which is
not cheap for a log adapter to require; JSON with an optional explicit Arrow schema on read covers the seed's use.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
from typing import Any
from collections.abc import Callable, Sequence

import pyarrow as pa

FORMATS = ("json", "bytes")
#: The column a ``format="bytes"`` table holds its message values in (written and read).
VALUE_COLUMN = "value"


def check_format(format: str) -> str:
    if format not in FORMATS:
        raise ValueError(f"unknown Kafka message format {format!r}: use one of {', '.join(FORMATS)} "
                         "(Avro needs a schema registry and is not supported)")
    return format


def _json_default(value: Any) -> Any:
    """JSON for the Arrow values ``json`` does not know: timestamps and dates as ISO text, decimals as text,
    bytes as base64."""
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    raise TypeError(f"cannot write a {type(value).__name__} value as JSON")


def encode_values(table: pa.Table, format: str) -> list[bytes]:
    """One message value per row."""
    if check_format(format) == "bytes":
        if VALUE_COLUMN not in table.column_names:
            raise ValueError(f"format='bytes' writes the table's {VALUE_COLUMN!r} column (binary), which it lacks")
        return [bytes(v) if v is not None else b"" for v in table.column(VALUE_COLUMN).to_pylist()]
    dumps = _row_encoder()
    return [dumps(row) for row in table.to_pylist()]


def _row_encoder() -> Callable[[dict[str, Any]], bytes]:
    """Compact JSON of one row. ``JSONEncoder.encode`` builds a new C encoder for every call; building it once per
    table (``json.encoder.c_make_encoder``, what ``encode`` calls) took a third off encoding a million rows
    (benchmarks/bench_kafka.py). That function is a CPython detail: without it, the public path."""
    from json import encoder as stdlib

    make = getattr(stdlib, "c_make_encoder", None)
    if make is None:
        dumps = json.JSONEncoder(separators=(",", ":"), default=_json_default, allow_nan=False).encode
        return lambda row: dumps(row).encode()
    # (markers, default, encoder, indent, key_separator, item_separator, sort_keys, skipkeys, allow_nan)
    one = make(None, _json_default, stdlib.encode_basestring_ascii, None, ":", ",", False, False, False)
    return lambda row: "".join(one(row, 0)).encode()


def encode_keys(table: pa.Table, key_column: str | None) -> Sequence[bytes | None] | None:
    """Each row's message key: the text of ``key_column`` (bytes as they are), or None (no keys)."""
    if key_column is None:
        return None
    if key_column not in table.column_names:
        raise ValueError(f"key_column {key_column!r} is not a column of the table ({', '.join(table.column_names)})")
    return [None if k is None else bytes(k) if isinstance(k, (bytes, bytearray)) else str(k).encode()
            for k in table.column(key_column).to_pylist()]


def decode_values(values: list[bytes], format: str, schema: pa.Schema | None = None) -> pa.Table:
    """A table from message values (JSON objects, or a binary ``value`` column)."""
    if check_format(format) == "bytes":
        return pa.table({VALUE_COLUMN: pa.array(values, pa.binary())})
    if not values:
        return schema.empty_table() if schema is not None else pa.table({})
    import pyarrow.json as pajson

    parse = pajson.ParseOptions(explicit_schema=schema) if schema is not None else None
    joined = b"\n".join(values)
    if joined.count(b"\n") != len(values) - 1:  # a value printed over several lines: one object per value
        rows = [json.loads(v) for v in values]
        return pa.Table.from_pylist(rows, schema=schema)
    # pyarrow's C++ JSON reader parses newline-delimited objects in parallel: the one pass over all values
    return pajson.read_json(pa.BufferReader(joined), parse_options=parse)
