"""The seed's import path ``odibi_core.checkpoint.distributed_checkpoint_manager`` (see :mod:`odibi_ray.compat`)."""

from ..compat.checkpoint_manager import Checkpoint, CheckpointCorruptError, DistributedCheckpointManager, SyncReport

__all__ = ["Checkpoint", "CheckpointCorruptError", "DistributedCheckpointManager", "SyncReport"]
