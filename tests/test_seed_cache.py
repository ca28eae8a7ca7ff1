"""The seed's CloudCacheManager face, on a CloudAdapter over a real local folder and over Azure's blob
protocol (Azurite on 127.0.0.1), plus a raw Storage: keys, TTL, integrity, metrics, two processes.

The metrics object is a small recorder (``Recorder``): the real MetricsManager is issue 5, and the cache only
relies on its ``increment(kind, name)`` method (duck typing), which the recorder provides.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from odibi_ray.compat.cache_manager import CloudCacheManager
from odibi_ray.compat.cloud import CloudAdapter
from odibi_ray.errors import InvalidURIError
from odibi_ray.storage.base import Storage
from odibi_ray.storage.local import LocalStorage

REPO = Path(__file__).resolve().parents[1]
TABLE = pa.table({"id": [1, 2, 3], "name": ["a", None, "c"]})


class FakeClock:
    """Seconds since the epoch that move only when the test says so (TTL tests without sleeping)."""

    def __init__(self, now: float = 1_760_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Stand-in for issue 5's MetricsManager: counts ``increment(kind, name)`` calls."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()

    def increment(self, kind, name) -> None:
        self.counts[(kind, name)] += 1


@dataclass
class Place:
    """Where a cache lives: the adapter and prefix given to the manager, and an independently opened Storage
    on the same objects (``raw``, entries at ``raw_base + key``) to inspect or damage them."""

    adapter: object
    prefix: str
    raw: Storage
    raw_base: str


@pytest.fixture(params=["local", "azurite"])
def place(request, tmp_path):
    """A CloudAdapter on a real folder, or on a fresh container of the session's Azurite."""
    if request.param == "local":
        adapter = CloudAdapter.create("local", root=str(tmp_path / "cloud")).connect()
        return Place(adapter, "cache/", LocalStorage(tmp_path / "cloud"), "cache/")
    from odibi_ray.storage.adls import ADLSStorage
    from tests.storage.fixtures_azurite import ACCOUNT, ACCOUNT_KEY, new_container

    azurite = request.getfixturevalue("azurite")
    container = new_container(azurite)
    adapter = CloudAdapter.create("azure", account_name=ACCOUNT, account_key=ACCOUNT_KEY,
                                  endpoint=azurite.endpoint).connect()
    raw = ADLSStorage.from_uri(f"abfss://{container}@{ACCOUNT}.dfs.core.windows.net/",
                               endpoint=azurite.endpoint, account_key=ACCOUNT_KEY)
    return Place(adapter, f"{container}/cache/", raw, "cache/")


def manager(place: Place, **kw) -> CloudCacheManager:
    return CloudCacheManager(place.adapter, prefix=place.prefix, **kw)


# --- keys ------------------------------------------------------------------------------------------------

def test_compute_key_determinism():
    key = CloudCacheManager.compute_key("transform", {"file": "data.csv", "opts": {"b": 2, "a": [1, 2.5, None]}},
                                        version="v1")
    assert len(key) == 64 and set(key) <= set("0123456789abcdef")
    same = CloudCacheManager.compute_key("transform", {"opts": {"a": [1, 2.5, None], "b": 2}, "file": "data.csv"},
                                         version="v1")
    assert same == key  # dict order does not matter
    others = {
        CloudCacheManager.compute_key("transform", {"file": "data.csv", "opts": {"b": 2, "a": [1, 2.5, None]}}),
        CloudCacheManager.compute_key("transform", {"file": "data.csv", "opts": {"b": 2, "a": [1, 2.5, None]}},
                                      version="v2"),
        CloudCacheManager.compute_key("load", {"file": "data.csv", "opts": {"b": 2, "a": [1, 2.5, None]}},
                                      version="v1"),
        CloudCacheManager.compute_key("transform", {"file": "data2.csv", "opts": {"b": 2, "a": [1, 2.5, None]}},
                                      version="v1"),
    }
    assert key not in others and len(others) == 4
    # Pinned: the encoding is part of the on-disk format, so keys stay equal across runs and releases.
    pinned = CloudCacheManager.compute_key("transform", {"file": "data.csv"}, version="v1")
    assert pinned == hashlib.sha256(b'["odibi-cache-key/1","transform",{"=file":"data.csv"},"v1"]').hexdigest()
    assert pinned == "bf0873b07621e0186f5da2f859a67228a816f0a9ae08bc9d01c88d65e3f25774"


