"""odibi_ray: run data-pipeline DAGs of Python functions on Ray, with retries, checkpoints and caching per node.

The package's folders follow a run from left to right: ``definition/`` (DAG, Node, policies, YAML) ->
``execution/`` (``run``, the scheduler, the backends, the worker side, results) -> ``checkpoint/`` and
``storage/`` (what a run stores, and where; ``storage/kafka/``: topics as logs) -> ``observe/`` (metrics, progress,
report). ``sources/`` holds incremental source nodes (Kafka: what is new since the last good run). ``compat/`` holds the
seed faces: the API of ``odibi_core`` this project grew from, kept so that code written for it runs unchanged.
"""

# The native API.
from .definition.dag import DAG
from .definition.incremental import IncrementalSource
from .definition.mapping import FailedItem, MapSpec, PartialResults
from .definition.node import Node
from .definition.policy import CachePolicy, RetryPolicy, compute_delay
from .execution.context import NodeContext, current_context
from .execution.result import (AttemptRecord, ErrorInfo, ErrorKind, NodeRecord, NodeStatus, RunResult, RunStatus,
                               SourceRead)
from .sources import KafkaSource, kafka_source
from .storage.kafka import KafkaLog, KafkaSettings, OffsetRange
from .execution.runner import ExecutionBackend, run
from .errors import (AlreadyExistsError, CorruptObjectError, CycleError, DAGValidationError, DuplicateNodeError,
                     ExecutionError, InvalidNodeError, InvalidPolicyError, InvalidURIError, MapSplitError,
                     NodeFailedError, NodeTimeoutError, NotFoundError, OdibiError, OutputUnavailableError,
                     PreconditionFailedError, RunFailedError, RunStillRunningError, RunTakenOverError,
                     SignatureMismatchError, StorageAuthError, StorageError, StorageUnavailableError,
                     SystemFailureError, UnknownInputError, UnpicklableNodeError, UnschedulableNodeError,
                     UnserialisableOutputError, UntrustedObjectError)
# The seed faces (see odibi_ray.compat).
from .compat import (Checkpoint, CheckpointCorruptError, CloudAdapter, CloudCacheManager, DistributedCheckpointManager,
                     DistributedExecutor)

__version__ = "0.1.0"

__all__ = [
    # the native API
    "DAG", "Node", "RetryPolicy", "CachePolicy", "compute_delay", "run", "ExecutionBackend", "current_context",
    "NodeContext", "RunResult", "RunStatus", "NodeRecord", "NodeStatus", "AttemptRecord", "ErrorInfo", "ErrorKind",
    "MapSpec", "PartialResults", "FailedItem",
    # incremental sources and Kafka
    "IncrementalSource", "SourceRead", "kafka_source", "KafkaSource", "KafkaLog", "KafkaSettings", "OffsetRange",
    # errors
    "OdibiError", "DAGValidationError", "CycleError", "UnknownInputError", "DuplicateNodeError",
    "SignatureMismatchError", "InvalidPolicyError", "UnpicklableNodeError", "InvalidNodeError",
    "ExecutionError", "MapSplitError", "NodeFailedError", "NodeTimeoutError", "SystemFailureError", "RunFailedError",
    "OutputUnavailableError", "UnschedulableNodeError",
    "StorageError", "NotFoundError", "AlreadyExistsError", "PreconditionFailedError", "StorageUnavailableError",
    "StorageAuthError", "InvalidURIError", "CorruptObjectError", "RunStillRunningError", "RunTakenOverError",
    "UnserialisableOutputError", "UntrustedObjectError",
    # the seed faces (odibi_ray.compat)
    "CloudAdapter", "CloudCacheManager", "DistributedCheckpointManager", "Checkpoint", "CheckpointCorruptError",
    "DistributedExecutor",
]
