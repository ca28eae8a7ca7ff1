"""The checkpoint part of a run's plan, made in the driver before anything runs: the cache keys known then,
where each worker stores its output, and which nodes are not run at all.

Cached and resumed are one mechanism: a node is reusable when the object at its key is present, complete, fresh
and trusted. A key covers the node's code and params and its inputs' *data versions* — the SHA-256 of each
input's stored output (:mod:`.keys`) — so keys are found level by level: a level's nodes whose inputs are all
reused are keyed from those outputs' metadata and looked up in one batch (:class:`~.lookup.StoredIndex`: at most
one listing of the pipeline's prefix for the whole run on a remote store). A node below one that runs
(``deferred``) is keyed when that input has run, from the hash its worker sends back, and looked up then
(:meth:`CheckpointPlan.resolve`): when the recomputed input wrote the same bytes as before, the node is reused
("early cutoff"). A ``cache=False`` node's own key is salted with the run id: no other run finds it, but resuming
the same run does. Which word a reused node gets only tells where its object came from: ``resumed`` when the run
being resumed made it, ``cached`` when another run did.

Mapped nodes' items are known only once the node they map over has run. Their items' keys and look-ups are made
then (:meth:`CheckpointPlan.plan_items`), the mapped node's key becomes its items' (:meth:`CheckpointPlan.close_map`),
and the nodes downstream of it are deferred too.
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
from ..errors import StorageError
from ..execution.result import NodeStatus
from ..storage.base import ObjectInfo, Storage
from . import layout
from .codecs import CODECS
from .keys import (KeyRecipe, data_version, item_key, item_key_base, key_recipe, key_version, map_key, map_version,
                   node_key)
from .legacy import store_layout
from .lookup import StoredIndex, find_objects, head_each
from .objectmeta import CheckpointMeta
from .runs import PriorNode
from .store import OutputTarget, StoredRef
from .trust import TRUST_ALL, Trust

log = logging.getLogger(__name__)

#: After a look-up of a deferred node failed (an outage: the adapter gave up after its own retries), the nodes that
#: follow run without one for this long, so that an outage does not cost every node the adapter's retry budget.
LOOKUP_PAUSE_S = 30.0


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

    #: Nodes below a node that runs (or a mapped node): keyed once their inputs have run (:meth:`resolve`).
    deferred: frozenset[str] = frozenset()
    #: node -> the data version of its output (:func:`~.keys.data_version`), once known: what its consumers' keys
    #: cover. Set by the plan for reused nodes, by the scheduler (:meth:`set_version`) for the others.
    versions: dict[str, str] = field(default_factory=dict)
    #: Finds stored objects for the plan and for :meth:`resolve` (None: made by :func:`plan_checkpoints`).
    index: StoredIndex | None = None
    #: Why a look-up of :meth:`resolve` failed (the store did not answer); None while they work.
    lookups_failed: StorageError | None = None
    _lookups_again: float = 0.0  # (monotonic) when a look-up is tried again after one failed
    _recipes: dict[str, KeyRecipe] = field(default_factory=dict)

    def recipe(self, name: str) -> KeyRecipe:
        """Node ``name``'s key but for its inputs' data versions, for a worker to finish (made once per run)."""
        assert self.dag is not None
        recipe = self._recipes.get(name)
        if recipe is None:
            recipe = self._recipes[name] = key_recipe(self.dag, name, run_id=self.run_id)
        return recipe
    #: A mapped node's key before its items were known (:meth:`close_map` makes ``keys[name]`` its items').
    own_keys: dict[str, str] = field(default_factory=dict)

    def set_version(self, name: str, sha256: str, codec: str) -> str:
        """``name`` has run and its worker encoded an output with this SHA-256 ("" when it stored none: its key
        stands in, :func:`~.keys.key_version`): what its consumers' keys cover. Returned."""
        version = data_version(sha256, codec) if sha256 else key_version(self.keys.get(name, ""))
        self.versions[name] = version
        return version

    def lookups_paused(self) -> bool:
        """Whether look-ups are paused after one failed (see :data:`LOOKUP_PAUSE_S`)."""
        return self.lookups_failed is not None and time.monotonic() < self._lookups_again

    def input_versions(self, name: str) -> tuple[str | None, ...]:
        """The data versions ``name``'s key would cover now (None where an input has none yet)."""
        assert self.dag is not None
        return tuple(self.versions.get(up) for up in self.dag[name].input_map.values())

    def rekey(self, name: str) -> str:
        """Compute ``name``'s key from its inputs' data versions now (a deferred node, once its inputs have run)
        and point its checkpoint target at it."""
        assert self.dag is not None
        key = node_key(self.dag, name, self.versions, run_id=self.run_id)
        self.keys[name] = key
        self.targets[name] = dataclasses.replace(self.targets[name], cache_key=key)
        return key

    def resolve(self, name: str) -> tuple[NodeStatus, StoredRef] | None:
        """:meth:`rekey` a deferred node and look it up (in the run's listing on a remote store, else one
        ``head``): how it is reused, or None (it runs). A reused node's data version is set."""
        assert self.dag is not None
        self.rekey(name)
        policy = self.dag.cache_policy_of(name)
        if name in self.refresh or not (policy.enabled or self.resuming):
            return None
        if self.lookups_paused():
            return None  # the store did not answer a look-up just now: not asked again for a while
        index = self.index or StoredIndex(self.storage, self.dag.name, 1)
        try:
            found = index.find({name: self.targets[name].object_key}).get(name)
        except StorageError as exc:  # a miss: the node runs (its worker's write then meets the outage, if any)
            log.warning("could not look up the stored output of node %r (%s); running it, and the nodes that follow "
                        "for %.0f s without looking them up", name, exc, LOOKUP_PAUSE_S)
            self.lookups_failed = exc
            self._lookups_again = time.monotonic() + LOOKUP_PAUSE_S
            return None
        status = _decide(self, name, found, policy, time.time(), None) if found is not None else None
        if status is None or found is None:
            return None
        self.versions[name] = _version_of(found)
        return status, StoredRef(self.storage, found.key, name, self.trust)

    def close_map(self, name: str, item_keys: list[str], failed: list[int],
                  item_versions: list[str | None]) -> str:
        """Mapped node ``name``'s items are closed: its key becomes theirs (:func:`~.keys.map_key`: what they share
        — not the key of the node mapped over — and each item's key), and its data version its items' outputs'
        (:func:`~.keys.map_version`); the key is returned."""
        assert self.dag is not None
        self.own_keys.setdefault(name, self.keys[name])
        self.keys[name] = map_key(item_key_base(self.dag, name, self.versions), self.dag[name], item_keys, failed)
        self.versions[name] = map_version(self.dag[name], item_versions, failed, self.keys[name])
        return self.keys[name]

    def plan_items(self, name: str, item_names: list[str], digests: list[str]) -> ItemPlan:
        """The cache keys of mapped node ``name``'s items (named ``item_names``, with content hashes ``digests``),
        their checkpoint targets (added to :attr:`targets`), and which are reused from storage — with the same
        rules as a node (trusted, complete, fresh; ``resumed`` when this run made it). One batched look-up."""
        assert self.dag is not None
        policy = self.dag.cache_policy_of(name)
        base = item_key_base(self.dag, name, self.versions)
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
                self.versions[item] = _version_of(info)  # an item's: what its mapped node's data version covers
        return ItemPlan(keys, reuse)


