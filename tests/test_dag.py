"""DAG definition and validation: every fault is caught before anything runs, with its own type."""

import threading

import pytest

import odibi_ray
from odibi_ray import (DAG, CycleError, DAGValidationError, DuplicateNodeError, InvalidNodeError,
                       InvalidPolicyError, Node, OdibiError, SignatureMismatchError, UnknownInputError,
                       UnpicklableNodeError)


def f0():
    return 1


def f1(x):
    return x


def f2(a, b):
    return a + b


def diamond() -> DAG:
    dag = DAG("diamond")
    dag.add_node(Node("top", f0))
    dag.add_node(Node("left", f1, inputs={"x": "top"}))
    dag.add_node(Node("right", f1, inputs={"x": "top"}))
    dag.add_node(Node("bottom", f2, inputs={"a": "left", "b": "right"}))
    return dag


def test_levels_of_a_diamond():
    assert diamond().levels() == [["top"], ["left", "right"], ["bottom"]]


def test_level_is_one_plus_max_input_level():
    dag = DAG()
    dag.add_node(Node("a", f0))
    dag.add_node(Node("b", f1, inputs={"x": "a"}))
    dag.add_node(Node("c", f1, inputs={"x": "b"}))
    dag.add_node(Node("d", f2, inputs={"a": "a", "b": "c"}))  # a (level 0) and c (level 2)
    assert dag.levels() == [["a"], ["b"], ["c"], ["d"]]
    assert dag.topological_order() == ["a", "b", "c", "d"]


def test_decorator_and_list_inputs_build_the_same_dag():
    dag = DAG("deco")

    @dag.node()
    def extract():
        return [1, 2]

    @dag.node(inputs=["extract"], num_cpus=0.5)
    def clean(extract):
        return extract

    @dag.node
    def lonely():
        return 0

    assert clean([3]) == [3]  # the function is returned unchanged
    assert dag["clean"].inputs == {"extract": "extract"}
    assert dag["clean"].num_cpus == 0.5
    assert set(dag.nodes) == {"extract", "clean", "lonely"}
    assert dag.levels() == [["extract", "lonely"], ["clean"]]


def test_cycle_error_shows_the_path():
    dag = DAG("cyc")
    dag.add_node(Node("src", f0))
    dag.add_node(Node("a", f2, inputs={"a": "src", "b": "c"}))
    dag.add_node(Node("b", f1, inputs={"x": "a"}))
    dag.add_node(Node("c", f1, inputs={"x": "b"}))
    with pytest.raises(CycleError) as info:
        dag.validate()
    cyc = info.value.cycle
    assert cyc[0] == cyc[-1] and set(cyc) == {"a", "b", "c"} and len(cyc) == 4
    # the path follows the data: each node feeds the next
    for up, down in zip(cyc, cyc[1:]):
        assert up in dag[down].upstream
    assert " -> ".join(cyc) in str(info.value)
    assert set(info.value.nodes) == {"a", "b", "c"}


def test_self_loop_is_a_cycle():
    dag = DAG()
    dag.add_node(Node("me", f1, inputs={"x": "me"}))
    with pytest.raises(CycleError, match="me -> me"):
        dag.levels()


def test_unknown_input_names_node_param_and_missing():
    dag = DAG()
    dag.add_node(Node("a", f1, inputs={"x": "nope"}))
    with pytest.raises(UnknownInputError) as info:
        dag.validate()
    assert (info.value.node, info.value.param, info.value.missing) == ("a", "x", "nope")
    assert "'a'" in str(info.value) and "'nope'" in str(info.value)


def test_duplicate_name_raises_at_once():
    dag = DAG()
    dag.add_node(Node("a", f0))
    with pytest.raises(DuplicateNodeError, match="'a'"):
        dag.add_node(Node("a", f0))


