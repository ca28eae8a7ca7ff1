"""Fan-out at run time (issue 17): a node mapped over the items of an upstream output, each item its own task,
record, cache key and checkpoint; consumers receive the results in item order. Real Ray (the session's local
Ray) and the local thread backend; checkpoints in a real folder (and Azurite where storage behaviour matters)."""

from __future__ import annotations

import json

import pytest

from odibi_ray import (DAG, CachePolicy, DAGValidationError, InvalidPolicyError, MapSpec, Node, NodeStatus,
                       PartialResults, RetryPolicy, RunResult, SignatureMismatchError, UnknownInputError, run)
from odibi_ray.checkpoint import layout

from . import map_nodes as mn
from .map_nodes import ran


def words_dag(marks, n=5, name="words", suffix="!", **map_options) -> DAG:
    dag = DAG(name)
    dag.add_node(Node("words", mn.words, params={"n": n}))
    dag.add_node(Node("shout", mn.shout, params={"marks": str(marks), "suffix": suffix},
                      map_over=MapSpec("words", **map_options)))
    dag.add_node(Node("joined", mn.join, inputs={"items": "shout"}))
    return dag


def item_statuses(result: RunResult, node: str) -> list[str]:
    return [i.status.value for i in result.nodes[node].items]


# --- definition ---------------------------------------------------------------------------------------------

def test_the_item_goes_to_the_first_free_parameter_or_the_one_named_and_levels_show_the_map():
    dag = DAG("d")
    dag.add_node(Node("words", mn.words))
    dag.add_node(Node("shout", mn.shout, params={"marks": "m"}, map_over="words"))
    dag.add_node(Node("shout2", mn.shout, inputs={"word": "words"}, params={"marks": "m"}, map_over="words"))
    assert dag["shout"].mapping == MapSpec("words", param="word")
    assert dag["shout"].input_map == {"word": "words"} and dag["shout2"].mapping.param == "word"
    assert dag.levels() == [["words"], ["shout", "shout2"]]
    assert set(dag.mapped()) == {"shout", "shout2"}


def test_the_decorator_maps_and_returns_the_function_unchanged():
    dag = DAG("d")
    dag.add_node(Node("words", mn.words))

    @dag.map("words", max_parallel=3, allow_partial=True)
    def upper(w):
        return w.upper()

    assert upper("a") == "A"
    assert dag["upper"].mapping == MapSpec("words", param="w", max_parallel=3, allow_partial=True)


@pytest.mark.parametrize("build, error, text", [
    (lambda d: d.add_node(Node("m", mn.shout, params={"marks": "m"}, map_over="nope")), UnknownInputError, "nope"),
    (lambda d: d.add_node(Node("m", mn.shout, params={"marks": "m"}, map_over=MapSpec("words", max_parallel=0))),
     InvalidPolicyError, "max_parallel must be a whole number from 1"),
    (lambda d: d.add_node(Node("m", mn.shout, params={"marks": "m"}, map_over=MapSpec("words", batch_rows=2,
                                                                                      by="x"))),
     InvalidPolicyError, "batch_rows or by, not both"),
    (lambda d: d.add_node(Node("m", mn.shout, params={"marks": "m", "word": "x", "suffix": "?"}, map_over="words")),
     SignatureMismatchError, "no parameter .* is left to receive the items of 'words'"),
    (lambda d: d.add_node(Node("m", mn.times, inputs={"x": "words", "factor": "words"}, map_over="words")),
     DAGValidationError, r"parameters \['x', 'factor'\] all read 'words'"),
    (lambda d: d.add_node(Node("m", mn.times, inputs={"x": "number"}, params={"factor": 2},
                               map_over=MapSpec("words", param="x"))),
     DAGValidationError, "map param 'x' is already the input of 'number'"),
])
def test_a_bad_map_is_refused_before_anything_runs_naming_the_node(build, error, text):
    dag = DAG("d")
    dag.add_node(Node("words", mn.words))
    dag.add_node(Node("number", mn.number))
    with pytest.raises(error, match=text):
        build(dag)
        dag.validate()


# --- running ------------------------------------------------------------------------------------------------

