"""Who is driving a run, and whether it still is: the driver identity a manifest names, and how any process
tells a live driver from one that stopped.

A driver that starts (or takes over) a run takes a *lease*: a fresh token, written into the manifest with its
host, pid, mount namespace and the path of a file named by that token, and an exclusive ``flock`` on it, held for as
long as it drives. The kernel drops the lock when the process dies, however it dies, and the driver drops it
itself as soon as it stops driving (even when it cannot write the manifest: a storage outage), so on the same
host "still driving" is exact and immediate, whatever the pid namespace. From another host (or another UTS or
mount namespace) only the manifest's heartbeat tells: a run whose driver has not written for ``MISSED_BEATS`` of its
own heartbeat periods is abandoned. An operator who knows the driver is dead can take over at once
(``force``); takeover itself is a compare-and-swap, so exactly one resumer wins.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: A running driver refreshes its manifest this often (seconds) unless the run says otherwise (``heartbeat_s``).
HEARTBEAT_S = 15.0
#: How many heartbeat periods without a write mark a run abandoned, when its driver's host cannot be asked.
MISSED_BEATS = 3

#: Tokens of the leases this process held and released: it knows it stopped driving those runs.
_released: set[str] = set()


def lease_dir() -> Path:
    """Where this process puts its driver leases (one small file per driving session). The manifest records the
    lease's full path, so processes with another ``TMPDIR`` still find it; ``/tmp`` when there is one."""
    base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    return Path(base) / "odibi-ray-drivers"


def _mount_namespace() -> str:
    """This process's mount namespace: a lease path means the same file only to processes sharing it."""
    try:
        return str(os.stat("/proc/self/ns/mnt").st_ino)
    except OSError:
        return ""


class DriverLease:
    """This process's claim to drive one run: the identity written into its manifest, and the held lock."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        self.identity: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token}
        self._fd: int | None = None
        self._path = lease_dir() / self.token
        try:
            self._path.parent.mkdir(mode=0o1777, exist_ok=True)
            fd = os.open(self._path, os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._fd = fd
            self.identity.update(lease=str(self._path), mntns=_mount_namespace())
        except OSError as exc:  # no writable temp folder: other processes here fall back to the pid
            log.debug("no driver lease file (%s); liveness falls back to the pid", exc)

    def release(self) -> None:
        """Stop driving: from now on every process (this one included) may take the run over."""
        _released.add(self.token)
        fd, self._fd = self._fd, None
        if fd is not None:
            _forget(self._path)
            os.close(fd)


def driver_state(driver: Mapping[str, Any], updated_at: float, heartbeat_s: float,
                 now: float | None = None) -> str:
    """``running`` or ``abandoned`` for a manifest that says ``running`` and names ``driver``."""
    token = str(driver.get("token") or "")
    if token and token in _released:
        return "abandoned"  # this process was its driver and stopped
    if driver.get("host") == socket.gethostname():
        here = _driving_here(driver)
        if here is not None:
            return "running" if here else "abandoned"
    if (now or time.time()) - updated_at > MISSED_BEATS * heartbeat_s:
        return "abandoned"
    return "running"


def _driving_here(driver: Mapping[str, Any]) -> bool | None:
    """Whether a driver on this host still holds its lease; None when this process cannot tell (its lease file is
    in another mount namespace: the heartbeat decides, as for another host). A driver with no lease file at all
    (an older odibi_ray, or no writable temp folder): whether its pid lives."""
    lease = driver.get("lease")
    if not (isinstance(lease, str) and driver.get("token")):
        return _alive(int(driver.get("pid") or 0))
    if driver.get("mntns") != _mount_namespace():
        return None
    try:
        fd = os.open(lease, os.O_RDWR)
    except FileNotFoundError:
        return False  # released (the driver removes it when it stops driving)
    except OSError:
        return _alive(int(driver.get("pid") or 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True  # held: its driver is driving
    else:
        _forget(Path(lease))  # its driver died without releasing it: nobody will need the file again
    finally:
        os.close(fd)  # closing drops a lock we may just have taken
    return False


def _forget(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (killed, not yet reaped) is not a running driver
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