class ItemPlan(NamedTuple):
    """The checkpoint part of a mapped node's items (:meth:`CheckpointPlan.plan_items`)."""

    keys: list[str]  # per item, in item order
    reuse: dict[str, tuple[NodeStatus, StoredRef]]  # items not run: by item name


def plan_checkpoints(dag: DAG, order: list[str], storage: Storage, run_id: str,
                     resumed: Mapping[str, PriorNode] | None = None, write_behind: bool = False,
                     refresh: frozenset[str] | set[str] = frozenset(), trust: Trust = TRUST_ALL) -> CheckpointPlan:
    """Cache keys and reuse decisions for a run of ``dag`` on ``storage``, level by level (see the module's
    docstring): a node is keyed here when its inputs are all reused, else it is ``deferred``.

    ``resumed``: when this run resumes an earlier one (same ``run_id``), what that run's manifest says of its
    nodes; a node reused from an object the resumed run made is RESUMED, from another run's object CACHED.
    Nodes whose cache policy is off are looked up only when resuming (their key is this run's own).
    ``write_behind``: workers queue their checkpoint and return (:mod:`.writeback`); the scheduler confirms.
    ``refresh``: nodes run although stored (recomputed on purpose); their workers write over the stale object.
    ``trust``: what a stored object must be to be reused (signed with the run's key, not a pickle when pickles
    are off); one that is not is a miss, logged with its key.
    """
    legacy = store_layout(storage).legacy  # first: a new store gets its layout marker before any object
    policies = {n: dag.cache_policy_of(n) for n in order}
    plan = CheckpointPlan(storage, {}, {}, dag=dag, run_id=run_id, resuming=resumed is not None,
                          refresh=frozenset(refresh), trust=trust)
    prior = _prior_done(resumed, policies) if not legacy else {}
    # a resume looks up only what the resumed run did not finish: against its many stored objects, key by key
    plan.index = StoredIndex(storage, dag.name, len(order) - len(prior), known_stored=len(prior))
    mapped = {n for n in order if dag[n].mapping is not None}
    deferred: set[str] = set()
    fingerprints: dict[tuple[int, str | None], str] = {}
    now = time.time()
    for level in _levels(dag, order):
        keyed = [n for n in level if all(up in plan.versions for up in dag[n].input_map.values())]
        deferred.update(n for n in level if n not in keyed)
        for n in keyed:  # cache=False: salted per run (checkpointed for resume only)
            plan.keys[n] = node_key(dag, n, plan.versions, run_id=run_id, fingerprints=fingerprints)
        trusted = {n for n in keyed if n not in refresh and n not in mapped and n in prior
                   and prior[n].key == plan.keys[n]}
        for n in trusted:  # done in the run being resumed: its object is checked when read (SHA-256), not now
            plan.reuse[n] = (NodeStatus.RESUMED, StoredRef(storage, layout.object_key(dag.name, plan.keys[n]), n,
                                                           trust))
            plan.versions[n] = prior[n].version
        wanted = {n: layout.object_key(dag.name, plan.keys[n]) for n in keyed if n not in trusted
                  and n not in refresh and n not in mapped and (policies[n].enabled or resumed is not None)}
        found = _lookup(plan.index, storage, wanted, plan.keys, legacy)
        for n in keyed:
            if n in found:
                before = (resumed or {}).get(n)
                status = _decide(plan, n, found[n], policies[n], now, before is not None and before.status in _DONE
                                 and before.key == plan.keys[n])
                if status is not None:
                    plan.reuse[n] = (status, StoredRef(storage, found[n].key, n, trust))
                    plan.versions[n] = _version_of(found[n])
    plan.deferred = frozenset(deferred)
    plan.targets = {n: OutputTarget(storage, dag.name, run_id, n, plan.keys.get(n, ""), policies[n].ttl_s,
                                    write_behind, n in refresh, trust) for n in order}
    if plan.damaged:
        log.warning("stored output(s) of %s are damaged (truncated or altered): computing them again",
                    ", ".join(sorted(plan.damaged)))
    log.info("checkpoint plan: %d of %d node(s) reused (%d cached, %d resumed), %d keyed once their inputs have run",
             len(plan.reuse), len(order), sum(1 for s, _ in plan.reuse.values() if s is NodeStatus.CACHED),
             sum(1 for s, _ in plan.reuse.values() if s is NodeStatus.RESUMED), len(deferred))
    return plan


