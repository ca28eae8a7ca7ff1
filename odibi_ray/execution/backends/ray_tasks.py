"""Ray backend: every node attempt is one Ray task with the node's resource request.

A task has two returns: the node's output, which stays in the object store until a downstream task or the user
needs it, and a small metadata record (timings, worker, error) that the driver reads. The output comes first: Ray
serialises a task's returns in order and, when one cannot be stored, puts the error in it and in every return
after it, so an output Ray cannot serialise fails the metadata too and the node fails itself (with
:class:`~odibi_ray.errors.UnserialisableOutputError`), never "succeeding" with an error as its value.
Ray's own retries are off (``max_retries=0``): the driver's :class:`RetryPolicy` decides.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import pickle
import struct
import time
from typing import Any, NamedTuple
from collections.abc import Callable, Iterator, Sequence

import cloudpickle

from ..attempt import FAILED, NO_IO, AttemptMeta, IOCounts, UpstreamFailed, error_info, process_id, run_attempt
from ..fanout import MapItem, MapOutput, flatten_inputs, item_target, task_input_names
from .worker_keys import WorkerKey, key_in_worker
from ...checkpoint.codecs import CODECS
from ...checkpoint.store import OutputTarget, StoredRef
from ..context import NodeContext
from ...errors import (
    ExecutionError,
    SystemFailureError,
    UnpicklableNodeError,
    UnschedulableNodeError,
    UnserialisableOutputError,
)
from ...definition.node import Node
from ..result import ErrorInfo, ErrorKind

log = logging.getLogger(__name__)


class TaskSpec(NamedTuple):
    """What every attempt of one node in one run needs besides its inputs: one argument of its Ray tasks.

    Pickled once per node and run, as bytes (Ray sends bytes faster than a tuple) holding a plain tuple, read back
    as a TaskSpec once per worker process (:func:`_spec`): pickled as a NamedTuple it cost cloudpickle 1.5-2x as
    much per spec (measured on 1000 specs).
    """

    fn_key: str  # SHA-1 of the pickled function: the worker's function cache key
    fn_bytes: bytes | None  # the pickled function; None: too large, it is in the object store (see _execute)
    params_bytes: bytes | None  # the pickled params; None: the node has none
    input_names: tuple[str, ...]  # the parameters the input values are passed as, in the task's argument order
    pipeline: str
    run_id: str
    node: str
    max_attempts: int
    timeout_s: float | None  # enforced inside the task, from its start
    target: OutputTarget | None  # where the worker checkpoints the output, if anywhere


# --- worker side ---------------------------------------------------------------------------------

_FN_CACHE: dict[str, Callable[..., Any]] = {}
_FN_CACHE_MAX = 4096
#: A pickled node function larger than this travels through the object store instead of in each task.
INLINE_FN_BYTES = 64 * 1024
_NODE_ID: str | None = None


def _worker_node_id() -> str:
    global _NODE_ID
    if _NODE_ID is None:
        import ray

        _NODE_ID = ray.get_runtime_context().get_node_id()
    return _NODE_ID


@functools.lru_cache(maxsize=1)
def _remote_execute() -> Any:
    """``ray.remote(_execute)``, made once per process: a new remote function is exported to the cluster again
    (its code pickled and disassembled for a collision check), 5 ms of every run's fixed cost. Ray re-exports a
    kept one by itself when it joins another cluster or job."""
    import ray

    return ray.remote(_execute)


@functools.lru_cache(maxsize=1)
def _remote_execute_chain() -> Any:
    """``ray.remote(_execute_chain)``, made once per process (see :func:`_remote_execute`)."""
    import ray

    return ray.remote(_execute_chain)


@functools.lru_cache(maxsize=8192)
def _task_options(name: str, resources_json: str, fused: int = 0) -> Any:
    """The remote function with one node's task options (its name, resources), kept across runs: Ray's
    ``.options()`` defines a new wrapper class on every call, once per node per run. ``fused``: a fused task of
    that many nodes (two returns each). An entry is ~4 KB (that class); 8192 hold a 5,000-node DAG's names: with
    4096, its runs cycled through the cache and missed every time (2 x 5,000 ``options()`` calls in 2 profiled runs
    of bench_overhead's skip5000-s1, 5% of the driver)."""
    remote = _remote_execute_chain() if fused else _remote_execute()
    return remote.options(num_returns=2 * fused or 2, max_retries=0, retry_exceptions=False, name=name,
                          **json.loads(resources_json))


def _execute(head: bytes, *args: Any) -> tuple[Any, bytes | tuple]:
    """Body of every odibi_ray task: unpickle the node function once per worker process, run one attempt;
    return (output, metadata) — in that order, see the module's docstring. The metadata travels as
    :func:`_wire_meta` makes it; the driver reads it back with :func:`_unpack_meta`.

    ``head`` is the node's pickled :class:`TaskSpec` and how this attempt is called (see :func:`_head`); ``args``
    are the input values (after the call tuple when the attempt has one). A large function is not in the spec
    (``fn_bytes`` None) but in the object store, once per run: its ref comes last, in a list so that Ray does not
    fetch it for workers that have the function already.

    The call is the attempt number, or for an item of a mapped node, a consumer of one or a node keyed here the
    tuple ``(attempt, groups, item, worker key)`` (see :meth:`RayBackend.submit`). A node keyed here gets its pending
    inputs' attempt metadata after its inputs (:mod:`.worker_keys`).
    """
    _begin_task()
    spec, attempt, input_values = _read_head(head, args)
    fn_box = None
    if spec.fn_bytes is None:
        input_values, fn_box = input_values[:-1], input_values[-1]
    inputs, metas = _split_metas(attempt, input_values)
    value, meta = _run_node(spec, attempt, inputs, fn_box, metas)
    return value, _wire_meta(meta)


#: The end of a task's ``head``: the attempt number and whether the call tuple is the first of the other arguments.
_HEAD_END = struct.Struct("<IB")


def _head(spec: bytes, call: int | tuple) -> tuple[bytes, bool]:
    """A task's first argument: the node's spec and, for a plain attempt, its number, as one bytes object; and
    whether the call tuple goes as an argument of its own (an item's value and a consumer's reduce function travel
    in it, serialised by Ray). Ray serialises a bytes argument for a task in ~8 µs, an int in ~20 and both in ~40
    (driver time per ``.remote()``, measured with nothing running); a node is one submit, so one argument fewer is
    ~30 µs of every node's driver time (about 5% of a no-op node's)."""
    if call.__class__ is int:
        return spec + _HEAD_END.pack(call, 0), False
    return spec + _HEAD_END.pack(0, 1), True


def _read_head(head: bytes, args: Sequence[Any]) -> tuple[TaskSpec, int | tuple, Sequence[Any]]:
    """The spec, the call and the input values of a task (see :func:`_head`)."""
    attempt, has_call = _HEAD_END.unpack_from(head, len(head) - _HEAD_END.size)
    spec = _spec(head[:-_HEAD_END.size])
    if has_call:
        return spec, args[0], args[1:]
    return spec, attempt, args


def _execute_chain(specs: tuple[bytes, ...], calls: tuple[Any, ...], boxes: tuple[Any, ...],
                   *head_inputs: Any) -> tuple[Any, ...]:
    """Body of a fused task (execution/fusion.py): run a chain's nodes in order, each on the output of the one
    before, in this process; return every node's (output, metadata), flat, in chain order.

    ``specs``, ``calls`` (as ``_execute``'s ``attempt``) and ``boxes`` (a large function's ref in a list, else None)
    hold one entry per node; ``head_inputs`` are the first node's, as ``_execute`` gets them. A node keyed here
    reads the data version of the node before it from that node's metadata, made just before. A node that fails
    hands the next one the failure marker: it, and every node after it, reports an input that failed. A node gets a
    copy of the output before it (:func:`_handover`), never the object the task returns.
    """
    _begin_task()
    out: list[Any] = []
    value: Any = None
    meta: AttemptMeta | None = None
    for i, (spec_bytes, call, box) in enumerate(zip(specs, calls, boxes)):
        spec = _spec(spec_bytes)
        if i == 0:
            inputs, metas = _split_metas(call, head_inputs)
        else:
            inputs = [_handover(value) for _ in spec.input_names]
            # one metadata per input it keys from: the node before, once per parameter reading it
            metas = [meta] * call[3].pending if meta is not None and isinstance(call, tuple) and call[3] else []
        try:
            value, meta = _run_node(spec, call, inputs, box, metas)
        except Exception as exc:  # noqa: BLE001 - e.g. its params cannot be unpickled here: its failure, not the task's
            # (unfused, the task would fail with it; fused, the nodes before it keep their outputs)
            now = time.time()
            value, meta = FAILED, AttemptMeta(now, now, _worker_node_id(), process_id(), error_info(exc), NO_IO)
        out += (value, _wire_meta(meta))
    return tuple(out)


#: Outputs a fused task hands to the next node as they are: nothing can change them in place.
_IMMUTABLE = frozenset({int, float, complex, bool, str, bytes, type(None), StoredRef, UpstreamFailed})


def _handover(value: Any) -> Any:
    """An output of a fused task's node as the next node gets it: a copy (pickled and read back), as an unfused
    consumer reads it from the object store. Else a node changing its input in place (``df["x"] = ...``) would change
    the output of the node before it, returned when the task ends: what ``result[...]``, a retry and the cache key
    after it see (a test caught it). A value that cannot be pickled is handed over as it is: Ray cannot store it
    either, so its node fails (UnserialisableOutputError) when the task returns."""
    if value.__class__ in _IMMUTABLE:
        return value
    try:
        return pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # noqa: BLE001 - e.g. a lambda inside: cloudpickle can, as Ray's own serialiser does
        try:
            return cloudpickle.loads(cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception:  # noqa: BLE001 - see the docstring
            return value


def _begin_task() -> None:
    global _RETURNING
    _RETURNING = {}
    if _GUARD is None:
        _guard_outputs()


def _split_metas(attempt: int | tuple, input_values: Sequence[Any]) -> tuple[Sequence[Any], list[AttemptMeta]]:
    """A node keyed here gets the attempt metadata of its inputs still running after its inputs: split them off."""
    if not isinstance(attempt, tuple) or attempt[3] is None:
        return input_values, []
    cut = len(input_values) - attempt[3].pending
    return input_values[:cut], [_unpack_meta(m) for m in input_values[cut:]]


def _run_node(spec: TaskSpec, attempt: int | tuple, input_values: Sequence[Any], fn_box: list | None,
              metas: Sequence[AttemptMeta]) -> tuple[Any, AttemptMeta]:
    """One attempt of one node in this worker: its output and metadata (see :func:`_execute`)."""
    fn = _FN_CACHE.get(spec.fn_key)
    if fn is None:
        if len(_FN_CACHE) >= _FN_CACHE_MAX:
            _FN_CACHE.clear()
        fn_bytes = spec.fn_bytes
        if fn_bytes is None:
            import ray

            assert fn_box is not None
            fn_bytes = ray.get(fn_box[0])
        fn = _FN_CACHE[spec.fn_key] = cloudpickle.loads(fn_bytes)
    params = cloudpickle.loads(spec.params_bytes) if spec.params_bytes is not None else {}
    groups = item = wkey = None
    target = spec.target
    if attempt.__class__ is tuple:  # a mapped node's item, a consumer of a mapped node, or a node keyed here
        attempt, groups, item_tuple, wkey = attempt
        if item_tuple is not None:
            item = MapItem._make(item_tuple)
            target = item_target(target, spec.node, item)
        if wkey is not None:  # (only with checkpoint storage: there is a target)
            assert target is not None
            started = time.time()
            target, reused = key_in_worker(wkey, metas, target, spec.node)
            if reused is not None:  # stored under its key (early cutoff): not run; its consumers read it there
                meta = AttemptMeta(started, time.time(), _worker_node_id(), process_id(), None,
                                   IOCounts(0, 0, time.time() - started), "", reused.sha256, reused.codec,
                                   target.cache_key, reused.status.value)
                return reused.ref, meta
    ctx = NodeContext(spec.pipeline, spec.run_id, spec.node, attempt, spec.max_attempts,  # type: ignore[arg-type]
                      None if item is None else item.position)
    meta, value = run_attempt(fn, params, spec.input_names, input_values, ctx, _worker_node_id(), spec.timeout_s,
                              hard_kill=True, target=target, groups=groups, item=item)
    # keyed here (not when an input failed, which leaves the target as it was): the driver learns the key
    if wkey is not None and target is not None and target is not spec.target:
        meta = meta._replace(cache_key=target.cache_key)
    assert _RETURNING is not None
    _RETURNING.setdefault(id(value), ctx.where)  # (the first node returning this object names it)
    return value, meta


#: The outputs the task is returning, until Ray serialises them: id of the value -> the node (or item) returning it.
_RETURNING: dict[int, str] | None = None
#: The serialisation context whose ``serialize`` this worker process wrapped (False: it could not be wrapped).
_GUARD: Any = None


def _guard_outputs() -> None:
    """Wrap this worker's Ray serialiser (once per process) so that a node output it cannot serialise raises
    :class:`UnserialisableOutputError` naming the node and the value's type, instead of Ray's bare pickling error.

    It costs one Python call per serialised object and serialises nothing twice: Ray's own serialisation of the
    output is the check. Ray stores the raised error as the task's outputs (see the module's docstring). Without
    the wrapper (a Ray whose internals moved) the node still fails, with Ray's error (e.g. ``TypeError``).
    """
    global _GUARD
    try:
        from ray._private.worker import global_worker

        context = global_worker.get_serialization_context()
        context.serialize = functools.partial(_serialize_guarded, context.serialize)
        _GUARD = context
    except Exception as exc:  # noqa: BLE001 - a guard only: the failure is still reported, less precisely
        log.debug("cannot wrap Ray's serialiser: %s", exc)
        _GUARD = False


def _serialize_guarded(serialize: Callable[[Any], Any], value: Any) -> Any:
    where = _RETURNING.pop(id(value), None) if _RETURNING else None
    if where is None:
        return serialize(value)
    try:
        return serialize(value)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        if len(reason) > 500:
            reason = reason[:500] + "..."
        vtype = type(value)
        raise UnserialisableOutputError(where, f"{vtype.__module__}.{vtype.__qualname__}", reason) from exc


_SPECS: dict[bytes, TaskSpec] = {}
#: The largest spec kept under its own bytes (4,096 of them at most: 16 MB); a larger one under its SHA-1.
_SPEC_KEY_MAX = 4096


def _spec(spec: bytes) -> TaskSpec:
    """The unpickled task spec, cached per worker process (a spec is sent once per node and attempt). A small spec
    (the usual: its function is in it only when small) is its own key, hashed by the dict in C; SHA-1 took ~7 µs a
    task in place (cProfile in a worker), its hot cost many times over."""
    key = spec if len(spec) <= _SPEC_KEY_MAX else hashlib.sha1(spec).digest()  # (a pickled spec is > 20 bytes)
    out = _SPECS.get(key)
    if out is None:
        if len(_SPECS) >= _FN_CACHE_MAX:
            _SPECS.clear()
        out = _SPECS[key] = TaskSpec._make(cloudpickle.loads(spec))
    return out


#: started_at, ended_at, pid, bytes written, bytes read, storage seconds, output sha256 and codec, cache key (a node
#: keyed in its worker), reused (0 no, 1 cached, 2 resumed); the Ray node id follows
_META = struct.Struct("<ddIQQd32sB32sB")  # ... sha256, its codec (index in CODECS, 255: none), key, reused
_NONE32 = bytes(32)
_REUSED_CODES = {"": 0, "cached": 1, "resumed": 2}
_REUSED_NAMES = {code: name for name, code in _REUSED_CODES.items()}
_CODEC_CODES = {"": 255, **{name: i for i, name in enumerate(CODECS)}}
_CODEC_NAMES = {code: name for name, code in _CODEC_CODES.items()}


def _wire_meta(meta: AttemptMeta) -> bytes | tuple[Any, ...]:
    """An attempt's metadata as a task returns it: a success without output as a packed record (cheaper for Ray
    than any tuple), anything else as a plain tuple of the :class:`AttemptMeta` fields (io a plain tuple too):
    a round trip through Ray's cloudpickle took 2-4x as long for a NamedTuple (measured on 1000 metas)."""
    if (meta.error is None and not meta.output_tail and meta.worker_node_id is not None
            and meta.output_codec in _CODEC_CODES):
        return _META.pack(meta.started_at, meta.ended_at, meta.pid, *meta.io, _hex32(meta.output_sha256),
                          _CODEC_CODES[meta.output_codec], _hex32(meta.cache_key), _REUSED_CODES[meta.reused]) \
            + _node_id_bytes(meta.worker_node_id)
    return meta[:5] + (tuple(meta.io),) + meta[6:]


def _hex32(text: str) -> bytes:
    return bytes.fromhex(text) if text else _NONE32


@functools.lru_cache(maxsize=16)  # a worker has one Ray node id: converted once, not for every task
def _node_id_bytes(hex_id: str) -> bytes:
    try:
        return bytes.fromhex(hex_id)
    except ValueError:
        return hex_id.encode()


def _unpack_meta(meta: bytes | tuple[Any, ...]) -> AttemptMeta:
    """A worker's metadata (see :func:`_wire_meta`) back as an :class:`AttemptMeta`."""
    if not isinstance(meta, bytes):
        return AttemptMeta._make(meta[:5] + (IOCounts._make(meta[5]),) + meta[6:])
    started, ended, pid, written, read, storage_s, sha, codec, key, reused = _META.unpack_from(meta)
    return AttemptMeta(started, ended, meta[_META.size:].hex(), pid, None, IOCounts(written, read, storage_s), "",
                       "" if sha == _NONE32 else sha.hex(), _CODEC_NAMES[codec], "" if key == _NONE32 else key.hex(),
                       _REUSED_NAMES[reused])


# --- driver side ---------------------------------------------------------------------------------

def ensure_ray(address: str | None = None, **init_kwargs: Any) -> None:
    """Connect to Ray once per process: ``address`` names a cluster ("auto", "ray://..."); None starts
    a local Ray (or joins the one ``RAY_ADDRESS`` names)."""
    import ray

    if ray.is_initialized():
        if address not in (None, "auto", "local"):
            current = ray.get_runtime_context().gcs_address
            if address.split("://")[-1] != current:
                raise ExecutionError(
                    f"Ray in this process is already connected to {current}, so address={address!r} cannot be "
                    "used: call ray.shutdown() first, or leave address unset to use the current connection")
        return
    log.info("starting Ray (address=%s)", address or "local")
    local = address in (None, "local") and not os.environ.get("RAY_ADDRESS")
    with _quiet_token_notice(local):
        ray.init(address=address, **init_kwargs)


_TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"


class _DropTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TOKEN_NOTICE)


@contextlib.contextmanager
def _quiet_token_notice(local: bool) -> Iterator[None]:
    """Keep Ray's "token authentication is enabled" notice off the user's terminal when odibi_ray starts a local,
    loopback-only Ray for them: they did not choose it and cannot act on it. Ray's security default (token auth
    on) is kept; only that one line is dropped. Any other Ray message, and the notice for a cluster the user
    starts or joins, is left alone."""
    if not local:
        yield
        return
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    drop = _DropTokenNotice()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


class _Handle:
    """The two object refs of one attempt (the value ref is done when the metadata ref is). One handle is made per
    attempt and is the attempt's identity, so it is hashed and compared as an object (in C): a hash of its
    metadata ref was a Python call, ~7 a node in the scheduler's dicts."""

    __slots__ = ("meta", "value")

    def __init__(self, meta: Any, value: Any) -> None:
        self.meta, self.value = meta, value


class _Prepared(NamedTuple):
    """A node's function and params as :meth:`RayBackend.prepare` serialised them, once per run; completed into
    its :class:`TaskSpec` on the node's first submit (when the run's context is known)."""

    fn_key: str
    fn_bytes: bytes
    params_bytes: bytes | None


class RayBackend:
    """Submits node attempts as Ray tasks; connects with :func:`ensure_ray` on first use."""

    name = "ray"
    speculative: bool = True  # submit a node with its inputs' refs; Ray starts it when they are done
    worker_timeouts: bool = True  # timeouts are enforced inside the task, counted from its start

    def __init__(self, address: str | None = None, init_kwargs: dict[str, Any] | None = None,
                 wait_for_resources: bool = False) -> None:
        self.address = address
        self.wait_for_resources = wait_for_resources
        self.init_kwargs = dict(init_kwargs or {})
        self._prepared: dict[str, _Prepared] = {}
        self._specs: dict[str, bytes] = {}  # node -> its pickled TaskSpec, made on its first submit
        self._spec_targets: dict[str, Any] = {}  # node -> the checkpoint target its spec holds (a new key: a new spec)
        self._fn_refs: dict[str, list] = {}
        self._by_fn: dict[int, tuple[str, bytes]] = {}
        self._boxes: dict[str, tuple] = {}
        self._targets: dict[str, Any] = {}
        self._remotes: dict[str, Any] = {}

    def prepare(self, nodes: Sequence[Node], targets: dict[str, Any] | None = None) -> None:
        """Connect, and serialise the function and params of every node that will run, once per run (this is
        also the picklability check, before anything runs)."""
        self._targets = targets if targets is not None else {}  # shared: a late key (a mapped node's consumer) shows
        self._prepared, self._specs, self._fn_refs, self._remotes, self._by_fn = {}, {}, {}, {}, {}
        self._spec_targets = {}
        if nodes:  # a run whose every node is reused from storage needs no task: Ray is not even started
            self._prepare_nodes(nodes)

    def _prepare_nodes(self, nodes: Sequence[Node]) -> None:
        import ray

        ensure_ray(self.address, **self.init_kwargs)  # connects once per process; started lazily, on first need

        for node in nodes:
            try:
                fn_entry = self._by_fn.get(id(node.fn))
                if fn_entry is None:
                    fn_bytes = cloudpickle.dumps(node.fn)
                    fn_entry = self._by_fn[id(node.fn)] = (hashlib.sha1(fn_bytes).hexdigest(), fn_bytes)
                    if len(fn_bytes) > INLINE_FN_BYTES:  # a closure over data: into the object store, once
                        self._fn_refs[fn_entry[0]] = [ray.put(fn_bytes)]
                params_bytes = cloudpickle.dumps(node.params) if node.params else None
            except Exception as exc:
                raise UnpicklableNodeError(
                    f"node {node.name!r}: its function or params cannot be serialised for a Ray worker: "
                    f"{type(exc).__name__}: {exc}", nodes=(node.name,)) from exc
            self._prepared[node.name] = _Prepared(fn_entry[0], fn_entry[1], params_bytes)
        if not self.wait_for_resources:
            check_schedulable(nodes, [n["Resources"] for n in ray.nodes() if n["Alive"]])
        for node in nodes:
            self._remotes[node.name] = _task_options(node.name, json.dumps(node.ray_options(), sort_keys=True))

    def submit(self, node: Node, ctx: NodeContext, inputs: Sequence[Any], item: MapItem | None = None,
               key: WorkerKey | None = None) -> _Handle:
        call, args = _call(ctx, inputs, item, key)
        head, call_apart = _head(self._spec_of(node, ctx), call)
        if call_apart:
            args.insert(0, call)
        value, meta = self._remotes[node.name].remote(head, *args, *self._boxes[node.name])
        return _Handle(meta, value)

    def submit_chain(self, nodes: Sequence[Node], ctxs: Sequence[NodeContext], inputs: Sequence[Any],
                     keys: Sequence[WorkerKey | None]) -> list[_Handle]:
        """Start one attempt of each node of a chain as one fused Ray task (execution/fusion.py): ``inputs`` are the
        first node's input handles, each later node reads the one before; ``keys``: a node's worker key, if it is
        keyed in the task. One handle per node, in chain order, each with the node's own output and metadata."""
        head = nodes[0]
        specs = tuple(self._spec_of(node, ctx) for node, ctx in zip(nodes, ctxs))
        head_call, args = _call(ctxs[0], inputs, None, keys[0])
        calls = (head_call,) + tuple(ctx.attempt if k is None else (ctx.attempt, None, None, k)
                                     for ctx, k in zip(ctxs[1:], keys[1:]))
        boxes = tuple(self._boxes[node.name][0] if self._boxes[node.name] else None for node in nodes)
        remote = _task_options(f"{head.name}..{nodes[-1].name}", json.dumps(head.ray_options(), sort_keys=True),
                               len(nodes))
        refs = remote.remote(specs, calls, boxes, *args)
        return [_Handle(refs[i + 1], refs[i]) for i in range(0, len(refs), 2)]

    def _spec_of(self, node: Node, ctx: NodeContext) -> bytes:
        """The node's pickled spec, made on its first submit in this run (again when its checkpoint target changed:
        a new key)."""
        target = self._targets.get(node.name)
        spec = self._specs.get(node.name)
        if spec is None or self._spec_targets[node.name] is not target:
            spec = self._specs[node.name] = self._pickle_spec(node, ctx)
            self._spec_targets[node.name] = target
        return spec

    def _pickle_spec(self, node: Node, ctx: NodeContext) -> bytes:
        """The node's :class:`TaskSpec`: what :meth:`prepare` serialised plus the run's context, pickled once (as a
        plain tuple, see TaskSpec)."""
        prepared = self._prepared.get(node.name)
        if prepared is None:  # a node reused from storage that must run after all (its stored output was corrupt)
            self._prepare_nodes([node])
            prepared = self._prepared[node.name]
        fn_box = self._fn_refs.get(prepared.fn_key)
        self._boxes[node.name] = (fn_box,) if fn_box else ()
        spec = TaskSpec(prepared.fn_key, None if fn_box else prepared.fn_bytes, prepared.params_bytes,
                        task_input_names(node), ctx.pipeline, ctx.run_id, node.name, ctx.max_attempts, node.timeout_s,
                        self._targets.get(node.name))
        if spec.target is None:  # plain data: pickle's own C pickler takes a quarter of cloudpickle's time
            return pickle.dumps(tuple(spec), protocol=5)
        # a storage adapter may be a class of the user's __main__, which only cloudpickle sends by value
        return cloudpickle.dumps(tuple(spec), protocol=5)

    def wait(self, handles: Sequence[_Handle], timeout: float | None, all_of: bool = False) -> list[_Handle]:
        import ray

        by_ref = {h.meta: h for h in handles}
        refs = list(by_ref)
        if all_of:  # block until all are done or the timeout passes; return what is done
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=False)
            return [by_ref[r] for r in ready]
        ready, rest = ray.wait(refs, num_returns=1, timeout=timeout, fetch_local=False)
        if ready and rest:  # collect everything else already done, in the same pass
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)
            ready += more
        return [by_ref[r] for r in ready]

    def outcomes(self, handles: Sequence[_Handle]) -> list[AttemptMeta]:
        import ray

        refs = [h.meta for h in handles]
        try:
            return [_unpack_meta(m) for m in ray.get(refs)]
        except Exception:
            pass  # at least one attempt failed at the system level: read them one by one
        out = []
        for h in handles:
            try:
                out.append(_unpack_meta(ray.get(h.meta)))
            except Exception as exc:
                out.append(AttemptMeta(None, time.time(), None, None, classify_ray_error(exc), NO_IO))
                _read_later(h.value)  # holds the same error: read it, or Ray logs it as unhandled
        return out

    def started(self, handle: _Handle) -> None:
        """Not known on the driver, and not needed: Ray times attempts in the worker (``worker_timeouts``), so the
        scheduler never asks."""
        return None

    def forget(self, handle: _Handle) -> None:
        """An attempt the scheduler discarded (an input of it failed): its refs may end in errors that nobody
        reads, now or after the run; see :func:`_bury`."""
        _bury(handle)

    def cancel(self, handle: _Handle) -> None:
        import ray

        try:
            ray.cancel(handle.meta, force=True)
        except Exception as exc:  # already finished, or its worker is gone
            log.debug("cancel failed: %s", exc)
        _bury(handle)

    def fetch(self, handle: _Handle) -> Any:
        import ray

        return ray.get(handle.value)

    def fetch_many(self, handles: Sequence[_Handle]) -> list[Any]:
        import ray

        return ray.get([h.value for h in handles])

    def alive_nodes(self) -> set[str]:
        import ray

        return {n["NodeID"] for n in ray.nodes() if n["Alive"]}

    def close(self) -> None:
        self._prepared = {}
        self._specs = {}
        self._fn_refs = {}
        self._boxes = {}
        self._remotes = {}


