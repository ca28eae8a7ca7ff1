"""Codecs for node outputs (issue 4, item 8): each value comes back equal *and* of the same type.

Pure in-process tests (no servers, no Ray): real pyarrow, pandas and cloudpickle, no mocks. Every round
trip checks the codec chosen, the value and its type at every level (``assert_same``).
"""

from __future__ import annotations

import collections
import datetime
import decimal
import enum
import io
import json
import math
import pickle
import sys
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from odibi_ray.checkpoint.codecs import CODECS, CodecError, decode, encode
from odibi_ray.errors import OdibiError


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    """A str subclass: JSON would give back a plain str."""


class Blob(bytes):
    """A bytes subclass: the bytes codec would give back plain bytes."""


def assert_same(out, value) -> None:
    """``out == value`` with the same type, recursively through lists, tuples and dicts (keys included)."""
    assert type(out) is type(value), f"{type(out).__name__} is not {type(value).__name__}"
    if isinstance(value, dict):
        assert [(type(k), k) for k in out] == [(type(k), k) for k in value]
        for key in value:
            assert_same(out[key], value[key])
    elif isinstance(value, (list, tuple)):
        assert len(out) == len(value)
        for a, b in zip(out, value):
            assert_same(a, b)
    else:
        assert out == value


def value_id(value) -> str:
    """A short test id: type name and the start of the repr (ints past str()'s digit limit get none)."""
    try:
        text = repr(value)
    except ValueError:
        text = "huge"
    return f"{type(value).__name__}:{text[:30]}"


def roundtrip(value):
    """(codec, decoded value) for ``value``."""
    codec, payload = encode(value)
    assert codec in CODECS and type(payload) is (bytearray if codec in ("arrow", "pandas") else bytes)
    return codec, decode(codec, payload)


def test_codec_names_are_the_five_specified():
    assert CODECS == ("arrow", "pandas", "bytes", "json", "pickle")
    assert issubclass(CodecError, OdibiError)


# --- json: only where the round trip is exact --------------------------------------------------------

JSON_VALUES = [
    None, True, False, 0, -7, 2**100, "", "héllo ☃ \x00 \"q\"", "\ud800 lone surrogate", 1.5, -0.0, 1e308,
    5e-324, [], {}, [1, "a", None, True, 2.5],
    {"a": [1, {"b": [None, True, 2.5, "x", []]}], "": {}, "nested": {"deeper": {"deepest": [[[]]]}}},
    [{"id": i, "name": f"n{i}", "score": i / 3} for i in range(50)],
]


@pytest.mark.parametrize("value", JSON_VALUES, ids=value_id)
def test_json_values_round_trip_as_json(value):
    codec, out = roundtrip(value)
    assert codec == "json"
    assert_same(out, value)
    if type(value) is float:  # -0.0 == 0.0: the sign must survive too
        assert math.copysign(1.0, out) == math.copysign(1.0, value)


def test_json_payload_is_plain_json_other_tools_can_read():
    value = {"rows": [1, 2], "name": "ünïcode", "ok": True}
    codec, payload = encode(value)
    assert codec == "json" and json.loads(payload) == value


shared = [1, 2]
cyclic: list = []
cyclic.append(cyclic)

PICKLE_VALUES = [
    (1, 2), [1, (2, 3)], {1, 2}, frozenset({"a"}), {1: "a"}, {"a": {2: "b"}}, {None: 1}, {True: 1},
    {("a", 1): 2}, np.float64(1.5), np.int64(3), [np.int64(3)], {"x": np.float32(0.5)},
    datetime.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=datetime.timezone.utc), datetime.date(2024, 1, 2),
    [datetime.date(2024, 1, 2)], decimal.Decimal("1.10"), Color.RED, [Color.RED], Name("n"), {"k": Name("n")},
    {Name("k"): 1}, collections.OrderedDict(a=1), collections.defaultdict(list, a=[1]), 10**5000, 1 + 2j,
    range(3), Blob(b"sub"),
]


@pytest.mark.parametrize("value", PICKLE_VALUES, ids=value_id)
def test_values_json_would_alter_are_pickled_and_round_trip(value):
    codec, out = roundtrip(value)
    assert codec == "pickle"
    assert_same(out, value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=repr)
def test_non_finite_floats_are_pickled(value):
    codec, out = roundtrip(value)
    assert codec == "pickle" and type(out) is float
    assert (math.isnan(out) if math.isnan(value) else out == value)


@pytest.mark.parametrize("value", [[1.0, float("nan")], {"a": float("inf")},
                                   {"a": [0.5, {"b": float("-inf")}]}], ids=repr)
