"""LocalStorage beyond the conformance suite: races between real processes, on-disk layout (plain data files,
metadata sidecars beside them), crashes between a put's two renames, folder limits.

Every test works on a real temp folder; the race and crash tests use real OS processes (multiprocessing spawn,
or a child that dies with ``os._exit`` in the middle of a put).
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from odibi_ray.errors import (AlreadyExistsError, InvalidURIError, NotFoundError, PreconditionFailedError,
                              StorageError, StorageUnavailableError)
from odibi_ray.storage.local import LocalStorage

PAYLOAD = 4 * 1024 * 1024  # large enough that a non-atomic write would be seen half-done
WRITERS = 8
REPO = Path(__file__).resolve().parents[2]


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def temp_files(root: Path) -> list[str]:
    return [f for f in all_files(root) if os.path.basename(f).startswith(".odibi-tmp-")]


def sidecar(root: Path, key: str) -> Path:
    folder, _, name = key.rpartition("/")
    return root / folder / f".odibi-meta.{name}.json"


def stray_sidecars(root: Path) -> list[str]:
    """Sidecars whose data file is missing."""
    out = []
    for f in all_files(root):
        name = os.path.basename(f)
        if name.startswith(".odibi-meta.") and not (root / os.path.dirname(f) / name[12:-5]).is_file():
            out.append(f)
    return out


# --- process bodies (module level: spawned children import this module) ---------------------------------------


def classify(storage: LocalStorage, key: str, with_info: bool) -> str:
    """What a reader sees: "none", "whole" (one writer's full payload with its own metadata) or what went wrong."""
    try:
        if with_info:
            data, info = storage.get_with_info(key)
            writer = info.metadata.get("writer")
        else:
            data, writer = storage.get(key), None
    except NotFoundError:
        return "none"
    except StorageError as exc:
        return f"error: {type(exc).__name__}: {exc}"
    if len(data) != PAYLOAD or data.count(data[:1]) != PAYLOAD:
        return f"partial: {len(data)} bytes"
    if with_info and writer != str(data[0] - 1):
        return f"mismatched metadata: writer {writer} for bytes of writer {data[0] - 1}"
    return "whole"


def _create_only_writer(root: str, key: str, i: int, reader_polling, barrier, results) -> None:
    storage = LocalStorage(root)
    data = bytes([i + 1]) * PAYLOAD
    reader_polling.wait(60)
    barrier.wait()
    try:
        storage.put(key, data, {"writer": str(i)}, if_none_match=True)
        results.put((i, "won"))
    except AlreadyExistsError:
        results.put((i, "exists"))
    except BaseException as exc:  # reported to the test, which fails on it
        results.put((i, f"error: {type(exc).__name__}: {exc}"))


def _polling_reader(root: str, key: str, polling, stop, results) -> None:
    storage = LocalStorage(root)
    seen: Counter = Counter()
    n = 0
    while not stop.is_set():
        seen[classify(storage, key, with_info=n % 2 == 1)] += 1
        n += 1
        polling.set()  # the writers start only once this loop runs
    seen[classify(storage, key, True)] += 1
    results.put(("reader", dict(seen)))


def _cas_incrementer(root: str, key: str, increments: int, barrier, results) -> None:
    storage = LocalStorage(root)
    retries = 0
    barrier.wait()
    try:
        for _ in range(increments):
            while True:
                data, info = storage.get_with_info(key)
                try:
                    storage.put(key, str(int(data) + 1).encode(), if_match=info.etag)
                    break
                except PreconditionFailedError:
                    retries += 1
        results.put(retries)
    except BaseException as exc:
        results.put(f"error: {type(exc).__name__}: {exc}")


PAIR = {"0": bytes([1]) * 1000, "1": bytes([2]) * 3000}  # two payloads, told apart by size and content


def _alternating_writer(root: str, key: str, i: int, rounds: int, barrier, results) -> None:
    storage = LocalStorage(root, fsync=False)  # no fsync: more writes per second, the same renames and locks
    barrier.wait()
    try:
        for n in range(rounds):
            w = str((i + n) % 2)
            storage.put(key, PAIR[w], {"writer": w, "size": str(len(PAIR[w]))})
        results.put("done")
    except BaseException as exc:
        results.put(f"error: {type(exc).__name__}: {exc}")


def check_pair(info, data: bytes | None = None) -> str | None:
    """None if ``info`` (and ``data``) belong to one write of PAIR, else what is wrong."""
    w = info.metadata.get("writer")
    if w not in PAIR:
        return f"metadata {dict(info.metadata)} (etag {info.etag}) with a {info.size}-byte object"
    if info.size != len(PAIR[w]) or info.metadata.get("size") != str(info.size):
        return f"size {info.size} with the metadata of writer {w}"
    if data is not None and data != PAIR[w]:
        return f"{len(data)} bytes of {data[:1]!r} with the metadata of writer {w}"
    return None


def _run(ctx, target, args_list) -> list:
    procs = [ctx.Process(target=target, args=args) for args in args_list]
    for p in procs:
        p.start()
    return procs


def _join(procs) -> None:
    for p in procs:
        p.join(60)
    for p in procs:
        if p.is_alive():  # only our own children, by object
            p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]