def _call(ctx: NodeContext, inputs: Sequence[Any], item: MapItem | None,
          key: WorkerKey | None) -> tuple[int | tuple, list[Any]]:
    """A task's call (see :func:`_execute`; sent as :func:`_head` says) and its input arguments, for one node's
    attempt.

    A plain node passes its attempt number and its inputs' refs. A mapped input passes each of its items' refs (Ray
    resolves them) and how to regroup them; an item passes its value (Ray inlines a small one in the task, puts a
    large one in the object store); a node keyed in its worker gets the metadata of the inputs whose data versions
    are not known yet, after them."""
    if item is None and key is None and not any(h.__class__ is MapOutput for h in inputs):
        return ctx.attempt, [h.value for h in inputs]
    args, groups = flatten_inputs(inputs, lambda h: h.value)
    metas = [] if key is None else [h.meta for h, v in zip(inputs, key.versions) if v is None]
    return (ctx.attempt, groups, None if item is None else tuple(item), key), args + metas


def _bury(handle: _Handle) -> None:
    """Read the error an attempt the scheduler gave up on ends with, whenever it ends, so that Ray never reports
    it as unhandled.

    Ray logs "Unhandled error ... ray::<node>()" when the last ref to an object holding a task's error goes away
    and nobody read the error, also when the ref went away while the task was still pending and the error came
    later (a skipped node's task fails once its crashed input's failure reaches it, possibly after the run). A
    future on the metadata ref keeps the attempt's refs until the task is done and reads the metadata (a few
    bytes) then, off the driver loop, in Ray's own callback thread: nothing waits for it, not even the end of the
    run. When the metadata holds an error the value holds one too (Ray stores it in every return) and is read as
    well; a value that is not an error (an attempt that succeeded after being discarded) is never read: it may
    be large, and Ray reports nothing about it.
    """
    try:
        handle.meta.future().add_done_callback(functools.partial(_read_value_if_failed, handle.value))
    except Exception as exc:  # noqa: BLE001 - housekeeping only (e.g. Ray shut down): never fail a run over it
        log.debug("cannot watch a discarded attempt: %s", exc)


