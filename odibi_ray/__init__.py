"""odibi_ray: run data-pipeline DAGs of Python functions on Ray, with retries per node."""

from .checkpoint import Checkpoint, CheckpointCorruptError, CloudCacheManager, DistributedCheckpointManager
from .cloud import CloudAdapter
from .context import NodeContext, current_context
from .dag import DAG
from .errors import (AlreadyExistsError, CorruptObjectError, CycleError, DAGValidationError, DuplicateNodeError, ExecutionError, InvalidNodeError,
                     InvalidPolicyError, NodeFailedError, NodeTimeoutError, OdibiError, OutputUnavailableError,
                     RunFailedError, SignatureMismatchError, SystemFailureError, UnknownInputError,
                     UnpicklableNodeError, UnschedulableNodeError, StorageError, NotFoundError,
                     PreconditionFailedError, StorageUnavailableError, StorageAuthError, InvalidURIError,
                     RunStillRunningError, RunTakenOverError, UnserialisableOutputError, UntrustedObjectError)
from .executor import DistributedExecutor, ExecutionBackend
from .node import Node
from .policy import CachePolicy, RetryPolicy, compute_delay
from .result import AttemptRecord, ErrorInfo, ErrorKind, NodeRecord, NodeStatus, RunResult, RunStatus
from .runner import run

__version__ = "0.1.0"

__all__ = [
    "DAG", "Node", "RetryPolicy", "CachePolicy", "compute_delay", "run", "current_context", "NodeContext",
    "DistributedExecutor", "ExecutionBackend", "CloudAdapter", "CloudCacheManager", "DistributedCheckpointManager",
    "Checkpoint", "CheckpointCorruptError",
    "RunResult", "RunStatus", "NodeRecord", "NodeStatus", "AttemptRecord", "ErrorInfo", "ErrorKind",
    "OdibiError", "DAGValidationError", "CycleError", "UnknownInputError", "DuplicateNodeError",
    "SignatureMismatchError", "InvalidPolicyError", "UnpicklableNodeError", "InvalidNodeError",
    "ExecutionError", "NodeFailedError", "NodeTimeoutError", "SystemFailureError", "RunFailedError",
    "OutputUnavailableError", "UnschedulableNodeError",
    "StorageError", "NotFoundError", "AlreadyExistsError", "PreconditionFailedError", "StorageUnavailableError",
    "StorageAuthError", "InvalidURIError", "CorruptObjectError", "RunStillRunningError", "RunTakenOverError",
    "UnserialisableOutputError", "UntrustedObjectError",
]