# --- races between processes ---------------------------------------------------------------------------------------


def test_create_only_race_has_one_winner_and_no_partial_reads(tmp_path) -> None:
    root, key = str(tmp_path / "store"), "race/obj.bin"
    ctx = multiprocessing.get_context("spawn")
    polling, barrier, stop, results = ctx.Event(), ctx.Barrier(WRITERS), ctx.Event(), ctx.Queue()
    reader = _run(ctx, _polling_reader, [(root, key, polling, stop, results)])
    writers = _run(ctx, _create_only_writer, [(root, key, i, polling, barrier, results) for i in range(WRITERS)])
    outcomes = dict(results.get(timeout=120) for _ in range(WRITERS))
    stop.set()
    name, seen = results.get(timeout=60)
    _join(writers + reader)

    assert sorted(Counter(outcomes.values()).items()) == [("exists", WRITERS - 1), ("won", 1)], outcomes
    winner = next(i for i, o in outcomes.items() if o == "won")
    assert set(seen) <= {"none", "whole"}, f"the reader saw something else than nothing or a whole object: {seen}"
    # It polled without pause from before the first writer started until after the last one finished, so it
    # watched the object appear (a non-atomic write would have been readable half-done in between).
    assert seen.get("none", 0) >= 1 and seen.get("whole", 0) >= 1, seen
    storage = LocalStorage(root)
    data, info = storage.get_with_info(key)
    assert data == bytes([winner + 1]) * PAYLOAD and info.metadata == {"writer": str(winner)}
    assert Path(root, key).read_bytes() == data  # a plain file: the winner's bytes, nothing else
    assert temp_files(tmp_path / "store") == [] and stray_sidecars(tmp_path / "store") == []