def test_nested_non_finite_floats_make_the_whole_value_pickled(value):
    codec, out = roundtrip(value)
    assert codec == "pickle"
    assert repr(out) == repr(value) and type(out) is type(value)


def test_shared_and_cyclic_containers_are_pickled_keeping_identity():
    codec, out = roundtrip([shared, shared])
    assert codec == "pickle" and out == [[1, 2], [1, 2]] and out[0] is out[1]
    codec, out = roundtrip(cyclic)
    assert codec == "pickle" and type(out) is list and out[0] is out


def test_numpy_array_is_pickled_with_dtype_and_shape():
    value = np.arange(12, dtype=np.int16).reshape(3, 4)
    codec, out = roundtrip(value)
    assert codec == "pickle" and type(out) is np.ndarray
    assert out.dtype == value.dtype and out.shape == value.shape and np.array_equal(out, value)


def test_pickle_keeps_functions_defined_at_runtime():
    offset = 10
    codec, out = roundtrip(lambda x: x + offset)
    assert codec == "pickle" and out(1) == 11


@pytest.mark.parametrize("value", [threading.Lock(), (i for i in range(3))], ids=["lock", "generator"])
def test_unpicklable_value_raises_codec_error_naming_its_type(value):
    with pytest.raises(CodecError, match=type(value).__qualname__) as err:
        encode(value)
    assert err.value.__cause__ is not None


def test_nesting_too_deep_for_any_codec_raises_codec_error_not_recursion_error():
    value: list = []
    inner = value
    for _ in range(50_000):
        inner.append([])
        inner = inner[0]
    with pytest.raises(CodecError, match="builtins.list"):
        encode(value)


# --- bytes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"", b"\x00\xff" * 1000, bytearray(b"abc"), memoryview(b"xyz"),
                                   memoryview(np.arange(6, dtype=np.uint8).reshape(2, 3))],
                         ids=["empty", "binary", "bytearray", "memoryview", "2d-memoryview"])
def test_bytes_like_values_are_raw_and_come_back_as_bytes(value):
    codec, payload = encode(value)
    assert codec == "bytes" and payload == bytes(value)
    out = decode(codec, payload)
    assert type(out) is bytes and out == bytes(value)


def test_bytes_are_not_copied():
    value = b"x" * (1 << 20)
    codec, payload = encode(value)
    assert codec == "bytes" and payload is value and decode(codec, payload) is payload


# --- arrow ------------------------------------------------------------------------------------------


def _typed_table() -> pa.Table:
    schema = pa.schema(
        [pa.field("i8", pa.int8(), metadata={"unit": "count"}), pa.field("u64", pa.uint64()),
         pa.field("f32", pa.float32()), pa.field("f64", pa.float64()), pa.field("b", pa.bool_()),
         pa.field("s", pa.string()), pa.field("ls", pa.large_string()), pa.field("bin", pa.binary()),
         pa.field("fsb", pa.binary(2)), pa.field("d", pa.date32()), pa.field("ts", pa.timestamp("ns")),
         pa.field("tz", pa.timestamp("us", "Europe/Paris")), pa.field("dur", pa.duration("ms")),
         pa.field("dec", pa.decimal128(7, 2)), pa.field("lst", pa.list_(pa.int64())),
         pa.field("st", pa.struct([("x", pa.int32()), ("y", pa.string())])),
         pa.field("dict", pa.dictionary(pa.int32(), pa.string())), pa.field("nul", pa.null())],
        metadata={"producer": "test", "version": "3"},
    )
    rows = {
        "i8": [1, None, -128], "u64": [2**64 - 1, 0, None], "f32": [1.5, None, -0.0],
        "f64": [float("inf"), 1e300, None], "b": [True, None, False], "s": ["a", None, "ü"],
        "ls": ["x", "y", None], "bin": [b"\x00", None, b""], "fsb": [b"ab", None, b"cd"],
        "d": [datetime.date(2024, 2, 29), None, datetime.date(1970, 1, 1)], "ts": [1, None, 2**62],
        "tz": [0, 1_700_000_000_000_000, None], "dur": [5, None, -5],
        "dec": [decimal.Decimal("12345.67"), None, decimal.Decimal("-0.01")], "lst": [[1, None], None, []],
        "st": [{"x": 1, "y": "a"}, None, {"x": None, "y": None}], "dict": ["a", "b", None], "nul": [None] * 3,
    }
    return pa.Table.from_pydict(rows, schema=schema)


