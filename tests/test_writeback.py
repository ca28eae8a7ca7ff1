"""Write-behind checkpoints (odibi_ray/checkpoint/writeback.py) on real Ray: workers queue their checkpoint and
return; the driver confirms every object before the run ends, writes the ones that never arrive itself, and
fails a node whose checkpoint cannot be written at all."""

from __future__ import annotations

import pytest

from odibi_ray import NodeStatus, run
from odibi_ray.checkpoint import layout, run_checkpoints, writeback
from odibi_ray.checkpoint.objectmeta import CheckpointMeta

from .cp_nodes import ran
from .test_checkpoint_layout import pipeline
from .writeback_storage import RefusingStorage


def test_written_behind_checkpoints_are_all_confirmed_before_the_run_ends(ray_local, tmp_path, marks):
    store = RefusingStorage(tmp_path / "s", delay_s=0.05, fsync=False)  # slow: the writes outlive their tasks
    result = run(pipeline(marks), storage=store, progress=False).raise_for_status()
    for name, rec in result.nodes.items():  # every object is there when run() returns, with exact bytes
        info = store.head(layout.object_key("lay", rec.cache_key))
        meta = CheckpointMeta.from_info(info)
        assert meta.run_id == result.run_id and meta.pid == rec.attempt_history[-1].worker_pid
        assert rec.attempt_history[-1].bytes_written == info.size > 0 and rec.attempt_history[-1].confirmed
    assert set(run_checkpoints(store, "lay", result.run_id)) == set(result.nodes)
    again = run(pipeline(marks), storage=store, progress=False).raise_for_status()
    assert {r.status for r in again.nodes.values()} == {NodeStatus.CACHED}
    assert ran(marks) == {"source": 1, "double": 1, "total": 1}


def test_inline_when_asked_even_on_a_remote_store(ray_local, tmp_path, marks):
    store = RefusingStorage(tmp_path / "s", fsync=False)
    result = run(pipeline(marks), storage=store, progress=False, write_behind=False).raise_for_status()
    assert all(not r.attempt_history[-1].confirmed and r.attempt_history[-1].bytes_written > 0
               for r in result.nodes.values())


@pytest.fixture
def short_patience(monkeypatch):
    monkeypatch.setattr(writeback, "CONFIRM_PATIENCE_S", 1.0)  # the driver gives up on a worker's write sooner


def test_a_checkpoint_that_never_arrives_is_written_by_the_driver(ray_local, tmp_path, marks, short_patience):
    store = RefusingStorage(tmp_path / "s", refuse="workers", fsync=False)
    result = run(pipeline(marks), storage=store, progress=False).raise_for_status()
    written = run_checkpoints(store, "lay", result.run_id)
    assert set(written) == set(result.nodes)
    assert {m.pid for m in written.values()} == {r.attempt_history[-1].worker_pid for r in result.nodes.values()}
    assert result["total"] == {"sum": 6, "rows": 3}


def test_a_checkpoint_that_cannot_be_written_fails_its_node_clearly(ray_local, tmp_path, marks, short_patience):
    store = RefusingStorage(tmp_path / "s", refuse="all", fsync=False)
    result = run(pipeline(marks), storage=store, progress=False)
    assert {r.status for r in result.nodes.values()} == {NodeStatus.FAILED}
    for rec in result.nodes.values():
        assert rec.error.kind == "storage" and "StorageUnavailableError" in rec.error.type
        assert "refused for the test" in rec.error.message
    with pytest.raises(Exception, match="StorageUnavailableError"):
        result.raise_for_status()
