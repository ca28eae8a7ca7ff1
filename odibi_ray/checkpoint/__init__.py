"""Checkpoints and the content-addressed cache: layout, cache keys, codecs, worker-side writes, resume,
and the seed's CloudCacheManager / DistributedCheckpointManager."""

from .cache_manager import CloudCacheManager
from .checkpoint_manager import Checkpoint, CheckpointCorruptError, DistributedCheckpointManager, SyncReport
from .housekeeping import PurgeReport, keep_last_n, purge, purge_runs
from .objectmeta import CheckpointMeta
from .runs import run_checkpoints

__all__ = ["Checkpoint", "CheckpointCorruptError", "CheckpointMeta", "CloudCacheManager",
           "DistributedCheckpointManager", "PurgeReport", "SyncReport", "keep_last_n", "purge", "purge_runs",
           "run_checkpoints"]
