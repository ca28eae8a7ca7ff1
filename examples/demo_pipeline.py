"""Demo: a small sales pipeline run as Ray tasks on a local Ray (no cluster, no cloud account).

    ./dev demo                     # sets everything up, then runs this file
    python examples/demo_pipeline.py [--backend ray|local] [--rows N]

The pipeline itself ships inside the package, in ``odibi_ray/demo.py`` (so ``odibi-ray demo`` works after a
plain ``pip install``); read it there. It shows the levels, a flaky step that is retried by its RetryPolicy,
per-node records and the outputs. Checkpoints go to a local folder (``.odibi/demo``): run it twice and the
second run reuses every node from the cache (status ``cached``, no task).
"""

from __future__ import annotations

import sys

from odibi_ray.demo import REGIONS, by_product, by_region, clean, dag, extract, main, report

__all__ = ["dag", "main", "extract", "clean", "by_region", "by_product", "report", "REGIONS"]

if __name__ == "__main__":
    sys.exit(main())
