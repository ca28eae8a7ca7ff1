"""Codecs for node outputs: turn a node's return value into ``(codec name, bytes)`` and back, exactly.

The codec is chosen from the value's exact type, and a cheaper, portable format is used only when it
gives the value back equal and of the same type (``decode(*encode(x)) == x``), otherwise ``pickle``:

- ``"arrow"``: a ``pyarrow.Table`` (a ``RecordBatch`` comes back as a Table) as Parquet (zstd), schema
  and field metadata kept. A table Parquet would change (``date64``, ``timestamp[s]``, maps, unions,
  intervals, chunks with different dictionaries, zero columns but some rows, ...) is pickled instead.
- ``"pandas"``: a ``pandas.DataFrame`` as Parquet with its index (pyarrow's pandas metadata keeps dtypes,
  index, column labels and ``attrs``). pandas is imported only when the value's type comes from pandas.
  A frame Parquet cannot carry exactly (duplicate column names, mixed, nested or non-text ``object``
  columns, non-text or empty categoricals, ``datetime64[s]``, complex numbers, zero columns but some rows,
  ...) is pickled instead. Not kept: a ``DatetimeIndex``'s ``freq``; a ``RangeIndex`` of column labels may
  come back as an equal ``int64`` Index.
- ``"bytes"``: ``bytes``, ``bytearray`` and ``memoryview`` as-is; decoded as ``bytes``.
- ``"json"``: ``None``, ``bool``, ``int``, ``str``, finite ``float``, and ``list`` / ``dict`` (``str`` keys)
  of those, nested, with exact types (no subclasses) and no container appearing twice (a shared or
  cyclic container would not come back shared).
- ``"pickle"``: anything else, with cloudpickle, protocol 5 (tuples, sets, NaN/inf, non-``str`` keys,
  numpy values, datetimes, objects, ...). A value cloudpickle cannot write (a lock, a generator, nesting
  deeper than about 1000 levels) raises :class:`CodecError`. Decoding a pickle runs code: only decode
  payloads this library wrote to storage you trust (the checkpoint layer verifies their SHA-256 first).
"""

from __future__ import annotations

import json
import logging
import math
import pickle
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cloudpickle

from ..errors import OdibiError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow as pa

log = logging.getLogger(__name__)

CODECS: tuple[str, ...] = ("arrow", "pandas", "bytes", "json", "pickle")

_PICKLE_PROTOCOL = 5
_JSON_ATOMS = frozenset({str, int, bool, type(None)})
# pyarrow types that an ``object`` pandas column may become and still come back as the same objects.
_OBJECT_SAFE_TYPE_CHECKS = ("is_string", "is_large_string", "is_binary", "is_large_binary", "is_date32",
                            "is_decimal", "is_null", "is_time")


class CodecError(OdibiError):
    """A node output could not be encoded, or a payload could not be decoded (unknown codec, corrupt data)."""


def encode(value: Any, allow_pickle: bool = True) -> tuple[str, bytes | bytearray]:
    """Pick the codec for a node's output value and serialise it: (codec name, payload). ``allow_pickle=False``:
    a value that only pickle can carry raises :class:`CodecError` naming its type and the codecs that would.

    The payload is ``bytes``, or for the Parquet codecs (arrow, pandas) the ``bytearray`` the writer filled:
    never copied once written, so a large table's payload exists once in memory."""
    vtype = type(value)
    if vtype is bytes:
        return "bytes", value
    if vtype is bytearray or vtype is memoryview:
        return "bytes", bytes(value)
    if (vtype in _JSON_ATOMS or vtype is float or vtype is list or vtype is dict) and _json_exact(value):
        try:
            return "json", _JSON_ENCODER.encode(value).encode("ascii")
        except (ValueError, RecursionError) as exc:  # an int too long for str(), nesting too deep
            log.debug("json cannot carry this %s exactly (%s); pickling it", vtype.__name__, exc)
    else:
        package = vtype.__module__.partition(".")[0]
        if package == "pyarrow":
            table = _as_table(value)
            if table is not None:
                payload = _encode_arrow(table)
                if payload is not None:
                    return "arrow", payload
                # pyarrow's own pickling loses the row count of a table without columns; IPC keeps it.
                value = _ArrowIPC(table) if table.num_columns == 0 else table
        elif package == "pandas":
            payload = _encode_pandas(value)
            if payload is not None:
                return "pandas", payload
    if not allow_pickle:
        raise CodecError(f"a value of type {vtype.__module__}.{vtype.__qualname__} can only be stored as a pickle, "
                         "and allow_pickle is off: return a pyarrow Table or pandas DataFrame (arrow, pandas codecs), "
                         "bytes, or JSON-exact data (dict with str keys, list, str, int, finite float, bool, None), "
                         "or allow pickle")
    return "pickle", _pickle(value)


