"""The seed's DistributedCheckpointManager face: a cloud copy (a CloudAdapter on a real folder, or on Azure's
blob protocol served by Azurite on 127.0.0.1) plus a local copy in a real folder; a dead endpoint for outages, and
an on-disk Azurite stopped and started again for the pushes of checkpoints saved during an outage."""

from __future__ import annotations

import logging
import pickle
import shutil
from dataclasses import dataclass

import pyarrow as pa
import pytest

from odibi_ray.checkpoint.distributed_checkpoint_manager import SyncReport  # the seed's import path
from odibi_ray.compat.checkpoint_manager import Checkpoint, CheckpointCorruptError, DistributedCheckpointManager
from odibi_ray.compat.cloud import CloudAdapter
from odibi_ray.errors import NotFoundError, StorageUnavailableError
from odibi_ray.storage.base import Storage
from odibi_ray.storage.local import LocalStorage
from tests.storage.fixtures_azurite import ACCOUNT, ACCOUNT_KEY, AzuriteServer, free_port, new_container

TABLE = pa.table({"id": [1, 2, 3], "name": ["a", None, "c"]})


@dataclass
class Cloud:
    """The cloud side: the adapter and path given to the manager, and an independently opened Storage (``raw``)
    on the same objects, to inspect or damage them."""

    adapter: object
    path: str
    raw: Storage


@pytest.fixture(params=["local", "azurite"])
def cloud(request, tmp_path):
    if request.param == "local":
        adapter = CloudAdapter.create("local", root=str(tmp_path / "cloud")).connect()
        return Cloud(adapter, "ckpt", LocalStorage(tmp_path / "cloud" / "ckpt"))
    from odibi_ray.storage.adls import ADLSStorage

    azurite = request.getfixturevalue("azurite")
    container = new_container(azurite)
    adapter = CloudAdapter.create("azure", account_name=ACCOUNT, account_key=ACCOUNT_KEY,
                                  endpoint=azurite.endpoint).connect()
    raw = ADLSStorage.from_uri(f"abfss://{container}@{ACCOUNT}.dfs.core.windows.net/ckpt",
                               endpoint=azurite.endpoint, account_key=ACCOUNT_KEY)
    return Cloud(adapter, f"{container}/ckpt", raw)


def mgr(cloud: Cloud, tmp_path, **kw) -> DistributedCheckpointManager:
    return DistributedCheckpointManager(tmp_path / "local", cloud.adapter, cloud.path, **kw)


def dead_cloud() -> CloudAdapter:
    """An Azure adapter whose endpoint is a loopback port nothing listens on (fails within timeout_s=1)."""
    return CloudAdapter.create("azure", account_name=ACCOUNT, account_key=ACCOUNT_KEY,
                               endpoint=f"http://127.0.0.1:{free_port()}/{ACCOUNT}", timeout_s=1)


def cp(cid: str, pipeline: str = "etl", t: float = 1000.0, **state) -> Checkpoint:
    return Checkpoint(cid, pipeline, t, state or {"step": cid}, {"by": "test"})


def keys(store: Storage) -> list[str]:
    return [i.key for i in store.list("")]


def test_save_to_cloud(cloud, tmp_path):
    m = mgr(cloud, tmp_path)
    assert m.save(cp("c1", rows=[1, 2], table=TABLE)) == "c1"
    in_cloud = keys(cloud.raw)
    assert "checkpoints/c1.json" in in_cloud and any(k.startswith("data/c1/") for k in in_cloud)
    assert keys(LocalStorage(tmp_path / "local")) == in_cloud  # the same layout in the local copy
    assert m.list_checkpoints() == ["c1"] and m.list_checkpoints("etl") == ["c1"]


