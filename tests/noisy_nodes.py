"""Node functions that print, fail and retry, for tests/fixtures/noisy.yaml (tests/test_cli_debugging.py)."""

from __future__ import annotations

import os
import sys
import time


def chatty(lines: int = 3) -> int:
    """Prints ``lines`` lines on stdout and one on stderr."""
    for i in range(lines):
        print(f"chatty line {i}")
    print("chatty on stderr", file=sys.stderr)
    return lines


def _parse(row: str) -> int:
    return int(row)


def explode(chatty: int) -> int:
    """Prints a little, then fails in a helper: ValueError naming a bad row."""
    print("reading rows")
    rows = ["1", "2", "x"]
    total = 0
    for i, row in enumerate(rows):
        try:
            total += _parse(row)
        except ValueError:
            raise ValueError(f"bad row {i}: {row!r}") from None
    return total


def flaky_connection(marker: str) -> str:
    """Fails with ConnectionError the first time (``marker`` does not exist yet), succeeds after."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise ConnectionError("connection reset by peer")
    return "connected"


def flood(lines: int = 1000, width: int = 10) -> int:
    """Prints many lines (``width`` characters each, numbered) to test that the kept output is bounded."""
    for i in range(lines):
        print(f"flood {i:06d} " + "x" * max(0, width - 13))
    return lines


def talk(name: str, lines: int = 20, pause_s: float = 0.002) -> str:
    """Prints numbered lines slowly (concurrent nodes on the local backend interleave their prints)."""
    for i in range(lines):
        print(f"{name} {i}")
        time.sleep(pause_s)
    return name


def slow_print(text: str = "slow hello", wait_s: float = 1.5) -> str:
    """Prints ``text`` then waits (Ray forwards the line to the driver meanwhile)."""
    print(text, flush=True)
    time.sleep(wait_s)
    return text


def colored() -> None:
    """Prints a line in colour (terminal escape codes), then fails."""
    print("\x1b[31mred text\x1b[0m plain text")
    raise RuntimeError("\x1b[1mbold failure\x1b[0m")
