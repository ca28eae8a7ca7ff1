"""Mapped nodes (issue 17) seen from the outside: the HTML report groups items under their node (one box, one
table row with its items folded, item attempts on their workers' rows or as bands), `status --watch` and the
terminal progress count items, and the metrics count them under the node's name (no item label). Real runs on the
local thread backend, one gated run on the session's real Ray; a 10,000-item result made by hand for the report's
size and speed."""

from __future__ import annotations

import io
import json
import pickle
import time

import pytest
import ray
from rich.console import Console

from odibi_ray import DAG, MapSpec, Node, NodeStatus, RetryPolicy, RunResult, current_context, run
from odibi_ray.execution.result import AttemptRecord, ErrorInfo, ErrorKind, NodeRecord
from odibi_ray.observe.metrics import MetricsManager, MetricType
from odibi_ray.observe.progress import RichProgress
from odibi_ray.observe.report import ITEM_BARS, ITEM_ROWS, render_report
from odibi_ray.observe.run_metrics import MetricsActor, actor_metrics, metrics_actor, metrics_from_result
from odibi_ray.observe.watch import manifest_status, render

from . import map_nodes as mn
from .nodes import wait_for
from .test_live_metrics import _gated_run, figures, poll
from .test_report import Doc, assert_self_contained, classes


def bad_and_flaky(word: str) -> str:
    """w2 fails for good; w1 fails its first attempt only (a retry)."""
    if word == "w2":
        raise ValueError(f"cannot process {word} <b>x</b>")
    if word == "w1" and current_context().attempt == 1:
        raise ConnectionError("blip")
    return word.upper()


def partial_dag(n: int = 6, name: str = "map_report") -> DAG:
    dag = DAG(name)
    dag.add_node(Node("words", mn.words, params={"n": n}))
    dag.add_node(Node("f", bad_and_flaky, map_over=MapSpec("words", allow_partial=True),
                      retry=RetryPolicy(max_attempts=2, delay_s=0, retry_on=(ConnectionError,))))
    dag.add_node(Node("after", mn.partial_view, inputs={"results": "f"}))
    return dag


def boxes(doc: Doc) -> dict[str, dict]:
    return {b["attrs"]["data-node"]: b for b in doc.having("data-node", cls="node", tag="g")}


def text_in(doc: Doc, el: dict) -> str:
    """All the text inside ``el`` (its own and its descendants')."""
    return "".join(e["text"] for e in doc.elements if _inside(e, el))


# --- the report -------------------------------------------------------------------------------------------

