"""``run(dag)``: validate, plan levels, pick a backend and drive the run to its end."""

from __future__ import annotations

import enum
import functools
import gc
import logging
import pickle
import random
from typing import Any
from collections.abc import Callable, Iterable

from .backends.base import Backend
from .backends.local import LocalBackend
from .backends.ray_tasks import RayBackend
from ..definition.dag import DAG
from ..definition.policy import RetryPolicy
from ..observe.progress import ProgressSink, RichProgress
from .result import RunResult
from ..checkpoint.plan import plan_checkpoints
from ..checkpoint.liveness import HEARTBEAT_S, DriverLease
from ..checkpoint.manifest_writer import Confirmer, ManifestWriter
from ..checkpoint.runs import node_entries, open_new_run, open_resumed_run
from ..checkpoint.trust import trust_from
from ..checkpoint.writeback import stored_now
from ..observe.live import LivePublisher
from ..observe.run_metrics import RowBatch, metrics_actor, run_metrics_of
from .scheduler import Scheduler, new_run_id
from .sources import commit_ranges, pin_ranges, with_ranges
from ..storage.base import Storage
from ..storage.uri import open_storage, redact_uri, scheme_of

log = logging.getLogger(__name__)


def _publish_metrics(result: RunResult, live: LivePublisher | None, view: Scheduler, changed: set[str],
                     keep_snapshot: bool) -> dict[str, Any] | None:
    """Send the actor the run's last live batch (the rows changed since the one before: observe/live.py),
    fire-and-forget; ``result.metrics`` is derived from the records when first read. Returns their snapshot when
    ``keep_snapshot`` (the run manifest keeps a copy). ``changed``: the nodes changed since the last live batch."""
    if live is not None and _ray_connected():  # (live: a Ray run) a fully cached run never started Ray
        status = dict(view.live_status(), finished=True, status=result.status.value,
                      duration_s=round(result.duration_s, 3))
        live.finish(view, changed, status, result.stats)
    result.derive_metrics_later(functools.partial(run_metrics_of, result.pipeline, result.nodes, result.stats,
                                                  result.inputs))
    return result.metrics.snapshot() if keep_snapshot else None


def _live_sender(namespace: str) -> Callable[[RowBatch, dict[str, Any]], None]:
    """Sends one live batch to the metrics actor of ``namespace`` (found on first use), fire-and-forget, pickled
    here: Ray's own serialiser (cloudpickle) took longer over thousands of records than ``pickle``."""
    def send(batch: RowBatch, status: dict[str, Any]) -> None:
        actor = metrics_actor(namespace)
        try:
            push = actor.push_rows
        except AttributeError:  # a detached actor started by an older odibi_ray outlives its drivers
            raise RuntimeError(f"the metrics actor of namespace {namespace!r} was started by an older odibi_ray (it "
                               "has no push_rows): stop it (ray.kill) and the next run starts a new one") from None
        push.remote(pickle.dumps(batch, protocol=5), status)
    return send


def _ray_connected() -> bool:
    import ray

    return ray.is_initialized()


def open_checkpoint_storage(uri: str, options: dict[str, Any] | None = None) -> Storage:
    """The checkpoint store for ``uri``. A local folder is opened without a per-write fsync unless
    ``options`` say ``fsync=True``: every checkpoint is checked against its SHA-256 when read, so a write
    lost or torn by a power cut is a cache miss (recomputed), never a trusted value, and the fsyncs made a
    write 1.3-6x slower on the test VM (benchmarks/README.md)."""
    opts = dict(options or {})
    if scheme_of(uri) == "file":
        opts.setdefault("fsync", False)
    return open_storage(uri, **opts)


