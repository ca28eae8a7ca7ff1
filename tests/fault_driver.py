"""A pipeline driver for the fault catalogue, run as its own process (``python -m tests.fault_driver ...``) or
called in-process: it opens the checkpoint storage a spec names, runs (or resumes) the catalogue's pipeline and
prints one JSON line with what the run returned (statuses, run id, notes, seconds) -- or the error it raised.

Storage specs: ``file:<folder>`` (a folder opened with ``create_root=False``: a gone folder is an outage) or
``azurite:<port>:<container>`` (Azure Blob protocol on 127.0.0.1, Azurite's well-known development key).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from odibi_ray import DAG, Node, run  # noqa: E402
from odibi_ray.storage.base import Storage  # noqa: E402
from tests import cp_nodes  # noqa: E402

ACCOUNT = "devstoreaccount1"


def open_spec(spec: str, timeout_s: float = 4.0) -> Storage:
    """The storage a spec names (see the module docstring); remote calls give up after ``timeout_s``."""
    kind, _, rest = spec.partition(":")
    if kind == "file":
        from odibi_ray.storage.local import LocalStorage

        return LocalStorage(rest, fsync=False, create_root=False)
    if kind == "azurite":
        from odibi_ray.storage.adls import ADLSStorage
        from tests.storage.fixtures_azurite import ACCOUNT_KEY

        port, container = rest.split(":", 1)
        return ADLSStorage.from_uri(f"abfss://{container}@{ACCOUNT}.dfs.core.windows.net/faults",
                                    endpoint=f"http://127.0.0.1:{port}/{ACCOUNT}", account_key=ACCOUNT_KEY,
                                    timeout_s=timeout_s)
    raise ValueError(f"unknown storage spec {spec!r}")


def gated_pipeline(marks: str, started: str, go: str, name: str = "faults") -> DAG:
    """source -> double -> gate (waits for the ``go`` file; says it started in ``started``) -> total -> as_bytes.
    Every body leaves a mark in ``marks`` (cp_nodes.ran counts them); the final output is ``b"6"``."""
    dag = DAG(name)
    dag.add_node(Node("source", cp_nodes.source, params={"marks": marks}))
    dag.add_node(Node("double", cp_nodes.double, inputs={"table": "source"}, params={"marks": marks}))
    dag.add_node(Node("gate", cp_nodes.wait_for_go, inputs={"x": "double"},
                      params={"marks": marks, "started": started, "go": go}))
    dag.add_node(Node("total", cp_nodes.total, inputs={"table": "gate"}, params={"marks": marks}))
    dag.add_node(Node("as_bytes", cp_nodes.as_bytes, inputs={"summary": "total"}, params={"marks": marks}))
    return dag


def drive(spec: str, marks: str, started: str, go: str, *, resume: str | None = None, force: bool = False,
          heartbeat_s: float = 15.0, backend: str = "local", timeout_s: float = 4.0) -> dict[str, Any]:
    """Run or resume the gated pipeline; what happened, as a JSON-able dict (``timeout_s``: the remote store's
    retry budget per call)."""
    t0 = time.monotonic()
    try:
        result = run(gated_pipeline(marks, started, go), backend=backend, storage=open_spec(spec, timeout_s),
                     resume=resume, force=force, heartbeat_s=heartbeat_s, progress=False, metrics=False)
    except Exception as exc:  # noqa: BLE001 - reported to the test, which checks it
        return {"raised": type(exc).__name__, "message": str(exc), "seconds": time.monotonic() - t0}
    out: dict[str, Any] = {"run_id": result.run_id, "statuses": {n: r.status.value for n, r in result.nodes.items()},
                           "errors": {n: r.error.type_name for n, r in result.nodes.items() if r.error},
                           "stopped_reason": result.stopped_reason, "manifest_error": result.manifest_error,
                           "seconds": time.monotonic() - t0}
    if result.succeeded:
        out["as_bytes"] = result["as_bytes"].decode()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("marks")
    ap.add_argument("started")
    ap.add_argument("go")
    ap.add_argument("--resume")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--heartbeat", type=float, default=15.0)
    a = ap.parse_args()
    print(json.dumps(drive(a.spec, a.marks, a.started, a.go, resume=a.resume, force=a.force,
                           heartbeat_s=a.heartbeat)), flush=True)


if __name__ == "__main__":
    main()