def _levels(dag: DAG, order: list[str]) -> list[list[str]]:
    """``order`` grouped by topological level (a level's nodes have all their inputs in earlier levels)."""
    level_of: dict[str, int] = {}
    levels: list[list[str]] = []
    for n in order:
        level = 1 + max((level_of[up] for up in dag[n].input_map.values()), default=-1)
        level_of[n] = level
        if level == len(levels):
            levels.append([])
        levels[level].append(n)
    return levels


def _version_of(info: ObjectInfo) -> str:
    """The data version of a stored output (its metadata's SHA-256, checked by :func:`_decide` before reuse)."""
    meta = CheckpointMeta.from_info(info)
    assert meta is not None  # _decide reuses no object whose metadata does not parse
    return data_version(meta.sha256, meta.codec)


def _decide(plan: CheckpointPlan, n: str, info: ObjectInfo, policy: CachePolicy, now: float,
            done_before: bool | None) -> NodeStatus | None:
    """Whether the object found for ``n`` is reused, and as what (None: it is not, and the plan says why).
    ``done_before``: the run being resumed finished ``n`` under this key (None: not known, an item)."""
    status, why = reuse_decision(info, policy.ttl_s, plan.trust, now, plan.resuming, plan.run_id, policy.enabled,
                                 done_before)
    if why == "untrusted":  # never decoded; counted with the damaged ones
        log.warning("stored output of node %r at %s is not trusted (%s): computing it again", n, info.key,
                    plan.trust.refusal(info.key, info.metadata))
    if why in ("damaged", "untrusted"):
        plan.damaged.append(n)
    elif why == "expired":
        plan.expired.append(n)
    return status


