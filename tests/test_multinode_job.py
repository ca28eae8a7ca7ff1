"""`ray job submit` of examples/etl_pipeline.py to a real two-node CLI cluster, checkpoints on Azurite.

tests/multinode/job_submit_etl.sh makes its own loopback-only network namespace (plus PID and mount
namespaces, so `ray stop` and the end of the script touch only its own processes), starts Azurite
(``--disableTelemetry``, in memory) on 127.0.0.1 and creates a container, starts `ray start --head` on
127.0.0.1 (1 CPU, with the dashboard's job server) and `ray start --address` on 127.0.0.2 (2 CPUs), then
`ray job submit --working-dir <repo>` runs the example with an ``abfss://`` storage URI whose account key
reaches the job only as ``env://AZ_KEY``; after the job succeeded it reads the node records back from
Azurite with ``open_storage`` and prints them with the cluster's Ray nodes. Nothing is mocked.
Skipped only when this machine cannot do it (not root, no `unshare`/`ip`, namespaces refused, Azurite
or ray[default] not installed); the skip reason says which.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from .multinode_support import namespace_unavailable, processes_mentioning, script_result

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(200)]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).parent / "multinode" / "job_submit_etl.sh"
AZURITE_BLOB = REPO / "node_modules" / ".bin" / "azurite-blob"
#: Azurite's publicly documented development key: the job must never print it.
AZ_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
ETL_NODES = {"ingest_orders", "ingest_customers", "clean_orders", "clean_customers", "join", "aggregate",
             "write_orders", "write_summary"}


def _why_not_possible() -> str | None:
    if not AZURITE_BLOB.exists():
        return f"needs Azurite at {AZURITE_BLOB}: run `npm ci` in {REPO}"
    absent = [mod for mod in ("aiohttp", "aiohttp_cors") if importlib.util.find_spec(mod) is None]
    if absent:
        return f"needs ray[default] for the job server (missing {', '.join(absent)}): pip install -e '.[cluster]'"
    return namespace_unavailable(
        "needs root to create network/PID namespaces (unshare -n -p), and this test is not root")


@pytest.fixture(scope="module")
def job_run(tmp_path_factory):
    """One run of the script per session (about 30 s): its exit status, output and work folder."""
    reason = _why_not_possible()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("job_etl")
    proc = subprocess.run(["bash", str(SCRIPT), sys.executable, str(work), str(REPO)], capture_output=True,
                          text=True, timeout=170, check=False)
    return proc, work


def test_submitted_etl_job_succeeds_with_checkpoints_on_azurite(job_run):
    """The job server ran the example to success, and its run manifest in Azurite says so."""
    proc, work = job_run
    result = script_result(proc, 6000)
    assert "Job 'etl_job' succeeded" in (work / "job.log").read_text(errors="replace")
    assert len(result["runs"]) == 1 and result["run_status"] == "succeeded"
    assert set(result["records"]) == ETL_NODES  # one record per node, read back from Azurite
    # The write nodes wrote the partitioned Parquet into the folder given with --out.
    assert sorted(p.name for p in (work / "out" / "orders").iterdir() if p.name.startswith("country="))


def test_checkpoints_show_more_than_one_ray_node_wrote_them(job_run):
    """Each record names the Ray node its worker ran on: all are nodes of this cluster, and at least two
    different ones (the 1-CPU head and the 2-CPU node at 127.0.0.2) wrote records."""
    result = script_result(job_run[0])
    assert sorted(result["nodes"].values()) == ["127.0.0.1", "127.0.0.2"]
    writers = set(result["records"].values())
    assert writers <= set(result["nodes"]), f"records name unknown Ray nodes: {writers - set(result['nodes'])}"
    assert len(writers) > 1, f"every record came from one Ray node: {result['records']}"


def test_account_key_never_printed(job_run):
    """The key reached the job only as the value of AZ_KEY (the example names it env://AZ_KEY): neither
    the submit output, the job driver's log nor any worker's log contains it.

    Excluded: Ray's own runtime_env_agent log, which records the job's runtime_env env_vars verbatim (a
    Ray behaviour, so real deployments give workers the key through their environment or kv://, never
    through runtime_env env_vars)."""
    proc, work = job_run
    script_result(proc, 6000)
    assert AZ_KEY not in proc.stdout + proc.stderr
    ray_logs = [p for p in (work / "ray").rglob("*") if p.is_file() and p.suffix in (".log", ".out", ".err")
                and "runtime_env_agent" not in p.name and "runtime_resources" not in p.parts]
    logs = list(work.glob("*.log")) + ray_logs
    assert any(p.name.startswith("job-driver-") for p in logs) and any(p.name.startswith("worker-") for p in logs)
    leaking = [str(p) for p in logs if AZ_KEY in p.read_text(errors="replace")]
    assert leaking == []


def test_script_leaves_no_process_behind(job_run):
    """Azurite, the Ray nodes and the job server are all gone when the script returns."""
    proc, work = job_run
    script_result(proc, 6000)
    assert processes_mentioning(str(work)) == []