def test_load_from_cloud(cloud, tmp_path):
    m = mgr(cloud, tmp_path, sync_local=False)
    state = {"rows": [1, 2], "meta": {"a": None}, "table": TABLE, "blob": b"\x00\x01", "when": (2026, 1)}
    m.save(Checkpoint("c1", "etl", 1234.5, state, {"owner": "ops"}))
    assert not (tmp_path / "local").exists()  # sync_local=False: nothing written locally
    back = m.load("c1")
    assert (back.checkpoint_id, back.pipeline, back.created_at, back.metadata) == ("c1", "etl", 1234.5,
                                                                                  {"owner": "ops"})
    assert back.state["table"].equals(TABLE)
    assert {k: v for k, v in back.state.items() if k != "table"} == \
        {"rows": [1, 2], "meta": {"a": None}, "blob": b"\x00\x01", "when": (2026, 1)}


def test_load_prefers_the_cloud_and_falls_back_to_local_when_it_lacks_one(cloud, tmp_path):
    m = mgr(cloud, tmp_path)
    m.save(cp("c1", step="first"))
    shutil.rmtree(tmp_path / "local")
    assert m.load("c1").state == {"step": "first"}  # only the cloud has it now
    local_only = DistributedCheckpointManager(tmp_path / "local")
    local_only.save(cp("c2", step="local"))
    assert m.load("c2").state == {"step": "local"}  # the cloud lacks it: local copy
    with pytest.raises(NotFoundError, match="'c3' not found"):
        m.load("c3")


def test_load_latest(cloud, tmp_path):
    """The newest (not the oldest) checkpoint of exactly that pipeline ('etl' never matches 'etl_v2')."""
    m = mgr(cloud, tmp_path)
    m.save(cp("etl-b", "etl", 300.0))
    m.save(cp("etl-a", "etl", 100.0))
    m.save(cp("etl-c", "etl", 200.0))
    m.save(cp("v2-a", "etl_v2", 900.0))
    m.save(cp("x-a", "etlx", 950.0))
    assert m.load_latest("etl").checkpoint_id == "etl-b"
    assert m.load_latest("etl_v2").checkpoint_id == "v2-a"
    assert m.load_latest("et") is None
    assert m.list_checkpoints("etl") == ["etl-b", "etl-c", "etl-a"]
    assert m.list_checkpoints() == ["x-a", "v2-a", "etl-b", "etl-c", "etl-a"]
    m.save(cp("etl-tie-1", "etl", 300.0))  # same created_at as etl-b: the greater id wins, every time
    assert m.load_latest("etl").checkpoint_id == "etl-tie-1"
    assert m.list_checkpoints("etl")[:2] == ["etl-tie-1", "etl-b"]


def test_half_written_checkpoint_is_never_listed_or_loaded(cloud, tmp_path):
    m = mgr(cloud, tmp_path)
    m.save(cp("done", t=100.0))
    cloud.raw.put("data/crashed/0123.bin", b"payload of a save that died before its marker")
    LocalStorage(tmp_path / "local").put("data/crashed/0123.bin", b"same, locally")
    assert m.list_checkpoints() == ["done"]
    assert m.load_latest("etl").checkpoint_id == "done"
    with pytest.raises(NotFoundError):
        m.load("crashed")


def test_resave_replaces_state_and_old_data(cloud, tmp_path):
    m = mgr(cloud, tmp_path)
    m.save(cp("c1", step="one"))
    m.save(cp("c1", step="two"))
    assert m.load("c1").state == {"step": "two"}
    assert len([k for k in keys(cloud.raw) if k.startswith("data/c1/")]) == 1


def test_keep_last_n(cloud, tmp_path):
    m = mgr(cloud, tmp_path, keep_last_n=3)
    for i in range(5):
        m.save(cp(f"etl-{i}", "etl", 100.0 + i))
    m.save(cp("v2-0", "etl_v2", 50.0))  # an older checkpoint of another pipeline is not pruned by etl's
    expected = ["etl-4", "etl-3", "etl-2"]
    assert m.list_checkpoints("etl") == expected
    for store in (cloud.raw, LocalStorage(tmp_path / "local")):
        stored = keys(store)
        assert sorted(k for k in stored if k.startswith("checkpoints/")) == \
            sorted([f"checkpoints/{c}.json" for c in expected] + ["checkpoints/v2-0.json"])
        assert not [k for k in stored if k.startswith(("data/etl-0/", "data/etl-1/"))]  # data pruned too
    assert m.load_latest("etl_v2").checkpoint_id == "v2-0"