def test_compute_key_distinguishes_look_alikes():
    k = CloudCacheManager.compute_key
    values = [1, 1.0, True, "1", [1], {"1": 1}, {1: 1}, {"=1": 1}, {1}, {"#set": ['1']}, b"1", None, float("nan")]
    keys = [k("ns", v) for v in values]
    assert len(set(keys)) == len(values)
    assert k("ns", (1, 2)) == k("ns", [1, 2])  # JSON-canonical: a tuple is a list
    assert k("ns", {"b", "a", "c"}) == k("ns", {"c", "a", "b"})
    assert k("ns", TABLE) == k("ns", pa.table({"id": [1, 2, 3], "name": ["a", None, "c"]}))
    assert k("ns", TABLE) != k("ns", TABLE.slice(0, 2))


def test_compute_key_is_equal_in_another_process():
    """Another interpreter (other hash seed) computes the same keys, for sets, tables, frames and bytes too."""
    code = ("import pyarrow as pa, sys\n"
            "from odibi_ray.compat.cache_manager import CloudCacheManager as C\n"
            "t = pa.table({'id': [1, 2, 3], 'name': ['a', None, 'c']})\n"
            "for v in ({'s': {'x', 'y', 'z'}}, t, t.to_pandas(), b'raw', {'n': [1, {'k': 2.5}]}):\n"
            "    print(C.compute_key('ns', v, version=3))\n")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    here = [CloudCacheManager.compute_key("ns", v, version=3)
            for v in ({"s": {"z", "y", "x"}}, TABLE, TABLE.to_pandas(), b"raw", {"n": [1, {"k": 2.5}]})]
    assert out == here


# --- entries ---------------------------------------------------------------------------------------------

def test_put_get_happy_path(place):
    clock = FakeClock()
    cache = manager(place, clock=clock)
    values = {"b": b"\x00data", "j": {"rows": [1, 2], "name": "x"}, "t": TABLE, "n": None}
    for k, v in values.items():
        cache.put(k, v)
    assert cache.get("b") == b"\x00data"
    assert cache.get("j") == {"rows": [1, 2], "name": "x"}
    assert cache.get("t").equals(TABLE)
    assert cache.get("n", default="absent") is None  # a stored None is a hit, not the default
    assert cache.get("unknown") is None and cache.get("unknown", default=7) == 7
    assert cache.exists("b") and not cache.exists("unknown")
    info = place.raw.head(place.raw_base + "b")
    md = dict(info.metadata)
    assert set(md) >= {"sha256", "size", "codec", "created", "expires_at"}
    assert int(md["size"]) == info.size and float(md["created"]) == clock.now
    assert float(md["expires_at"]) == clock.now + 3600  # default_ttl_s
    assert cache.stats["hits"] == 4 and cache.stats["misses"] == 2


def test_storage_adapter_directly(local_storage, azurite_storage):
    """A Storage (not a CloudAdapter) works as the adapter too; entries go under the prefix."""
    for store in (local_storage, azurite_storage):
        cache = CloudCacheManager(store, prefix="c/")
        cache.put("k1", [1, 2, 3])
        assert cache.get("k1") == [1, 2, 3]
        assert [i.key for i in store.list("c/")] == ["c/k1"]


def test_ttl_expiry(place):
    clock = FakeClock()
    cache = manager(place, clock=clock, default_ttl_s=60)
    cache.put("short", "v", ttl_s=1)
    cache.put("default", "v")
    assert cache.exists("short") and cache.get("short") == "v"
    clock.now += 2
    assert not cache.exists("short")  # past its TTL
    assert cache.exists("default")  # 60 s default TTL
    assert cache.get("short", default="gone") == "gone"
    assert not place.raw.exists(place.raw_base + "short")  # the expired entry was deleted
    assert cache.stats == {"hits": 1, "misses": 1, "evictions": 1, "corruptions": 0}
    clock.now += 60
    assert cache.get("default") is None and cache.stats["evictions"] == 2


def test_no_ttl_never_expires(place):
    clock = FakeClock()
    cache = manager(place, clock=clock, default_ttl_s=None)
    cache.put("k", 1)
    clock.now += 10 ** 9
    assert cache.get("k") == 1
    assert place.raw.head(place.raw_base + "k").metadata["expires_at"] == ""  # CheckpointMeta's one form of never


