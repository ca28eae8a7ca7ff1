"""Live progress of a run with ``rich``: one bar per topological level and one for the whole run."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ..execution.result import NodeStatus


class ProgressSink:
    """Receives progress events from the scheduler; the default does nothing."""

    def start(self, levels: list[list[str]]) -> None: ...

    def node_done(self, name: str, level: int, status: NodeStatus) -> None: ...

    def items_added(self, name: str, level: int, count: int) -> None:
        """Mapped node ``name`` has ``count`` items (its output split); each closes with :meth:`item_done`."""

    def item_done(self, name: str, level: int, status: NodeStatus) -> None:
        """One item of mapped node ``name`` closed (an item reopened and closed again is reported again)."""

    def early_cutoff(self, name: str, unchanged: tuple[str, ...]) -> None:
        """Node ``name`` was reused (reported by :meth:`node_done` as cached) because its inputs ``unchanged`` ran
        and wrote the outputs they had before (early cutoff)."""

    def stop(self) -> None: ...


class RichProgress(ProgressSink):
    """Shows progress on a terminal; silent when output is not a terminal (CI, logs, pipes)."""

    max_level_bars = 12

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._tasks: list[TaskID] = []
        self._total: TaskID | None = None  # set by start(), with _progress
        self._failed = 0
        self._cutoff = 0  # nodes reused after their inputs ran with unchanged outputs
        self._items: dict[str, TaskID] = {}  # mapped node -> its items' bar
        self._item_counts: dict[str, list[int]] = {}  # mapped node -> [items closed, items]

    @property
    def enabled(self) -> bool:
        return self.console.is_terminal

    def start(self, levels: list[list[str]]) -> None:
        if not self.enabled:
            return
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=self.console, transient=False)
        self._total = self._progress.add_task("[bold]all nodes", total=sum(map(len, levels)))
        # One bar per level while that stays readable; deep DAGs get the total bar only.
        if len(levels) <= self.max_level_bars:
            self._tasks = [self._progress.add_task(f"level {i}", total=len(names)) for i, names in enumerate(levels)]
        self._progress.start()

    def node_done(self, name: str, level: int, status: NodeStatus) -> None:
        if self._progress is None or self._total is None:
            return
        if self._tasks:
            self._progress.advance(self._tasks[level])
        self._progress.advance(self._total)
        if status is NodeStatus.FAILED:
            self._failed += 1
            self._describe_total()

    def early_cutoff(self, name: str, unchanged: tuple[str, ...]) -> None:
        self._cutoff += 1
        self._describe_total()

    def _describe_total(self) -> None:
        if self._progress is None or self._total is None:
            return
        notes = ([f"[red]{self._failed} failed"] if self._failed else []) + (
            [f"[green]{self._cutoff} reused: unchanged output"] if self._cutoff else [])
        self._progress.update(self._total, description=f"[bold]all nodes ({', '.join(notes)}[/])" if notes
                              else "[bold]all nodes")

    def items_added(self, name: str, level: int, count: int) -> None:
        if self._progress is None:
            return
        bar = self._items.get(name)
        self._item_counts[name] = [0, count]
        if bar is None:
            self._items[name] = self._progress.add_task(f"  {name} (items)", total=count)
        else:
            self._progress.reset(bar, total=count)

    def item_done(self, name: str, level: int, status: NodeStatus) -> None:
        bar = self._items.get(name)
        if self._progress is not None and bar is not None:
            counts = self._item_counts[name]
            counts[0] += 1  # an item reopened (its output lost) closes again: the bar stops at its total
            self._progress.update(bar, completed=min(counts[0], counts[1]))

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
