"""The ``odibi-ray`` command line: run YAML or Python pipelines, inspect runs, cache, checkpoints and metrics.

Exit codes: 0 success, 1 the run finished with failed nodes, 2 a user error (bad pipeline file, unknown run,
bad option; one line on stderr, the full traceback with ``--debug``).

Where the inspection commands (runs, status, metrics, report, logs, cache, checkpoints) look: ``--storage URI``
if given; else a pipeline file's (or module:dag's) storage; else every checkpoint storage under ``./.odibi/``
(where ``run`` keeps ``.odibi/<pipeline>`` by default), narrowed to the pipeline when one is named. Their tables
never cut an id: on a terminal, text columns wrap and the least useful columns are left out when the width is
short (named under the table); piped or redirected, they are plain aligned columns, one line per row.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import os
import re
import shlex
import sys
import urllib.parse
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast
from collections.abc import Callable

import typer
from rich.box import HEAVY_HEAD
from rich.console import Console, ConsoleOptions, JustifyMethod, RenderResult
from rich.table import Table
from rich.text import Text

from .checkpoint import keep_last_n, purge
from .checkpoint import layout
from .checkpoint.legacy import check_readable
from .checkpoint.migrate import migrate
from .checkpoint.objectmeta import CheckpointMeta
from .checkpoint.runs import node_statuses
from .checkpoint.liveness import HEARTBEAT_S
from .checkpoint.store import RunManifest, effective_status, list_runs
from .definition.dag import DAG
from .definition.mapping import MapSpec
from .errors import NotFoundError, OdibiError, RunFailedError
from .observe.metrics import MetricsManager
from .execution.result import ErrorKind, NodeRecord, NodeStatus, RunResult
from .execution.runner import ExecutionBackend, open_checkpoint_storage, run as run_dag
from .definition.spec import SpecError, default_storage, load_dag_target, load_pipeline
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


class GraphFormat(str, Enum):
    mermaid = "mermaid"
    dot = "dot"
    text = "text"


class MetricsFormat(str, Enum):
    prometheus = "prometheus"
    json = "json"


def _user_errors(fn: F) -> F:
    """Turn a user error into one line on stderr and exit code 2 (with ``--debug``, the traceback before it;
    still exit code 2: a script's ``--debug`` run tells a user error from a failed run the same way)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _USER_ERRORS as exc:
            if _state["debug"]:
                import traceback

                typer.echo("".join(traceback.format_exception(exc)).rstrip("\n"), err=True)
            typer.echo(f"error: {_one_line(exc)}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None

    return cast(F, wrapper)  # functools.wraps keeps fn's signature


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, OdibiError) else f"{type(exc).__name__}: {text}"


# --- what `run` prints about failed and retried nodes, and `logs` -------------------------------------------

#: How many lines of a failed node's output `run` prints (`logs` prints all that was kept; --debug too).
RUN_OUTPUT_LINES = 20
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def _plain(text: str, stream: Any) -> str:
    """``text`` without terminal escape codes (colours), unless ``stream`` is a terminal."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return text if tty else _ANSI.sub("", text)


class _NodeFailuresPrintedHere(logging.Filter):
    """Drops the scheduler's log lines saying that a node failed ("node ... failed after N attempt(s)", "node ...:
    its checkpoint could not be written") while `run` runs: `run` prints each failed node's error itself, once, with
    its traceback. Library users (no CLI) still get the log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("node %r failed after", "node %r: its checkpoint could not be written"))