def test_entries_stored_with_expires_at_never_still_never_expire(place):
    """The cache wrote ``expires_at="never"`` before it used CheckpointMeta: such entries are still hits."""
    clock = FakeClock()
    cache = manager(place, clock=clock)
    payload = b'{"rows":[1,2]}'
    place.raw.put(place.raw_base + "old", payload, {
        "sha256": hashlib.sha256(payload).hexdigest(), "size": str(len(payload)), "codec": "json",
        "created": repr(clock.now), "expires_at": "never"})
    clock.now += 10 ** 9
    assert cache.exists("old") and cache.get("old") == {"rows": [1, 2]}
    assert cache.stats == {"hits": 1, "misses": 0, "evictions": 0, "corruptions": 0}


def test_invalidate(place):
    cache = manager(place)
    cache.put("k", {"a": 1})
    assert cache.invalidate("k") is True
    assert cache.get("k") is None and not cache.exists("k")
    assert cache.invalidate("k") is False


def test_get_or_compute_caching(place):
    cache = manager(place)
    calls = []

    def compute():
        calls.append(1)
        return TABLE

    key = cache.compute_key("transform", {"file": "data.csv"}, version="v1")
    assert cache.get_or_compute(key, compute, ttl_s=3600).equals(TABLE)
    assert cache.get_or_compute(key, compute).equals(TABLE)
    assert len(calls) == 1
    none_calls = []
    assert cache.get_or_compute("none", lambda: none_calls.append(1)) is None
    assert cache.get_or_compute("none", lambda: none_calls.append(1)) is None
    assert none_calls == [1]  # a cached None is a hit


def test_metrics_counters_increment(place):
    clock, metrics = FakeClock(), Recorder()
    cache = manager(place, clock=clock, metrics=metrics)
    cache.get("a")                                  # miss
    cache.put("a", 1)
    cache.get("a")                                  # hit
    cache.get("a")                                  # hit
    cache.put("b", 2, ttl_s=1)
    clock.now += 5
    cache.get("b")                                  # eviction (and miss)
    p = place.prefix
    assert metrics.counts == {("cache_miss", p): 2, ("cache_hit", p): 2, ("cache_eviction", p): 1}
    assert cache.stats == {"hits": 2, "misses": 2, "evictions": 1, "corruptions": 0}


def test_a_failing_metrics_object_does_not_break_reads(place, caplog):
    class Broken:
        def increment(self, kind, name):
            raise RuntimeError("metrics down")

    cache = manager(place, metrics=Broken())
    cache.put("a", 1)
    with caplog.at_level(logging.WARNING, logger="odibi_ray.compat.cache_manager"):
        assert cache.get("a") == 1
    assert "metrics.increment" in caplog.text


@pytest.mark.parametrize("damage", ["flipped", "truncated", "metadata_lost"])
def test_corrupt_entry_is_a_miss_and_is_recomputed(place, damage, caplog):
    metrics = Recorder()
    cache = manager(place, metrics=metrics)
    cache.put("k", {"rows": list(range(50))})
    key = place.raw_base + "k"
    good, info = place.raw.get_with_info(key)
    if damage == "flipped":  # one digit changed: same size, still valid JSON, but a wrong value
        at = good.index(b"49")
        bad, md = good[:at] + b"48" + good[at + 2:], info.metadata
        assert json.loads(bad) != {"rows": list(range(50))}
    elif damage == "truncated":
        bad, md = good[: len(good) // 2], info.metadata
    else:
        bad, md = good, {}
    place.raw.put(key, bad, md)
    with caplog.at_level(logging.WARNING, logger="odibi_ray.compat.cache_manager"):
        assert cache.get("k", default="miss") == "miss"
    assert "corrupt" in caplog.text
    assert cache.stats["corruptions"] == 1 and metrics.counts[("cache_corruption", place.prefix)] == 1
    assert not place.raw.exists(key)  # the damaged entry was deleted
    assert cache.get_or_compute("k", lambda: "recomputed") == "recomputed"
    assert cache.get("k") == "recomputed"


def test_corrupt_entry_exists_is_false_by_metadata(place):
    cache = manager(place)
    cache.put("k", b"12345678")
    info = place.raw.head(place.raw_base + "k")
    place.raw.put(place.raw_base + "k", b"1234", info.metadata)  # truncated: size no longer matches
    assert not cache.exists("k")


def test_failing_compute_raises_and_stores_nothing(place):
    cache = manager(place)

    class Boom(Exception):
        pass

    def compute():
        raise Boom("compute failed")

    with pytest.raises(Boom, match="compute failed"):
        cache.get_or_compute("k", compute)
    assert not cache.exists("k")
    assert list(place.raw.list(place.raw_base)) == []
    assert cache.get_or_compute("k", lambda: 5) == 5  # the next call computes again


def test_cache_shared_by_two_processes(place):
    """A child process (other hash seed) unpickles the manager, computes the key itself and writes; the parent
    then hits without computing."""
    cache = manager(place)
    code = ("import pickle, sys\n"
            "cache = pickle.loads(sys.stdin.buffer.read())\n"
            "key = cache.compute_key('agg', {'files': {'a.csv', 'b.csv'}, 'day': '2026-01-01'}, version='v1')\n"
            "cache.put(key, {'total': 42})\n"
            "print(key)\n")
    env = dict(os.environ, PYTHONHASHSEED="777")
    child_key = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(cache), cwd=REPO, env=env,
                               capture_output=True, check=True).stdout.decode().strip()
    key = cache.compute_key("agg", {"day": "2026-01-01", "files": {"b.csv", "a.csv"}}, version="v1")
    assert key == child_key

    def must_not_run():
        raise AssertionError("the parent should have hit the child's entry")

    assert cache.get_or_compute(key, must_not_run) == {"total": 42}
    assert cache.stats["hits"] == 1


