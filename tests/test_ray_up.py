"""`ray up` / `ray submit` / `ray down` of a `local`-provider cluster, for real, against a private sshd on loopback.

tests/multinode/ray_up_local.sh makes its own network (loopback only), PID and mount namespaces, starts a
private sshd (own host key, key-only root login with a generated keypair) on 127.0.0.1:22 and 127.0.0.2:22 of
that namespace, and bind-mounts a temporary folder over /root and tmpfs over /tmp and /run, so nothing of the
real machine is read or written. It then runs `ray up -y` of tests/multinode/ray_up_cluster.yaml (head
127.0.0.1, worker 127.0.0.2 started by the head's v1 autoscaler over SSH, this checkout's venv, token auth),
`ray submit` of examples/etl_pipeline.py with checkpoints in a local folder, `ray down -y`, and kills sshd.
openssh-server and rsync are installed with apt-get when missing (note: on a machine with a service manager,
installing openssh-server may also start the system's own sshd; this test never uses it).
Skipped only when the machine cannot: not root, no unshare/ip, namespaces refused, or apt-get fails; the
skip reason says which. About 35 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .multinode_support import namespace_unavailable, processes_mentioning, script_result

from odibi_ray.storage.uri import open_storage

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "multinode" / "ray_up_local.sh"
CLUSTER_NAME = "odibi-ray-uptest"


def _ssh_tools_missing() -> list[str]:
    return [tool for tool, path in (("sshd", "/usr/sbin/sshd"), ("ssh", "ssh"), ("ssh-keygen", "ssh-keygen"),
                                    ("rsync", "rsync"))
            if shutil.which(path) is None]


def _install_ssh_tools() -> str | None:
    """apt-get install openssh-server rsync (apt-get update first if the plain install fails); None when done."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "openssh-server", "openssh-client", "rsync"]
    proc = subprocess.run(install, capture_output=True, text=True, timeout=300, check=False, env=env)
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, timeout=300, check=False, env=env)
        proc = subprocess.run(install, capture_output=True, text=True, timeout=300, check=False, env=env)
    if proc.returncode != 0 or _ssh_tools_missing():
        return f"apt-get could not install openssh-server/rsync: {(proc.stderr or proc.stdout).strip()[-200:]}"
    return None


def _why_not_possible() -> str | None:
    reason = namespace_unavailable(
        "needs root (network/PID/mount namespaces, sshd for root), and this test is not root")
    if reason:
        return reason
    if _ssh_tools_missing():
        if shutil.which("apt-get") is None:
            return f"needs {', '.join(_ssh_tools_missing())} and there is no apt-get to install them"
        return _install_ssh_tools()
    return None


@pytest.fixture(scope="module")
def ray_up_run(tmp_path_factory):
    """One run of the script per session: its exit status, output and work folder."""
    reason = _why_not_possible()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("ray_up")
    proc = subprocess.run(["bash", str(SCRIPT), sys.executable, str(work), str(REPO)], capture_output=True,
                          text=True, timeout=200, check=False)
    return proc, work


def test_ray_up_starts_head_and_worker_on_two_loopback_addresses(ray_up_run):
    """`ray up` started the head on 127.0.0.1, and its autoscaler started the worker on 127.0.0.2 over SSH."""
    result = script_result(ray_up_run[0])
    assert sorted(result["nodes"].values()) == ["127.0.0.1", "127.0.0.2"]


def test_ray_submit_runs_the_etl_example_on_the_cluster(ray_up_run):
    """`ray submit` exits 0, and the checkpoints it left say the run succeeded with every node done by a
    task on one of the cluster's Ray nodes, and by more than one of them (level 0 runs two 1-CPU tasks side
    by side on two 1-CPU nodes)."""
    proc, work = ray_up_run
    result = script_result(proc, 4000)
    assert result["submit"] == 0
    store = open_storage(str(work / "home" / "store"))
    runs = sorted({info.key.split("/")[2] for info in store.list("runs/etl_sales/")})
    assert len(runs) == 1
    manifest = json.loads(store.get(f"runs/etl_sales/{runs[0]}/run.json"))
    assert manifest["status"] == "succeeded"
    from odibi_ray.checkpoint import run_checkpoints

    writers = {n: m.ray_node_id for n, m in run_checkpoints(store, "etl_sales", runs[0]).items()}
    assert set(writers) == {"ingest_orders", "ingest_customers", "clean_orders", "clean_customers", "join",
                            "aggregate", "write_orders", "write_summary"}
    assert set(writers.values()) <= set(result["nodes"])
    assert len(set(writers.values())) == 2, f"only one Ray node ran tasks: {writers}"
    assert (work / "home" / "out" / "orders").is_dir()  # the example's Parquet, written on the cluster


def test_ray_down_and_cleanup_leave_nothing_behind(ray_up_run):
    """`ray down` exits 0 and stops every Ray process; sshd is gone; nothing landed in the real /tmp."""
    proc, work = ray_up_run
    result = script_result(proc, 4000)
    assert result["down"] == 0
    assert result["ray_left"] == 0
    assert processes_mentioning("/root/sshd/sshd_config") == []
    assert processes_mentioning(CLUSTER_NAME) == []
    assert processes_mentioning(str(work)) == []
    assert not Path(f"/tmp/ray/cluster-{CLUSTER_NAME}.state").exists()
    assert (work / "home" / ".ssh" / "ray_up_key").exists()  # the keypair lived in the test's own folder
