"""``odibi-ray status --watch``: follow a run from another terminal or machine while it goes.

Two sources of the same status document (see :meth:`odibi_ray.execution.scheduler.Scheduler.live_status`):
the metrics actor, which a running Ray run updates about once a second (observe/live.py), and, when no Ray is
reachable, the run's manifest, which the driver rewrites on every heartbeat (every ``heartbeat_s``, 15 s by
default, and without in-flight timings). :func:`watch` redraws the status every ``interval_s`` until the run ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from .run_metrics import RAY_NAMESPACE, actor_name

log = logging.getLogger(__name__)

Source = Callable[[], "dict[str, Any] | None"]  # the newest status document, or None if there is none yet

BAR = 30
#: Mapped nodes shown with a bar of their items (those with items still open first); the others are counted.
ITEM_BARS_SHOWN = 5
#: A running run's status not updated for this long means its driver is gone: the watch ends (the manifest's
#: own rule, three missed heartbeats, says "abandoned" when the manifest is the source).
STALE_S = 120.0


def actor_source(run_id: str | None, pipeline: str | None, namespace: str = "default",
                 address: str | None = None) -> Source:
    """Status documents from the metrics actor of ``namespace`` (connecting to the Ray at ``address`` first,
    unless this process is connected already). Raises ValueError when no such actor exists there."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or "auto", namespace=RAY_NAMESPACE, logging_level=logging.ERROR,
                 log_to_driver=False)
    try:
        actor = ray.get_actor(actor_name(namespace), namespace=RAY_NAMESPACE)
    except ValueError:
        raise ValueError(f"no metrics actor {namespace!r} on this Ray: has a run with metrics on started "
                         "there?") from None

    def read() -> dict[str, Any] | None:
        try:
            call = actor.run_status.remote(run_id) if run_id else actor.latest_run.remote(pipeline)
            return ray.get(call, timeout=10)
        except Exception as exc:  # noqa: BLE001 - the actor is gone (its driver ended) or slow: try the others
            log.debug("metrics actor unreachable: %s", exc)
            return None
    return read


def first_of(sources: list[Source]) -> Source:
    """The first source that has a status (the actor's live one before the manifest's, which lags a heartbeat)."""
    def read() -> dict[str, Any] | None:
        found = [status for status in (source() for source in sources) if status is not None]
        # a source that says the run is over wins (an actor whose run died without its last batch stays "running")
        return next((s for s in found if s.get("finished")), found[0] if found else None)
    return read


def manifest_status(body: dict[str, Any], statuses: dict[str, str], state: str) -> dict[str, Any]:
    """A status document made from a run's manifest (``statuses``: node -> status; ``state``: the run's effective
    status, running, succeeded, failed or abandoned)."""
    running = state == "running"
    nodes = body.get("nodes") or {}
    levels: dict[int, list[int]] = {}
    counts: dict[str, int] = {}
    items: dict[str, list[int]] = {}  # a mapped node -> [items closed, items] (its entry's counts by status)
    for node, entry in nodes.items():
        by_status = entry.get("items")
        if isinstance(by_status, dict):
            total = sum(int(v) for v in by_status.values())
            items[node] = [total - sum(int(by_status.get(s, 0)) for s in ("pending", "running")), total]
        status = statuses.get(node, entry.get("status", "pending"))
        done = status not in ("pending", "running", "computed")
        level = levels.setdefault(int(entry.get("level", 0)), [0, 0])
        level[0] += done
        level[1] += 1
        counts[status] = counts.get(status, 0) + 1
    return {"pipeline": body.get("pipeline"), "run_id": body.get("run_id"), "counts": counts, "items": items,
            "levels": [levels[i] for i in sorted(levels)], "slowest": [], "finished": not running,
            "status": None if running else state, "updated_at": body.get("updated_at"),
            "source": "manifest"}


def render(status: dict[str, Any] | None, now: float | None = None) -> Text:
    """One frame: the run's line, a bar per level, a bar per mapped node of its items, the counts, the slowest
    in-flight nodes."""
    if status is None:
        return Text("waiting for the run to report ...")
    now = time.time() if now is None else now
    state = status.get("status") or "running"
    updated = status.get("updated_at")
    age = f"  (updated {max(0.0, now - float(updated)):.1f} s ago)" if updated else ""
    lines = [f"run {status.get('run_id')} of {status.get('pipeline')}: {state}{age}"]
    for i, (done, total) in enumerate(status.get("levels") or []):
        filled = int(BAR * done / total) if total else BAR
        lines.append(f"  level {i:<3} [{'#' * filled}{'-' * (BAR - filled)}] {done}/{total}")
    lines.extend(_item_lines(status.get("items") or {}))
    counts = status.get("counts") or {}
    shown = ("running", "waiting", "ready", "pending", "waiting_retry", "succeeded", "cached", "resumed", "failed",
             "skipped", "cancelled")
    lines.append("  " + "  ".join(f"{k.replace('_', ' ')} {counts[k]}" for k in shown if counts.get(k)))
    slowest = status.get("slowest") or []
    if slowest:
        lines.append("  slowest: " + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in slowest))
    return Text("\n".join(lines))


def _item_lines(items: dict[str, Any]) -> list[str]:
    """A bar per mapped node of its items closed (the status document's ``items``: node -> [closed, total]), the
    ones still going first, at most :data:`ITEM_BARS_SHOWN`."""
    maps = [(str(name), int(done), int(total)) for name, (done, total) in items.items()]
    maps.sort(key=lambda m: m[1] >= m[2])  # stable: open ones first, each group in the run's order
    lines = []
    for name, done, total in maps[:ITEM_BARS_SHOWN]:
        filled = int(BAR * done / total) if total else BAR
        lines.append(f"  {name[:18]:<18} [{'#' * filled}{'-' * (BAR - filled)}] {done}/{total} items")
    if len(maps) > ITEM_BARS_SHOWN:
        rest = maps[ITEM_BARS_SHOWN:]
        lines.append(f"  ... {len(rest)} more mapped node(s): {sum(d for _, d, _ in rest)}/"
                     f"{sum(t for _, _, t in rest)} items")
    return lines


def watch(source: Source, *, interval_s: float = 1.0, console: Console | None = None,
          timeout_s: float | None = None) -> dict[str, Any] | None:
    """Redraw the run's status every ``interval_s`` until it is finished (or ``timeout_s`` passes); returns the
    last status. On a terminal the frame is redrawn in place; elsewhere each new frame is printed."""
    console = console or Console()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    status = source()
    if console.is_terminal:
        with Live(render(status), console=console, refresh_per_second=4, transient=False) as live:
            while not _over(status, deadline):
                time.sleep(interval_s)
                status = source()
                live.update(Group(render(status)))
        return status
    last = None
    while True:
        frame = render(status).plain
        if frame.split("\n", 1)[-1] != last:  # print a frame when something but its age changed
            console.print(frame, markup=False, highlight=False)
            last = frame.split("\n", 1)[-1]
        if _over(status, deadline):
            return status
        time.sleep(interval_s)
        status = source()


def _over(status: dict[str, Any] | None, deadline: float | None) -> bool:
    if status and not status.get("finished") and _silent_for(status) > STALE_S:
        return True  # no report for STALE_S: the driver is gone (the frame shows how long)
    return bool(status and status.get("finished")) or (deadline is not None and time.monotonic() >= deadline)


def _silent_for(status: dict[str, Any]) -> float:
    updated = status.get("updated_at")
    return time.time() - float(updated) if updated else 0.0
