"""Folder example: clean every file that landed in a folder, each in its own task (a mapped node), then combine.

    python examples/map_folder.py                     # 12 sample CSVs in out/map_folder/landing, local Ray,
                                                      # checkpoints in .odibi/map_folder
    python examples/map_folder.py                     # again: nothing changed, every node `cached`, no task runs
    python examples/map_folder.py --add-file          # one new file lands: list_files, ONE item of clean_file
                                                      # and combine run; the other items are `cached`
    python examples/map_folder.py --yaml examples/map_folder.yaml   # the same pipeline, defined in YAML
    python examples/map_folder.py --backend local     # threads instead of Ray

``list_files`` lists the folder (its cache key is the listing itself, so an unchanged folder is reused);
``clean_file`` is mapped over that list: one item per file, each its own Ray task with the node's retry policy
and timeout, its own cache key (the node's code and params plus the item: path, size, modification time) and its
own checkpoint; ``combine`` receives the list of cleaned tables in file order and writes one Parquet file under
``--out``. The driver reads only the listing; every file is read by the worker that cleans it (on a cluster the
folder must be one every machine sees, e.g. a mounted share).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python examples/map_folder.py` from anywhere: examples.map_steps importable
    sys.path.insert(0, str(REPO))

from examples.loopback import keep_on_loopback  # noqa: E402 - after the sys.path setup above

keep_on_loopback()  # before Ray is imported

from rich.console import Console  # noqa: E402 - after the sys.path setup above
from rich.table import Table  # noqa: E402 - after the sys.path setup above

from examples import map_steps  # noqa: E402 - after the sys.path setup above
from odibi_ray import DAG, CachePolicy, RetryPolicy, RunResult, RunStatus, run  # noqa: E402 - after the sys.path setup above

PIPELINE = "map_folder"
NODES = ("list_files", "clean_file", "combine")


def build_dag(folder: str = "out/map_folder/landing", out: str = "out/map_folder/combined.parquet",
              max_parallel: int = 8) -> DAG:
    """The pipeline in Python (examples/map_folder.yaml is the same DAG in YAML)."""
    dag = DAG(PIPELINE)
    dag.add_node(name="list_files", fn=map_steps.list_files, params={"folder": folder, "pattern": "*.csv"},
                 cache=CachePolicy(key_fn=map_steps.folder_state))
    dag.map("list_files", "clean_file", max_parallel=max_parallel, timeout_s=300,
            retry=RetryPolicy(max_attempts=3, delay_s=0.2, retry_on=(OSError,)))(map_steps.clean_file)
    dag.add_node(name="combine", fn=map_steps.combine, inputs={"tables": "clean_file"}, params={"out": out},
                 timeout_s=300)
    return dag


def configure(dag: DAG, *, folder: str, out: str) -> DAG:
    """Set the (absolute) folder and output file on either definition, so both get equal cache keys."""
    dag["list_files"].params["folder"] = str(Path(folder).resolve())
    dag["combine"].params["out"] = str(Path(out).resolve() / "combined.parquet")
    return dag


def load_yaml(path: str) -> DAG:
    """The pipeline from its YAML definition."""
    from odibi_ray.definition.spec import load_pipeline

    return load_pipeline(path).to_dag()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="out/map_folder/landing", help="the landing folder (sample files are "
                        "written into it when it has none)")
    parser.add_argument("--files", type=int, default=12, help="sample files to write into an empty folder")
    parser.add_argument("--rows", type=int, default=500, help="rows per sample file")
    parser.add_argument("--add-file", action="store_true", help="land one more sample file before the run")
    parser.add_argument("--out", default="out/map_folder", help="folder for combined.parquet")
    parser.add_argument("--storage", default=".odibi/map_folder", help="checkpoint storage URI")
    parser.add_argument("--backend", choices=["ray", "local"], default="ray")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    parser.add_argument("--yaml", default=None, metavar="PATH", help="load the pipeline from YAML instead")
    args = parser.parse_args(argv)
    if args.files < 1 or args.rows < 1:
        parser.error("--files and --rows must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Land sample files if needed, run the pipeline once; 0 when it succeeded, 1 when a node failed."""
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 120)
    if map_steps.landed(args.folder) == 0:
        for i in range(args.files):
            map_steps.write_sample_file(args.folder, i, rows=args.rows)
        console.print(f"landed {args.files} sample files in {args.folder}")
    if args.add_file:
        new = map_steps.write_sample_file(args.folder, map_steps.next_sample_index(args.folder), rows=args.rows)
        console.print(f"landed one more file: {new.name}")
    dag = configure(load_yaml(args.yaml) if args.yaml else build_dag(), folder=args.folder, out=args.out)
    source = f"YAML {args.yaml}" if args.yaml else "Python"
    console.print(f"[bold]{dag.name}[/] ({source}): {map_steps.landed(args.folder)} files in {args.folder}")
    # when odibi_ray starts Ray itself, its workers can import examples.map_steps wherever this is run from
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    init: dict = {"runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}}}
    if args.address is None and not os.environ.get("RAY_ADDRESS"):  # sizes only for a Ray this process starts
        init.update(num_cpus=os.cpu_count() or 2, include_dashboard=False, object_store_memory=256 * 1024 * 1024)
    result = run(dag, backend=args.backend, address=args.address, ray_init_kwargs=init, storage=args.storage)
    show(console, result)
    if result.status is not RunStatus.SUCCEEDED:
        console.print(f"[red]run {result.run_id} failed[/]")
        return 1
    summary = result["combine"]
    console.print(f"combined {summary['files']} files, {summary['rows']:,} rows, revenue {summary['revenue']:,.2f} "
                  f"into {summary['out']}")
    console.print("run again: nothing runs; add a file (--add-file): one item and combine run")
    return 0


def show(console: Console, result: RunResult) -> None:
    """The per-node table; a mapped node's row counts its items by status."""
    table = Table(title=f"run {result.run_id} on {result.backend}: {result.status.value}")
    for col in ("level", "node", "status", "items", "attempts", "errors"):
        table.add_column(col)
    for level in result.by_level():
        for rec in level:
            records = rec.items if rec.items is not None else [rec]
            items = ", ".join(f"{n} {s}" for s, n in sorted(rec.item_counts().items())) if rec.items is not None else ""
            errors = ", ".join(dict.fromkeys(a.error.type_name for r in records for a in r.attempt_history if a.error))
            table.add_row(str(rec.level), rec.name, rec.status.value, items,
                          str(sum(r.attempts for r in records)), errors)
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