def _read_value_if_failed(value: Any, meta: Any) -> None:
    try:
        if meta.exception() is not None:
            _read_later(value)
    except Exception as exc:  # noqa: BLE001 - runs in Ray's callback thread
        log.debug("cannot read a discarded attempt's value: %s", exc)


def _read_later(ref: Any) -> None:
    """Read ``ref`` (an error, or done soon) when it is done, without waiting for it here."""
    try:
        ref.future()  # Ray keeps the ref until it is done, reads it then, and drops it
    except Exception as exc:  # noqa: BLE001 - housekeeping only
        log.debug("cannot read a failed attempt's value: %s", exc)


def check_schedulable(nodes: Sequence[Node], machines: Sequence[dict[str, float]]) -> None:
    """Raise :class:`UnschedulableNodeError` for a node whose request fits on no machine of the cluster.

    Ray would keep such a task pending forever (waiting for an autoscaler); on a fixed cluster that is
    a hang, so it is an error before anything runs unless the run says ``wait_for_resources=True``.
    """
    for node in nodes:
        request = {"CPU": node.num_cpus, "GPU": node.num_gpus, "memory": node.memory or 0, **node.resources}
        request = {k: v for k, v in request.items() if v}
        if not any(all(m.get(k, 0) >= v for k, v in request.items()) for m in machines):
            have = sorted({k for m in machines for k in m if not k.startswith("node:")})
            raise UnschedulableNodeError(
                f"node {node.name!r} asks for {request}, which no node of the Ray cluster has "
                f"(resources present: {have}); pass wait_for_resources=True to wait for an autoscaler",
                nodes=(node.name,))


