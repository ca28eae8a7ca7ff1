"""The seed's CloudAdapter face: tables and bytes in four formats, on a local folder, in simulation
(stateful across processes), and on Azure's blob protocol (Azurite)."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pytest

from odibi_ray.compat.cloud import CloudAdapter
from odibi_ray.errors import InvalidURIError, NotFoundError

TABLE = pa.table({"id": [1, 2, 3], "name": ["a", None, "c"], "amount": [1.5, 2.0, None]})


@pytest.fixture
def sim_dir(tmp_path, monkeypatch):
    d = tmp_path / "sim"
    monkeypatch.setenv("ODIBI_RAY_SIMULATION_DIR", str(d))
    return d


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_tables_round_trip_on_a_local_folder(tmp_path, fmt):
    adapter = CloudAdapter.create("local", root=str(tmp_path)).connect()
    adapter.write(TABLE, f"out/data.{fmt}", format=fmt)
    back = adapter.read(f"out/data.{fmt}", format=fmt)
    assert back.to_pylist() == TABLE.to_pylist()
    df = adapter.read(f"out/data.{fmt}", format=fmt, as_pandas=True)
    assert list(df["id"]) == [1, 2, 3]


def test_bytes_list_exists_delete(tmp_path):
    adapter = CloudAdapter.create("local", root=str(tmp_path)).connect()
    adapter.write(b"\x00raw", "a/blob.bin", format="bytes")
    adapter.write({"x": [1]}, "a/one.parquet")
    adapter.write([{"x": 2}], "a/two.parquet")
    adapter.write(TABLE.to_pandas(), "a/sub/three.parquet")
    assert adapter.read("a/blob.bin", format="bytes") == b"\x00raw"
    assert adapter.list("a/", pattern="*.parquet") == ["a/one.parquet", "a/sub/three.parquet", "a/two.parquet"]
    assert adapter.exists("a/one.parquet") and adapter.delete("a/one.parquet")
    assert not adapter.exists("a/one.parquet") and not adapter.delete("a/one.parquet")
    with pytest.raises(NotFoundError):
        adapter.read("a/one.parquet")


def test_bad_input(tmp_path):
    with pytest.raises(InvalidURIError, match="kind"):
        CloudAdapter.create("ftp")
    adapter = CloudAdapter.create("local", root=str(tmp_path))
    with pytest.raises(ValueError, match="format"):
        adapter.write(TABLE, "x.xml", format="xml")
    with pytest.raises(TypeError, match="cannot write"):
        adapter.write(object(), "x.parquet")
    with pytest.raises(TypeError, match="bytes"):
        adapter.write(TABLE, "x.bin", format="bytes")
    azure = CloudAdapter.create("azure", simulate=True, account_name="acct")
    with pytest.raises(InvalidURIError, match="container"):
        azure.read("no_container_key")


def test_simulation_keeps_state_across_processes(sim_dir):
    """What one process writes in simulation, another reads back (the seed's simulation kept nothing)."""
    code = (
        "from odibi_ray.compat.cloud import CloudAdapter; import pyarrow as pa; "
        "a = CloudAdapter.create('azure', account_name='myaccount', simulate=True).connect(); "
        "a.write(pa.table({'v': [7, 8]}), 'container/path/file.parquet')"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    adapter = CloudAdapter.create("azure", account_name="myaccount", simulate=True).connect()
    assert adapter.exists("container/path/file.parquet")
    assert adapter.read("container/path/file.parquet").to_pydict() == {"v": [7, 8]}
    assert adapter.list("container/path/", pattern="*.parquet") == ["container/path/file.parquet"]
    assert "myaccount" in repr(adapter)
    other = CloudAdapter.create("azure", account_name="otheraccount", simulate=True)
    assert not other.exists("container/path/file.parquet")  # accounts do not share data


def test_azure_on_azurite(azurite):
    """The same face on the real Azure Blob protocol (Azurite on 127.0.0.1)."""
    from tests.storage.fixtures_azurite import ACCOUNT, ACCOUNT_KEY, new_container

    container = new_container(azurite)
    adapter = CloudAdapter.create("azure", account_name=ACCOUNT, account_key=ACCOUNT_KEY,
                                  endpoint=azurite.endpoint).connect()
    adapter.write(TABLE, f"{container}/sales/2026/part-0.parquet")
    adapter.write(TABLE, f"{container}/sales/2026/part-1.csv", format="csv")
    assert adapter.read(f"{container}/sales/2026/part-0.parquet").equals(TABLE)
    assert adapter.read(f"{container}/sales/2026/part-1.csv", format="csv").to_pylist() == TABLE.to_pylist()
    assert adapter.list(f"{container}/sales/", pattern="*.parquet") == [f"{container}/sales/2026/part-0.parquet"]
    assert ACCOUNT_KEY not in repr(adapter)
    assert adapter.delete(f"{container}/sales/2026/part-0.parquet")
    assert not adapter.exists(f"{container}/sales/2026/part-0.parquet")
    adapter.disconnect()


def test_locate_gives_the_store_and_key_that_the_native_api_reads(tmp_path):
    """The public way from the seed face to a Storage (the seed cache uses it; so can users mixing both APIs)."""
    from odibi_ray.storage.base import Storage

    adapter = CloudAdapter.create("local", root=str(tmp_path)).connect()
    adapter.write(b"payload", "box/blob.bin", format="bytes")
    store, key = adapter.locate("box/blob.bin")
    assert isinstance(store, Storage) and key == "box/blob.bin"
    assert store.get(key) == b"payload"
    with pytest.raises(InvalidURIError, match="<container>/<key>"):
        CloudAdapter.create("s3").locate("no-key")
