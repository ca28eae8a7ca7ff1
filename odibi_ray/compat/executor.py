"""The seed's face: ``DistributedExecutor(backend=ExecutionBackend.RAY | THREAD_POOL).execute(dag)``."""

from __future__ import annotations

from typing import Any

from ..definition.dag import DAG
from ..definition.policy import RetryPolicy
from ..execution.result import RunResult
from ..execution.runner import ExecutionBackend, run


class DistributedExecutor:
    """Runs a DAG with the seed's semantics: level by level (``barrier=True``) unless told otherwise.

    ``max_retries``/``retry_delay``, when given, set a default :class:`RetryPolicy` for nodes that
    have none of their own. ``execute`` returns a :class:`RunResult`; ``result[name]`` is an output.
    """

    def __init__(self, backend: ExecutionBackend | str = ExecutionBackend.RAY, *, max_workers: int | None = None,
                 address: str | None = None, max_retries: int | None = None, retry_delay: float = 1.0,
                 barrier: bool = True, fail_fast: bool = False, seed: int | None = None,
                 progress: Any = False) -> None:
        self.backend = ExecutionBackend.parse(backend)
        self.max_workers = max_workers
        self.address = address
        self.default_retry = (RetryPolicy(max_attempts=max_retries + 1, delay_s=retry_delay)
                              if max_retries is not None else None)
        self.barrier, self.fail_fast, self.seed, self.progress = barrier, fail_fast, seed, progress

    @staticmethod
    def group_by_level(dag: DAG) -> list[list[str]]:
        """The DAG's nodes grouped by topological level (validates the DAG)."""
        return dag.levels()

    def execute(self, dag: DAG) -> RunResult:
        """Run the DAG; nodes without their own retry policy get this executor's default."""
        return run(dag, backend=self.backend.value, address=self.address, retry=self.default_retry,
                   barrier=self.barrier, fail_fast=self.fail_fast, seed=self.seed, progress=self.progress,
                   max_workers=self.max_workers)
