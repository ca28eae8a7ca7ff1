"""Retry policy of a node, and the one pure function that turns it into a delay."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from collections.abc import Callable, Iterable

from ..backoff import backoff_delay
from ..errors import InvalidPolicyError

#: Upper bounds of the policies' numbers (a typo like ``max_attempts: 99999999999999999999999`` is an error,
#: not a run that never gives up).
MAX_ATTEMPTS = 10_000
MAX_DELAY_S = 86400.0  # delay_s and max_delay_s: one day
MAX_BACKOFF = 1000.0
MAX_TTL_S = 100 * 365 * 86400.0  # a cache entry's ttl_s: 100 years (None: no expiry)


def _type_path(tp: type) -> str:
    return f"{tp.__module__}.{tp.__qualname__}"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and when a failed node attempt is tried again.

    The delay before attempt ``n+1`` is ``min(max_delay_s, delay_s * backoff ** (n - 1))``, scaled by a
    random factor in ``[1 - jitter, 1 + jitter]`` (see :func:`compute_delay`).

    ``retry_on`` lists the exception types (and their subclasses) that are retried; others fail the
    node at once. ``retry_system_failures`` says whether a dead worker process, a lost machine or an
    out-of-memory kill is retried; ``retry_on_timeout`` whether an attempt that hit ``timeout_s`` is.
    """

    max_attempts: int = 1
    delay_s: float = 1.0
    backoff: float = 2.0
    max_delay_s: float = 60.0
    jitter: float = 0.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    retry_system_failures: bool = True
    retry_on_timeout: bool = True
    _retry_on_paths: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        retry_on = self.retry_on
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        retry_on = tuple(retry_on)
        object.__setattr__(self, "retry_on", retry_on)
        problems = []
        if not isinstance(self.max_attempts, int) or isinstance(self.max_attempts, bool) \
                or not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            problems.append(f"max_attempts must be an integer from 1 to {MAX_ATTEMPTS}, "
                            f"got {_short(self.max_attempts)}")
        for name in ("delay_s", "max_delay_s"):
            value = getattr(self, name)
            if not _finite_number(value) or not 0 <= value <= MAX_DELAY_S:
                problems.append(f"{name} must be a finite number of seconds from 0 to {MAX_DELAY_S:g} (one day), "
                                f"got {_short(value)}")
        if not _finite_number(self.backoff) or not 1 <= self.backoff <= MAX_BACKOFF:
            problems.append(f"backoff must be a finite number from 1 to {MAX_BACKOFF:g}, got {_short(self.backoff)}")
        if not _finite_number(self.jitter) or not 0 <= self.jitter <= 1:
            problems.append(f"jitter must be a number in [0, 1], got {_short(self.jitter)}")
        bad = [t for t in retry_on if not (isinstance(t, type) and issubclass(t, BaseException))]
        if bad:
            problems.append(f"retry_on must hold exception types, got {_short(bad)}")
        if problems:
            raise InvalidPolicyError("invalid RetryPolicy: " + "; ".join(problems))
        object.__setattr__(self, "_retry_on_paths", frozenset(_type_path(t) for t in retry_on))

    @classmethod
    def none(cls) -> RetryPolicy:
        """One attempt, no retry."""
        return cls(max_attempts=1)

    def retries_exception(self, mro_paths: Iterable[str]) -> bool:
        """True if an exception whose class hierarchy is ``mro_paths`` (``module.qualname``) retries.

        Matching by name lets the driver decide without unpickling the user's exception class.
        """
        return any(p in self._retry_on_paths for p in mro_paths)


def _finite_number(value: object) -> bool:
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _short(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error message quotes at most a short prefix of a value.

    ``reprlib`` keeps a huge nested value (a list of a million items, a string of a megabyte) from being
    rendered whole before it is cut.
    """
    import reprlib

    if isinstance(value, int) and value.bit_length() > 4 * limit:  # repr() of a 5000-digit int raises
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlong = limit + 2, limit, limit
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 8
    r.maxlevel = 3
    try:
        text = r.repr(value)
    except Exception as exc:  # a broken __repr__
        text = f"<{type(value).__name__} (repr failed: {type(exc).__name__})>"
    return text if len(text) <= limit else text[:limit] + "..."


def compute_delay(policy: RetryPolicy, failed_attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after attempt number ``failed_attempt`` (1-based) failed, before the next one.

    Pure apart from ``rng``: pass a seeded :class:`random.Random` for repeatable jitter. The
    exponential part is capped at ``policy.max_delay_s`` before jitter is applied; the result is never
    negative. The formula is :func:`odibi_ray.backoff.backoff_delay` (storage retries use it too).
    """
    if failed_attempt < 1:
        raise ValueError(f"failed_attempt is 1-based, got {failed_attempt}")
    return backoff_delay(failed_attempt, policy.delay_s, policy.backoff, policy.max_delay_s, policy.jitter, rng)


@dataclass(frozen=True)
class CachePolicy:
    """Whether and how a node's output is reused across runs from the checkpoint storage.

    The cache key is SHA-256 over the namespace, the node's name, its code fingerprint (``version`` if given,
    else a hash of the function's syntax tree), its canonical params, the *data versions* of its inputs (the
    content hashes of their stored outputs: a recomputed input that wrote the same bytes changes nothing), and
    ``key_fn(params)`` if given (e.g. a source file's ETag or mtime); see checkpoint/keys.py. A stored output
    younger than ``ttl_s`` (None: no expiry) under that key is reused without running the node.
    ``enabled=False`` (or ``cache=False`` on the node) always runs the node; its output is still
    checkpointed for resume, and the nodes below it are reused when it writes what it wrote before.
    """

    ttl_s: float | None = None
    version: str | None = None
    key_fn: Callable[[dict], str] | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.ttl_s is not None and (not _finite_number(self.ttl_s) or not 0 < self.ttl_s <= MAX_TTL_S):
            raise InvalidPolicyError(f"invalid CachePolicy: ttl_s must be a number of seconds > 0 and <= "
                                     f"{MAX_TTL_S:g} (100 years), or None (no expiry), got {_short(self.ttl_s)}")
        if self.version is not None and not isinstance(self.version, str):
            raise InvalidPolicyError(f"invalid CachePolicy: version must be a string, got {_short(self.version)}")
        if self.key_fn is not None and not callable(self.key_fn):
            raise InvalidPolicyError("invalid CachePolicy: key_fn must be callable")
