"""What the scheduler needs from an execution backend: submit an attempt, wait, read, cancel, fetch."""

from __future__ import annotations

from typing import Any, Hashable, Protocol, Sequence

from ..attempt import AttemptMeta
from ..context import NodeContext
from ...definition.node import Node


class Backend(Protocol):
    """Runs node attempts somewhere (Ray tasks, local threads). Handles are opaque and hashable."""

    name: str

    speculative: bool
    """Submit a node as soon as its inputs are *submitted*, passing their handles: the backend starts it when they
    are done (Ray chains the tasks). False: the scheduler submits a node once its inputs have succeeded."""

    worker_timeouts: bool
    """The backend enforces ``Node.timeout_s`` inside the attempt, counted from its start (a timed-out attempt comes
    back with an ``ErrorKind.TIMEOUT`` error). False: the scheduler times attempts from :meth:`started` and
    cancels them."""

    def prepare(self, nodes: Sequence[Node], targets: dict[str, Any] | None = None) -> None:
        """Called once per run before any submit: connect, serialise functions, check picklability.
        ``targets``: node -> where its worker checkpoints its output (an ``OutputTarget``), if anywhere."""

    def submit(self, node: Node, ctx: NodeContext, inputs: Sequence[Hashable]) -> Hashable:
        """Start one attempt; ``inputs`` are the handles of the upstream attempts, in parameter order."""

    def wait(self, handles: Sequence[Hashable], timeout: float | None, all_of: bool = False) -> list[Hashable]:
        """Block until at least one handle (``all_of``: every handle) is done or ``timeout`` passes;
        return every done handle."""

    def outcomes(self, handles: Sequence[Hashable]) -> list[AttemptMeta]:
        """The attempt metadata of done handles, in their order; a system failure comes back as an ErrorInfo in
        it (``AttemptMeta.error``), never raised."""

    def started(self, handle: Hashable) -> float | None:
        """When an attempt began (``time.monotonic``), None while queued; used for driver-side timeouts."""

    def cancel(self, handle: Hashable) -> None:
        """Stop an attempt (best effort on the local backend)."""

    def forget(self, handle: Hashable) -> None:
        """The scheduler discarded this attempt (its input failed); its outcome will not be read."""

    def fetch(self, handle: Hashable) -> Any:
        """The output value of a successful attempt."""

    def fetch_many(self, handles: Sequence[Hashable]) -> list[Any]:
        """The output values of several successful attempts, in one round trip."""

    def alive_nodes(self) -> set[str]:
        """Ids of the machines still alive (an output held by any other is lost)."""

    def close(self) -> None:
        """Release what :meth:`prepare` acquired for this run."""
