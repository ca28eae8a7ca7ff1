"""What the scheduler needs from an execution backend: submit an attempt, wait, read, cancel, fetch."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar
from collections.abc import Hashable, Sequence

from ..attempt import AttemptMeta
from ..fanout import MapItem
from ..context import NodeContext
from ...definition.node import Node


#: A backend's handle of one attempt: opaque to the scheduler, hashable (a Ray backend's pair of object refs, a
#: local backend's Future).
H = TypeVar("H", bound=Hashable)


class Backend(Protocol[H]):
    """Runs node attempts somewhere (Ray tasks, local threads). Handles (``H``) are opaque and hashable; the
    scheduler only passes back the handles the backend gave it."""

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

    def submit(self, node: Node, ctx: NodeContext, inputs: Sequence[Any], item: MapItem | None = None,
               key: Any = None) -> H:
        """Start one attempt; ``inputs`` are the handles of the upstream attempts, in parameter order (a mapped
        input's is a :class:`~odibi_ray.execution.fanout.MapOutput` holding its items' handles); ``item``: the
        attempt is one item of a mapped node (``ctx.item`` is its index); ``key``: a
        :class:`~odibi_ray.execution.backends.worker_keys.WorkerKey` when the node is keyed in its worker (a
        speculative backend only: its inputs may not have finished)."""

    def wait(self, handles: Sequence[H], timeout: float | None, all_of: bool = False) -> list[H]:
        """Block until at least one handle (``all_of``: every handle) is done or ``timeout`` passes;
        return every done handle."""

    def outcomes(self, handles: Sequence[H]) -> list[AttemptMeta]:
        """The attempt metadata of done handles, in their order; a system failure comes back as an ErrorInfo in
        it (``AttemptMeta.error``), never raised."""

    def started(self, handle: H) -> float | None:
        """When an attempt began (``time.monotonic``), None while queued (or not known to the driver); used for
        driver-side timeouts only, so a backend with ``worker_timeouts`` may always answer None."""

    def cancel(self, handle: H) -> None:
        """Stop an attempt (best effort on the local backend)."""

    def forget(self, handle: H) -> None:
        """The scheduler discarded this attempt (its input failed); its outcome will not be read."""

    def fetch(self, handle: H) -> Any:
        """The output value of a successful attempt."""

    def fetch_many(self, handles: Sequence[H]) -> list[Any]:
        """The output values of several successful attempts, in one round trip."""

    def alive_nodes(self) -> set[str]:
        """Ids of the machines still alive (an output held by any other is lost)."""

    def close(self) -> None:
        """Release what :meth:`prepare` acquired for this run."""