def test_cloud_down_falls_back_to_local(tmp_path, caplog):
    """A checkpoint folder with a cloud that refuses connections (a dead loopback port, timeout_s=1)."""
    DistributedCheckpointManager(tmp_path / "local").save(cp("c1", t=100.0, step="saved"))
    down = DistributedCheckpointManager(tmp_path / "local", dead_cloud(), "deadcontainer/ckpt")
    with caplog.at_level(logging.WARNING):
        assert down.load("c1").state == {"step": "saved"}
        assert down.load_latest("etl").checkpoint_id == "c1"
    assert "cloud" in caplog.text
    with pytest.raises(StorageUnavailableError, match="'c9' could not be loaded"):
        down.load("c9")  # not local, and the cloud cannot be asked: not a NotFoundError
    with pytest.raises(StorageUnavailableError):
        down.save(cp("c2", t=200.0))
    assert LocalStorage(tmp_path / "local").exists("checkpoints/c2.json")  # written locally before the cloud


def test_corrupt_copy_is_refused_and_the_other_copy_used(cloud, tmp_path, caplog):
    m = mgr(cloud, tmp_path)
    m.save(cp("c1", t=100.0, step="good"))
    m.save(cp("c0", t=50.0, step="older"))
    [data_key] = [k for k in keys(cloud.raw) if k.startswith("data/c1/")]
    good = cloud.raw.get(data_key)
    cloud.raw.put(data_key, good.replace(b"good", b"bad!"))  # a valid payload with a wrong value, in the cloud
    with caplog.at_level(logging.WARNING):
        assert m.load("c1").state == {"step": "good"}  # from the intact local copy
    assert "SHA-256" in caplog.text
    local = LocalStorage(tmp_path / "local")
    local.put(data_key, good[: len(good) // 2])  # truncated locally too
    with pytest.raises(CheckpointCorruptError, match="'c1'"):
        m.load("c1")
    assert m.load_latest("etl").checkpoint_id == "c0"  # newest is damaged everywhere: next newest, with a warning


def test_local_only_and_pickling(tmp_path):
    m = DistributedCheckpointManager(tmp_path / "local")
    m.save(Checkpoint.new("etl", {"n": 1}, {"k": "v"}))
    m2 = pickle.loads(pickle.dumps(m))
    [cid] = m2.list_checkpoints("etl")
    assert cid.startswith("etl-") and m2.load(cid).state == {"n": 1}


def test_no_secret_in_pickle_or_repr(azurite, tmp_path):
    container = new_container(azurite)
    adapter = CloudAdapter.create("azure", account_name=ACCOUNT, account_key="env://ODIBI_TEST_CKPT_KEY",
                                  endpoint=azurite.endpoint)
    m = DistributedCheckpointManager(tmp_path / "local", adapter, f"{container}/ckpt")
    assert b"env://ODIBI_TEST_CKPT_KEY" in pickle.dumps(m) and ACCOUNT_KEY not in repr(m)


def test_bad_input(tmp_path):
    m = DistributedCheckpointManager(tmp_path / "local")
    with pytest.raises(ValueError, match="pipeline"):
        m.save(Checkpoint("c1", "bad name/with slash"))
    with pytest.raises(ValueError, match="checkpoint_id"):
        m.save(Checkpoint("../c1", "etl"))
    with pytest.raises(ValueError, match="created_at"):
        m.save(Checkpoint("c1", "etl", float("nan")))
    with pytest.raises(TypeError, match="metadata"):
        m.save(Checkpoint("c1", "etl", metadata={"k": 1}))  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="Checkpoint"):
        m.save({"checkpoint_id": "c1"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keep_last_n"):
        DistributedCheckpointManager(tmp_path, keep_last_n=0)
    with pytest.raises(ValueError, match="checkpoint_id"):
        m.load("a/b")
    assert m.list_checkpoints() == [] and m.load_latest("etl") is None


# --- sync both ways: pending pushes after an outage (a real Azurite, on disk, stopped and restarted) ----------------


@dataclass
class Outage:
    """An on-disk Azurite that a test stops and starts again on the same port (the data survives), the cloud on it
    as the manager sees it (an adapter failing within timeout_s=1 while it is down), and a fresh local folder."""

    server: AzuriteServer
    cloud: Cloud
    local: str


@pytest.fixture
def outage(tmp_path):
    from odibi_ray.storage.adls import ADLSStorage

    server = AzuriteServer(location=str(tmp_path / "azurite-data")).start()
    try:
        container = new_container(server)
        adapter = CloudAdapter.create("azure", account_name=ACCOUNT, account_key=ACCOUNT_KEY,
                                      endpoint=server.endpoint, timeout_s=1)
        raw = ADLSStorage.from_uri(f"abfss://{container}@{ACCOUNT}.dfs.core.windows.net/ckpt",
                                   endpoint=server.endpoint, account_key=ACCOUNT_KEY)
        yield Outage(server, Cloud(adapter, f"{container}/ckpt", raw), str(tmp_path / "local"))
    finally:
        server.close()


def outage_mgr(o: Outage, **kw) -> DistributedCheckpointManager:
    return DistributedCheckpointManager(o.local, o.cloud.adapter, o.cloud.path, **kw)


def markers(store: Storage) -> list[str]:
    return sorted(k[len("checkpoints/"):-len(".json")] for k in keys(store) if k.startswith("checkpoints/"))


def pending(folder) -> list[str]:
    return [k for k in keys(LocalStorage(folder)) if k.startswith("pending/")]


def in_cloud(cloud: Cloud, cid: str) -> Checkpoint:
    """``cid`` read back from the cloud alone, by a manager on an independently opened storage, no local copy."""
    return DistributedCheckpointManager("/nonexistent-never-written", cloud.raw, "", sync_local=False).load(cid)


def save_during_outage(m: DistributedCheckpointManager, checkpoint: Checkpoint) -> None:
    with pytest.raises(StorageUnavailableError,
                       match=r"saved locally .* pushed to the cloud on the next call or sync\(\)"):
        m.save(checkpoint)


def test_save_during_outage_is_pending_then_pushed_by_the_next_call(outage, caplog):
    m = outage_mgr(outage)
    m.save(cp("c1", t=100.0, step="before"))
    outage.server.stop()
    save_during_outage(m, cp("c2", t=200.0, step="during", table=TABLE))
    local = LocalStorage(outage.local)
    assert markers(local) == ["c1", "c2"] and pending(outage.local) == ["pending/c2.json"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert m.list_checkpoints() == ["c2", "c1"]  # local fallback; the pending mark is no checkpoint
    assert len([r for r in caplog.records if "not pushed" in r.getMessage()]) == 1  # one warning per call
    with pytest.raises(StorageUnavailableError):
        m.sync()  # an explicit sync cannot list the cloud: it says so, and keeps the mark
    assert pending(outage.local) == ["pending/c2.json"]
    outage.server.start()
    assert markers(outage.cloud.raw) == ["c1"]  # nothing was pushed while it was down
    assert m.list_checkpoints() == ["c2", "c1"]  # the next call pushes first
    assert pending(outage.local) == []
    assert markers(outage.cloud.raw) == ["c1", "c2"]
    back = in_cloud(outage.cloud, "c2")
    assert (back.pipeline, back.created_at, back.metadata) == ("etl", 200.0, {"by": "test"})
    assert back.state["step"] == "during" and back.state["table"].equals(TABLE)
    assert keys(outage.cloud.raw) == keys(local)  # the same layout, the same data object name
    for key in keys(local):
        assert outage.cloud.raw.get(key) == local.get(key), key
    assert m.sync() == SyncReport()  # nothing left to do


def test_pending_mark_is_durable_and_a_pruned_one_is_dropped(outage):
    """keep_last_n=1: c1 saved during the outage is pruned locally by c2 (also during it); a new manager object
    on that folder (after a pickle round trip) pushes c2 only and prunes the cloud to it."""
    m = outage_mgr(outage, keep_last_n=1)
    m.save(cp("c0", t=50.0, step="zero"))
    outage.server.stop()
    save_during_outage(m, cp("c1", t=100.0, step="one"))
    save_during_outage(m, cp("c2", t=200.0, step="two"))
    assert markers(LocalStorage(outage.local)) == ["c2"]
    assert pending(outage.local) == ["pending/c1.json", "pending/c2.json"]
    del m
    outage.server.start()
    fresh = pickle.loads(pickle.dumps(outage_mgr(outage, keep_last_n=1)))
    latest = fresh.load_latest("etl")
    assert (latest.checkpoint_id, latest.state) == ("c2", {"step": "two"})
    assert pending(outage.local) == []
    assert markers(outage.cloud.raw) == ["c2"]  # c0 pruned by keep_last_n, c1 never pushed
    assert in_cloud(outage.cloud, "c2").state == {"step": "two"}
    assert not [k for k in keys(outage.cloud.raw) if k.startswith(("data/c0/", "data/c1/"))]


def test_damaged_pending_copy_is_never_pushed(outage, caplog):
    m = outage_mgr(outage)
    outage.server.stop()
    save_during_outage(m, cp("c1", t=100.0, step="good"))
    local = LocalStorage(outage.local)
    [data_key] = [k for k in keys(local) if k.startswith("data/c1/")]
    local.put(data_key, local.get(data_key).replace(b"good", b"bad!"))
    outage.server.start()
    with caplog.at_level(logging.WARNING):
        assert m.list_checkpoints() == ["c1"]
    assert "not pushed" in caplog.text and "SHA-256" in caplog.text
    assert markers(outage.cloud.raw) == [] and keys(outage.cloud.raw) == []  # not even its data object
    assert pending(outage.local) == ["pending/c1.json"]  # kept: reported again, not silently forgotten
    report = m.sync()
    assert (report.pushed, report.pulled, list(report.failed)) == ([], [], ["c1"])
    assert "SHA-256" in report.failed["c1"] and keys(outage.cloud.raw) == []
    m.save(cp("c1", t=100.0, step="again"))  # a re-save replaces the damaged copy and reaches the cloud
    assert pending(outage.local) == [] and in_cloud(outage.cloud, "c1").state == {"step": "again"}


def test_push_keeps_an_identical_cloud_copy_and_replaces_a_different_one(outage, tmp_path):
    """Same id already in the cloud (saved meanwhile by another machine): left as is if it holds the same data,
    else replaced by the local pending one."""
    m = outage_mgr(outage)
    outage.server.stop()
    save_during_outage(m, cp("same", t=100.0, step="identical"))
    save_during_outage(m, cp("diff", t=200.0, step="mine"))
    outage.server.start()
    other = DistributedCheckpointManager(tmp_path / "other-machine", outage.cloud.adapter, outage.cloud.path)
    other.save(cp("same", t=100.0, step="identical"))
    other.save(cp("diff", t=300.0, step="theirs"))
    [their_data] = [k for k in keys(outage.cloud.raw) if k.startswith("data/same/")]
    assert m.sync() == SyncReport(pushed=["diff"], pulled=[], failed={})
    assert [k for k in keys(outage.cloud.raw) if k.startswith("data/same/")] == [their_data]  # not rewritten
    assert [k for k in keys(outage.cloud.raw) if k.startswith("data/diff/")] == \
        [k for k in keys(LocalStorage(outage.local)) if k.startswith("data/diff/")]  # one data object: ours
    diff = in_cloud(outage.cloud, "diff")
    assert (diff.created_at, diff.state) == (200.0, {"step": "mine"})
    assert pending(outage.local) == []


# --- sync both ways: sync() and refreshing loads (on each cloud) ---------------------------------------------------


def test_sync_pushes_local_only_and_pulls_cloud_only_within_keep_last_n(cloud, tmp_path):
    other = DistributedCheckpointManager(tmp_path / "other-machine", cloud.adapter, cloud.path)
    other.save(cp("c1", t=100.0, step="cloud-old"))
    other.save(cp("c3", t=300.0, step="cloud-new", table=TABLE))
    DistributedCheckpointManager(tmp_path / "local").save(cp("c2", t=200.0, step="local"))  # no cloud: no mark
    m = mgr(cloud, tmp_path, keep_last_n=2)
    assert m.sync() == SyncReport(pushed=["c2"], pulled=["c3"], failed={})
    local = LocalStorage(tmp_path / "local")
    assert markers(cloud.raw) == ["c2", "c3"] and markers(local) == ["c2", "c3"]  # c1 pruned, never pulled
    assert in_cloud(cloud, "c2").state == {"step": "local"}
    pulled = DistributedCheckpointManager(tmp_path / "local").load("c3")  # the local copy alone
    assert (pulled.created_at, pulled.state["step"]) == (300.0, "cloud-new") and pulled.state["table"].equals(TABLE)
    assert not pending(tmp_path / "local")
    assert m.sync() == SyncReport()


def test_sync_without_cloud_or_without_sync_local(cloud, tmp_path):
    local_only = DistributedCheckpointManager(tmp_path / "local")
    local_only.save(cp("c1", t=100.0))
    assert local_only.sync() == SyncReport()
    DistributedCheckpointManager(tmp_path / "other-machine", cloud.adapter, cloud.path).save(cp("c2", t=200.0))
    report = mgr(cloud, tmp_path, sync_local=False).sync()
    assert report == SyncReport(pushed=["c1"], pulled=[], failed={})  # pushes, but never writes locally
    assert markers(LocalStorage(tmp_path / "local")) == ["c1"]


def test_cloud_load_refreshes_a_missing_damaged_or_different_local_copy(cloud, tmp_path):
    m = mgr(cloud, tmp_path)
    m.save(cp("c1", t=100.0, step="good", table=TABLE))
    local = LocalStorage(tmp_path / "local")
    [data_key] = [k for k in keys(local) if k.startswith("data/c1/")]
    good = local.get(data_key)

    def local_copy() -> Checkpoint:
        return DistributedCheckpointManager(tmp_path / "local").load("c1")  # the local copy alone

    local.put(data_key, good.replace(b"good", b"bad!"))  # damaged
    with pytest.raises(CheckpointCorruptError):
        local_copy()
    assert m.load("c1").state["step"] == "good"
    assert local.get(data_key) == good and local_copy().state["step"] == "good"
    shutil.rmtree(tmp_path / "local")  # missing
    assert m.load_latest("etl").state["step"] == "good"
    assert keys(local) == keys(cloud.raw) and local_copy().state["table"].equals(TABLE)
    DistributedCheckpointManager(tmp_path / "local").save(cp("c1", t=100.0, step="stale"))  # different
    assert m.load("c1").state["step"] == "good"
    assert local_copy().state["step"] == "good" and keys(local) == keys(cloud.raw)  # the stale data removed


def test_failed_local_refresh_is_logged_not_raised(cloud, tmp_path, caplog):
    DistributedCheckpointManager(tmp_path / "other-machine", cloud.adapter, cloud.path).save(cp("c1", step="x"))
    (tmp_path / "a-file").write_text("not a folder")
    m = DistributedCheckpointManager(tmp_path / "a-file", cloud.adapter, cloud.path)
    with caplog.at_level(logging.WARNING):
        assert m.load("c1").state == {"step": "x"}
    assert "could not be refreshed" in caplog.text