def test_the_race_reader_would_see_a_partial_write() -> None:
    """Control for the race test: a file written in place (not via temp + rename) is classified as bad."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        storage = LocalStorage(d)
        storage.put("k", bytes([3]) * PAYLOAD, {"writer": "2"})
        assert classify(storage, "k", True) == "whole"
        whole = Path(d, "k").read_bytes()
        assert whole == bytes([3]) * PAYLOAD  # the data file is the bytes put, nothing else
        Path(d, "k").write_bytes(whole[: len(whole) // 2])  # what a reader of a non-atomic write could meet
        assert classify(storage, "k", True).startswith("partial")
        assert classify(storage, "k", False).startswith("partial")
        storage.put("k", bytes([3]) * PAYLOAD, {"writer": "5"})
        assert classify(storage, "k", True).startswith("mismatched metadata")


def test_compare_and_swap_race_loses_no_increment(tmp_path) -> None:
    root, key, increments = str(tmp_path / "store"), "counter", 20
    LocalStorage(root).put(key, b"0", if_none_match=True)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(WRITERS), ctx.Queue()
    procs = _run(ctx, _cas_incrementer, [(root, key, increments, barrier, results) for _ in range(WRITERS)])
    retries = [results.get(timeout=120) for _ in range(WRITERS)]
    _join(procs)
    assert all(isinstance(r, int) for r in retries), retries
    assert LocalStorage(root).get(key) == str(WRITERS * increments).encode()
    assert sum(retries) > 0, "no writer ever lost a compare-and-swap: the race was not exercised"
    assert temp_files(tmp_path / "store") == [] and stray_sidecars(tmp_path / "store") == []


def test_reader_never_pairs_data_with_another_writes_metadata(local_storage: LocalStorage) -> None:
    local_storage.put("pair", bytes([1]) * PAYLOAD, {"writer": "0"})
    stop, failures = threading.Event(), []

    def writer() -> None:
        for n in range(40):
            i = n % 4
            local_storage.put("pair", bytes([i + 1]) * PAYLOAD, {"writer": str(i)})
        stop.set()

    t = threading.Thread(target=writer)
    t.start()
    reads = 0
    while not stop.is_set():
        seen = classify(local_storage, "pair", True)
        reads += 1
        if seen != "whole":
            failures.append(seen)
    t.join()
    assert failures == [] and reads > 0


def test_readers_never_pair_one_writes_data_with_another_writes_metadata_across_processes(tmp_path) -> None:
    """Writer processes alternate two payloads with distinct metadata; head, get_with_info and list in this process
    must always see data, size and metadata of one and the same write (never a stale or foreign pairing)."""
    root, key, writers, rounds = str(tmp_path / "store"), "pair/obj", 3, 500
    storage = LocalStorage(root)
    storage.put(key, PAIR["0"], {"writer": "0", "size": str(len(PAIR["0"]))})
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(writers), ctx.Queue()
    procs = _run(ctx, _alternating_writer, [(root, key, i, rounds, barrier, results) for i in range(writers)])
    failures: list[str] = []
    seen: Counter = Counter()
    done: list[str] = []
    while len(done) < writers:
        head = storage.head(key)
        data, info = storage.get_with_info(key)
        listed = next(iter(storage.list("pair/", with_metadata=True)))
        for what, problem in (("head", check_pair(head)), ("get_with_info", check_pair(info, data)),
                              ("list", check_pair(listed))):
            if problem:
                failures.append(f"{what}: {problem}")
        seen[info.metadata.get("writer")] += 1
        while not results.empty():
            done.append(results.get())
    _join(procs)
    assert done == ["done"] * writers, done
    assert failures == [], f"{len(failures)} bad pairings in {sum(seen.values())} rounds, e.g. {failures[:3]}"
    assert seen["0"] > 10 and seen["1"] > 10, f"the reader did not watch the writers alternate: {seen}"
    assert stray_sidecars(tmp_path / "store") == [] and temp_files(tmp_path / "store") == []


def test_etag_changes_on_every_write_even_within_one_millisecond(local_storage: LocalStorage) -> None:
    etags = [local_storage.put("fast", bytes([i % 2]) * 10).etag for i in range(50)]
    assert len(set(etags)) == 50
    with pytest.raises(PreconditionFailedError):
        local_storage.put("fast", b"x", if_match=etags[-2])  # same size, written a moment earlier: stale


# --- layout ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def sidecar_storage(tmp_path) -> LocalStorage:
    """A LocalStorage that keeps metadata in sidecar files (as on a filesystem without extended attributes)."""
    return LocalStorage(tmp_path / "store", xattrs=False)


def test_one_object_is_one_file_with_its_metadata_in_an_extended_attribute(local_storage: LocalStorage) -> None:
    root = Path(local_storage.root)
    info = local_storage.put("a/b/c.txt", b"hello", {"codec": "text"}, if_none_match=True)
    assert os.listdir(root) == ["a"]  # a create-only put takes no lock: no lock folder, no sidecar, no temp file
    assert os.listdir(root / "a" / "b") == ["c.txt"]
    path = root / "a" / "b" / "c.txt"
    assert path.read_bytes() == b"hello"  # no header: the bytes put, nothing else
    record = json.loads(os.getxattr(path, "user.odibi.meta"))
    st = os.stat(path)
    assert record == {"etag": info.etag, "size": 5, "mtime_ns": st.st_mtime_ns, "metadata": {"codec": "text"}}
    again = local_storage.put("a/b/c.txt", b"hello again", {"codec": "v2"}, if_match=info.etag)
    assert os.listdir(root / "a" / "b") == ["c.txt"]
    assert local_storage.get_with_info("a/b/c.txt") == (b"hello again", again)
    assert sorted(os.listdir(root)) == [".odibi-locks", "a"]  # compare-and-swap holds a lock stripe (256 at most)
    assert len(os.listdir(root / ".odibi-locks")) == 1


def test_a_sidecar_store_is_read_and_taken_over_by_an_attribute_store(sidecar_storage: LocalStorage) -> None:
    root = Path(sidecar_storage.root)
    old = sidecar_storage.put("k/v", b"old", {"m": "sidecar"})
    assert sorted(os.listdir(root / "k")) == [".odibi-meta.v.json", "v"]
    modern = LocalStorage(root)
    assert modern.head("k/v") == sidecar_storage.head("k/v") == old
    with pytest.raises(AlreadyExistsError):
        modern.put("k/v", b"new", if_none_match=True)
    new = modern.put("k/v", b"new", {"m": "attr"}, if_match=old.etag)
    assert os.listdir(root / "k") == ["v"]  # the stale sidecar went with the old data
    assert sidecar_storage.get_with_info("k/v") == modern.get_with_info("k/v") == (b"new", new)


def test_no_attributes_on_the_filesystem_means_sidecars(tmp_path, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", refuse)
    storage = LocalStorage(tmp_path / "s")
    info = storage.put("x/y", b"data", {"m": "1"}, if_none_match=True)
    assert sorted(os.listdir(tmp_path / "s" / "x")) == [".odibi-meta.y.json", "y"]
    assert storage.head("x/y") == info and storage.get_with_info("x/y") == (b"data", info)


def test_the_data_file_is_exactly_the_bytes_put_and_its_metadata_sits_beside_it(sidecar_storage: LocalStorage) -> None:
    local_storage = sidecar_storage
    root = Path(local_storage.root)
    first = local_storage.put("a/b/c.txt", b"hello", {"codec": "text"})
    info = local_storage.put("a/b/c.txt", b"hello again", {"codec": "v2"}, if_match=first.etag)
    assert sorted(os.listdir(root / "a" / "b")) == [".odibi-meta.c.txt.json", "c.txt"]  # no temp file left
    assert (root / "a" / "b" / "c.txt").read_bytes() == b"hello again"  # no header: the bytes put, nothing else
    record = json.loads(sidecar(root, "a/b/c.txt").read_bytes())
    st = os.stat(root / "a" / "b" / "c.txt")
    assert record["etag"] == info.etag == local_storage.head("a/b/c.txt").etag
    assert record["metadata"] == {"codec": "v2"}
    assert (record["size"], record["ino"], record["mtime_ns"]) == (11, st.st_ino, st.st_mtime_ns)
    assert sorted(os.listdir(root)) == [".odibi-locks", "a"]
    assert [i.key for i in local_storage.list()] == ["a/b/c.txt"]  # the sidecar is never listed
    assert list(local_storage.list("a/b/.odibi")) == []


def test_parquet_written_through_the_cloud_adapter_is_a_plain_parquet_file(tmp_path) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from odibi_ray.compat.cloud import CloudAdapter

    table = pa.table({"id": [1, 2, 3], "name": ["a", None, "c"]})
    adapter = CloudAdapter.create("local", root=str(tmp_path)).connect()
    adapter.write(table, "out/data.parquet", metadata={"codec": "parquet"})
    path = tmp_path / "out" / "data.parquet"
    assert pq.read_table(str(path)).equals(table)  # opened by path, as any Parquet file
    assert pd.read_parquet(path)["id"].tolist() == [1, 2, 3]
    assert os.listdir(tmp_path / "out") == ["data.parquet"]  # its metadata is in the file's attribute
    assert LocalStorage(tmp_path).head("out/data.parquet").metadata == {"codec": "parquet"}
    assert adapter.list("out/", pattern="*.parquet") == ["out/data.parquet"]
    assert adapter.read("out/data.parquet").equals(table)


# A child that dies (os._exit: no cleanup, no finally) when a put moves its *data* in place, i.e. after the sidecar.
CRASH = textwrap.dedent("""
    import os, sys
    from odibi_ray.storage.local import LocalStorage
    root, key, mode = sys.argv[1:4]  # sidecars: the layout with two renames
    name = key.rsplit("/", 1)[-1]

    def dies_on_data(real):
        def move(src, dst, *args, **kwargs):
            if os.path.basename(dst) == name:
                os._exit(17)
            return real(src, dst, *args, **kwargs)
        return move

    os.replace, os.link = dies_on_data(os.replace), dies_on_data(os.link)
    LocalStorage(root, xattrs=False).put(key, b"new bytes!", {"writer": "crashed"}, if_none_match=mode == "create")
    os._exit(0)
