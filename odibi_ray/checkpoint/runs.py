"""Opening a run on checkpoint storage: a new run's manifest, or the run being resumed and its records."""

from __future__ import annotations

import logging
import time
from typing import Any

from ..dag import DAG
from ..errors import ExecutionError, NotFoundError
from ..storage.base import Storage
from .store import RunManifest, driver_identity, effective_status, list_runs, node_records

log = logging.getLogger(__name__)


def open_new_run(storage: Storage, dag: DAG, run_id: str, keys: dict[str, str], levels: list[list[str]]) -> RunManifest:
    """Create the manifest of a new run (create-only: a run id is never reused by accident)."""
    manifest = RunManifest(storage, dag.name, run_id)
    level_of = {n: i for i, names in enumerate(levels) for n in names}
    manifest.create({"started_at": time.time(), "driver": driver_identity(),
                     "nodes": {n: {"key": k, "level": level_of[n]} for n, k in keys.items()}})
    return manifest


def open_resumed_run(storage: Storage, dag: DAG, resume: str) -> tuple[RunManifest, dict[str, dict[str, str]]]:
    """The manifest of the run to resume (``"latest"`` or a run id) and its succeeded node records.

    A run whose driver is still beating is refused; a failed, abandoned (driver killed) or succeeded
    run is taken over and marked running again.
    """
    if resume == "latest":
        runs = list_runs(storage, dag.name)
        if not runs:
            raise ExecutionError(f"nothing to resume: pipeline {dag.name!r} has no runs in {storage.uri}")
        run_id = runs[0]["run_id"]
    else:
        run_id = resume
    manifest = RunManifest(storage, dag.name, run_id)
    try:
        body, checked = manifest.read()
    except NotFoundError:
        raise ExecutionError(f"cannot resume: no run {run_id!r} of pipeline {dag.name!r} in {storage.uri}") from None
    status = effective_status(body)
    if status == "running":
        age = time.time() - float(body.get("updated_at") or 0)
        raise ExecutionError(f"run {run_id!r} of {dag.name!r} is still running (its driver wrote {age:.0f} s ago); "
                             "resume it once it has stopped")
    records = node_records(storage, dag.name, run_id)
    manifest.take_over(checked, body, status="running", resumes=int(body.get("resumes", 0)) + 1,
                       resumed_from_status=status)
    log.info("resuming run %s of %r (was %s; %d node record(s))", run_id, dag.name, status, len(records))
    return manifest, records


def close_run(manifest: RunManifest, status: str, summary: dict[str, Any]) -> None:
    """Write the run's final status (one CAS update)."""
    manifest.update(status=status, ended_at=time.time(), updated_at=time.time(), summary=summary)
