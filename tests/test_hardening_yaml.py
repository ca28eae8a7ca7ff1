"""Hardening of what reaches the engine from a pipeline file, ``--set`` and the command line (issue 14, items 4
and 6): duplicate YAML keys, alias bombs, nesting, huge values quoted in errors, secrets never quoted, numeric
bounds, the current directory on sys.path only when a pipeline is imported, ``--debug`` keeping exit code 2."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from odibi_ray import CachePolicy, RetryPolicy
from odibi_ray.cli import app
from odibi_ray.errors import InvalidPolicyError
from odibi_ray.definition.node import Node
from odibi_ray.definition.spec import SpecError, apply_overrides, load_pipeline, parse_memory, parse_spec

ROOT = Path(__file__).resolve().parent.parent
SALES = str(ROOT / "tests" / "fixtures" / "sales.yaml")
LEN = "builtins:len"


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def laughs(levels: int, indent: str = "  ") -> str:
    """A "billion laughs" block: each level a list of 9 aliases of the level below (9**levels strings)."""
    lines = [f'{indent}l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{indent}l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines)


def spec_error(fn, *args, **kwargs) -> SpecError:
    with pytest.raises(SpecError) as info:
        fn(*args, **kwargs)
    return info.value


# --- duplicate keys ------------------------------------------------------------------------------------

def test_a_duplicated_node_is_an_error_naming_key_and_line(tmp_path):
    """Today the second `a` silently replaced the first, and the pipeline failed as `CycleError: a -> a`."""
    path = write(tmp_path, f"name: p\nnodes:\n  a: {{fn: '{LEN}'}}\n  b: {{fn: '{LEN}', inputs: [a]}}\n"
                           f"  a: {{fn: '{LEN}', inputs: [b]}}\n")
    err = spec_error(load_pipeline, path)
    assert "duplicate key 'a'" in str(err) and "line 5, column 3" in str(err) and "first at line 3" in str(err)
    assert "Cycle" not in str(err) and str(err).startswith(f"{path}: ")


def test_duplicate_keys_anywhere_are_errors(tmp_path):
    path = write(tmp_path, f"name: p\nnodes:\n  a:\n    fn: '{LEN}'\n    params: {{rows: 1, rows: 2}}\n")
    assert "duplicate key 'rows'" in str(spec_error(load_pipeline, path))
    path = write(tmp_path, f"name: p\nname: q\nnodes: {{a: {{fn: '{LEN}'}}}}\n")
    assert "line 2, column 1: duplicate key 'name'" in str(spec_error(load_pipeline, path))
    # in a --set value too
    err = spec_error(apply_overrides, {"nodes": {}}, ["nodes.a.params={x: 1, x: 2}"])
    assert "duplicate key 'x'" in str(err)


def test_merge_keys_may_still_be_overridden(tmp_path):
    """``<<: *base`` then an explicit key: YAML's merge, not a duplicate."""
    path = write(tmp_path, f"name: p\nnodes:\n  a: &base {{fn: '{LEN}', params: {{x: 1}}, version: '1'}}\n"
                           "  b:\n    <<: *base\n    params: {x: 2}\n")
    spec = load_pipeline(path)
    assert spec.nodes["b"].params == {"x": 2} and spec.nodes["b"].version == "1"


# --- aliases and nesting ----------------------------------------------------------------------------------

def test_billion_laughs_in_params_fails_fast(tmp_path):
    """Today it was accepted (the params shared one list 9**9 times) and canonicalised for the cache key."""
    path = write(tmp_path, f"name: p\nnodes:\n  a:\n    fn: '{LEN}'\n    params:\n{laughs(9, ' ' * 6)}\n")
    start = time.monotonic()
    err = spec_error(load_pipeline, path)
    assert time.monotonic() - start < 1.0
    assert "aliases (*name) expand to more than" in str(err) and len(str(err)) < 400
    assert "line " in str(err)


def test_billion_laughs_in_a_wrong_field_is_not_repr_expanded(tmp_path):
    """Today the error message repr()ed the expanded value (34.7 MB at 7 levels)."""
    path = write(tmp_path, f"name: p\nnodes:\n  a:\n    fn: '{LEN}'\n    description:\n{laughs(6, ' ' * 6)}\n")
    start = time.monotonic()
    err = spec_error(load_pipeline, path)
    assert time.monotonic() - start < 1.0 and len(str(err)) < 400


