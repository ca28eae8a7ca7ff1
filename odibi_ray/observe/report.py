"""The run report: one self-contained HTML file (header, DAG by level, worker timeline, summary table).

Everything is inline (CSS and SVG; no script, no font, no image, no URL), so the file opens offline and a
Content-Security-Policy meta tag forbids the browser from fetching anything. Every text that comes from
the run (pipeline name, node names, errors, reasons, worker ids) is HTML-escaped; the report shows only
what the run records hold.
"""

from __future__ import annotations

import datetime as _dt
import html
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..execution.result import AttemptRecord, ErrorKind, NodeRecord, NodeStatus, RunResult

if TYPE_CHECKING:
    from ..definition.dag import DAG

log = logging.getLogger(__name__)

__all__ = ["write_report", "render_report", "STATUS_COLOURS", "ATTEMPT_CLASSES"]

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
        _timeline_legend(),
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


# --- header -------------------------------------------------------------------------------------------

def _header(result: RunResult) -> str:
    counts = " ".join(f"{_badge(k)}{v}" for k, v in sorted(_counts(result).items())) or "no nodes"
    stats = ", ".join(f"{_e(k)}: {_e(v)}" for k, v in sorted(result.stats.items())) or "–"
    attempts = sum(r.attempts for r in result.nodes.values())
    rows = [("pipeline", _e(result.pipeline)), ("run id", f"<code>{_e(result.run_id)}</code>"),
            ("status", _badge(result.status.value)), ("backend", _e(result.backend)),
            ("started", _e(_fmt_time(result.started_at))), ("duration", _e(_fmt_s(result.duration_s))),
            ("nodes", f"{len(result.nodes)} in {len(result.levels)} level(s), {attempts} attempt(s)"),
            ("by status", counts), ("stats", stats)]
    items = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return (f'<h1>Run report: {_e(result.pipeline)}</h1><dl class="meta" data-run-id="{_e(result.run_id)}">'
            f"{items}</dl>")


def _legend(result: RunResult) -> str:
    counts = _counts(result)
    items = "".join(
        f'<span class="swatch status-{s.value}" style="background:{STATUS_COLOURS[s.value]}"></span>'
        f"{_e(label)} ({counts.get(s.value, 0)})" for s, label in _LEGEND)
    return f'<div class="legend">{items}</div>'


def _timeline_legend() -> str:
    return ('<div class="legend"><span class="swatch" style="background:#2e9e4f"></span>attempt succeeded'
            '<span class="swatch" style="background:#fbe3e0;outline:1.5px solid #d33a2c"></span>attempt failed '
            '(hatched; a dashed line leads to its retry)'
            '<span class="swatch" style="background:#e08a00"></span>attempt cancelled'
            '<span class="swatch" style="background:#f2c94c"></span>unfinished</div>')


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
    return "\n".join(lines)


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


# --- the timeline -------------------------------------------------------------------------------------

@dataclass
class _Bar:
    node: str
    att: AttemptRecord
    total: int
    start: float
    end: float
    lane: int = 0


def _bars_by_worker(result: RunResult, t_end: float) -> dict[tuple[str, str], list[_Bar]]:
    """Attempts grouped by worker (node id, pid), each placed in the first free lane of its row."""
    rows: dict[tuple[str, str], list[_Bar]] = {}
    for name, rec in result.nodes.items():
        for att in rec.attempt_history:
            start = att.started_at if att.started_at is not None else att.submitted_at
            end = att.ended_at if att.ended_at is not None else max(t_end, start)
            key = (att.worker_node_id or "", "" if att.worker_pid is None else str(att.worker_pid))
            rows.setdefault(key, []).append(_Bar(name, att, rec.attempts, start, max(end, start)))
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


def _attempt_tooltip(bar: _Bar, t0: float, run_start: float) -> str:
    att = bar.att
    lines = [f"{bar.node}: attempt {att.number} of {bar.total} ({_attempt_class(att)})",
             f"worker {_worker_label(att)}",
             f"started +{_fmt_s(bar.start - t0)} ({_fmt_s(bar.start - run_start)} after the run started), "
             f"ran {_fmt_s(att.duration_s)}"]
    if att.queue_wait_s is not None:
        lines.append(f"queued {_fmt_s(att.queue_wait_s)}")
    if att.error is not None:
        lines.append(f"error {att.error.type_name} ({att.error.kind}): {_short(att.error.message, 300)}")
    return "\n".join(lines)


