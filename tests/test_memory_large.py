"""Memory on large outputs (issue 14, item 7): the streaming storage methods (``put_stream``, ``get_into``) and the
peak RSS of a worker writing and reading a large Parquet checkpoint.

Correctness of the streaming methods runs against LocalStorage and the session's Azurite (small objects, the
SDK's block and chunk sizes made tiny so every path - staged blocks, several ranged reads, a retried chunk, a
lost answer - is taken). The memory checks run each case in a fresh subprocess (its RSS is its own) on a
~100 MB payload, with the kernel's RSS high-water mark reset at the baseline (``/proc/self/clear_refs``; skipped
where that cannot be written), and bound the peak in multiples of the payload. ``benchmarks/bench_memory.py``
measures the same at 1 GB.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable

import pytest

from odibi_ray.errors import AlreadyExistsError, CorruptObjectError, NotFoundError, PreconditionFailedError
from odibi_ray.storage.adls import ADLSStorage
from odibi_ray.storage.base import ObjectInfo
from odibi_ray.storage.local import LocalStorage
from tests.storage.fixtures_azurite import ACCOUNT, ACCOUNT_KEY, AzuriteServer, new_container

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
TINY = {"max_single_put_size": 1024, "max_block_size": 1024, "max_single_get_size": 1024,
        "max_chunk_get_size": 1024}  # SDK sizes that make a few KB take every streaming path


def adls(endpoint: str, container: str, **options: Any) -> ADLSStorage:
    return ADLSStorage.from_uri(f"abfss://{container}@{ACCOUNT}.dfs.core.windows.net/mem", endpoint=endpoint,
                                account_key=ACCOUNT_KEY, **options)


@pytest.fixture
def container(azurite: AzuriteServer) -> str:
    return new_container(azurite)


class Collect:
    """A sink that keeps what it is given (a copy: the adapter may reuse its buffer)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(self.parts[-1])

    def value(self) -> bytes:
        return b"".join(self.parts)


def collecting(opened: list[ObjectInfo]) -> Callable[[ObjectInfo], Collect]:
    sinks: list[Collect] = []

    def open_sink(info: ObjectInfo) -> Collect:
        opened.append(info)
        sinks.append(Collect())
        return sinks[-1]

    open_sink.sinks = sinks  # type: ignore[attr-defined]
    return open_sink


DATA = bytes(range(256)) * 20  # 5120 bytes: five staged blocks / ranged reads at the tiny sizes


# --- ADLSStorage.put_stream / get_into ------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["bytearray", "memoryview", "file"])
def test_adls_put_stream_uploads_in_blocks_from_the_source_in_place(azurite, container, form) -> None:
    s = adls(azurite.endpoint, container, client_options=TINY)
    if form == "file":
        source: Any = io.BytesIO(b"skipped" + DATA)
        source.seek(7)  # from the file's position to its end
    else:
        source = bytearray(DATA) if form == "bytearray" else memoryview(bytearray(DATA))
    info = s.put_stream("k", source, {"a": "1"}, if_none_match=True)
    assert info.size == len(DATA) and info.metadata == {"a": "1"}
    got, stored = s.get_with_info("k")
    assert got == DATA and stored.etag == info.etag and stored.metadata == {"a": "1"}
    blocks = s._container().get_blob_client("mem/k").get_block_list("committed")[0]
    assert len(blocks) == 5  # staged blocks, one atomic commit
    with pytest.raises(AlreadyExistsError):
        s.put_stream("k", bytearray(b"other"), if_none_match=True)
    with pytest.raises(PreconditionFailedError):
        s.put_stream("k", bytearray(b"other"), if_match='"0x0"')
    new = s.put_stream("k", bytearray(b"v2"), {"b": "2"}, if_match=info.etag)
    got, stored = s.get_with_info("k")
    assert got == b"v2" and stored.etag == new.etag and stored.metadata == {"b": "2"}


def test_adls_put_stream_refuses_what_it_cannot_read(azurite, container) -> None:
    s = adls(azurite.endpoint, container)
    with pytest.raises(TypeError, match="bytes-like or a readable, seekable binary file"):
        s.put_stream("k", 12345)


def test_adls_put_stream_lost_commit_is_recognised_as_ours(azurite, container) -> None:
    from tests.storage.test_adls import FaultProxy

    # The block-list commit is applied but its answer is lost: the retry's commit gets 409; the stored object is
    # compared with the source by digest (streamed, not read into memory) and found to be this put's.
    def plan(method: str, path: str, n: int) -> str:  # the first commit is carried out, its answer lost
        first = not any("comp=blocklist" in p for _, p, _ in proxy.log)
        return "drop" if "comp=blocklist" in path and first else "forward"

    proxy = FaultProxy(azurite.port, plan)
    try:
        s = ADLSStorage.from_uri(f"abfss://{container}@{ACCOUNT}.dfs.core.windows.net/mem", endpoint=proxy.endpoint,
                                 account_key=ACCOUNT_KEY, client_options=TINY)
        info = s.put_stream("once", bytearray(DATA), {"w": "1"}, if_none_match=True)
        commits = [a for m, p, a in proxy.log if "comp=blocklist" in p]
        assert commits[:2] == ["drop", "forward"]
        assert info.etag == s.head("once").etag and s.get("once") == DATA
        with pytest.raises(AlreadyExistsError):  # another writer's different bytes still lose
            s.put_stream("once", bytearray(DATA[:-1] + b"x"), if_none_match=True)
    finally:
        proxy.close()


