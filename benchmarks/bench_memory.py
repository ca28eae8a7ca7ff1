"""Peak memory of checkpointing one large output: a worker writing, and one reading, a ~1 GB Parquet checkpoint.

Each case runs in a fresh subprocess (so its RSS is its own), doing what a worker does with a node's output:
``odibi_ray.checkpoint.store.write_output`` (encode to Parquet, SHA-256, one create-only put) and
``read_output_sized`` (get, check the SHA-256, decode), on a local folder (``LocalStorage``) and on Azurite
(``ADLSStorage``; one on-disk Azurite on 127.0.0.1, started and stopped here, ``--disableTelemetry``).

The table: 8 columns of random int64 / float64 (seeded), so Parquet (zstd) barely compresses it and the
payload is about the table's size. Before its baseline, each child warms every code path up with a small
checkpoint (imports, the storage client, the allocators). Peak: the kernel's high-water mark of the process's
RSS (``VmHWM``), reset (``/proc/self/clear_refs``) at the baseline, so it is the peak of the operation alone:

- write: baseline = RSS with the table built; extra = peak - baseline (the table itself not counted);
- read: baseline = RSS before the read; extra = peak - baseline (the decoded table *is* counted: one copy of
  the payload's size is the least a read can hold).

Figures are given in multiples of the payload's size ("x"), split by step: the peak before the step's function
is first called, and the RSS still held then (``_holds``); the high-water mark is reset there. Write: "encode"
(``encode_output``: Parquet, SHA-256, metadata) until ``store_encoded`` is called, then "put". Read: "fetch"
(get, trust and SHA-256 checks) until ``decode`` is called, then "decode". The steps are found by wrapping
those module functions, so the same script measures the code as it is and a patched copy of it (run the copy's
``benchmarks/bench_memory.py``: it imports ``odibi_ray`` from its own folder, and says which it used).

Where ``/proc/self/clear_refs`` cannot be written, the peak is the process's whole high-water mark (table
building included) and the JSON says ``"peak_reset": false``.

    python benchmarks/bench_memory.py [--mb 1024] [--cases local,adls] [--quick] [--tmpdir DIR]

Run it in a loopback-only network namespace (it talks to 127.0.0.1 only)::

    RAY_USAGE_STATS_ENABLED=0 unshare -n sh -c 'ip link set lo up && exec .venv/bin/python benchmarks/bench_memory.py'

The last line of stdout is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: make the repo root importable (first, so a patched copy wins)
    sys.path.insert(0, ROOT)

MB = 1024 * 1024
GIB = 1024 * MB
NCOLS = 8
SEED = 20261127
PIPELINE, RUN_ID, NODE = "membench", "r1", "big"
CACHE_KEY = "ab" * 32


# --- measuring ---------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) if m else 0


def rss() -> int:
    """This process's resident set size now (bytes)."""
    return _status_kb("VmRSS") * 1024


def peak() -> int:
    """This process's RSS high-water mark since the last :func:`reset_peak` (bytes)."""
    return _status_kb("VmHWM") * 1024


def reset_peak() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Phases:
    """Peak RSS above a baseline, split where the operation calls a given module function: ``mark(module, name,
    label)`` wraps it so that the peak reached before its first call is recorded under ``label`` (and the RSS
    held at that moment under ``label + "_holds"``), then the high-water mark is reset. :meth:`finish` records
    the rest under its label and gives the whole peak (the largest of the parts)."""

    def __init__(self, base: int) -> None:
        self.base, self.parts, self.undo = base, {}, []
        reset_peak()

    def mark(self, module: Any, name: str, label: str) -> None:
        original = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if label not in self.parts:
                self.parts[label] = peak() - self.base
                self.parts[label + "_holds"] = rss() - self.base
                reset_peak()
            return original(*args, **kwargs)

        setattr(module, name, wrapper)
        self.undo.append((module, name, original))

    def finish(self, label: str) -> int:
        self.parts[label] = peak() - self.base
        for module, name, original in self.undo:
            setattr(module, name, original)
        return max(v for k, v in self.parts.items() if not k.endswith("_holds"))


# --- the child: one case -----------------------------------------------------------------------------------


