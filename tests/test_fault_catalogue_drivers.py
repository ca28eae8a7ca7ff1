"""Fault catalogue, drivers and storage: what a user gets when the storage goes away mid-run, when a driver is
SIGKILLed, when a driver is taken over. End to end, on Azurite (the Azure Blob protocol, on disk, SIGTERMed and
restarted on the same port) and on a folder (opened with ``create_root=False``, so a folder that goes away -- an
unmounted share -- is an outage, not an empty cache). Values are checked exactly and node bodies are counted
(every body leaves a mark file). Output, poison and worker faults are in test_fault_catalogue_outputs.py.

Timings printed here (``FAULT-TIMING``) are what the README's fault table quotes; no test asserts a duration.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator

import pytest

from odibi_ray.checkpoint import layout, manifest_writer
from odibi_ray.checkpoint.store import effective_status, list_runs

from . import cp_nodes
from .fault_driver import drive, open_spec
from .storage.fixtures_azurite import AzuriteServer, new_container

REPO = Path(__file__).resolve().parents[1]


class Site:
    """A checkpoint store that can be taken away and brought back: ``spec`` for tests/fault_driver.py."""

    def __init__(self, spec: str, down: Callable[[], None], up: Callable[[], None]) -> None:
        self.spec, self.down, self.up = spec, down, up


@pytest.fixture(scope="module")
def disk_azurite(tmp_path_factory) -> Iterator[AzuriteServer]:
    server = AzuriteServer(location=str(tmp_path_factory.mktemp("azurite-faults"))).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(params=["folder", "azurite"])
def site(request, tmp_path) -> Iterator[Site]:
    if request.param == "folder":
        root, away = tmp_path / "store", tmp_path / "store.unmounted"
        root.mkdir()
        yield Site(f"file:{root}", lambda: root.rename(away), lambda: away.rename(root))
        return
    server: AzuriteServer = request.getfixturevalue("disk_azurite")
    if server.proc is None:
        server.start()
    yield Site(f"azurite:{server.port}:{new_container(server)}", server.stop, server.start)
    if server.proc is None:
        server.start()


def new_gate(folder: Path) -> dict[str, str]:
    """Paths of a gated pipeline: marks folder, 'started' flag, 'go' file (they are node params: another folder
    makes other cache keys, so a second pipeline shares nothing with the first)."""
    marks = folder / "marks"
    marks.mkdir(parents=True)
    return {"marks": str(marks), "started": str(folder / "started"), "go": str(folder / "go")}


@pytest.fixture
def gate(tmp_path) -> dict[str, str]:
    return new_gate(tmp_path)


@pytest.fixture
def quick_close_retries(monkeypatch) -> None:
    """The background close retries every 0.2 s (instead of 2 s doubling to a minute)."""
    monkeypatch.setattr(manifest_writer, "CLOSE_RETRY_FIRST_S", 0.2)
    monkeypatch.setattr(manifest_writer, "CLOSE_RETRY_MAX_S", 0.2)


def wait_for(path: str, what: str, timeout_s: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        assert proc is None or proc.poll() is None, f"the driver exited before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def manifest_of(spec: str, run_id: str | None = None) -> dict[str, Any]:
    store = open_spec(spec)
    rid = run_id or list_runs(store, "faults")[0]["run_id"]
    return json.loads(store.get(layout.manifest_key("faults", rid)))


def stored_objects(spec: str, count: int, timeout_s: float = 60.0) -> None:
    """Wait until the pipeline has ``count`` checkpoint objects in the store."""
    store, deadline = open_spec(spec), time.monotonic() + timeout_s
    while len(list(store.list(layout.objects_prefix("faults")))) < count:
        assert time.monotonic() < deadline, f"fewer than {count} checkpoints were ever stored"
        time.sleep(0.05)


def driver_process(site: Site, gate: dict[str, str], *args: str, uts: str | None = None) -> subprocess.Popen:
    """tests/fault_driver.py in its own process; ``uts``: in a new UTS namespace with that host name (a process
    that cannot see this host's pids or lease files as its own)."""
    cmd = [sys.executable, "-m", "tests.fault_driver", site.spec, gate["marks"], gate["started"], gate["go"], *args]
    if uts is not None:
        cmd = ["unshare", "--uts", "sh", "-c", f'hostname {uts} && exec "$@"', "sh", *cmd]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def outcome(proc: subprocess.Popen, timeout_s: float = 120.0) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def can_unshare_uts() -> bool:
    try:
        probe = subprocess.run(["unshare", "--uts", "true"], capture_output=True, timeout=10, check=False)
        return probe.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ran(marks: str) -> dict[str, int]:
    """How many times each node's body ran (the gate's function marks itself 'wait_for_go')."""
    return {("gate" if n == "wait_for_go" else n): c for n, c in cp_nodes.ran(marks).items()}


DONE = {"source": "succeeded", "double": "succeeded", "gate": "succeeded", "total": "succeeded",
        "as_bytes": "succeeded"}
RESUMED_AFTER_GATE = dict(DONE, source="resumed", double="resumed")


# --- a storage outage mid-run ---------------------------------------------------------------------------------


def test_outage_mid_run_ends_in_a_result_and_the_same_process_resumes_once_storage_is_back(
        site, gate, ray_local, quick_close_retries):
    """The store goes away while level 3 (``gate``) runs on Ray: run() returns a RunResult (never raises); the
    gate fails naming the storage error, its consumers are skipped, and the result says the manifest could not
    be closed. While storage is still away a resume fails with a clear StorageUnavailableError; once it is back,
    this same process resumes at once and only the unfinished nodes run."""
    box: list[dict[str, Any]] = []
    driver = threading.Thread(target=lambda: box.append(drive(site.spec, **gate, backend="ray", heartbeat_s=0.5)))
    driver.start()
    wait_for(gate["started"], "the gate to start")
    stored_objects(site.spec, 2)  # source's and double's checkpoints (written behind on Azurite) have landed
    deadline = time.monotonic() + 30  # ... and a heartbeat has confirmed them (the manifest says so)
    while {manifest_of(site.spec)["nodes"][n]["status"] for n in ("source", "double")} != {"succeeded"}:
        assert time.monotonic() < deadline, manifest_of(site.spec)["nodes"]
        time.sleep(0.05)
    site.down()
    cut = time.monotonic()
    Path(gate["go"]).write_text("go")
    driver.join(120)
    assert not driver.is_alive(), "run() did not return after the outage"
    returned_after = time.monotonic() - cut
    [res] = box
    assert "raised" not in res, res
    # the gate's checkpoint write met the outage: it fails naming the storage error. On the folder the write is
    # inline, so its consumers never start (skipped); on Azurite it is written behind, so they ran and their own
    # checkpoints could not be confirmed stored (failed, same error). Nodes confirmed before the cut: succeeded.
    after_gate = "failed" if site.spec.startswith("azurite") else "skipped"
    assert res["statuses"] == {"source": "succeeded", "double": "succeeded", "gate": "failed",
                               "total": after_gate, "as_bytes": after_gate}
    assert set(res["errors"].values()) == {"StorageUnavailableError"}
    assert res["manifest_error"] and "could not be closed" in res["manifest_error"]
    first = ran(gate["marks"])
    assert first["source"] == 1 and first["double"] == 1

    still_down = drive(site.spec, **gate, resume=res["run_id"])
    assert still_down["raised"] == "StorageUnavailableError", still_down

    site.up()
    back = time.monotonic()
    resumed = drive(site.spec, **gate, resume="latest")
    print(f"FAULT-TIMING outage[{site.spec.split(':')[0]}]: run() returned {returned_after:.1f} s after the cut; "
          f"same-process resume started {time.monotonic() - back - resumed['seconds']:.1f} s after storage was back")
    assert resumed["run_id"] == res["run_id"] and resumed["statuses"] == RESUMED_AFTER_GATE
    assert resumed["as_bytes"] == "6" and resumed["manifest_error"] is None
    assert ran(gate["marks"]) == {n: first.get(n, 0) + (n not in ("source", "double")) for n in DONE}
    time.sleep(1.0)  # the old driver's close, retried in the background, must not overwrite the resumed run
    body = manifest_of(site.spec, res["run_id"])
    assert body["status"] == "succeeded" and body["resumes"] == 1


def test_after_an_outage_the_manifest_is_set_right_and_another_process_resumes(site, gate, quick_close_retries):
    """The old driver's close, refused during the outage, is written when storage is back (the run reads
    'failed', not 'running'); meanwhile and after, another process on this host may resume it at once."""
    box: list[dict[str, Any]] = []
    driver = threading.Thread(target=lambda: box.append(drive(site.spec, **gate, heartbeat_s=0.5)))
    driver.start()
    wait_for(gate["started"], "the gate to start")
    site.down()
    Path(gate["go"]).write_text("go")
    driver.join(120)
    [res] = box
    assert res["statuses"]["gate"] == "failed" and res["manifest_error"]
    site.up()
    deadline = time.monotonic() + 30
    while (body := manifest_of(site.spec, res["run_id"]))["status"] == "running":
        assert time.monotonic() < deadline, "the refused close was never written once storage was back"
        time.sleep(0.1)
    assert body["status"] == "failed" and body["nodes"]["gate"]["status"] == "failed"
    assert "StorageUnavailableError" in body["nodes"]["gate"]["error"]
    other = outcome(driver_process(site, gate, "--resume", "latest"))
    assert other["statuses"] == RESUMED_AFTER_GATE and other["as_bytes"] == "6"
    assert ran(gate["marks"])["source"] == 1 and ran(gate["marks"])["double"] == 1


# --- a SIGKILLed driver ---------------------------------------------------------------------------------------


def _kill_at_gate(site: Site, gate: dict[str, str], *args: str) -> tuple[str, float]:
    """Start a driver process, SIGKILL it while the gate runs; its run id and the monotonic time of the kill."""
    proc = driver_process(site, gate, *args)
    try:
        wait_for(gate["started"], "the gate to start", proc=proc)
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    os.remove(gate["started"])
    body = manifest_of(site.spec)
    assert body["status"] == "running"
    return body["run_id"], killed


def test_sigkilled_driver_is_resumed_at_once_from_another_process_on_this_host(site, gate):
    rid, killed = _kill_at_gate(site, gate)
    Path(gate["go"]).write_text("go")
    assert effective_status(manifest_of(site.spec, rid)) == "abandoned"  # its lease died with it
    resumed = drive(site.spec, **gate, resume="latest")
    print(f"FAULT-TIMING sigkill-same-host[{site.spec.split(':')[0]}]: resumed "
          f"{time.monotonic() - killed - resumed['seconds']:.2f} s after the kill (no wait)")
    assert resumed["run_id"] == rid and resumed["statuses"] == RESUMED_AFTER_GATE and resumed["as_bytes"] == "6"
    assert ran(gate["marks"]) == {"source": 1, "double": 1, "gate": 2, "total": 1, "as_bytes": 1}


@pytest.mark.skipif(not can_unshare_uts(), reason="needs `unshare --uts` (root) to run a process under another "
                                                  "host name")
def test_sigkilled_driver_seen_from_another_host_waits_three_beats_or_is_taken_over_by_force(site, gate, tmp_path):
    """From a process under another host name (it cannot ask this host's leases or pids), a killed driver's run
    looks running until three of its heartbeats are missed; ``--force`` takes it over at once."""
    heartbeat = 3.0
    rid, killed = _kill_at_gate(site, gate, "--heartbeat", str(heartbeat))
    Path(gate["go"]).write_text("go")
    refused = outcome(driver_process(site, gate, "--resume", "latest", uts="elsewhere"))
    assert refused["raised"] == "RunStillRunningError", refused
    assert rid in refused["message"] and "force" in refused["message"]
    forced = outcome(driver_process(site, gate, "--resume", "latest", "--force", uts="elsewhere"))
    assert forced["run_id"] == rid and forced["statuses"] == RESUMED_AFTER_GATE and forced["as_bytes"] == "6"
    print(f"FAULT-TIMING sigkill-other-host-force[{site.spec.split(':')[0]}]: resumed "
          f"{time.monotonic() - killed:.1f} s after the kill (process start included)")

    gate = new_gate(tmp_path / "second")
    rid2, killed2 = _kill_at_gate(site, gate, "--heartbeat", str(heartbeat))
    assert rid2 != rid
    Path(gate["go"]).write_text("go")
    while True:  # what an operator's retry loop would do
        waited = outcome(driver_process(site, gate, "--resume", "latest", uts="elsewhere"))
        if "raised" not in waited:
            break
        assert waited["raised"] == "RunStillRunningError", waited
        assert time.monotonic() - killed2 < 3 * heartbeat + 30, "never became resumable from another host"
        time.sleep(0.5)
    took = time.monotonic() - killed2
    print(f"FAULT-TIMING sigkill-other-host-wait[{site.spec.split(':')[0]}]: heartbeat {heartbeat} s, resumed "
          f"{took:.1f} s after the kill")
    assert took >= heartbeat  # not before its driver missed beats (a last beat can be up to one period old)
    assert waited["run_id"] == rid2 and waited["statuses"] == RESUMED_AFTER_GATE and waited["as_bytes"] == "6"


# --- a live driver taken over ------------------------------------------------------------------------------------


def test_a_live_driver_taken_over_by_force_stops_cleanly_and_says_so(site, gate):
    """An operator forces a takeover of a run whose driver is in fact alive: the new driver runs what is left, the
    old one notices at its next heartbeat, cancels what it had not finished and returns a result that says why.
    Nothing runs twice except the node that was running when the run changed hands."""
    old = driver_process(site, gate, "--heartbeat", "0.3")
    try:
        wait_for(gate["started"], "the gate to start", proc=old)
        rid = manifest_of(site.spec)["run_id"]
        os.remove(gate["started"])
        new = driver_process(site, gate, "--resume", rid, "--force", "--heartbeat", "0.3")
        wait_for(gate["started"], "the new driver's gate to start", proc=new)
        old_result = outcome(old, 60)  # stops on its own, although its gate has not been released
        Path(gate["go"]).write_text("go")
        new_result = outcome(new)
    finally:
        for p in (old, locals().get("new")):
            if p is not None and p.poll() is None:
                p.kill()
    assert old_result["run_id"] == rid and "taken over" in (old_result["stopped_reason"] or "")
    assert old_result["statuses"] == {"source": "succeeded", "double": "succeeded", "gate": "cancelled",
                                      "total": "cancelled", "as_bytes": "cancelled"}
    assert new_result["run_id"] == rid and new_result["statuses"] == RESUMED_AFTER_GATE
    assert new_result["as_bytes"] == "6" and new_result["stopped_reason"] is None
    body = manifest_of(site.spec, rid)
    assert body["status"] == "succeeded" and body["resumes"] == 1
    assert ran(gate["marks"]) == {"source": 1, "double": 1, "gate": 2, "total": 1, "as_bytes": 1}


def test_two_resumers_of_one_dead_run_exactly_one_wins(site, gate):
    rid, _ = _kill_at_gate(site, gate)
    racers = [driver_process(site, gate, "--resume", rid) for _ in range(2)]
    wait_for(gate["started"], "a resumer's gate to start")
    deadline = time.monotonic() + 60  # the other has lost by now (it does not wait for the winner to finish)
    while all(p.poll() is None for p in racers):
        assert time.monotonic() < deadline, "neither resumer gave up while the other ran"
        time.sleep(0.02)
    Path(gate["go"]).write_text("go")
    results = [outcome(p) for p in racers]
    won = [r for r in results if "raised" not in r]
    lost = [r for r in results if "raised" in r]
    assert len(won) == 1 and len(lost) == 1, results
    assert lost[0]["raised"] in ("RunStillRunningError", "ExecutionError"), lost
    assert won[0]["statuses"] == RESUMED_AFTER_GATE and won[0]["as_bytes"] == "6"
    assert ran(gate["marks"])["gate"] == 2


# --- heartbeats off the loop ----------------------------------------------------------------------------------


def test_heartbeats_are_written_off_the_driver_loop(tmp_path, gate, monkeypatch):
    """Every manifest write while nodes run comes from the manifest writer's thread: a slow or dead storage
    delays heartbeats, never the scheduling of nodes."""
    from odibi_ray.storage.local import LocalStorage

    threads: list[str] = []

    class Recording(LocalStorage):
        def put(self, key, data, metadata=None, **kw):
            if key.endswith("/run.json"):
                threads.append((threading.current_thread().name, json.loads(data)["status"]))
                time.sleep(0.2)  # a slow manifest write
            return super().put(key, data, metadata, **kw)

    from odibi_ray import run

    from .fault_driver import gated_pipeline

    threading.Timer(0.6, lambda: Path(gate["go"]).write_text("go")).start()  # the gate runs 0.6 s: 12 periods
    result = run(gated_pipeline(gate["marks"], gate["started"], gate["go"]), backend="local",
                 storage=Recording(tmp_path / "s", fsync=False), heartbeat_s=0.05, progress=False)
    assert result.succeeded and result["as_bytes"] == b"6"
    main = threading.main_thread().name
    assert threads[0] == (main, "running") and threads[-1] == (main, "succeeded")  # create and close: the caller's
    beats = [status for name, status in threads if name.startswith("odibi-manifest-")]
    assert beats and set(beats) == {"running"}, threads
    assert [t for t in threads[1:] if t[0] == main] in ([(main, "succeeded")], [(main, "succeeded")] * 2), threads


def test_force_without_resume_and_bad_heartbeat_are_refused(tmp_path):
    from odibi_ray import run

    from .fault_driver import gated_pipeline

    with pytest.raises(ValueError, match="heartbeat_s"):
        run(gated_pipeline("m", "s", "g"), backend="local", storage=str(tmp_path), heartbeat_s=0, progress=False)
    with pytest.raises(ValueError, match="force=True only applies with resume="):
        run(gated_pipeline("m", "s", "g"), backend="local", storage=str(tmp_path), force=True, progress=False)


def test_unmounted_folder_is_an_outage_not_an_empty_store(tmp_path):
    from odibi_ray.errors import StorageUnavailableError
    from odibi_ray.storage.local import LocalStorage

    root = tmp_path / "mnt"
    root.mkdir()
    store = LocalStorage(root, create_root=False)
    store.put("a/b", b"x")
    shutil.move(str(root), str(tmp_path / "gone"))
    for op in (lambda: store.get("a/b"), lambda: store.head("a/b"), lambda: list(store.list("a/")),
               lambda: store.put("a/c", b"y")):
        with pytest.raises(StorageUnavailableError, match="does not exist"):
            op()
