"""Bounded retries for storage calls: exponential backoff with jitter inside a wall-clock budget.

The storage adapters turn off their SDK's own retries and call :func:`call_with_retry` instead, so that one
place decides what is retried and a dead endpoint fails within ``budget_s`` (not after the SDK's minutes of
retries). Each attempt is told the seconds left, to cap its own socket timeouts with them.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import TypeVar
from collections.abc import Callable

from ..backoff import backoff_delay

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Delay before retry ``n`` (1-based): ``min(max_s, initial_s * factor ** (n - 1))`` times ``1 ± jitter``."""

    initial_s: float = 0.1
    factor: float = 2.0
    max_s: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.max_s < 0 or self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"invalid backoff {self}: need initial_s >= 0, max_s >= 0, factor >= 1, "
                             "0 <= jitter < 1")

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the first retry): the formula node retries use too."""
        return backoff_delay(retry, self.initial_s, self.factor, self.max_s, self.jitter, rng)


class RetriesExhausted(Exception):
    """Every allowed attempt failed with a transient error; ``last`` is the final one."""

    def __init__(self, last: BaseException, attempts: int, elapsed_s: float) -> None:
        super().__init__(f"gave up after {attempts} attempt(s) in {elapsed_s:.1f} s")
        self.last, self.attempts, self.elapsed_s = last, attempts, elapsed_s


def call_with_retry(attempt: Callable[[float], T], *, is_transient: Callable[[BaseException], bool],
                    budget_s: float, max_attempts: int, backoff: Backoff = Backoff(),
                    min_attempt_s: float = 0.2, describe: str = "call") -> T:
    """Run ``attempt(seconds_left)`` until it returns, retrying transient errors within the budget.

    A non-transient error propagates at once. A transient one is retried after a backoff delay while
    attempts remain and the next attempt could still get ``min_attempt_s`` before ``budget_s`` (counted
    from the first attempt's start) runs out; otherwise :class:`RetriesExhausted` is raised. ``attempt``
    should bound its own blocking by the seconds it is given, so the whole call ends near the budget.
    """
    if budget_s <= 0 or max_attempts < 1:
        raise ValueError(f"need budget_s > 0 and max_attempts >= 1, got {budget_s}, {max_attempts}")
    start = time.monotonic()
    deadline = start + budget_s
    n = 0
    while True:
        n += 1
        try:
            return attempt(max(deadline - time.monotonic(), min_attempt_s))
        except BaseException as exc:  # noqa: BLE001 - classified right below
            if not is_transient(exc):
                raise
            now = time.monotonic()
            delay = backoff.delay(n)
            if n >= max_attempts or now + delay + min_attempt_s > deadline:
                raise RetriesExhausted(exc, n, now - start) from None
            log.info("%s: transient %s, retry %d/%d in %.2f s", describe, type(exc).__name__, n,
                     max_attempts - 1, delay)
            time.sleep(delay)
