"""Keying a node in its Ray worker, so that Ray can still chain it to inputs that have not finished yet.

A node's cache key covers its inputs' *data versions* (checkpoint/keys.py): the hashes their attempts send back.
The Ray backend submits a node as soon as its inputs are *submitted* (Ray starts it once they are done); the
driver does not know their hashes then. So the driver sends the node's :class:`WorkerKey` — its
:class:`~odibi_ray.checkpoint.keys.KeyRecipe`, the data versions it knows, and (as extra task arguments, which Ray
resolves before the task starts) the attempt metadata of the inputs still running — and the worker finishes the
key, looks it up, and either reuses the stored output (early cutoff: the node does not run) or runs the node and
checkpoints it under that key. Its attempt metadata tells the driver the key and whether it reused.

Waiting in the driver for the inputs to finish instead cost the checkpointed layered DAGs of
``benchmarks/bench_checkpoint.py`` 1.16-1.36x -> 1.50-1.84x their floor (measured before this module).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import NamedTuple
from collections.abc import Sequence

from ...checkpoint.keys import KeyRecipe, data_version
from ...checkpoint.plan import reuse_decision
from ...checkpoint.store import OutputTarget, StoredRef
from ...errors import NotFoundError
from ...storage.base import ObjectInfo
from ..attempt import AttemptMeta
from ..result import NodeStatus

log = logging.getLogger(__name__)


class WorkerKey(NamedTuple):
    """How a worker keys its node (one argument of the task, inside its call tuple)."""

    recipe: KeyRecipe
    versions: tuple[str | None, ...]  # per input (recipe.params order): known data version, or None: read the
    #                                   input attempt's metadata, passed after the inputs, in the same order
    look_up: bool  # the node may be reused: its cache is on (or this run resumes) and it is not refreshed
    resuming: bool  # this run resumes an earlier one (a reused object the run made is RESUMED)
    run_id: str
    #: The keys of the objects the run's listing of a remote store holds for this node: the worker looks its key up
    #: only when it is one of them (none on a cold run: no request at all); None: no listing, it always looks up.
    candidates: frozenset[str] | None = None

    @property
    def pending(self) -> int:
        """How many inputs' attempt metadata the task gets as extra arguments."""
        return self.versions.count(None)


class Reused(NamedTuple):
    """A stored output the worker found for its node: it is reused, not run."""

    status: NodeStatus
    ref: StoredRef
    sha256: str
    codec: str


def key_in_worker(wkey: WorkerKey, metas: Sequence[AttemptMeta], target: OutputTarget,
                  node: str) -> tuple[OutputTarget, Reused | None]:
    """The node's checkpoint target under its key, and its stored output if it can be reused. An input whose
    attempt failed has no data version: the target is returned unkeyed (the attempt reports the failed input
    without running or writing anything)."""
    pending = iter(metas)
    versions = []
    for known in wkey.versions:
        if known is None:
            meta = next(pending)
            if meta.error is not None or not meta.output_sha256:
                return target, None
            known = data_version(meta.output_sha256, meta.output_codec)
        versions.append(known)
    target = dataclasses.replace(target, cache_key=wkey.recipe.key(versions))
    if not wkey.look_up:
        return target, None
    try:
        info = _find(wkey, target)
        if info is None:
            return target, None
        status, _ = reuse_decision(info, target.ttl_s, target.trust, time.time(), wkey.resuming, wkey.run_id,
                                   wkey.recipe.salt is None, None)
    except NotFoundError:
        return target, None
    except Exception as exc:  # noqa: BLE001 - a miss: the node runs (its write meets an outage, if there is one)
        log.warning("node %r: could not look up its stored output (%s: %s); running it", node, type(exc).__name__,
                    exc)
        return target, None
    if status is None:
        return target, None
    md = info.metadata
    return target, Reused(status, StoredRef(target.storage, info.key, node, target.trust), md.get("sha256", ""),
                          md.get("codec", ""))


def _find(wkey: WorkerKey, target: OutputTarget) -> ObjectInfo | None:
    """The stored object at the node's key: among the listed candidates, else by one ``head``."""
    if wkey.candidates is not None and target.object_key not in wkey.candidates:
        return None  # not there when the run listed the store (a concurrent run's since: a miss, it runs)
    return target.storage.head(target.object_key)