def reuse_decision(info: ObjectInfo, ttl_s: float | None, trust: Trust, now: float, resuming: bool, run_id: str,
                   enabled: bool, done_before: bool | None) -> tuple[NodeStatus | None, str]:
    """The one rule for reusing a stored output (the plan's, and a Ray worker's that keyed its node itself):
    ``(CACHED or RESUMED, "")``, or ``(None, why)`` with why "damaged", "untrusted", "expired" or "" (found, but
    a node whose cache is off is reused only by a resume of the run that made it)."""
    meta = CheckpointMeta.from_info(info)
    if meta is None or meta.codec not in CODECS:  # (a codec this version cannot decode: a newer engine's)
        return None, "damaged"
    if trust.refusal(info.key, info.metadata) is not None:
        return None, "untrusted"
    if not meta.fresh(now, ttl_s):  # today's policy counts too, not only the written expiry
        return None, "expired"
    if resuming and (done_before or meta.run_id == run_id or not enabled):
        return NodeStatus.RESUMED, ""
    return (NodeStatus.CACHED, "") if enabled else (None, "")


_DONE = frozenset({NodeStatus.SUCCEEDED.value, NodeStatus.CACHED.value, NodeStatus.RESUMED.value})


def _prior_done(resumed: Mapping[str, PriorNode] | None, policies: Mapping[str, CachePolicy]
                ) -> dict[str, PriorNode]:
    """Nodes a resume may reuse without a look-up (when their key is still the one the manifest has): the run being
    resumed finished them, its manifest has their output's data version, and no TTL can have expired their object.
    Resume then costs requests for the unfinished nodes only; an object gone since (purged) or damaged is found when
    a worker or the result reads it (SHA-256 checked there) and its node is computed again (scheduler:
    ``_recompute_stored_input``, ``_load_stored``)."""
    if resumed is None:
        return {}
    return {n: prior for n, prior in resumed.items() if prior.status in _DONE and prior.version
            and n in policies and policies[n].ttl_s is None}


def _lookup(index: StoredIndex, storage: Storage, wanted: dict[str, str], keys: dict[str, str],
            legacy: bool) -> dict[str, ObjectInfo]:
    """The stored objects of ``wanted``; on a store that also holds layout-1 checkpoints, the ones not found
    are looked for at their layout-1 keys."""
    found = index.find(wanted)
    missing = {n: layout.legacy_object_key(keys[n]) for n in wanted if n not in found}
    if missing and legacy:
        found.update(head_each(storage, missing))
    return found