def decode(codec: str, payload: bytes | bytearray | memoryview) -> Any:
    """The value back from encode's output; raises CodecError for an unknown codec or a corrupt payload.

    The Parquet codecs read a ``bytearray`` or ``memoryview`` in place (no copy of a large payload); the others
    take a ``bytes`` copy of it."""
    if type(payload) is not bytes:
        if not isinstance(payload, (bytearray, memoryview)):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        if codec not in ("arrow", "pandas"):
            payload = bytes(payload)
        elif isinstance(payload, memoryview):
            payload = payload.cast("B")
    if codec == "bytes":
        return payload
    if codec not in CODECS:
        raise CodecError(f"unknown codec {codec!r}: expected one of {', '.join(CODECS)}")
    try:
        if codec == "json":
            return _JSON_DECODER.decode(str(payload, "utf-8"))
        if codec == "pickle":
            return pickle.loads(payload)
        if codec == "arrow":
            return _read_parquet(payload)
        return _decode_pandas(payload)
    except CodecError:
        raise
    except Exception as exc:  # any failure to parse means a corrupt payload
        raise CodecError(f"corrupt {codec!r} payload ({len(payload)} bytes): {type(exc).__name__}: "
                         f"{_short(exc)}") from exc


# --- json ----------------------------------------------------------------------------------------


def _json_exact(value: Any) -> bool:
    """True when JSON gives ``value`` back equal and with the same type at every level."""
    vtype = type(value)
    if vtype in _JSON_ATOMS:
        return True
    if vtype is float:
        return math.isfinite(value)
    seen: set[int] = set()  # containers already met: a second meeting is sharing or a cycle
    stack = [value]
    while stack:
        container = stack.pop()
        if id(container) in seen:
            return False
        seen.add(id(container))
        if type(container) is dict:
            for key in container:
                if type(key) is not str:
                    return False
            items = container.values()
        else:
            items = container
        for item in items:
            itype = type(item)
            if itype in _JSON_ATOMS:
                continue
            if itype is float:
                if not math.isfinite(item):
                    return False
            elif itype is list or itype is dict:
                stack.append(item)
            else:
                return False
    return True


def _refuse_constant(name: str) -> Any:
    """json decoder hook: encode never writes NaN/Infinity, so a payload holding one is corrupt."""
    raise ValueError(f"non-finite constant {name} in a json payload")


# Built once (json.dumps/loads with options build a new coder per call). ASCII output: lone surrogates
# in strings survive; _json_exact has already ruled out cycles, so the circular check is skipped.
_JSON_ENCODER = json.JSONEncoder(allow_nan=False, check_circular=False, separators=(",", ":"))
_JSON_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


# --- pickle --------------------------------------------------------------------------------------


def _pickle(value: Any) -> bytes:
    """cloudpickle ``value`` (protocol 5), or raise CodecError naming its type."""
    try:
        return cloudpickle.dumps(value, protocol=_PICKLE_PROTOCOL)
    except Exception as exc:  # pickling fails with many exception types
        raise CodecError(f"cannot serialise a node output of type {type(value).__module__}."
                         f"{type(value).__qualname__}: {type(exc).__name__}: {_short(exc)}") from exc


# --- parquet (arrow and pandas) ------------------------------------------------------------------


