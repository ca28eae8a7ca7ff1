"""Hardening of the local store and of names (issue 14, items 3 and 5).

Item 3: a writer killed mid-put leaves a hidden ``.odibi-tmp-*`` file that no listing or delete removes; the
store lists and sweeps such files past an age, housekeeping sweeps them, ``odibi-ray cache ls`` counts them.
Item 5: node, pipeline and run-id names are matched whole (no trailing newline through ``$``), a node name too
long for storage is refused when the node is defined, a non-string pipeline name is a validation error, and
LocalStorage never follows a symbolic link planted below its root (on the openat2 path and on the per-folder
walk used where openat2 is missing).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from odibi_ray import DAG, DAGValidationError, InvalidNodeError, Node, run
from odibi_ray.cache import CloudCacheManager  # the seed's import path
from odibi_ray.checkpoint import keep_last_n, purge, purge_runs
from odibi_ray.checkpoint import layout
from odibi_ray.compat.checkpoint_manager import Checkpoint
from odibi_ray.checkpoint.housekeeping import TEMP_MAX_AGE_S
from odibi_ray.cli import app
from odibi_ray.errors import InvalidURIError, NotFoundError, StorageError
from odibi_ray.storage import local as local_module
from odibi_ray.storage.base import check_metadata
from odibi_ray.storage.local import LocalStorage

REPO = Path(__file__).resolve().parents[1]
BIG = 50 * 1024 * 1024


def temp_paths(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".odibi-tmp-*"))


@pytest.fixture(params=["openat2", "walk"])
def resolver(request, monkeypatch) -> str:
    """Run a test once with openat2 (where the kernel has it) and once with the per-folder O_NOFOLLOW walk."""
    if request.param == "walk":
        monkeypatch.setattr(local_module, "_OPENAT2", [None])
    elif local_module._openat2() is None:
        pytest.skip("no openat2 on this machine")
    return request.param


# --- item 3: temp files of killed writers --------------------------------------------------------------------------


def kill_mid_put(root: Path, key: str) -> Path:
    """A child process puts 50 MB under ``key`` and is SIGKILLed once its temp file has data (its writes are cut
    to 1 MiB with a short pause each, so the kill lands mid-write every time); the temp file it left."""
    code = textwrap.dedent(f"""
        import os, time
        real_write = os.write
        def slow_write(fd, data):
            time.sleep(0.02)
            return real_write(fd, data[: 1 << 20])
        os.write = slow_write
        from odibi_ray.storage.local import LocalStorage
        LocalStorage({str(root)!r}, fsync=False).put({key!r}, bytes({BIG}))
        print("finished", flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            found = temp_paths(root)
            if found and found[0].stat().st_size >= 2 << 20:
                break
            time.sleep(0.005)
        assert child.poll() is None, ("the put ended before it could be killed", child.communicate())
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    (left,) = temp_paths(root)
    assert 0 < left.stat().st_size < BIG
    return left


def test_a_put_killed_mid_write_leaves_a_temp_file_swept_only_past_its_age(tmp_path) -> None:
    root = tmp_path / "store"
    storage = LocalStorage(root)
    storage.put("objects/p/ab/kept", b"an object")
    left = kill_mid_put(root, "objects/p/ab/abcdef")
    size = left.stat().st_size
    key = str(left.relative_to(root))

    assert [i.key for i in storage.list()] == ["objects/p/ab/kept"]  # never listed, never an object
    assert storage.delete_prefix("objects/p/ab/abc") == 0 and left.exists()
    (found,) = storage.temp_files()
    assert (found.key, found.size) == (key, size) and found.mtime <= time.time()
    assert [t.key for t in storage.temp_files("objects/p/")] == [key]
    assert [t.key for t in storage.temp_files("objects/p/ab/abc")] == [key]  # the folder the prefix ends in
    assert storage.temp_files("objects/q/") == [] and storage.temp_files("runs/") == []

    assert storage.sweep_temp(3600) == (0, 0) and left.exists()  # younger than the age: maybe a live writer's
    assert storage.sweep_temp(0, dry_run=True) == (1, size) and left.exists()
    assert storage.sweep_temp(0, "objects/q/") == (0, 0) and left.exists()
    assert storage.sweep_temp(0) == (1, size)
    assert not left.exists() and temp_paths(root) == []
    assert storage.get("objects/p/ab/kept") == b"an object"
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            storage.sweep_temp(bad)
    with pytest.raises(TypeError):
        storage.sweep_temp("1h")  # type: ignore[arg-type]


def test_sweeping_removes_the_folders_it_empties_but_never_the_root(tmp_path) -> None:
    root = tmp_path / "store"
    storage = LocalStorage(root)
    (root / "objects" / "p" / "cd").mkdir(parents=True)
    (root / "objects" / "p" / "cd" / ".odibi-tmp-0123456789abcdef").write_bytes(b"half")
    (root / ".odibi-tmp-fedcba9876543210").write_bytes(b"at the root")
    assert storage.sweep_temp(0) == (2, 15)
    assert sorted(os.listdir(root)) == []


def test_housekeeping_sweeps_temp_files_past_their_age_and_cache_ls_counts_them(tmp_path) -> None:
    root = tmp_path / "store"
    storage = LocalStorage(root)
    left = kill_mid_put(root, "objects/p/ab/abcdef")
    size = left.stat().st_size

    result = CliRunner().invoke(app, ["cache", "ls", "--storage", str(root)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, (result.stdout, result.exception)
    assert "0 object(s)" in result.stdout
    assert f"1 temp file(s) ({size} bytes)" in result.stdout, result.stdout

    report = purge(storage, expired=True)  # default age: an hour; this one is seconds old
    assert (report.temp_files, report.temp_bytes) == (0, 0) and left.exists()
    assert TEMP_MAX_AGE_S == 3600
    report = purge(storage, expired=True, temp_older_than_s=0, dry_run=True)
    assert (report.temp_files, report.temp_bytes) == (1, size) and left.exists()
    assert "would remove 1 temp file(s)" in str(report)
    report = purge(storage, expired=True, pipeline="other", temp_older_than_s=0)
    assert report.temp_files == 0 and left.exists()  # another pipeline's scope
    report = purge(storage, expired=True, temp_older_than_s=0)
    assert (report.temp_files, report.temp_bytes) == (1, size) and not left.exists()
    assert "removed 1 temp file(s)" in str(report)
    result = CliRunner().invoke(app, ["cache", "ls", "--storage", str(root)], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "temp file" not in result.stdout


@pytest.mark.parametrize("clean", [keep_last_n, purge_runs])
def test_run_housekeeping_sweeps_the_pipelines_temp_files(tmp_path, clean) -> None:
    root = tmp_path / "store"
    storage = LocalStorage(root)
    for folder in ("objects/p/ab", "runs/p/r1", "objects/q/ab"):
        (root / folder).mkdir(parents=True)
        (root / folder / ".odibi-tmp-0123456789abcdef").write_bytes(b"12345")
    args = (storage, "p", 1) if clean is keep_last_n else (storage, "p")
    assert clean(*args).temp_files == 0  # an hour by default
    report = clean(*args, temp_older_than_s=0)
    assert (report.temp_files, report.temp_bytes) == (2, 10)
    assert [t.key for t in storage.temp_files()] == ["objects/q/ab/.odibi-tmp-0123456789abcdef"]
    assert clean(*args, temp_older_than_s=None).temp_files == 0
    with pytest.raises(ValueError):
        clean(*args, temp_older_than_s=-1)


def test_a_sweep_never_goes_through_a_link(tmp_path) -> None:
    root, outside = tmp_path / "store", tmp_path / "outside"
    outside.mkdir()
    (outside / ".odibi-tmp-0123456789abcdef").write_bytes(b"not ours")
    LocalStorage(root).put("objects/x", b"1")
    os.symlink(outside, root / "objects" / "link")
    os.symlink(outside / ".odibi-tmp-0123456789abcdef", root / "objects" / ".odibi-tmp-aaaaaaaaaaaaaaaa")
    storage = LocalStorage(root)
    assert storage.temp_files() == []
    assert storage.sweep_temp(0) == (0, 0)
    assert (outside / ".odibi-tmp-0123456789abcdef").read_bytes() == b"not ours"


# --- item 5: names -------------------------------------------------------------------------------------------------


def f() -> int:
    return 1


@pytest.mark.parametrize("name", ["x\n", "x\r", "x\n\n", "\nx", "x y", ""])
def test_node_names_are_matched_whole(name) -> None:
    with pytest.raises(InvalidNodeError, match="invalid node name"):
        Node(name, f)


def test_a_node_name_too_long_for_storage_is_refused_when_defined() -> None:
    assert layout.MAX_NAME_LEN == 200
    Node("n" * layout.MAX_NAME_LEN, f)
    with pytest.raises(InvalidNodeError, match="201 characters, at most 200"):
        Node("n" * (layout.MAX_NAME_LEN + 1), f)
    dag = DAG("p")
    with pytest.raises(InvalidNodeError):
        dag.node("n" * 300)(f)
    assert len(dag) == 0


@pytest.mark.parametrize("name", [123, None, b"p", ["p"]])
def test_a_pipeline_name_that_is_not_a_string_is_a_validation_error(name) -> None:
    with pytest.raises(DAGValidationError, match="pipeline name must be a string"):
        DAG(name)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["p\n", "p q", "", ".", "..", "p/q", "p" * 201])
def test_pipeline_names_are_matched_whole_and_bounded(name) -> None:
    with pytest.raises(DAGValidationError, match="pipeline name"):
        DAG(name)
    dag = DAG("ok")
    dag.name = name
    with pytest.raises(DAGValidationError, match="pipeline name"):
        dag.validate()


@pytest.mark.parametrize("bad", ["r\n", "r\n\n", "r q", ".", "r" * 201, 7])
def test_storage_paths_refuse_run_ids_and_pipelines_that_are_not_whole_names(bad) -> None:
    with pytest.raises(ValueError):
        layout.run_prefix("p", bad)
    with pytest.raises(ValueError):
        layout.runs_prefix(bad)
    with pytest.raises(ValueError):
        layout.objects_prefix(bad)
    assert layout.manifest_key("p" * 200, "r" * 200) == f"runs/{'p' * 200}/{'r' * 200}/run.json"


def test_the_longest_names_fit_a_checkpointed_run(tmp_path) -> None:
    """Names at the limit run, checkpoint and resume-look-up on a local store (every key segment fits)."""
    longest = "n" * layout.MAX_NAME_LEN
    dag = DAG("p" * layout.MAX_NAME_LEN)
    dag.add_node(Node(longest, f))
    storage = LocalStorage(tmp_path / "s")
    result = run(dag, backend="local", storage=storage, run_id="r" * layout.MAX_NAME_LEN, progress=False)
    assert result.succeeded and result[longest] == 1
    again = run(dag, backend="local", storage=storage, progress=False)
    assert again.nodes[longest].status.value == "cached"
    with pytest.raises(ValueError):
        run(dag, backend="local", storage=storage, run_id="r\n", progress=False)


def test_seed_managers_and_metadata_names_are_matched_whole(tmp_path) -> None:
    with pytest.raises(ValueError):
        Checkpoint("c\n", "p").validate()
    with pytest.raises(ValueError):
        Checkpoint("c", "p\n").validate()
    Checkpoint("c", "p").validate()
    cache = CloudCacheManager(LocalStorage(tmp_path / "c"))
    with pytest.raises(InvalidURIError):
        cache.put("k\n", 1)
    cache.put("k", 1)
    assert cache.get("k") == 1
    with pytest.raises(ValueError):
        check_metadata({"m\n": "v"})
    assert check_metadata({"m": "v"}) == {"m": "v"}


def test_spec_names_are_matched_whole(tmp_path) -> None:
    from odibi_ray.definition.spec import SpecError, load_pipeline

    for text in ['name: "p\\n"\nnodes: {a: {fn: "tests.nodes:attempt"}}\n',
                 'name: p\nnodes: {"a\\n": {fn: "tests.nodes:attempt"}}\n',
                 'name: p\nnodes: {a: {fn: "tests.nodes:attempt\\n"}}\n']:
        path = tmp_path / "p.yaml"
        path.write_text(text)
        with pytest.raises(SpecError):
            load_pipeline(str(path))


# --- item 5: LocalStorage never follows a link below its root ---------------------------------------------------


@pytest.fixture
def planted(tmp_path):
    """A store with a folder link and a file link planted inside it, both pointing outside."""
    root, outside = tmp_path / "store", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"outside the root")
    storage = LocalStorage(root)
    storage.put("objects/p/ab/real", b"inside", {"m": "1"})
    os.symlink(outside, root / "objects" / "p" / "linked")  # a folder link
    os.symlink(outside / "secret", root / "objects" / "p" / "ab" / "filelink")  # a file link
    return storage, root, outside


def test_reads_never_follow_a_link_out_of_the_root(planted, resolver) -> None:
    storage, root, outside = planted
    for key in ("objects/p/linked/secret", "objects/p/ab/filelink"):
        for call in (storage.get, storage.head, storage.get_with_info, lambda k: storage.get(k, 2, 5)):
            with pytest.raises(NotFoundError):
                call(key)
        assert storage.exists(key) is False
    assert [i.key for i in storage.list()] == ["objects/p/ab/real"]
    assert [i.key for i in storage.list("objects/p/", with_metadata=True)] == ["objects/p/ab/real"]
    assert storage.get("objects/p/ab/real") == b"inside" and storage.head("objects/p/ab/real").metadata == {"m": "1"}


def test_writes_never_follow_a_link_out_of_the_root(planted, resolver) -> None:
    storage, root, outside = planted
    for kwargs in ({}, {"if_none_match": True}):
        with pytest.raises(InvalidURIError, match="symbolic link"):
            storage.put("objects/p/linked/new", b"x", **kwargs)
        with pytest.raises(InvalidURIError, match="symbolic link"):
            storage.put("objects/p/linked/deeper/new", b"x", **kwargs)
    with pytest.raises(InvalidURIError, match="symbolic link"):
        LocalStorage(root, xattrs=False).put("objects/p/linked/new", b"x", {"m": "1"})
    assert sorted(os.listdir(outside)) == ["secret"]
    # the link itself can be replaced by an object (a rename over it), never written through
    info = storage.put("objects/p/ab/filelink", b"replaced")
    assert storage.get("objects/p/ab/filelink") == b"replaced" and info.size == 8
    assert (outside / "secret").read_bytes() == b"outside the root"


def test_deletes_never_follow_a_link_out_of_the_root(planted, resolver) -> None:
    storage, root, outside = planted
    assert storage.delete("objects/p/linked/secret") is False
    assert storage.delete("objects/p/ab/filelink") is True  # the link itself, inside the root
    assert storage.delete_prefix("") == 1
    assert (outside / "secret").read_bytes() == b"outside the root"


def test_a_linked_lock_folder_is_not_written_through(tmp_path, resolver) -> None:
    root, outside = tmp_path / "store", tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    os.symlink(outside, root / ".odibi-locks")
    storage = LocalStorage(root)
    with pytest.raises(StorageError):
        storage.put("k", b"v")  # an overwrite put takes the key's lock
    assert os.listdir(outside) == []


def test_a_linked_root_is_followed(tmp_path, resolver) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "root-link")
    storage = LocalStorage(tmp_path / "root-link")
    storage.put("a/b/c", b"1", {"m": "1"})
    storage.put("a/b/c", b"2", if_match=storage.head("a/b/c").etag)
    assert storage.get_with_info("a/b/c")[0] == b"2" and [i.key for i in storage.list()] == ["a/b/c"]
    assert (real / "a" / "b" / "c").read_bytes() == b"2"
    assert storage.delete("a/b/c") is True and storage.sweep_temp(0) == (0, 0)


def test_sidecar_stores_never_follow_links(planted, resolver) -> None:
    storage, root, outside = planted
    sidecars = LocalStorage(root, xattrs=False)
    sidecars.put("objects/s/obj", b"data", {"m": "2"})
    assert sidecars.head("objects/s/obj").metadata == {"m": "2"}
    (outside / ".odibi-meta.secret.json").write_text("{}")
    with pytest.raises(NotFoundError):
        sidecars.head("objects/p/linked/secret")