class ExecutionBackend(str, enum.Enum):
    """The backends by name: ``run(backend=...)``, the CLI's ``--backend`` and the seed's ``DistributedExecutor``."""

    RAY = "ray"  # a Ray task per attempt, on a local Ray or the cluster at ``address``
    LOCAL = "local"  # threads in this process, no Ray
    THREAD_POOL = "local"  # the seed's name for LOCAL (an alias: the same member)

    @classmethod
    def parse(cls, value: str | ExecutionBackend) -> ExecutionBackend:
        """A member from its value or name, any case (``"ray"``, ``"local"``, ``"thread_pool"``, ``"threads"``)."""
        if isinstance(value, cls):
            return value
        text = str(value).strip().lower()
        member = _BACKEND_NAMES.get(text)
        if member is None:
            raise ValueError(f"unknown backend {value!r}: use 'ray' or 'local'")
        return member


_BACKEND_NAMES = {"ray": ExecutionBackend.RAY, "local": ExecutionBackend.LOCAL,
                  "thread_pool": ExecutionBackend.LOCAL, "threads": ExecutionBackend.LOCAL}


def make_backend(backend: str | ExecutionBackend | Backend, *, address: str | None = None,
                 max_workers: int | None = None, ray_init_kwargs: dict[str, Any] | None = None,
                 wait_for_resources: bool = False) -> Backend:
    """A backend by name (:class:`ExecutionBackend`, or its value as a string), or ``backend`` itself when it
    already is one (tests pass their own)."""
    if not isinstance(backend, str):
        return backend
    if ExecutionBackend.parse(backend) is ExecutionBackend.RAY:
        return RayBackend(address=address, init_kwargs=ray_init_kwargs, wait_for_resources=wait_for_resources)
    return LocalBackend(max_workers=max_workers)


def _collector_frozen(fn: Callable[..., RunResult]) -> Callable[..., RunResult]:
    """Keep the objects that existed before a run out of the cyclic garbage collector while it runs.

    Why: a driver that has imported Ray, pyarrow and the Azure SDK tracks millions of objects, and every
    full collection walks them all (0.08-0.17 s each, measured on a 1000-node resume that took 0.3 s). Frozen
    objects are put back when the run ends (``gc.unfreeze``), so nothing is kept that would have been freed;
    only the walks over them during the run are saved.
    """
    @functools.wraps(fn)
    def frozen(*args: Any, **kwargs: Any) -> RunResult:
        gc.freeze()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.unfreeze()
    return frozen