def _assert_same_table(out, value: pa.Table) -> None:
    assert type(out) is pa.Table
    assert out.schema.equals(value.schema, check_metadata=True)
    assert out.equals(value, check_metadata=True)


ARROW_TABLES = {
    "typed-with-nulls-and-metadata": _typed_table(),
    "zero-rows": _typed_table().slice(0, 0),
    "zero-rows-zero-columns": pa.table({}),
    "all-null-column": pa.Table.from_pydict({"a": pa.array([None, None], pa.int64())}),
    "many-chunks": pa.concat_tables([pa.table({"a": [1, 2], "s": ["x", None]})] * 3),
    "duplicate-names": pa.Table.from_arrays([pa.array([1]), pa.array(["a"])], names=["c", "c"]),
    "int8-dictionary": pa.table({"d": pa.array(["a", "b", "a"]).dictionary_encode().cast(
        pa.dictionary(pa.int8(), pa.string()))}),
}


@pytest.mark.parametrize("value", ARROW_TABLES.values(), ids=ARROW_TABLES.keys())
def test_arrow_tables_round_trip_as_parquet_keeping_schema_metadata_and_nulls(value):
    codec, payload = encode(value)
    assert codec == "arrow"
    _assert_same_table(decode(codec, payload), value)
    # The payload is plain Parquet: a Parquet reader that knows nothing of odibi_ray gets the same table.
    assert pq.ParquetFile(io.BytesIO(payload)).read().equals(value, check_metadata=True)


def test_nan_in_a_table_survives():
    # Arrow's Table.equals never finds NaN equal to NaN, so NaN is checked on its own.
    value = pa.table({"f": [float("nan"), 1.0, None]})
    codec, out = roundtrip(value)
    assert codec == "arrow" and out.schema.equals(value.schema)
    assert out.column("f").to_pylist()[1:] == [1.0, None] and math.isnan(out.column("f")[0].as_py())


def test_record_batch_comes_back_as_an_equal_table():
    batch = pa.RecordBatch.from_pydict({"a": [1, None], "s": ["x", None]}, metadata={"k": "v"})
    codec, out = roundtrip(batch)
    assert codec == "arrow"
    _assert_same_table(out, pa.Table.from_batches([batch]))


def test_record_batch_parquet_would_alter_is_pickled_as_a_table():
    batch = pa.RecordBatch.from_pydict({"d": pa.array([datetime.date(2024, 1, 1)], pa.date64())})
    codec, out = roundtrip(batch)
    assert codec == "pickle"
    _assert_same_table(out, pa.Table.from_batches([batch]))


def _dictionary_chunks() -> pa.Table:
    chunks = [pa.array(["a", "b"]).dictionary_encode(), pa.array(["c"]).dictionary_encode()]
    return pa.table({"d": pa.chunked_array(chunks)})


PARQUET_LOSSY_TABLES = {
    "date64": pa.table({"d": pa.array([datetime.date(2024, 1, 1)], pa.date64())}),
    "timestamp-seconds": pa.table({"t": pa.array([1], pa.timestamp("s"))}),
    "time32-seconds": pa.table({"t": pa.array([1], pa.time32("s"))}),
    "map": pa.table({"m": pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64()))}),
    "interval": pa.table({"i": pa.array([pa.MonthDayNano([1, 2, 3])], pa.month_day_nano_interval())}),
    "union": pa.table({"u": pa.UnionArray.from_sparse(pa.array([0, 1], pa.int8()),
                                                      [pa.array([1, 2]), pa.array(["a", "b"])])}),
    "zero-columns-three-rows": pa.table({"x": [1, 2, 3]}).drop_columns(["x"]),
    "chunks-with-different-dictionaries": _dictionary_chunks(),
}


@pytest.mark.parametrize("value", PARQUET_LOSSY_TABLES.values(), ids=PARQUET_LOSSY_TABLES.keys())
def test_tables_parquet_would_alter_are_pickled_and_round_trip(value):
    codec, out = roundtrip(value)
    assert codec == "pickle"
    _assert_same_table(out, value)
    assert out.num_rows == value.num_rows


def test_other_pyarrow_objects_are_pickled():
    value = pa.chunked_array([[1, 2], [None]])
    codec, out = roundtrip(value)
    assert codec == "pickle" and type(out) is pa.ChunkedArray and out.equals(value)


# --- pandas -----------------------------------------------------------------------------------------


def _assert_same_frame(out, value: pd.DataFrame) -> None:
    assert type(out) is pd.DataFrame
    pd.testing.assert_frame_equal(out, value, check_exact=True)
    assert list(out.dtypes) == list(value.dtypes)
    assert [out.index.get_level_values(i).dtype for i in range(out.index.nlevels)] == \
        [value.index.get_level_values(i).dtype for i in range(value.index.nlevels)]
    assert out.attrs == value.attrs


