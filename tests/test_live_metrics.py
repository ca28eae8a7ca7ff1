"""Live metrics (issue 16): the metrics actor sees a run while it runs (deltas at most once a second), and when
it ends holds exactly the record-derived figures. On real Ray; a gate node holds the run open while the test
looks at the actor from the outside, as another driver or `odibi-ray status --watch` would."""

from __future__ import annotations

import pickle

import contextlib
import threading
import time

import ray

from odibi_ray import DAG, Node, RetryPolicy, run
from odibi_ray.observe.metrics import MetricsManager, MetricType
from odibi_ray.observe.run_metrics import actor_metrics, metrics_actor, metrics_from_result

from .nodes import fail_until, wait_for


def live_dag(name: str, gate: str) -> DAG:
    dag = DAG(name)
    for i in range(3):
        dag.add_node(Node(f"quick{i}", lambda: 1))
    dag.add_node(Node("flaky", fail_until(2), retry=RetryPolicy(max_attempts=2, delay_s=0)))
    dag.add_node(Node("gate", lambda path: wait_for(path, timeout=60), params={"path": gate}))
    dag.add_node(Node("after", lambda g, q: q, inputs={"g": "gate", "q": "quick0"}))
    return dag


def figures(m: MetricsManager) -> dict[str, dict[str, object]]:
    """Every counter and histogram series with a value (a series corrected to 0 counts as absent)."""
    out: dict[str, dict[str, object]] = {}
    for metric, series in m.get_all_metrics().items():
        if MetricType(metric).kind.value == "gauge":
            continue
        kept = {k: v for k, v in series.items() if v != 0 and not (isinstance(v, dict) and v["count"] == 0)}
        if kept:
            out[metric] = kept
    return out


