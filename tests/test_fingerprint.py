"""The code fingerprint of a node (checkpoint/keys.py) is taken from the syntax tree: comments, docstrings and
formatting change nothing; names, constants, structure, the helpers a function calls and the module constants it
reads still do. Each version of a module is written to a file and imported, as a user's edited module would be."""

from __future__ import annotations

import importlib.util
import itertools
import textwrap

import pytest

from odibi_ray.checkpoint.keys import code_fingerprint

_count = itertools.count()

BASE = '''
RATE = 2

def helper(x):
    return x + 1

def step(x):
    """Double the helper's value."""
    y = helper(x)  # the helper first
    return y * RATE
'''


def fingerprint(tmp_path, source: str, name: str = "step") -> str:
    path = tmp_path / f"fp_mod_{next(_count)}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return code_fingerprint(getattr(module, name))


@pytest.mark.parametrize("edit", [
    lambda s: s.replace("# the helper first", "# reworded: call the helper before anything"),
    lambda s: s.replace('"""Double the helper\'s value."""', '"""A new docstring\n\n    over two paragraphs."""'),
    lambda s: s.replace('    """Double the helper\'s value."""\n', ""),
    lambda s: s.replace("return y * RATE", "return (y\n            * RATE)"),
    lambda s: s.replace("y = helper(x)  # the helper first", "y = helper( x )"),
    lambda s: s.replace("def helper(x):\n", "def helper(x):\n    # a comment in the helper\n"),
])
def test_comments_docstrings_and_formatting_change_nothing(tmp_path, edit):
    assert fingerprint(tmp_path, edit(BASE)) == fingerprint(tmp_path, BASE)


@pytest.mark.parametrize("edit", [
    lambda s: s.replace("return y * RATE", "return y * RATE + 0"),
    lambda s: s.replace("RATE = 2", "RATE = 3"),  # a module constant it reads
    lambda s: s.replace("return x + 1", "return x + 2"),  # a helper it calls
    lambda s: s.replace("y = helper(x)", "z = helper(x)").replace("y * RATE", "z * RATE"),  # a renamed local
    lambda s: s.replace('"""Double the helper\'s value."""', '"""Double."""\n    x = x'),  # code after the doc
])
def test_real_changes_still_change_the_fingerprint(tmp_path, edit):
    assert fingerprint(tmp_path, edit(BASE)) != fingerprint(tmp_path, BASE)


def test_a_string_expression_that_is_not_the_docstring_counts(tmp_path):
    changed = BASE.replace("    return y * RATE", '    "a value, not a docstring"\n    return y * RATE')
    assert fingerprint(tmp_path, changed) != fingerprint(tmp_path, BASE)
