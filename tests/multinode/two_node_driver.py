"""Driver for the two-node CLI cluster test: runs a tiny odibi_ray pipeline on the cluster at argv[1],
checkpointing to the folder argv[2], and prints one JSON line: the Ray nodes and each record's node.

Node "on_second" needs the `second` resource (only the 127.0.0.2 node has it), "on_first" the `first`
resource (only the head at 127.0.0.1), "plain" only a CPU; "join" consumes all three.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import ray

from odibi_ray import DAG, run
from odibi_ray.checkpoint import run_checkpoints
from odibi_ray.storage.uri import open_storage

dag = DAG("two_nodes")


def _where(tag: str) -> dict:
    return {"tag": tag, "ip": ray.util.get_node_ip_address(), "pid": os.getpid(), "host": socket.gethostname()}


@dag.node(resources={"first": 1}, num_cpus=0)
def on_first():
    return _where("first")


@dag.node(resources={"second": 1}, num_cpus=0)
def on_second():
    return _where("second")


@dag.node(num_cpus=1)
def plain():
    return _where("plain")


@dag.node(inputs=["on_first", "on_second", "plain"], num_cpus=1)
def join(on_first, on_second, plain):
    return sorted({on_first["ip"], on_second["ip"], plain["ip"]})


def main() -> None:
    address, storage = sys.argv[1], sys.argv[2]
    result = run(dag, address=address, storage=storage, progress=False, metrics=False)
    result.raise_for_status()
    nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    store = open_storage(storage)
    # the Ray node each worker's checkpoint names, read back from storage
    records = {name: meta.ray_node_id for name, meta in run_checkpoints(store, dag.name, result.run_id).items()}
    print("RESULT " + json.dumps({"nodes": nodes, "records": records, "join": result["join"],
                                  "outputs": {n: result[n] for n in ("on_first", "on_second", "plain")}}))


if __name__ == "__main__":
    main()
