"""What a running node may know about itself: which node, which attempt, which run."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeContext:
    """Set while a node function runs (on a Ray worker or in the local backend)."""

    pipeline: str
    run_id: str
    node: str
    attempt: int  # 1-based
    max_attempts: int
    item: int | None = None  # an item of a mapped node: its position (0-based); None for a plain node

    @property
    def where(self) -> str:
        """The node's name, with ``[item]`` for an item of a mapped node (as in records and logs)."""
        return self.node if self.item is None else f"{self.node}[{self.item}]"


_CURRENT: contextvars.ContextVar[NodeContext | None] = contextvars.ContextVar("odibi_ray_node", default=None)


def current_context() -> NodeContext:
    """The context of the node running in this thread; raises outside a node."""
    ctx = _CURRENT.get()
    if ctx is None:
        raise RuntimeError("current_context() called outside a running odibi_ray node")
    return ctx


def _set(ctx: NodeContext | None) -> contextvars.Token:
    return _CURRENT.set(ctx)


def _reset(token: contextvars.Token) -> None:
    _CURRENT.reset(token)