def test_each_item_is_its_own_attempt_and_the_consumer_gets_the_results_in_item_order(backend, marks):
    result = run(words_dag(marks, n=5), backend=backend, progress=False)
    result.raise_for_status()
    assert result["joined"] == "W0!,W1!,W2!,W3!,W4!"
    assert result["shout"] == ["W0!", "W1!", "W2!", "W3!", "W4!"]
    rec = result.nodes["shout"]
    assert rec.status is NodeStatus.SUCCEEDED and rec.attempts == 0
    assert [i.name for i in rec.items] == [f"shout[{i}]" for i in range(5)]
    assert all(i.status is NodeStatus.SUCCEEDED and i.attempts == 1 for i in rec.items)
    assert rec.item_counts() == {"succeeded": 5}
    assert ran(marks) == {f"shout-w{i}": 1 for i in range(5)}
    assert set(result.nodes) == {"words", "shout", "joined"}  # items are under their node, not beside it


def test_the_worker_knows_which_item_it_runs(ray_local):
    dag = DAG("ctx")
    dag.add_node(Node("words", mn.words, params={"n": 3}))
    dag.add_node(Node("where", mn.where_am_i, map_over="words", num_cpus=0.5))
    out = run(dag, progress=False).raise_for_status()["where"]
    assert [o[:4] for o in out] == [(f"w{i}", "where", i, f"where[{i}]") for i in range(3)]


def test_an_empty_list_gives_the_consumer_an_empty_list(backend, marks):
    result = run(words_dag(marks, n=0), backend=backend, progress=False).raise_for_status()
    assert result["joined"] == "" and result.nodes["shout"].items == []


def test_items_retry_on_their_own(backend, marks):
    dag = DAG("flaky")
    dag.add_node(Node("words", mn.words, params={"n": 3}))
    dag.add_node(Node("f", mn.flaky_once, params={"marks": str(marks)}, map_over="words",
                      retry=RetryPolicy(max_attempts=2, delay_s=0, retry_on=(ConnectionError,))))
    result = run(dag, backend=backend, progress=False).raise_for_status()
    assert result["f"] == ["W0", "W1", "W2"]
    assert [i.attempts for i in result.nodes["f"].items] == [2, 2, 2]
    assert result.nodes["f"].items[0].retry_note() == "retried after ConnectionError"


def failing_dag(marks, bad="w2", allow_partial=False, switch="", name="failing") -> DAG:
    dag = DAG(name)
    dag.add_node(Node("words", mn.words, params={"n": 4}))
    dag.add_node(Node("f", mn.fails_on, params={"marks": str(marks), "bad": bad, "switch": switch},
                      map_over=MapSpec("words", allow_partial=allow_partial)))
    dag.add_node(Node("after", mn.partial_view if allow_partial else mn.join, inputs={"results" if allow_partial
                                                                                       else "items": "f"}))
    return dag


def test_an_item_that_fails_for_good_fails_its_node_and_skips_consumers_and_the_others_finish(backend, marks):
    result = run(failing_dag(marks), backend=backend, progress=False)
    rec = result.nodes["f"]
    assert rec.status is NodeStatus.FAILED
    assert item_statuses(result, "f") == ["succeeded", "succeeded", "failed", "succeeded"]
    assert rec.error.type_name == "ValueError" and "1 of 4 item(s) failed; f[2]: cannot process w2" in rec.error.message
    assert result.nodes["after"].status is NodeStatus.SKIPPED
    with pytest.raises(Exception, match=r"f\[2\]: cannot process w2"):
        result.raise_for_status()


def test_allow_partial_gives_the_consumer_the_successes_and_what_failed(backend, marks):
    result = run(failing_dag(marks, allow_partial=True), backend=backend, progress=False).raise_for_status()
    assert result.nodes["f"].status is NodeStatus.SUCCEEDED
    assert "1 of 4 item(s) failed (allow_partial)" in result.nodes["f"].reason
    view = result["after"]
    assert view == {"ok": ["W0", "W1", "W3"], "failed": [(2, "w2", "ValueError", "cannot process w2")],
                    "indexes": [0, 1, 3]}
    partial = result["f"]
    assert isinstance(partial, PartialResults) and partial == ["W0", "W1", "W3"] and partial.failed[0].position == 2


def test_reduce_gives_consumers_one_value(backend):
    dag = DAG("reduce")
    dag.add_node(Node("n", mn.chunks, params={"n": 3}))
    dag.add_node(Node("sq", mn.total, map_over=MapSpec("n", reduce=sum)))  # each item: a list; reduce: the sum
    dag.add_node(Node("out", mn.times, inputs={"x": "sq"}, params={"factor": 10}))
    result = run(dag, backend=backend, progress=False).raise_for_status()
    assert result["sq"] == sum(sum(c) for c in mn.chunks(3)) and result["out"] == 10 * result["sq"]


