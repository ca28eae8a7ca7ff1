"""The driver's writes to its run manifest while it drives: heartbeats off the driver loop, the final close, and a
close that storage refused, retried in the background until storage is back.

Why a thread: a manifest write is a storage call, and during an outage one takes the storage's whole retry budget
(seconds). On the loop it stalled every node's scheduling; here the loop only hands over a snapshot of the node
states when one is due (:meth:`ManifestWriter.tick`, a clock read otherwise) and learns, on the same call, that
another driver has taken the run over. The final close is written by the caller, bounded by one storage call:
``run()`` returns its result whatever storage does, and the lease is released either way, so this process and any
other on this host may resume the run at once (:mod:`.liveness`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, NamedTuple
from collections.abc import Callable

from ..errors import RunTakenOverError, StorageError
from .liveness import DriverLease
from .store import RunManifest

log = logging.getLogger(__name__)

#: A close that storage refused is tried again after these many seconds, doubling up to the cap.
CLOSE_RETRY_FIRST_S = 2.0
CLOSE_RETRY_MAX_S = 60.0


class Confirmer(NamedTuple):
    """How heartbeats confirm checkpoints written behind (checkpoint/writeback.py) while the run goes on, so that
    the manifest -- and the run's account after an outage -- says ``succeeded`` for every node stored by then:
    ``pending()`` (loop) the unconfirmed nodes, ``look(pending)`` (writer thread) which are stored now,
    ``accept(found, pending)`` (loop) records them."""

    pending: Callable[[], dict[str, Any]]
    look: Callable[[dict[str, Any]], dict[str, Any]]
    accept: Callable[[dict[str, Any], dict[str, Any]], None]


class ManifestWriter:
    """Heartbeats of one run's manifest, written by a daemon thread; see the module docstring."""

    def __init__(self, manifest: RunManifest, lease: DriverLease, period_s: float,
                 snapshot: Callable[[], dict[str, Any]], confirmer: Confirmer | None = None) -> None:
        self.manifest, self.lease, self.period_s, self.snapshot = manifest, lease, period_s, snapshot
        self.confirmer = confirmer
        self._offer: tuple[dict[str, Any], dict[str, Any]] | None = None  # node states, writes to confirm
        self._found: list[tuple[dict[str, Any], dict[str, Any]]] = []  # confirmations for the loop to take
        self._wake = threading.Event()
        self._stopped = False
        self._busy = False
        self._due = time.monotonic() + period_s
        self._last_write = time.monotonic()
        self.taken_over: str | None = None  # why this driver must stop, once another driver took the run
        self._thread = threading.Thread(target=self._beat, name=f"odibi-manifest-{manifest.run_id}", daemon=True)
        self._thread.start()

    def tick(self) -> str | None:
        """Called from the driver loop: offer the node states when a beat is due. Returns why the driver must
        stop (the run was taken over), else None. Never blocks on storage."""
        if self.taken_over is not None:
            return self.taken_over
        if self._found and self.confirmer is not None:
            found, self._found = self._found, []
            for confirmed, pending in found:
                self.confirmer.accept(confirmed, pending)
        now = time.monotonic()
        if now >= self._due and not self._busy:
            self._due = now + self.period_s
            self._offer = (self.snapshot(), self.confirmer.pending() if self.confirmer is not None else {})
            self._wake.set()
        return None

    def _beat(self) -> None:
        while True:
            self._wake.wait(self.period_s)  # an offer, or a period without one (the loop is busy elsewhere)
            self._wake.clear()
            if self._stopped:
                return
            offer, self._offer = self._offer, None
            if offer is None and time.monotonic() - self._last_write < self.period_s:
                continue
            self._busy = True
            try:
                nodes = self._confirm(*offer) if offer is not None else None
                changes: dict[str, Any] = {"updated_at": time.time()}
                if nodes is not None:
                    changes["nodes"] = nodes
                if self.manifest.update(while_running=True, **changes) is None:
                    return  # closed meanwhile
            except RunTakenOverError as exc:
                log.error("%s: stopping", exc)
                self.taken_over = str(exc)
                return
            except Exception as exc:  # noqa: BLE001 - a missed beat is not worth failing the run
                log.warning("could not refresh the manifest of run %s: %s", self.manifest.run_id, exc)
            finally:
                self._busy = False
                self._last_write = time.monotonic()

    def _confirm(self, nodes: dict[str, Any], pending: dict[str, Any]) -> dict[str, Any]:
        """Look up the checkpoints written behind since the last beat: the ones stored are written into this beat
        as ``succeeded`` (not ``computed``) and handed to the loop. A store that cannot be asked confirms none."""
        if not pending or self.confirmer is None:
            return nodes
        try:
            confirmed = self.confirmer.look(pending)
        except StorageError as exc:
            log.debug("could not confirm checkpoints at this beat: %s", exc)
            return nodes
        if confirmed:
            self._found.append((confirmed, pending))
            nodes = {n: (dict(e, status="succeeded") if n in confirmed and e.get("status") == "computed" else e)
                     for n, e in nodes.items()}
        return nodes

    def stop(self) -> None:
        """No more heartbeats (a beat in flight finishes on its own; it never overwrites a closed manifest)."""
        self._stopped = True
        self._wake.set()

    def close(self, status: str, summary: dict[str, Any], nodes: dict[str, dict[str, Any]], *,
              storage_down: bool = False) -> str | None:
        """Write the run's final state (one storage call) and stop driving. Returns None once written or when
        there is nothing to write (the run was taken over: :attr:`taken_over` says so), else why not: storage
        refused — then the close is retried in the background until storage is back, and the run is resumable at
        once all the same. ``storage_down``: the run has just seen the store unavailable, so the caller does not
        wait one more retry budget for it: the close goes to the background at once."""
        self.stop()
        try:
            if self.taken_over is not None:
                return None
            if storage_down:
                return self._defer(status, summary, nodes, "StorageUnavailableError: the store was unavailable "
                                   "during the run", first_delay_s=0.0)
            try:
                _close(self.manifest, status, summary, nodes)
                return None
            except RunTakenOverError as exc:
                self.taken_over = str(exc)
                return None
            except StorageError as exc:
                return self._defer(status, summary, nodes, f"{type(exc).__name__}: {exc}",
                                   first_delay_s=CLOSE_RETRY_FIRST_S)
        finally:
            self.lease.release()

    def _defer(self, status: str, summary: dict[str, Any], nodes: dict[str, dict[str, Any]], why: str,
               first_delay_s: float) -> str:
        """Hand the close to a background retry; the note that says so."""
        note = (f"the manifest of run {self.manifest.run_id!r} could not be closed ({why}); it still says 'running' "
                "and is written again when storage answers; the run can be resumed at once")
        log.error("%s", note)
        _retry_in_background(self.manifest, status, summary, nodes, first_delay_s=first_delay_s)
        return note