def test_billion_laughs_in_a_set_value_fails_fast():
    bomb = "[" + ", ".join(["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                            + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]) + "]"
    start = time.monotonic()
    err = spec_error(apply_overrides, {"nodes": {}}, [f"nodes.a.params.x={bomb}"])
    assert time.monotonic() - start < 1.0 and "expand to more than" in str(err) and "lol" not in str(err)


def test_a_few_aliases_are_fine(tmp_path):
    path = write(tmp_path, f"name: p\nnodes:\n  a: {{fn: '{LEN}', params: {{rows: &r [1, 2, 3]}}}}\n"
                           f"  b: {{fn: '{LEN}', params: {{rows: *r}}}}\n")
    assert load_pipeline(path).nodes["b"].params == {"rows": [1, 2, 3]}


def test_recursive_alias_is_an_error(tmp_path):
    path = write(tmp_path, f"name: p\nnodes:\n  a: {{fn: '{LEN}', params: &p {{me: *p}}}}\n")
    assert "recursive aliases are not allowed" in str(spec_error(load_pipeline, path))


def test_deep_nesting_fails_fast_with_a_spec_error(tmp_path):
    """Today: a RecursionError (not a SpecError), after the scanner's quadratic look-ahead."""
    path = write(tmp_path, f"name: p\nnodes:\n  a: {{fn: '{LEN}', params: {{x: {'[' * 3000}{']' * 3000}}}}}\n")
    start = time.monotonic()
    err = spec_error(load_pipeline, path)
    assert time.monotonic() - start < 1.0 and "nested more than" in str(err)


@pytest.mark.parametrize("value, fragment", [
    ("9" * 5000, "an integer of 5000 characters is too long"),  # today: Python's int-digits ValueError
    ("2024-13-45", "cannot read this value (ValueError: month must be in 1..12)"),  # today: a bare ValueError
])
def test_unreadable_scalars_are_spec_errors_with_a_line(tmp_path, value, fragment):
    path = write(tmp_path, f"name: p\nnodes:\n  a: {{fn: '{LEN}', params: {{x: {value}}}}}\n")
    err = spec_error(load_pipeline, path)
    assert fragment in str(err) and "line 3" in str(err) and len(str(err)) < 400


# --- what error messages quote -------------------------------------------------------------------------------

def test_errors_quote_a_short_prefix_of_a_value():
    huge = "x" * 100_000
    err = spec_error(load_pipeline, SALES, [f"nodes.clean.version=[{huge}]"])
    assert "nodes.clean.version" in str(err) and len(str(err)) < 400 and "..." in str(err)
    err = spec_error(load_pipeline, SALES, [f"nodes.clean.cache=[{', '.join(['y'] * 100_000)}]"])
    assert "nodes.clean.cache" in str(err) and len(str(err)) < 400
    err = spec_error(load_pipeline, SALES, [f"nodes.clean.resources.memory={huge}"])
    assert "nodes.clean.resources.memory" in str(err) and len(str(err)) < 400
    err = spec_error(load_pipeline, SALES, [f"nodes.clean.inputs.raw={huge}"])
    assert "not a node of the pipeline" in str(err) and len(str(err)) < 600


@pytest.mark.parametrize("option", ["account_key", "client_secret", "sas_token", "connection_string",
                                    "secret_key", "session_token", "access_key", "my_api_key"])
@pytest.mark.parametrize("value", ["[supersecret, other]", "{k: supersecret}", "{k: [supersecret"])
def test_secret_option_values_are_never_quoted(option, value):
    """Today a non-scalar account_key given with --set was echoed four times (once per union member)."""
    err = spec_error(load_pipeline, SALES, [f"storage_options.{option}={value}"])
    assert "supersecret" not in str(err) and f"storage_options.{option}" in str(err)
    assert str(err).count(f"storage_options.{option}") == 1


def test_every_storage_adapters_secret_option_counts_as_secret():
    from odibi_ray.definition.spec import _is_secret
    from odibi_ray.storage import adls, arrowfs

    for name in (*adls._SECRET_OPTIONS, *arrowfs._SECRET_OPTIONS, "signing_key"):
        assert _is_secret(["storage_options", name]), name
    assert not _is_secret(["nodes", "a", "cache", "key_fn"])


def test_a_non_scalar_storage_option_is_one_message():
    err = spec_error(load_pipeline, SALES, ["storage_options.endpoint=[a, b]"])
    assert str(err).count("storage_options.endpoint") == 1
    assert "expected a string, an integer, a number or a boolean, got ['a', 'b']" in str(err)


def test_cli_never_echoes_a_secret_given_with_set(tmp_path):
    r = CliRunner().invoke(app, ["run", SALES, "--backend", "local", "--storage", str(tmp_path / "s"),
                                 "--set", "storage_options.account_key=[supersecret]"])
    assert r.exit_code == 2 and "supersecret" not in r.stderr + r.stdout
    assert r.stderr.count("\n") == 1 and "storage_options.account_key" in r.stderr


# --- numeric bounds ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, field", [
    ("nodes.clean.retry.max_attempts=99999999999999999999999", "nodes.clean.retry.max_attempts"),
    ("defaults.retry.max_attempts=10001", "defaults.retry.max_attempts"),
    ("nodes.clean.retry.delay_s=.inf", "nodes.clean.retry.delay_s"),
    ("nodes.clean.retry.max_delay_s=1.0e+9", "nodes.clean.retry.max_delay_s"),
    ("nodes.clean.resources.memory=999999999999TiB", "nodes.clean.resources.memory"),
    ("nodes.clean.resources.memory=99999999999999999999", "nodes.clean.resources.memory"),
    ("nodes.clean.resources.num_cpus=1.0e+300", "nodes.clean.resources.num_cpus"),
    ("nodes.clean.resources.num_gpus=.inf", "nodes.clean.resources.num_gpus"),
    ("nodes.clean.resources.custom.bigmem=.inf", "nodes.clean.resources.custom"),
    ("nodes.clean.resources.custom.bigmem=1.0e+300", "nodes.clean.resources.custom"),
    ("nodes.total.timeout_s=.inf", "nodes.total.timeout_s"),
    ("defaults.timeout_s=1.0e+300", "defaults.timeout_s"),
    ("nodes.extract.cache.ttl_s=1.0e+300", "nodes.extract.cache.ttl_s"),
])
def test_yaml_numbers_have_bounds(override, field):
    err = spec_error(load_pipeline, SALES, [override])
    assert f": {field}: " in str(err) and len(str(err)) < 400


