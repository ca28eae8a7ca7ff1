"""The HTML run report as people see it: a real browser (headless Chromium, Debian's ``chromium`` package, which
``./dev test`` installs when it can) opens the report of a 200-node run with retries and a failure.

What is checked, in the browser's own terms (DevTools protocol over a pipe, see tests/make_report_screenshot.py):
the page loads with no console error or warning, no uncaught exception, no CSP violation and no request but its
own file; the rendered DAG has its 200 boxes, none overlapping, every name in full inside its box, the failed
and the retried nodes marked; the rendered timeline has one bar per attempt, the failed attempts hatched with a
dashed link to their retry; in a 1400 x 1000 window the whole DAG fits its box without scrolling and the
timeline needs no sideways scrolling; the screenshot (the page down to the timeline) holds both, and its pixels
show the failed node red; the browser's own network log (all its processes) shows no URL request, no host
lookup and no socket. A canary page with an error of each kind shows that the capture sees them.

``ODIBI_RAY_WRITE_SCREENSHOT=path``: also write the screenshot there. The README's picture,
docs/report-200-nodes.png, is the same run on a local Ray, made by ``python -m tests.make_report_screenshot``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from odibi_ray import NodeStatus, RunResult, run
from odibi_ray.observe.report import STATUS_COLOURS, render_report

from .make_report_screenshot import (FAILED, NETWORK_EVENTS, RETRIED, STAGES, WIDTH, Image, Page,
                                     dag_and_timeline_clip, decode_png, find_chromium, is_loopback_target,
                                     network_activity, pipeline_200, read_net_log, report_in_browser, run_200)

WINDOW = (1400, 1000)

#: Everything the tests look at, read from the rendered page in one evaluation (layout boxes in page pixels).
DOM_FACTS = r"""(() => {
  const box = e => { const b = e.getBoundingClientRect();
    return [b.left + scrollX, b.top + scrollY, b.width, b.height]; };
  const css = e => getComputedStyle(e);
  const scroller = e => { const s = e.closest('.scroll');
    return {client: [s.clientWidth, s.clientHeight], content: [s.scrollWidth, s.scrollHeight], box: box(s)}; };
  const dag = document.querySelector('svg.dag'), timeline = document.querySelector('svg.timeline');
  return {
    readyState: document.readyState, title: document.title, viewport: [innerWidth, innerHeight],
    dag: {box: box(dag), scroll: scroller(dag)},
    nodes: [...dag.querySelectorAll('g.node')].map(g => {
      const rect = g.querySelector('rect'), name = g.querySelector('text.name'), tries = g.querySelector('text.tries');
      return {name: g.dataset.node, status: g.dataset.status, attempts: +g.dataset.attempts, box: box(rect),
              fill: css(rect).fill, label: name.textContent, labelBox: box(name),
              fontPx: parseFloat(css(name).fontSize),
              tries: tries && tries.textContent, triesBox: tries && box(tries)};
    }),
    edges: [...dag.querySelectorAll('path.edge')].map(p => ({edge: p.dataset.edge, length: p.getTotalLength()})),
    timeline: {box: box(timeline), scroll: scroller(timeline)},
    bars: [...timeline.querySelectorAll('rect.attempt')].map(r => ({node: r.dataset.node, attempt: +r.dataset.attempt,
      classes: r.getAttribute('class').split(' '), box: box(r), fill: css(r).fill})),
    links: [...timeline.querySelectorAll('path.retry-link')].map(p => ({node: p.dataset.node,
      from: +p.dataset.fromAttempt, length: p.getTotalLength(), dash: css(p).strokeDasharray})),
    ticks: [...timeline.querySelectorAll('text.tick:not(.startup)')].map(t => ({text: t.textContent, box: box(t),
      fontPx: parseFloat(css(t).fontSize)})),
    rows: [...timeline.querySelectorAll('g.worker text')].map(t => t.textContent),
    tableRows: document.querySelectorAll('table.nodes tbody tr').length,
  };
})()"""

#: An error of each kind: a console.error, an uncaught exception, a stylesheet the page's CSP refuses.
CANARY = """<!DOCTYPE html><html><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<style>@import url(http://127.0.0.1:9/blocked.css);</style></head>
<body><script>console.error("canary console error"); throw new Error("canary uncaught");</script></body></html>
"""


@dataclass
class Shown:
    result: RunResult
    url: str
    page: Page
    dom: dict[str, Any]
    shot: bytes                       # the page from its top down to the timeline
    clip: tuple[float, float, float, float]
    window_shot: bytes                # the window as it opens
    stderr_report: str                # Chromium's log (--enable-logging=stderr) while the report loaded
    canary: Page
    stderr_canary: str
    net_log: dict                     # the browser's own network log, read after it closed


@pytest.fixture(scope="module")
def shown(tmp_path_factory) -> Shown:
    if find_chromium() is None:
        named = os.environ.get("ODIBI_RAY_CHROMIUM")
        pytest.skip(f"ODIBI_RAY_CHROMIUM={named} is not an executable" if named else
                    "no Chromium to render the report: `./dev test` installs Debian's chromium package when it runs "
                    "as root with apt-get (see apt.log), or set ODIBI_RAY_CHROMIUM to a Chromium executable")
    folder = tmp_path_factory.mktemp("report_browser")
    dag, result = run_200("local", max_workers=8)
    net_log = folder / "netlog.json"
    with report_in_browser(result, dag, folder, *WINDOW, net_log=net_log) as (browser, page):
        dom = browser.evaluate(DOM_FACTS)
        clip = dag_and_timeline_clip(browser)
        shot, window_shot = browser.screenshot(clip), browser.screenshot()
        stderr_report = browser.stderr()
        canary_file = folder / "canary.html"
        canary_file.write_text(CANARY, encoding="utf-8")
        canary = browser.load(canary_file.as_uri())
        stderr_canary = browser.stderr()[len(stderr_report):]
    target = os.environ.get("ODIBI_RAY_WRITE_SCREENSHOT")
    if target:
        Path(target).write_bytes(decode_png(shot).encode())
    return Shown(result, page.url, page, dom, shot, clip, window_shot, stderr_report, canary, stderr_canary,
                 read_net_log(net_log))


# --- without a browser: the layout a 200-node DAG gets ----------------------------------------------------------

def test_a_dag_with_a_tall_level_is_drawn_compact():
    """More than 12 nodes in a level: one-line boxes (the name, and "3×" when retried), 28 px apart, so that 8
    levels of 25 fit a 1400 x 1000 window; a small DAG keeps its two-line boxes. (Parsed HTML: this runs where
    no Chromium is.)"""
    from .test_report import Doc, check_report, dag_edges, mixed_dag

    dag, result = run_200("local", max_workers=8)
    doc = check_report(result, render_report(result, dag), dag_edges(dag))
    (svg,) = doc.having("class", cls="dag", tag="svg")
    assert "compact" in svg["attrs"]["class"].split()
    assert float(svg["attrs"]["width"]) <= WINDOW[0] - 2 * 24 - 10  # body margin, the box's border and padding
    boxes = {b["attrs"]["data-node"]: b for b in doc.having("data-node", cls="node", tag="g")}
    for name, box in boxes.items():
        (rect,) = [e for e in doc.elements if e["parent"] is box and e["tag"] == "rect"]
        assert (rect["attrs"]["width"], rect["attrs"]["height"]) == ("138", "22")
        texts = {e["attrs"]["class"]: e["text"] for e in doc.elements if e["parent"] is box and e["tag"] == "text"}
        assert texts["name"] == name
        assert texts.get("tries") == (f"{RETRIED[name] + 1}×" if name in RETRIED else None)
    small = mixed_dag()
    ran = run(small, backend="local", progress=False)
    (svg,) = Doc(render_report(ran, small)).having("class", cls="dag", tag="svg")
    assert svg["attrs"]["class"] == "dag"


# --- the run ------------------------------------------------------------------------------------------------

def test_the_run_has_200_nodes_retries_and_one_failure(shown):
    nodes = shown.result.nodes
    assert len(nodes) == len(STAGES) * WIDTH == 200
    assert nodes[FAILED].status is NodeStatus.FAILED and nodes[FAILED].attempts == 1
    assert [n for n, r in nodes.items() if r.status is NodeStatus.FAILED] == [FAILED]
    assert {n: r.attempts - 1 for n, r in nodes.items() if r.attempts > 1} == RETRIED
    assert all(nodes[n].status is NodeStatus.SUCCEEDED for n in RETRIED)
    skipped = [n for n, r in nodes.items() if r.status is NodeStatus.SKIPPED]
    assert skipped and all(r.status is NodeStatus.SUCCEEDED for n, r in nodes.items() if n not in skipped + [FAILED])


# --- the page loads without errors ----------------------------------------------------------------------------

def test_the_page_loads_without_any_error(shown):
    assert shown.page.errors() == []  # console errors/warnings, uncaught exceptions, CSP and load failures
    assert shown.page.requests == [shown.url]  # nothing fetched but the file itself
    assert shown.dom["readyState"] == "complete"
    assert shown.dom["title"] == f"Run report: nightly_sales {shown.result.run_id}"
    assert shown.dom["viewport"] == list(WINDOW)
    # Chromium's own log (the second witness) has no console line from the page either (its own chrome:// pages,
    # such as the omnibox popup, log some).
    assert page_console_lines(shown.stderr_report) == []


def test_the_error_capture_sees_each_kind_of_error(shown):
    """The canary page: the same capture reports its console error, its exception and its CSP violation."""
    errors = "\n".join(shown.canary.errors())
    assert "console.error: canary console error" in errors
    assert "uncaught: Error: canary uncaught" in errors
    assert "violates the following Content Security Policy directive" in errors and "blocked.css" in errors
    lines = "\n".join(page_console_lines(shown.stderr_canary))
    assert "Uncaught Error: canary uncaught" in lines and "canary console error" in lines


def page_console_lines(stderr: str) -> list[str]:
    """Chromium's ``--enable-logging=stderr`` lines for console messages of web pages (not its own chrome:// UI)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line and "source: chrome://" not in line]


def test_the_browser_opened_no_connection(shown):
    """Chromium's own network log, of all its processes (background services included): no URL request (a
    file:// page is not one), no host lookup, no socket connect, by anything, to anywhere."""
    log = shown.net_log
    assert "--remote-debugging-pipe" in log["constants"]["clientInfo"]["command_line"]  # this browser's log,
    assert "polledData" in log  # completed when it closed,
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    assert "DNS_CONFIG_CHANGED" in {names[e["type"]] for e in log["events"]}  # the network service's own events
    assert network_activity(log) == []
    # The check knows this Chromium's words for using the network: an event of each kind, added to a copy of
    # the log, is found (measured before QUIET_FLAGS had its last two flags: the component updater's request to
    # update.googleapis.com showed as URL_REQUEST_START_JOB, HOST_RESOLVER_MANAGER_REQUEST and UDP_CONNECT).
    types = log["constants"]["logEventTypes"]
    assert set(NETWORK_EVENTS) <= set(types)
    fake = [{"type": types[name], "params": {"url": "https://update.googleapis.com/x", "host": "example.org:443",
                                             "address": "203.0.113.7:443"}} for name in NETWORK_EVENTS]
    found = network_activity({"constants": log["constants"], "events": fake})
    assert {name for name, _ in found} == set(NETWORK_EVENTS)
    assert not [t for _, t in found if is_loopback_target(t)]


# --- the DAG as drawn -----------------------------------------------------------------------------------------

def rgb(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def inside(inner: list[float], outer: list[float], slack: float = 0.5) -> bool:
    x, y, w, h = inner
    ox, oy, ow, oh = outer
    return x >= ox - slack and y >= oy - slack and x + w <= ox + ow + slack and y + h <= oy + oh + slack


def overlap(a: list[float], b: list[float], slack: float = 0.5) -> bool:
    return (a[0] + a[2] > b[0] + slack and b[0] + b[2] > a[0] + slack
            and a[1] + a[3] > b[1] + slack and b[1] + b[3] > a[1] + slack)


def test_the_dag_shows_every_node_legibly(shown):
    nodes = shown.dom["nodes"]
    result = shown.result.nodes
    assert sorted(n["name"] for n in nodes) == sorted(result)
    for n in nodes:
        rec = result[n["name"]]
        assert n["status"] == rec.status.value and n["attempts"] == rec.attempts
        assert n["fill"] == rgb(STATUS_COLOURS[rec.status.value])
        w, h = n["box"][2:]
        assert w >= 100 and h >= 18, n
        assert n["label"] == n["name"], n  # the whole name, not cut
        assert n["fontPx"] >= 11, n
        assert inside(n["labelBox"], n["box"]), n  # the name stays inside its box
    boxes = sorted((n["box"], n["name"]) for n in nodes)
    clashes = [(a, b) for i, (ba, a) in enumerate(boxes) for bb, b in boxes[i + 1:] if overlap(ba, bb)]
    assert clashes == []
    # The whole DAG is in view in a 1400 x 1000 window: its box needs no scrolling either way.
    scroll = shown.dom["dag"]["scroll"]
    assert scroll["content"][0] <= scroll["client"][0] and scroll["content"][1] <= scroll["client"][1], scroll
    assert shown.dom["dag"]["box"][0] + shown.dom["dag"]["box"][2] <= WINDOW[0]
    edges = shown.dom["edges"]
    assert len(edges) == sum(len(node.upstream) for node in pipeline_200()) == 250
    assert all(e["length"] > 10 for e in edges)


def test_the_failed_and_the_retried_nodes_are_marked(shown):
    by_name = {n["name"]: n for n in shown.dom["nodes"]}
    assert [n for n, v in by_name.items() if v["status"] == "failed"] == [FAILED]
    assert by_name[FAILED]["fill"] == rgb(STATUS_COLOURS["failed"])
    marked = {n: v["tries"] for n, v in by_name.items() if v["tries"]}
    assert marked == {n: f"{k + 1}×" for n, k in RETRIED.items()}
    for name in RETRIED:
        node = by_name[name]
        assert inside(node["triesBox"], node["box"])
        assert not overlap(node["triesBox"], node["labelBox"], slack=0)  # "3×" beside the name, not over it


# --- the timeline as drawn ------------------------------------------------------------------------------------

def test_the_timeline_shows_every_attempt(shown):
    result, bars = shown.result.nodes, shown.dom["bars"]
    attempts = {(n, a.number): a for n, r in result.items() for a in r.attempt_history}
    assert sorted((b["node"], b["attempt"]) for b in bars) == sorted(attempts)
    svg = shown.dom["timeline"]["box"]
    for bar in bars:
        failed = attempts[(bar["node"], bar["attempt"])].error is not None
        assert ("failed" in bar["classes"]) is failed and ("ok" in bar["classes"]) is not failed
        assert bar["fill"] == ('url("#hatch")' if failed else rgb("#2e9e4f")), bar
        assert bar["box"][2] >= 2 and bar["box"][3] >= 14, bar
        assert inside(bar["box"], svg), bar
    clashes = [(a["node"], b["node"]) for i, a in enumerate(bars) for b in bars[i + 1:] if overlap(a["box"], b["box"])]
    assert clashes == []
    failed_bars = sorted(b["node"] for b in bars if "failed" in b["classes"])
    assert failed_bars == sorted([FAILED] + [n for n, k in RETRIED.items() for _ in range(k)])
    # A dashed link from each failed attempt that was retried to its retry.
    links = shown.dom["links"]
    assert sorted((x["node"], x["from"]) for x in links) == sorted((n, i) for n, k in RETRIED.items()
                                                                    for i in range(1, k + 1))
    assert all(x["length"] > 1 and x["dash"] not in ("", "none") for x in links)
    # Tick labels readable and apart; the worker's row is named; the timeline needs no sideways scrolling.
    ticks = shown.dom["ticks"]
    assert len(ticks) >= 4 and ticks[0]["text"] == "0" and all(t["fontPx"] >= 10 for t in ticks)
    assert not [(a["text"], b["text"]) for a, b in zip(ticks, ticks[1:]) if a["box"][0] + a["box"][2] > b["box"][0]]
    assert shown.dom["rows"] and all(r.startswith("local pid ") for r in shown.dom["rows"])
    scroll = shown.dom["timeline"]["scroll"]
    assert scroll["content"][0] <= scroll["client"][0], scroll
    assert shown.dom["tableRows"] == 200


# --- the screenshot -------------------------------------------------------------------------------------------

def colour(hex_colour: str) -> tuple[int, int, int]:
    return int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16)


def dominant(image: Image, box: list[float], inset: float = 3) -> tuple[int, int, int]:
    x, y, w, h = box
    counts = image.colours((int(x + inset), int(y + inset), int(x + w - inset), int(y + h - inset)))
    return max(counts, key=lambda c: counts[c])


def test_the_screenshot_shows_the_dag_and_the_timeline(shown):
    image = decode_png(shown.shot)
    x, y, w, h = shown.clip
    assert (image.width, image.height) == (WINDOW[0], round(h))
    dag, timeline = shown.dom["dag"]["box"], shown.dom["timeline"]["box"]
    assert inside(dag, [0, 0, image.width, image.height]) and inside(timeline, [0, 0, image.width, image.height])
    # Not a blank page: text (anti-aliased: many shades), and no single colour (the white page) taking it all.
    counts = image.colours(step=2)
    total = sum(counts.values())
    assert len(counts) > 200 and max(counts.values()) < 0.8 * total
    # The statuses' colours are there in quantity, and the hatched failed attempts.
    for status, share in (("succeeded", 0.05), ("skipped", 0.005), ("failed", 0.0005)):
        assert counts.get(colour(STATUS_COLOURS[status]), 0) > share * total, status
    assert counts.get(colour("#fbe3e0"), 0) > 0  # the hatch's light red
    # The failed node's box is red where there is no text (right of its name), a retried one green.
    by_name = {n["name"]: n for n in shown.dom["nodes"]}
    for name, hex_colour in ((FAILED, STATUS_COLOURS["failed"]), ("join_08", STATUS_COLOURS["succeeded"])):
        node = by_name[name]
        lx, _, lw, _ = node["labelBox"]
        bx, by, bw, bh = node["box"]
        right = (node["triesBox"][0] if node["triesBox"] else bx + bw) - 2
        assert dominant(image, [lx + lw + 2, by, right - lx - lw - 2, bh]) == colour(hex_colour), name
    # The window as it opens (1400 x 1000) is a real page too.
    window = decode_png(shown.window_shot)
    assert (window.width, window.height) == WINDOW and len(window.colours(step=4)) > 100
