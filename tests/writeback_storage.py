"""A real LocalStorage whose object writes can be made to fail in Ray workers, or everywhere (module-level so
Ray workers unpickle it): for the write-behind tests. Not a mock: every call that is not refused goes to the
folder."""

from __future__ import annotations

import os
import time
from typing import Any
from collections.abc import Mapping

from odibi_ray.errors import StorageUnavailableError
from odibi_ray.storage.local import LocalStorage


class RefusingStorage(LocalStorage):
    """``refuse``: "workers" (object puts from any process but the driver's fail), "all" (every object put
    fails), or "" (none). ``delay_s``: every object put waits that long first (a slow remote store)."""

    local_lookups = False  # behaves as a remote store for the engine: write-behind is on by default

    def __init__(self, root: Any, *, refuse: str = "", delay_s: float = 0.0, driver_pid: int | None = None,
                 **options: Any) -> None:
        super().__init__(root, **options)
        self.refuse, self.delay_s = refuse, delay_s
        self.driver_pid = os.getpid() if driver_pid is None else driver_pid

    def __getstate__(self) -> dict[str, Any]:
        return dict(super().__getstate__(), refuse=self.refuse, delay_s=self.delay_s, driver_pid=self.driver_pid)

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        state = dict(state)
        extra = {k: state.pop(k) for k in ("refuse", "delay_s", "driver_pid")}
        LocalStorage.__setstate__(self, state)
        self.refuse, self.delay_s, self.driver_pid = extra["refuse"], extra["delay_s"], extra["driver_pid"]

    def put(self, key, data, metadata=None, **kw):
        if key.startswith("objects/"):
            time.sleep(self.delay_s)
            if self.refuse == "all" or (self.refuse == "workers" and os.getpid() != self.driver_pid):
                raise StorageUnavailableError(f"cannot put {key!r} in {self.uri}: refused for the test", key=key)
        return super().put(key, data, metadata, **kw)
