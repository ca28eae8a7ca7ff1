"""The run report: one self-contained HTML file (header, DAG by level, worker timeline, summary table).

Everything is inline (CSS and SVG; no script, no font, no image, no URL), so the file opens offline and a
Content-Security-Policy meta tag forbids the browser from fetching anything. Every text that comes from
the run (pipeline name, node names, errors, reasons, worker ids) is HTML-escaped; the report shows only
what the run records hold.

A mapped node (issue 17) is one box in the DAG ("clean ×1000", with its items' statuses), one row in the table
with its items in a collapsed list (failed items first, with their errors), and in the timeline its items'
attempts sit on their workers' rows: one bar each when there are few (at most :data:`ITEM_BARS`), else one band
per worker, and a row per mapped node shows how many of its items ended over time. Its size does not grow with
the items past those bounds: a run of 10,000 items gives a report of tens of kilobytes.
"""

from __future__ import annotations

import datetime as _dt
import html
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..execution.result import AttemptRecord, ErrorKind, NodeRecord, NodeStatus, RunResult

if TYPE_CHECKING:
    from ..definition.dag import DAG

log = logging.getLogger(__name__)

__all__ = ["write_report", "render_report", "STATUS_COLOURS", "ATTEMPT_CLASSES", "ITEM_BARS", "ITEM_ROWS"]

#: Fill colour of each node status (the legend, the DAG boxes and the table badges use the same).
STATUS_COLOURS: dict[str, str] = {
    NodeStatus.SUCCEEDED.value: "#2e9e4f",
    NodeStatus.CACHED.value: "#2f6fdb",
    NodeStatus.RESUMED.value: "#8a4fd1",
    NodeStatus.FAILED.value: "#d33a2c",
    NodeStatus.SKIPPED.value: "#9aa0a6",
    NodeStatus.CANCELLED.value: "#e08a00",
    NodeStatus.PENDING.value: "#d5d8dc",
    NodeStatus.RUNNING.value: "#f2c94c",
}
_LEGEND = [(NodeStatus.SUCCEEDED, "ran, succeeded"), (NodeStatus.CACHED, "cached (not run)"),
           (NodeStatus.RESUMED, "resumed (kept from the earlier run)"), (NodeStatus.FAILED, "failed"),
           (NodeStatus.SKIPPED, "skipped (upstream failed)"), (NodeStatus.CANCELLED, "cancelled")]

#: CSS class of a timeline bar, by the outcome of that one attempt.
ATTEMPT_CLASSES = ("ok", "failed", "cancelled", "unfinished")

# Layout (px).
_COL_W, _BOX_W, _BOX_H, _ROW_H, _PAD, _HEAD = 210, 170, 40, 54, 16, 28
_LABEL_W, _PLOT_W, _LANE_H, _BAR_H, _AXIS_H, _NOTE_H = 230, 960, 22, 16, 26, 20
_NAME_CHARS = 24
# A DAG with a level of more than _COMPACT_AFTER nodes is drawn compact: one line per box (the name, and the
# number of attempts when it was retried), so that 8 levels of 25 nodes fit a 1400 x 1000 window at 12 px.
_COMPACT_AFTER = 12
_C_COL_W, _C_BOX_W, _C_BOX_H, _C_ROW_H, _C_NAME_CHARS = 164, 138, 22, 28, 16
_TICK_W = 80  # right of the plot: room for the last tick's label ("+1 min 20.0 s" at 10 px)

