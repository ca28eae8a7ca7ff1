"""The ``odibi-ray`` command line: run YAML or Python pipelines, inspect runs, cache, checkpoints and metrics.

Exit codes: 0 success, 1 the run finished with failed nodes, 2 a user error (bad pipeline file, unknown run,
bad option; one line on stderr, the full traceback with ``--debug``).
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib.util
import logging
import os
import re
import sys
import urllib.parse
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from .checkpoint import keep_last_n, purge
from .checkpoint import layout
from .checkpoint.legacy import check_readable
from .checkpoint.migrate import migrate
from .checkpoint.objectmeta import CheckpointMeta
from .checkpoint.runs import node_statuses
from .checkpoint.liveness import HEARTBEAT_S
from .checkpoint.store import RunManifest, effective_status, list_runs
from .dag import DAG
from .errors import NotFoundError, OdibiError
from .metrics import MetricsManager
from .result import RunResult
from .runner import open_checkpoint_storage, run as run_dag
from .spec import SpecError, default_storage, load_dag_target, load_pipeline
from .storage.base import Storage
from .storage.uri import redact_uri

log = logging.getLogger(__name__)

app = typer.Typer(name="odibi-ray", no_args_is_help=True, add_completion=False,
                  help="Run data-pipeline DAGs (YAML or Python) on Ray, and inspect their runs, cache and metrics.")
cache_app = typer.Typer(no_args_is_help=True, help="List or purge cached node outputs in a checkpoint storage.")
checkpoints_app = typer.Typer(no_args_is_help=True, help="List a pipeline's run checkpoints or keep only the newest.")
app.add_typer(cache_app, name="cache")
app.add_typer(checkpoints_app, name="checkpoints")

#: The file ``run`` writes into each run's folder so ``report`` can re-render the run later.
RESULT_FILE = "result.json"
EXIT_RUN_FAILED, EXIT_USER_ERROR = 1, 2
_USER_ERRORS = (OdibiError, FileNotFoundError, ValueError)

F = TypeVar("F", bound=Callable[..., Any])
_state = {"debug": False}  # set by the global --debug option of each invocation


class Backend(str, Enum):
    ray = "ray"
    local = "local"


class GraphFormat(str, Enum):
    mermaid = "mermaid"
    dot = "dot"


class MetricsFormat(str, Enum):
    prometheus = "prometheus"
    json = "json"


def _user_errors(fn: F) -> F:
    """Turn a user error into one line on stderr and exit code 2 (the traceback too with ``--debug``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _USER_ERRORS as exc:
            if _state["debug"]:
                raise
            typer.echo(f"error: {_one_line(exc)}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, OdibiError) else f"{type(exc).__name__}: {text}"


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error."),
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Log INFO messages to stderr.")) -> None:
    """Global options; the current directory is put first on sys.path so `fn: mymodule:f` imports from it."""
    _state["debug"] = debug
    logging.basicConfig(level=logging.INFO if verbose or debug else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


# --- pipelines and storage ---------------------------------------------------------------------------

def _is_yaml(target: str) -> bool:
    return target.lower().endswith((".yaml", ".yml"))


def _load_target(target: str, overrides: list[str]) -> tuple[DAG, str, dict[str, Any]]:
    """The DAG of a YAML file or ``module:dag``, its storage URI and storage options."""
    if _is_yaml(target) or os.path.isfile(target):
        spec = load_pipeline(target, overrides)
        return spec.to_dag(), spec.storage_uri, dict(spec.storage_options)
    if ":" not in target:
        raise SpecError(f"{target}: not a pipeline file (.yaml) nor a module:dag reference", file=target)
    if overrides:
        raise SpecError(f"{target}: --set applies to YAML pipelines only", file=target)
    dag = load_dag_target(target)
    return dag, default_storage(dag.name), {}


def _open(pipeline: Optional[str], storage: Optional[str], *, need_pipeline: bool = True) -> tuple[Optional[str], Storage]:
    """Pipeline name and storage from ``--pipeline`` (a name, a YAML file or module:dag) and ``--storage``."""
    name, uri, options = pipeline, storage, {}
    if pipeline and (_is_yaml(pipeline) or ":" in pipeline):
        dag, spec_uri, spec_options = _load_target(pipeline, [])
        name = dag.name
        if storage is None:
            uri, options = spec_uri, spec_options
    if need_pipeline and not name:
        raise typer.BadParameter("give the pipeline (--pipeline NAME, a YAML file or module:dag)")
    if uri is None:
        if not name:
            raise typer.BadParameter("give --storage (or --pipeline, whose default storage is .odibi/<name>)")
        uri = default_storage(name)
    store = open_checkpoint_storage(uri, options)
    check_readable(store)
    return name, store


def _ts(value: Any) -> str:
    try:
        t = float(value)
    except (TypeError, ValueError):
        return ""
    return _dt.datetime.fromtimestamp(t).isoformat(sep=" ", timespec="seconds") if t > 0 else ""


def _run_id(storage: Storage, pipeline: str, run_id: Optional[str]) -> str:
    if run_id in (None, "latest"):
        runs = list_runs(storage, pipeline)
        if not runs:
            raise OdibiError(f"pipeline {pipeline!r} has no runs in {redact_uri(storage.uri)}")
        return runs[0]["run_id"]
    return run_id


def _written(storage: Storage, pipeline: str, run_id: str) -> int:
    """How many of a run's nodes ran and wrote their checkpoint (from its manifest, or a layout-1 run's records)."""
    statuses = node_statuses(storage, pipeline, run_id, _manifest(storage, pipeline, run_id))
    return sum(1 for s in statuses.values() if s.status == "succeeded")


def _manifest(storage: Storage, pipeline: str, run_id: str) -> dict[str, Any]:
    try:
        body, _ = RunManifest(storage, pipeline, run_id).read()
    except NotFoundError:
        raise OdibiError(f"no run {run_id!r} of pipeline {pipeline!r} in {redact_uri(storage.uri)}") from None
    return body


def _select(dag: DAG, patterns: list[str]) -> DAG:
    """The sub-DAG for ``node``, ``node+`` (with descendants) and ``+node`` (with ancestors), plus the ancestors
    the selection needs (they are taken from the cache when fresh, else run)."""
    chosen: set[str] = set()
    for pattern in patterns:
        name = pattern.strip("+")
        if name not in dag:
            raise SpecError(f"--select {pattern!r}: no node {name!r} in pipeline {dag.name!r}", path="select")
        chosen.add(name)
        if pattern.endswith("+"):
            chosen |= dag.descendants([name])
        if pattern.startswith("+"):
            chosen |= dag.ancestors([name])
    chosen |= dag.ancestors(chosen)
    return DAG(dag.name, [n for n in dag if n.name in chosen], retry=dag.retry, cache=dag.cache,
               description=dag.description)


def _result_table(result: RunResult) -> Table:
    table = Table(title=f"{result.pipeline} run {result.run_id} on {result.backend}: {result.status.value}")
    for col in ("level", "node", "status", "attempts", "seconds", "worker", "error / reason"):
        table.add_column(col)
    for level in result.by_level():
        for rec in level:
            note = f"{rec.error.type_name}: {rec.error.message}" if rec.error else rec.reason
            table.add_row(str(rec.level), rec.name, rec.status.value, str(rec.attempts),
                          f"{rec.duration_s or 0:.3f}", (rec.worker_node_id or "")[:12], note[:80])
    return table


# --- commands ------------------------------------------------------------------------------------------

@app.command("run")
@_user_errors
def run_cmd(
    target: str = typer.Argument(..., help="A pipeline file (PIPELINE.yaml) or a Python DAG (package.module:dag)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address ('auto': the cluster of this machine)."),
    storage: Optional[str] = typer.Option(None, help="Checkpoint storage URI (overrides the pipeline's; "
                                          "default .odibi/<name>)."),
    resume: Optional[str] = typer.Option(None, help="Resume a run: 'latest' or a run id."),
    force: bool = typer.Option(False, "--force", help="With --resume: take the run over even if its driver "
                               "still looks alive (you know it is dead); exactly one resumer still wins."),
    heartbeat: float = typer.Option(HEARTBEAT_S, help="Seconds between the driver's manifest heartbeats; "
                                    "another host may take the run over after three missed beats."),
    backend: Backend = typer.Option(Backend.ray, help="ray (Ray tasks) or local (threads, no Ray)."),
    set_: list[str] = typer.Option([], "--set", help="Override a YAML field: key.path=value (repeatable)."),
    select: list[str] = typer.Option([], "--select", help="Run only node, node+ (and descendants) or +node "
                                     "(and ancestors); repeatable."),
    max_workers: Optional[int] = typer.Option(None, help="Threads of the local backend."),
    seed: Optional[int] = typer.Option(None, help="Seed of the retry jitter (repeatable runs)."),
) -> None:
    """Run a pipeline; print a per-node table. Exit 0 when every node succeeded, 1 when some failed."""
    dag, uri, options = _load_target(target, set_)
    if storage is not None:
        uri, options = storage, {}
    if select:
        dag = _select(dag, select)
    store = open_checkpoint_storage(uri, options)
    if force and resume is None:
        raise typer.BadParameter("--force only applies with --resume")
    result = run_dag(dag, backend=backend.value, address=address, storage=store, resume=resume,
                     max_workers=max_workers, seed=seed, force=force, heartbeat_s=heartbeat)
    try:
        store.put(layout.run_prefix(dag.name, result.run_id) + RESULT_FILE, result.to_json(),
                  {"status": result.status.value})
    except OdibiError as exc:  # the run itself is done; only `report` will miss it
        log.warning("could not store the run result for `odibi-ray report`: %s", exc)
    Console().print(_result_table(result))
    typer.echo(result.summary())
    if result.manifest_error:
        typer.echo(f"warning: {result.manifest_error}", err=True)
    if not result.succeeded:
        try:
            result.raise_for_status()
        except OdibiError as exc:
            typer.echo(f"error: {_one_line(exc)}", err=True)
        raise typer.Exit(EXIT_RUN_FAILED)


@app.command("runs")
@_user_errors
def runs_cmd(
    pipeline: Optional[str] = typer.Argument(None, help="Pipeline name, YAML file or module:dag (default: all)."),
    storage: Optional[str] = typer.Option(None, help="Checkpoint storage URI (default .odibi/<pipeline>)."),
) -> None:
    """List the runs of a pipeline (or of every pipeline in the storage), newest first."""
    name, store = _open(pipeline, storage, need_pipeline=False)
    names = [name] if name else sorted({i.key.split("/")[1] for i in store.list("runs/") if i.key.count("/") >= 3})
    table = Table(title=f"runs in {redact_uri(store.uri)}")
    for col in ("pipeline", "run id", "status", "started", "updated"):
        table.add_column(col)
    for pname in names:
        for meta in list_runs(store, pname):
            status = meta.get("status", "")
            if status == "running":  # running or abandoned: the manifest's driver tells
                status = effective_status(_manifest(store, pname, meta["run_id"]))
            table.add_row(pname, meta["run_id"], status, _ts(meta.get("started_at")), _ts(meta.get("updated_at")))
    Console().print(table)


@app.command("status")
@_user_errors
def status_cmd(
    run_id: Optional[str] = typer.Argument(None, help="Run id (default: the latest run)."),
    pipeline: Optional[str] = typer.Option(None, help="Pipeline name, YAML file or module:dag."),
    storage: Optional[str] = typer.Option(None, help="Checkpoint storage URI (default .odibi/<pipeline>)."),
) -> None:
    """Show a run's status from its manifest (running, succeeded, failed or abandoned) and its nodes."""
    name, store = _open(pipeline, storage)
    assert name is not None
    rid = _run_id(store, name, run_id)
    body = _manifest(store, name, rid)
    statuses = node_statuses(store, name, rid, body)
    summary = body.get("summary") or {}
    typer.echo(f"pipeline {name} run {rid}: {effective_status(body)}")
    typer.echo(f"started {_ts(body.get('started_at'))}  ended {_ts(body.get('ended_at')) or '-'}  "
               f"resumes {body.get('resumes', 0)}")
    if summary.get("nodes"):
        typer.echo("nodes: " + ", ".join(f"{v} {k}" for k, v in sorted(summary["nodes"].items())))
    table = Table()
    for col in ("level", "node", "status", "attempts", "worker", "cache key", "error / reason"):
        table.add_column(col)
    for node, entry in sorted((body.get("nodes") or {}).items(), key=lambda kv: (kv[1].get("level", 0), kv[0])):
        table.add_row(str(entry.get("level", "")), node, statuses[node].status if node in statuses else "-",
                      str(entry.get("attempts", "")),
                      str(entry.get("worker") or "")[:12], str(entry.get("key") or "")[:16],
                      str(entry.get("error") or entry.get("reason") or ""))
    Console().print(table)


@app.command("graph")
@_user_errors
def graph_cmd(
    pipeline: str = typer.Argument(..., help="A pipeline file (PIPELINE.yaml) or a Python DAG (module:dag)."),
    format: GraphFormat = typer.Option(GraphFormat.mermaid, "--format", help="mermaid or dot."),
    set_: list[str] = typer.Option([], "--set", help="Override a YAML field: key.path=value (repeatable)."),
) -> None:
    """Print the pipeline's DAG as a Mermaid flowchart or a Graphviz DOT graph."""
    dag, _, _ = _load_target(pipeline, set_)
    typer.echo(to_mermaid(dag) if format is GraphFormat.mermaid else to_dot(dag))


def to_mermaid(dag: DAG) -> str:
    """A Mermaid ``flowchart LR`` of the DAG (node ids n0.. with the names as labels)."""
    ids = {name: f"n{i}" for i, name in enumerate(dag.topological_order())}
    lines = ["flowchart LR"]
    lines += [f'    {ids[n]}["{n}"]' for n in ids]
    lines += [f"    {ids[up]} --> {ids[n.name]}" for n in dag for up in n.upstream]
    return "\n".join(lines)


def to_dot(dag: DAG) -> str:
    """A Graphviz ``digraph`` of the DAG, one rank per level."""
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [f"digraph {q(dag.name)} {{", "    rankdir=LR;"]
    for level in dag.levels():
        lines.append("    { rank=same; " + " ".join(q(n) + ";" for n in level) + " }")
    lines += [f"    {q(up)} -> {q(n.name)};" for n in dag for up in n.upstream]
    lines.append("}")
    return "\n".join(lines)


@app.command("metrics")
@_user_errors
def metrics_cmd(
    run_id: str = typer.Argument("latest", help="Run id (or 'latest')."),
    pipeline: Optional[str] = typer.Option(None, help="Pipeline name, YAML file or module:dag."),
    storage: Optional[str] = typer.Option(None, help="Checkpoint storage URI (default .odibi/<pipeline>)."),
    format: MetricsFormat = typer.Option(MetricsFormat.prometheus, "--format", help="prometheus or json."),
) -> None:
    """Print a finished run's metrics (stored in its manifest) as Prometheus text or JSON."""
    name, store = _open(pipeline, storage)
    assert name is not None
    rid = _run_id(store, name, run_id)
    snapshot = ((_manifest(store, name, rid).get("summary") or {}).get("metrics"))
    if not snapshot:
        raise OdibiError(f"run {rid!r} of {name!r} has no stored metrics (still running, or run with metrics off)")
    manager = MetricsManager.from_snapshot(snapshot)
    typer.echo(manager.export_prometheus() if format is MetricsFormat.prometheus else manager.export_json(indent=2))


@app.command("report")
@_user_errors
def report_cmd(
    run_id: str = typer.Argument("latest", help="Run id (or 'latest')."),
    pipeline: Optional[str] = typer.Option(None, help="Pipeline name, YAML file or module:dag."),
    storage: Optional[str] = typer.Option(None, help="Checkpoint storage URI (default .odibi/<pipeline>)."),
    output: Path = typer.Option(Path("run.html"), "--output", "-o", help="The HTML file to write."),
) -> None:
    """Write the self-contained HTML report of a run made with `odibi-ray run`."""
    name, store = _open(pipeline, storage)
    assert name is not None
    rid = _run_id(store, name, run_id)
    try:
        data = store.get(layout.run_prefix(name, rid) + RESULT_FILE)
    except NotFoundError:
        _manifest(store, name, rid)  # an unknown run says so
        raise OdibiError(f"run {rid!r} of {name!r} has no stored result: only runs made with `odibi-ray run` "
                         "can be reported here (from Python: result.report('run.html'))") from None
    result = RunResult.from_json(data)
    path = result.report(output)
    typer.echo(f"report of {name} run {rid} written to {path}")


@cache_app.command("ls")
@_user_errors
def cache_ls(
    storage: Optional[str] = typer.Option(None, help="Checkpoint storage URI."),
    pipeline: Optional[str] = typer.Option(None, help="Pipeline (for its default storage only)."),
    node: Optional[str] = typer.Option(None, help="Only outputs written for this node name."),
) -> None:
    """List the stored node outputs (key, pipeline, node, run, size, codec, created, expires)."""
    _, store = _open(pipeline, storage, need_pipeline=False)
    table = Table(title=f"cache in {redact_uri(store.uri)}")
    for col in ("key", "pipeline", "node", "run", "bytes", "codec", "created", "expires"):
        table.add_column(col)
    count = 0
    for info in store.list("objects/", with_metadata=True):
        meta = CheckpointMeta.from_info(info)
        shown = meta.node if meta else urllib.parse.unquote(info.metadata.get("node", ""))
        if node is not None and shown != node:
            continue
        count += 1
        expires = _ts(meta.expires_at) if meta and meta.expires_at else ("never" if meta else "damaged")
        table.add_row(info.key.rsplit("/", 1)[-1][:16], meta.pipeline if meta else "", shown,
                      meta.run_id if meta else "", str(info.size), meta.codec if meta else "",
                      _ts(meta.created) if meta else "", expires)
    Console().print(table)
    typer.echo(f"{count} object(s)")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``12h``, ``7d`` or ``2w``."""
    m = _DURATION.match(text)
    if not m:
        raise typer.BadParameter(f"expected a duration like 90, 15m, 12h, 7d, got {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


@cache_app.command("purge")
@_user_errors
def cache_purge(
    storage: Optional[str] = typer.Option(None, help="Checkpoint storage URI."),
    expired: bool = typer.Option(False, "--expired", help="Outputs whose TTL has passed."),
    older_than: Optional[str] = typer.Option(None, help="Outputs created longer ago than this (90s, 15m, 12h, 7d)."),
    node: Optional[str] = typer.Option(None, help="Outputs of this node name."),
    pipeline: Optional[str] = typer.Option(None, help="Outputs referenced only by runs of this pipeline."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would go; remove nothing."),
) -> None:
    """Remove cached outputs matching every filter given (never one a running run uses)."""
    if not (expired or older_than or node or pipeline):
        raise typer.BadParameter("give at least one filter: --expired, --older-than, --node or --pipeline")
    name, store = _open(pipeline, storage, need_pipeline=False)
    report = purge(store, expired=expired, older_than_s=parse_duration(older_than) if older_than else None,
                   node=node, pipeline=name, dry_run=dry_run)
    for key in report.objects:
        typer.echo(("would remove " if dry_run else "removed ") + key)
    typer.echo(str(report))


@checkpoints_app.command("ls")
@_user_errors
def checkpoints_ls(
    pipeline: str = typer.Option(..., help="Pipeline name, YAML file or module:dag."),
    storage: Optional[str] = typer.Option(None, help="Checkpoint storage URI (default .odibi/<pipeline>)."),
) -> None:
    """List a pipeline's runs with how many node checkpoints each wrote (nodes that ran and succeeded)."""
    name, store = _open(pipeline, storage)
    assert name is not None
    table = Table(title=f"checkpoints of {name} in {redact_uri(store.uri)}")
    for col in ("run id", "status", "started", "checkpoints written"):
        table.add_column(col)
    for meta in list_runs(store, name):
        table.add_row(meta["run_id"], meta.get("status", ""), _ts(meta.get("started_at")),
                      str(_written(store, name, meta["run_id"])))
    Console().print(table)


@checkpoints_app.command("clean")
@_user_errors
def checkpoints_clean(
    keep: int = typer.Option(..., "--keep", min=1, help="How many of the newest runs to keep."),
    pipeline: str = typer.Option(..., help="Pipeline name, YAML file or module:dag."),
    storage: Optional[str] = typer.Option(None, help="Checkpoint storage URI (default .odibi/<pipeline>)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would go; remove nothing."),
) -> None:
    """Keep the N newest runs of a pipeline (and any running one); remove older runs and objects only they used."""
    name, store = _open(pipeline, storage)
    assert name is not None
    report = keep_last_n(store, name, keep, dry_run=dry_run)
    for run in report.runs:
        typer.echo(("would remove run " if dry_run else "removed run ") + run)
    typer.echo(str(report))


@checkpoints_app.command("migrate")
@_user_errors
def checkpoints_migrate(
    pipeline: Optional[str] = typer.Option(None, help="Pipeline (for its default storage only)."),
    storage: Optional[str] = typer.Option(None, help="Checkpoint storage URI."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would move; move nothing."),
) -> None:
    """Move a layout-1 store's outputs into layout 2 (objects/<pipeline>/...), checked, old copies removed."""
    _, store = _open(pipeline, storage, need_pipeline=False)
    typer.echo(str(migrate(store, dry_run=dry_run)))


@app.command("demo")
@_user_errors
def demo_cmd(
    backend: Backend = typer.Option(Backend.ray, help="ray (a local Ray) or local (threads)."),
    rows: int = typer.Option(200_000, min=1, help="Rows the demo generates."),
    storage: str = typer.Option(".odibi/demo", help="Checkpoint storage URI."),
) -> None:
    """Run the demo pipeline (examples/demo_pipeline.py) on a local Ray."""
    path = Path(__file__).resolve().parent.parent / "examples" / "demo_pipeline.py"
    if not path.is_file():
        raise FileNotFoundError(f"the demo is not installed here: {path} (run it from a source checkout)")
    spec = importlib.util.spec_from_file_location("odibi_ray_demo_pipeline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(["--backend", backend.value, "--rows", str(rows), "--storage", storage])
    raise typer.Exit(code or 0)


def main() -> None:
    """Entry point of the ``odibi-ray`` script."""
    app(prog_name="odibi-ray")


if __name__ == "__main__":
    main()