def _close(manifest: RunManifest, status: str, summary: dict[str, Any], nodes: dict[str, dict[str, Any]]) -> None:
    """The final status, summary and node states, in one compare-and-swap update."""
    now = time.time()
    manifest.update(status=status, ended_at=now, updated_at=now, summary=summary, nodes=nodes)


def _retry_in_background(manifest: RunManifest, status: str, summary: dict[str, Any],
                         nodes: dict[str, dict[str, Any]], first_delay_s: float) -> threading.Thread:
    """Keep trying to write a close that storage refused, backing off, until it is written or another driver
    took the run over (its manifest then). A daemon thread: a process that exits first leaves the manifest
    'running' with a released lease, which every reader sees as abandoned."""
    def retry() -> None:
        time.sleep(first_delay_s)
        delay = CLOSE_RETRY_FIRST_S
        while True:
            try:
                _close(manifest, status, summary, nodes)
                log.info("run %s: its manifest is closed now (%s)", manifest.run_id, status)
                return
            except RunTakenOverError:
                return
            except StorageError as exc:
                log.debug("run %s: manifest still not writable: %s", manifest.run_id, exc)
            except Exception as exc:  # noqa: BLE001 - a bug here must not spin; say it once and stop
                log.error("run %s: giving up closing its manifest: %s", manifest.run_id, exc)
                return
            time.sleep(delay)
            delay = min(delay * 2, CLOSE_RETRY_MAX_S)

    thread = threading.Thread(target=retry, name=f"odibi-close-{manifest.run_id}", daemon=True)
    thread.start()
    return thread
