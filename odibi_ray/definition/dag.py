"""The DAG: nodes by name, validation, topological levels and graph walks.

Imports nothing from Ray or storage: a DAG is plain definition.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from .names import check_name
from ..errors import CycleError, DAGValidationError, DuplicateNodeError, InvalidNodeError, UnknownInputError
from .mapping import MapSpec
from .node import Node
from .policy import CachePolicy, RetryPolicy


class DAG:
    """A pipeline: named nodes whose inputs are other nodes' outputs.

    Build it with :meth:`add_node` or the :meth:`node` decorator; :meth:`validate` checks it as a
    whole (the runner calls it before anything runs) and :meth:`levels` groups it for execution.
    """

    def __init__(self, name: str = "dag", nodes: Iterable[Node] = (), *, retry: RetryPolicy | None = None,
                 cache: CachePolicy | bool = True, description: str = "") -> None:
        _check_pipeline_name(name)
        self.name = name
        self.retry = retry or RetryPolicy()
        self.cache = cache
        self.description = description
        self._nodes: dict[str, Node] = {}
        for n in nodes:
            self.add_node(n)

    # --- building -----------------------------------------------------------------------------

    def add_node(self, node: Node | None = None, /, **kwargs: Any) -> Node:
        """Add a :class:`Node` (or build one from keyword arguments); a taken name raises at once."""
        if node is None:
            node = Node(**kwargs)
        elif kwargs:
            raise TypeError("add_node takes a Node or keyword arguments, not both")
        if not isinstance(node, Node):
            raise InvalidNodeError(f"add_node expects a Node, got {type(node).__name__}")
        if node.name in self._nodes:
            raise DuplicateNodeError(node.name)
        self._nodes[node.name] = node
        return node

    def node(self, name: str | None = None, /, *, inputs: Mapping[str, str] | Sequence[str] | None = None,
             **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: add the function as a node (named after it unless ``name`` is given).

        The function itself is returned unchanged, so it can still be called and tested directly.
        ``options`` are the other :class:`Node` fields (params, retry, timeout_s, num_cpus, ...).
        """
        if callable(name):  # used bare: @dag.node
            fn, name = name, None
            self.add_node(Node(name=fn.__name__, fn=fn, inputs=inputs or {}, **options))
            return fn

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add_node(Node(name=name or fn.__name__, fn=fn, inputs=inputs or {}, **options))
            return fn

        return register

    def map(self, over: str, name: str | None = None, /, *, param: str | None = None,
            max_parallel: int | None = None, allow_partial: bool = False, batch_rows: int | None = None,
            by: str | None = None, reduce: Callable[[list[Any]], Any] | None = None,
            inputs: Mapping[str, str] | Sequence[str] | None = None,
            **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: add the function as a node mapped over the items of node ``over`` (see
        :class:`~odibi_ray.definition.mapping.MapSpec` for the other arguments); ``inputs`` and ``options`` are as
        for :meth:`node`. The function receives one item in ``param`` (default: its first parameter given no input
        or param) and is returned unchanged."""
        spec = MapSpec(over=over, param=param, max_parallel=max_parallel, allow_partial=allow_partial,
                       batch_rows=batch_rows, by=by, reduce=reduce)

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add_node(Node(name=name or fn.__name__, fn=fn, inputs=inputs or {}, map_over=spec, **options))
            return fn

        return register

    def mapped(self) -> dict[str, MapSpec]:
        """The mapped nodes and how each fans out."""
        return {n: node.mapping for n, node in self._nodes.items() if node.mapping is not None}

    # --- reading ------------------------------------------------------------------------------

    @property
    def nodes(self) -> dict[str, Node]:
        """Nodes by name, in insertion order (a copy)."""
        return dict(self._nodes)

    def __getitem__(self, name: str) -> Node:
        return self._nodes[name]

    def __contains__(self, name: object) -> bool:
        return name in self._nodes

    def __iter__(self) -> Iterator[Node]:
        return iter(self._nodes.values())

    def __len__(self) -> int:
        return len(self._nodes)

    def __repr__(self) -> str:
        return f"DAG({self.name!r}, {len(self._nodes)} nodes)"

    def cache_policy_of(self, name: str) -> CachePolicy:
        """The cache policy in force for a node (its own, else the DAG's); False becomes disabled."""
        value = self._nodes[name].cache
        value = self.cache if value is None else value
        if isinstance(value, CachePolicy):
            return value
        return CachePolicy() if value else CachePolicy(enabled=False)

    # --- validation and structure -------------------------------------------------------------

    def validate(self) -> None:
        """Raise the precise :class:`~odibi_ray.errors.DAGValidationError` of the first fault found.

        Checks, in order: every node's values (policy, timeout, resources) and that its inputs name
        nodes; no cycle (the error shows the cycle's path); every function's parameters match its inputs
        and params. The cycle comes before the signatures: an edge that closes a cycle is often also one
        the function does not take, and the cycle is the fault to fix.
        """
        _check_pipeline_name(self.name)  # it may have been changed since the DAG was built
        for node in self._nodes.values():
            node._check_values()  # fields may have been changed since the node was built
            for param, upstream in node.input_map.items():
                if upstream not in self._nodes:
                    raise UnknownInputError(node.name, param, upstream)
        cycle = self._find_cycle()
        if cycle:
            raise CycleError(cycle)
        checked: set[tuple[int, frozenset[str]]] = set()  # one check per function and call shape
        for node in self._nodes.values():
            shape = (id(node.fn), frozenset(node.inputs) | frozenset(node.params))
            if shape not in checked:
                node.check_signature()
                checked.add(shape)

    def _find_cycle(self) -> list[str] | None:
        """A cycle's path (first node repeated last), or None. Iterative DFS, deterministic."""
        WHITE, GREY, BLACK = 0, 1, 2
        colour = dict.fromkeys(self._nodes, WHITE)
        for root in self._nodes:
            if colour[root] != WHITE:
                continue
            path: list[str] = [root]
            stack: list[Iterator[str]] = [iter(self._nodes[root].upstream)]
            colour[root] = GREY
            while stack:
                nxt = next(stack[-1], None)
                if nxt is None:
                    colour[path.pop()] = BLACK
                    stack.pop()
                    continue
                if nxt not in colour:
                    continue  # unknown input: reported by validate() before this runs
                if colour[nxt] == GREY:
                    # path runs downstream -> upstream; report it in data-flow order
                    cyc = path[path.index(nxt):] + [nxt]
                    return list(reversed(cyc))
                if colour[nxt] == WHITE:
                    colour[nxt] = GREY
                    path.append(nxt)
                    stack.append(iter(self._nodes[nxt].upstream))
        return None

    def levels(self) -> list[list[str]]:
        """Nodes grouped by topological level: level 0 has no inputs, level k = 1 + max level of inputs.

        Validates the DAG first. Within a level, nodes keep insertion order.
        """
        self.validate()
        return self._levels()

    def _levels(self) -> list[list[str]]:
        ups = self._upstream_map()  # once: each node's upstream list is built anew on every read
        level: dict[str, int] = {}
        for name in _kahn(ups):
            level[name] = 1 + max((level[u] for u in ups[name]), default=-1)
        out: list[list[str]] = [[] for _ in range(1 + max(level.values(), default=-1))]
        for name in self._nodes:  # insertion order within a level
            out[level[name]].append(name)
        return out

    def topological_order(self, validate: bool = True) -> list[str]:
        """Node names with every node after all its inputs (Kahn's algorithm, stable)."""
        if validate:
            self.validate()
        return _kahn(self._upstream_map())

    def _upstream_map(self) -> dict[str, list[str]]:
        return {n: node.upstream for n, node in self._nodes.items()}

    def downstream_map(self) -> dict[str, list[str]]:
        """For each node, the nodes that read its output."""
        return _children(self._upstream_map())

    def pick(self, patterns: Iterable[str], what: str = "selection") -> set[str]:
        """Node names for ``node``, ``node+`` (and its descendants) and ``+node`` (and its ancestors); ``what``
        names the option in the error for an unknown node."""
        if isinstance(patterns, str):
            patterns = [patterns]
        chosen: set[str] = set()
        for pattern in patterns:
            name = str(pattern).strip("+")
            if name not in self._nodes:
                raise ValueError(f"{what} {pattern!r}: no node {name!r} in pipeline {self.name!r}")
            chosen.add(name)
            if str(pattern).endswith("+"):
                chosen |= self.descendants([name])
            if str(pattern).startswith("+"):
                chosen |= self.ancestors([name])
        return chosen

    def descendants(self, names: Iterable[str]) -> set[str]:
        """Every node downstream of any of ``names`` (not including them)."""
        return _walk(names, self.downstream_map())

    def ancestors(self, names: Iterable[str]) -> set[str]:
        """Every node upstream of any of ``names`` (not including them)."""
        return _walk(names, self._upstream_map())


def _check_pipeline_name(name: object) -> None:
    """:class:`DAGValidationError` unless ``name`` can name a pipeline: it is a folder of its checkpoints' keys
    (letters, digits, '_', '-', '.'; at most ``MAX_NAME_LEN`` characters; the whole string is checked)."""
    try:
        check_name(name, "pipeline name")
    except ValueError as exc:
        raise DAGValidationError(str(exc)) from None


def _walk(start: Iterable[str], edges: Mapping[str, Sequence[str]]) -> set[str]:
    seen: set[str] = set()
    todo = [e for s in start for e in edges.get(s, ())]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(edges.get(n, ()))
    return seen


def _children(ups: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """For each node of ``ups`` (node -> the nodes it reads), the nodes that read it."""
    children: dict[str, list[str]] = {n: [] for n in ups}
    for name, parents in ups.items():
        for up in parents:
            if up in children:
                children[up].append(name)
    return children


def _kahn(ups: Mapping[str, list[str]]) -> list[str]:
    """The nodes of ``ups`` with every node after all its inputs (Kahn's algorithm, stable)."""
    indeg = {n: len(parents) for n, parents in ups.items()}
    children = _children(ups)
    order = [n for n, d in indeg.items() if d == 0]
    i = 0
    while i < len(order):
        for child in children[order[i]]:
            indeg[child] -= 1
            if indeg[child] == 0:
                order.append(child)
        i += 1
    return order