@_collector_frozen
def run(dag: DAG, *, backend: str | ExecutionBackend | Backend = "ray", address: str | None = None,
        retry: RetryPolicy | None = None, storage: str | Storage | None = None,
        storage_options: dict[str, Any] | None = None,
        resume: str | None = None, barrier: bool = False,
        fail_fast: bool = False, seed: int | None = None, progress: bool | ProgressSink | None = None,
        max_workers: int | None = None, ray_init_kwargs: dict[str, Any] | None = None,
        wait_for_resources: bool = False, run_id: str | None = None, metrics: bool = True,
        metrics_namespace: str = "default", write_behind: bool | None = None, force: bool = False,
        heartbeat_s: float = HEARTBEAT_S, refresh: Iterable[str] | str | None = None,
        signing_key: Any = None, allow_pickle: bool | None = None, fuse: bool = False) -> RunResult:
    """Run a DAG once and return its :class:`RunResult` (it does not raise for failed nodes:
    call ``result.raise_for_status()``).

    The DAG is validated as a whole before anything runs. ``backend="ray"`` runs every node as a Ray
    task: on the cluster at ``address`` (``"auto"``: the one this machine belongs to), or on a local
    Ray started on first use when no address is given and Ray is not yet initialised.
    ``backend="local"`` runs nodes in a thread pool of ``max_workers`` without Ray.

    ``retry`` is the policy of nodes that have none of their own (default: the DAG's ``retry``).
    Nodes start as soon as their own inputs are done (submitted in level order); ``barrier=True``
    runs level by level instead. ``fail_fast=True`` cancels everything at the first node that fails
    for good. ``seed`` makes retry jitter repeatable. ``progress``: None shows a live display when
    stderr is a terminal, False never, or pass your own :class:`ProgressSink`. A node whose resource
    request fits no machine of the Ray cluster raises :class:`UnschedulableNodeError` before anything
    runs, unless ``wait_for_resources=True`` (an autoscaler will add such machines).

    ``storage`` (a URI such as a folder path or ``abfss://...``, or a :class:`Storage`) turns on
    checkpoints: every node's worker stores its output there (one object per node, its metadata saying what
    made it); nodes whose output is
    fresh in the cache are not run at all (status ``cached``). ``resume="latest"`` or a run id takes
    over that run and reruns only what it had not finished (status ``resumed`` for the rest). A run whose driver
    is still driving it is refused unless ``force=True`` (its driver is known dead; a live one finds the run taken
    over and stops, its result saying so in ``stopped_reason``). The driver writes the manifest's heartbeat every
    ``heartbeat_s`` seconds (off the driver loop); from another host, a run is abandoned (resumable) after three
    missed beats, on this host as soon as its driver stops. A storage outage never makes ``run()`` raise once
    the run has started: the nodes it hit fail naming the storage error, and ``manifest_error`` says if the
    manifest could not be closed (it is written when storage is back; the run is resumable at once).
    ``refresh``: nodes to run again although their output is stored (``"node"``, ``"node+"`` with its
    descendants, ``"+node"`` with its ancestors): a source that changed without its key changing, or a result to
    check; their new output is written over the stored one (compare-and-swap).
    ``signing_key`` (a key, ``env://``/``kv://`` reference, or a list whose first key signs: rotation; also a
    storage option): every checkpoint written is signed (HMAC-SHA256) and only signed ones are read; others are
    misses, recomputed (checkpoint/trust.py). ``allow_pickle=False`` (also a storage option): an output only
    pickle can carry fails its node, and a stored pickle is never decoded.
    ``write_behind``: workers queue their checkpoint and return at once, the driver confirms every write before
    the run ends (checkpoint/writeback.py); default: on for remote stores with the Ray backend, off for local
    folders (nothing to hide there).
    ``fuse=True`` runs every chain of nodes (each the only consumer of the one before, same resources) as one Ray task
    per chain, keeping each node's record, output, retry policy, timeout, key and checkpoint: cheaper for chains of
    short nodes (execution/fusion.py); ``Node.fuse`` turns it on or off per node. No effect with ``barrier=True`` or
    the local backend.
    """
    levels = dag.levels()  # validates: nothing runs on an invalid DAG
    if not heartbeat_s > 0:
        raise ValueError(f"heartbeat_s must be a positive number of seconds, got {heartbeat_s!r}")
    options = dict(storage_options or {})  # the checkpoint rules may come as storage options too
    key_option, pickle_option = options.pop("signing_key", None), options.pop("allow_pickle", None)
    trust = trust_from(signing_key if signing_key is not None else key_option,
                       allow_pickle if allow_pickle is not None else pickle_option)
    store = open_checkpoint_storage(storage, options) if isinstance(storage, str) else storage
    if store is not None and trust.signer is None and not store.local_lookups:
        log.warning("checkpoints in %s are not signed: anyone who can write there can change what this run reads "
                    "(pass signing_key= to sign and check them)", redact_uri(store.uri))
    if resume is not None and store is None:
        raise ValueError("resume= needs the storage= the run checkpointed to")
    refreshed = dag.pick(refresh, "refresh") if refresh else set()
    if refreshed and store is None:
        raise ValueError("refresh= needs storage= (without it nothing is stored, so everything runs anyway)")
    if force and resume is None:
        raise ValueError("force=True only applies with resume= (taking over a run whose driver is known dead)")
    be = make_backend(backend, address=address, max_workers=max_workers, ray_init_kwargs=ray_init_kwargs,
                      wait_for_resources=wait_for_resources)
    if progress is None or progress is True:
        sink: ProgressSink = RichProgress()
    elif progress is False:
        sink = ProgressSink()
    else:
        sink = progress
    manifest = plan = writer = None
    lease: DriverLease | None = None
    ranges: dict[str, Any] = {}  # incremental source node -> the range it reads (execution/sources.py)
    if store is None:
        rid = run_id or new_run_id()
        ranges = pin_ranges(dag)
        dag = with_ranges(dag, ranges)
    else:
        lease = DriverLease()
        order = [n for names in levels for n in names]
        records = None
        try:
            if resume is not None:
                manifest, records = open_resumed_run(store, dag, resume, lease, force=force, heartbeat_s=heartbeat_s,
                                                     refresh=refreshed)
                rid, refreshed = manifest.run_id, manifest.refreshed
            else:
                rid = run_id or new_run_id()
            ranges = pin_ranges(dag, manifest.sources if manifest is not None else None)
            dag = with_ranges(dag, ranges)  # the ranges are the source nodes' parameters: in their keys
            behind = write_behind if write_behind is not None else (be.name == "ray" and not store.local_lookups)
            plan = plan_checkpoints(dag, order, store, rid, records, write_behind=behind, refresh=refreshed,
                                    trust=trust)
            if manifest is None:
                manifest = open_new_run(store, dag, rid, plan.keys, levels, lease, heartbeat_s, refreshed,
                                        sources=ranges)
        except BaseException:
            lease.release()  # nothing ran: this process drives nothing
            raise
    log.info("run %s of %r: %d nodes in %d levels on %s", rid, dag.name, len(dag), len(levels), be.name)
    live = LivePublisher(dag.name, rid, _live_sender(metrics_namespace)) if metrics and be.name == "ray" else None
    scheduler = Scheduler(dag, be, run_id=rid, levels=levels, barrier=barrier, fail_fast=fail_fast,
                          rng=random.Random(seed), progress=sink, default_retry=retry, checkpoint=plan, observer=live,
                          fuse=fuse)
    if manifest is not None and plan is not None and lease is not None:
        # the manifest keeps what the run did (statuses, attempts, errors) on every heartbeat, written off the loop
        targets = plan.targets
        writer = ManifestWriter(manifest, lease, heartbeat_s,
                                lambda: node_entries(scheduler.node_records(), scheduler.unconfirmed()),
                                Confirmer(scheduler.pending_writes, lambda pending: stored_now(targets, pending),
                                          scheduler.accept_confirmed))
        plan.heartbeat = writer.tick
    try:
        result = scheduler.run()
    except BaseException as exc:
        if live is not None:  # watchers must learn that the run is over, even without its final figures
            live.abandon(dict(scheduler.live_status(), finished=True, status="failed",
                              error=f"driver stopped: {type(exc).__name__}"))
        if writer is not None:
            writer.close("failed", {"error": f"driver stopped: {type(exc).__name__}"},
                         node_entries(scheduler.node_records(), scheduler.unconfirmed()))
        raise
    finally:
        be.close()
        if plan is not None:  # the manifest is closed below: a recomputation on result[name] must not beat into it
            plan.heartbeat = lambda: None
    changed = scheduler.take_changed()  # since the last live batch: what the final one sends
    scheduler.detach_observer()  # the final batch below is the last one, whatever reading the result recomputes
    if ranges:  # before the manifest closes: a driver killed in between leaves a resumable run, nothing lost
        result.sources = commit_ranges(dag, ranges, result)
    snapshot = _publish_metrics(result, live, scheduler, changed, writer is not None) if metrics else None
    if writer is not None and manifest is not None:  # (a writer is made only with a manifest)
        counts: dict[str, int] = {}
        for rec in result.nodes.values():
            counts[rec.status.value] = counts.get(rec.status.value, 0) + 1
        summary: dict[str, Any] = {"nodes": counts, **result.stats}
        if snapshot is not None:  # past runs' metrics stay readable after the actor is gone
            summary["metrics"] = snapshot
        if result.sources:
            summary["sources"] = {n: {"committed": r.committed, "reason": r.reason} for n, r in result.sources.items()}
        # a store the run just found unavailable: do not make the caller wait one more retry budget for the close
        down = any(r.error is not None and r.error.type_name == "StorageUnavailableError"
                   for r in result.nodes.values())
        result.resumed_from = manifest.resumed_from
        result.manifest_error = writer.close(result.status.value, summary, node_entries(result.nodes),
                                             storage_down=down)
        result.stopped_reason = writer.taken_over
    log.info("%s", result.summary())
    return result
