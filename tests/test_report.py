"""The HTML run report: real runs (local threads, real Ray workers, a real checkpoint folder), the written file
parsed with the stdlib ``html.parser``. Checks that every node and every attempt is drawn with its outcome,
that nothing in the file points outside it, and that run text is escaped."""

from __future__ import annotations

import dataclasses
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from odibi_ray import DAG, Node, NodeStatus, RetryPolicy, RunResult, run
from odibi_ray.observe.report import _LABEL_W, _PLOT_W, STATUS_COLOURS, render_report, write_report

from .nodes import FlakyError, fail_until, wait_for

EVIL = "<script>alert('pwned')</script> & <b>bold</b>"
VOID = {"meta", "br", "link", "img", "input", "hr", "col", "area", "base", "source", "wbr", "embed"}


class Doc(HTMLParser):
    """Every element with its attributes, the text of its <title> child, and the whole text, as parsed."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[dict] = []
        self.texts: list[str] = []
        self._stack: list[dict] = []
        self.feed(text)
        self.close()

    def _element(self, tag: str, attrs: list[tuple[str, str | None]]) -> dict:
        parent = self._stack[-1] if self._stack else None
        el = {"tag": tag, "attrs": {k: (v or "") for k, v in attrs}, "title": "", "text": "", "parent": parent}
        self.elements.append(el)
        return el

    def handle_starttag(self, tag, attrs):
        el = self._element(tag, attrs)
        if tag not in VOID:
            self._stack.append(el)

    def handle_startendtag(self, tag, attrs):
        self._element(tag, attrs)

    def handle_endtag(self, tag):
        while self._stack:
            if self._stack.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        self.texts.append(data)
        if self._stack:
            self._stack[-1]["text"] += data
        if len(self._stack) >= 2 and self._stack[-1]["tag"] == "title":
            self._stack[-2]["title"] += data

    def having(self, attr: str, cls: str | None = None, tag: str | None = None) -> list[dict]:
        return [e for e in self.elements if attr in e["attrs"] and (tag is None or e["tag"] == tag)
                and (cls is None or cls in e["attrs"].get("class", "").split())]

    @property
    def text(self) -> str:
        return "".join(self.texts)


def classes(el: dict) -> set[str]:
    return set(el["attrs"].get("class", "").split())


def explode_evil():
    raise ValueError(EVIL)


def mixed_dag(name: str = "report_demo") -> DAG:
    """One retried node (2 failures, then success), one failed node, one skipped descendant, a fan-in."""
    dag = DAG(name)
    dag.add_node(Node("extract", lambda: 1))
    dag.add_node(Node("flaky", fail_until(3), retry=RetryPolicy(max_attempts=3, delay_s=0.01, retry_on=(FlakyError,))))
    dag.add_node(Node("bad", lambda x: explode_evil(), inputs={"x": "extract"}))
    dag.add_node(Node("after_bad", lambda y: y, inputs={"y": "bad"}))
    dag.add_node(Node("join", lambda a, b: a + b, inputs={"a": "extract", "b": "flaky"}))
    return dag


def dag_edges(dag: DAG) -> set[str]:
    return {f"{up}->{node.name}" for node in dag for up in node.upstream}


def assert_self_contained(text: str, doc: Doc) -> None:
    """No element that loads anything, no attribute or style pointing outside the file."""
    tags = {e["tag"] for e in doc.elements}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed", "image", "use", "audio", "video",
                       "source", "base", "form", "a"}, tags
    for el in doc.elements:
        for key, value in el["attrs"].items():
            v = value.strip().lower()
            assert not (v.startswith("http:") or v.startswith("https:") or v.startswith("//")
                        or v.startswith("javascript:")), (el["tag"], key, value)
            assert not key.startswith("on"), (el["tag"], key)  # no inline event handlers
            assert key not in ("src", "href", "xlink:href", "action", "srcset", "poster"), (el["tag"], key)
    assert not re.search(r"url\(\s*['\"]?(?!#)", text), "a CSS url() to something other than a local #id"
    assert "@import" not in text and "http://" not in text and "https://" not in text


def check_report(result: RunResult, text: str, edges: set[str]) -> Doc:
    """What must hold of any report: every node once with its status, every attempt once with its outcome."""
    doc = Doc(text)
    assert_self_contained(text, doc)
    boxes = doc.having("data-node", cls="node", tag="g")
    assert sorted(b["attrs"]["data-node"] for b in boxes) == sorted(result.nodes)
    for box in boxes:
        rec = result.nodes[box["attrs"]["data-node"]]
        assert box["attrs"]["data-status"] == rec.status.value
        assert f"status-{rec.status.value}" in classes(box)
        assert int(box["attrs"]["data-attempts"]) == rec.attempts
        rect = next(e for e in doc.elements if e["parent"] is box and e["tag"] == "rect")
        assert rect["attrs"]["fill"] == STATUS_COLOURS[rec.status.value]
        assert box["title"].startswith(f"{rec.name}: {rec.status.value}")
        assert f"{rec.attempts} attempt(s)" in box["title"]
    assert {e["attrs"]["data-edge"] for e in doc.having("data-edge", cls="edge")} == edges

    bars = doc.having("data-attempt", cls="attempt", tag="rect")
    drawn = sorted((b["attrs"]["data-node"], int(b["attrs"]["data-attempt"])) for b in bars)
    assert drawn == sorted((n, a.number) for n, r in result.nodes.items() for a in r.attempt_history)
    for bar in bars:
        rec = result.nodes[bar["attrs"]["data-node"]]
        att = rec.attempt_history[int(bar["attrs"]["data-attempt"]) - 1]
        want = ("ok" if att.error is None else "cancelled" if att.error.kind == "cancelled" else "failed")
        assert want in classes(bar), (rec.name, att.number, classes(bar))
        assert bar["attrs"]["data-worker-node"] == (att.worker_node_id or "")
        assert bar["attrs"]["data-worker-pid"] == ("" if att.worker_pid is None else str(att.worker_pid))
        assert f"{rec.name}: attempt {att.number} of {rec.attempts}" in bar["title"]
        if att.error is not None:
            assert bar["attrs"]["data-error-type"] == att.error.type_name and att.error.type_name in bar["title"]
    rows = {(w["attrs"]["data-worker-node"], w["attrs"]["data-worker-pid"])
            for w in doc.having("data-worker-pid", tag="g")}
    assert rows == {(b["attrs"]["data-worker-node"], b["attrs"]["data-worker-pid"]) for b in bars}

    table = doc.having("data-node", tag="tr")
    assert sorted(r["attrs"]["data-node"] for r in table) == sorted(result.nodes)
    assert all(r["attrs"]["data-status"] == result.nodes[r["attrs"]["data-node"]].status.value for r in table)
    return doc


def test_report_of_a_run_with_retry_failure_and_skip(tmp_path):
    dag = mixed_dag()
    result = run(dag, backend="local", progress=False)
    status = {n: r.status for n, r in result.nodes.items()}
    assert status == {"extract": NodeStatus.SUCCEEDED, "flaky": NodeStatus.SUCCEEDED, "bad": NodeStatus.FAILED,
                      "after_bad": NodeStatus.SKIPPED, "join": NodeStatus.SUCCEEDED}
    path = result.report(tmp_path / "run.html", dag)
    assert path == tmp_path / "run.html" and path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["run.html"]  # no temporary file left behind
    text = path.read_text(encoding="utf-8")
    doc = check_report(result, text, dag_edges(dag))

    # The retried node: three bars, the first two failed with the error type, a dashed link to each retry.
    flaky = {int(b["attrs"]["data-attempt"]): b for b in doc.having("data-attempt", cls="attempt")
             if b["attrs"]["data-node"] == "flaky"}
    assert sorted(flaky) == [1, 2, 3]
    assert "failed" in classes(flaky[1]) and "failed" in classes(flaky[2]) and "ok" in classes(flaky[3])
    assert "FlakyError" in flaky[1]["title"] and "attempt 1 failed on purpose" in flaky[1]["title"]
    links = doc.having("data-from-attempt", cls="retry-link")
    assert (sorted((e["attrs"]["data-node"], e["attrs"]["data-from-attempt"]) for e in links)
            == [("flaky", "1"), ("flaky", "2")])
    # bars sit left to right in time
    xs = [float(flaky[i]["attrs"]["x"]) for i in (1, 2, 3)]
    assert xs == sorted(xs) and xs[0] < xs[2]

    # The failed node's message is shown as text, never as markup. (A pipeline's name cannot hold markup: names
    # are letters, digits, '_', '-' and '.', checked when the DAG is made.)
    assert not [e for e in doc.elements if e["tag"] in ("script", "b")]
    assert "<script>alert" not in text and "<b>bold" not in text
    assert EVIL in doc.text  # shown, escaped, in the table
    bad_row = next(r for r in doc.having("data-node", tag="tr") if r["attrs"]["data-node"] == "bad")
    assert bad_row["attrs"]["data-status"] == "failed"
    bad_bar = next(b for b in doc.having("data-attempt", cls="attempt") if b["attrs"]["data-node"] == "bad")
    assert EVIL in bad_bar["title"] and "ValueError" in bad_bar["title"]
    assert "Run report: report_demo" in doc.text
    assert "upstream node 'bad' failed" in doc.text  # the skipped node's reason
    # Header: run id, status, counts per status, stats.
    assert result.run_id in doc.text and "corrupt_objects: 0" in doc.text
    assert doc.having("data-run-id")[0]["attrs"]["data-run-id"] == result.run_id
    # The legend names every outcome with its colour.
    swatches = {c for e in doc.having("class", cls="swatch") for c in classes(e) if c.startswith("status-")}
    assert swatches == {f"status-{s}" for s in ("succeeded", "cached", "resumed", "failed", "skipped", "cancelled")}
    # The method and the function write the same thing.
    assert write_report(result, tmp_path / "again.html", dag).read_text(encoding="utf-8") == text


def test_edges_from_an_inputs_map_or_none(tmp_path):
    dag = mixed_dag("plain")
    result = run(dag, backend="local", progress=False)
    as_lists = {n.name: n.upstream for n in dag}
    as_params = {n.name: dict(n.inputs) for n in dag}
    want = dag_edges(dag)
    assert want == {"extract->bad", "bad->after_bad", "extract->join", "flaky->join"}
    for inputs in (as_lists, as_params):
        check_report(result, write_report(result, tmp_path / "r.html", inputs=inputs).read_text("utf-8"), want)
    check_report(result, render_report(result), set())  # no graph given: boxes, no edges


def test_cached_and_resumed_nodes(tmp_path):
    store, switch = str(tmp_path / "store"), tmp_path / "fixed"

    def fixed_later():
        if not switch.exists():
            raise FlakyError("not fixed yet")
        return 2

    dag = DAG("checkpointed", cache=False)
    dag.add_node(Node("one", lambda: 1))
    dag.add_node(Node("two", fixed_later))
    dag.add_node(Node("sum", lambda a, b: a + b, inputs={"a": "one", "b": "two"}))
    failed = run(dag, backend="local", storage=store, progress=False)
    switch.write_text("1")
    resumed = run(dag, backend="local", storage=store, resume="latest", progress=False).raise_for_status()
    assert resumed.nodes["one"].status is NodeStatus.RESUMED and resumed.nodes["two"].status is NodeStatus.SUCCEEDED
    doc = check_report(resumed, render_report(resumed, dag), dag_edges(dag))
    assert not [b for b in doc.having("data-attempt", cls="attempt") if b["attrs"]["data-node"] == "one"]
    assert failed.nodes["sum"].status is NodeStatus.SKIPPED

    cached_dag = DAG("cached")
    cached_dag.add_node(Node("one", lambda: 1))
    cached_dag.add_node(Node("plus", lambda x: x + 1, inputs={"x": "one"}))
    run(cached_dag, backend="local", storage=store, progress=False).raise_for_status()
    again = run(cached_dag, backend="local", storage=store, progress=False).raise_for_status()
    assert {r.status for r in again.nodes.values()} == {NodeStatus.CACHED}
    doc = check_report(again, render_report(again, cached_dag), {"one->plus"})
    assert "no attempt ran in this run" in doc.text
    assert "output reused from the cache" in doc.text


def test_cancelled_attempts_under_fail_fast(tmp_path):
    release = tmp_path / "release"

    def long_running():
        wait_for(release, timeout=30)
        return 1

    dag = DAG("failfast")
    dag.add_node(Node("bad", explode_evil))
    dag.add_node(Node("long", long_running))
    dag.add_node(Node("after_long", lambda x: x, inputs={"x": "long"}))
    try:
        result = run(dag, backend="local", fail_fast=True, max_workers=2, progress=False)
    finally:
        release.write_text("1")
    assert result.nodes["long"].status is NodeStatus.CANCELLED
    doc = check_report(result, render_report(result, dag), {"long->after_long"})
    bar = next(b for b in doc.having("data-attempt", cls="attempt") if b["attrs"]["data-node"] == "long")
    assert "cancelled" in classes(bar) and "fail_fast" in bar["title"]


def test_report_of_a_ray_run_has_one_row_per_real_worker(ray_local, tmp_path):
    dag = mixed_dag("on-ray")
    result = run(dag, backend="ray", progress=False)
    assert result.nodes["flaky"].attempts == 3 and result.nodes["bad"].status is NodeStatus.FAILED
    workers = {(a.worker_node_id, a.worker_pid) for r in result.nodes.values() for a in r.attempt_history}
    node_ids = {n["NodeID"] for n in ray_local.nodes() if n["Alive"]}
    assert {w for w, _ in workers} <= node_ids  # real Ray node ids, not "local"
    assert all(pid and pid != os.getpid() for _, pid in workers)  # ran in worker processes, not here
    doc = check_report(result, result.report(tmp_path / "ray.html", dag).read_text("utf-8"), dag_edges(dag))
    rows = {(w["attrs"]["data-worker-node"], int(w["attrs"]["data-worker-pid"]))
            for w in doc.having("data-worker-pid", tag="g")}
    assert rows == workers


def test_bad_arguments_raise_precise_errors(tmp_path):
    dag = mixed_dag("args")
    result = run(dag, backend="local", progress=False)
    with pytest.raises(TypeError, match="expects a RunResult, got dict"):
        write_report({"nodes": {}}, tmp_path / "x.html")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dag= or inputs=, not both"):
        write_report(result, tmp_path / "x.html", dag, inputs={})
    with pytest.raises(TypeError, match="dag= must be a DAG, got dict"):
        write_report(result, tmp_path / "x.html", {"a": []})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"names node\(s\) \['ghost'\] that are not in run"):
        write_report(result, tmp_path / "x.html", inputs={"join": ["ghost"]})
    with pytest.raises(TypeError, match=r"inputs\['join'\] must be node names"):
        write_report(result, tmp_path / "x.html", inputs={"join": [1, 2]})
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        write_report(result, tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(result, tmp_path / "missing" / "x.html")
    assert list(Path(tmp_path).iterdir()) == []  # nothing half-written


def timeline_fits(doc: Doc) -> dict:
    """The timeline's <svg>: every text in it lies inside its box (a generous width per character)."""
    svg = next(e for e in doc.having("class", cls="timeline", tag="svg"))
    width, height = float(svg["attrs"]["width"]), float(svg["attrs"]["height"])
    assert svg["attrs"]["viewbox"] == f"0 0 {svg['attrs']['width']} {svg['attrs']['height']}"
    texts = [e for e in doc.elements if e["tag"] == "text" and _inside(e, svg)]
    assert texts
    for t in texts:
        x, y = float(t["attrs"]["x"]), float(t["attrs"]["y"])
        px = 10 if "tick" in classes(t) else 12  # the CSS font sizes
        assert y - px >= 0 and y + px * 0.3 <= height, (t["text"], y, height)  # ascent and descent inside
        assert x >= 0 and x + len(t["text"]) * px * 0.62 <= width, (t["text"], x, width)
    return svg


