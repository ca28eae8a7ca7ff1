"""Node functions shared by tests. In an importable module so Ray workers can load them by reference."""

from __future__ import annotations

import os
import time
from pathlib import Path

from odibi_ray import current_context


def wait_for(path: Path | str, timeout: float = 30.0, poll: float = 0.02) -> bool:
    """Poll until ``path`` exists; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    path = Path(path)
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(poll)
    return False


def rendezvous(folder: str, me: str, everyone: list[str], timeout: float = 60.0) -> bool:
    """Announce ``me`` in ``folder`` and wait until all of ``everyone`` are there: only true concurrency passes."""
    Path(folder, me).write_text(str(os.getpid()))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(Path(folder, n).exists() for n in everyone):
            return True
        time.sleep(0.02)
    return False


def attempt() -> int:
    return current_context().attempt


class FlakyError(IOError):
    """An application error that retry policies in the tests retry on."""


def fail_until(n: int, exc_type: type[BaseException] = FlakyError):
    """A node body failing on attempts < n, then returning the attempt number."""

    def body():
        a = current_context().attempt
        if a < n:
            raise exc_type(f"attempt {a} failed on purpose")
        return a

    return body