@pytest.mark.parametrize("node, needle", [
    (lambda: Node("n", f2, inputs={"a": "src"}), r"\['b'\] receive no input"),
    (lambda: Node("n", f1, inputs={"x": "src"}, params={"y": 1}), r"\['y'\] match no parameter"),
    (lambda: Node("n", f0, inputs={"x": "src"}), r"\['x'\] match no parameter"),
])
def test_signature_mismatch(node, needle):
    dag = DAG()
    dag.add_node(Node("src", f0))
    dag.add_node(node())
    with pytest.raises(SignatureMismatchError, match=needle) as info:
        dag.validate()
    assert info.value.nodes == ("n",)


def test_signature_accepts_defaults_and_kwargs():
    def with_default(x, scale=2):
        return x * scale

    def with_kwargs(**kw):
        return kw

    dag = DAG()
    dag.add_node(Node("src", f0))
    dag.add_node(Node("a", with_default, inputs={"x": "src"}))
    dag.add_node(Node("b", with_kwargs, inputs={"anything": "src"}, params={"more": 1}))
    dag.validate()


def test_same_name_as_input_and_param_is_a_mismatch():
    with pytest.raises(SignatureMismatchError):
        Node("n", f1, inputs={"x": "a"}, params={"x": 1})


@pytest.mark.parametrize("kwargs, needle", [
    (dict(timeout_s=0), "timeout_s"),
    (dict(timeout_s=-3), "timeout_s"),
    (dict(num_cpus=-1), "num_cpus"),
    (dict(memory=0), "memory"),
    (dict(resources={"CPU": 2}), "num_cpus / num_gpus"),
    (dict(resources={"special": -1}), "special"),
    (dict(retry="3 times"), "RetryPolicy"),
])
def test_bad_node_values_raise_naming_the_node(kwargs, needle):
    with pytest.raises(InvalidPolicyError, match=needle) as info:
        Node("badnode", f0, **kwargs)
    assert info.value.nodes == ("badnode",) and "badnode" in str(info.value)


def test_bad_names_and_callables():
    with pytest.raises(InvalidNodeError):
        Node("has space", f0)
    with pytest.raises(InvalidNodeError):
        Node("x", "not callable")


def test_one_hierarchy():
    for exc in (CycleError, UnknownInputError, DuplicateNodeError, SignatureMismatchError, InvalidPolicyError,
                UnpicklableNodeError, InvalidNodeError):
        assert issubclass(exc, DAGValidationError) and issubclass(exc, OdibiError)


def test_unpicklable_function_is_rejected_before_anything_runs(ray_local, tmp_path):
    lock = threading.Lock()  # a lock cannot be pickled
    marker = tmp_path / "ran"

    def uses_lock():
        with lock:
            return 1

    dag = DAG("pickle")
    dag.add_node(Node("fine", lambda: marker.write_text("x")))
    dag.add_node(Node("holds_lock", uses_lock))
    with pytest.raises(UnpicklableNodeError, match="holds_lock") as info:
        odibi_ray.run(dag, backend="ray", progress=False)
    assert info.value.nodes == ("holds_lock",)
    assert not marker.exists()


def test_invalid_dag_runs_nothing(backend, tmp_path):
    marker = tmp_path / "ran"

    def touch():
        marker.write_text("x")

    dag = DAG()
    dag.add_node(Node("ok", touch))
    dag.add_node(Node("broken", f1, inputs={"x": "missing"}))
    with pytest.raises(UnknownInputError):
        odibi_ray.run(dag, backend=backend, progress=False)
    assert not marker.exists()


def test_ancestors_and_descendants():
    dag = diamond()
    assert dag.descendants(["left"]) == {"bottom"}
    assert dag.ancestors(["bottom"]) == {"top", "left", "right"}
    assert dag.descendants(["top"]) == {"left", "right", "bottom"}


def test_values_changed_after_construction_are_checked_again():
    dag = DAG()
    dag.add_node(Node("n", f0))
    dag["n"].timeout_s = 0
    with pytest.raises(InvalidPolicyError, match="'n'.*timeout_s"):
        dag.validate()