class _GrowingSink:
    """The file pyarrow's Parquet writer writes to: one ``bytearray`` that grows in place (large ones by
    ``realloc``/``mremap``, without a copy), so the payload exists once. (A ``BufferOutputStream`` grows by
    doubling and copying, and Arrow's allocator keeps the freed blocks: with ``to_pybytes`` that held 2.5 times
    the payload at the peak, and still after it.)"""

    closed = False

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, data: Any) -> int:
        before = len(self.buf)
        self.buf += data
        return len(self.buf) - before

    def tell(self) -> int:
        return len(self.buf)

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _write_parquet(table: pa.Table, same_schema: Callable[[pa.Schema, Any], bool]) -> bytearray | None:
    """``table`` as Parquet bytes (a ``bytearray``, never copied), or None when Parquet would not give it back
    (``same_schema`` says no)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if table.num_columns == 0 and table.num_rows > 0:
        log.debug("parquet cannot carry a table with %d rows and no columns; pickling it", table.num_rows)
        return None
    sink = _GrowingSink()
    try:
        # Dictionary-encode only text-like columns: on high-cardinality numbers it costs time and bytes.
        dict_cols = [f.name for f in table.schema
                     if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_binary(f.type)
                     or pa.types.is_large_binary(f.type) or pa.types.is_dictionary(f.type)]
        pq.write_table(table, sink, compression="zstd", use_compliant_nested_type=False,
                       use_dictionary=dict_cols if len(set(table.column_names)) == table.num_columns else True)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        log.debug("parquet cannot carry this table (%s); pickling it", _short(exc))
        return None
    buf = sink.buf
    # Cheap exactness check (reads only the footer): some types are coerced on the way into Parquet.
    if not same_schema(table.schema, buf):
        log.debug("parquet would change this table's schema; pickling it")
        return None
    return buf


def _read_parquet(payload: Any) -> pa.Table:
    """The Arrow table stored in Parquet bytes (read in place, no copy of the payload)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.ParquetFile(pa.BufferReader(payload)).read()


