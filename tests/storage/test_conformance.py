"""One conformance suite for every storage adapter (local folder, ADLS on Azurite, S3 on moto).

Every test runs against each adapter through the parametrised ``storage`` fixture (tests/storage/conftest.py),
each on a real folder or a real protocol server on 127.0.0.1. The behaviour asserted here is the contract of
:class:`odibi_ray.storage.base.Storage`; an adapter that differs fails here, not later in the engine.

Contract points decided here (beyond the interface docstrings): ranged reads are clamped to the object like
Python slices (``start`` at or past the end gives ``b""``); a negative bound or ``end < start`` is a
``ValueError``; bad metadata is a ``ValueError`` and non-bytes data a ``TypeError``, both before anything is
written; ``list(with_metadata=False)`` gives the same keys, sizes and ETags as ``head``.
"""

from __future__ import annotations

import os
import pickle

import pytest

from odibi_ray.errors import (AlreadyExistsError, InvalidURIError, NotFoundError, PreconditionFailedError,
                              StorageError)
from odibi_ray.storage.base import ObjectInfo, Storage

BIG = 5 * 1024 * 1024
BAD_KEYS = ["", "/abs", "a//b", "a/./b", "a/../b", "..", ".", "a/", "a\\b", None]


def keys(storage: Storage, prefix: str = "") -> list[str]:
    return [info.key for info in storage.list(prefix)]


# --- put / get ----------------------------------------------------------------------------------------


def test_put_get_round_trip_returns_info(storage: Storage) -> None:
    info = storage.put("dir/obj.bin", b"hello world", {"codec": "bytes"})
    assert isinstance(info, ObjectInfo)
    assert (info.key, info.size) == ("dir/obj.bin", 11)
    assert info.etag and isinstance(info.etag, str)
    assert storage.get("dir/obj.bin") == b"hello world"
    assert storage.exists("dir/obj.bin") and not storage.exists("dir/other.bin")


def test_empty_and_large_objects_round_trip(storage: Storage) -> None:
    big = os.urandom(BIG)
    storage.put("empty", b"")
    storage.put("big", big)
    assert storage.get("empty") == b""
    assert storage.head("empty").size == 0
    got = storage.get("big")
    assert len(got) == BIG and got == big
    assert storage.head("big").size == BIG
    data, info = storage.get_with_info("big")
    assert data == big and info.size == BIG


def test_bytearray_and_memoryview_are_accepted(storage: Storage) -> None:
    storage.put("ba", bytearray(b"abc"))
    storage.put("mv", memoryview(b"xyz"))
    assert (storage.get("ba"), storage.get("mv")) == (b"abc", b"xyz")


def test_overwrite_replaces_content_and_changes_etag(storage: Storage) -> None:
    first = storage.put("k", b"one", {"v": "1"})
    second = storage.put("k", b"two!", {"v": "2"})
    assert second.etag != first.etag
    assert storage.get("k") == b"two!"
    assert storage.head("k").metadata == {"v": "2"}
    assert storage.head("k").size == 4


# --- metadata and ETags ---------------------------------------------------------------------------------


def test_metadata_round_trips_through_head_list_and_get_with_info(storage: Storage) -> None:
    meta = {"codec": "parquet", "sha256": "ab" * 32, "node": "n1", "expires_at": "1700000000.5"}
    put_info = storage.put("m/obj", b"payload", meta)
    storage.put("m/plain", b"x")
    head = storage.head("m/obj")
    assert dict(head.metadata) == meta
    assert (head.key, head.size, head.etag) == ("m/obj", 7, put_info.etag)
    assert head.last_modified is not None and head.last_modified > 0
    data, info = storage.get_with_info("m/obj")
    assert data == b"payload" and info.etag == put_info.etag and dict(info.metadata) == meta
    listed = {i.key: i for i in storage.list("m/", with_metadata=True)}
    assert dict(listed["m/obj"].metadata) == meta
    assert dict(listed["m/plain"].metadata) == {}
    assert listed["m/obj"].etag == put_info.etag and listed["m/obj"].size == 7


def test_list_without_metadata_agrees_with_head(storage: Storage) -> None:
    storage.put("l/a", b"1", {"x": "y"})
    storage.put("l/b", b"22")
    for info in storage.list("l/"):
        head = storage.head(info.key)
        assert (info.size, info.etag) == (head.size, head.etag)


def test_bad_metadata_is_refused_before_writing(storage: Storage) -> None:
    with pytest.raises(ValueError, match="lower-case"):
        storage.put("bad-meta", b"x", {"Bad-Name": "v"})
    with pytest.raises(ValueError, match="ASCII"):
        storage.put("bad-meta", b"x", {"name": "caf\u00e9"})
    assert not storage.exists("bad-meta")