def test_the_report_shows_a_mapped_node_once_with_its_items_grouped_under_it(tmp_path):
    result = run(partial_dag(), backend="local", progress=False).raise_for_status()
    rec = result.nodes["f"]
    assert rec.item_counts() == {"succeeded": 5, "failed": 1}
    text = result.report(tmp_path / "map.html").read_text("utf-8")
    doc = Doc(text)
    assert_self_contained(text, doc)
    assert "<b>x</b>" not in text and "cannot process w2 <b>x</b>" in doc.text  # an item's error, escaped

    # The DAG: one box for the mapped node, marked as mapped, with its items' counts; none for its items.
    drawn = boxes(doc)
    assert sorted(drawn) == ["after", "f", "words"]
    box = drawn["f"]
    assert "mapped" in classes(box) and box["attrs"]["data-items"] == "6"
    assert box["attrs"]["data-item-counts"] == "succeeded:5,failed:1"
    assert box["attrs"]["data-item-attempts"] == "7" and box["attrs"]["data-item-failed-attempts"] == "2"
    name = next(e for e in doc.elements if e["tag"] == "text" and "name" in classes(e) and _inside(e, box))
    assert name["text"] == "f ×6"
    assert "5 succeeded · 1 failed" in text_in(doc, box)
    assert "mapped: 6 items: 5 succeeded, 1 failed" in box["title"] and "failed f[2]: ValueError" in box["title"]
    strip = {e["attrs"]["data-status"]: int(e["attrs"]["data-count"]) for e in doc.having("data-count", tag="rect")
             if _inside(e, box)}
    assert strip == {"succeeded": 5, "failed": 1}
    assert doc.having("data-stack-of", tag="g")[0]["attrs"]["data-stack-of"] == "f"
    assert {e["attrs"]["data-edge"] for e in doc.having("data-edge")} == {"words->f", "f->after"}

    # The timeline: one bar per item attempt (few items), named by node and item, the retry linked.
    bars = [b for b in doc.having("data-attempt", cls="attempt", tag="rect") if b["attrs"]["data-node"] == "f"]
    assert sorted((b["attrs"]["data-item"], int(b["attrs"]["data-attempt"])) for b in bars) == sorted(
        [(f"f[{i}]", 1) for i in range(6)] + [("f[1]", 2)])
    by = {(b["attrs"]["data-item"], b["attrs"]["data-attempt"]): b for b in bars}
    assert "failed" in classes(by[("f[2]", "1")]) and "failed" in classes(by[("f[1]", "1")])
    assert "ok" in classes(by[("f[1]", "2")]) and "item" in classes(by[("f[1]", "2")])
    assert "f[2]: attempt 1 of 1 (failed)" in by[("f[2]", "1")]["title"]
    assert "an item of mapped node f" in by[("f[2]", "1")]["title"]
    links = doc.having("data-from-attempt", cls="retry-link")
    assert [(e["attrs"]["data-node"], e["attrs"]["data-item"], e["attrs"]["data-from-attempt"]) for e in links] \
        == [("f", "f[1]", "1")]
    (row,) = doc.having("data-item-attempts", cls="maprow", tag="g")
    assert row["attrs"]["data-node"] == "f" and row["attrs"]["data-item-attempts"] == "7"
    assert "f: 6 items: 5 succeeded, 1 failed" in row["title"]

    # The table: one row for the node, its items in a list below, open (one failed), the failed item first.
    rows = doc.having("data-node", tag="tr")
    assert [r["attrs"]["data-node"] for r in rows] == ["words", "f", "after"]
    frow = rows[1]
    assert frow["attrs"]["data-items"] == "6" and "×6" in text_in(doc, frow)
    assert "1 of 6 item(s) failed" in text_in(doc, frow)
    details = doc.having("data-node", tag="details")[0]
    assert "open" in details["attrs"] and "6 items: 5 succeeded, 1 failed (failed first)" in text_in(doc, details)
    items = doc.having("data-item", tag="tr")
    assert [r["attrs"]["data-item"] for r in items][:2] == ["f[2]", "f[1]"]  # failed, then retried
    assert sorted(r["attrs"]["data-item"] for r in items) == [f"f[{i}]" for i in range(6)]
    assert all(r["attrs"]["data-parent"] == "f" for r in items)
    assert "ValueError" in text_in(doc, items[0]) and "retried after: #1 ConnectionError" in text_in(doc, items[1])
    assert "6 item(s) of 1 mapped node(s)" in doc.text and "9 attempt(s)" in doc.text  # words, 7 of items, after


def test_a_result_read_back_from_json_gives_the_same_report():
    result = run(partial_dag(name="map_json"), backend="local", progress=False)
    again = RunResult.from_json(result.to_json())
    assert again.nodes["f"].item_counts() == result.nodes["f"].item_counts()
    assert render_report(again, inputs=again.inputs) == render_report(result, inputs=result.inputs)


def test_a_node_mapped_over_nothing_and_one_that_could_not_split():
    dag = DAG("empty_map")
    dag.add_node(Node("words", mn.words, params={"n": 0}))
    dag.add_node(Node("e", mn.shout, params={"marks": "unused"}, map_over="words"))
    dag.add_node(Node("number", mn.number))
    dag.add_node(Node("m", mn.times, params={"factor": 2}, map_over="number"))
    result = run(dag, backend="local", progress=False)
    doc = Doc(render_report(result))
    drawn = boxes(doc)
    assert drawn["e"]["attrs"]["data-items"] == "0" and "e ×0" in text_in(doc, drawn["e"])
    assert "mapped" not in classes(drawn["m"]) and drawn["m"]["attrs"]["data-status"] == "failed"  # no items known
    assert "which returned a int" in doc.text


