"""Prefect 3 with the Ray task runner (prefect-ray) as an engine of ``benchmarks.engines``.

Same protocol as ``setup_ray`` / ``run_raw_ray``: :func:`setup_prefect` prepares the engine once (not
timed) and returns its teardown; :func:`run_prefect` runs one shape as ONE Prefect flow run in which
every node is one Prefect task run, submitted with its upstream futures as arguments
(``body_task.submit(*upstream_futures, ms=...)``, as a Prefect user writes it, so Prefect and Ray
resolve the dependencies); the flow waits for every task run, then returns the leaf values.

Server. Prefect 3.9 always needs an API server: with no ``PREFECT_API_URL`` its default profile
("ephemeral") makes the first client of each *process* start a temporary server (uvicorn + SQLite in
``PREFECT_HOME``). With Ray that would be one server per Ray worker process, because the temporary
server's address is not passed to the workers. So we do what a local user does with
``prefect server start`` + ``PREFECT_API_URL``, in its lean form: setup starts ONE local server (Prefect's
own ``SubprocessASGIServer``, the one the ephemeral mode uses: 127.0.0.1 only, UI off, only the
services that record runs, SQLite in a throw-away ``PREFECT_HOME``) and exports its URL as
``PREFECT_API_URL`` before Ray starts, so the driver and every Ray worker report to it. Server start-up
is in setup (not timed); flow-run creation, state reporting and task-run events to it are timed.

Ray. Started once in setup (local, ``num_cpus=workers``, no dashboard, 127.0.0.1) and reused by every
run: ``RayTaskRunner()`` finds Ray initialised and neither starts nor stops it.

Settings (environment, so Ray workers and the server inherit them):

- network safety, set at import: ``DO_NOT_TRACK=1`` (client SDK analytics),
  ``PREFECT_SERVER_ANALYTICS_ENABLED=false`` (server telemetry heartbeat), UI and its promotional
  content off, ``PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY=false``,
  ``PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS=false``, server host 127.0.0.1; the Ray and proxy
  variables come from ``benchmarks.engines`` (imported first);
- no extra work unrelated to running: task ``cache_policy=NO_CACHE`` and ``persist_result=False``, flow
  ``persist_result=False`` (nothing written to result storage, no cache keys hashed from the inputs;
  results stay in memory, which downstream tasks need), ``PREFECT_LOGGING_LEVEL=WARNING`` (no
  per-task-run INFO lines printed or shipped to the API), ``log_prints=False``;
- the flow is made once, from a module-level function (as users write ``@flow``), and takes no
  parameters: it reads the shape from a module slot. prefect-ray pickles the flow-run context (the flow
  object and the flow run's parameters) into EVERY Ray task, so a shape passed as a parameter or
  captured by a closure would be pickled once per node (quadratic) and uploaded as parameters; this
  way each task carries about 8.5 kB of context whatever the shape's size;
- left at Prefect's defaults, because a user pays them: the flow-run heartbeat thread (180 s; the flow
  joins it at the end and it sleeps in 1 s steps, so a flow run can take up to ~1 s longer), the API
  version check, task-run state events to the server, and prefect-ray's per-task context hydration.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

# First: importing it sets the Ray, proxy and no-proxy variables.
from benchmarks.engines import Shape, body

os.environ.update({
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    "PREFECT_SERVER_API_HOST": "127.0.0.1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
    "PREFECT_TASKS_DEFAULT_PERSIST_RESULT": "false",
})

log = logging.getLogger("benchmarks.engine_prefect")

_body_task: Any = None  # the Prefect task wrapping ``body``, made in setup
_flow: Any = None  # the Prefect flow of ``_dag`` on the Ray task runner, made in setup
_run: dict[str, Any] = {}  # the shape and body kind of the flow run in progress (read by ``_dag``)


def setup_prefect(workers: int) -> Callable[[], None]:
    """Start one local Prefect server (throw-away home) and a local Ray; return their teardown."""
    global _body_task, _flow
    home = tempfile.mkdtemp(prefix="prefect_bench_home_")
    saved = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_API_URL")}
    os.environ["PREFECT_HOME"] = home
    os.environ.pop("PREFECT_API_URL", None)

    import prefect.context
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.server.api.server import SubprocessASGIServer
    from prefect_ray import RayTaskRunner

    prefect.context.refresh_global_settings_context()  # in case prefect was imported before the env
    server = SubprocessASGIServer()
    server.start(timeout=120)
    os.environ["PREFECT_API_URL"] = server.api_url  # before ray.init: the Ray workers inherit it
    prefect.context.refresh_global_settings_context()
    log.info("Prefect server at %s, PREFECT_HOME %s", server.api_url, home)

    import ray

    ray.init(num_cpus=workers, include_dashboard=False, object_store_memory=200 * 1024**2,
             logging_level="warning", _node_ip_address="127.0.0.1")
    _body_task = task(body, name="body", cache_policy=NO_CACHE, persist_result=False, log_prints=False)
    _flow = flow(_dag, name="bench_dag", task_runner=RayTaskRunner(), persist_result=False, log_prints=False)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per API request when the caller logs INFO

    def teardown() -> None:
        global _body_task, _flow
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        _body_task = _flow = None
        try:
            EventsWorker.drain_all(timeout=10, at_exit=False)  # flush the driver's events before the server goes
            APILogWorker.drain_all(timeout=10, at_exit=False)
            ray.shutdown()
        finally:
            server.stop()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            prefect.context.refresh_global_settings_context()
            shutil.rmtree(home, ignore_errors=True)
    return teardown


def _dag() -> dict[str, int]:
    """The flow's body: one task run per node of the shape in ``_run``, then wait and return the leaves."""
    from prefect.futures import wait

    shape, sleep = _run["shape"], _run["sleep"]
    futs: dict[str, Any] = {}
    for n, ups in shape["nodes"].items():
        futs[n] = _body_task.submit(*(futs[u] for u in ups), ms=shape["sleep_ms"][n] if sleep else 0.0)
    wait(list(futs.values()))
    return {n: futs[n].result() for n in shape["leaves"]}


def run_prefect(shape: Shape, sleep: bool) -> dict[str, int]:
    """One Prefect flow run on the Ray task runner: one task run per node; return the leaf values."""
    if _flow is None:
        raise RuntimeError("setup_prefect() must run first")
    _run.update(shape=shape, sleep=sleep)
    try:
        return _flow()
    finally:
        _run.clear()