# --- bad input, secrets ----------------------------------------------------------------------------------

def test_bad_input(tmp_path):
    cache = CloudCacheManager(LocalStorage(tmp_path))
    for bad in ("", "a/b", "../x", ".hidden", "x" * 201, 5):
        with pytest.raises(InvalidURIError, match="invalid cache key"):
            cache.put(bad, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl_s"):
        cache.put("k", 1, ttl_s=0)
    with pytest.raises(ValueError, match="default_ttl_s"):
        CloudCacheManager(LocalStorage(tmp_path), default_ttl_s=-1)
    with pytest.raises(TypeError, match="namespace"):
        CloudCacheManager.compute_key(None, {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="version"):
        CloudCacheManager.compute_key("ns", {}, version=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Storage or a CloudAdapter"):
        CloudCacheManager(str(tmp_path))
    with pytest.raises(InvalidURIError, match="cache prefix"):
        CloudCacheManager(LocalStorage(tmp_path), prefix="a/../b")
    with pytest.raises(TypeError, match="callable"):
        cache.get_or_compute("k", 5)  # type: ignore[arg-type]


def test_storage_faults_are_not_misses(tmp_path):
    """An unreachable cache raises (an outage is never mistaken for an empty cache)."""
    from odibi_ray.errors import StorageUnavailableError

    cache = CloudCacheManager(LocalStorage(tmp_path / "missing-mount", create_root=False))
    with pytest.raises(StorageUnavailableError):
        cache.get("k")
    with pytest.raises(StorageUnavailableError):
        cache.get_or_compute("k", lambda: 1)


def test_no_secret_in_repr_pickle_or_logs(azurite, caplog, monkeypatch):
    """The key is given as an env:// reference: it is resolved in each process, never pickled or shown."""
    from odibi_ray.storage.adls import ADLSStorage
    from tests.storage.fixtures_azurite import ACCOUNT, ACCOUNT_KEY, new_container

    monkeypatch.setenv("ODIBI_TEST_CACHE_KEY", ACCOUNT_KEY)
    container = new_container(azurite)
    adapter = CloudAdapter.create("azure", account_name=ACCOUNT, account_key="env://ODIBI_TEST_CACHE_KEY",
                                  endpoint=azurite.endpoint)
    raw = ADLSStorage.from_uri(f"abfss://{container}@{ACCOUNT}.dfs.core.windows.net/c",
                               endpoint=azurite.endpoint, account_key=ACCOUNT_KEY)
    cache = CloudCacheManager(adapter, prefix=f"{container}/c")
    with caplog.at_level(logging.DEBUG):
        cache.put("k", 1)
        raw.put("k", b"junk", {})  # a damaged entry: the warning names the storage and the key only
        assert cache.get("k") is None
    assert "corrupt" in caplog.text
    blob = pickle.dumps(cache)
    assert ACCOUNT_KEY.encode() not in blob and b"env://ODIBI_TEST_CACHE_KEY" in blob
    assert ACCOUNT_KEY not in repr(cache) and ACCOUNT_KEY not in caplog.text
    assert pickle.loads(blob).get_or_compute("k", lambda: 2) == 2