@pytest.mark.parametrize("make, fragment", [
    (lambda: RetryPolicy(max_attempts=10**23), "max_attempts must be an integer from 1 to 10000"),
    (lambda: RetryPolicy(max_attempts=10**5000), "max_attempts must be an integer from 1 to 10000, got an integer"),
    (lambda: RetryPolicy(delay_s=10.0**9), "delay_s must be a finite number of seconds from 0 to 86400"),
    (lambda: RetryPolicy(max_delay_s=10**400), "max_delay_s must be a finite number"),
    (lambda: RetryPolicy(backoff=1e300), "backoff must be a finite number from 1 to 1000"),
    (lambda: CachePolicy(ttl_s=1e300), "ttl_s must be a number of seconds > 0 and <= "),
    (lambda: Node("n", len, num_cpus=1e300), "num_cpus must be a finite number from 0 to 1e+06"),
    (lambda: Node("n", len, num_gpus=1e7), "num_gpus must be a finite number from 0 to 1e+06"),
    (lambda: Node("n", len, memory=2**80), "memory must be a number of bytes > 0 and <= "),
    (lambda: Node("n", len, timeout_s=1e300), "timeout_s must be a finite number of seconds > 0 and <= "),
    (lambda: Node("n", len, resources={"bigmem": 1e300}), "resource 'bigmem' must be a finite number from 0"),
])
def test_python_api_numbers_have_bounds(make, fragment):
    with pytest.raises(InvalidPolicyError) as info:
        make()
    assert fragment in str(info.value) and len(str(info.value)) < 400


def test_nan_and_inf_are_refused_everywhere():
    for bad in (math.nan, math.inf, -math.inf):
        for make in (lambda bad=bad: RetryPolicy(delay_s=bad), lambda bad=bad: RetryPolicy(backoff=bad),
                     lambda bad=bad: CachePolicy(ttl_s=bad), lambda bad=bad: Node("n", len, num_cpus=bad),
                     lambda bad=bad: Node("n", len, timeout_s=bad),
                     lambda bad=bad: Node("n", len, resources={"x": bad})):
            with pytest.raises(InvalidPolicyError):
                make()
    for text in ("nodes.clean.resources.num_cpus=.nan", "nodes.clean.retry.jitter=.nan",
                 "defaults.timeout_s=.nan", "nodes.clean.retry.backoff=.inf"):
        spec_error(load_pipeline, SALES, [text])


