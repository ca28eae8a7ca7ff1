"""Cache key values pinned as computed before the two canonical forms became one function: stores written
before must still hit (native keys) and seed cache entries must still be found (``CloudCacheManager`` keys)."""

import hashlib

from odibi_ray import CachePolicy, DAG, Node
from odibi_ray.compat.cache_manager import CloudCacheManager
from odibi_ray.checkpoint.keys import cache_keys, canonical


def src():
    return 1


def double(x, k=2, opts=None, tags=None):
    return x * k


#: A value with every tagged case of the native form: a non-string dict key (a tuple), a set holding a tuple
#: (its member's JSON keeps json.dumps' default separators), bytes, a non-finite float, nested tuples.
NATIVE_VALUE = {"s": {"x", (1, 2)}, "t": (1, "a"), (1, "k"): [1.5, None, True], "f": float("inf"), "b": b"raw",
                "n": {"k": [2, (3,)]}}


def test_native_canonical_form_is_pinned():
    text = canonical(NATIVE_VALUE)
    assert text == (
        '{"dict_items":[["\\"b\\"",{"bytes":"d7439bee24773bcbfa2d0a97947ee36227b10d1022b1a55847e928965bb6bfde"}],'
        '["\\"f\\"",{"float":"inf"}],["\\"n\\"",{"dict":{"k":[2,{"tuple":[3]}]}}],'
        '["\\"s\\"",{"set":["\\"x\\"","{\\"tuple\\": [1, 2]}"]}],["\\"t\\"",{"tuple":[1,"a"]}],'
        '["{\\"tuple\\": [1, \\"k\\"]}",[1.5,null,true]]]}')
    assert hashlib.sha256(text.encode()).hexdigest() == \
        "2370ce9934481ee60d0cc815c87be99ed3222737dc8494ab2bb22c11676ee14f"
    assert (canonical({"a": 1, "b": (1, 2), "c": {"z"}})
            == '{"dict":{"a":1,"b":{"tuple":[1,2]},"c":{"set":["\\"z\\""]}}}')


def test_native_cache_keys_are_pinned():
    dag = DAG("pinned")
    dag.add_node(Node("src", src, version="v1"))
    dag.add_node(Node("double", double, inputs={"x": "src"}, version="v2",
                      params={"k": 3, "opts": (1, "a"), "tags": {"b", "a"}}))
    dag.add_node(Node("off", double, inputs={"x": "double"}, version="v3", cache=CachePolicy(enabled=False)))
    # A node without inputs keeps the key it had before data versions (pinned then: stores written before hit);
    # a node with inputs is keyed on their outputs' data versions (issue 20: those keys changed once, 2026-12).
    assert cache_keys(dag, dag.topological_order(), {}, run_id="r1") == {
        "src": "5465b7e4e36fb90befdbc51f200e454577ed0e6bf554ca5b96f5d5669f4028ab",
    }
    versions = {"src": "sha256:" + "a" * 64, "double": "sha256:" + "b" * 64}
    assert cache_keys(dag, dag.topological_order(), versions, run_id="r1") == {
        "src": "5465b7e4e36fb90befdbc51f200e454577ed0e6bf554ca5b96f5d5669f4028ab",
        "double": "9b8a8943ab9b483166bd89d180800a96791aa1c79fb95a82af02ebea195c5a16",
        "off": "bdb00c11de3244a9537d776f4e08dd08823acb400569b5f63981a5e3f589974e",  # salted with the run id
    }


def test_seed_cache_keys_are_pinned():
    key = CloudCacheManager.compute_key("ns", {"t": (1, 2), "s": {"b", (1, 2)}, 3: b"raw", "f": float("nan")},
                                        version=2)
    assert key == "bb00e37a82a307a1f0389c79b75f5c38f3c7df16bf8af19a29d80629149658d8"


def test_one_canonicaliser_two_tag_sets():
    """Native and seed keys hash the one canonical form, each with the tag set its stored keys were made with."""
    from odibi_ray.checkpoint.canonical import Form, canonical_form, canonical_json

    value = {"t": (1, 2), "s": {"b", (1, 2)}, 3: b"raw", "f": float("nan")}
    seed = canonical_json(canonical_form(value, Form.SEED))
    assert seed == ('{"=f":{"#float":"nan"},"=s":{"#set":["\\"b\\"","[1,2]"]},"=t":[1,2],'
                    '"~3":{"#codec":"bytes",'
                    '"#sha256":"d7439bee24773bcbfa2d0a97947ee36227b10d1022b1a55847e928965bb6bfde"}}')
    assert CloudCacheManager.compute_key("ns", value, version=2) == \
        hashlib.sha256(f'["odibi-cache-key/1","ns",{seed},2]'.encode()).hexdigest()
    assert canonical(NATIVE_VALUE) == canonical_json(canonical_form(NATIVE_VALUE))  # NATIVE is the default
    assert canonical_form((1, 2), Form.SEED) == [1, 2] and canonical_form((1, 2)) == {"tuple": [1, 2]}