def _inside(el: dict, ancestor: dict) -> bool:
    while el is not None:
        if el is ancestor:
            return True
        el = el["parent"]
    return False


def test_timeline_starts_at_the_first_attempt_not_at_the_run_start():
    """Seconds of Ray start-up before the first attempt (as a cold `run()` has) must not squeeze the attempts
    into a sliver at the right edge: the axis starts at the first attempt and the start-up is said in words."""
    dag = mixed_dag("startup")
    ran = run(dag, backend="local", progress=False)
    result = dataclasses.replace(ran, started_at=ran.started_at - 8.0)  # as if Ray took 8 s to start
    doc = check_report(result, render_report(result, dag), dag_edges(dag))
    svg = timeline_fits(doc)
    bars = doc.having("data-attempt", cls="attempt", tag="rect")
    lefts = [float(b["attrs"]["x"]) for b in bars]
    rights = [float(b["attrs"]["x"]) + float(b["attrs"]["width"]) for b in bars]
    assert min(lefts) == pytest.approx(_LABEL_W, abs=0.1)  # the first attempt starts the axis
    assert max(rights) == pytest.approx(_LABEL_W + _PLOT_W, abs=2.1)  # the last one ends it: the plot is used
    note = next(e for e in doc.having("data-startup-s"))
    first = min(a.started_at for r in result.nodes.values() for a in r.attempt_history)
    assert float(note["attrs"]["data-startup-s"]) == pytest.approx(first - result.started_at, abs=0.002)
    assert float(note["attrs"]["data-startup-s"]) >= 8.0
    assert "after the run started" in note["text"] and "8." in note["text"]
    assert note["parent"] is svg
    ticks = [e["text"] for e in doc.having("class", cls="tick", tag="text")
             if _inside(e, svg) and "startup" not in classes(e)]
    assert ticks[0] == "0" and all(t.startswith("+") for t in ticks[1:])
    flaky1 = next(b for b in bars if b["attrs"]["data-node"] == "flaky" and b["attrs"]["data-attempt"] == "1")
    assert "after the run started" in flaky1["title"]


def test_no_attempt_text_fits_its_box(tmp_path):
    store = str(tmp_path / "store")
    dag = DAG("all_cached")
    dag.add_node(Node("one", lambda: 1))
    run(dag, backend="local", storage=store, progress=False).raise_for_status()
    again = run(dag, backend="local", storage=store, progress=False).raise_for_status()
    doc = check_report(again, render_report(again, dag), set())
    svg = timeline_fits(doc)
    assert "empty" in classes(svg)
    (message,) = [e for e in doc.elements if e["tag"] == "text" and _inside(e, svg)]
    assert message["text"] == "no attempt ran in this run"