def test_a_map_over_a_mapped_nodes_results_works(backend):
    dag = DAG("nested")
    dag.add_node(Node("c", mn.chunks, params={"n": 2}))
    dag.add_node(Node("sq", mn.square_each, map_over="c"))  # items: lists; results: lists
    dag.add_node(Node("each", mn.total, map_over="sq"))  # a map over those results: one item per list
    dag.add_node(Node("all", mn.total, inputs={"values": "each"}))
    result = run(dag, backend=backend, progress=False).raise_for_status()
    assert result["each"] == [sum(v * v for v in c) for c in mn.chunks(2)]
    assert result["all"] == sum(result["each"]) and len(result.nodes["each"].items) == 2


def test_an_arrow_table_is_split_into_row_batches_or_by_a_column(backend):
    dag = DAG("arrow")
    dag.add_node(Node("t", mn.rows_table, params={"n": 10}))
    dag.add_node(Node("rows", mn.count_rows, map_over=MapSpec("t", batch_rows=4)))
    dag.add_node(Node("cities", mn.city_of, map_over=MapSpec("t", by="city")))
    result = run(dag, backend=backend, progress=False).raise_for_status()
    assert result["rows"] == [4, 4, 2]
    assert result["cities"] == [("oslo", 4), ("rome", 3), ("lima", 3)]


def test_a_value_that_cannot_be_split_fails_the_node_with_a_clear_error(backend, marks):
    dag = DAG("nosplit")
    dag.add_node(Node("number", mn.number))
    dag.add_node(Node("m", mn.times, params={"factor": 2}, map_over="number"))
    dag.add_node(Node("after", mn.join, inputs={"items": "m"}))
    result = run(dag, backend=backend, progress=False)
    rec = result.nodes["m"]
    assert rec.status is NodeStatus.FAILED and rec.items is None
    assert "node 'm' maps over 'number', which returned a int: return a list, a tuple or a pyarrow.Table" \
        in rec.error.message
    assert result.nodes["after"].status is NodeStatus.SKIPPED


def test_max_parallel_bounds_the_items_in_flight(marks):
    dag = DAG("bounded")
    dag.add_node(Node("words", mn.words, params={"n": 8}))
    dag.add_node(Node("b", mn.busy, params={"marks": str(marks), "hold_s": 0.2},
                      map_over=MapSpec("words", max_parallel=2)))
    result = run(dag, backend="local", max_workers=8, progress=False).raise_for_status()
    assert result["b"] == [f"w{i}" for i in range(8)]
    assert mn.max_overlap(marks) == 2


def test_max_parallel_bounds_ray_tasks_too(ray_local, marks):
    dag = DAG("bounded_ray")
    dag.add_node(Node("words", mn.words, params={"n": 6}))
    dag.add_node(Node("b", mn.busy, params={"marks": str(marks), "hold_s": 0.4}, num_cpus=0.01,
                      map_over=MapSpec("words", max_parallel=1)))
    run(dag, progress=False).raise_for_status()
    assert mn.max_overlap(marks) == 1


def test_an_item_times_out_on_its_own(backend):
    dag = DAG("slow")
    dag.add_node(Node("secs", lambda: [0.0, 5.0, 0.0]))
    dag.add_node(Node("s", mn.sleeper, inputs={"word": "secs"}, params={"seconds": 0}, timeout_s=1.0,
                      map_over=MapSpec("secs", allow_partial=True)))
    # each item sleeps its own item: the word is the seconds
    dag["s"].fn = mn.sleeper_of
    result = run(dag, backend=backend, progress=False)
    items = result.nodes["s"].items
    assert [i.status.value for i in items] == ["succeeded", "failed", "succeeded"]
    assert items[1].error.kind == "timeout" and "s[1]" in items[1].error.message


def test_fail_fast_cancels_the_other_items(backend, marks):
    dag = DAG("ff")
    dag.add_node(Node("secs", mn.words, params={"n": 3}))
    dag.add_node(Node("f", mn.fails_on, params={"marks": str(marks), "bad": "w0"}, map_over="secs"))
    dag.add_node(Node("after", mn.join, inputs={"items": "f"}))
    result = run(dag, backend=backend, progress=False, fail_fast=True)
    assert result.nodes["f"].status in (NodeStatus.FAILED, NodeStatus.CANCELLED)
    assert result.nodes["after"].status in (NodeStatus.SKIPPED, NodeStatus.CANCELLED)
    assert not result.succeeded


