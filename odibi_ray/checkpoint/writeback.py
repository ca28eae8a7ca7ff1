"""Write-behind checkpoints: the worker hands its output to a writer thread of its own process and returns at
once, so consumers start while the checkpoint is being written; the driver confirms every write before the run
ends.

Why: on a remote store a write is a request of milliseconds to tens of milliseconds (ADLS from another region:
~20 ms). Written inline, every node of a chain waits for it; written behind, the chain runs at the speed of the
tasks and the writes overlap each other. Consumers never need the checkpoint (they get the value through Ray's
object store), and keys that cover their inputs' content make any subset of stored objects consistent, so a write
still in flight when a driver dies is just a node that resume recomputes.

A node counts as checkpointed only once its object is confirmed: at the end of the run the driver looks the
pending objects up (one listing, or look-ups, as the plan does) until all are there; one that does not appear
(its worker process died with the write queued, or the write failed) is written by the driver itself from the
value Ray holds, and if that fails too the node fails with the storage error. Used on remote stores by default;
on a local folder a write costs a few hundred microseconds of CPU and there is no latency to hide (measured in
benchmarks/bench_checkpoint.py), so it stays inline there.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Mapping

from ..errors import StorageError, StorageUnavailableError
from .lookup import find_objects, head_each
from .objectmeta import CheckpointMeta
from .store import OutputTarget, Provenance, encode_output, store_encoded, write_output

log = logging.getLogger(__name__)

#: Writer threads per worker process (writes are I/O: they overlap each other and the next tasks).
WRITER_THREADS = 8
#: Up to this many pending objects the driver looks each up (concurrently) rather than list the pipeline's.
HEAD_UP_TO = 64
#: The driver waits this long for a pending write to show up after the last one did, then writes it itself: a
#: bit more than an adapter's own bounded retries take to give up on a dead endpoint (timeout_s, 10 s).
CONFIRM_PATIENCE_S = 15.0
CONFIRM_POLL_S = 0.01

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


# --- worker side ---------------------------------------------------------------------------------

def write_behind(target: OutputTarget, value: Any, made: Provenance) -> tuple[str, str]:
    """Encode the checkpoint of ``value`` now (a value its consumers change later is not what gets stored; an
    output that cannot be encoded fails its attempt here, as inline), queue the put on this process's writer
    threads and return the payload's SHA-256 and codec (the output's data version)."""
    payload, md = encode_output(target, value, made)
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="odibi-writer")
    _pool.submit(_store, target, payload, md)
    return md["sha256"], md["codec"]


def _store(target: OutputTarget, payload: bytes | bytearray, md: dict[str, str]) -> None:
    try:
        store_encoded(target, payload, md)
    except Exception as exc:  # the driver finds the object missing and writes it itself
        log.warning("background checkpoint of node %r failed (%s: %s); the driver will write it", target.node,
                    type(exc).__name__, exc)


# --- driver side ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Confirmed:
    """How a pending checkpoint ended: bytes this run wrote (0: another run's equal object was there first),
    or the error that kept it from being written at all (the store's, or Ray's when the value was lost too)."""

    bytes_written: int = 0
    error: Exception | None = None


def stored_now(targets: Mapping[str, OutputTarget], pending: Mapping[str, Provenance]) -> dict[str, Confirmed]:
    """One look at the store: which of ``pending`` are stored now, as this attempt wrote them (or as another run
    did, fresh and intact by its metadata). Raises :class:`StorageError` when the store cannot be asked."""
    if not pending:
        return {}
    first = targets[next(iter(pending))]
    wanted = {n: targets[n].object_key for n in pending}
    found = (head_each(first.storage, wanted) if len(wanted) <= HEAD_UP_TO
             else find_objects(first.storage, first.pipeline, wanted))
    out: dict[str, Confirmed] = {}
    now = time.time()
    for node, info in found.items():
        meta = CheckpointMeta.from_info(info)
        if targets[node].trust.refusal(info.key, info.metadata) is not None:
            continue  # not one the engine signed: not this write
        ours = meta is not None and meta.run_id == targets[node].run_id and meta.attempt == pending[node].attempt
        if meta is None or not (ours or (meta.fresh(now, targets[node].ttl_s) and not targets[node].replace)):
            continue  # damaged, expired or refreshed on purpose (what the plan found there): not this write
        out[node] = Confirmed(info.size if ours else 0)
    return out


def confirm_writes(targets: Mapping[str, OutputTarget], pending: Mapping[str, Provenance],
                   fetch: Callable[[str], Any]) -> dict[str, Confirmed]:
    """Wait until the objects of ``pending`` (node -> what its attempt was) are stored; write the ones that never
    show up from their values (``fetch(node)``) here. Returns each node's outcome; never raises for storage.

    A store that cannot be asked (an outage: the adapter gave up after its own bounded retries) ends the wait at
    once: every node not confirmed yet gets that error, without one more request per node (each would take the
    adapter's whole retry budget)."""
    if not pending:
        return {}
    wanted = {n: targets[n].object_key for n in pending}
    out: dict[str, Confirmed] = {}
    last_progress = time.monotonic()
    down: StorageError | None = None
    while wanted and time.monotonic() - last_progress < CONFIRM_PATIENCE_S:
        try:
            found = stored_now(targets, {n: pending[n] for n in wanted})
        except StorageError as exc:
            down = exc
            break
        out.update(found)
        for node in found:
            del wanted[node]
        if found:
            last_progress = time.monotonic()
        elif wanted:
            time.sleep(CONFIRM_POLL_S)
    for node in list(wanted):
        if down is not None:
            out[node] = Confirmed(error=down)
            continue
        log.warning("checkpoint of node %r did not arrive from its worker; the driver writes it", node)
        try:
            out[node] = Confirmed(write_output(targets[node], fetch(node), pending[node]))
        except StorageUnavailableError as exc:  # the store went away: the rest would only wait as long again
            down = exc
            out[node] = Confirmed(error=exc)
        except Exception as exc:  # the store refused, or the value is gone with its Ray node: not checkpointed
            out[node] = Confirmed(error=exc)
    if down is not None:
        log.error("storage unavailable while confirming checkpoints (%s); %d node(s) not checkpointed", down,
                  sum(1 for c in out.values() if c.error is down))
    return out