def poll(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("not seen in time")


def test_the_actor_sees_a_run_while_it_runs_and_ends_exact(ray_local, tmp_path):
    gate = tmp_path / "gate"
    ns, rid = "test_live", "live-run-1"
    out: dict[str, object] = {}
    worker = _start_run(out, live_dag("live_p", str(gate)), metrics_namespace=ns, run_id=rid)
    try:
        actor = metrics_actor(ns)
        # while the gate holds the run open: the finished nodes' attempts, the retry, the gauges, the status
        held = poll(lambda: (lambda m: m if m.get_metric_value(MetricType.NODE_SUCCESS, "flaky", pipeline="live_p",
                                                               level="0") == 1 else None)(actor_metrics(ns)))
        assert held.get_metric_value(MetricType.NODE_ATTEMPT, "flaky", pipeline="live_p", level="0",
                                     worker=_only_worker(held, "flaky")) == 2
        assert held.get_metric_value(MetricType.NODE_RETRY, "flaky", pipeline="live_p", level="0") == 1
        assert held.get_metric_value(MetricType.NODES_RUNNING, "live_p", pipeline="live_p") == 1  # the gate
        assert held.get_metric_value(MetricType.NODES_DONE, "live_p", pipeline="live_p", level="0") == 4
        status = ray.get(actor.run_status.remote(rid))
        assert status["pipeline"] == "live_p" and not status.get("finished")
        assert status["levels"] == [[4, 5], [0, 1]] and status["counts"]["running"] == 1
        assert status["slowest"][0][0] == "gate"
        assert "result" not in out  # all of this was seen while the run was still going
    finally:
        gate.touch()
        worker.join(60)
    result = out["result"]
    # the end: exactly the record-derived figures, the gauges of a finished run, a finished status
    end = poll(lambda: (lambda s: s if s and s.get("finished") else None)(ray.get(metrics_actor(ns).run_status
                                                                                  .remote(rid))))
    assert end["status"] == "succeeded" and end["levels"] == [[5, 5], [1, 1]]
    held = actor_metrics(ns)
    assert figures(held) == figures(metrics_from_result(result, result.inputs))
    assert held.get_metric_value(MetricType.NODES_RUNNING, "live_p", pipeline="live_p") == 0


def _only_worker(m: MetricsManager, node: str) -> str:
    workers = {series.split('worker="', 1)[1].split('"', 1)[0]
               for series in m.get_all_metrics(MetricType.NODE_ATTEMPT) if series.startswith(node + "{")}
    assert len(workers) == 1, workers
    return workers.pop()


def _start_run(out: dict[str, object], dag: DAG, **options: object) -> threading.Thread:
    """Run ``dag`` in a thread (its result lands in ``out["result"]``), as another driver would."""
    thread = threading.Thread(target=lambda: out.update(result=run(dag, progress=False, **options)))
    thread.start()
    return thread


@contextlib.contextmanager
def _gated_run(out: dict[str, object], gate, dag: DAG, **options: object):
    """A run in a thread held open by its gate node until the ``with`` block ends (then released and joined)."""
    runner = _start_run(out, dag, **options)
    try:
        yield runner
    finally:
        gate.touch()
        runner.join(60)


def _watch(args: list[str], out: dict[str, object]) -> threading.Thread:
    from typer.testing import CliRunner

    from odibi_ray.cli import app

    def go() -> None:
        out["cli"] = CliRunner().invoke(app, ["status", *args])
    thread = threading.Thread(target=go)
    thread.start()
    return thread


def test_status_watch_follows_a_ray_run_from_the_actor_until_it_ends(ray_local, tmp_path):
    gate = tmp_path / "gate"
    out: dict[str, object] = {}
    with _gated_run(out, gate, live_dag("watch_p", str(gate)), metrics_namespace="test_watch", run_id="watch-run-1"):
        poll(lambda: ray.get(metrics_actor("test_watch").run_status.remote("watch-run-1")))
        watcher = _watch(["watch-run-1", "--watch", "--namespace", "test_watch", "--interval", "0.2"], out)
        time.sleep(1.5)
        assert watcher.is_alive()  # still following: the run is not over
    watcher.join(30)
    cli = out["cli"]
    assert cli.exit_code == 0, cli.output
    text = cli.output
    assert "run watch-run-1 of watch_p: running" in text and "level 0   [" in text and "slowest: gate" in text
    assert "running 1" in text and text.rstrip().splitlines()[-4].startswith("run watch-run-1 of watch_p: succeeded")
    assert "5/5" in text and "1/1" in text


def test_status_watch_falls_back_to_the_manifest(ray_local, tmp_path, local_storage):
    gate = tmp_path / "gate"
    out: dict[str, object] = {}
    with _gated_run(out, gate, live_dag("watch_m", str(gate)), backend="local", storage=local_storage,
                    heartbeat_s=0.2, run_id="watch-run-2"):
        from odibi_ray.checkpoint import layout

        poll(lambda: local_storage.exists(layout.manifest_key("watch_m", "watch-run-2")))  # the run has started
        watcher = _watch(["watch-run-2", "--watch", "--storage", local_storage.uri, "--pipeline", "watch_m",
                          "--namespace", "nobody_here", "--interval", "0.2"], out)
        time.sleep(2.0)
        assert watcher.is_alive()
    watcher.join(30)
    cli = out["cli"]
    assert cli.exit_code == 0, cli.output
    assert "following the run's manifest instead" in cli.output
    assert "run watch-run-2 of watch_m: running" in cli.output and "run watch-run-2 of watch_m: succeeded" in cli.output


def test_rays_own_metrics_endpoint_shows_the_counts(ray_local):
    """The same counters and gauges through ray.util.metrics: scraped over HTTP from the Prometheus endpoint of
    the session's Ray node (127.0.0.1, its metrics export port), parsed with prometheus_client."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from .conftest import RAY_METRICS_PORT

    result = run(faulty_ray_dag("ray_export_p"), progress=False, metrics_namespace="test_ray_export")

    def scraped() -> dict[str, float] | None:
        body = urllib.request.urlopen(f"http://127.0.0.1:{RAY_METRICS_PORT}/metrics", timeout=5).read().decode()
        attempts: dict[str, float] = {}
        for family in text_string_to_metric_families(body):
            if family.name == "ray_odibi_ray_node_attempts":
                for s in family.samples:
                    if s.labels.get("pipeline") == "ray_export_p" and s.name.endswith("_total"):
                        attempts[s.labels["name"]] = attempts.get(s.labels["name"], 0) + s.value
        want = {n: r.attempts for n, r in result.nodes.items() if r.attempts}
        return attempts if attempts == want else None

    assert poll(scraped, timeout=30)


def faulty_ray_dag(name: str) -> DAG:
    dag = DAG(name)
    dag.add_node(Node("flaky", fail_until(3), retry=RetryPolicy(max_attempts=3, delay_s=0)))
    dag.add_node(Node("after", lambda x: x, inputs={"x": "flaky"}))
    return dag


def test_status_watch_from_another_process_joins_the_cluster_by_address(ray_local, tmp_path):
    """`odibi-ray status --watch --address ...` in its own process (another terminal), connected to the run's Ray by
    address, follows the run from the metrics actor and ends when the run ends."""
    import os
    import subprocess
    import sys

    gate = tmp_path / "gate"
    out: dict[str, object] = {}
    with _gated_run(out, gate, live_dag("watch_x", str(gate)), metrics_namespace="test_watch_x",
                    run_id="watch-run-3"):
        poll(lambda: ray.get(metrics_actor("test_watch_x").run_status.remote("watch-run-3")))
        address = ray.get_runtime_context().gcs_address
        proc = subprocess.Popen([sys.executable, "-m", "odibi_ray.cli", "status", "watch-run-3", "--watch",
                                 "--address", address, "--namespace", "test_watch_x", "--interval", "0.3"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                                env=dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"))
        first = proc.stdout.readline()  # the first frame: the watcher is connected and the run still goes
        assert first.startswith("run watch-run-3 of watch_x: running"), first + proc.stderr.read()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stdout + stderr
    assert "run watch-run-3 of watch_x: succeeded" in stdout and "5/5" in stdout


class _View:
    """A stand-in for the scheduler's view (records changed by hand; no Ray): what LivePublisher reads."""

    def __init__(self, records):
        self.records, self.changed = records, set(records)
        self.inputs = {n: [] for n in records}
        self.reopened = 0

    def take_changed(self):
        changed, self.changed = self.changed, set()
        return changed

    def live_status(self):
        return {"counts": {}, "levels": [], "slowest": []}


def test_a_batch_that_could_not_be_sent_is_not_lost_and_the_end_is_exact():
    from odibi_ray.execution.result import AttemptRecord, NodeRecord, NodeStatus
    from odibi_ray.observe.live import LivePublisher
    from odibi_ray.observe.run_metrics import MetricsActor

    actor, calls = MetricsActor(), []

    def send(batch, status):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("actor not reachable yet")
        actor.push_rows(pickle.dumps(batch), status)

    rec = NodeRecord("a", 0, NodeStatus.SUCCEEDED, [AttemptRecord(1, 0.0, 0.0, 0.5, "n1", 1)])
    records = {"a": rec}
    live = LivePublisher("p", "r", send)
    view = _View(records)
    live.publish(view)  # fails: kept
    live.publish(view)  # nothing changed; the kept node goes now
    assert actor.metrics.get_metric_value(MetricType.NODE_SUCCESS, "a", pipeline="p", level="0") == 1
    rec.status = NodeStatus.FAILED  # e.g. its output was lost and the recomputation failed
    from odibi_ray.observe.run_metrics import metrics_from_result

    class Result:
        pipeline, nodes, stats = "p", records, {}
    final = metrics_from_result(Result(), {"a": []})  # type: ignore[arg-type]
    live.finish(view, {"a"}, {"counts": {}, "levels": [], "slowest": []}, {})
    assert figures(actor.metrics) == figures(final)
    assert actor.metrics.get_metric_value(MetricType.NODE_SUCCESS, "a", pipeline="p", level="0") == 0
    MetricsManager.from_snapshot(actor.metrics.snapshot())  # readable: no counter below zero


def test_watch_ends_when_any_source_says_the_run_is_over():
    from odibi_ray.observe.watch import first_of, watch

    stale_actor = {"run_id": "r", "pipeline": "p", "counts": {}, "levels": [], "updated_at": time.time()}
    manifest = dict(stale_actor, finished=True, status="abandoned")
    final = watch(first_of([lambda: stale_actor, lambda: manifest]), interval_s=0.01, timeout_s=5)
    assert final["status"] == "abandoned"
