"""Checkpoints and the content-addressed cache: the storage layout (:mod:`.layout`), cache keys (:mod:`.keys`,
:mod:`.canonical`), the one stored-object metadata type (:mod:`.objectmeta`), codecs, signing (:mod:`.trust`),
the plan of what is reused (:mod:`.lookup`, :mod:`.plan`), worker-side writes (:mod:`.store`, :mod:`.writeback`),
run manifests and resume (:mod:`.runs`, :mod:`.liveness`, :mod:`.manifest_writer`), housekeeping and migration.

The seed's managers (``CloudCacheManager``, ``DistributedCheckpointManager``) live in :mod:`odibi_ray.compat`;
``odibi_ray.checkpoint.distributed_checkpoint_manager`` is the seed's import path for the second one."""

from .housekeeping import PurgeReport, keep_last_n, purge, purge_runs
from .objectmeta import CheckpointMeta
from .runs import run_checkpoints

__all__ = ["CheckpointMeta", "PurgeReport", "keep_last_n", "purge", "purge_runs", "run_checkpoints"]
