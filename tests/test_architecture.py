"""The package's folders are its architecture (README "Architecture"): which folder may import which, the public
names of ``odibi_ray``, and the seed's import paths. Read from the source (imports parsed with ``ast``)."""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

import odibi_ray

ROOT = pathlib.Path(odibi_ray.__file__).parent
FOLDERS = ("definition", "execution", "checkpoint", "storage", "observe", "sources", "compat")

#: Which other parts of the package each folder may import. Data flows left to right (definition -> execution ->
#: checkpoint / storage -> observe); checkpoint/ reads the node records and statuses a manifest holds
#: (execution/result.py); sources/ makes nodes (definition) that read a storage backend (storage/kafka); compat/ (the
#: seed faces) is built on everything and nothing native imports it.
ALLOWED = {
    "definition": {"errors", "backoff"},
    "storage": {"errors", "backoff"},
    "checkpoint": {"definition", "storage", "errors", "execution.result"},
    "execution": {"definition", "checkpoint", "storage", "observe", "errors", "backoff"},
    "observe": {"definition", "execution", "errors", "backoff"},  # backoff: the live metrics' last-batch retries
    "sources": {"definition", "storage", "errors"},
    "compat": {"definition", "execution", "checkpoint", "storage", "observe", "errors"},
}
#: The seed's import paths (its "Phase 7" document, odibi_core -> odibi_ray) and what each must give.
SEED_PATHS = {
    "odibi_ray.cloud": ["CloudAdapter"],
    "odibi_ray.cache": ["CloudCacheManager"],
    "odibi_ray.metrics": ["MetricsManager", "MetricType"],
    "odibi_ray.checkpoint.distributed_checkpoint_manager": ["DistributedCheckpointManager"],
}
#: The public names before the folders were made (issue 15): none may go.
PUBLIC_BEFORE = {
    "DAG", "Node", "RetryPolicy", "CachePolicy", "compute_delay", "run", "current_context", "NodeContext",
    "DistributedExecutor", "ExecutionBackend", "CloudAdapter", "CloudCacheManager", "DistributedCheckpointManager",
    "Checkpoint", "CheckpointCorruptError", "RunResult", "RunStatus", "NodeRecord", "NodeStatus", "AttemptRecord",
    "ErrorInfo", "ErrorKind", "OdibiError", "DAGValidationError", "CycleError", "UnknownInputError",
    "DuplicateNodeError", "SignatureMismatchError", "InvalidPolicyError", "UnpicklableNodeError", "InvalidNodeError",
    "ExecutionError", "NodeFailedError", "NodeTimeoutError", "SystemFailureError", "RunFailedError",
    "OutputUnavailableError", "UnschedulableNodeError", "StorageError", "NotFoundError", "AlreadyExistsError",
    "PreconditionFailedError", "StorageUnavailableError", "StorageAuthError", "InvalidURIError", "CorruptObjectError",
    "RunStillRunningError", "RunTakenOverError", "UnserialisableOutputError", "UntrustedObjectError",
}


def module_imports() -> dict[str, set[str]]:
    """module (dotted, without ``odibi_ray.``) -> the package modules it imports (lazy imports included)."""
    out: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        is_init = parts[-1] == "__init__"
        mod = ".".join(parts[:-1] if is_init else parts)
        pkg = mod if is_init else ".".join(parts[:-1])
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = [p for p in pkg.split(".") if p]
                base = base[:len(base) - (node.level - 1)]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("odibi_ray."):
                found.add(node.module.removeprefix("odibi_ray."))
        out[mod] = {f for f in found if f}
    return out


def folder_of(module: str) -> str:
    head = module.split(".")[0]
    return head if head in FOLDERS else module


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_folder_imports_only_what_the_architecture_allows(folder):
    allowed = ALLOWED[folder]
    wrong = []
    for mod, targets in module_imports().items():
        if folder_of(mod) != folder or mod == "checkpoint.distributed_checkpoint_manager":  # a seed path
            continue
        for target in targets:
            other = folder_of(target)
            if other != folder and other not in allowed and target not in allowed:
                wrong.append(f"{mod} imports {target}")
    assert not wrong, wrong


def test_no_native_module_depends_on_the_seed_faces():
    shims = {"", "cloud", "cache", "metrics", "checkpoint.distributed_checkpoint_manager"}
    users = sorted(mod for mod, targets in module_imports().items()
                   if folder_of(mod) != "compat" and mod not in shims
                   and any(folder_of(t) == "compat" for t in targets))
    assert users == []


def test_the_top_level_holds_only_shared_modules_the_cli_and_the_seed_paths():
    flat = sorted(p.stem for p in ROOT.glob("*.py"))
    assert flat == ["__init__", "backoff", "cache", "cli", "cloud", "demo", "errors", "metrics"]
    assert sorted(p.name for p in ROOT.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(FOLDERS)
    for folder in FOLDERS:
        assert (ROOT / folder / "__init__.py").read_text().startswith('"""'), f"{folder}/ says what it holds"
    assert (ROOT / "execution" / "backends" / "__init__.py").exists()


@pytest.mark.parametrize("path, names", SEED_PATHS.items())
def test_the_seeds_import_paths_give_the_same_classes(path, names):
    module = importlib.import_module(path)
    for name in names:
        obj = getattr(module, name)
        if name in odibi_ray.__all__:
            assert obj is getattr(odibi_ray, name)
        assert obj.__module__.startswith(("odibi_ray.compat.", "odibi_ray.observe.")), obj.__module__


def test_public_names_are_unchanged_and_all_importable():
    assert PUBLIC_BEFORE <= set(odibi_ray.__all__)
    assert len(odibi_ray.__all__) == len(set(odibi_ray.__all__))
    for name in odibi_ray.__all__:
        assert getattr(odibi_ray, name) is not None