def test_records_with_items_round_trip_through_json(marks):
    result = run(words_dag(marks, n=2), backend="local", progress=False)
    again = RunResult.from_json(result.to_json())
    assert [i.name for i in again.nodes["shout"].items] == ["shout[0]", "shout[1]"]
    assert again.nodes["shout"].item_counts() == {"succeeded": 2}
    assert json.loads(result.to_json())["nodes"]["words"]["items"] is None


# --- checkpoints, cache and resume ----------------------------------------------------------------------------

def folder_dag(folder, marks, name="files", listing_key: bool = True) -> DAG:
    """list_files reads the outside world: keyed by what the folder holds (``key_fn``), or never cached."""
    dag = DAG(name)
    cache = CachePolicy(key_fn=mn.folder_state) if listing_key else False
    dag.add_node(Node("list_files", mn.list_files, params={"folder": str(folder)}, cache=cache))
    dag.add_node(Node("read", mn.read_file, params={"folder": str(folder), "marks": str(marks)},
                      map_over="list_files"))
    dag.add_node(Node("sizes", mn.total, inputs={"values": "read"}))
    return dag


def test_one_new_file_in_a_folder_runs_exactly_one_item_and_the_collect(backend, tmp_path, marks):
    folder = tmp_path / "landing"
    folder.mkdir()
    for i in range(20):
        (folder / f"f{i:03}.csv").write_text("x" * i)
    store = tmp_path / "store"
    first = run(folder_dag(folder, marks), backend=backend, storage=str(store), progress=False).raise_for_status()
    assert first["sizes"] == sum(range(20)) and len(ran(marks)) == 20
    (folder / "f999.csv").write_text("new!")
    for p in marks.iterdir():
        p.unlink()
    second = run(folder_dag(folder, marks), backend=backend, storage=str(store), progress=False).raise_for_status()
    assert ran(marks) == {"read-f999.csv": 1}
    assert second.nodes["read"].item_counts() == {"cached": 20, "succeeded": 1}
    assert second.nodes["sizes"].status is NodeStatus.SUCCEEDED and second["sizes"] == sum(range(20)) + 4
    third = run(folder_dag(folder, marks), backend=backend, storage=str(store), progress=False).raise_for_status()
    assert ran(marks) == {"read-f999.csv": 1}  # nothing ran again
    assert {r.status for r in third.nodes.values()} == {NodeStatus.CACHED}
    assert sum(i.attempts for i in third.nodes["read"].items) == 0  # no task submitted
    assert third["sizes"] == sum(range(20)) + 4