#: A mapped node with at most this many item attempts has one timeline bar per attempt; with more, its attempts on
#: each worker are one band (a failed attempt still marked, up to :data:`_FAIL_MARKS` per node).
ITEM_BARS = 200
_ITEM_BARS_TOTAL = 1000  # ... and at most this many for all mapped nodes together (the next ones get bands)
#: Items of a mapped node listed one by one in the table (failed first, then retried ones); the others are listed
#: by ranges of their indexes, per status.
ITEM_ROWS = 100
_ITEM_TRACEBACKS = 20  # item rows that show their traceback (the others: the error's type and message)
_RANGES_SHOWN = 40  # index ranges listed per status
_FAIL_MARKS = 100
_TRICKLE_BINS = 160  # columns of a mapped node's "items ended over time" row
_NODE_ROW_H = 2 * _LANE_H
#: The order item statuses are listed in (the DAG box, the table).
_ITEM_ORDER = ("succeeded", "cached", "resumed", "failed", "cancelled", "skipped", "running", "pending")

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1f2328;background:#fff}
h1{font-size:22px;margin:0 0 8px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:8px 0}
dl.meta dt{color:#57606a} dl.meta dd{margin:0}
.badge{display:inline-block;padding:0 7px;border-radius:9px;color:#fff;font-size:12px;margin-right:4px}
.legend span.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;
 margin:0 4px 0 12px}
.scroll{overflow:auto;border:1px solid #d0d7de;border-radius:6px;padding:4px;max-height:80vh}
svg text{font:12px system-ui,sans-serif} svg .sub{font-size:10px;fill:#fff}
svg .node text.name{fill:#fff;font-weight:600} svg .node text.tries{fill:#fff;font-size:11px;font-weight:700}
svg .node.status-skipped text,svg .node.status-pending text{fill:#1f2328}
svg .edge{fill:none;stroke:#8c959f;stroke-width:1.3}
svg .node:hover rect{stroke:#1f2328;stroke-width:2}
svg .attempt.ok{fill:#2e9e4f} svg .attempt.failed{fill:url(#hatch);stroke:#d33a2c;stroke-width:1.5}
svg .attempt.cancelled{fill:#e08a00;opacity:.8} svg .attempt.unfinished{fill:#f2c94c}
svg .attempt:hover{stroke:#1f2328;stroke-width:2}
svg .retry-link{stroke:#d33a2c;stroke-dasharray:3 2;stroke-width:1.2;fill:none}
svg .axis{stroke:#d0d7de} svg .tick{fill:#57606a;font-size:10px} svg .rowlabel{fill:#1f2328}
svg .rowband{fill:#f6f8fa}
svg .stack rect{stroke:#fff;stroke-width:1} svg .node text.items-count{fill:#fff;font-size:11px;font-weight:700}
svg .item-band{fill:#2e9e4f} svg .item-band:hover{stroke:#1f2328;stroke-width:2}
svg .trickle.ok{fill:#2e9e4f} svg .trickle.failed{fill:#d33a2c} svg .mapband{fill:#eef3fb}
.mapped{font-size:12px;font-weight:700;color:#57606a} details.items summary{cursor:pointer;color:#57606a}
table.items{margin:4px 0;font-size:12px} table.items th{position:static} .ranges{font-size:12px;margin:4px 0}
table{border-collapse:collapse;width:100%} th,td{border-bottom:1px solid #d0d7de;padding:4px 8px;
 text-align:left;vertical-align:top} th{background:#f6f8fa;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums} pre{white-space:pre-wrap;margin:4px 0;font-size:12px}
code{font-size:12px}
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def write_report(result: RunResult, path: str | os.PathLike[str], dag: DAG | None = None, *,
                 inputs: Mapping[str, Any] | None = None) -> Path:
    """Write the run report of ``result`` to ``path`` (one self-contained HTML file) and return its path.

    The DAG's edges come from ``dag`` (the :class:`~odibi_ray.DAG` that ran) or from ``inputs`` (node ->
    its upstream node names, or its ``{param: upstream}`` map); with neither, the boxes are drawn without
    edges. The file is written to a temporary name beside ``path`` and renamed, so a reader never sees
    half a report.
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"cannot write the run report to {str(target)!r}: it is a folder")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write the run report to {str(target)!r}: "
                                f"folder {str(target.parent)!r} does not exist")
    text = render_report(result, dag, inputs=inputs)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("run report of %s run %s written to %s", result.pipeline, result.run_id, target)
    return target


def render_report(result: RunResult, dag: DAG | None = None, *, inputs: Mapping[str, Any] | None = None) -> str:
    """The run report of ``result`` as an HTML string (see :func:`write_report`)."""
    if not isinstance(result, RunResult):
        raise TypeError(f"write_report expects a RunResult, got {type(result).__name__}")
    edges = _edges(result, dag, inputs)
    title = f"Run report: {result.pipeline} {result.run_id}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        _header(result),
        '<h2 id="dag">DAG by level</h2>',
        _legend(result),
        f'<div class="scroll">{_dag_svg(result, edges)}</div>',
        '<h2 id="timeline">Timeline (one row per worker, one bar per attempt)</h2>',
        _timeline_legend(result),
        f'<div class="scroll">{_timeline_svg(result)}</div>',
        '<h2 id="nodes">Nodes</h2>',
        _table(result),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# --- inputs -------------------------------------------------------------------------------------------

def _edges(result: RunResult, dag: DAG | None, inputs: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(upstream, consumer) pairs, checked against the run's nodes."""
    if dag is not None and inputs is not None:
        raise ValueError("write_report takes dag= or inputs=, not both")
    if dag is not None:
        from ..definition.dag import DAG

        if not isinstance(dag, DAG):
            raise TypeError(f"dag= must be a DAG, got {type(dag).__name__}")
        upstream = {node.name: node.upstream for node in dag}
        source = f"dag {dag.name!r}"
    elif inputs is not None:
        if not isinstance(inputs, Mapping):
            raise TypeError(f"inputs= must map a node to its upstream node names, got {type(inputs).__name__}")
        upstream = {str(name): _upstream_names(name, ups) for name, ups in inputs.items()}
        source = "inputs="
    else:
        return []
    edges = [(up, name) for name, ups in upstream.items() for up in ups]
    unknown = sorted({n for edge in edges for n in edge} - set(result.nodes))
    if unknown:
        raise ValueError(f"{source} names node(s) {unknown} that are not in run {result.run_id} "
                         f"of pipeline {result.pipeline!r}")
    return list(dict.fromkeys(edges))


def _upstream_names(name: Any, ups: Any) -> list[str]:
    if isinstance(ups, str):
        return [ups]
    if isinstance(ups, Mapping):
        ups = list(ups.values())
    names = list(ups) if isinstance(ups, Iterable) else None
    if names is None or not all(isinstance(u, str) for u in names):
        raise TypeError(f"inputs[{name!r}] must be node names (a list, or a {{param: node}} map), got {ups!r}")
    return list(dict.fromkeys(names))


# --- small helpers ------------------------------------------------------------------------------------

def _e(value: object) -> str:
    """HTML-escape anything (text and attribute values alike)."""
    return html.escape(str(value), quote=True)


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 0.01:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, sec = divmod(seconds, 60)
    return f"{int(minutes)} min {sec:04.1f} s"


def _fmt_time(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _short(text: str, n: int = _NAME_CHARS) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#57606a")
    return f'<span class="badge status-{_e(status)}" style="background:{colour}">{_e(status)}</span>'


def _counts(result: RunResult) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rec in result.nodes.values():
        counts[rec.status.value] = counts.get(rec.status.value, 0) + 1
    return counts


def _worker_label(att: AttemptRecord) -> str:
    if att.worker_node_id is None and att.worker_pid is None:
        return "not started"
    return f"{att.worker_node_id or '?'} pid {att.worker_pid if att.worker_pid is not None else '?'}"


def _attempt_class(att: AttemptRecord) -> str:
    if att.error is not None:
        return "cancelled" if att.error.kind is ErrorKind.CANCELLED else "failed"
    return "ok" if att.ended_at is not None else "unfinished"


def _n(value: int) -> str:
    return f"{value:,}"


def _mapped(result: RunResult) -> list[NodeRecord]:
    """The mapped nodes whose items are known, in the run's order."""
    return [rec for rec in result.nodes.values() if rec.items is not None]


def _ordered(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    order = {s: i for i, s in enumerate(_ITEM_ORDER)}
    return sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))


def _items_text(rec: NodeRecord) -> str:
    """``"1,000 items: 998 succeeded, 2 failed"``."""
    n = len(rec.items or ())
    counts = ", ".join(f"{_n(v)} {k}" for k, v in _ordered(rec.item_counts()))
    return f"{_n(n)} item{'' if n == 1 else 's'}" + (f": {counts}" if counts else "")


def _item_attempt_count(rec: NodeRecord) -> tuple[int, int]:
    """A mapped node's item attempts, and how many of them failed."""
    total = failed = 0
    for item in rec.items or ():
        total += len(item.attempt_history)
        failed += sum(1 for a in item.attempt_history if a.error is not None)
    return total, failed


def _all_attempts(rec: NodeRecord) -> int:
    """A node's attempts; a mapped node's: its items'."""
    return rec.attempts + _item_attempt_count(rec)[0] if rec.items else rec.attempts


# --- header -------------------------------------------------------------------------------------------

def _header(result: RunResult) -> str:
    counts = " ".join(f"{_badge(k)}{v}" for k, v in sorted(_counts(result).items())) or "no nodes"
    stats = ", ".join(f"{_e(k)}: {_e(v)}" for k, v in sorted(result.stats.items())) or "–"
    attempts = sum(_all_attempts(r) for r in result.nodes.values())
    rows = [("pipeline", _e(result.pipeline)), ("run id", f"<code>{_e(result.run_id)}</code>"),
            ("status", _badge(result.status.value)), ("backend", _e(result.backend)),
            ("started", _e(_fmt_time(result.started_at))), ("duration", _e(_fmt_s(result.duration_s))),
            ("nodes", f"{len(result.nodes)} in {len(result.levels)} level(s), {_n(attempts)} attempt(s)"),
            ("by status", counts)]
    mapped = _mapped(result)
    if mapped:
        by_item: dict[str, int] = {}
        for rec in mapped:
            for k, v in rec.item_counts().items():
                by_item[k] = by_item.get(k, 0) + v
        total = sum(by_item.values())
        by_status = " ".join(f"{_badge(k)}{_n(v)}" for k, v in _ordered(by_item))
        rows.append(("items", f'<span data-items="{total}">{_n(total)} item(s) of {len(mapped)} mapped node(s)'
                              f"</span> {by_status}"))
    rows.append(("stats", stats))
    items = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return (f'<h1>Run report: {_e(result.pipeline)}</h1><dl class="meta" data-run-id="{_e(result.run_id)}">'
            f"{items}</dl>")


def _legend(result: RunResult) -> str:
    counts = _counts(result)
    items = "".join(
        f'<span class="swatch status-{s.value}" style="background:{STATUS_COLOURS[s.value]}"></span>'
        f"{_e(label)} ({counts.get(s.value, 0)})" for s, label in _LEGEND)
    return f'<div class="legend">{items}</div>'


def _timeline_legend(result: RunResult) -> str:
    bands = bool(_banded(result))
    return ('<div class="legend"><span class="swatch" style="background:#2e9e4f"></span>attempt succeeded'
            '<span class="swatch" style="background:#fbe3e0;outline:1.5px solid #d33a2c"></span>attempt failed '
            '(hatched; a dashed line leads to its retry)'
            '<span class="swatch" style="background:#e08a00"></span>attempt cancelled'
            '<span class="swatch" style="background:#f2c94c"></span>unfinished'
            + ('<span class="swatch" style="background:#2e9e4f;opacity:.6"></span>the items of a mapped node with '
               f"many attempts (more than {ITEM_BARS}): one band per worker (paler when they ran for a small part "
               "of it)"
               if bands else "") + "</div>")


# --- the DAG ------------------------------------------------------------------------------------------

def _columns(result: RunResult) -> list[list[str]]:
    """Node names per level: the run's levels, plus any record they do not list (by its own level)."""
    cols = [list(level) for level in result.levels]
    placed = {n for level in cols for n in level}
    for name, rec in result.nodes.items():
        if name not in placed:
            while len(cols) <= rec.level:
                cols.append([])
            cols[rec.level].append(name)
    return [[n for n in col if n in result.nodes] for col in cols]


def _node_tooltip(rec: NodeRecord) -> str:
    failed = sum(1 for a in rec.attempt_history if a.error is not None)
    lines = [f"{rec.name}: {rec.status.value}", f"level {rec.level}",
             f"{rec.attempts} attempt(s)" + (f", {failed} failed" if failed else ""),
             f"duration {_fmt_s(rec.duration_s)}"]
    if rec.worker_node_id:
        lines.append(f"worker {_worker_label(rec.attempt_history[-1])}")
    if rec.error is not None:
        lines.append(f"error {rec.error.type_name}: {rec.error.message}")
    if rec.reason:
        lines.append(f"reason: {rec.reason}")
    if rec.cache_key:
        lines.append(f"cache key {rec.cache_key}")
    if rec.items is not None:
        lines[2:4] = _map_tooltip_lines(rec)
    return "\n".join(lines)


def _map_tooltip_lines(rec: NodeRecord) -> list[str]:
    """What a mapped node's box says of its items (instead of its own attempts, which it has none of)."""
    total, failed = _item_attempt_count(rec)
    lines = [f"mapped: {_items_text(rec)}",
             f"{_n(total)} item attempt(s)" + (f", {_n(failed)} failed" if failed else "")]
    span = _items_span(rec)
    if span is not None:
        lines.append(f"items ran for {_fmt_s(span[1] - span[0])} (first start to last end)")
    bad = [i for i in rec.items or () if i.status is NodeStatus.FAILED]
    for item in bad[:5]:
        err = item.error
        lines.append(f"failed {item.name}" + (f": {err.type_name}: {_short(err.message, 120)}" if err else ""))
    if len(bad) > 5:
        lines.append(f"... and {_n(len(bad) - 5)} more failed item(s) (the table lists them)")
    return lines


def _items_span(rec: NodeRecord) -> tuple[float, float] | None:
    """First start and last end of a mapped node's item attempts (None when none ran)."""
    starts = [a.started_at for i in rec.items or () for a in i.attempt_history if a.started_at is not None]
    ends = [a.ended_at for i in rec.items or () for a in i.attempt_history if a.ended_at is not None]
    return (min(starts), max(ends)) if starts and ends else None


def _status_strip(rec: NodeRecord, x: float, y: float, width: float, height: float) -> str:
    """A thin bar along a mapped node's box: its items' statuses, each as wide as its share."""
    n = len(rec.items or ())
    out = [f'<g class="item-strip"><rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height}" '
           'fill="#fff" opacity=".85"/>']
    at = x
    for status, count in _ordered(rec.item_counts()) if n else ():
        w = max(1.5, width * count / n)
        w = min(w, x + width - at)
        if w <= 0:
            break
        out.append(f'<rect class="strip-{_e(status)}" data-status="{_e(status)}" data-count="{count}" '
                   f'x="{at:.1f}" y="{y:.1f}" width="{w:.1f}" height="{height}" '
                   f'fill="{STATUS_COLOURS.get(status, "#57606a")}"/>')
        at += w
    out.append("</g>")
    return "".join(out)


def _dag_svg(result: RunResult, edges: list[tuple[str, str]]) -> str:
    cols = _columns(result)
    compact = max([len(c) for c in cols] + [0]) > _COMPACT_AFTER
    col_w, box_w, box_h, row_h = ((_C_COL_W, _C_BOX_W, _C_BOX_H, _C_ROW_H) if compact
                                  else (_COL_W, _BOX_W, _BOX_H, _ROW_H))
    pos: dict[str, tuple[float, float]] = {}
    for i, col in enumerate(cols):
        for j, name in enumerate(col):
            pos[name] = (_PAD + i * col_w, _HEAD + _PAD + j * row_h)
    width = _PAD * 2 + (max(1, len(cols)) - 1) * col_w + box_w
    height = _HEAD + _PAD * 2 + max([len(c) for c in cols] + [1]) * row_h - (row_h - box_h)
    out = [f'<svg class="dag{" compact" if compact else ""}" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="DAG by level">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0 0L10 5L0 10z" fill="#8c959f"/></marker></defs>']
    for i in range(len(cols)):
        out.append(f'<text class="tick" x="{_PAD + i * col_w}" y="{_PAD + 6}">level {i}</text>')
    for up, down in edges:
        (x1, y1), (x2, y2) = pos[up], pos[down]
        x1, y1, x2, y2 = x1 + box_w, y1 + box_h / 2, x2, y2 + box_h / 2
        mid = (x1 + x2) / 2
        out.append(f'<path class="edge" data-edge="{_e(up)}-&gt;{_e(down)}" data-from="{_e(up)}" '
                   f'data-to="{_e(down)}" d="M{x1:.1f} {y1:.1f}C{mid:.1f} {y1:.1f} {mid:.1f} {y2:.1f} '
                   f'{x2:.1f} {y2:.1f}" marker-end="url(#arrow)"/>')
    for name, (x, y) in pos.items():
        rec = result.nodes[name]
        status = rec.status.value
        if rec.items is not None:
            out.append(_mapped_box(rec, x, y, box_w, box_h, compact))
            continue
        if compact:  # one line: the name; "3×" at the right when it took more than one attempt
            retried = rec.attempts > 1
            label = (f'<text class="name" x="{x + 7}" y="{y + 15}">'
                     f"{_e(_short(name, _C_NAME_CHARS - (3 if retried else 0)))}</text>")
            if retried:
                label += (f'<text class="tries" x="{x + box_w - 6}" y="{y + 15}" text-anchor="end">'
                          f"{rec.attempts}×</text>")
        else:
            sub = f"{status} · {rec.attempts}× · {_fmt_s(rec.duration_s)}"
            label = (f'<text class="name" x="{x + 8}" y="{y + 16}">{_e(_short(name))}</text>'
                     f'<text class="sub" x="{x + 8}" y="{y + 32}">{_e(sub)}</text>')
        out.append(
            f'<g class="node status-{status}" data-node="{_e(name)}" data-status="{status}" '
            f'data-level="{rec.level}" data-attempts="{rec.attempts}">'
            f"<title>{_e(_node_tooltip(rec))}</title>"
            f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="{4 if compact else 6}" '
            f'fill="{STATUS_COLOURS.get(status, "#57606a")}"/>{label}</g>')
    out.append("</svg>")
    return "".join(out)


def _mapped_box(rec: NodeRecord, x: float, y: float, box_w: float, box_h: float, compact: bool) -> str:
    """A mapped node's box: a stack of cards, its name and item count ("clean ×1000"), its items' statuses in
    words (a full-size box) and as a strip of colours along its bottom."""
    status, n = rec.status.value, len(rec.items or ())
    colour = STATUS_COLOURS.get(status, "#57606a")
    off = 3 if compact else 4
    stack = (f'<g class="stack" data-stack-of="{_e(rec.name)}">'
             f'<rect x="{x + off}" y="{y + off}" width="{box_w}" height="{box_h}" rx="{4 if compact else 6}" '
             f'fill="{colour}" opacity=".55"/></g>')
    count = f"×{n}" if not compact or n < 10_000 else f"×{n // 1000}k"
    if compact:
        label = (f'<text class="name" x="{x + 7}" y="{y + 14}">'
                 f"{_e(_short(rec.name, _C_NAME_CHARS - len(count) - 1))}</text>"
                 f'<text class="items-count" x="{x + box_w - 6}" y="{y + 14}" text-anchor="end">{count}</text>')
        strip = _status_strip(rec, x + 4, y + box_h - 5, box_w - 8, 2.5)
    else:
        counts = " · ".join(f"{v} {k}" for k, v in _ordered(rec.item_counts())) or f"{status} · no items"
        label = (f'<text class="name" x="{x + 8}" y="{y + 16}">'
                 f"{_e(_short(rec.name, _NAME_CHARS - len(count) - 1))} {count}</text>"
                 f'<text class="sub" x="{x + 8}" y="{y + 30}">{_e(_short(counts, 30))}</text>')
        strip = _status_strip(rec, x + 8, y + box_h - 6, box_w - 16, 3)
    total, failed = _item_attempt_count(rec)
    counts_attr = ",".join(f"{k}:{v}" for k, v in _ordered(rec.item_counts()))
    return (f'{stack}<g class="node mapped status-{status}" data-node="{_e(rec.name)}" data-status="{status}" '
            f'data-level="{rec.level}" data-attempts="{rec.attempts}" data-items="{n}" '
            f'data-item-counts="{_e(counts_attr)}" data-item-attempts="{total}" data-item-failed-attempts="{failed}">'
            f"<title>{_e(_node_tooltip(rec))}</title>"
            f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="{4 if compact else 6}" fill="{colour}"/>'
            f"{label}{strip}</g>")


# --- the timeline -------------------------------------------------------------------------------------

@dataclass
class _Band:
    """The item attempts of one mapped node on one worker, close together in time: one bar."""

    attempts: int = 0
    failed: int = 0
    busy_s: float = 0.0  # the attempts' own durations, summed


@dataclass
class _Bar:
    node: str  # the node (a mapped node, for an item's attempt or a band)
    att: AttemptRecord | None  # None for a band
    total: int  # attempts of its record (the node's, or the item's)
    start: float
    end: float
    lane: int = 0
    item: str | None = None  # the item's name, for an item's attempt
    band: _Band | None = None
    marks: list[tuple[str, AttemptRecord, int]] = field(default_factory=list)  # a band's failed attempts

    @property
    def owner(self) -> str:
        """The record whose attempt this is (the item's, or the node's)."""
        return self.item or self.node


@dataclass
class _Span:
    node: str
    item: str | None
    att: AttemptRecord
    total: int
    start: float
    end: float

    @property
    def worker(self) -> tuple[str, str]:
        return (self.att.worker_node_id or "", "" if self.att.worker_pid is None else str(self.att.worker_pid))


def _spans(result: RunResult, t_end: float) -> tuple[list[_Span], dict[str, list[_Span]]]:
    """Every attempt of the run with its place in time: the plain nodes' (and the items' of a mapped node with
    few), and the item attempts of each mapped node with many (drawn as bands)."""
    def span(node: str, item: str | None, rec: NodeRecord, att: AttemptRecord) -> _Span:
        start = att.started_at if att.started_at is not None else att.submitted_at
        end = att.ended_at if att.ended_at is not None else max(t_end, start)
        return _Span(node, item, att, rec.attempts, start, max(end, start))

    single: list[_Span] = []
    banded: dict[str, list[_Span]] = {}
    bands = _banded(result)
    for name, rec in result.nodes.items():
        single.extend(span(name, None, rec, att) for att in rec.attempt_history)
        if rec.items:
            spans = [span(name, item.name, item, att) for item in rec.items for att in item.attempt_history]
            if name in bands:
                banded[name] = spans
            else:
                single.extend(spans)
    return single, banded


def _banded(result: RunResult) -> set[str]:
    """The mapped nodes whose item attempts are drawn as bands: more than :data:`ITEM_BARS` of them, or past
    :data:`_ITEM_BARS_TOTAL` item bars for the run."""
    out, drawn = set(), 0
    for rec in _mapped(result):
        total = _item_attempt_count(rec)[0]
        if total > ITEM_BARS or drawn + total > _ITEM_BARS_TOTAL:
            out.add(rec.name)
        else:
            drawn += total
    return out


def _bands(node: str, spans: list[_Span], gap: float) -> list[tuple[tuple[str, str], _Bar]]:
    """One mapped node's item attempts as bands: per worker, attempts less than ``gap`` apart are one band; its
    failed attempts are kept as marks (at most :data:`_FAIL_MARKS` for the node)."""
    by_worker: dict[tuple[str, str], list[_Span]] = {}
    for sp in spans:
        by_worker.setdefault(sp.worker, []).append(sp)
    out: list[tuple[tuple[str, str], _Bar]] = []
    marks = 0
    for key, group in by_worker.items():
        group.sort(key=lambda sp: sp.start)
        bar: _Bar | None = None
        for sp in group:
            if bar is None or sp.start > bar.end + gap:
                bar = _Bar(node, None, 0, sp.start, sp.end, band=_Band())
                out.append((key, bar))
            band = bar.band
            assert band is not None
            bar.end = max(bar.end, sp.end)
            band.attempts += 1
            band.busy_s += sp.end - sp.start
            if sp.att.error is not None:
                band.failed += 1
                if marks < _FAIL_MARKS:
                    marks += 1
                    bar.marks.append((sp.item or node, sp.att, sp.total))
    return out


def _rows(single: list[_Span], banded: dict[str, list[_Span]], gap: float) -> dict[tuple[str, str], list[_Bar]]:
    """Bars grouped by worker (node id, pid), each placed in the first free lane of its row."""
    rows: dict[tuple[str, str], list[_Bar]] = {}
    for sp in single:
        rows.setdefault(sp.worker, []).append(_Bar(sp.node, sp.att, sp.total, sp.start, sp.end, item=sp.item))
    for node, spans in banded.items():
        for key, bar in _bands(node, spans, gap):
            rows.setdefault(key, []).append(bar)
    for bars in rows.values():
        bars.sort(key=lambda b: (b.start, b.end))
        lane_ends: list[float] = []
        for bar in bars:
            for i, end in enumerate(lane_ends):
                if end <= bar.start:
                    bar.lane, lane_ends[i] = i, bar.end
                    break
            else:
                bar.lane = len(lane_ends)
                lane_ends.append(bar.end)
    return dict(sorted(rows.items(), key=lambda kv: (kv[1][0].start, kv[0])))


def _tick_step(span: float) -> float:
    raw = span / 8
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def _attempt_tooltip(owner: str, att: AttemptRecord, total: int, start: float, t0: float, run_start: float,
                     node: str | None = None) -> str:
    lines = [f"{owner}: attempt {att.number} of {total} ({_attempt_class(att)})"]
    if node is not None and node != owner:
        lines.append(f"an item of mapped node {node}")
    lines += [f"worker {_worker_label(att)}",
              f"started +{_fmt_s(start - t0)} ({_fmt_s(start - run_start)} after the run started), "
              f"ran {_fmt_s(att.duration_s)}"]
    if att.queue_wait_s is not None:
        lines.append(f"queued {_fmt_s(att.queue_wait_s)}")
    if att.error is not None:
        lines.append(f"error {att.error.type_name} ({att.error.kind}): {_short(att.error.message, 300)}")
    return "\n".join(lines)


def _band_tooltip(bar: _Bar, t0: float) -> str:
    band = bar.band
    assert band is not None
    length = max(bar.end - bar.start, 0.0)
    busy = f"; their own run time {_fmt_s(band.busy_s)}" + (f" ({100 * band.busy_s / length:.0f} % of it)"
                                                              if length > 0 else "")
    lines = [f"{bar.node}: {_n(band.attempts)} item attempt(s) on this worker"
             + (f", {_n(band.failed)} failed" if band.failed else ""),
             f"from +{_fmt_s(bar.start - t0)} to +{_fmt_s(bar.end - t0)}{busy}"]
    if band.failed > len(bar.marks):
        lines.append(f"{_n(band.failed - len(bar.marks))} failed attempt(s) not marked one by one (the table "
                     "lists the failed items)")
    return "\n".join(lines)


def _empty_timeline() -> str:
    # Nothing to draw on an axis: one line of text, in a box tall enough for it.
    width, height = _LABEL_W + _PLOT_W + _PAD, _AXIS_H + _LANE_H + _PAD
    return (f'<svg class="timeline empty" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="timeline of attempts per worker">'
            f'<text class="rowlabel" x="{_PAD}" y="{height // 2 + 5}">no attempt ran in this run</text></svg>')


def _timeline_svg(result: RunResult) -> str:
    t_end = result.ended_at
    single, banded = _spans(result, t_end)
    everything = single + [sp for spans in banded.values() for sp in spans]
    if not everything:
        return _empty_timeline()
    # The axis spans the attempts, from the first one's start: the time before it (starting or joining Ray,
    # planning, reading the cache) is said in words above the axis, so a short run is not a sliver at the
    # right edge of seconds of start-up.
    t0 = min(sp.start for sp in everything)
    t1 = max(sp.end for sp in everything)
    span = max(t1 - t0, 1e-3)
    scale = _PLOT_W / span
    rows = _rows(single, banded, gap=2 / scale)  # attempts less than 2 px apart make one band

    def x_of(t: float) -> float:
        return _LABEL_W + (t - t0) * scale

    mapped = [rec for rec in _mapped(result) if any(i.attempt_history for i in rec.items or ())]
    heights = {key: max(b.lane for b in bars) + 1 for key, bars in rows.items()}
    top = _AXIS_H + _NOTE_H  # the note line, then the axis labels
    maps_h = (_NOTE_H + len(mapped) * (_NODE_ROW_H + 6)) if mapped else 0
    height = top + sum(h * _LANE_H + 6 for h in heights.values()) + maps_h + _PAD
    width = _LABEL_W + _PLOT_W + _TICK_W  # room for the last tick's label
    out = [f'<svg class="timeline" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="timeline of attempts per worker">',
           '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
           'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fbe3e0"/>'
           '<line x1="0" y1="0" x2="0" y2="6" stroke="#d33a2c" stroke-width="3"/></pattern></defs>']
    startup = max(0.0, t0 - result.started_at)
    after = max(0.0, t_end - t1)
    note = (f"0 = the first attempt's start, {_fmt_s(startup)} after the run started (starting or joining Ray, "
            f"planning, the cache)")
    if after >= 0.01:
        note += f"; the run ended {_fmt_s(after)} after the last attempt"
    out.append(f'<text class="tick startup" data-startup-s="{startup:.3f}" data-after-s="{after:.3f}" '
               f'x="{_PAD}" y="{_NOTE_H - 6}">{_e(note)}</text>')
    step = _tick_step(span)
    k = 0
    while k * step <= span + 1e-12:
        x = x_of(t0 + k * step)
        out.append(f'<line class="axis" x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height - _PAD}"/>'
                   f'<text class="tick" x="{x + 2:.1f}" y="{top - 10}">'
                   f'{_e("+" + _fmt_s(k * step) if k else "0")}</text>')
        k += 1
    y = top
    ends: dict[tuple[str, int], tuple[float, float]] = {}  # (record, attempt) -> (x_end, y_mid) of its bar
    starts: dict[tuple[str, int], tuple[float, float]] = {}
    failed_before: dict[tuple[str, int], bool] = {}
    for (node_id, pid), bars in rows.items():
        h = heights[(node_id, pid)] * _LANE_H
        label = next((_worker_label(b.att) for b in bars if b.att is not None), None)
        if label is None:  # a row of bands only: its worker is the same for all of them
            label = "not started" if not node_id and not pid else f"{node_id or '?'} pid {pid or '?'}"
        short = ("not started" if label == "not started"
                 else f"{_short(node_id or '?', 14)} pid {pid or '?'}")
        out.append(f'<g class="worker" data-worker-node="{_e(node_id)}" data-worker-pid="{_e(pid)}">'
                   f'<title>{_e(label)}</title>'
                   f'<rect class="rowband" x="0" y="{y}" width="{width}" height="{h + 2}"/>'
                   f'<text class="rowlabel" x="{_PAD}" y="{y + 15}">{_e(short)}</text></g>')
        for bar in bars:
            bx, by = x_of(bar.start), y + 3 + bar.lane * _LANE_H
            bw = max(2.0, (bar.end - bar.start) * scale)
            if bar.band is not None:
                out.append(_band_svg(bar, bx, by, bw, node_id, pid, x_of, scale, t0, result.started_at))
                continue
            att = bar.att
            assert att is not None
            cls = _attempt_class(att)
            item = f' data-item="{_e(bar.item)}"' if bar.item else ""
            out.append(
                f'<rect class="attempt {cls}{" item" if bar.item else ""}" data-node="{_e(bar.node)}"{item} '
                f'data-attempt="{att.number}" data-worker-node="{_e(node_id)}" data-worker-pid="{_e(pid)}" '
                f'data-error-type="{_e(att.error.type_name if att.error else "")}" '
                f'x="{bx:.1f}" y="{by:.1f}" width="{bw:.1f}" height="{_BAR_H}" rx="2">'
                f"<title>{_e(_attempt_tooltip(bar.owner, att, bar.total, bar.start, t0, result.started_at, bar.node))}"
                "</title></rect>")
            if bw > 60:
                out.append(f'<text class="sub" x="{bx + 3:.1f}" y="{by + 12:.1f}" pointer-events="none">'
                           f"{_e(_short(f'{bar.owner} #{att.number}', int(bw / 7)))}</text>")
            starts[(bar.owner, att.number)] = (bx, by + _BAR_H / 2)
            ends[(bar.owner, att.number)] = (bx + bw, by + _BAR_H / 2)
            failed_before[(bar.owner, att.number)] = att.error is not None
        y += h + 6
    for (owner, number), (x1, y1) in ends.items():
        nxt = starts.get((owner, number + 1))
        if nxt is not None and failed_before[(owner, number)]:
            node = owner.split("[", 1)[0]
            item = f' data-item="{_e(owner)}"' if owner != node else ""
            out.append(f'<path class="retry-link" data-node="{_e(node)}"{item} data-from-attempt="{number}" '
                       f'd="M{x1:.1f} {y1:.1f}Q{(x1 + nxt[0]) / 2:.1f} {min(y1, nxt[1]) - 12:.1f} '
                       f'{nxt[0]:.1f} {nxt[1]:.1f}"/>')
    if mapped:
        out.append(f'<text class="tick" x="{_PAD}" y="{y + _NOTE_H - 6}">per mapped node: its item attempts ended '
                   "over time (green: succeeded, red: failed; each column the same slice of time)</text>")
        y += _NOTE_H
        for rec in mapped:
            out.append(_trickle_svg(rec, y, width, t0, span))
            y += _NODE_ROW_H + 6
    out.append("</svg>")
    return "".join(out)


def _band_svg(bar: _Bar, bx: float, by: float, bw: float, node_id: str, pid: str, x_of: Callable[[float], float],
              scale: float, t0: float, run_start: float) -> str:
    """A band of item attempts, then its failed attempts marked on it (hatched, each with its tooltip)."""
    band = bar.band
    assert band is not None
    length = bar.end - bar.start
    busy = min(1.0, band.busy_s / length) if length > 0 else 1.0
    out = [f'<rect class="item-band" data-node="{_e(bar.node)}" data-worker-node="{_e(node_id)}" '
           f'data-worker-pid="{_e(pid)}" data-attempts="{band.attempts}" data-failed="{band.failed}" '
           f'x="{bx:.1f}" y="{by:.1f}" width="{bw:.1f}" height="{_BAR_H}" rx="2" '
           f'fill-opacity="{0.35 + 0.65 * busy:.2f}"><title>{_e(_band_tooltip(bar, t0))}</title></rect>']
    if bw > 60:
        out.append(f'<text class="sub" x="{bx + 3:.1f}" y="{by + 12:.1f}" pointer-events="none">'
                   f"{_e(_short(f'{bar.node} ×{band.attempts}', int(bw / 7)))}</text>")
    for owner, att, total in bar.marks:
        start = att.started_at if att.started_at is not None else att.submitted_at
        end = att.ended_at if att.ended_at is not None else bar.end
        mx, mw = x_of(start), max(2.0, (end - start) * scale)
        out.append(f'<rect class="attempt failed item" data-node="{_e(bar.node)}" data-item="{_e(owner)}" '
                   f'data-attempt="{att.number}" data-worker-node="{_e(node_id)}" data-worker-pid="{_e(pid)}" '
                   f'data-error-type="{_e(att.error.type_name if att.error else "")}" '
                   f'x="{mx:.1f}" y="{by:.1f}" width="{mw:.1f}" height="{_BAR_H}" rx="1">'
                   f"<title>{_e(_attempt_tooltip(owner, att, total, start, t0, run_start, bar.node))}</title></rect>")
    return "".join(out)


def _trickle_svg(rec: NodeRecord, y: float, width: float, t0: float, span: float) -> str:
    """One mapped node's row: how many of its item attempts ended in each slice of time, as columns (succeeded
    below, failed above), scaled to the busiest slice."""
    ok = [0] * _TRICKLE_BINS
    bad = [0] * _TRICKLE_BINS
    for item in rec.items or ():
        for att in item.attempt_history:
            if att.ended_at is None:
                continue
            b = min(_TRICKLE_BINS - 1, max(0, int((att.ended_at - t0) / span * _TRICKLE_BINS)))
            (ok if att.error is None else bad)[b] += 1
    peak = max([o + f for o, f in zip(ok, bad)] + [1])
    col_w = _PLOT_W / _TRICKLE_BINS
    base, room = y + _NODE_ROW_H - 2, _NODE_ROW_H - 6
    paths: dict[str, list[str]] = {"ok": [], "failed": []}
    for b in range(_TRICKLE_BINS):
        x = _LABEL_W + b * col_w
        h_ok, h_bad = room * ok[b] / peak, room * bad[b] / peak
        if ok[b]:
            paths["ok"].append(f"M{x:.1f} {base:.1f}v{-max(h_ok, 1):.1f}h{col_w - 1:.1f}v{max(h_ok, 1):.1f}z")
        if bad[b]:
            top = base - h_ok
            paths["failed"].append(f"M{x:.1f} {top:.1f}v{-max(h_bad, 2):.1f}h{col_w - 1:.1f}v{max(h_bad, 2):.1f}z")
    total, failed = _item_attempt_count(rec)
    slice_s = span / _TRICKLE_BINS
    title = (f"{rec.name}: {_items_text(rec)}\n{_n(total)} item attempt(s)"
             + (f", {_n(failed)} failed" if failed else "")
             + f"\nat most {_n(peak)} ended in one slice of {_fmt_s(slice_s)}")
    label = f"{_short(rec.name, 18)} ×{len(rec.items or ())}"
    counts = ", ".join(f"{_n(v)} {k}" for k, v in _ordered(rec.item_counts()))
    out = [f'<g class="maprow" data-node="{_e(rec.name)}" data-items="{len(rec.items or ())}" '
           f'data-item-attempts="{total}" data-peak="{peak}"><title>{_e(title)}</title>'
           f'<rect class="mapband" x="0" y="{y}" width="{width}" height="{_NODE_ROW_H + 2}"/>'
           f'<text class="rowlabel" x="{_PAD}" y="{y + 15}">{_e(label)}</text>'
           f'<text class="tick" x="{_PAD}" y="{y + 30}">{_e(_short(counts, 34))}</text>']
    for cls, parts in paths.items():
        if parts:
            out.append(f'<path class="trickle {cls}" d="{"".join(parts)}"/>')
    out.append("</g>")
    return "".join(out)


# --- the table ----------------------------------------------------------------------------------------

def _detail(rec: NodeRecord, traceback: bool = True) -> list[str]:
    """A record's error (with its traceback, folded), retries and reason, as HTML pieces."""
    detail = []
    if rec.error is not None:
        detail.append(f"<strong>{_e(rec.error.type_name)}</strong>: {_e(rec.error.message)}")
        if rec.error.detail:
            detail.append(f"<br>{_e(rec.error.detail)}")
        if rec.error.traceback and traceback:
            detail.append(f"<details><summary>traceback</summary><pre>{_e(rec.error.traceback)}</pre>"
                          "</details>")
    retried = [a for a in rec.attempt_history if a.error is not None and a is not rec.attempt_history[-1]]
    if retried:
        errs = "; ".join(f"#{a.number} {a.error.type_name}" for a in retried if a.error)
        detail.append(f'<div class="retries">retried after: {_e(errs)}</div>')
    if rec.reason:
        detail.append(f'<div class="reason">{_e(rec.reason)}</div>')
    return detail


def _table(result: RunResult) -> str:
    head = ("<tr><th>node</th><th>level</th><th>status</th><th>attempts</th><th>duration</th>"
            "<th>worker</th><th>error / reason</th></tr>")
    rows = []
    for col in _columns(result):
        for name in col:
            rec = result.nodes[name]
            if rec.items is not None:
                rows.append(_mapped_row(rec))
                continue
            worker = _e(_worker_label(rec.attempt_history[-1])) if rec.attempt_history else "–"
            rows.append(
                f'<tr data-node="{_e(name)}" data-status="{rec.status.value}"><td><code>{_e(name)}</code></td>'
                f'<td class="num">{rec.level}</td><td>{_badge(rec.status.value)}</td>'
                f'<td class="num">{rec.attempts}</td><td class="num">{_e(_fmt_s(rec.duration_s))}</td>'
                f"<td><code>{worker}</code></td><td>{''.join(_detail(rec)) or '–'}</td></tr>")
    return f'<table class="nodes"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _mapped_row(rec: NodeRecord) -> str:
    """A mapped node's row: its items' attempts, how long they ran (first start to last end), on how many workers,
    its items by status, then its items in a folded list (open when one failed)."""
    items = rec.items or []
    total, failed = _item_attempt_count(rec)
    span = _items_span(rec)
    workers = {(a.worker_node_id, a.worker_pid) for i in items for a in i.attempt_history}
    counts = " ".join(f"{_badge(k)}{_n(v)}" for k, v in _ordered(rec.item_counts()))
    detail = [f'<div class="item-counts">{_e(_n(len(items)))} item(s) {counts}</div>', *_detail(rec)]
    listing = _items_list(rec)
    if listing:  # a row of its own below, the table's whole width
        listing = f'<tr class="items-of" data-items-of="{_e(rec.name)}"><td></td><td colspan="6">{listing}</td></tr>'
    return (f'<tr data-node="{_e(rec.name)}" data-status="{rec.status.value}" data-items="{len(items)}">'
            f'<td><code>{_e(rec.name)}</code> <span class="mapped" title="a mapped node: one task per item">'
            f"×{len(items)}</span></td>"
            f'<td class="num">{rec.level}</td><td>{_badge(rec.status.value)}</td>'
            f'<td class="num" title="its items\' attempts ({_n(failed)} failed)">{_n(total)}</td>'
            f'<td class="num" title="its items\' first start to their last end">'
            f"{_e(_fmt_s(span[1] - span[0]) if span else '–')}</td>"
            f"<td>{len(workers)} worker(s)</td><td>{''.join(detail)}</td></tr>{listing}")


def _items_list(rec: NodeRecord) -> str:
    """A mapped node's items, folded: one row each for the failed ones first, then the others not done well, then
    the retried ones, then (when it has at most :data:`ITEM_ROWS` items) the rest, up to :data:`ITEM_ROWS` rows; the
    items not listed, by ranges of their indexes per status."""
    items = rec.items or []
    if not items:
        return ""
    failed = [i for i in items if i.status is NodeStatus.FAILED]
    other_bad = [i for i in items if not i.status.ok and i.status is not NodeStatus.FAILED]
    retried = [i for i in items if i.status.ok and i.attempts > 1]
    rest = [i for i in items if i.status.ok and i.attempts <= 1]
    # few items: all of them; many: the failed, not done and retried ones (the others by index ranges below)
    listed = (failed + other_bad + retried + rest) if len(items) <= ITEM_ROWS else (failed + other_bad + retried)
    listed = listed[:ITEM_ROWS]
    rows = []
    for n, item in enumerate(listed):
        worker = _short_worker(item.attempt_history[-1]) if item.attempt_history else "–"
        rows.append(f'<tr class="item" data-item="{_e(item.name)}" data-parent="{_e(rec.name)}" '
                    f'data-status="{item.status.value}"><td><code>{_e(item.name)}</code></td>'
                    f"<td>{_badge(item.status.value)}</td><td class=\"num\">{item.attempts}</td>"
                    f'<td class="num">{_e(_fmt_s(item.duration_s))}</td><td>{worker}</td>'
                    f"<td>{''.join(_detail(item, traceback=n < _ITEM_TRACEBACKS)) or '–'}</td></tr>")
    shown = {id(i) for i in listed}
    ranges = _ranges(rec, [(pos, i) for pos, i in enumerate(items) if id(i) not in shown])
    order = "failed first" if failed else "not done well first" if other_bad else "retried first" if retried else ""
    more = f"; {_n(len(items) - len(listed))} more below by index" if len(listed) < len(items) else ""
    summary = f"{_items_text(rec)} ({'; '.join(p for p in (order, more[2:]) if p) or 'in item order'})"
    table = ('<table class="items"><thead><tr><th>item</th><th>status</th><th>attempts</th><th>duration</th>'
             f'<th>worker</th><th>error / reason</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')
    return (f'<details class="items" data-node="{_e(rec.name)}"{" open" if failed else ""}>'
            f"<summary>{_e(summary)}</summary>{table}{ranges}</details>")


def _short_worker(att: AttemptRecord) -> str:
    """A worker in few characters (``4f66703a306b0b… pid 25909``), the whole in its tooltip."""
    label = _worker_label(att)
    if label == "not started":
        return label
    short = f"{_short(att.worker_node_id or '?', 14)} pid {att.worker_pid if att.worker_pid is not None else '?'}"
    return f'<code title="{_e(label)}">{_e(short)}</code>'


def _ranges(rec: NodeRecord, unlisted: list[tuple[int, NodeRecord]]) -> str:
    """The items not listed one by one, per status, as ranges of their indexes (``clean[0–4999]``)."""
    if not unlisted:
        return ""
    by_status: dict[str, list[list[int]]] = {}
    for pos, item in unlisted:
        runs = by_status.setdefault(item.status.value, [])
        if runs and runs[-1][1] == pos - 1:
            runs[-1][1] = pos
        else:
            runs.append([pos, pos])
    lines = []
    counts: dict[str, int] = {}
    for _, item in unlisted:
        counts[item.status.value] = counts.get(item.status.value, 0) + 1
    for status, count in _ordered(counts):
        runs = by_status[status]
        text = ", ".join(f"{rec.name}[{a}]" if a == b else f"{rec.name}[{a}–{b}]" for a, b in runs[:_RANGES_SHOWN])
        if len(runs) > _RANGES_SHOWN:
            text += f", ... ({_n(len(runs) - _RANGES_SHOWN)} more ranges)"
        lines.append(f'<div class="ranges" data-status="{_e(status)}" data-count="{count}">{_badge(status)}'
                     f"{_n(count)} not listed above: {_e(text)}</div>")
    return "".join(lines)