""")


def crash_between_renames(root: Path, key: str, mode: str) -> None:
    proc = subprocess.run([sys.executable, "-c", CRASH, str(root), key, mode], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 17, proc.stderr


def test_a_crash_between_the_renames_leaves_a_stale_sidecar_that_is_not_trusted(sidecar_storage: LocalStorage) -> None:
    local_storage = sidecar_storage
    root = Path(local_storage.root)
    old = local_storage.put("c/obj", b"old bytes", {"writer": "old"})
    crash_between_renames(root, "c/obj", "replace")
    stale = json.loads(sidecar(root, "c/obj").read_bytes())
    assert stale["metadata"] == {"writer": "crashed"}  # the sidecar was moved in first; the data never followed
    assert (root / "c" / "obj").read_bytes() == b"old bytes"
    head = local_storage.head("c/obj")
    data, info = local_storage.get_with_info("c/obj")
    assert data == b"old bytes" and local_storage.get("c/obj") == b"old bytes"
    for got in (head, info, next(iter(local_storage.list("c/", with_metadata=True)))):
        assert (got.size, dict(got.metadata), got.etag) == (9, {}, head.etag)  # a plain file: no metadata
        assert got.etag not in (old.etag, stale["etag"])
    for etag in (stale["etag"], old.etag):
        with pytest.raises(PreconditionFailedError):
            local_storage.put("c/obj", b"x", if_match=etag)
    assert [i.key for i in local_storage.list()] == ["c/obj"]  # the crashed writer's temp file is not listed
    local_storage.put("c/obj", b"fixed", {"writer": "new"}, if_match=head.etag)
    assert (local_storage.get("c/obj"), local_storage.head("c/obj").metadata) == (b"fixed", {"writer": "new"})


def test_a_crashed_create_leaves_a_sidecar_without_data_which_is_no_object(sidecar_storage: LocalStorage) -> None:
    local_storage = sidecar_storage
    root = Path(local_storage.root)
    local_storage.put("n/keep", b"k", {"m": "keep"})
    for key in ("n/first", "n/second", "n/third"):
        crash_between_renames(root, key, "create")
        assert sidecar(root, key).is_file() and not (root / key).exists()
        assert not local_storage.exists(key)
        for call in (lambda key=key: local_storage.get(key), lambda key=key: local_storage.get_with_info(key)):
            with pytest.raises(NotFoundError):
                call()
    assert [i.key for i in local_storage.list(with_metadata=True)] == ["n/keep"]
    info = local_storage.put("n/first", b"created", {"m": "1"}, if_none_match=True)  # the key is free
    head = local_storage.head("n/first")
    assert (head.etag, dict(head.metadata)) == (info.etag, {"m": "1"})
    assert local_storage.delete("n/second") is False  # no object there, but its stray sidecar goes with it
    assert not sidecar(root, "n/second").exists()
    assert local_storage.delete_prefix("n/") == 2  # keep and first; third's stray sidecar is removed too
    assert [f for f in all_files(root) if ".odibi-meta." in f] == []
    assert list(local_storage.list()) == []


@pytest.mark.parametrize("xattrs", [True, False], ids=["attribute", "sidecar"])
def test_a_data_file_changed_by_another_tool_drops_the_stale_metadata(tmp_path, xattrs: bool) -> None:
    local_storage = LocalStorage(tmp_path / "store", xattrs=xattrs)
    root = Path(local_storage.root)
    path, other = root / "f" / "obj", root / "f" / "other"

    def replaced_by_a_file_of_the_same_size() -> None:
        other.write_bytes(b"9876543210")
        os.replace(other, path)

    def rewritten_in_place_later() -> None:
        time.sleep(0.05)  # the file's mtime moves on (same inode, same size)
        path.write_bytes(b"9876543210")

    changes = {"rewritten in place, other size": lambda: path.write_bytes(b"longer than before"),
               "replaced by a file of the same size": replaced_by_a_file_of_the_same_size,
               "rewritten in place, same size": rewritten_in_place_later,
               "metadata garbled": lambda: garble(b"{not json"),
               "metadata of another shape": lambda: garble(b'{"etag": 1}')}

    def garble(record: bytes) -> None:
        if xattrs:
            os.setxattr(path, "user.odibi.meta", record)
        else:
            sidecar(root, "f/obj").write_bytes(record)

    for name, change in changes.items():
        put = local_storage.put("f/obj", b"0123456789", {"m": "v"})
        change()
        head = local_storage.head("f/obj")
        assert (dict(head.metadata), head.size) == ({}, path.stat().st_size), name
        assert head.etag != put.etag, name
        data, info = local_storage.get_with_info("f/obj")
        assert data == path.read_bytes() and info == head, name
        with pytest.raises(PreconditionFailedError):
            local_storage.put("f/obj", b"x", if_match=put.etag)


def test_delete_removes_data_and_sidecar_and_never_goes_through_a_link(sidecar_storage: LocalStorage, tmp_path) -> None:
    local_storage = sidecar_storage
    root = Path(local_storage.root)
    local_storage.put("d/a", b"1", {"m": "1"})
    local_storage.put("d/b", b"2")
    assert local_storage.delete("d/a") is True
    assert sorted(os.listdir(root / "d")) == [".odibi-meta.b.json", "b"]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep me")
    (outside / ".odibi-meta.precious.json").write_bytes(b"{}")
    os.symlink(outside, root / "d" / "link")
    assert local_storage.delete("d/link/precious") is False  # the linked folder is not followed
    with pytest.raises(NotFoundError):
        local_storage.delete("d/link/precious", missing_ok=False)
    assert local_storage.delete_prefix("d/") == 1
    assert sorted(os.listdir(outside)) == [".odibi-meta.precious.json", "precious"]
    assert os.listdir(root / "d") == ["link"]  # the link itself is not an object either


def test_plain_files_from_elsewhere_read_as_objects(local_storage: LocalStorage) -> None:
    root = Path(local_storage.root)
    (root / "in").mkdir(parents=True)
    (root / "in" / "data.csv").write_bytes(b"a,b\n1,2\n")
    assert local_storage.get("in/data.csv") == b"a,b\n1,2\n"
    assert local_storage.get("in/data.csv", 4) == b"1,2\n"
    head = local_storage.head("in/data.csv")
    assert (head.size, dict(head.metadata)) == (8, {})
    assert [i.key for i in local_storage.list("in/")] == ["in/data.csv"]
    (root / "in" / "data.csv").write_bytes(b"a,b\n1,2\n3,4\n")
    assert local_storage.head("in/data.csv").etag != head.etag
    with pytest.raises(PreconditionFailedError):
        local_storage.put("in/data.csv", b"x", if_match=head.etag)
    local_storage.put("in/data.csv", b"replaced", if_match=local_storage.head("in/data.csv").etag)
    assert local_storage.get("in/data.csv") == b"replaced"


def test_temp_and_lock_files_are_never_listed_and_reserved_names_refused(local_storage: LocalStorage) -> None:
    root = Path(local_storage.root)
    local_storage.put("d/x", b"1")
    (root / "d" / ".odibi-tmp-deadbeef").write_bytes(b"half a write")  # left by a crashed writer
    assert [i.key for i in local_storage.list()] == ["d/x"]
    assert local_storage.delete_prefix("d/") == 1
    for key in [".odibi-locks/000", "d/.odibi-tmp-deadbeef", "d/.odibi-meta.x.json", "a/.odibi-x", "nul\x00byte"]:
        with pytest.raises(InvalidURIError, match="invalid object key"):
            local_storage.put(key, b"x")
    assert os.listdir(root / ".odibi-locks")  # lock files are kept, outside the key space


def test_a_key_cannot_also_be_a_folder(local_storage: LocalStorage) -> None:
    local_storage.put("a/b", b"object")
    with pytest.raises(InvalidURIError, match="folder"):
        local_storage.put("a/b/c", b"x")
    local_storage.put("x/y/z", b"deep")
    for kwargs in ({}, {"if_none_match": True}):
        with pytest.raises(InvalidURIError, match="folder"):
            local_storage.put("x/y", b"x", **kwargs)
    with pytest.raises(NotFoundError):
        local_storage.get("x/y")  # a folder is not an object
    with pytest.raises(NotFoundError):
        local_storage.get("a/b/c")
    assert local_storage.delete("x/y") is False
    assert [i.key for i in local_storage.list()] == ["a/b", "x/y/z"]
    assert temp_files(Path(local_storage.root)) == []


def test_deletes_remove_empty_folders_but_never_the_root(local_storage: LocalStorage) -> None:
    root = Path(local_storage.root)
    local_storage.put("p/q/r/one", b"1")
    local_storage.put("p/q/two", b"2")
    local_storage.put("keep/three", b"3")
    assert local_storage.delete("p/q/r/one") is True
    assert not (root / "p" / "q" / "r").exists() and (root / "p" / "q").is_dir()
    assert local_storage.delete_prefix("p/") == 1
    assert not (root / "p").exists()
    assert local_storage.delete_prefix("") == 1
    assert root.is_dir() and sorted(os.listdir(root)) == [".odibi-locks"]


def test_delete_prefix_never_leaves_the_root(local_storage: LocalStorage, tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep me")
    local_storage.put("in/x", b"1")
    os.symlink(outside, Path(local_storage.root) / "in" / "link")
    assert [i.key for i in local_storage.list()] == ["in/x"]  # a linked folder is not followed
    assert local_storage.delete_prefix("") == 1
    assert (outside / "precious").read_bytes() == b"keep me"
    for prefix in ["../", "/etc", "a//", "a/../", "./x"]:
        with pytest.raises(InvalidURIError, match="invalid prefix"):
            local_storage.delete_prefix(prefix)
        with pytest.raises(InvalidURIError, match="invalid prefix"):
            list(local_storage.list(prefix))
    assert (outside / "precious").exists()


# --- missing roots, read-only mounts, permissions -----------------------------------------------------------------


def test_missing_root(tmp_path) -> None:
    storage = LocalStorage(tmp_path / "not" / "yet")
    assert list(storage.list()) == [] and storage.delete_prefix("") == 0
    with pytest.raises(NotFoundError):
        storage.get("k")
    storage.put("k", b"v")  # the root is made on the first write
    assert storage.get("k") == b"v"

    mount = LocalStorage(tmp_path / "unmounted", create_root=False)
    for call in (lambda: mount.put("k", b"v"), lambda: mount.get("k"), lambda: list(mount.list()),
                 lambda: mount.delete_prefix("")):
        with pytest.raises(StorageUnavailableError, match="does not exist"):
            call()
    assert not (tmp_path / "unmounted").exists()


def test_read_only_mount_is_unavailable_for_writes(tmp_path) -> None:
    """A real read-only tmpfs, mounted in a private mount namespace of a child process (needs root/unshare).

    A second tmpfs is filled by a LocalStorage, then remounted read-only: its objects still read with their
    metadata (readers cannot make lock files there and read unlocked: nothing can write)."""
    mnt, filled = tmp_path / "ro", tmp_path / "filled"
    mnt.mkdir()
    filled.mkdir()
    fill = (f"from odibi_ray.storage.local import LocalStorage; "
            f"LocalStorage({str(filled)!r}).put('k', b'v', {{'m': '1'}})")
    code = textwrap.dedent(f"""
        import json
        from odibi_ray.errors import StorageUnavailableError, NotFoundError
        from odibi_ray.storage.local import LocalStorage
        s = LocalStorage({str(mnt)!r})
        f = LocalStorage({str(filled)!r})
        out = {{"filled": [dict(f.head("k").metadata), f.get_with_info("k")[0].decode(),
                           [(i.key, dict(i.metadata)) for i in f.list(with_metadata=True)]]}}
        for key in ["other/key", "k2"]:  # lock stripes that were never made
            try:
                f.head(key)
            except NotFoundError:
                out["filled"].append("not found")
        try:
            f.put("k", b"w")
        except StorageUnavailableError as exc:
            out["filled"].append("unavailable")
        try:
            s.put("k", b"v")
            out["put"] = "ok"
        except StorageUnavailableError as exc:
            out["put"] = "unavailable: " + str(exc)
        try:
            s.get("k")
        except NotFoundError:
            out["get"] = "not found"
        out["list"] = [i.key for i in s.list()]
        print(json.dumps(out))
    """)
    script = (f"mount -t tmpfs -o ro tmpfs {mnt} && mount -t tmpfs tmpfs {filled} && {sys.executable} -c \"$1\" && "
              f"mount -o remount,ro {filled} && exec {sys.executable} -c \"$0\"")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, code, fill],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["put"].startswith("unavailable: ") and "Read-only file system" in out["put"], out
    assert out["get"] == "not found" and out["list"] == []
    assert out["filled"] == [{"m": "1"}, "v", [["k", {"m": "1"}]], "not found", "not found", "unavailable"], out


def test_permission_denied_is_an_auth_error(tmp_path) -> None:
    """Another user (nobody, via setpriv; needs root) can read the objects but not write or delete them."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="odibi-perm-")  # tmp_path's parents are private to root
    try:
        os.chmod(folder, 0o755)
        LocalStorage(folder).put("a/k", b"v", {"m": "1"})
        Path(folder, "a", "plain").write_bytes(b"p")  # its lock stripe was never made; nobody cannot make it
        code = textwrap.dedent(f"""
            import json
            from odibi_ray.errors import StorageAuthError
            from odibi_ray.storage.local import LocalStorage
            s = LocalStorage({folder!r})
            out = {{"get": s.get("a/k").decode(), "meta": dict(s.head("a/k").metadata),
                    "plain": [s.get_with_info("a/plain")[0].decode(), dict(s.head("a/plain").metadata)],
                    "list": [(i.key, dict(i.metadata)) for i in s.list(with_metadata=True)]}}
            for name, call in [("put", lambda: s.put("a/k", b"w")), ("new", lambda: s.put("b/k", b"w")),
                               ("delete", lambda: s.delete("a/k"))]:
                try:
                    call()
                    out[name] = "done"
                except StorageAuthError as exc:
                    out[name] = "auth: " + str(exc)
            print(json.dumps(out))
        """)
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                               "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert (out["get"], out["meta"]) == ("v", {"m": "1"})
        assert out["plain"] == ["p", {}] and out["list"] == [["a/k", {"m": "1"}], ["a/plain", {}]]
        for name in ("put", "new", "delete"):
            assert out[name].startswith("auth: ") and "permission denied" in out[name], out
        assert LocalStorage(folder).get("a/k") == b"v"
    finally:
        shutil.rmtree(folder)