def test_adls_get_into_streams_ranged_reads_into_the_sink(azurite, container) -> None:
    s = adls(azurite.endpoint, container, client_options=TINY)
    put = s.put("k", DATA, {"m": "v"})
    opened: list[ObjectInfo] = []
    open_sink = collecting(opened)
    info = s.get_into("k", open_sink)
    assert open_sink.sinks[0].value() == DATA and len(open_sink.sinks[0].parts) == 5  # type: ignore[attr-defined]
    assert info.etag == put.etag and info.metadata == {"m": "v"} and opened == [info] and info.size == len(DATA)
    with pytest.raises(NotFoundError):
        s.get_into("missing", collecting([]))


def test_adls_get_into_stops_before_the_rest_when_the_sink_is_refused(azurite, container) -> None:
    from tests.storage.test_adls import FaultProxy

    adls(azurite.endpoint, container).put("k", DATA, {"codec": "pickle"})
    proxy = FaultProxy(azurite.port, lambda method, path, n: "forward")
    try:
        s = ADLSStorage.from_uri(f"abfss://{container}@{ACCOUNT}.dfs.core.windows.net/mem", endpoint=proxy.endpoint,
                                 account_key=ACCOUNT_KEY, client_options=TINY)

        def refuse(info: ObjectInfo) -> Any:
            raise CorruptObjectError(f"not trusted: {info.metadata['codec']}", key="k")

        with pytest.raises(CorruptObjectError, match="not trusted: pickle"):
            s.get_into("k", refuse)
        assert len([m for m, _, _ in proxy.log if m == "GET"]) == 1  # the first ranged read only, never retried

        def broken(info: ObjectInfo) -> Any:
            raise ValueError("a caller's own error")

        with pytest.raises(ValueError, match="a caller's own error"):  # as it is, not as a storage error
            s.get_into("k", broken)
    finally:
        proxy.close()


def test_adls_get_into_a_retried_chunk_refills_a_fresh_sink(azurite, container) -> None:
    from tests.storage.test_adls import FaultProxy

    adls(azurite.endpoint, container).put("k", DATA)
    proxy = FaultProxy(azurite.port, lambda method, path, n: 503 if method == "GET" and n == 2 else "forward")
    try:
        s = ADLSStorage.from_uri(f"abfss://{container}@{ACCOUNT}.dfs.core.windows.net/mem", endpoint=proxy.endpoint,
                                 account_key=ACCOUNT_KEY, client_options=TINY)
        opened: list[ObjectInfo] = []
        open_sink = collecting(opened)
        s.get_into("k", open_sink)
        assert len(opened) == 2 and open_sink.sinks[-1].value() == DATA  # type: ignore[attr-defined]
        assert 503 in [a for m, _, a in proxy.log if m == "GET"]
    finally:
        proxy.close()


@pytest.mark.parametrize("seekable", [False, True], ids=["in-order-sink", "seekable-sink"])
def test_adls_get_into_with_parallel_chunks(azurite, container, seekable) -> None:
    s = adls(azurite.endpoint, container, client_options=TINY, max_concurrency=3)
    s.put("k", DATA)
    sink: Any = io.BytesIO() if seekable else Collect()
    info = s.get_into("k", lambda info: sink)
    assert (sink.getvalue() if seekable else sink.value()) == DATA and info.size == len(DATA)


# --- LocalStorage.get_into ------------------------------------------------------------------------------------


@pytest.mark.parametrize("xattrs", [True, False], ids=["attribute", "sidecar"])
def test_local_get_into_streams_one_writes_bytes_and_info(tmp_path, monkeypatch, xattrs) -> None:
    import odibi_ray.storage.local as local

    monkeypatch.setattr(local, "_STREAM_CHUNK", 1000)  # several chunks through the reused buffer
    s = LocalStorage(tmp_path / "s", fsync=False, xattrs=xattrs)
    put = s.put("a/k", DATA, {"m": "v"})
    opened: list[ObjectInfo] = []
    open_sink = collecting(opened)
    info = s.get_into("a/k", open_sink)
    sink = open_sink.sinks[0]  # type: ignore[attr-defined]
    assert sink.value() == DATA and len(sink.parts) == 6  # 5120 bytes through a 1000-byte buffer
    assert info.etag == put.etag and info.metadata == {"m": "v"} and info.size == len(DATA) and opened == [info]
    with pytest.raises(NotFoundError):
        s.get_into("a/missing", collecting([]))

    def refuse(info: ObjectInfo) -> Any:
        raise CorruptObjectError("refused", key="a/k")

    with pytest.raises(CorruptObjectError, match="refused"):
        s.get_into("a/k", refuse)


# --- peak RSS, each case in a fresh process -------------------------------------------------------------------


