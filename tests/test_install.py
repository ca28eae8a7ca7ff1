"""What gets installed, and what works once it is: the package's files (the CLI's demo ships inside it), S3 as
the ``s3`` extra (boto3 is not a core dependency; without it the S3 adapter names the extra), and ``./dev``'s
setup (``./dev demo`` installs the core only, ``./dev test`` the test extras, also after a demo).

The wheel is built for real (``pip wheel --no-deps`` of a copy of the sources; pip fetches the pinned build
backend into its isolated build environment, from a local index when the machine has one). Where it cannot be
built (no network and no local index), the package is laid out as the wheel lays it out, from the same
``[tool.setuptools.packages.find]`` configuration. Either way it is unpacked into a folder outside the checkout
and the ``odibi-ray`` entry point runs from there, in another folder outside the checkout.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def discovered_files() -> list[str]:
    """The modules the wheel holds: every .py file of every package [tool.setuptools.packages.find] selects."""
    from setuptools import find_namespace_packages

    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    assert find.get("namespaces", True), "the layout below assumes namespace discovery (pyproject's default)"
    packages = find_namespace_packages(where=str(ROOT), include=find["include"], exclude=find.get("exclude", ()))
    files = []
    for pkg in packages:
        folder = ROOT.joinpath(*pkg.split("."))
        files += [str(p.relative_to(ROOT)) for p in sorted(folder.glob("*.py"))]
    return files


def build_wheel(tmp_path: Path) -> Path | None:
    """A real wheel of a copy of the sources, or None when no build backend can be had here."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", src)
    shutil.copy2(ROOT / "README.md", src)
    shutil.copytree(ROOT / "odibi_ray", src / "odibi_ray", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PIP_RETRIES="0", PIP_TIMEOUT="5", PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(src)],
                          env=env, capture_output=True, text=True, timeout=300)
    wheels = sorted((tmp_path / "dist").glob("odibi_ray-*.whl"))
    if proc.returncode != 0 or not wheels:
        print(f"could not build a wheel here (laying the package out instead):\n{proc.stdout}\n{proc.stderr}")
        return None
    return wheels[0]