def _with_attrs() -> pd.DataFrame:
    frame = pd.DataFrame({"a": [1, 2]})
    frame.attrs["source"] = "unit-test"
    return frame


PANDAS_FRAMES = {
    "numbers-strings-nulls": pd.DataFrame({"i": [1, 2, 3], "f": [1.5, np.nan, -0.0], "s": ["x", None, "z"]}),
    "numpy-widths": pd.DataFrame({"i8": np.array([1, -2], np.int8), "u32": np.array([1, 2], np.uint32),
                                  "f32": np.array([0.5, 2], np.float32), "b": [True, False]}),
    "nullable-dtypes": pd.DataFrame({"I": pd.array([1, None], "Int64"),
                                     "B": pd.array([True, None], "boolean"),
                                     "S": pd.array(["a", None], "string")}),
    "object-strings-with-none": pd.DataFrame({"o": pd.Series(["a", None, "c"], dtype=object)}),
    "object-dates-decimals-bytes": pd.DataFrame({"d": [datetime.date(2024, 1, 1), None],
                                                 "dec": [decimal.Decimal("1.5"), None], "b": [b"x", None]}),
    "datetimes-tz-timedelta": pd.DataFrame({
        "t": pd.to_datetime(["2024-01-01 00:00:00.000000001", None]),
        "tz": pd.to_datetime(["2024-01-01", "2024-06-01"]).tz_localize("Europe/Paris"),
        "td": pd.to_timedelta([1, None], unit="s")}),
    "categorical-ordered-unused-category": pd.DataFrame(
        {"c": pd.Categorical(["a", None, "b"], categories=["b", "a", "z"], ordered=True)}),
    "named-string-index": pd.DataFrame({"a": [1, 2]}, index=pd.Index(["x", "y"], name="key")),
    "object-index": pd.DataFrame({"a": [1, 2]}, index=pd.Index(["x", None], dtype=object, name="k")),
    "int-index": pd.DataFrame({"a": [1, 2]}, index=[10, 20]),
    "range-index-with-step": pd.DataFrame({"a": [1, 2]}, index=pd.RangeIndex(5, 9, 2)),
    "multi-index": pd.DataFrame({"a": [1, 2]}, index=pd.MultiIndex.from_arrays(
        [pd.Index(["x", "y"], dtype=object), [1, 2]], names=["s", "i"])),
    "categorical-index": pd.DataFrame({"a": [1, 2]}, index=pd.CategoricalIndex(["x", "y"], name="k")),
    "int-column-labels": pd.DataFrame({0: [1], 1: [2]}),
    "multi-index-columns": pd.DataFrame([[1, 2]],
                                        columns=pd.MultiIndex.from_tuples([("a", "b"), ("a", "c")])),
    "zero-rows-typed": pd.DataFrame({"a": pd.Series([], dtype="int64"), "s": pd.Series([], dtype="str"),
                                     "o": pd.Series([], dtype=object)}),
    "zero-rows-zero-columns": pd.DataFrame(),
    "attrs": _with_attrs(),
    "period-interval": pd.DataFrame({"p": pd.period_range("2024-01", periods=2, freq="M"),
                                     "iv": pd.interval_range(0, 2)}),
    "arrow-backed": pd.DataFrame({"a": pd.array([1, None], dtype="int64[pyarrow]")}),
}


@pytest.mark.parametrize("value", PANDAS_FRAMES.values(), ids=PANDAS_FRAMES.keys())
def test_pandas_frames_round_trip_as_parquet_with_index_and_dtypes(value):
    codec, payload = encode(value)
    assert codec == "pandas"
    _assert_same_frame(decode(codec, payload), value)
    assert pq.ParquetFile(io.BytesIO(payload)).read().num_rows == len(value)  # plain Parquet


PANDAS_PICKLED = {
    "mixed-object-column": pd.DataFrame({"m": [1, "a"]}),
    "object-lists": pd.DataFrame({"l": [[1, 2], [3]]}),
    "object-dicts-different-keys": pd.DataFrame({"d": [{"a": 1}, {"b": 2}]}),
    "object-ints": pd.DataFrame({"o": pd.Series([1, 2], dtype=object)}),
    "object-bools": pd.DataFrame({"o": pd.Series([True, False], dtype=object)}),
    "duplicate-column-names": pd.DataFrame([[1, 2]], columns=["a", "a"]),
    "complex": pd.DataFrame({"c": [1 + 2j]}),
    "zero-columns-three-rows": pd.DataFrame(index=range(3)),
    "int-categorical": pd.DataFrame({"c": pd.Categorical([1, 2, 1])}),
    "empty-categorical-with-categories": pd.DataFrame({"c": pd.Categorical([], categories=["a"])}),
    "datetime64-seconds": pd.DataFrame({"t": pd.Series([1, 2]).astype("datetime64[s]")}),
}


