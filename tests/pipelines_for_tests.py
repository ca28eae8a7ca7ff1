"""Node functions named by the YAML pipelines in tests/fixtures (and the same DAG built in Python)."""

from __future__ import annotations

import os

from odibi_ray import DAG, CachePolicy, RetryPolicy


def extract(rows: int, seed: int = 0) -> list[int]:
    """Rows 0..rows-1 shifted by seed."""
    return [seed + i for i in range(rows)]


def clean(raw: list[int]) -> list[int]:
    """Keep even rows."""
    return [r for r in raw if r % 2 == 0]


def total(clean: list[int], scale: int = 1) -> int:
    """Sum of the cleaned rows times scale."""
    return sum(clean) * scale


def fail_if_flag(clean: list[int], flag_file: str) -> int:
    """Fail while ``flag_file`` exists (a failure the test switches off to resume)."""
    if os.path.exists(flag_file):
        raise RuntimeError(f"flag file present: {flag_file}")
    return len(clean)


def source_key(params: dict) -> str:
    """A cache key function (stands in for a source file's ETag)."""
    return f"rows={params.get('rows')}"


def python_dag() -> DAG:
    """tests/fixtures/sales.yaml built with the Python API (the test compares the two)."""
    dag = DAG("sales_yaml", retry=RetryPolicy(max_attempts=2, delay_s=0.01), cache=CachePolicy(ttl_s=3600.0))
    dag.add_node(name="extract", fn=extract, params={"rows": 10, "seed": 1}, num_cpus=0.5,
                 cache=CachePolicy(version="e1", key_fn=source_key), timeout_s=30)
    dag.add_node(name="clean", fn=clean, inputs={"raw": "extract"},
                 retry=RetryPolicy(max_attempts=3, delay_s=0.01, backoff=1.5, max_delay_s=1.0, jitter=0.1,
                                   retry_on=(IOError, ValueError)),
                 cache=False, num_cpus=1, num_gpus=0, memory=64 * 2**20, resources={"bigmem": 0.5},
                 timeout_s=30, version="c2", description="keep even rows")
    dag.add_node(name="total", fn=total, inputs=["clean"], params={"scale": 2}, num_cpus=0.5, timeout_s=10)
    return dag