def make_table(nbytes: int) -> Any:
    """A table of about ``nbytes``: random int64 and float64 columns (incompressible), seeded."""
    import numpy as np
    import pyarrow as pa

    rows = max(1, nbytes // (8 * NCOLS))
    rng = np.random.default_rng(SEED)
    cols = {}
    for i in range(NCOLS):  # each numpy array becomes its Arrow column without a copy
        if i % 2 == 0:
            cols[f"i{i}"] = pa.array(rng.integers(-2**63, 2**63 - 1, size=rows, dtype=np.int64))
        else:
            cols[f"f{i}"] = pa.array(rng.standard_normal(rows))
    return pa.table(cols)


def open_storage(spec: dict[str, Any]) -> Any:
    if spec["backend"] == "local":
        from odibi_ray.storage.local import LocalStorage

        return LocalStorage(spec["root"], fsync=True)
    from odibi_ray.storage.adls import ADLSStorage
    from tests.storage.fixtures_azurite import ACCOUNT, ACCOUNT_KEY

    return ADLSStorage.from_uri(f"abfss://{spec['container']}@{ACCOUNT}.dfs.core.windows.net/bench",
                                endpoint=spec["endpoint"], account_key=ACCOUNT_KEY, timeout_s=600.0)


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one case (``spec["op"]``: write or read) and return its figures."""
    import pyarrow as pa
    import pyarrow.parquet  # noqa: F401 - imported before the baseline (the codec imports it lazily)

    import odibi_ray
    from odibi_ray.checkpoint import store
    from odibi_ray.checkpoint.objectmeta import CheckpointMeta

    storage = open_storage(spec)
    target = store.OutputTarget(storage, PIPELINE, RUN_ID, NODE, CACHE_KEY, None)
    made = store.Provenance(1, "bench", os.getpid(), time.time(), time.time())
    warm = store.OutputTarget(storage, PIPELINE, RUN_ID, "warm", "cd" * 32, None)
    out: dict[str, Any] = {"odibi_ray": os.path.dirname(odibi_ray.__file__), "peak_reset": reset_peak()}

    if spec["op"] == "write":
        small = make_table(1 * MB)
        store.write_output(warm, small, made)  # warm every path up: imports, client, allocator pools
        store.read_output(storage, warm.object_key)
        del small
        table = make_table(spec["nbytes"])
        out["table_bytes"] = table.nbytes
        time.sleep(0.2)
        base = out["baseline"] = rss()
        t0 = time.perf_counter()
        phases = Phases(base)
        phases.mark(store, "store_encoded", "encode")  # write_output = encode_output, then store_encoded
        nbytes = store.write_output(target, table, made)
        out["extra"] = phases.finish("put")
        out["steps"] = phases.parts
        out["seconds"] = time.perf_counter() - t0
        out["payload_bytes"] = nbytes
        out["codec"] = CheckpointMeta.from_info(storage.head(target.object_key)).codec
        return out

    # read
    store.read_output(storage, warm.object_key)
    time.sleep(0.2)
    base = out["baseline"] = rss()
    t0 = time.perf_counter()
    phases = Phases(base)
    phases.mark(store, "decode", "fetch")  # read_output_sized: get and check (SHA-256, trust), then decode
    value, nbytes = store.read_output_sized(storage, target.object_key)
    out["extra"] = phases.finish("decode")
    out["steps"] = phases.parts
    out["value_holds"] = rss() - base
    out["seconds"] = time.perf_counter() - t0
    assert isinstance(value, pa.Table) and value.num_rows == spec["nbytes"] // (8 * NCOLS), value.num_rows
    out["payload_bytes"] = nbytes
    out["table_bytes"] = value.nbytes
    return out


# --- the parent: every case in its own process ---------------------------------------------------------------


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"case {spec['backend']}/{spec['op']} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def x(value: int, payload: int) -> str:
    return f"{value / payload:+.2f}x"


def describe(name: str, r: dict[str, Any]) -> str:
    p = r["payload_bytes"]
    line = (f"{name:<12} payload {p / GIB:.2f} GiB, table {r['table_bytes'] / GIB:.2f} GiB, baseline "
            f"{r['baseline'] / GIB:.2f} GiB: peak {x(r['extra'], p)} of the payload over the baseline "
            f"({r['extra'] / MB:,.0f} MB), {r['seconds']:.1f} s")
    steps = r.get("steps")
    if steps:
        line += "; by step: " + ", ".join(f"{k} {x(v, p)}" for k, v in steps.items())
    return line


def cases(args: argparse.Namespace, tmp: str) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    nbytes = args.mb * MB

    def pair(backend: str, **where: Any) -> None:
        for op in ("write", "read"):
            r = run_child(dict(where, backend=backend, op=op, nbytes=nbytes))
            results[f"{backend}/{op}"] = r
            print(describe(f"{backend}/{op}", r), flush=True)

    if "local" in args.cases:
        root = os.path.join(tmp, "local")
        pair("local", root=root)
        shutil.rmtree(root, ignore_errors=True)
    if "adls" in args.cases:
        from tests.storage.fixtures_azurite import AzuriteServer, new_container

        server = AzuriteServer(location=os.path.join(tmp, "azurite")).start()
        try:
            pair("adls", endpoint=server.endpoint, container=new_container(server))
        finally:
            server.close()
            shutil.rmtree(os.path.join(tmp, "azurite"), ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=1024, help="size of the table in MiB (the payload is about that)")
    ap.add_argument("--cases", default="local,adls", help="comma-separated: local, adls")
    ap.add_argument("--quick", action="store_true", help="64 MiB (a smoke run)")
    ap.add_argument("--tmpdir", default=None, help="where the folder and Azurite's data go (default: $TMPDIR)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if args.quick:
        args.mb = 64
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    tmp = tempfile.mkdtemp(prefix="odibi-membench-", dir=args.tmpdir)
    try:
        results = cases(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    first = next(iter(results.values()), {})
    summary = {
        "benchmark": "bench_memory", "table_mib": args.mb, "python": platform.python_version(),
        "odibi_ray": first.get("odibi_ray"), "peak_reset": first.get("peak_reset"),
        "cases": {name: {"payload_bytes": r["payload_bytes"], "table_bytes": r["table_bytes"],
                         "baseline_bytes": r["baseline"], "extra_bytes": r["extra"],
                         "extra_x_payload": round(r["extra"] / r["payload_bytes"], 3),
                         "seconds": round(r["seconds"], 2),
                         "steps_x_payload": {k: round(v / r["payload_bytes"], 3)
                                             for k, v in r.get("steps", {}).items()}}
                  for name, r in results.items()},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