# --- configuration ---------------------------------------------------------------------------------------------------


def test_pickles_as_configuration_only(local_storage: LocalStorage) -> None:
    local_storage.put("k", b"v")
    assert local_storage.__getstate__() == {"root": local_storage.root, "fsync": True, "create_root": True,
                                            "xattrs": True}
    copy = pickle.loads(pickle.dumps(local_storage))
    assert copy == local_storage and copy.get("k") == b"v"


def test_relative_root_is_fixed_against_the_cwd_at_construction(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = LocalStorage("rel/store")
    assert storage.root == str(tmp_path / "rel" / "store")
    assert storage.uri == (tmp_path / "rel" / "store").as_uri()
    monkeypatch.chdir("/")
    copy = pickle.loads(pickle.dumps(storage))
    copy.put("k", b"v")
    assert (tmp_path / "rel" / "store" / "k").is_file()


def test_fsync_off_still_round_trips(tmp_path, monkeypatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    storage = LocalStorage(tmp_path / "s", fsync=False)
    storage.put("a/b", b"fast", {"m": "1"}, if_none_match=True)
    assert storage.get_with_info("a/b")[0] == b"fast" and storage.head("a/b").metadata == {"m": "1"}
    assert synced == []
    LocalStorage(tmp_path / "s").put("a/b", b"safe", {"m": "2"})
    assert len(synced) == 2  # the data file (its metadata in its attribute) and the folder holding it
    synced.clear()
    LocalStorage(tmp_path / "s", xattrs=False).put("a/b", b"safe", {"m": "3"})
    assert len(synced) == 3  # with sidecars: the data file, its sidecar, and the folder holding both
