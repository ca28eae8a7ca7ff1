"""The one exponential-backoff formula, shared by node retries (:func:`odibi_ray.definition.policy.compute_delay`) and
storage call retries (:class:`odibi_ray.storage.retry.Backoff`): each keeps its own parameters and defaults."""

from __future__ import annotations

import math
import random


def backoff_delay(n: int, initial_s: float, factor: float, max_s: float, jitter: float,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait after failure number ``n`` (1-based) before trying again:
    ``min(max_s, initial_s * factor ** (n - 1))``, then scaled by a random factor in ``[1 - jitter, 1 + jitter]``.

    Capped before jitter is applied, so jitter spreads the capped delay too (retries that all hit the cap do not
    fire in step); never negative, and a huge ``n`` caps instead of overflowing a float. Pure apart from ``rng``
    (default: the ``random`` module), which is not drawn from when there is nothing to spread.
    """
    if n < 1:
        raise ValueError(f"the failure number is 1-based, got {n}")
    try:
        base = initial_s * factor ** (n - 1)
    except OverflowError:
        base = math.inf
    base = min(base, max_s)
    if jitter and base > 0:
        base *= 1.0 - jitter + 2.0 * jitter * (rng or random).random()
    return max(0.0, base)
