"""RetryPolicy validation, the pure delay function, and the retry decision."""

import random

import pytest

from odibi_ray import ErrorInfo, InvalidPolicyError, RetryPolicy, compute_delay
from odibi_ray.execution.attempt import error_info
from odibi_ray.execution.scheduler import should_retry


def test_delay_grows_exponentially_without_jitter():
    p = RetryPolicy(max_attempts=6, delay_s=0.5, backoff=2.0, max_delay_s=100)
    assert [compute_delay(p, n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_delay_is_capped_before_jitter_and_never_overflows():
    p = RetryPolicy(max_attempts=10_000, delay_s=1.0, backoff=10.0, max_delay_s=30.0)
    assert compute_delay(p, 3) == 30.0
    assert compute_delay(p, 5000) == 30.0  # 10**4999 would overflow a float


def test_jitter_stays_in_band_and_is_seedable():
    p = RetryPolicy(max_attempts=5, delay_s=1.0, backoff=2.0, jitter=0.2)
    first = [compute_delay(p, 3, random.Random(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]  # same seed, same value
    values = [compute_delay(p, 3, random.Random(s)) for s in range(200)]
    assert all(3.2 <= v <= 4.8 for v in values)  # 4 s +- 20 %
    assert len(set(values)) > 100  # jitter really varies


def test_zero_delay_and_constant_backoff():
    assert compute_delay(RetryPolicy(max_attempts=3, delay_s=0), 2) == 0
    assert compute_delay(RetryPolicy(max_attempts=3, delay_s=0.3, backoff=1.0), 2) == 0.3


def test_delay_rejects_attempt_zero():
    with pytest.raises(ValueError):
        compute_delay(RetryPolicy(), 0)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(max_attempts=0), "max_attempts"),
    (dict(max_attempts=1.5), "max_attempts"),
    (dict(delay_s=-1), "delay_s"),
    (dict(delay_s=float("nan")), "delay_s"),
    (dict(backoff=0.5), "backoff"),
    (dict(jitter=1.5), "jitter"),
    (dict(max_delay_s=-2), "max_delay_s"),
    (dict(retry_on=("ValueError",)), "retry_on"),
])
def test_bad_policy_values_raise(kwargs, needle):
    with pytest.raises(InvalidPolicyError, match=needle):
        RetryPolicy(**kwargs)


def test_retry_on_accepts_a_single_type():
    assert RetryPolicy(retry_on=OSError).retry_on == (OSError,)


def _err(exc, kind="application"):
    return error_info(exc, kind=kind)


def test_should_retry_matches_subclasses_by_name():
    p = RetryPolicy(max_attempts=3, retry_on=(OSError,))
    assert should_retry(p, _err(FileNotFoundError("x")), 1)  # subclass of OSError
    assert not should_retry(p, _err(KeyError("x")), 1)
    assert not should_retry(p, _err(FileNotFoundError("x")), 3)  # attempts exhausted


def test_should_retry_system_failures_and_timeouts_by_flag():
    sysfail = ErrorInfo("odibi_ray.errors.SystemFailureError", "died", "", kind="worker_died")
    timeout = ErrorInfo("odibi_ray.errors.NodeTimeoutError", "slow", "", kind="timeout")
    cancelled = ErrorInfo("odibi_ray.errors.ExecutionError", "stop", "", kind="cancelled")
    on = RetryPolicy(max_attempts=2, retry_on=(KeyError,))
    off = RetryPolicy(max_attempts=2, retry_system_failures=False, retry_on_timeout=False)
    assert should_retry(on, sysfail, 1) and should_retry(on, timeout, 1)
    assert not should_retry(off, sysfail, 1) and not should_retry(off, timeout, 1)
    assert not should_retry(on, cancelled, 1)