def test_a_listing_that_is_never_cached_with_nothing_new_runs_only_the_listing(tmp_path, marks):
    """A mapped node's key, for its consumers, is its items' keys (their content), not the listing's: a listing
    with cache=False (a new key each run) runs each time, and with nothing new nothing else runs."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        (folder / f"f{i}").write_text("x" * i)
    store = str(tmp_path / "store")
    run(folder_dag(folder, marks, listing_key=False), backend="local", storage=store, progress=False)
    again = run(folder_dag(folder, marks, listing_key=False), backend="local", storage=store, progress=False)
    assert again.nodes["list_files"].status is NodeStatus.SUCCEEDED
    assert again.nodes["read"].status is NodeStatus.CACHED and again.nodes["sizes"].status is NodeStatus.CACHED
    assert again["sizes"] == 3 and ran(marks) == {f"read-f{i}": 1 for i in range(3)}
    (folder / "f9").write_text("zz")
    third = run(folder_dag(folder, marks, listing_key=False), backend="local", storage=store, progress=False)
    assert third.nodes["sizes"].status is NodeStatus.SUCCEEDED and third["sizes"] == 5
    assert third.nodes["read"].item_counts() == {"cached": 3, "succeeded": 1}


def test_changing_the_mapped_function_reruns_every_item(tmp_path, marks):
    store = str(tmp_path / "store")
    run(words_dag(marks, n=3), backend="local", storage=store, progress=False).raise_for_status()
    again = run(words_dag(marks, n=3, suffix="?"), backend="local", storage=store, progress=False)
    assert again["joined"] == "W0?,W1?,W2?" and again.nodes["shout"].item_counts() == {"succeeded": 3}
    assert ran(marks) == {f"shout-w{i}": 2 for i in range(3)}
    dag = words_dag(marks, n=3, suffix="?")
    dag["shout"].version = "2"
    assert run(dag, backend="local", storage=store, progress=False).nodes["shout"].item_counts() == {"succeeded": 3}


def test_resume_after_a_failure_reruns_only_the_failed_items(backend, tmp_path, marks):
    store = str(tmp_path / "store")
    switch = tmp_path / "fixed"
    failed = run(failing_dag(marks, switch=str(switch)), backend=backend, storage=store, progress=False)
    assert failed.nodes["f"].status is NodeStatus.FAILED
    for p in marks.iterdir():
        p.unlink()
    switch.write_text("yes")
    resumed = run(failing_dag(marks, switch=str(switch)), backend=backend, storage=store, resume="latest",
                  progress=False).raise_for_status()
    assert ran(marks) == {"try-w2": 1}
    assert item_statuses(resumed, "f") == ["resumed", "resumed", "succeeded", "resumed"]
    assert resumed["after"] == "W0,W1,W2,W3"


def test_items_are_checkpointed_by_their_worker_under_their_own_keys(backend, tmp_path, marks):
    store = tmp_path / "store"
    result = run(words_dag(marks, n=3), backend=backend, storage=str(store), progress=False).raise_for_status()
    keys = [i.cache_key for i in result.nodes["shout"].items]
    assert len(set(keys)) == 3 and result.nodes["shout"].cache_key not in keys
    for key in keys:
        assert (store / layout.object_key("words", key)).exists()
    assert not (store / layout.object_key("words", result.nodes["shout"].cache_key)).exists()


def test_a_corrupt_stored_item_is_computed_again_when_a_consumer_reads_it(backend, tmp_path, marks):
    store = tmp_path / "store"
    first = run(words_dag(marks, n=3), backend=backend, storage=str(store), progress=False).raise_for_status()
    victim = store / layout.object_key("words", first.nodes["shout"].items[1].cache_key)
    victim.write_bytes(victim.read_bytes()[:-3] + b"xyz")
    dag = words_dag(marks, n=3)
    dag["joined"].version = "2"  # the consumer runs and reads the stored items
    second = run(dag, backend=backend, storage=str(store), progress=False).raise_for_status()
    assert second["joined"] == "W0!,W1!,W2!"
    assert item_statuses(second, "shout")[1] == "succeeded" and second.stats["corrupt_objects"] >= 1


def test_item_keys_do_not_depend_on_the_key_of_the_node_mapped_over(tmp_path, marks):
    """list_files has cache=False (its key changes every run), yet unchanged items keep their keys."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a").write_text("aa")
    store = str(tmp_path / "store")
    one = run(folder_dag(folder, marks, listing_key=False), backend="local", storage=store, progress=False)
    two = run(folder_dag(folder, marks, listing_key=False), backend="local", storage=store, progress=False)
    assert one.nodes["list_files"].cache_key != two.nodes["list_files"].cache_key
    assert one.nodes["read"].items[0].cache_key == two.nodes["read"].items[0].cache_key


def test_cache_false_on_the_mapped_node_reruns_items_each_run_but_resume_keeps_them(tmp_path, marks):
    store = str(tmp_path / "store")
    dag = words_dag(marks, n=2)
    dag["shout"].cache = CachePolicy(enabled=False)
    run(dag, backend="local", storage=store, progress=False).raise_for_status()
    again = run(dag, backend="local", storage=store, progress=False).raise_for_status()
    assert again.nodes["shout"].item_counts() == {"succeeded": 2}


def test_a_mapped_node_shows_in_metrics_under_its_own_name_with_its_items(backend, tmp_path, marks):
    result = run(failing_dag(marks, allow_partial=True), backend=backend, storage=str(tmp_path / "s"),
                 progress=False)
    assert "f[" not in json.dumps(result.metrics.snapshot())  # no item label: items count under their node
    prom = result.metrics.export_prometheus()
    assert 'odibi_ray_map_items_total{' in prom
    assert 'status="failed"' in prom and 'name="f"' in prom


