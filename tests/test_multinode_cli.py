"""A real two-node Ray cluster started with the Ray CLI runs an odibi_ray pipeline across both nodes.

tests/multinode/two_node_cluster.sh makes its own network namespace with only loopback (plus PID and
mount namespaces, so `ray stop` touches only its own processes), starts `ray start --head` on 127.0.0.1
and `ray start --address` on 127.0.0.2 with token auth, and runs tests/multinode/two_node_driver.py as
a driver connected to the head (a plain driver script; tests/test_multinode_job.py does the same with
`ray job submit` and Azurite checkpoints).
Skipped only when this machine cannot make namespaces (not root, or no `unshare`/`ip`, or the kernel
or container refuses them); the skip reason says which.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .multinode_support import namespace_unavailable, processes_mentioning, script_result

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

SCRIPT = Path(__file__).parent / "multinode" / "two_node_cluster.sh"


def _why_not_possible() -> str | None:
    return namespace_unavailable(
        "needs root to create network/PID namespaces (unshare -n -p), and this test is not root")


@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory):
    """One run of the script per session (about 10 s): its exit status, output and work folder."""
    reason = _why_not_possible()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("two_nodes")
    proc = subprocess.run(["bash", str(SCRIPT), sys.executable, str(work)], capture_output=True, text=True,
                          timeout=150, check=False)
    return proc, work


def test_cluster_has_two_ray_nodes_on_two_loopback_addresses(two_node_run):
    result = script_result(two_node_run[0])
    assert sorted(result["nodes"].values()) == ["127.0.0.1", "127.0.0.2"]


def test_checkpoints_show_both_ray_nodes_wrote_them(two_node_run):
    """Each checkpoint (read back from storage) names the Ray node it ran on: the node that
    needs `second` ran on 127.0.0.2, the one that needs `first` on the head, so two nodes wrote."""
    result = script_result(two_node_run[0])
    ip_of = result["nodes"]
    records = result["records"]
    assert set(records) == {"on_first", "on_second", "plain", "join"}
    assert ip_of[records["on_second"]] == "127.0.0.2"
    assert ip_of[records["on_first"]] == "127.0.0.1"
    assert set(records.values()) == set(ip_of)  # every node of the cluster wrote at least one record
    # The outputs agree with the records: each task saw the address of the node it ran on.
    assert result["outputs"]["on_second"]["ip"] == "127.0.0.2"
    assert result["outputs"]["on_first"]["ip"] == "127.0.0.1"
    assert result["join"] == ["127.0.0.1", "127.0.0.2"]


def test_script_leaves_no_ray_process_behind(two_node_run):
    proc, work = two_node_run
    script_result(proc)
    assert processes_mentioning(str(work)) == []