@pytest.mark.parametrize("value", PANDAS_PICKLED.values(), ids=PANDAS_PICKLED.keys())
def test_frames_parquet_would_alter_are_pickled_and_round_trip(value):
    codec, out = roundtrip(value)
    assert codec == "pickle"
    _assert_same_frame(out, value)


def test_pandas_series_and_frame_subclasses_are_pickled():
    class MyFrame(pd.DataFrame):
        pass

    series = pd.Series([1, None], name="s")
    codec, out = roundtrip(series)
    assert codec == "pickle" and type(out) is pd.Series
    pd.testing.assert_series_equal(out, series)
    frame = MyFrame({"a": [1]})
    codec, out = roundtrip(frame)
    assert codec == "pickle" and type(out) is MyFrame


def test_non_pandas_values_never_import_pandas(monkeypatch):
    # With pandas made unimportable, any `import pandas` on these paths would raise ImportError.
    monkeypatch.setitem(sys.modules, "pandas", None)
    for value in (0, "s", b"b", [1.5], {"k": None}, (1, 2), {1}, np.int64(4)):
        _, out = roundtrip(value)
        assert_same(out, value)
    with pytest.raises(CodecError, match="needs pandas"):
        decode("pandas", _GOOD["pandas"])


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["zip", "", "ARROW", "json ", None, 3])
def test_unknown_codec_raises_codec_error_listing_the_known_ones(codec):
    with pytest.raises(CodecError, match=r"unknown codec .*arrow, pandas, bytes, json, pickle"):
        decode(codec, b"{}")


_GOOD = {name: encode(value)[1] for name, value in (
    ("json", {"a": [1, 2]}), ("pickle", (1, 2)), ("arrow", pa.table({"a": [1, 2]})),
    ("pandas", pd.DataFrame({"a": [1, 2]})))}

CORRUPT = [
    ("json", b"{\"a\": [1, 2"), ("json", b"NaN"), ("json", b"[Infinity]"), ("json", b"\xff\xfe"),
    ("json", b""),
    ("pickle", b"garbage"), ("pickle", _GOOD["pickle"][:-3]), ("pickle", b""),
    ("arrow", b"not parquet at all"), ("arrow", _GOOD["arrow"][: len(_GOOD["arrow"]) // 2]),
    ("arrow", _GOOD["arrow"][:-4] + b"XXXX"), ("arrow", b""),
    ("pandas", b"PAR1 nope PAR1"), ("pandas", _GOOD["pandas"][: len(_GOOD["pandas"]) // 2]),
]


@pytest.mark.parametrize("codec,payload", CORRUPT, ids=[f"{c}-{i}" for i, (c, _) in enumerate(CORRUPT)])
def test_corrupt_payload_raises_codec_error_naming_the_codec(codec, payload):
    with pytest.raises(CodecError, match=f"corrupt '{codec}' payload \\({len(payload)} bytes\\)") as err:
        decode(codec, payload)
    assert err.value.__cause__ is not None


def test_good_payloads_used_above_do_decode():
    # Guards the corrupt-payload test: its inputs are corrupt because they were cut, not born broken.
    assert decode("json", _GOOD["json"]) == {"a": [1, 2]}
    assert decode("pickle", _GOOD["pickle"]) == (1, 2)
    assert decode("arrow", _GOOD["arrow"]).equals(pa.table({"a": [1, 2]}))
    pd.testing.assert_frame_equal(decode("pandas", _GOOD["pandas"]), pd.DataFrame({"a": [1, 2]}))


def test_payload_that_is_not_bytes_raises_type_error():
    with pytest.raises(TypeError, match="payload must be bytes, not str"):
        decode("json", "{}")


def test_bytes_like_payloads_are_accepted():
    assert decode("json", bytearray(b"[1]")) == [1]
    out = decode("bytes", memoryview(b"ab"))
    assert type(out) is bytes and out == b"ab"


def test_pickle_payload_is_protocol_5():
    codec, payload = encode((1, 2))
    assert codec == "pickle" and payload[:2] == b"\x80\x05"
    assert pickle.loads(payload) == (1, 2)