def _same_arrow_schema(schema: pa.Schema, buf: Any) -> bool:
    """True when the Parquet in ``buf`` reads back with exactly ``schema`` (metadata included)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.ParquetFile(pa.BufferReader(buf)).schema_arrow.equals(schema, check_metadata=True)


def _as_table(value: Any) -> pa.Table | None:
    """``value`` if it is a pyarrow Table, a RecordBatch as a Table, else None."""
    import pyarrow as pa

    if type(value) is pa.Table:
        return value
    if type(value) is pa.RecordBatch:
        return pa.Table.from_batches([value])
    return None


def _encode_arrow(value: pa.Table) -> bytearray | None:
    """Parquet bytes for a pyarrow Table; None when Parquet would not give it back equal."""
    import pyarrow as pa

    for column, field in zip(value.columns, value.schema):
        # Parquet unifies a column's dictionaries: chunks with different ones would not come back equal.
        if pa.types.is_dictionary(field.type) and column.num_chunks > 1:
            first = column.chunk(0).dictionary
            if not all(chunk.dictionary.equals(first) for chunk in column.chunks[1:]):
                log.debug("column %r has chunks with different dictionaries; pickling the table", field.name)
                return None
    return _write_parquet(value, _same_arrow_schema)


class _ArrowIPC:
    """Pickles as the Arrow IPC stream of its table, so unpickling gives that table back, rows included."""

    __slots__ = ("table",)

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __reduce__(self) -> tuple[Callable[[bytes], pa.Table], tuple[bytes]]:
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.table.schema) as writer:
            writer.write_table(self.table)
        return _table_from_ipc, (sink.getvalue().to_pybytes(),)


def _table_from_ipc(data: bytes) -> pa.Table:
    """The table in an Arrow IPC stream (the unpickling side of :class:`_ArrowIPC`)."""
    import pyarrow as pa

    return pa.ipc.open_stream(data).read_all()


def _encode_pandas(value: Any) -> bytearray | None:
    """Parquet bytes for a pandas DataFrame (index kept); None for other values or frames Parquet alters."""
    import pandas as pd
    import pyarrow as pa

    if type(value) is not pd.DataFrame:
        return None
    try:
        table = pa.Table.from_pandas(value, preserve_index=None)  # a RangeIndex goes in the metadata only
    except (pa.ArrowException, ValueError, TypeError) as exc:
        log.debug("arrow cannot hold this DataFrame (%s); pickling it", _short(exc))
        return None
    columns = table.schema.pandas_metadata["columns"]
    for meta, field in zip(columns, table.schema):
        if meta["numpy_type"] == "object" and not any(
            getattr(pa.types, check)(field.type) for check in _OBJECT_SAFE_TYPE_CHECKS
        ):
            log.debug("object column %r would come back as %s; pickling the frame", field.name, field.type)
            return None
        if table.num_rows == 0 and pa.types.is_dictionary(field.type):
            log.debug("parquet drops the categories of empty categorical %r; pickling the frame", field.name)
            return None
    return _write_parquet(table, _same_pandas_schema)


def _decode_pandas(payload: bytes | bytearray | memoryview) -> Any:
    """The DataFrame stored by the pandas codec, ``object`` string columns restored as ``object``."""
    try:
        import pandas  # noqa: F401 - to_pandas needs it; say so clearly if it is missing
    except ImportError as exc:
        raise CodecError("the 'pandas' codec needs pandas: pip install 'odibi_ray[pandas]'") from exc

    table = _read_parquet(payload)
    frame = table.to_pandas()
    meta = table.schema.pandas_metadata
    if meta:
        _restore_object_text(frame, table, meta)
    return frame


def _restore_object_text(frame: Any, table: pa.Table, meta: dict[str, Any]) -> None:
    """Give ``object`` text columns and index levels back as ``object`` (pandas >= 3 reads ``str``)."""
    import pandas as pd

    n_data = table.num_columns - sum(isinstance(name, str) for name in meta["index_columns"])
    levels = [frame.index.get_level_values(i) for i in range(frame.index.nlevels)]
    rebuild = False
    for pos, (col_meta, field) in enumerate(zip(meta["columns"], table.schema)):
        if col_meta["numpy_type"] != "object" or not _is_text(field.type):
            continue
        current = frame.dtypes.iloc[pos] if pos < n_data else levels[pos - n_data].dtype
        if current == object:  # noqa: E721 - a numpy dtype against object (dtype('O') == object), no type check
            continue
        values = table.column(pos).to_numpy(zero_copy_only=False)  # object array, None for nulls
        if pos < n_data:
            frame.isetitem(pos, pd.Series(values, index=frame.index, dtype=object, copy=False))
        else:
            levels[pos - n_data] = pd.Index(values, dtype=object, name=levels[pos - n_data].name)
            rebuild = True
    if rebuild:
        frame.index = levels[0] if len(levels) == 1 else pd.MultiIndex.from_arrays(levels)


def _same_pandas_schema(schema: pa.Schema, buf: Any) -> bool:
    """True when the Parquet in ``buf`` reads back as the same pandas columns as ``schema`` describes.

    Exact Arrow types, except for categoricals: pandas picks their dictionary index width itself, and
    ``string`` / ``large_string`` categories give the same pandas categories. (Parquet reads only text
    dictionaries back as dictionaries, so other categoricals fail this check and are pickled.)
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    read = pq.ParquetFile(pa.BufferReader(buf)).schema_arrow
    if read.names != schema.names or read.metadata != schema.metadata:
        return False
    for wrote, got in zip(schema.types, read.types):
        if pa.types.is_dictionary(wrote) and pa.types.is_dictionary(got):
            if wrote.ordered != got.ordered:
                return False
            wrote, got = wrote.value_type, got.value_type
            if _is_text(wrote) and _is_text(got):
                continue
        if not wrote.equals(got):
            return False
    return True


def _is_text(dtype: Any) -> bool:
    """True for Arrow's ``string`` and ``large_string`` types."""
    import pyarrow as pa

    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


def _short(exc: BaseException, limit: int = 200) -> str:
    """An exception's message cut to ``limit`` characters (pyarrow's can be long)."""
    text = str(exc).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