def classify_ray_error(exc: BaseException) -> ErrorInfo:
    """Map what ``ray.get`` raised for an attempt to an :class:`ErrorInfo` with the right ``kind``."""
    import ray.exceptions as rx

    cause = getattr(exc, "cause", None)
    if isinstance(exc, rx.RayTaskError) and isinstance(cause, rx.RayError):
        exc = cause  # e.g. "an input argument could not be computed": the input's system error
    if isinstance(exc, rx.OutOfMemoryError):
        kind = ErrorKind.OOM
    elif isinstance(exc, (rx.NodeDiedError, rx.LocalRayletDiedError)):
        kind = ErrorKind.NODE_LOST
    elif isinstance(exc, rx.WorkerCrashedError):
        kind = ErrorKind.WORKER_DIED
    elif isinstance(exc, (rx.ObjectLostError, rx.OwnerDiedError)):
        kind = ErrorKind.OBJECT_LOST
    elif isinstance(exc, rx.TaskCancelledError):
        kind = ErrorKind.CANCELLED
    elif isinstance(exc, rx.RayTaskError):
        # The task raised outside the node function: its output could not be serialised
        # (UnserialisableOutputError), or the function could not be unpickled on the worker. Report the
        # underlying error as the node's own.
        return error_info(cause if cause is not None else exc, traceback_text=str(exc))
    else:
        kind = ErrorKind.SYSTEM
    wrapped = SystemFailureError(kind, f"{type(exc).__name__}: {exc}")
    return error_info(wrapped, kind=kind, traceback_text=f"{type(exc).__name__}: {exc}")