def _child(case: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one memory case in this (fresh) process; the extra peak RSS over the case's baseline, in bytes."""
    from benchmarks.bench_memory import make_table, peak, reset_peak, rss
    from odibi_ray.checkpoint import store

    if case in ("write", "read"):
        storage = LocalStorage(spec["root"], fsync=False)
        target = store.OutputTarget(storage, "mem", "r1", "big", "ab" * 32, None)
        made = store.Provenance(1, "test", os.getpid(), time.time(), time.time())
        warm = store.OutputTarget(storage, "mem", "r1", "warm", "cd" * 32, None)
        store.write_output(warm, make_table(MB), made)  # imports, allocators: before the baseline
        store.read_output(storage, warm.object_key)
        if case == "write":
            table = make_table(spec["nbytes"])
            base = rss()
            reset_peak()
            size = store.write_output(target, table, made)
        else:
            base = rss()
            reset_peak()
            value, size = store.read_output_sized(storage, target.object_key)
            assert value.num_rows == spec["nbytes"] // 64
        return {"extra": peak() - base, "size": size}
    # adapter cases: the object's bytes are random (incompressible), made before the baseline
    # ADLS: the SDK's first ranged read is 4 MB here (32 MB by default: a fixed cost, 3% of a 1 GB object but a
    # third of this test's)
    storage = adls(spec["endpoint"], spec["container"], client_options={"max_single_get_size": 4 * MB}) \
        if case.startswith("adls") else LocalStorage(spec["root"], fsync=False)

    class Digest:
        def __init__(self) -> None:
            import hashlib

            self.h, self.n = hashlib.sha256(), 0

        def write(self, data: Any) -> int:
            self.h.update(data)
            self.n += memoryview(data).nbytes
            return memoryview(data).nbytes

    storage.put("warm", b"w" * 1000)
    storage.get_into("warm", lambda info: Digest())
    if case.endswith("put_stream"):
        payload = bytearray(os.urandom(spec["nbytes"]))
        base = rss()
        reset_peak()
        storage.put_stream("big", payload, {"n": "1"})
        size = len(payload)
    else:
        base = rss()
        reset_peak()
        sink = Digest()
        info = storage.get_into("big", lambda info: sink)
        size = sink.n
        assert size == info.size == spec["nbytes"]
    return {"extra": peak() - base, "size": size}


def run_case(case: str, **spec: Any) -> float:
    """The case's extra peak RSS in multiples of its payload (run in a fresh interpreter)."""
    proc = subprocess.run([sys.executable, "-m", "tests.test_memory_large", case, json.dumps(spec)], cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["extra"] / out["size"]


def _can_reset_peak() -> bool:
    from benchmarks.bench_memory import reset_peak

    return reset_peak()


needs_peak_reset = pytest.mark.skipif(not _can_reset_peak(), reason="needs /proc/self/clear_refs (Linux) to reset "
                                      "the RSS high-water mark at a baseline")


@needs_peak_reset
def test_adls_put_stream_and_get_into_hold_no_copy_of_a_large_object(azurite, container) -> None:
    where = {"endpoint": azurite.endpoint, "container": container, "nbytes": 96 * MB}
    up = run_case("adls_put_stream", **where)
    down = run_case("adls_get_into", **where)
    # put: one 4 MB block at a time; get: 4 MB ranged reads. (put() of a bytearray copies it whole first;
    # get_with_info holds it whole.)
    assert up < 0.25, f"put_stream of a 96 MB bytearray held {up:.2f} times it at its peak"
    assert down < 0.25, f"get_into of a 96 MB object held {down:.2f} times it at its peak"


@needs_peak_reset
def test_local_get_into_holds_no_copy_of_a_large_object(tmp_path) -> None:
    LocalStorage(tmp_path / "s", fsync=False).put("big", os.urandom(96 * MB))
    extra = run_case("local_get_into", root=str(tmp_path / "s"), nbytes=96 * MB)
    assert extra < 0.15, f"get_into of a 96 MB file held {extra:.2f} times it at its peak"


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[str, float]:
    """A 128 MB checkpoint written by a worker-like process (in a folder), and that write's extra peak."""
    root = str(tmp_path_factory.mktemp("mem") / "s")
    return root, run_case("write", root=root, nbytes=128 * MB)


@needs_peak_reset
def test_writing_a_large_checkpoint_holds_one_payload_besides_the_table(written) -> None:
    extra = written[1]
    assert extra < 1.3, f"writing a 128 MB checkpoint held {extra:.2f} times its payload besides the table"


@needs_peak_reset
def test_reading_a_large_checkpoint_holds_its_payload_and_its_value_only(written) -> None:
    extra = run_case("read", root=written[0], nbytes=128 * MB)
    # The payload (1x) and the decoded table (1.04x here), plus the Parquet reader's working buffers.
    assert extra < 2.4, f"reading a 128 MB checkpoint held {extra:.2f} times its payload at its peak"


if __name__ == "__main__":  # a memory case, in the fresh process run_case starts
    print(json.dumps(_child(sys.argv[1], json.loads(sys.argv[2]))))