class _PlainRecord(logging.Filter):
    """Takes the colour codes out of a log record (Ray colours the dashboard address it logs at start)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _ANSI.sub("", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_ANSI.sub("", a) if isinstance(a, str) else a for a in record.args)
        return True


class _RunPrinting:
    """Around the run of `odibi-ray run`: the filter above; and, when stdout or stderr is not a terminal, Ray's
    output without colour codes: the worker output it forwards (Ray colours its "(node pid=...)" prefixes unless
    RAY_COLOR_PREFIX=0; a user's own setting wins) and its start-up line. Node output keeps streaming live."""

    _RAY_START = "ray._private.worker"

    def __enter__(self) -> None:
        self.filter, self.plain = _NodeFailuresPrintedHere(), None
        logging.getLogger("odibi_ray.execution.scheduler").addFilter(self.filter)
        if not (_isatty(sys.stdout) and _isatty(sys.stderr)):
            if "RAY_COLOR_PREFIX" not in os.environ:
                # read by Ray's log printer in this process at every line; left set, for lines that come after the run
                os.environ["RAY_COLOR_PREFIX"] = "0"
            self.plain = _PlainRecord()
            logging.getLogger(self._RAY_START).addFilter(self.plain)

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger("odibi_ray.execution.scheduler").removeFilter(self.filter)
        if self.plain is not None:
            logging.getLogger(self._RAY_START).removeFilter(self.plain)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _last_lines(text: str, n: int | None) -> tuple[str, int]:
    """The last ``n`` lines of ``text`` (all with None) and how many lines it has."""
    lines = text.splitlines()
    return "\n".join(lines if n is None else lines[-n:]), len(lines)


#: How many failed items of one mapped node `run` prints the error of (the others: `odibi-ray logs`).
FAILED_ITEMS_SHOWN = 3


def _print_failures(result: RunResult, debug: bool) -> bool:
    """On stderr, for each failed node: its last attempt's exception (the user's frames of its traceback; all of
    it with ``debug``) and the end of that attempt's output; for a failed mapped node, those of its first
    :data:`FAILED_ITEMS_SHOWN` failed items. True when something was left out."""
    cut = False
    for level in result.by_level():
        for rec in level:
            if rec.status is not NodeStatus.FAILED or rec.error is None:
                continue
            if rec.items is None:
                cut = _print_failure(rec, f"node {rec.name!r}", debug) or cut
                continue
            failed = [i for i in rec.items if i.status is NodeStatus.FAILED and i.error is not None]
            for item in failed[:FAILED_ITEMS_SHOWN]:
                cut = _print_failure(item, f"node {rec.name!r} item {item.name!r}", debug) or cut
            if len(failed) > FAILED_ITEMS_SHOWN:
                cut = True
                typer.echo(f"--- node {rec.name!r}: {len(failed) - FAILED_ITEMS_SHOWN} more failed item(s) not "
                           f"shown ({', '.join(i.name for i in failed[FAILED_ITEMS_SHOWN:][:10])}"
                           f"{', ...' if len(failed) > FAILED_ITEMS_SHOWN + 10 else ''}) ---", err=True)
    return cut


def _print_failure(rec: NodeRecord, who: str, debug: bool) -> bool:
    """One failed node's (or item's) exception and output, on stderr; True when something was left out."""
    err = rec.error
    assert err is not None
    typer.echo(f"--- {who}, attempt {rec.attempts} of {rec.attempts} ---" if rec.attempts else f"--- {who} ---",
               err=True)
    text = err.traceback if debug else err.user_traceback()
    cut = not debug and "frame(s) not shown" in text
    if err.message not in text or not text.strip():
        kind = err.type_name if err.type.startswith("builtins.") else err.type
        text = (text.rstrip("\n") + "\n" if text.strip() else "") + f"{kind}: {err.message}"
    typer.echo(_plain(text.rstrip("\n"), sys.stderr), err=True)
    output = rec.attempt_history[-1].output_tail if rec.attempt_history else ""
    if output:
        shown, total = _last_lines(output, None if debug else RUN_OUTPUT_LINES)
        more = total > len(shown.splitlines())
        cut = cut or more
        what = f"last {RUN_OUTPUT_LINES} of {total} lines" if more else f"{total} line(s)"
        typer.echo(f"--- {who}, output of attempt {rec.attempts} ({what}) ---", err=True)
        typer.echo(_plain(shown, sys.stderr), err=True)
    return cut


def _failure_line(result: RunResult) -> str:
    """One line naming the failed nodes and what did not run; their errors are printed above it, not again."""
    try:
        result.raise_for_status()
    except RunFailedError as exc:
        if not exc.failures:
            return _one_line(exc)
        msg = f"pipeline {exc.pipeline!r} failed: " + "; ".join(
            _failed_items_line(result.nodes[e.node]) if e.node in result.nodes and result.nodes[e.node].items
            else f"node {e.node!r} failed ({e.error_type})" if not e.attempts and e.error_type  # e.g. a map's split
            else f"node {e.node!r} failed after {e.attempts} attempt(s)" for e in exc.failures.values())
        if exc.skipped:
            msg += f" ({len(exc.skipped)} node(s) not run: {', '.join(sorted(exc.skipped)[:10])}"
            msg += ", ...)" if len(exc.skipped) > 10 else ")"
        return msg
    return f"pipeline {result.pipeline!r} failed"


def _failed_items_line(rec: NodeRecord) -> str:
    """``node 'clean' failed: 2 of 1000 item(s) failed (clean[3], clean[7])``."""
    failed = [i.name for i in rec.items or () if i.status is NodeStatus.FAILED]
    names = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
    return f"node {rec.name!r} failed: {len(failed)} of {len(rec.items or ())} item(s) failed ({names})"


def _print_retries(result: RunResult) -> None:
    """A line per node that succeeded after failed attempts: ``node 'x' retried after ConnectionError``; per
    mapped node, one line for its items that did, and one for the items that failed when it allows partial
    results."""
    for level in result.by_level():
        for rec in level:
            if rec.items is None:
                note = rec.retry_note()
                if note and rec.status.ok:
                    typer.echo(f"node {rec.name!r} {note} (succeeded on attempt {rec.attempts})")
                continue
            retried = [i for i in rec.items if i.status.ok and i.retry_note()]
            if retried:
                errors = dict.fromkeys(a.error.type_name for i in retried for a in i.attempt_history[:-1] if a.error)
                names = ", ".join(i.name for i in retried[:5]) + (", ..." if len(retried) > 5 else "")
                typer.echo(f"node {rec.name!r}: {len(retried)} of {len(rec.items)} item(s) retried after "
                           f"{', '.join(errors)} and succeeded ({names})")
            failed = [i for i in rec.items if i.status is NodeStatus.FAILED]
            if failed and rec.status.ok:
                first = failed[0].error
                what = f"; {failed[0].name}: {first.type_name}: {_cut_line(first.message)}" if first else ""
                typer.echo(f"node {rec.name!r}: {len(failed)} of {len(rec.items)} item(s) failed, its consumers got "
                           f"the others (allow_partial){what}")


def _cut_line(text: str, limit: int = 200) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[:limit] + "..."


#: The order of item counts of one size.
_STATUS_ORDER = [s.value for s in NodeStatus]


def item_note(rec: NodeRecord) -> str:
    """A mapped node's items by status: ``1000 items: 999 cached, 1 succeeded`` ("" for a plain node)."""
    if rec.items is None:
        return ""
    counts = rec.item_counts()
    n = len(rec.items)
    parts = ", ".join(f"{counts[s]} {s}" for s in sorted(counts, key=lambda s: (  # most first, ties by status
        -counts[s], _STATUS_ORDER.index(s) if s in _STATUS_ORDER else len(_STATUS_ORDER), s)))
    return f"{n} item{'' if n == 1 else 's'}" + (f": {parts}" if parts else "")


def _items_span(rec: NodeRecord) -> tuple[int, float, str | None]:
    """A mapped node's items' attempts, wall time from the first start to the last end, and where they ran (the
    worker when one, ``N workers`` when several)."""
    items = [i for i in rec.items or () if i.attempt_history]
    attempts = sum(i.attempts for i in items)
    starts = [i.started_at for i in items if i.started_at is not None]
    ends = [i.ended_at for i in items if i.ended_at is not None]
    seconds = max(ends) - min(starts) if starts and ends else 0.0
    workers = {i.worker_node_id for i in items if i.worker_node_id}
    where = None if not workers else workers.pop() if len(workers) == 1 else f"{len(workers)} workers"
    return attempts, max(0.0, seconds), where


def _stored_result(store: Storage, pipeline: str, run_id: str, needed_for: str) -> RunResult:
    """The run's result as `odibi-ray run` stored it next to its manifest."""
    try:
        return RunResult.from_json(store.get(layout.run_prefix(pipeline, run_id) + RESULT_FILE))
    except NotFoundError:
        _manifest(store, pipeline, run_id)  # an unknown run says so
        raise OdibiError(f"run {run_id!r} of {pipeline!r} has no stored result, so no {needed_for}: only runs made "
                         "with `odibi-ray run` keep one") from None


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error."),
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Log INFO messages to stderr.")) -> None:
    """Global options. (The current directory goes on sys.path only when a pipeline is imported: see
    :func:`_load_target`.)"""
    _state["debug"] = debug
    logging.basicConfig(level=logging.INFO if verbose or debug else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


def _import_from_cwd() -> None:
    """Put the current directory first on sys.path, so `fn: mymodule:f` (and `mymodule:dag`) import from it.

    Only commands that import a pipeline do this (`run`, `graph`, an inspection command given a pipeline file or
    module:dag): the others import nothing of the user's, and a `boto3.py` lying in the current directory must
    not run when `odibi-ray runs --storage s3://...` imports the real one.
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


# --- pipelines and storage ---------------------------------------------------------------------------

def _is_yaml(target: str) -> bool:
    return target.lower().endswith((".yaml", ".yml"))


def _load_target(target: str, overrides: list[str]) -> tuple[DAG, str, dict[str, Any]]:
    """The DAG of a YAML file or ``module:dag``, its storage URI and storage options."""
    _import_from_cwd()
    if _is_yaml(target) or os.path.isfile(target):
        spec = load_pipeline(target, overrides)
        return spec.to_dag(), spec.storage_uri, spec.checkpoint_options
    if ":" not in target:
        raise SpecError(f"{target}: not a pipeline file (.yaml) nor a module:dag reference", file=target)
    if overrides:
        raise SpecError(f"{target}: --set applies to YAML pipelines only", file=target)
    dag = load_dag_target(target)
    return dag, default_storage(dag.name), {}


#: The folder under the current directory where `run` keeps a pipeline's checkpoints by default (.odibi/<name>)
#: and where the inspection commands look when given no storage.
ODIBI_DIR = ".odibi"
_STORE_MARKS = (layout.MARKER_KEY, layout.RUNS, layout.OBJECTS)  # what a checkpoint storage's root holds


class _Scope(NamedTuple):
    """Where an inspection command looks: the pipeline (None: every one) and the storages, in words for errors."""

    pipeline: str | None
    stores: list[Storage]
    where: str


def _pipeline_arg(positional: str | None, option: str | None) -> str | None:
    """The pipeline given as an argument or as ``--pipeline`` (the same thing; not two different ones)."""
    if positional and option and positional != option:
        raise typer.BadParameter(f"two pipelines given ({positional!r} and --pipeline {option!r}): give one")
    return positional or option


def _scope(pipeline: str | None, storage: str | None) -> _Scope:
    """``--storage URI`` if given; else the storage of a pipeline file or module:dag (its ``storage:``, default
    .odibi/<name>); else every checkpoint storage under ./.odibi/, only those holding the pipeline if one is
    named (so a pipeline kept elsewhere than .odibi/<name>, like the demo's .odibi/demo, is found too)."""
    name, uri, options = pipeline, storage, {}
    if pipeline and (_is_yaml(pipeline) or ":" in pipeline):
        dag, spec_uri, spec_options = _load_target(pipeline, [])
        name = dag.name
        if storage is None:
            uri, options = spec_uri, spec_options
    if uri is not None:
        store = open_checkpoint_storage(uri, options)
        check_readable(store)
        return _Scope(name, [store], _display(store))
    folders = _local_stores()
    where = f"{Path.cwd() / ODIBI_DIR}{os.sep}"
    if name:
        held = [d for d in folders if (d / layout.RUNS / name).is_dir() or (d / layout.OBJECTS / name).is_dir()]
        if not held:
            names = sorted({p.name for d in folders for p in (d / layout.RUNS).glob("*") if p.is_dir()})
            raise OdibiError(f"no runs or outputs of pipeline {name!r} in {where} (looked in "
                             f"{', '.join(_rel(d) for d in folders)}: they hold "
                             f"{'pipelines ' + ', '.join(names) if names else 'no runs'}); give --storage URI "
                             "if they are kept elsewhere")
        folders = held
    stores = []
    for folder in folders:
        store = open_checkpoint_storage(str(folder), {})
        check_readable(store)
        stores.append(store)
    return _Scope(name, stores, where)


def _local_stores() -> list[Path]:
    """The checkpoint storages under ./.odibi/ (folders holding a store's top folders or its layout marker: see
    checkpoint/layout.py), sorted."""
    root = Path(ODIBI_DIR)
    if not root.is_dir():
        raise OdibiError(f"no {ODIBI_DIR}{os.sep} folder in {Path.cwd()}, where `odibi-ray run` keeps checkpoints "
                         f"by default ({ODIBI_DIR}/<pipeline>): run a pipeline in this folder first, or give "
                         "--storage URI, or --pipeline PIPELINE.yaml for the storage that file names")

    def is_store(folder: Path) -> bool:
        return any((folder / mark).exists() for mark in _STORE_MARKS)

    found = [root] if is_store(root) else []  # `--storage .odibi` makes .odibi itself a storage
    found += sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and is_store(d)
                    and not (found and f"{d.name}/" in (layout.RUNS, layout.OBJECTS)))
    if not found:
        raise OdibiError(f"no checkpoint storage in {Path.cwd() / ODIBI_DIR}{os.sep} (looked for "
                         f"{ODIBI_DIR}/<name>/ folders holding {layout.RUNS} or {layout.OBJECTS}): run a pipeline in "
                         "this folder first, or give --storage URI")
    return found


def _rel(path: Path | str) -> str:
    """``path`` relative to the current directory when it is under it, else absolute."""
    absolute, cwd = os.path.abspath(path), os.getcwd()
    under = absolute == cwd or absolute.startswith(cwd.rstrip(os.sep) + os.sep)
    return os.path.relpath(absolute, cwd) if under else absolute


def _display(store: Storage, key: str = "") -> str:
    """Where a storage (or the object ``key`` in it) is, as a user would type it: a local folder as a path
    (relative to the current directory when under it), anything else as its URI without credentials."""
    uri = redact_uri(store.uri)
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "file":
        path = urllib.parse.unquote(parts.path)  # as LocalStorage made it: Path.as_uri() (POSIX)
        return _rel(os.path.join(path, *key.split("/")) if key else path)
    return uri.rstrip("/") + ("/" + key if key else "")


def _pipelines(store: Storage) -> list[str]:
    """The pipelines that have runs in ``store``."""
    runs = (layout.parse_manifest_key(i.key) for i in store.list(layout.RUNS))
    return sorted({run[0] for run in runs if run is not None})


class _Runs(NamedTuple):
    store: Storage
    pipeline: str
    runs: list[dict[str, str]]  # list_runs: newest first


def _runs(scope: _Scope, *, required: bool = True) -> list[_Runs]:
    """The runs of each pipeline in the scope (by pipeline name, then storage); ``required``: an error saying
    where it looked when there are none."""
    found = []
    for store in scope.stores:
        for name in [scope.pipeline] if scope.pipeline else _pipelines(store):
            runs = list_runs(store, name)
            if runs:
                found.append(_Runs(store, name, runs))
    found.sort(key=lambda r: (r.pipeline, _display(r.store)))
    if not found and required:
        if scope.pipeline is None:
            raise OdibiError(f"no runs in {scope.where}")
        others = sorted({p for s in scope.stores for p in _pipelines(s)})
        raise OdibiError(f"pipeline {scope.pipeline!r} has no runs in {scope.where}"
                         + (f" (it holds runs of {', '.join(others)})" if others else ""))
    return found


def _find_run(pipeline: str | None, storage: str | None, run_id: str | None) -> tuple[Storage, str, str]:
    """Storage, pipeline and run id of a run: ``run_id`` (found in whichever pipeline of the scope holds it) or,
    for None / 'latest', the newest run of the pipeline (of any pipeline in the scope when none is named)."""
    scope = _scope(pipeline, storage)
    if run_id in (None, "latest"):
        newest = max(_runs(scope), key=lambda r: (float(r.runs[0].get("started_at") or 0), r.runs[0]["run_id"]))
        return newest.store, newest.pipeline, newest.runs[0]["run_id"]
    hits = [r for r in _runs(scope, required=False) if any(m["run_id"] == run_id for m in r.runs)]
    if len(hits) == 1:
        return hits[0].store, hits[0].pipeline, run_id
    if not hits:
        of = f" of pipeline {scope.pipeline!r}" if scope.pipeline else ""
        raise OdibiError(f"no run {run_id!r}{of} in {scope.where}")
    raise OdibiError(f"run id {run_id!r} is in several places (" + ", ".join(
        f"pipeline {r.pipeline} in {_display(r.store)}" for r in hits) + "): give --pipeline or --storage")


def _open(pipeline: str | None, storage: str | None, *, need_pipeline: bool = True) -> tuple[str | None, Storage]:
    """Pipeline name and one storage (see _scope); with several, the pipeline and storage of the newest run.
    Commands about one run should use _find_run, which also finds the pipeline of a run id."""
    scope = _scope(pipeline, storage)
    if len(scope.stores) == 1 and (scope.pipeline or not need_pipeline):
        return scope.pipeline, scope.stores[0]
    store, name, _ = _find_run(pipeline, storage, None)
    return name, store


def _ts(value: Any) -> str:
    try:
        t = float(value)
    except (TypeError, ValueError):
        return ""
    return _dt.datetime.fromtimestamp(t).isoformat(sep=" ", timespec="seconds") if t > 0 else ""


def _run_id(storage: Storage, pipeline: str, run_id: str | None) -> str:
    if run_id in (None, "latest"):
        runs = list_runs(storage, pipeline)
        if not runs:
            raise OdibiError(f"pipeline {pipeline!r} has no runs in {_display(storage)}")
        return runs[0]["run_id"]
    return run_id


def _written(storage: Storage, pipeline: str, run_id: str, body: dict[str, Any]) -> int:
    """How many of a run's nodes ran and wrote their checkpoint (from its manifest ``body``, or a layout-1 run's
    records)."""
    statuses = node_statuses(storage, pipeline, run_id, body)
    return sum(1 for s in statuses.values() if s.status == "succeeded")


def _manifest(storage: Storage, pipeline: str, run_id: str) -> dict[str, Any]:
    try:
        body, _ = RunManifest(storage, pipeline, run_id).read()
    except NotFoundError:
        raise OdibiError(f"no run {run_id!r} of pipeline {pipeline!r} in {_display(storage)}") from None
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


# --- tables --------------------------------------------------------------------------------------------

class Col(NamedTuple):
    """A column of a :class:`Grid`. ``whole``: its cells are never wrapped (ids, times). ``drop`` > 0: left out
    when the width is short, the highest first, before any id would have to wrap."""

    header: str
    whole: bool = False
    drop: int = 0
    justify: JustifyMethod = "left"


class Grid:
    """A table that never cuts a cell. On a terminal: a box table fitted to the width by wrapping the text
    columns and leaving out the droppable ones (named under it); ids wrap only when even that cannot fit them.
    Not on a terminal (piped, redirected): plain aligned columns without box drawing, one line per row, an
    empty cell shown as ``-`` (:meth:`plain`; printed by Console only when it fits the console's width, else
    like on a terminal without the box)."""

    def __init__(self, title: str, columns: list[Col]) -> None:
        self.title, self.columns = title, columns
        self.rows: list[list[str]] = []

    def add_row(self, *cells: Any) -> None:
        self.rows.append([" ".join(str("" if c is None else c).split()) for c in cells])

    def plain(self) -> str:
        rows = [[c.header for c in self.columns]] + [[cell or "-" for cell in row] for row in self.rows]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.columns))]
        lines = [self.title] if self.title else []
        lines += ["  ".join(cell.rjust(w) if col.justify == "right" else cell.ljust(w)
                            for cell, w, col in zip(row, widths, self.columns)).rstrip() for row in rows]
        return "\n".join(lines)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width, boxed = options.max_width, console.is_terminal
        if not boxed:
            text = self.plain()
            if max(map(len, text.splitlines())) <= width:
                yield Text(text, no_wrap=True, overflow="ignore")
                return
        shown, widths, folded = self._fit(width, boxed)
        table = Table(title=self.title or None, box=HEAVY_HEAD if boxed else None, show_edge=boxed, pad_edge=boxed,
                      header_style="table.header" if boxed else "")
        for i, w in zip(shown, widths):
            col = self.columns[i]
            table.add_column(col.header, width=w, no_wrap=col.whole and not folded, overflow="fold",
                             justify=col.justify)
        for row in self.rows:
            table.add_row(*(row[i] for i in shown))
        yield table
        hidden = [c.header for i, c in enumerate(self.columns) if i not in shown]
        if hidden:
            yield Text(f"(left out at {width} columns: {', '.join(hidden)})", style="dim")

    def _fit(self, width: int, boxed: bool) -> tuple[list[int], list[int], bool]:
        """The columns shown, their widths, and whether ids must wrap (nothing left to leave out)."""
        cells = [[c.header] + [row[i] for row in self.rows] for i, c in enumerate(self.columns)]
        natural = [max(len(s) for s in col) for col in cells]
        header_word = [max(len(w) for w in c.header.split()) for c in self.columns]
        cell_word = [max((len(w) for s in col[1:] for w in s.split()), default=0) for col in cells]
        least = [natural[i] if c.whole else min(natural[i], max(header_word[i], min(cell_word[i], 12)))
                 for i, c in enumerate(self.columns)]

        def overhead(n: int) -> int:  # borders and padding (box) or the two spaces between columns (no box)
            return 3 * n + 1 if boxed else 2 * (n - 1)

        def need(cols: list[int]) -> int:
            return sum(least[i] for i in cols) + overhead(len(cols))

        shown = list(range(len(self.columns)))
        for i in sorted((i for i, c in enumerate(self.columns) if c.drop), key=lambda i: -self.columns[i].drop):
            if need(shown) <= width:
                break
            shown.remove(i)
        folded = need(shown) > width
        if folded:  # too narrow even for the ids alone: they wrap too, from their header's width
            least = [min(natural[i], max(header_word[i], 8)) if c.whole else least[i]
                     for i, c in enumerate(self.columns)]
        lo, hi = [least[i] for i in shown], [natural[i] for i in shown]
        left = width - overhead(len(shown)) - sum(lo)
        widths = list(lo)
        for rank, k in enumerate(sorted(range(len(shown)), key=lambda k: hi[k] - lo[k])):  # the smallest first
            give = max(0, min(hi[k] - widths[k], left // (len(shown) - rank)))
            widths[k] += give
            left -= give
        for k in range(len(shown)):  # what the even shares left over
            give = max(0, min(hi[k] - widths[k], left))
            widths[k] += give
            left -= give
        return shown, widths, folded


def _show(grid: Grid) -> None:
    """Print a table: fitted to the terminal, or plain and as wide as its rows when stdout is not a terminal."""
    console = Console()
    if console.is_terminal:
        console.print(grid)
    else:
        typer.echo(grid.plain())


def _result_table(result: RunResult) -> Grid:
    """The per-node table of a run (`run` prints it): ids whole, errors and reasons in full."""
    table = Grid(f"{result.pipeline} run {result.run_id} on {result.backend}: {result.status.value}",
                 [Col("level", drop=3), Col("node", whole=True), Col("status"), Col("attempts", drop=1),
                  Col("seconds", drop=2, justify="right"), Col("worker", whole=True, drop=4), Col("error / reason")])
    for level in result.by_level():
        for rec in level:
            note = f"{rec.error.type_name}: {rec.error.message}" if rec.error else rec.reason
            if rec.items is None:
                table.add_row(rec.level, rec.name, rec.status.value, rec.attempts, f"{rec.duration_s or 0:.3f}",
                              rec.worker_node_id, note)
                continue
            attempts, seconds, where = _items_span(rec)  # a mapped node: its items', then its failed items
            table.add_row(rec.level, rec.name, rec.status.value, attempts, f"{seconds:.3f}", where,
                          "; ".join(p for p in (item_note(rec), note) if p))
            failed = [i for i in rec.items if i.status is NodeStatus.FAILED]
            for item in failed[:FAILED_ITEMS_SHOWN]:
                error = f"{item.error.type_name}: {item.error.message}" if item.error else item.reason
                table.add_row("", f"  {item.name}", item.status.value, item.attempts,
                              f"{item.duration_s or 0:.3f}", item.worker_node_id, error)
            if len(failed) > FAILED_ITEMS_SHOWN:
                table.add_row("", "  ...", "failed", "", "", "", f"{len(failed) - FAILED_ITEMS_SHOWN} more failed "
                              f"item(s): odibi-ray logs {result.run_id} {rec.name}")
    return table


# --- commands ------------------------------------------------------------------------------------------

@app.command("run")
@_user_errors
def run_cmd(
    target: str = typer.Argument(..., help="A pipeline file (PIPELINE.yaml) or a Python DAG (package.module:dag)."),
    address: str | None = typer.Option(None, help="Ray cluster address ('auto': the cluster of this machine)."),
    storage: str | None = typer.Option(None, help="Checkpoint storage URI (overrides the pipeline's; "
                                          "default .odibi/<name>)."),
    resume: str | None = typer.Option(None, help="Resume a run: 'latest' or a run id."),
    force: bool = typer.Option(False, "--force", help="With --resume: take the run over even if its driver "
                               "still looks alive (you know it is dead); exactly one resumer still wins."),
    heartbeat: float = typer.Option(HEARTBEAT_S, help="Seconds between the driver's manifest heartbeats; "
                                    "another host may take the run over after three missed beats."),
    backend: ExecutionBackend = typer.Option(ExecutionBackend.RAY, help="ray (Ray tasks) or local (threads, no Ray)."),
    set_: list[str] = typer.Option([], "--set", help="Override a YAML field: key.path=value (repeatable)."),
    refresh: list[str] = typer.Option([], "--refresh", help="Run node (node+: and its descendants) again although "
                                      "its output is cached, writing over the stored one; repeatable."),
    select: list[str] = typer.Option([], "--select", help="Run only node, node+ (and descendants) or +node "
                                     "(and ancestors); repeatable."),
    max_workers: int | None = typer.Option(None, help="Threads of the local backend."),
    seed: int | None = typer.Option(None, help="Seed of the retry jitter (repeatable runs)."),
    fuse: bool = typer.Option(False, "--fuse", help="Run each chain of nodes (each the only consumer of the one "
                              "before) as one Ray task; every node keeps its record, retries, timeout and checkpoint."),
) -> None:
    """Run a pipeline; print a per-node table. Exit 0 when every node succeeded, 1 when some failed."""
    dag, uri, options = _load_target(target, set_)
    if storage is not None:  # another store: its own options, the pipeline's checkpoint rules
        uri, options = storage, {k: v for k, v in options.items() if k in ("signing_key", "allow_pickle")}
    if select:
        dag = _select(dag, select)
    signing = options.pop("signing_key", None)
    pickles = options.pop("allow_pickle", None)
    store = open_checkpoint_storage(uri, options)
    if force and resume is None:
        raise typer.BadParameter("--force only applies with --resume")
    with _RunPrinting():
        result = run_dag(dag, backend=backend.value, address=address, storage=store, resume=resume,
                         max_workers=max_workers, seed=seed, force=force, heartbeat_s=heartbeat,
                         refresh=refresh or None, signing_key=signing, allow_pickle=pickles, fuse=fuse)
    try:
        store.put(layout.run_prefix(dag.name, result.run_id) + RESULT_FILE, result.to_json(),
                  {"status": result.status.value})
    except OdibiError as exc:  # the run itself is done; only `report` will miss it
        log.warning("could not store the run result for `odibi-ray report` and `logs`: %s", exc)
    _show(_result_table(result))
    _print_retries(result)
    typer.echo(result.summary())
    if result.manifest_error:
        typer.echo(f"warning: {result.manifest_error}", err=True)
    if not result.succeeded:
        cut = _print_failures(result, _state["debug"])
        typer.echo(f"error: {_failure_line(result)}", err=True)
        if cut:
            where = (f" --storage {shlex.quote(redact_uri(storage))}" if storage is not None
                     else f" --pipeline {shlex.quote(target)}")
            typer.echo(f"(whole tracebacks: `odibi-ray --debug run ...`; a node's output: `odibi-ray logs "
                       f"{result.run_id} NODE{where}`)", err=True)
        raise typer.Exit(EXIT_RUN_FAILED)


def _pipeline_help(default: str) -> str:
    return f"Pipeline name, YAML file or module:dag (a file or module:dag also gives the storage). Default: {default}."


_STORAGE_HELP = "Checkpoint storage URI. Default: a pipeline file's storage, else every storage under ./.odibi/."
_ONE_RUN_PIPELINE_HELP = _pipeline_help("the one holding RUN_ID, or the newest run's")
_ALL_PIPELINES_HELP = _pipeline_help("every pipeline found")


def _several_stores(found: list[_Runs]) -> bool:
    """Whether runs come from more than one storage (their tables then have a storage column)."""
    return len({id(r.store) for r in found}) > 1


def _scope_title(scope: _Scope) -> str:
    """The storage looked in, or how many under which folder."""
    return _display(scope.stores[0]) if len(scope.stores) == 1 else f"{len(scope.stores)} storages in {scope.where}"


def _status_of(store: Storage, pipeline: str, meta: dict[str, str]) -> str:
    status = meta.get("status", "")
    if status == "running":  # running or abandoned: the manifest's driver tells
        status = effective_status(_manifest(store, pipeline, meta["run_id"]))
    return status


@app.command("runs")
@_user_errors
def runs_cmd(
    pipeline_arg: str | None = typer.Argument(None, metavar="PIPELINE", show_default=False,
                                                 help=_ALL_PIPELINES_HELP),
    pipeline: str | None = typer.Option(None, "--pipeline", help="The same as PIPELINE."),
    storage: str | None = typer.Option(None, help=_STORAGE_HELP),
) -> None:
    """List the runs of a pipeline, or of every pipeline found (in ./.odibi/ by default), newest first."""
    scope = _scope(_pipeline_arg(pipeline_arg, pipeline), storage)
    found = _runs(scope)
    several = _several_stores(found)
    table = Grid(f"runs in {_scope_title(scope)}", [
        Col("pipeline", whole=True), Col("run id", whole=True), Col("status"), Col("started", whole=True, drop=2),
        Col("updated", whole=True, drop=3)] + ([Col("storage", whole=True, drop=4)] if several else []))
    for r in found:
        for meta in r.runs:
            table.add_row(r.pipeline, meta["run_id"], _status_of(r.store, r.pipeline, meta),
                          _ts(meta.get("started_at")), _ts(meta.get("updated_at")),
                          *([_display(r.store)] if several else []))
    _show(table)


#: Node statuses whose output is stored (by this run, or by an earlier one for cached and resumed nodes).
_HAS_OUTPUT = ("succeeded", "computed", "cached", "resumed")


def _output_of(store: Storage, pipeline: str, run_id: str, key: str) -> str:
    """Where a node's output is stored, and by which run (or that it is gone)."""
    for object_key in (layout.object_key(pipeline, key), layout.legacy_object_key(key)):
        try:
            info = store.head(object_key)
        except NotFoundError:
            continue
        meta = CheckpointMeta.from_info(info)
        if meta is None:
            return f"{_display(store, object_key)}  (damaged: its metadata does not describe it)"
        note = "this run" if meta.run_id == run_id else f"run {meta.run_id}" if meta.run_id else "an unknown run"
        expired = meta.expired(_dt.datetime.now().timestamp())
        return (f"{_display(store, object_key)}  (written by {note}"
                + (f"; expired {_ts(meta.expires_at)}" if expired else "") + ")")
    return f"{_display(store, layout.object_key(pipeline, key))}  (missing: purged since, or never confirmed)"


@app.command("status")
@_user_errors
def status_cmd(
    run_id: str | None = typer.Argument(None, help="Run id (default: the latest run)."),
    pipeline: str | None = typer.Option(None, help=_ONE_RUN_PIPELINE_HELP),
    storage: str | None = typer.Option(None, help=_STORAGE_HELP),
    watch: bool = typer.Option(False, "--watch", help="Follow the run until it ends: per-level bars, counts by "
                               "state, the slowest running nodes, refreshed every --interval seconds."),
    address: str | None = typer.Option(None, help="--watch: the Ray cluster the run uses ('auto': this "
                                       "machine's); read the live status from its metrics actor."),
    namespace: str = typer.Option("default", help="--watch: the run's metrics namespace."),
    interval: float = typer.Option(1.0, help="--watch: seconds between refreshes."),
) -> None:
    """Show a run's status from its manifest (running, succeeded, failed or abandoned), its nodes, and where
    each node's output is stored (cached and resumed nodes: the object an earlier run wrote). With --watch,
    follow it while it runs: from the metrics actor when a Ray is reachable (--address, RAY_ADDRESS, or this
    process's), about once a second, else from the manifest the driver rewrites on each heartbeat."""
    if watch:
        _watch_run(run_id, pipeline, storage, address, namespace, interval)
        return
    store, name, rid = _find_run(pipeline, storage, run_id)
    body = _manifest(store, name, rid)
    statuses = node_statuses(store, name, rid, body)
    summary = body.get("summary") or {}
    typer.echo(f"pipeline {name} run {rid}: {effective_status(body)}")
    typer.echo(f"started {_ts(body.get('started_at'))}  ended {_ts(body.get('ended_at')) or '-'}  "
               f"resumes {body.get('resumes', 0)}  storage {_display(store)}")
    if summary.get("nodes"):
        typer.echo("nodes: " + ", ".join(f"{v} {k}" for k, v in sorted(summary["nodes"].items())))
    table = Grid("", [Col("level", drop=3), Col("node", whole=True), Col("status"), Col("attempts", drop=2),
                      Col("worker", whole=True, drop=4), Col("error / reason")])
    mapped = _mapped_records(store, name, rid, body)
    outputs: list[tuple[str, str]] = []
    for node, entry in sorted((body.get("nodes") or {}).items(), key=lambda kv: (kv[1].get("level", 0), kv[0])):
        status = statuses[node].status if node in statuses else "-"
        note = entry.get("error") or entry.get("reason")
        rec = mapped.get(node)
        if rec is not None:  # a mapped node: its items' counts; its output is its items' objects
            attempts, _, where = _items_span(rec)
            table.add_row(entry.get("level", ""), node, status, attempts, where,
                          "; ".join(p for p in (item_note(rec), note) if p))
            if status in _HAS_OUTPUT:
                outputs.extend(_item_outputs(store, name, rid, rec))
            continue
        table.add_row(entry.get("level", ""), node, status, entry.get("attempts", ""), entry.get("worker"), note)
        key = statuses[node].key if node in statuses else ""
        if status in _HAS_OUTPUT and key:
            outputs.append((node, _output_of(store, name, rid, key)))
    _show(table)
    if outputs:
        typer.echo("outputs:")
        width = max(len(node) for node, _ in outputs)
        for node, where in outputs:
            typer.echo(f"  {node.ljust(width)}  {where}")


#: `status` names the object of each item of a mapped node with at most this many items (else the first only).
ITEM_OUTPUTS_SHOWN = 10


def _mapped_records(store: Storage, pipeline: str, run_id: str, body: dict[str, Any]) -> dict[str, NodeRecord]:
    """The mapped nodes of a finished run made with `odibi-ray run` (its stored result says which they are and
    holds their items' records); empty when there is no stored result (a run from Python, or still running)."""
    if body.get("status") == "running":
        return {}
    try:
        result = RunResult.from_json(store.get(layout.run_prefix(pipeline, run_id) + RESULT_FILE))
    except (OdibiError, ValueError, KeyError, TypeError) as exc:  # none, or unreadable: status works without it
        if not isinstance(exc, NotFoundError):
            log.debug("stored result of run %s unreadable: %s", run_id, exc)
        return {}
    return {n: rec for n, rec in result.nodes.items() if rec.items is not None}


def _item_outputs(store: Storage, pipeline: str, run_id: str, rec: NodeRecord) -> list[tuple[str, str]]:
    """Where a mapped node's items' outputs are stored: each item's object when few, else the first one's and how
    many there are."""
    stored = [i for i in rec.items or () if i.status.value in _HAS_OUTPUT and i.cache_key]
    if len(stored) <= ITEM_OUTPUTS_SHOWN:
        return [(i.name, _output_of(store, pipeline, run_id, i.cache_key or "")) for i in stored]
    first = stored[0]
    return [(rec.name, f"{len(stored)} items, one object each; the first, {first.name}: "
                       + _output_of(store, pipeline, run_id, first.cache_key or ""))]


def _watch_run(run_id: str | None, pipeline: str | None, storage: str | None, address: str | None,
               namespace: str, interval: float) -> None:
    """``status --watch``: the actor's live status when a Ray is reachable and the actor has heard of the run,
    else the manifest's (when the run can be found in storage)."""
    import ray

    from .observe.watch import actor_source, first_of, manifest_status, watch

    rid = None if run_id in (None, "latest") else run_id
    sources = []
    if address or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        try:
            sources.append(actor_source(rid, pipeline, namespace, address))
        except (ValueError, ConnectionError) as exc:
            typer.echo(f"note: {exc}; following the run's manifest instead", err=True)
    try:
        store, name, found = _find_run(pipeline, storage, run_id)
    except OdibiError:
        if not sources:
            raise
    else:
        def from_manifest() -> dict[str, Any]:
            body = _manifest(store, name, found)
            statuses = {n: p.status for n, p in node_statuses(store, name, found, body).items()}
            return manifest_status(body, statuses, effective_status(body))
        sources.append(from_manifest)
    final = watch(first_of(sources), interval_s=interval)
    if final is not None and not final.get("finished"):
        typer.echo("the run stopped reporting (its driver may be gone): see `odibi-ray status` for its manifest",
                   err=True)
        raise typer.Exit(EXIT_RUN_FAILED)
    if final is not None and final.get("status") not in (None, "succeeded"):
        raise typer.Exit(EXIT_RUN_FAILED)


@app.command("graph")
@_user_errors
def graph_cmd(
    pipeline: str = typer.Argument(..., help="A pipeline file (PIPELINE.yaml) or a Python DAG (module:dag)."),
    format: GraphFormat = typer.Option(GraphFormat.mermaid, "--format", help="mermaid, dot or text."),
    set_: list[str] = typer.Option([], "--set", help="Override a YAML field: key.path=value (repeatable)."),
) -> None:
    """Print the pipeline's DAG as a Mermaid flowchart, a Graphviz DOT graph or text (one line per node, by
    level). A mapped node is marked ``[map over NODE, ...]``."""
    dag, _, _ = _load_target(pipeline, set_)
    render = {GraphFormat.mermaid: to_mermaid, GraphFormat.dot: to_dot, GraphFormat.text: to_text}[format]
    typer.echo(render(dag))


def map_label(spec: MapSpec) -> str:
    """How a mapped node is shown: ``[map over list_files, max_parallel 8]`` (the options given)."""
    parts = [f"map over {spec.over}"]
    if spec.max_parallel is not None:
        parts.append(f"max_parallel {spec.max_parallel}")
    if spec.batch_rows is not None:
        parts.append(f"batch_rows {spec.batch_rows}")
    if spec.by is not None:
        parts.append(f"by {spec.by}")
    if spec.reduce is not None:
        parts.append(f"reduce {getattr(spec.reduce, '__name__', None) or type(spec.reduce).__name__}")
    if spec.allow_partial:
        parts.append("allow_partial")
    return "[" + ", ".join(parts) + "]"


def to_text(dag: DAG) -> str:
    """The DAG as text: one line per node, by level, with its inputs and, for a mapped node, how it fans out
    (``level 1  clean  [map over list_files, max_parallel 8]``)."""
    levels = dag.levels()
    lines = [f"{dag.name}: {len(dag)} node(s) in {len(levels)} level(s)"]
    for i, names in enumerate(levels):
        for name in names:
            node = dag[name]
            line = f"level {i}  {name}"
            if node.mapping is not None:
                line += f"  {map_label(node.mapping)}"
            ups = [u for u in node.upstream if node.mapping is None or u != node.mapping.over]
            if ups:
                line += f"  <- {', '.join(ups)}"
            lines.append(line)
    return "\n".join(lines)


def to_mermaid(dag: DAG) -> str:
    """A Mermaid ``flowchart LR`` of the DAG (node ids n0.. with the names as labels); a mapped node is a
    subroutine box labelled with how it fans out, reached by a ``map`` edge from the node it maps over."""
    def label(text: str) -> str:  # Mermaid entity codes: a label is quoted, and may hold HTML
        return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")

    ids = {name: f"n{i}" for i, name in enumerate(dag.topological_order())}
    lines = ["flowchart LR"]
    for name in ids:
        spec = dag[name].mapping
        lines.append(f'    {ids[name]}["{label(name)}"]' if spec is None else
                     f'    {ids[name]}[["{label(name)} {label(map_label(spec))}"]]')
    for node in dag:
        over = node.mapping.over if node.mapping is not None else None
        lines += [f"    {ids[up]} -->|map| {ids[node.name]}" if up == over else f"    {ids[up]} --> {ids[node.name]}"
                  for up in node.upstream]
    return "\n".join(lines)


def to_dot(dag: DAG) -> str:
    """A Graphviz ``digraph`` of the DAG, one rank per level; a mapped node is a 3-D box labelled with how it fans
    out, reached by a bold ``map`` edge from the node it maps over."""
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    lines = [f"digraph {q(dag.name)} {{", "    rankdir=LR;"]
    for level in dag.levels():
        lines.append("    { rank=same; " + " ".join(q(n) + ";" for n in level) + " }")
    for name, spec in dag.mapped().items():
        lines.append(f"    {q(name)} [shape=box3d, label={q(name + chr(10) + map_label(spec))}];")
    for node in dag:
        over = node.mapping.over if node.mapping is not None else None
        lines += [f'    {q(up)} -> {q(node.name)} [style=bold, label="map"];' if up == over
                  else f"    {q(up)} -> {q(node.name)};" for up in node.upstream]
    lines.append("}")
    return "\n".join(lines)


@app.command("metrics")
@_user_errors
def metrics_cmd(
    run_id: str = typer.Argument("latest", help="Run id (or 'latest')."),
    pipeline: str | None = typer.Option(None, help=_ONE_RUN_PIPELINE_HELP),
    storage: str | None = typer.Option(None, help=_STORAGE_HELP),
    format: MetricsFormat = typer.Option(MetricsFormat.prometheus, "--format", help="prometheus or json."),
) -> None:
    """Print a finished run's metrics (stored in its manifest) as Prometheus text or JSON."""
    store, name, rid = _find_run(pipeline, storage, run_id)
    snapshot = ((_manifest(store, name, rid).get("summary") or {}).get("metrics"))
    if not snapshot:
        raise OdibiError(f"run {rid!r} of {name!r} has no stored metrics (still running, or run with metrics off)")
    manager = MetricsManager.from_snapshot(snapshot)
    if format is MetricsFormat.json:  # the run id is not a label (see RUN_LABELS): it goes around the snapshot
        typer.echo(json.dumps({"pipeline": name, "run_id": rid, "metrics": manager.snapshot()}, indent=2))
    else:  # a comment line (ignored by Prometheus parsers) says which run the series are of
        typer.echo(f"# odibi_ray run {rid} of pipeline {name}\n" + manager.export_prometheus())


@app.command("report")
@_user_errors
def report_cmd(
    run_id: str = typer.Argument("latest", help="Run id (or 'latest')."),
    pipeline: str | None = typer.Option(None, help=_ONE_RUN_PIPELINE_HELP),
    storage: str | None = typer.Option(None, help=_STORAGE_HELP),
    output: Path = typer.Option(Path("run.html"), "--output", "-o", help="The HTML file to write."),
) -> None:
    """Write the self-contained HTML report of a run made with `odibi-ray run`."""
    store, name, rid = _find_run(pipeline, storage, run_id)
    try:
        data = store.get(layout.run_prefix(name, rid) + RESULT_FILE)
    except NotFoundError:
        _manifest(store, name, rid)  # an unknown run says so
        raise OdibiError(f"run {rid!r} of {name!r} has no stored result: only runs made with `odibi-ray run` "
                         "can be reported here (from Python: result.report('run.html'))") from None
    result = RunResult.from_json(data)
    path = result.report(output)
    typer.echo(f"report of {name} run {rid} written to {path}")


@app.command("logs")
@_user_errors
def logs_cmd(
    run_id: str = typer.Argument(..., help="Run id (or 'latest')."),
    node: str | None = typer.Argument(None, help="Only this node (default: every node that ran); a mapped node: "
                                      "its items (or one item, NODE[i])."),
    pipeline: str | None = typer.Option(None, help=_ONE_RUN_PIPELINE_HELP),
    storage: str | None = typer.Option(None, help=_STORAGE_HELP),
) -> None:
    """Print what each attempt of a run's nodes wrote to stdout and stderr (the last 200 lines of each), as kept by
    `odibi-ray run`."""
    store, name, rid = _find_run(pipeline, storage, run_id)
    result = _stored_result(store, name, rid, "node output")
    items = {i.name: i for rec in result.nodes.values() for i in rec.items or ()}
    if node is not None and node not in result.nodes and node not in items:
        raise OdibiError(f"run {rid!r} of {name!r} has no node {node!r} (nodes: {', '.join(result.nodes)})")
    chosen = ([result.nodes[node]] if node in result.nodes else [items[node]] if node is not None
              else [r for level in result.by_level() for r in level])
    records = [i for rec in chosen for i in (rec.items if rec.items is not None else [rec])]  # a mapped node: items
    single = node is not None and [r.name for r in records] == [node]  # one node or item named: say if it did not run
    shown = 0
    for rec in records:
        if not rec.attempt_history:
            if single:
                typer.echo(f"node {rec.name!r} did not run in run {rid}: {rec.status.value}"
                           + (f" ({rec.reason})" if rec.reason else ""))
            continue
        for att in rec.attempt_history:
            if att.error is None:
                outcome = "succeeded" if att is rec.attempt_history[-1] and rec.status.ok else "done"
            else:
                outcome = "cancelled" if att.error.kind is ErrorKind.CANCELLED else f"failed: {att.error.type_name}"
            typer.echo(f"=== node {rec.name!r}, attempt {att.number} ({outcome}) ===")
            text = _plain(att.output_tail, sys.stdout)
            if not text:
                text = "(no output)\n"
            elif not text.endswith("\n"):
                text += "\n"
            typer.echo(text, nl=False)
            shown += 1
    if node is None and not shown:
        typer.echo(f"no node ran in run {rid} (every node was cached, resumed or not run)")
    elif not single and not shown and node is not None:  # a mapped node none of whose items ran
        rec = result.nodes[node]
        what = item_note(rec) or "no items"
        typer.echo(f"no item of node {node!r} ran in run {rid} ({what}; node {rec.status.value}"
                   + (f": {rec.reason}" if rec.reason else "") + ")")


@cache_app.command("ls")
@_user_errors
def cache_ls(
    storage: str | None = typer.Option(None, help=_STORAGE_HELP),
    pipeline: str | None = typer.Option(None, help="Only outputs of this pipeline: a name, a YAML file or "
                                           "module:dag (a file or module:dag also gives its storage)."),
    node: str | None = typer.Option(None, help="Only outputs written for this node name."),
) -> None:
    """List the stored node outputs (key, pipeline, node, run, size, codec, created, expires), in ./.odibi/ by
    default. The key is the node's cache key: the object's name in the storage."""
    scope = _scope(pipeline, storage)
    several = len(scope.stores) > 1
    table = Grid(f"cache in {_scope_title(scope)}", [
        Col("key", whole=True), Col("pipeline", whole=True, drop=4), Col("node", whole=True),
        Col("run", whole=True, drop=5), Col("bytes", drop=3, justify="right"), Col("codec", drop=6),
        Col("created", whole=True, drop=7), Col("expires", whole=True, drop=8)]
        + ([Col("storage", whole=True, drop=9)] if several else []))
    count = 0
    for store in scope.stores:
        for info in store.list(layout.OBJECTS, with_metadata=True):
            meta = CheckpointMeta.from_info(info)
            shown = (meta or CheckpointMeta.salvage(info)).node  # a damaged object is listed by the node it names
            if node is not None and shown != node:
                continue
            if scope.pipeline is not None and not (info.key.startswith(layout.objects_prefix(scope.pipeline))
                                                   or (meta is not None and meta.pipeline == scope.pipeline)):
                continue
            count += 1
            expires = ("damaged" if meta is None else "never" if meta.expires_at is None else _ts(meta.expires_at))
            table.add_row(layout.cache_key_of(info.key), meta.pipeline if meta else "", shown,
                          meta.run_id if meta else "", info.size, meta.codec if meta else "",
                          _ts(meta.created) if meta else "", expires, *([_display(store)] if several else []))
    _show(table)
    typer.echo(f"{count} object(s)")
    from .checkpoint.housekeeping import TEMP_MAX_AGE_S

    temp = temp_bytes = 0  # temp files of puts that never finished (a writer killed mid-put), in local folders
    for store in scope.stores:
        listing = getattr(store, "temp_files", None)
        prefixes = [""] if scope.pipeline is None else [layout.objects_prefix(scope.pipeline),
                                                        layout.runs_prefix(scope.pipeline)]
        for found in (listing(prefix) for prefix in prefixes) if listing is not None else ():
            temp += len(found)
            temp_bytes += sum(t.size for t in found)
    if temp:
        typer.echo(f"{temp} temp file(s) ({temp_bytes} bytes) of interrupted or running writes: `cache purge` and "
                   f"`checkpoints clean` remove those unchanged for {TEMP_MAX_AGE_S / 3600:g} h")


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
    storage: str | None = typer.Option(None, help=_STORAGE_HELP),
    expired: bool = typer.Option(False, "--expired", help="Outputs whose TTL has passed."),
    older_than: str | None = typer.Option(None, help="Outputs created longer ago than this (90s, 15m, 12h, 7d)."),
    node: str | None = typer.Option(None, help="Outputs of this node name."),
    pipeline: str | None = typer.Option(None, help="Outputs referenced only by runs of this pipeline (a name, "
                                           "a YAML file or module:dag)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would go; remove nothing."),
) -> None:
    """Remove cached outputs matching every filter given (never one a running run uses), in every storage
    `cache ls` lists with the same options."""
    if not (expired or older_than or node or pipeline):
        raise typer.BadParameter("give at least one filter: --expired, --older-than, --node or --pipeline")
    scope = _scope(pipeline, storage)
    for store in scope.stores:
        report = purge(store, expired=expired, older_than_s=parse_duration(older_than) if older_than else None,
                       node=node, pipeline=scope.pipeline, dry_run=dry_run)
        for key in report.objects:
            typer.echo(("would remove " if dry_run else "removed ") + _display(store, key))
        typer.echo((f"{_display(store)}: " if len(scope.stores) > 1 else "") + str(report))


@checkpoints_app.command("ls")
@_user_errors
def checkpoints_ls(
    pipeline: str | None = typer.Option(None, help=_ALL_PIPELINES_HELP),
    storage: str | None = typer.Option(None, help=_STORAGE_HELP),
) -> None:
    """List the runs of a pipeline (of every pipeline found, in ./.odibi/ by default) with how many node
    checkpoints each wrote (nodes that ran and succeeded)."""
    scope = _scope(pipeline, storage)
    found = _runs(scope)
    several = _several_stores(found)
    table = Grid(f"checkpoints in {_scope_title(scope)}", [
        Col("pipeline", whole=True), Col("run id", whole=True), Col("status"), Col("started", whole=True, drop=2),
        Col("checkpoints written", justify="right")] + ([Col("storage", whole=True, drop=3)] if several else []))
    for r in found:
        for meta in r.runs:
            body = _manifest(r.store, r.pipeline, meta["run_id"])
            table.add_row(r.pipeline, meta["run_id"], effective_status(body), _ts(meta.get("started_at")),
                          _written(r.store, r.pipeline, meta["run_id"], body),
                          *([_display(r.store)] if several else []))
    _show(table)


@checkpoints_app.command("clean")
@_user_errors
def checkpoints_clean(
    keep: int = typer.Option(..., "--keep", min=1, help="How many of the newest runs to keep."),
    pipeline: str | None = typer.Option(None, help=_ALL_PIPELINES_HELP),
    storage: str | None = typer.Option(None, help=_STORAGE_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would go; remove nothing."),
) -> None:
    """Keep the N newest runs of a pipeline (of each pipeline found, in ./.odibi/ by default; and any running
    run); remove older runs and the objects only they used."""
    for r in _runs(_scope(pipeline, storage)):
        report = keep_last_n(r.store, r.pipeline, keep, dry_run=dry_run)
        for run in report.runs:
            typer.echo(("would remove run " if dry_run else "removed run ") + run)
        typer.echo(f"{r.pipeline} in {_display(r.store)}: {report}")


@checkpoints_app.command("migrate")
@_user_errors
def checkpoints_migrate(
    pipeline: str | None = typer.Option(None, help="A pipeline file or module:dag: migrate its storage (a name: "
                                           "the storages under ./.odibi/ that hold it)."),
    storage: str | None = typer.Option(None, help=_STORAGE_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would move; move nothing."),
) -> None:
    """Move a layout-1 store's outputs into layout 2 (objects/<pipeline>/...), checked, old copies removed; every
    storage under ./.odibi/ by default."""
    scope = _scope(pipeline, storage)
    for store in scope.stores:
        typer.echo((f"{_display(store)}: " if len(scope.stores) > 1 else "") + str(migrate(store, dry_run=dry_run)))


@app.command("demo")
@_user_errors
def demo_cmd(
    backend: ExecutionBackend = typer.Option(ExecutionBackend.RAY, help="ray (a local Ray) or local (threads)."),
    rows: int = typer.Option(200_000, min=1, help="Rows the demo generates."),
    storage: str = typer.Option(".odibi/demo", help="Checkpoint storage URI."),
) -> None:
    """Run the demo pipeline (odibi_ray/demo.py, shipped with the package) on a local Ray."""
    from . import demo

    code = demo.main(["--backend", backend.value, "--rows", str(rows), "--storage", storage])
    raise typer.Exit(code or 0)


def main() -> None:
    """Entry point of the ``odibi-ray`` script."""
    app(prog_name="odibi-ray")


if __name__ == "__main__":
    main()
