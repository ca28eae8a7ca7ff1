"""The seed faces: the API odibi_ray's users had before it (the ``odibi_core`` Phase 7 document: ``CloudAdapter``,
``CloudCacheManager``, ``DistributedCheckpointManager``, ``MetricsManager``, ``DistributedExecutor``), kept so
their code runs unchanged with ``odibi_ray`` in place of ``odibi_core``.

They are thin layers over the native engine: ``CloudAdapter`` opens the same :class:`~odibi_ray.storage.base.Storage`
adapters (``CloudAdapter.locate(path)`` gives the store and key), ``DistributedExecutor`` calls
:func:`odibi_ray.run`, and the two managers keep the seed's own storage layouts (a cache of blobs by key, and
named checkpoints synced between a folder and the cloud) beside the native cache and run manifests. New code
should use :func:`odibi_ray.run` with ``storage=``: it caches and checkpoints every node by itself.

The seed's import paths work: ``odibi_ray.cloud``, ``odibi_ray.cache``, ``odibi_ray.metrics`` and
``odibi_ray.checkpoint.distributed_checkpoint_manager`` re-export these classes.
"""

from .cache_manager import CloudCacheManager
from .checkpoint_manager import Checkpoint, CheckpointCorruptError, DistributedCheckpointManager, SyncReport
from .cloud import CloudAdapter
from .executor import DistributedExecutor, ExecutionBackend

__all__ = ["Checkpoint", "CheckpointCorruptError", "CloudAdapter", "CloudCacheManager", "DistributedCheckpointManager",
           "DistributedExecutor", "ExecutionBackend", "SyncReport"]
