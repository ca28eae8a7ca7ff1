"""The checkpoint part of a run's plan, made in the driver before anything runs: every node's cache key,
where its worker stores its output, and which nodes are not run at all.

Cached and resumed are one mechanism: keys are Merkle keys known before the run, so a node is reusable when
the object at its key is present, complete and fresh. A ``cache=False`` node's key is salted with the run id:
no other run finds it, but resuming the same run does. Which word a reused node gets only tells where its
object came from: ``resumed`` when the run being resumed made it, ``cached`` when another run did.

Mapped nodes are the exception: their items are known only once the node they map over has run. Their items'
keys and look-ups are made then (:meth:`CheckpointPlan.plan_items`), the mapped node's key becomes its items'
(:meth:`CheckpointPlan.close_map`), and the nodes downstream of it (``deferred``) are keyed and looked up when
they are about to run (:meth:`CheckpointPlan.resolve`), one ``head`` each.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import NamedTuple
from dataclasses import dataclass, field
from collections.abc import Callable, Mapping

from ..definition.dag import DAG
from ..definition.policy import CachePolicy
from ..execution.result import NodeStatus
from ..storage.base import ObjectInfo, Storage
from . import layout
from .keys import cache_keys, item_key, item_key_base, map_key, node_key
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
    #: What the look-up of a mapped node's items needs (:meth:`plan_items`), set by :func:`plan_checkpoints`.
    dag: DAG | None = None
    run_id: str = ""
    resuming: bool = False
    refresh: frozenset[str] = frozenset()
    trust: Trust = TRUST_ALL

    #: Nodes downstream of a mapped node: their keys are known only once its items are (:meth:`resolve`).
    deferred: frozenset[str] = frozenset()
    #: A mapped node's key before its items were known (:meth:`close_map` makes ``keys[name]`` its items').
    own_keys: dict[str, str] = field(default_factory=dict)

    def rekey(self, name: str) -> str:
        """Compute ``name``'s key again from its inputs' keys now (a node downstream of a mapped node, once its
        inputs are closed) and point its checkpoint target at it."""
        assert self.dag is not None
        key = node_key(self.dag, name, self.keys, run_id=self.run_id)
        self.keys[name] = key
        self.targets[name] = dataclasses.replace(self.targets[name], cache_key=key)
        return key

    def resolve(self, name: str) -> tuple[NodeStatus, StoredRef] | None:
        """:meth:`rekey` a deferred node and look it up (one ``head``): how it is reused, or None (it runs)."""
        assert self.dag is not None
        self.rekey(name)
        policy = self.dag.cache_policy_of(name)
        if name in self.refresh or not (policy.enabled or self.resuming):
            return None
        found = head_each(self.storage, {name: self.targets[name].object_key}).get(name)
        status = _decide(self, name, found, policy, time.time(), None) if found is not None else None
        return None if status is None or found is None else (status, StoredRef(self.storage, found.key, name,
                                                                                  self.trust))

    def close_map(self, name: str, item_keys: list[str], failed: list[int]) -> str:
        """Mapped node ``name``'s items are closed: its key becomes theirs (:func:`~.keys.map_key`: what they share
        — not the key of the node mapped over — and each item's key); returned."""
        assert self.dag is not None
        self.own_keys.setdefault(name, self.keys[name])
        self.keys[name] = map_key(item_key_base(self.dag, name, self.keys), self.dag[name], item_keys, failed)
        return self.keys[name]

    def plan_items(self, name: str, item_names: list[str], digests: list[str]) -> ItemPlan:
        """The cache keys of mapped node ``name``'s items (named ``item_names``, with content hashes ``digests``),
        their checkpoint targets (added to :attr:`targets`), and which are reused from storage — with the same
        rules as a node (trusted, complete, fresh; ``resumed`` when this run made it). One batched look-up."""
        assert self.dag is not None
        policy = self.dag.cache_policy_of(name)
        base = item_key_base(self.dag, name, self.keys)
        salt = None if policy.enabled else self.run_id
        keys = [item_key(base, d, salt) for d in digests]
        template = self.targets[name]
        refresh = name in self.refresh
        for item, key in zip(item_names, keys):
            self.targets[item] = dataclasses.replace(template, node=item, cache_key=key)
        reuse: dict[str, tuple[NodeStatus, StoredRef]] = {}
        if refresh or not (policy.enabled or self.resuming):
            return ItemPlan(keys, reuse)
        wanted = {item: self.targets[item].object_key for item in item_names}
        found = find_objects(self.storage, self.dag.name, wanted)
        now = time.time()
        for item, info in found.items():
            status = _decide(self, item, info, policy, now, None)
            if status is not None:
                reuse[item] = (status, StoredRef(self.storage, info.key, item, self.trust))
        return ItemPlan(keys, reuse)


