"""The folder example (examples/map_folder.py and its YAML twin examples/map_folder.yaml): a mapped node cleans
every landed file in its own task; a re-run with nothing new is fully cached; after one new file lands exactly one
item (and the listing and the collect) runs, the other items are cached; the YAML builds the same DAG and reuses
the Python run's checkpoints. The combined Parquet is checked against the files read directly."""

from __future__ import annotations

import importlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
YAML = REPO / "examples" / "map_folder.yaml"


@pytest.fixture(scope="module")
def example():
    return importlib.import_module("examples.map_folder")


def statuses(out: str) -> dict[str, tuple[str, str, int]]:
    """node -> (status, items, attempts) from the example's table."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 6 and cells[1] in ("list_files", "clean_file", "combine"):
            rows[cells[1]] = (cells[2], cells[3], int(cells[4]))
    assert set(rows) == {"list_files", "clean_file", "combine"}, out
    return rows


def check_combined(folder: Path, out: Path, files: int) -> None:
    from examples import map_steps

    listing = map_steps.list_files(str(folder))
    assert len(listing) == files
    want = sum(map_steps.clean_file(f).num_rows for f in listing)
    table = pq.read_table(out / "combined.parquet")
    assert table.num_rows == want and table["source"].unique().to_pylist() == [Path(f["path"]).name for f in listing]
    assert min(table["amount"].to_pylist()) > 0 and "" not in table["product"].to_pylist()
    assert all(p == p.strip().lower() for p in table["product"].unique().to_pylist())


def test_rerun_is_cached_and_one_new_file_runs_one_item(example, tmp_path, capsys):
    folder, out = tmp_path / "landing", tmp_path / "out"
    args = ["--backend", "local", "--folder", str(folder), "--out", str(out), "--storage", str(tmp_path / "cp"),
            "--files", "5", "--rows", "60"]
    assert example.main(args) == 0
    first = capsys.readouterr().out
    assert "landed 5 sample files" in first
    assert statuses(first) == {"list_files": ("succeeded", "", 1), "clean_file": ("succeeded", "5 succeeded", 5),
                               "combine": ("succeeded", "", 1)}
    check_combined(folder, out, 5)

    assert example.main(args) == 0  # nothing new: every node reused
    assert statuses(capsys.readouterr().out) == {"list_files": ("cached", "", 0), "clean_file": (
        "cached", "5 cached", 0), "combine": ("cached", "", 0)}

    assert example.main(args + ["--add-file"]) == 0  # one file lands: one item runs, the collect too
    third = capsys.readouterr().out
    assert "landed one more file: sales-0005.csv" in third and "combined 6 files" in third
    assert statuses(third) == {"list_files": ("succeeded", "", 1), "clean_file": (
        "succeeded", "5 cached, 1 succeeded", 1), "combine": ("succeeded", "", 1)}
    check_combined(folder, out, 6)

    (folder / "sales-0002.csv").write_text((folder / "sales-0002.csv").read_text() + "lyon,2025-01-01,tea,1,2.5\n")
    assert example.main(args) == 0  # a file rewritten in place is a new item (its size and time changed)
    assert statuses(capsys.readouterr().out)["clean_file"] == ("succeeded", "5 cached, 1 succeeded", 1)
    check_combined(folder, out, 6)


def test_yaml_twin_is_the_same_pipeline(example, tmp_path, capsys):
    from odibi_ray.checkpoint.keys import cache_keys
    from odibi_ray.definition.spec import load_pipeline

    folder, out = tmp_path / "landing", tmp_path / "out"
    args = ["--backend", "local", "--folder", str(folder), "--out", str(out), "--storage", str(tmp_path / "cp"),
            "--files", "3", "--rows", "40"]
    assert example.main(args) == 0  # Python
    capsys.readouterr()
    python_dag = example.configure(example.build_dag(), folder=str(folder), out=str(out))
    yaml_dag = example.configure(load_pipeline(YAML).to_dag(), folder=str(folder), out=str(out))
    assert yaml_dag.name == python_dag.name and yaml_dag.levels() == python_dag.levels()
    for name in example.NODES:
        assert yaml_dag[name] == python_dag[name], name
    order = [n for level in python_dag.levels() for n in level]
    versions = {n: f"sha256:{n}" for n in order}  # every input has an output: every node is keyed
    assert cache_keys(yaml_dag, order, versions) == cache_keys(python_dag, order, versions)
    assert example.main(args + ["--yaml", str(YAML)]) == 0  # reuses every checkpoint the Python run wrote
    assert statuses(capsys.readouterr().out) == {"list_files": ("cached", "", 0), "clean_file": (
        "cached", "3 cached", 0), "combine": ("cached", "", 0)}
    assert example.main(args + ["--yaml", str(YAML), "--add-file"]) == 0
    assert statuses(capsys.readouterr().out)["clean_file"] == ("succeeded", "3 cached, 1 succeeded", 1)
    check_combined(folder, out, 4)


def test_on_ray(example, tmp_path, capsys, ray_local):
    folder, out = tmp_path / "landing", tmp_path / "out"
    args = ["--folder", str(folder), "--out", str(out), "--storage", str(tmp_path / "cp"), "--files", "3",
            "--rows", "40", "--yaml", str(YAML)]
    assert example.main(args) == 0
    assert statuses(capsys.readouterr().out)["clean_file"] == ("succeeded", "3 succeeded", 3)
    assert example.main(args + ["--add-file"]) == 0
    out_text = capsys.readouterr().out
    assert "on ray: succeeded" in out_text
    assert statuses(out_text)["clean_file"] == ("succeeded", "3 cached, 1 succeeded", 1)
    check_combined(folder, out, 4)