def test_bounds_leave_ordinary_values_alone():
    spec = load_pipeline(SALES, ["nodes.clean.retry.max_attempts=10000", "nodes.clean.resources.memory=1TiB",
                                 "nodes.clean.resources.num_cpus=64", "nodes.total.timeout_s=86400",
                                 "nodes.extract.cache.ttl_s=31536000"])
    dag = spec.to_dag()
    assert dag.nodes["clean"].retry.max_attempts == 10_000 and dag.nodes["clean"].memory == 2**40
    assert parse_memory("1024TiB") == 2**50
    with pytest.raises(ValueError, match="at most"):
        parse_memory("1025TiB")
    parse_spec({"name": "p", "nodes": {"a": {"fn": LEN, "resources": {"num_cpus": 1e6}}}})


# --- the command line ----------------------------------------------------------------------------------------

def test_debug_keeps_exit_code_2_and_prints_the_traceback():
    """Today --debug re-raised: exit code 1 and Python's own traceback instead of the user-error line."""
    r = CliRunner().invoke(app, ["--debug", "run", SALES, "--set", "nodes.clean.bogus=1"])
    assert r.exit_code == 2, (r.exit_code, r.exception)
    assert "Traceback (most recent call last)" in r.stderr and "SpecError" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("error: ") and "nodes.clean.bogus" in r.stderr


@pytest.fixture
def clean_sys_path(monkeypatch, tmp_path):
    """A scratch current directory; sys.path and sys.modules put back afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    monkeypatch.chdir(tmp_path)
    cwd = os.getcwd()
    if cwd in sys.path:
        sys.path.remove(cwd)
    return cwd


@pytest.mark.parametrize("command", [["runs"], ["status"], ["cache", "ls"], ["checkpoints", "ls"],
                                     ["metrics", "latest"], ["report", "latest"], ["logs", "latest"]])
def test_inspection_commands_leave_sys_path_alone(clean_sys_path, command, tmp_path):
    CliRunner().invoke(app, [*command, "--storage", str(tmp_path / "store")])
    assert clean_sys_path not in sys.path and "" not in sys.path[:1]


def test_graph_of_a_pipeline_imports_from_the_current_directory(clean_sys_path, tmp_path):
    (tmp_path / "odibi_cwd_mod_graph.py").write_text("def f():\n    return 1\n")
    write(tmp_path, "name: p\nnodes:\n  a: {fn: 'odibi_cwd_mod_graph:f'}\n")
    r = CliRunner().invoke(app, ["graph", "p.yaml"])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert clean_sys_path in sys.path


def _script_env() -> dict[str, str]:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               AWS_EC2_METADATA_DISABLED="true", AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")  # nothing leaves loopback
    env.pop("PYTHONPATH", None)
    return env


def test_runs_does_not_import_a_boto3_py_from_the_current_directory(tmp_path):
    """Today `odibi-ray runs --storage s3://...` imported ./boto3.py (the cwd was first on sys.path)."""
    marker = tmp_path / "IMPORTED"
    (tmp_path / "boto3.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('yes')\n"
                                       "raise ImportError('the planted boto3')\n")
    script = Path(sys.executable).parent / "odibi-ray"
    proc = subprocess.run([str(script), "runs", "--storage", "s3://odibi-bucket/x"], cwd=tmp_path,
                          env=_script_env(), capture_output=True, text=True, timeout=120)
    assert not marker.exists(), proc.stderr
    assert proc.returncode == 2 and "planted" not in proc.stderr


def test_run_still_imports_node_functions_from_the_current_directory(tmp_path):
    marker = tmp_path / "IMPORTED"
    (tmp_path / "odibi_probe_mod.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('yes')\n"
                                                 "def f():\n    return 41 + 1\n")
    write(tmp_path, "name: probe\nnodes:\n  a: {fn: 'odibi_probe_mod:f'}\n", "pipeline.yaml")
    script = Path(sys.executable).parent / "odibi-ray"
    proc = subprocess.run([str(script), "run", "pipeline.yaml", "--backend", "local", "--storage",
                           str(tmp_path / "store")], cwd=tmp_path, env=_script_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert marker.exists() and "succeeded" in proc.stdout
