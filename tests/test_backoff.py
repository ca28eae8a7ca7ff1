"""The one backoff formula and its two users: node retries (compute_delay) and storage retries (Backoff)."""

import random

import pytest

from odibi_ray import RetryPolicy, compute_delay
from odibi_ray.backoff import backoff_delay
from odibi_ray.storage.retry import Backoff


def test_formula_grows_caps_and_never_overflows():
    assert [backoff_delay(n, 0.5, 2.0, 3.0, 0.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_delay(10 ** 6, 1.0, 10.0, 30.0, 0.0) == 30.0  # 10**999999 would overflow a float
    assert backoff_delay(3, 0.0, 2.0, 5.0, 0.5) == 0.0  # nothing to spread
    with pytest.raises(ValueError, match="1-based"):
        backoff_delay(0, 1.0, 2.0, 5.0, 0.0)


def test_formula_jitter_spreads_the_capped_delay_and_is_seedable():
    values = [backoff_delay(9, 1.0, 2.0, 4.0, 0.25, random.Random(s)) for s in range(300)]
    assert all(3.0 <= v <= 5.0 for v in values) and len(set(values)) > 200
    assert backoff_delay(2, 1.0, 2.0, 4.0, 0.25, random.Random(7)) == \
        2.0 * (0.75 + 0.5 * random.Random(7).random())  # the pinned spread: 1 - jitter + 2 * jitter * r


@pytest.mark.parametrize("n", [1, 2, 5, 40, 5000])
@pytest.mark.parametrize("jitter", [0.0, 0.2])
def test_node_retries_use_the_formula(n, jitter):
    p = RetryPolicy(max_attempts=10_000, delay_s=0.3, backoff=3.0, max_delay_s=20.0, jitter=jitter)
    assert compute_delay(p, n, random.Random(n)) == backoff_delay(n, 0.3, 3.0, 20.0, jitter, random.Random(n))


@pytest.mark.parametrize("n", [1, 2, 5, 40, 5000])
@pytest.mark.parametrize("jitter", [0.0, 0.2])
def test_storage_retries_use_the_formula(n, jitter):
    b = Backoff(initial_s=0.1, factor=2.0, max_s=2.0, jitter=jitter)
    assert b.delay(n, random.Random(n)) == backoff_delay(n, 0.1, 2.0, 2.0, jitter, random.Random(n))
    assert Backoff().delay(1, random.Random(1)) == pytest.approx(0.1, rel=0.2)  # its own defaults: 0.1 s ± 20 %
    assert Backoff(jitter=0).delay(30) == 2.0  # capped at max_s (2 s by default), never an overflow