def test_the_demo_ships_inside_the_package_and_runs_from_anywhere(tmp_path):
    site = tmp_path / "site-packages"
    wheel = build_wheel(tmp_path)
    if wheel is not None:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
            entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
            zf.extractall(site)  # a pure-Python wheel, installed: its files under site-packages
        files = [n for n in names if ".dist-info/" not in n]
        requires = [ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("Requires-Dist:")]
        boto = [r for r in requires if r.startswith("boto3")]
        assert boto and all('extra == "s3"' in r for r in boto), requires  # boto3 only with the s3 extra
        assert "odibi-ray = odibi_ray.cli:main" in entry_points
    else:
        files = discovered_files()
        for f in files:
            (site / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, site / f)
    assert "odibi_ray/demo.py" in files and "odibi_ray/cli.py" in files
    assert not [f for f in files if not f.startswith("odibi_ray/")], files  # examples/, tests/ are not installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # what the `odibi-ray` console script does ([project.scripts] odibi-ray = "odibi_ray.cli:main")
    script, module = PYPROJECT["project"]["scripts"]["odibi-ray"].split(":")
    code = (f"import sys, odibi_ray; assert odibi_ray.__file__.startswith({str(site)!r}), odibi_ray.__file__; "
            f"sys.argv = ['odibi-ray'] + sys.argv[1:]; from {script} import {module}; {module}()")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), COLUMNS="200")
    proc = subprocess.run([sys.executable, "-c", code, "demo", "--backend", "local", "--rows", "2000",
                           "--storage", str(elsewhere / "store")], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo_sales" in proc.stdout and "succeeded" in proc.stdout and "best_region" in proc.stdout, proc.stdout
    assert "FileNotFoundError" not in proc.stderr
    assert (elsewhere / "store").is_dir()


def test_examples_demo_pipeline_is_the_packaged_demo():
    import importlib.util

    import odibi_ray.demo

    spec = importlib.util.spec_from_file_location("demo_pipeline_file", ROOT / "examples" / "demo_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main is odibi_ray.demo.main and module.dag is odibi_ray.demo.dag


# --- S3 is an extra ------------------------------------------------------------------------------------

def test_s3_is_an_extra_and_the_test_extra_includes_it():
    core = PYPROJECT["project"]["dependencies"]
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert not [d for d in core if d.lower().startswith(("boto3", "botocore", "s3fs"))], core
    assert any(d.startswith("azure-storage-file-datalake") for d in core)  # ADLS stays in the core
    assert any(d.startswith("boto3") for d in extras["s3"])
    assert "odibi_ray[s3]" in extras["test"] or any(d.startswith("boto3") for d in extras["test"])


def test_odibi_ray_imports_without_boto3():
    code = ("import sys; sys.modules['boto3'] = sys.modules['botocore'] = None\n"
            "import odibi_ray, odibi_ray.cli, odibi_ray.storage.uri, odibi_ray.storage.arrowfs, odibi_ray.demo\n"
            "from odibi_ray.storage.uri import open_storage\n"
            "print(type(open_storage(sys.argv[1])).__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "no-such-folder")], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "LocalStorage", proc.stderr


def test_without_boto3_the_s3_adapter_names_the_extra(monkeypatch):
    from odibi_ray.errors import StorageError
    from odibi_ray.storage.arrowfs import S3Storage
    from odibi_ray.storage.uri import open_storage

    monkeypatch.setitem(sys.modules, "boto3", None)  # as if the s3 extra were not installed
    monkeypatch.setitem(sys.modules, "botocore", None)
    for make in (lambda: S3Storage.from_uri("s3://bucket/prefix"),
                 lambda: open_storage("s3://bucket/prefix", endpoint_override="http://127.0.0.1:9")):
        with pytest.raises(StorageError, match=r"pip install 'odibi_ray\[s3\]'"):
            make()
    monkeypatch.undo()
    assert S3Storage.from_uri("s3://bucket/prefix").bucket == "bucket"  # with boto3: configured, no network


# --- ./dev's setup ----------------------------------------------------------------------------------------

def _exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def dev(tmp_path):
    """A copy of ./dev in a scratch project whose venv python only records what it is asked to do."""
    proj = tmp_path / "proj"
    (proj / ".venv" / "bin").mkdir(parents=True)
    shutil.copy2(ROOT / "dev", proj / "dev")
    (proj / "pyproject.toml").write_text("[project]\nname = 'scratch'\n")
    (proj / "package-lock.json").write_text("{}")
    (proj / "node_modules").mkdir()
    (proj / "node_modules" / ".package-lock.json").write_text("{}")
    old = time.time() - 1000
    os.utime(proj / "pyproject.toml", (old, old))
    os.utime(proj / "package-lock.json", (old, old))
    calls = proj / "calls.log"
    _exe(proj / ".venv" / "bin" / "python",
         f'#!/bin/sh\necho "$*" >> {calls}\ncase "$*" in *"pip install"*) echo "Collecting something";; esac\n')
    tools = tmp_path / "bin"  # stand-ins, so that ./dev test neither runs npm nor apt-get
    tools.mkdir()
    for name in ("npm", "sshd", "rsync", "chromium"):
        _exe(tools / name, "#!/bin/sh\nexit 0\n")
    env = dict(os.environ, PYTHON=sys.executable, PATH=f"{tools}{os.pathsep}{os.environ['PATH']}")

    def run(*args: str) -> tuple[list[str], str]:
        before = calls.read_text().splitlines() if calls.exists() else []
        proc = subprocess.run([str(proj / "dev"), *args], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return calls.read_text().splitlines()[len(before):], proc.stderr

    run.proj = proj  # type: ignore[attr-defined]
    run.env = env  # type: ignore[attr-defined]
    return run


def pip_installs(calls: list[str]) -> list[str]:
    return [c.split("pip install ", 1)[1] for c in calls if "-m pip install" in c and "--upgrade pip" not in c]


def test_dev_demo_installs_the_core_only_and_test_adds_the_test_extras(dev):
    calls, err = dev("demo")
    assert pip_installs(calls) == ["-e ."]  # not .[test]
    assert calls[-1].startswith("examples/demo_pipeline.py")
    assert "[setup 3/3] installing odibi_ray and its dependencies" in err and "Collecting something" in err  # progress
    assert (dev.proj / ".venv" / ".installed-core").is_file() and not (dev.proj / ".venv" / ".installed").exists()

    calls, err = dev("demo")  # set up already: straight to the demo
    assert pip_installs(calls) == [] and "[setup" not in err

    calls, err = dev("test", "-k", "retry")  # the core is there, the test tools are not: installed now
    assert pip_installs(calls) == ["-e .[test]"]
    assert calls[-1].endswith("-m pytest -rs -k retry")
    assert not [c for c in calls if "-m ruff" in c or "-m mypy" in c] and "[lint]" not in err  # a targeted run

    calls, err = dev("test", "-q")  # the whole suite: the linters first
    assert pip_installs(calls) == []
    assert calls[-3:-1] == ["-m ruff check .", "-m mypy"] and calls[-1].endswith("-m pytest -rs -q")
    assert "[lint] ruff and mypy clean" in err
    calls, _ = dev("demo")  # the test install holds the core too
    assert pip_installs(calls) == []

    later = time.time() + 5
    os.utime(dev.proj / "pyproject.toml", (later, later))  # the dependencies changed: install again
    calls, _ = dev("demo")
    assert pip_installs(calls) == ["-e ."]


def test_dev_test_stops_before_the_suite_when_a_linter_fails(dev):
    dev("test", "tests/test_dag.py")  # set up (a targeted run: no lint)
    python = dev.proj / ".venv" / "bin" / "python"
    python.write_text(python.read_text().replace(
        'case "$*" in', 'case "$*" in *"-m mypy"*) echo "odibi_ray/x.py:1: error: wrong"; exit 1;; esac\ncase "$*" in'))
    proc = subprocess.run([str(dev.proj / "dev"), "test"], env=dev.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "odibi_ray/x.py:1: error: wrong" in proc.stderr and "[lint] mypy failed" in proc.stderr
    assert (dev.proj / "calls.log").read_text().splitlines()[-1] == "-m mypy"  # and no pytest after it
