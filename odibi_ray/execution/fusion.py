"""Fusion: a chain of nodes, each the only consumer of the one before, run as one Ray task (opt-in).

A Ray task costs the driver and the raylet about the same whatever its body does (a submit, a lease, two return
objects), so a chain of cheap nodes spends most of its time in that machinery. ``run(dag, fuse=True)`` (or
``Node(fuse=True)`` on the nodes) runs such a chain as one task that calls its nodes in order, in one worker,
passing each output to the next in memory. Everything that makes a node a node stays its own:

- its :class:`~odibi_ray.execution.result.NodeRecord`, with its own attempt, start and end, worker and error;
- its output: one Ray object per node, so ``result[name]`` and any later consumer read it as before;
- its timeout (timed from its own start, inside the task), cache key (keyed in the task from the data version of
  the node before it: execution/backends/worker_keys.py) and checkpoint (written by the task, as an unfused
  node's worker writes it);
- its retry policy: when a node of the task fails, the nodes after it report "an input's attempt failed" and are
  not counted; the driver retries the failed node under its own policy, in a new task holding it and the rest of
  the chain.

A fused task that fails as a whole (its worker died, ran out of memory or lost its machine) cannot say which of its
nodes was running: none is charged, and the chain's nodes run one task each from then on in this run, so that a
node that kills its worker is charged for it. The nodes before it run once more, except a node keyed in the task
(after the first) whose checkpoint the dead task had already stored: looked up under its key, it is reused (status
``cached``, counted as an early cutoff when the node before it ran again). A run aborted (``fail_fast``, a takeover)
while a fused task runs charges none of its nodes either: each is cancelled, its reason naming the task.
A failure of a node outside its function (its params cannot be loaded in the worker) is that node's, as unfused.

Each node gets a copy of the output before it (pickled and read back, as an unfused node reads it from the object
store), so a node that changes its input in place cannot change the output of the node before it.

Links that fuse (:func:`fused_links`): ``u -> v`` where ``v`` is the only node reading ``u`` and ``u`` the only
node ``v`` reads, neither is mapped, both ask for the same resources, and both have fusion on (``Node.fuse``,
else the run's ``fuse``). A task holds at most :data:`MAX_FUSED` nodes. Fusion applies on the Ray backend without
``barrier`` (the local backend has no per-task cost to save; a barrier runs one level at a time).
"""

from __future__ import annotations

from ..definition.dag import DAG

#: The most nodes one fused task runs: its nodes' outcomes reach the driver (records, progress, live metrics) only
#: when the task ends, and a task that dies runs its nodes again one by one.
MAX_FUSED = 64


def fused_links(dag: DAG, fuse: bool) -> dict[str, str]:
    """Node -> the next node of its chain, for every link of ``dag`` that fuses (see the module docstring)."""
    children = dag.downstream_map()
    nodes = dag.nodes
    links = {}
    for name, node in nodes.items():
        if not (node.fuse if node.fuse is not None else fuse) or node.mapping is not None:
            continue
        after = set(children[name])
        if len(after) != 1:
            continue
        (nxt,) = after
        child = nodes[nxt]
        if ((child.fuse if child.fuse is not None else fuse) and child.mapping is None
                and set(child.input_map.values()) == {name} and child.ray_options() == node.ray_options()):
            links[name] = nxt
    return links