def test_non_bytes_data_is_refused(storage: Storage) -> None:
    with pytest.raises(TypeError, match="bytes"):
        storage.put("text", "not bytes")  # type: ignore[arg-type]
    assert not storage.exists("text")


# --- create-only and compare-and-swap -------------------------------------------------------------------


def test_create_only_put(storage: Storage) -> None:
    info = storage.put("once", b"first", {"n": "1"}, if_none_match=True)
    with pytest.raises(AlreadyExistsError) as err:
        storage.put("once", b"second", {"n": "2"}, if_none_match=True)
    assert err.value.key == "once" and "once" in str(err.value)
    assert storage.get("once") == b"first"
    head = storage.head("once")
    assert head.etag == info.etag and dict(head.metadata) == {"n": "1"}
    storage.delete("once")
    storage.put("once", b"again", if_none_match=True)  # free again after a delete
    assert storage.get("once") == b"again"


def test_compare_and_swap_put(storage: Storage) -> None:
    e1 = storage.put("cas", b"v1").etag
    info2 = storage.put("cas", b"v2", {"rev": "2"}, if_match=e1)
    assert info2.etag != e1
    assert storage.head("cas").etag == info2.etag
    assert storage.get("cas") == b"v2"
    with pytest.raises(PreconditionFailedError) as err:
        storage.put("cas", b"v3", if_match=e1)  # stale ETag
    assert err.value.key == "cas"
    assert storage.get("cas") == b"v2" and dict(storage.head("cas").metadata) == {"rev": "2"}
    _, info = storage.get_with_info("cas")
    e3 = storage.put("cas", b"v3", if_match=info.etag).etag
    assert storage.get("cas") == b"v3" and e3 not in (e1, info2.etag)


def test_compare_and_swap_on_missing_key_fails(storage: Storage) -> None:
    etag = storage.put("present", b"x").etag
    with pytest.raises(PreconditionFailedError):
        storage.put("absent", b"x", if_match=etag)
    assert not storage.exists("absent")


# --- ranged reads -----------------------------------------------------------------------------------------


def test_ranged_get(storage: Storage) -> None:
    data = bytes(range(256)) * 4
    storage.put("r", data)
    assert storage.get("r", start=1000) == data[1000:]
    assert storage.get("r", 10, 20) == data[10:20]
    assert storage.get("r", 0, 1) == data[:1]
    assert storage.get("r", end=5) == data[:5]
    assert storage.get("r", 7, 7) == b""  # empty range
    assert storage.get("r", 1000, 5000) == data[1000:]  # end clamped to the object
    assert storage.get("r", len(data)) == b""  # start at the end
    assert storage.get("r", len(data) + 10) == b""  # start past the end


def test_ranged_get_of_large_object(storage: Storage) -> None:
    big = os.urandom(BIG)
    storage.put("big-range", big)
    assert storage.get("big-range", BIG - 100) == big[-100:]
    assert storage.get("big-range", 1_000_000, 3_000_000) == big[1_000_000:3_000_000]


def test_bad_ranges_are_value_errors(storage: Storage) -> None:
    storage.put("r2", b"abcdef")
    with pytest.raises(ValueError):
        storage.get("r2", start=-1)
    with pytest.raises(ValueError):
        storage.get("r2", 4, 2)


# --- missing keys -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["get", "get_range", "get_with_info", "head", "delete"])
def test_missing_key_is_not_found(storage: Storage, op: str) -> None:
    storage.put("other/thing", b"x")
    calls = {
        "get": lambda: storage.get("nope/missing"),
        "get_range": lambda: storage.get("nope/missing", 0, 1),
        "get_with_info": lambda: storage.get_with_info("nope/missing"),
        "head": lambda: storage.head("nope/missing"),
        "delete": lambda: storage.delete("nope/missing", missing_ok=False),
    }
    with pytest.raises(NotFoundError) as err:
        calls[op]()
    assert err.value.key == "nope/missing"
    assert "nope/missing" in str(err.value)
    assert isinstance(err.value, KeyError) and isinstance(err.value, StorageError)


def test_delete(storage: Storage) -> None:
    storage.put("d/one", b"1")
    storage.put("d/two", b"2")
    assert storage.delete("d/one") is True
    assert not storage.exists("d/one") and storage.exists("d/two")
    assert storage.delete("d/one") is False  # missing_ok=True is the default
    with pytest.raises(NotFoundError):
        storage.get("d/one")


