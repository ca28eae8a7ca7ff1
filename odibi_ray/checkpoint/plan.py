"""The checkpoint part of a run's plan, made in the driver before anything runs: every node's cache key,
where its worker stores its output, and which nodes are not run at all.

Cached and resumed are one mechanism: keys are Merkle keys known before the run, so a node is reusable when
the object at its key is present, complete and fresh. A ``cache=False`` node's key is salted with the run id:
no other run finds it, but resuming the same run does. Which word a reused node gets only tells where its
object came from: ``resumed`` when the run being resumed made it, ``cached`` when another run did.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from collections.abc import Callable, Mapping

from ..definition.dag import DAG
from ..definition.policy import CachePolicy
from ..execution.result import NodeStatus
from ..storage.base import ObjectInfo, Storage
from . import layout
from .keys import cache_keys
from .legacy import store_layout
from .lookup import find_objects, head_each
from .objectmeta import CheckpointMeta
from .runs import PriorNode
from .store import OutputTarget, StoredRef
from .trust import TRUST_ALL, Trust

log = logging.getLogger(__name__)


@dataclass
class CheckpointPlan:
    """What the scheduler needs to know about checkpoints for one run."""

    storage: Storage
    keys: dict[str, str]  # node -> key of its stored output (cache key; per run when caching is off)
    targets: dict[str, OutputTarget]
    reuse: dict[str, tuple[NodeStatus, StoredRef]] = field(default_factory=dict)  # nodes not run
    damaged: list[str] = field(default_factory=list)  # nodes whose stored output was found damaged
    expired: list[str] = field(default_factory=list)  # nodes whose stored output had expired (evicted: rerun)
    #: Called from the driver loop; returns why the driver must stop (the run was taken over), else None.
    heartbeat: Callable[[], str | None] = lambda: None


def plan_checkpoints(dag: DAG, order: list[str], storage: Storage, run_id: str,
                     resumed: Mapping[str, PriorNode] | None = None, write_behind: bool = False,
                     refresh: frozenset[str] | set[str] = frozenset(), trust: Trust = TRUST_ALL) -> CheckpointPlan:
    """Cache keys and reuse decisions for a run of ``dag`` on ``storage``.

    ``resumed``: when this run resumes an earlier one (same ``run_id``), what that run's manifest says of its
    nodes; a node reused from an object the resumed run made is RESUMED, from another run's object CACHED.
    Nodes whose cache policy is off are looked up only when resuming (their key is this run's own).
    ``write_behind``: workers queue their checkpoint and return (:mod:`.writeback`); the scheduler confirms.
    ``refresh``: nodes run although stored (recomputed on purpose); their workers write over the stale object.
    ``trust``: what a stored object must be to be reused (signed with the run's key, not a pickle when pickles
    are off); one that is not is a miss, logged with its key.
    """
    legacy = store_layout(storage).legacy  # first: a new store gets its layout marker before any object
    keys = cache_keys(dag, order, run_id=run_id)  # cache=False: salted per run (checkpointed for resume only)
    policies = {n: dag.cache_policy_of(n) for n in order}
    targets = {n: OutputTarget(storage, dag.name, run_id, n, keys[n], policies[n].ttl_s, write_behind, n in refresh,
                               trust) for n in order}
    plan = CheckpointPlan(storage, keys, targets)
    trusted = (_trusted(resumed, policies, keys) if not legacy else set()) - set(refresh)
    for n in trusted:  # done in the run being resumed: its object is checked when read (SHA-256), not now
        plan.reuse[n] = (NodeStatus.RESUMED, StoredRef(storage, targets[n].object_key, n, trust))
    wanted = {n: targets[n].object_key for n in order
              if n not in trusted and n not in refresh and (policies[n].enabled or resumed is not None)}
    found = _lookup(storage, dag.name, wanted, keys, legacy, known_stored=len(trusted))
    now = time.time()
    for n in order:
        if n not in found:
            continue
        info = found[n]
        meta = CheckpointMeta.from_info(info)
        if meta is None:
            plan.damaged.append(n)
            continue
        refused = trust.refusal(info.key, info.metadata)
        if refused is not None:  # never decoded; counted with the damaged ones
            log.warning("stored output of node %r at %s is not trusted (%s): computing it again", n, info.key, refused)
            plan.damaged.append(n)
            continue
        if not meta.fresh(now, policies[n].ttl_s):  # today's policy counts too, not only the written expiry
            plan.expired.append(n)
            continue
        ref = StoredRef(storage, info.key, n, trust)
        prior = (resumed or {}).get(n)
        done_before = prior is not None and prior.status in _DONE and prior.key == keys[n]
        if resumed is not None and (done_before or meta.run_id == run_id or not policies[n].enabled):
            plan.reuse[n] = (NodeStatus.RESUMED, ref)
        elif policies[n].enabled:
            plan.reuse[n] = (NodeStatus.CACHED, ref)
    if plan.damaged:
        log.warning("stored output(s) of %s are damaged (truncated or altered): computing them again",
                    ", ".join(sorted(plan.damaged)))
    log.info("checkpoint plan: %d of %d node(s) reused (%d cached, %d resumed)", len(plan.reuse), len(order),
             sum(1 for s, _ in plan.reuse.values() if s is NodeStatus.CACHED),
             sum(1 for s, _ in plan.reuse.values() if s is NodeStatus.RESUMED))
    return plan


_DONE = frozenset({NodeStatus.SUCCEEDED.value, NodeStatus.CACHED.value, NodeStatus.RESUMED.value})


def _trusted(resumed: Mapping[str, PriorNode] | None, policies: Mapping[str, CachePolicy],
             keys: Mapping[str, str]) -> set[str]:
    """Nodes a resume reuses without a look-up: the run being resumed finished them (its manifest says so) under
    the key they have now, and no TTL can have expired their object. Resume then costs requests for the
    unfinished nodes only; an object gone since (purged) or damaged is found when a worker or the result reads
    it (SHA-256 checked there) and its node is computed again (scheduler: ``_recompute_stored_input``,
    ``_load_stored``)."""
    if resumed is None:
        return set()
    return {n for n, prior in resumed.items() if prior.status in _DONE and prior.key == keys.get(n)
            and policies[n].ttl_s is None}


def _lookup(storage: Storage, pipeline: str, wanted: dict[str, str], keys: dict[str, str],
            legacy: bool, known_stored: int) -> dict[str, ObjectInfo]:
    """The stored objects of ``wanted``; on a store that also holds layout-1 checkpoints, the ones not found
    are looked for at their layout-1 keys."""
    found = find_objects(storage, pipeline, wanted, known_stored)
    missing = {n: layout.legacy_object_key(keys[n]) for n in wanted if n not in found}
    if missing and legacy:
        found.update(head_each(storage, missing))
    return found