def big_result(n: int = 10_000, workers: int = 4, plain_at_level_1: int = 0) -> RunResult:
    """A run of one mapped node over ``n`` items on ``workers`` worker processes, made by hand: every 1000th item
    failed (twice), every 250th retried once, the others ran once (5 ms apart per worker)."""
    t0 = 1_800_000_000.0
    items = []
    for i in range(n):
        w = i % workers
        start = t0 + 1 + (i // workers) * 0.005
        attempts = []
        tries = 2 if i % 250 == 0 or i % 1000 == 7 else 1
        for k in range(1, tries + 1):
            s = start + (k - 1) * 0.002
            err = None
            if i % 1000 == 7 or (k == 1 and tries == 2):
                err = ErrorInfo("builtins.ValueError", f"bad row in item {i}", "Traceback ...\nValueError",
                                ErrorKind.APPLICATION)
            attempts.append(AttemptRecord(k, s - 0.001, s, s + 0.0015, f"node{w % 2:056d}", 1000 + w, err))
        status = NodeStatus.FAILED if i % 1000 == 7 else NodeStatus.CACHED if i % 3 == 0 and tries == 1 \
            else NodeStatus.SUCCEEDED
        if status is NodeStatus.CACHED:
            attempts = []
        items.append(NodeRecord(f"clean[{i}]", 1, status, attempts, error=attempts[-1].error if attempts else None,
                                cache_key=f"k{i}"))
    src = NodeRecord("list_files", 0, NodeStatus.SUCCEEDED, [AttemptRecord(1, t0, t0 + 0.1, t0 + 0.9, "n" * 56, 1)])
    clean = NodeRecord("clean", 1, NodeStatus.SUCCEEDED, [], reason=f"{n // 1000} of {n} item(s) failed "
                       "(allow_partial)", cache_key="kc", items=items)
    end = max(a.ended_at for i in items for a in i.attempt_history)
    total = NodeRecord("total", 2, NodeStatus.SUCCEEDED, [AttemptRecord(1, end, end + 0.01, end + 0.02, "n" * 56, 1)])
    nodes = {"list_files": src, "clean": clean, "total": total}
    levels = [["list_files"], ["clean"], ["total"]]
    for j in range(plain_at_level_1):
        nodes[f"side_{j}"] = NodeRecord(f"side_{j}", 1, NodeStatus.SUCCEEDED,
                                        [AttemptRecord(1, t0, t0 + 1, t0 + 1.2, "n" * 56, 1)])
        levels[1].append(f"side_{j}")
    return RunResult("big_map", "r-big", "ray", levels, nodes, t0, end + 0.5, _fetch=lambda names: [],
                     inputs={"clean": ["list_files"], "total": ["clean"]})


def test_a_report_of_10000_items_stays_small_fast_and_lists_every_failed_item():
    result = big_result()
    clean = result.nodes["clean"]
    failed = [i.name for i in clean.items if i.status is NodeStatus.FAILED]
    assert len(failed) == 10 and clean.item_counts()["cached"] > 3000
    started = time.perf_counter()
    text = render_report(result, inputs=result.inputs)
    took = time.perf_counter() - started
    assert len(text.encode()) < 150_000, len(text.encode())
    assert took < 3.0, took  # about 0.1 s on a laptop core
    doc = Doc(text)
    assert_self_contained(text, doc)
    assert boxes(doc)["clean"]["attrs"]["data-items"] == "10000"
    assert "clean ×10000" in text_in(doc, boxes(doc)["clean"])

    # The timeline: bands per worker (4 workers), not one bar per attempt; each failed attempt marked on them.
    bands = doc.having("data-attempts", cls="item-band", tag="rect")
    assert {(b["attrs"]["data-worker-node"][-1], b["attrs"]["data-worker-pid"]) for b in bands} == {
        ("0", "1000"), ("1", "1001"), ("0", "1002"), ("1", "1003")}
    item_attempts = sum(len(i.attempt_history) for i in clean.items)
    assert item_attempts > ITEM_BARS
    assert sum(int(b["attrs"]["data-attempts"]) for b in bands) == item_attempts
    failed_attempts = sum(1 for i in clean.items for a in i.attempt_history if a.error is not None)
    assert sum(int(b["attrs"]["data-failed"]) for b in bands) == failed_attempts
    marks = [b for b in doc.having("data-attempt", cls="attempt") if b["attrs"]["data-node"] == "clean"]
    assert marks and all("failed" in classes(m) for m in marks) and len(marks) <= 100
    assert {m["attrs"]["data-item"] for m in marks} >= set(failed)
    assert all(float(b["attrs"]["fill-opacity"]) <= 1 for b in bands)
    (row,) = doc.having("data-peak", cls="maprow")
    assert row["attrs"]["data-item-attempts"] == str(item_attempts)

    # The table: every failed item with its error, then the retried ones, the rest by index ranges.
    listed = [r["attrs"]["data-item"] for r in doc.having("data-item", tag="tr")]
    retried = [i.name for i in clean.items if i.status.ok and i.attempts > 1]
    assert listed == failed + retried and len(listed) < ITEM_ROWS
    assert "bad row in item 7" in doc.text
    ranges = {r["attrs"]["data-status"]: int(r["attrs"]["data-count"]) for r in doc.having("data-count", tag="div")}
    counts = clean.item_counts()
    assert ranges["cached"] == counts["cached"] and sum(ranges.values()) == 10_000 - len(listed)
    assert "clean[0–2]" not in doc.text and "clean[1–2]" in doc.text  # item 0 was retried: listed above
    assert "more ranges" in doc.text  # the ranges are cut, the file stays small


def test_a_mapped_node_in_a_compact_dag_fits_its_box():
    doc = Doc(render_report(big_result(n=600, plain_at_level_1=14), inputs={"clean": ["list_files"]}))
    svg = doc.having("class", cls="dag", tag="svg")[0]
    assert "compact" in classes(svg)
    box = boxes(doc)["clean"]
    texts = {tuple(sorted(classes(t))): t["text"] for t in doc.elements if t["tag"] == "text" and _inside(t, box)}
    assert texts == {("name",): "clean", ("items-count",): "×600"}
    assert doc.having("data-attempts", cls="item-band")  # more than ITEM_BARS attempts: bands


def _inside(el: dict, ancestor: dict) -> bool:
    while el is not None:
        if el is ancestor:
            return True
        el = el["parent"]
    return False


# --- progress and status --watch --------------------------------------------------------------------------

def test_the_terminal_progress_has_an_items_bar_that_reaches_all_items(marks):
    out = io.StringIO()
    dag = DAG("progress_map")
    dag.add_node(Node("words", mn.words, params={"n": 7}))
    dag.add_node(Node("shout", mn.shout, params={"marks": str(marks)}, map_over="words"))
    dag.add_node(Node("joined", mn.join, inputs={"items": "shout"}))
    run(dag, backend="local", progress=RichProgress(Console(file=out, force_terminal=True, width=100)))
    text = out.getvalue()
    assert "shout (items)" in text and "7/7" in text and "3/3" in text  # the items, and the nodes
    assert "8/7" not in text


def test_an_item_closed_twice_does_not_push_the_bar_past_its_total():
    sink = RichProgress(Console(file=io.StringIO(), force_terminal=True, width=100))
    sink.start([["a"], ["m"]])
    sink.items_added("m", 1, 2)
    for _ in range(3):  # one item reopened (its output lost) and closed again
        sink.item_done("m", 1, NodeStatus.SUCCEEDED)
    assert sink._progress is not None
    task = next(t for t in sink._progress.tasks if t.id == sink._items["m"])
    assert (task.completed, task.total) == (2, 2)
    sink.items_added("m", 1, 3)  # the node it maps over ran again: new items
    assert next(t for t in sink._progress.tasks if t.id == sink._items["m"]).completed == 0
    sink.stop()


def test_watch_shows_each_mapped_nodes_items_the_open_ones_first():
    status = {"run_id": "r", "pipeline": "p", "levels": [[1, 1], [0, 2]], "counts": {"running": 2},
              "items": {"done_map": [5, 5], "clean": [120, 1000]} | {f"m{i}": [0, 3] for i in range(5)}}
    lines = render(status, now=0).plain.splitlines()
    item_lines = [ln for ln in lines if "items" in ln]
    assert item_lines[0].split()[0] == "clean" and "] 120/1000 items" in item_lines[0]
    assert len(item_lines) == 6 and "done_map" not in "\n".join(item_lines[:5])
    assert item_lines[-1].strip() == "... 2 more mapped node(s): 5/8 items"
    assert "items" not in render({"run_id": "r", "levels": [[0, 1]], "counts": {}}, now=0).plain


def test_watch_from_the_manifest_shows_items_from_its_counts(tmp_path, marks):
    """Without Ray, `status --watch` reads the manifest: a mapped node's entry keeps its items' counts."""
    from odibi_ray.checkpoint import layout
    from odibi_ray.storage import open_storage

    store = tmp_path / "store"
    result = run(partial_dag(name="map_manifest"), backend="local", storage=str(store), progress=False)
    body = json.loads(open_storage(str(store)).get(layout.manifest_key("map_manifest", result.run_id)))
    status = manifest_status(body, {}, "succeeded")
    assert status["items"] == {"f": [6, 6]}
    assert "] 6/6 items" in render(status, now=0).plain
    running = manifest_status({"nodes": {"f": {"level": 1, "status": "pending",
                                               "items": {"succeeded": 2, "pending": 3, "running": 1}}}}, {}, "running")
    assert running["items"] == {"f": [2, 6]}


# --- metrics -------------------------------------------------------------------------------------------------

def test_metrics_from_a_partial_run_count_items_by_status_under_the_node():
    result = run(partial_dag(name="map_metrics"), backend="local", progress=False)
    m = metrics_from_result(result, result.inputs)
    labels = {"pipeline": "map_metrics", "level": "1"}
    assert m.get_metric_value(MetricType.MAP_ITEM, "f", status="succeeded", **labels) == 5
    assert m.get_metric_value(MetricType.MAP_ITEM, "f", status="failed", **labels) == 1
    assert m.get_metric_value(MetricType.NODE_SUCCESS, "f", **labels) == 1  # the node itself (allow_partial)
    assert m.get_metric_value(MetricType.NODE_RETRY, "f", **labels) == 1  # f[1]'s retry
    attempts = m.get_all_metrics(MetricType.NODE_ATTEMPT)
    assert sum(v for k, v in attempts.items() if k.startswith("f{")) == 7
    prom = m.export_prometheus()
    assert 'odibi_ray_map_items_total{' in prom and "f[" not in prom and "f[" not in json.dumps(m.snapshot())
    assert "item=" not in prom


def one_call_per_figure(result: RunResult) -> MetricsManager:
    """The derivation rule written out plainly, one manager call per figure and record (as it was before items were
    derived in batches): the oracle the batched derivation must equal exactly."""
    m = MetricsManager()
    checkpointed = any(r.cache_key for r in result.nodes.values())
    for rec in result.nodes.values():
        for item in rec.items or ():
            _figures_of(m, result, item, rec.name, checkpointed, item=True)
        _figures_of(m, result, rec, rec.name, checkpointed, item=False)
    return m


def _figures_of(m: MetricsManager, result: RunResult, rec: NodeRecord, name: str, checkpointed: bool,
                item: bool) -> None:
    labels = {"pipeline": result.pipeline, "level": str(rec.level)}
    ends = [result.nodes[u].ended_at for u in result.inputs.get(name, ())]
    ready_at = max([e for e in ends if e is not None], default=None)
    for att in rec.attempt_history:
        m.increment(MetricType.NODE_ATTEMPT, name, value=1, worker=att.worker_node_id or "unknown", **labels)
        if att.duration_s is not None:
            m.record(MetricType.EXECUTION_TIME, name, value=att.duration_s, **labels)
        if att.started_at is not None:
            m.record(MetricType.QUEUE_WAIT, name,
                     value=max(0.0, att.started_at - max(att.submitted_at, ready_at or 0.0)), **labels)
        for metric, value in ((MetricType.BYTES_WRITTEN, att.bytes_written), (MetricType.BYTES_READ, att.bytes_read)):
            if value:
                m.increment(metric, name, value=value, **labels)
        if att.storage_s:
            m.record(MetricType.STORAGE_LATENCY, name, value=att.storage_s, **labels)
    if rec.attempts > 1:
        m.increment(MetricType.NODE_RETRY, name, value=rec.attempts - 1, **labels)
    status = rec.status
    if item:
        if status.done:
            m.increment(MetricType.MAP_ITEM, name, value=1, status=status.value, **labels)
        if status is NodeStatus.SUCCEEDED and checkpointed:
            m.increment(MetricType.CACHE_MISS, name, value=1, **labels)
        elif status in (NodeStatus.CACHED, NodeStatus.RESUMED):
            m.increment(MetricType.CACHE_HIT, name, value=1, source=status.value, **labels)
    elif status is NodeStatus.SUCCEEDED:
        m.increment(MetricType.NODE_SUCCESS, name, value=1, **labels)
        if checkpointed and rec.items is None:
            m.increment(MetricType.CACHE_MISS, name, value=1, **labels)
    elif status is NodeStatus.FAILED:
        m.increment(MetricType.NODE_FAILURE, name, value=1, **labels)
    elif status in (NodeStatus.SKIPPED, NodeStatus.CANCELLED):
        m.increment(MetricType.NODE_SKIP, name, value=1, reason=status.value, **labels)
    elif status in (NodeStatus.CACHED, NodeStatus.RESUMED) and rec.items is None:
        m.increment(MetricType.CACHE_HIT, name, value=1, source=status.value, **labels)


def storage_heavy_result(n: int) -> RunResult:
    """big_result's items, with bytes and storage seconds on their attempts (ints, and one float: bytes read back
    from an odd source must count exactly too), one item resumed and one still running; and plain nodes of every
    other outcome beside the mapped node."""
    result = big_result(n=n, plain_at_level_1=4)
    for j, status in enumerate((NodeStatus.FAILED, NodeStatus.SKIPPED, NodeStatus.CACHED, NodeStatus.CANCELLED)):
        side = result.nodes[f"side_{j}"]
        side.status, side.cache_key = status, f"s{j}"
        if status is not NodeStatus.FAILED:
            side.attempt_history = []
    items = result.nodes["clean"].items
    assert items is not None
    for i, item in enumerate(items):
        for att in item.attempt_history:
            att.bytes_written, att.bytes_read, att.storage_s = 100 + i, i % 7, (i % 5) * 0.0013
    items[1].attempt_history[0].bytes_read = 2.5  # type: ignore[assignment]
    items[6].status = NodeStatus.RESUMED
    items[10].status, items[10].attempt_history[-1].ended_at = NodeStatus.RUNNING, None
    return result


def test_a_mapped_nodes_metrics_equal_one_call_per_figure_exactly():
    result = storage_heavy_result(3000)
    batched = metrics_from_result(result, result.inputs)
    assert batched.snapshot() == one_call_per_figure(result).snapshot()
    labels = {"pipeline": "big_map", "level": "1"}
    assert batched.get_metric_value(MetricType.CACHE_HIT, "clean", source="resumed", **labels) == 1
    assert batched.get_metric_value(MetricType.BYTES_READ, "clean", **labels) == pytest.approx(
        sum(a.bytes_read for i in result.nodes["clean"].items for a in i.attempt_history))
    running = batched.get_metric_value(MetricType.MAP_ITEM, "clean", status="running", **labels)
    assert running == 0 and batched.get_metric_value(MetricType.STORAGE_LATENCY, "clean", **labels)["count"] > 0


def test_live_batches_of_closed_items_add_up_to_the_final_figures():
    from odibi_ray.observe.live import LivePublisher

    result = big_result(n=2000)  # every item closed
    items = result.nodes["clean"].items
    records = {**result.nodes, **{i.name: i for i in items}}
    names = [i.name for i in items]
    batches = [set(result.nodes) | set(names[:700]), set(names[500:1500]), set(names[1400:]) | {"total"}]
    view = _Batches(records, result.inputs, batches)
    actor = MetricsActor()
    # as the runner sends them: pickled
    live = LivePublisher("big_map", "r-big", lambda batch, status: actor.push_rows(pickle.dumps(batch), status))
    for _ in batches:
        live.publish(view)
    final = metrics_from_result(result, result.inputs)
    assert figures(actor.metrics) == figures(final)  # items seen twice count once; the end has nothing left to add


class _Batches:
    """The scheduler's live view as the publisher reads it, its changed names given batch by batch."""

    def __init__(self, records: dict[str, NodeRecord], inputs: dict[str, list[str]], batches: list[set[str]]):
        self.records, self.inputs, self._batches = records, inputs, list(batches)
        self.reopened = 0

    def take_changed(self) -> set[str]:
        return self._batches.pop(0)

    def live_status(self) -> dict:
        return {"counts": {}, "levels": [], "slowest": []}


def test_live_metrics_of_a_ray_run_count_items_under_the_node_while_it_runs(ray_local, tmp_path, marks):
    gate = tmp_path / "gate"
    dag = DAG("live_map")
    dag.add_node(Node("words", mn.words, params={"n": 4}))
    dag.add_node(Node("shout", mn.shout, params={"marks": str(marks)}, map_over="words", num_cpus=0.5))
    dag.add_node(Node("gate", wait_for, params={"path": str(gate), "timeout": 60}, num_cpus=0.5))
    dag.add_node(Node("after", lambda g, s: s, inputs={"g": "gate", "s": "shout"}))
    ns, rid = "test_live_map", "live-map-1"
    labels = {"pipeline": "live_map", "level": "1"}
    out: dict[str, object] = {}
    with _gated_run(out, gate, dag, metrics_namespace=ns, run_id=rid):
        held = poll(lambda: (lambda m: m if m.get_metric_value(MetricType.MAP_ITEM, "shout", status="succeeded",
                                                               **labels) == 4 else None)(actor_metrics(ns)),
                    timeout=30)
        assert sum(v for k, v in held.get_all_metrics(MetricType.NODE_ATTEMPT).items()
                   if k.startswith("shout{")) == 4
        assert "shout[" not in json.dumps(held.snapshot())  # no item label
        status = poll(lambda: (lambda s: s if s and s.get("items", {}).get("shout") == [4, 4] else None)(
            ray.get(metrics_actor(ns).run_status.remote(rid))))
        assert not status.get("finished") and "result" not in out
        assert "] 4/4 items" in render(status).plain
    result = out["result"]
    assert isinstance(result, RunResult) and result.succeeded
    poll(lambda: (lambda s: s and s.get("finished"))(ray.get(metrics_actor(ns).run_status.remote(rid))))
    end = actor_metrics(ns)
    assert figures(end) == figures(metrics_from_result(result, result.inputs))
    assert end.get_metric_value(MetricType.MAP_ITEM, "shout", status="succeeded", **labels) == 4


def test_few_item_attempts_are_one_bar_each():
    result = big_result(n=ITEM_BARS // 2, workers=2)
    doc = Doc(render_report(result))
    assert not doc.having("data-attempts", cls="item-band")
    assert len(doc.having("data-item", cls="attempt", tag="rect")) == sum(
        len(i.attempt_history) for i in result.nodes["clean"].items)


# --- in a browser -------------------------------------------------------------------------------------------

BIG_FACTS = r"""(() => {
  const box = e => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.width, b.height]; };
  const g = document.querySelector('svg.dag g.node.mapped'), t = document.querySelector('svg.timeline');
  const s = t.closest('.scroll'), nav = performance.getEntriesByType('navigation')[0];
  return {node: g.dataset.node, rect: box(g.querySelector(':scope > rect')), name: box(g.querySelector('text.name')),
          label: g.querySelector('text.name').textContent, timeline: box(t),
          bands: [...t.querySelectorAll('rect.item-band')].map(box), scroll: [s.scrollWidth, s.clientWidth],
          itemRows: document.querySelectorAll('table.items tbody tr').length,
          open: document.querySelector('details.items').open, loadMs: nav.loadEventEnd - nav.startTime};
})()"""


def test_a_report_of_10000_items_opens_in_a_browser_without_error(tmp_path):
    from .make_report_screenshot import find_chromium, report_in_browser

    if find_chromium() is None:
        pytest.skip("no Chromium (see tests/test_report_browser.py)")
    with report_in_browser(big_result(), None, tmp_path) as (browser, page):  # type: ignore[arg-type]
        facts = browser.evaluate(BIG_FACTS)
    assert page.errors() == [] and page.requests == [page.url]
    assert facts["node"] == "clean" and facts["label"] == "clean ×10000"
    x, y, w, h = facts["rect"]
    nx, ny, nw, nh = facts["name"]
    assert x <= nx and nx + nw <= x + w and y <= ny and ny + nh <= y + h  # the label inside its box
    assert len(facts["bands"]) >= 4 and facts["scroll"][0] <= facts["scroll"][1]  # no sideways scrolling
    tx, _, tw, _ = facts["timeline"]
    assert all(tx <= bx and bx + bw <= tx + tw + 0.5 for bx, _, bw, _ in facts["bands"])
    assert facts["itemRows"] == 50 and facts["open"]  # 10 failed and 40 retried items; open: some failed
    assert facts["loadMs"] < 5000, facts["loadMs"]
