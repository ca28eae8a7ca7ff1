"""The checkpoint part of a run's plan, made in the driver before anything runs: every node's cache key,
where its worker stores its output, and which nodes are not run at all (fresh in the cache, or already
done by the run being resumed)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from ..dag import DAG
from ..result import NodeStatus
from ..storage.base import Storage
from . import layout
from .keys import cache_keys
from .store import OutputTarget, StoredRef, fresh_objects

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
    heartbeat: Callable[[], None] = lambda: None


def plan_checkpoints(dag: DAG, order: list[str], storage: Storage, run_id: str,
                     resumed: dict[str, dict[str, str]] | None = None) -> CheckpointPlan:
    """Cache keys and reuse decisions for a run of ``dag`` on ``storage``.

    ``resumed``: the succeeded node records of the run being resumed (node -> record metadata). A node
    whose record names the same key and whose object is still there is RESUMED; else a node whose
    cache policy allows it and whose fresh, complete object exists is CACHED; every other node runs.
    """
    keys = cache_keys(dag, order, run_id=run_id)  # cache=False: salted per run (checkpointed for resume only)
    policies = {n: dag.cache_policy_of(n) for n in order}
    targets = {n: OutputTarget(storage, dag.name, run_id, n, keys[n], policies[n].ttl_s) for n in order}
    found, damaged, expired = fresh_objects(storage, keys)
    if damaged:
        log.warning("stored output(s) of %s are damaged (truncated or altered): computing them again",
                    ", ".join(sorted(damaged)))
    reuse: dict[str, tuple[NodeStatus, StoredRef]] = {}
    now = time.time()
    for n in order:
        if n not in found:
            continue
        ttl = policies[n].ttl_s  # today's policy counts too, not only the expiry written with the object
        if ttl is not None and float(found[n].metadata.get("created") or 0) + ttl <= now:
            expired.append(n)
            continue
        ref = StoredRef(storage, layout.object_key(keys[n]), n)
        record = (resumed or {}).get(n)
        if record is not None and record.get("cache_key") == keys[n]:
            reuse[n] = (NodeStatus.RESUMED, ref)
        elif policies[n].enabled:
            reuse[n] = (NodeStatus.CACHED, ref)
    log.info("checkpoint plan: %d of %d node(s) reused (%d cached, %d resumed)", len(reuse), len(order),
             sum(1 for s, _ in reuse.values() if s is NodeStatus.CACHED),
             sum(1 for s, _ in reuse.values() if s is NodeStatus.RESUMED))
    return CheckpointPlan(storage, keys, targets, reuse, damaged=damaged, expired=expired)