def _timeline_svg(result: RunResult) -> str:
    t_end = result.ended_at
    rows = _bars_by_worker(result, t_end)
    all_bars = [b for bars in rows.values() for b in bars]
    if not all_bars:
        # Nothing to draw on an axis: one line of text, in a box tall enough for it.
        width, height = _LABEL_W + _PLOT_W + _PAD, _AXIS_H + _LANE_H + _PAD
        return (f'<svg class="timeline empty" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
                f'role="img" aria-label="timeline of attempts per worker">'
                f'<text class="rowlabel" x="{_PAD}" y="{height // 2 + 5}">no attempt ran in this run</text></svg>')
    # The axis spans the attempts, from the first one's start: the time before it (starting or joining Ray,
    # planning, reading the cache) is said in words above the axis, so a short run is not a sliver at the
    # right edge of seconds of start-up.
    t0 = min(b.start for b in all_bars)
    t1 = max(b.end for b in all_bars)
    span = max(t1 - t0, 1e-3)
    scale = _PLOT_W / span

    def x_of(t: float) -> float:
        return _LABEL_W + (t - t0) * scale

    heights = {key: max(b.lane for b in bars) + 1 for key, bars in rows.items()}
    top = _AXIS_H + _NOTE_H  # the note line, then the axis labels
    height = top + sum(h * _LANE_H + 6 for h in heights.values()) + _PAD
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
    ends: dict[tuple[str, int], tuple[float, float]] = {}  # (node, attempt) -> (x_end, y_mid) of its bar
    starts: dict[tuple[str, int], tuple[float, float]] = {}
    for (node_id, pid), bars in rows.items():
        h = heights[(node_id, pid)] * _LANE_H
        label = _worker_label(bars[0].att)
        short = ("not started" if label == "not started"
                 else f"{_short(node_id or '?', 14)} pid {pid or '?'}")
        out.append(f'<g class="worker" data-worker-node="{_e(node_id)}" data-worker-pid="{_e(pid)}">'
                   f'<title>{_e(label)}</title>'
                   f'<rect class="rowband" x="0" y="{y}" width="{width}" height="{h + 2}"/>'
                   f'<text class="rowlabel" x="{_PAD}" y="{y + 15}">{_e(short)}</text></g>')
        for bar in bars:
            bx, by = x_of(bar.start), y + 3 + bar.lane * _LANE_H
            bw = max(2.0, (bar.end - bar.start) * scale)
            cls = _attempt_class(bar.att)
            out.append(
                f'<rect class="attempt {cls}" data-node="{_e(bar.node)}" data-attempt="{bar.att.number}" '
                f'data-worker-node="{_e(node_id)}" data-worker-pid="{_e(pid)}" '
                f'data-error-type="{_e(bar.att.error.type_name if bar.att.error else "")}" '
                f'x="{bx:.1f}" y="{by:.1f}" width="{bw:.1f}" height="{_BAR_H}" rx="2">'
                f"<title>{_e(_attempt_tooltip(bar, t0, result.started_at))}</title></rect>")
            if bw > 60:
                out.append(f'<text class="sub" x="{bx + 3:.1f}" y="{by + 12:.1f}" pointer-events="none">'
                           f"{_e(_short(f'{bar.node} #{bar.att.number}', int(bw / 7)))}</text>")
            starts[(bar.node, bar.att.number)] = (bx, by + _BAR_H / 2)
            ends[(bar.node, bar.att.number)] = (bx + bw, by + _BAR_H / 2)
        y += h + 6
    for (node, number), (x1, y1) in ends.items():
        nxt = starts.get((node, number + 1))
        if nxt is not None and result.nodes[node].attempt_history[number - 1].error is not None:
            out.append(f'<path class="retry-link" data-node="{_e(node)}" data-from-attempt="{number}" '
                       f'd="M{x1:.1f} {y1:.1f}Q{(x1 + nxt[0]) / 2:.1f} {min(y1, nxt[1]) - 12:.1f} '
                       f'{nxt[0]:.1f} {nxt[1]:.1f}"/>')
    out.append("</svg>")
    return "".join(out)


# --- the table ----------------------------------------------------------------------------------------

def _table(result: RunResult) -> str:
    head = ("<tr><th>node</th><th>level</th><th>status</th><th>attempts</th><th>duration</th>"
            "<th>worker</th><th>error / reason</th></tr>")
    rows = []
    for col in _columns(result):
        for name in col:
            rec = result.nodes[name]
            worker = _e(_worker_label(rec.attempt_history[-1])) if rec.attempt_history else "–"
            detail = []
            if rec.error is not None:
                detail.append(f"<strong>{_e(rec.error.type_name)}</strong>: {_e(rec.error.message)}")
                if rec.error.detail:
                    detail.append(f"<br>{_e(rec.error.detail)}")
                if rec.error.traceback:
                    detail.append(f"<details><summary>traceback</summary><pre>{_e(rec.error.traceback)}</pre>"
                                  "</details>")
            retried = [a for a in rec.attempt_history if a.error is not None and a is not rec.attempt_history[-1]]
            if retried:
                errs = "; ".join(f"#{a.number} {a.error.type_name}" for a in retried if a.error)
                detail.append(f'<div class="retries">retried after: {_e(errs)}</div>')
            if rec.reason:
                detail.append(f'<div class="reason">{_e(rec.reason)}</div>')
            rows.append(
                f'<tr data-node="{_e(name)}" data-status="{rec.status.value}"><td><code>{_e(name)}</code></td>'
                f'<td class="num">{rec.level}</td><td>{_badge(rec.status.value)}</td>'
                f'<td class="num">{rec.attempts}</td><td class="num">{_e(_fmt_s(rec.duration_s))}</td>'
                f"<td><code>{worker}</code></td><td>{''.join(detail) or '–'}</td></tr>")
    return f'<table class="nodes"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'