def test_items_on_a_remote_store_are_looked_up_in_one_batch_and_written_behind(ray_local, azurite_storage, tmp_path,
                                                                               marks):
    """Azurite (Blob protocol): items are written behind by their workers, confirmed by the driver, and a re-run
    after one new file reuses the others."""
    folder = tmp_path / "landing"
    folder.mkdir()
    for i in range(30):
        (folder / f"f{i:03}").write_text("y" * i)
    first = run(folder_dag(folder, marks, name="remote_files"), storage=azurite_storage, progress=False)
    first.raise_for_status()
    assert all(i.attempt_history[-1].confirmed for i in first.nodes["read"].items)
    (folder / "f999").write_text("new")
    for p in marks.iterdir():
        p.unlink()
    second = run(folder_dag(folder, marks, name="remote_files"), storage=azurite_storage, progress=False)
    assert second.raise_for_status()["sizes"] == sum(range(30)) + 3
    assert ran(marks) == {"read-f999": 1}
    assert second.nodes["read"].item_counts() == {"cached": 30, "succeeded": 1}


def test_a_corrupt_stored_item_read_by_the_result_is_computed_again(backend, tmp_path, marks):
    store = tmp_path / "store"
    run(words_dag(marks, n=3), backend=backend, storage=str(store), progress=False).raise_for_status()
    cached = run(words_dag(marks, n=3), backend=backend, storage=str(store), progress=False).raise_for_status()
    assert cached.nodes["shout"].status is NodeStatus.CACHED
    victim = store / layout.object_key("words", cached.nodes["shout"].items[2].cache_key)
    victim.write_bytes(b"garbage")
    assert cached["shout"] == ["W0!", "W1!", "W2!"]
    assert item_statuses(cached, "shout") == ["cached", "cached", "succeeded"]
    assert cached.nodes["shout"].status is NodeStatus.SUCCEEDED and ran(marks)["shout-w2"] == 2


def test_nodes_downstream_of_a_map_are_looked_up_once_its_items_are_known(backend, tmp_path, marks):
    """Their keys cover the mapped node's items' keys: found then, they are cached; refresh= still reruns them."""
    store = str(tmp_path / "store")

    def dag() -> DAG:
        d = words_dag(marks, n=3, name="deferred")
        d["words"].cache = False  # a new key every run: the map's consumers must not depend on it
        d.add_node(Node("final", mn.times, inputs={"x": "number"}, params={"factor": 2}))
        d.add_node(Node("number", mn.number))
        d.add_node(Node("both", mn.times, inputs={"x": "joined"}, params={"factor": 2}))
        return d

    first = run(dag(), backend=backend, storage=store, progress=False).raise_for_status()
    second = run(dag(), backend=backend, storage=store, progress=False).raise_for_status()
    statuses = {n: r.status.value for n, r in second.nodes.items()}
    assert statuses == {"words": "succeeded", "shout": "cached", "joined": "cached", "both": "cached",
                        "number": "cached", "final": "cached"}
    assert second.nodes["joined"].cache_key == first.nodes["joined"].cache_key
    assert second["both"] == "W0!,W1!,W2!" * 2 and ran(marks) == {f"shout-w{i}": 1 for i in range(3)}
    third = run(dag(), backend=backend, storage=store, progress=False, refresh="joined+").raise_for_status()
    assert third.nodes["joined"].status is NodeStatus.SUCCEEDED and third.nodes["both"].status is NodeStatus.SUCCEEDED
    assert third.nodes["shout"].status is NodeStatus.CACHED


def test_purging_a_mapped_node_removes_its_items(tmp_path, marks):
    from odibi_ray.checkpoint.housekeeping import purge
    from odibi_ray.storage.local import LocalStorage

    store = tmp_path / "store"
    result = run(words_dag(marks, n=3), backend="local", storage=str(store), progress=False).raise_for_status()
    report = purge(LocalStorage(store), node="shout")
    expected = {layout.object_key("words", i.cache_key) for i in result.nodes["shout"].items}
    assert set(report.objects) == expected


def test_a_failed_mapped_node_says_which_item_failed_after_how_many_attempts(marks):
    result = run(failing_dag(marks), backend="local", progress=False)
    exc = result.nodes["f"].failure()
    assert exc.node == "f" and exc.attempts == 1 and str(exc).startswith("node 'f[2]' failed after 1 attempt(s)")
    rec = result.nodes["f"]
    assert rec.started_at == min(i.started_at for i in rec.items) and rec.duration_s is not None