class ItemPlan(NamedTuple):
    """The checkpoint part of a mapped node's items (:meth:`CheckpointPlan.plan_items`)."""

    keys: list[str]  # per item, in item order
    reuse: dict[str, tuple[NodeStatus, StoredRef]]  # items not run: by item name


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
    plan = CheckpointPlan(storage, keys, targets, dag=dag, run_id=run_id, resuming=resumed is not None,
                          refresh=frozenset(refresh), trust=trust)
    # A mapped node stores nothing under its own key: its items are looked up once it has them (plan_items). The
    # nodes downstream of it are looked up once its items are known too: their keys cover its items' (resolve).
    mapped = {n for n in order if dag[n].mapping is not None}
    plan.deferred = frozenset(dag.descendants(mapped))
    mapped |= plan.deferred
    trusted = (_trusted(resumed, policies, keys) if not legacy else set()) - set(refresh) - mapped
    for n in trusted:  # done in the run being resumed: its object is checked when read (SHA-256), not now
        plan.reuse[n] = (NodeStatus.RESUMED, StoredRef(storage, targets[n].object_key, n, trust))
    wanted = {n: targets[n].object_key for n in order if n not in trusted and n not in refresh and n not in mapped
              and (policies[n].enabled or resumed is not None)}
    found = _lookup(storage, dag.name, wanted, keys, legacy, known_stored=len(trusted))
    now = time.time()
    for n in order:
        if n in found:
            prior = (resumed or {}).get(n)
            status = _decide(plan, n, found[n], policies[n], now, prior is not None and prior.status in _DONE
                             and prior.key == keys[n])
            if status is not None:
                plan.reuse[n] = (status, StoredRef(storage, found[n].key, n, trust))
    if plan.damaged:
        log.warning("stored output(s) of %s are damaged (truncated or altered): computing them again",
                    ", ".join(sorted(plan.damaged)))
    log.info("checkpoint plan: %d of %d node(s) reused (%d cached, %d resumed)", len(plan.reuse), len(order),
             sum(1 for s, _ in plan.reuse.values() if s is NodeStatus.CACHED),
             sum(1 for s, _ in plan.reuse.values() if s is NodeStatus.RESUMED))
    return plan


def _decide(plan: CheckpointPlan, n: str, info: ObjectInfo, policy: CachePolicy, now: float,
            done_before: bool | None) -> NodeStatus | None:
    """Whether the object found for ``n`` is reused, and as what (None: it is not, and the plan says why).
    ``done_before``: the run being resumed finished ``n`` under this key (None: not known, an item)."""
    meta = CheckpointMeta.from_info(info)
    if meta is None:
        plan.damaged.append(n)
        return None
    refused = plan.trust.refusal(info.key, info.metadata)
    if refused is not None:  # never decoded; counted with the damaged ones
        log.warning("stored output of node %r at %s is not trusted (%s): computing it again", n, info.key, refused)
        plan.damaged.append(n)
        return None
    if not meta.fresh(now, policy.ttl_s):  # today's policy counts too, not only the written expiry
        plan.expired.append(n)
        return None
    if plan.resuming and (done_before or meta.run_id == plan.run_id or not policy.enabled):
        return NodeStatus.RESUMED
    return NodeStatus.CACHED if policy.enabled else None


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
