"""Checkpoints and the content-addressed cache: layout, cache keys, codecs, worker-side writes, resume,
and the seed's CloudCacheManager / DistributedCheckpointManager."""

from .cache_manager import CloudCacheManager
from .checkpoint_manager import Checkpoint, CheckpointCorruptError, DistributedCheckpointManager
from .housekeeping import PurgeReport, keep_last_n, purge, purge_runs
from .objectmeta import CheckpointMeta
from .runs import run_checkpoints

__all__ = ["CloudCacheManager", "DistributedCheckpointManager", "Checkpoint", "CheckpointCorruptError",
           "PurgeReport", "keep_last_n", "purge", "purge_runs", "CheckpointMeta", "run_checkpoints"]