# --- listing --------------------------------------------------------------------------------------------------


def test_list_is_a_plain_string_prefix_in_key_order(storage: Storage) -> None:
    for key in ["a/bc", "a/b/d/e", "ab", "a/b/c", "a/a", "a/b-x", "b/z"]:
        storage.put(key, key.encode())
    assert keys(storage) == ["a/a", "a/b-x", "a/b/c", "a/b/d/e", "a/bc", "ab", "b/z"]
    assert keys(storage, "a/b") == ["a/b-x", "a/b/c", "a/b/d/e", "a/bc"]
    assert keys(storage, "a/b/") == ["a/b/c", "a/b/d/e"]
    assert keys(storage, "a") == ["a/a", "a/b-x", "a/b/c", "a/b/d/e", "a/bc", "ab"]
    assert keys(storage, "a/b/d/e") == ["a/b/d/e"]  # a prefix equal to a whole key
    assert keys(storage, "nothing") == [] and keys(storage, "a/zz/") == []
    sizes = {i.key: i.size for i in storage.list("a/b/")}
    assert sizes == {"a/b/c": 5, "a/b/d/e": 7}


def test_list_is_lazy_and_restartable(storage: Storage) -> None:
    for i in range(5):
        storage.put(f"p/{i}", b"x")
    it = storage.list("p/")
    assert next(it).key == "p/0"
    assert len(list(storage.list("p/"))) == 5


# --- delete_prefix ---------------------------------------------------------------------------------------------


def test_delete_prefix_counts_and_leaves_others(storage: Storage) -> None:
    for key in ["a/1", "a/2", "a/sub/3", "ab/4", "b/5"]:
        storage.put(key, b"x")
    assert storage.delete_prefix("a/") == 3
    assert keys(storage) == ["ab/4", "b/5"]
    assert storage.delete_prefix("zzz") == 0
    assert storage.delete_prefix("a") == 1  # a plain string prefix: "ab/4" starts with "a"
    assert keys(storage) == ["b/5"]
    assert storage.get("b/5") == b"x"
    storage.put("a/1", b"new")  # the emptied "folder" can be written again
    assert storage.get("a/1") == b"new"


# --- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_invalid_uri_errors(storage: Storage, key) -> None:
    for call in (lambda: storage.put(key, b"x"), lambda: storage.get(key), lambda: storage.head(key),
                 lambda: storage.get_with_info(key), lambda: storage.delete(key)):
        with pytest.raises(InvalidURIError, match="invalid object key"):
            call()
    assert keys(storage) == []


def test_conflicting_conditions_are_refused(storage: Storage) -> None:
    etag = storage.put("both", b"x").etag
    with pytest.raises(ValueError):
        storage.put("both", b"y", if_none_match=True, if_match=etag)
    assert storage.get("both") == b"x"


# --- pickling and processes ---------------------------------------------------------------------------------------


def test_adapter_pickles_after_use_and_the_copy_works(storage: Storage) -> None:
    storage.put("pk/before", b"from original", {"who": "original"})
    storage.get("pk/before")  # the original has opened whatever client it uses
    copy = pickle.loads(pickle.dumps(storage))
    assert type(copy) is type(storage) and repr(copy) == repr(storage) and copy.uri == storage.uri
    assert "?" not in storage.uri
    assert copy.get("pk/before") == b"from original"
    assert dict(copy.head("pk/before").metadata) == {"who": "original"}
    etag = copy.put("pk/after", b"from copy").etag
    assert storage.get("pk/after") == b"from copy"
    assert storage.head("pk/after").etag == etag


def _ray_write(storage: Storage, key: str, data: bytes) -> tuple[int, str]:
    info = storage.put(key, data, {"writer": "ray"})
    return os.getpid(), info.etag


def _ray_read(storage: Storage, key: str) -> bytes:
    return storage.get(key)


def test_adapter_works_inside_a_ray_task(storage: Storage, ray_local) -> None:
    ray = ray_local
    storage.put("ray/from-driver", b"driver bytes")  # used (client opened) before it is shipped
    payload = os.urandom(256 * 1024)
    pid, etag = ray.get(ray.remote(_ray_write).remote(storage, "ray/from-worker", payload), timeout=120)
    assert pid != os.getpid()  # really another process, with its own client
    assert storage.get("ray/from-worker") == payload
    head = storage.head("ray/from-worker")
    assert head.etag == etag and dict(head.metadata) == {"writer": "ray"}
    assert ray.get(ray.remote(_ray_read).remote(storage, "ray/from-driver"), timeout=120) == b"driver bytes"
