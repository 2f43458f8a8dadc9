"""Console output: progress bars and tables (rich), quiet when not on a terminal."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True, highlight=False)


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Any]:
    """Yields ``update(completed, info="")``; renders a bar on a terminal, a few lines otherwise."""
    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                    disable=not console.is_terminal)
    state = {"last_pct": -1}

    with prog:
        task = prog.add_task(description, total=total, info="")

        def update(completed: int, info: str = "", total_: int | None = None) -> None:
            if total_ is not None:
                prog.update(task, total=total_)
            prog.update(task, completed=completed, info=info)
            if not console.is_terminal:
                tot = total_ or total
                pct = int(100 * completed / max(tot, 1)) // 25 * 25
                if pct > state["last_pct"]:
                    state["last_pct"] = pct
                    console.print(f"  {description}: {completed}/{tot} {info}")

        yield update


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="right" if c not in ("id", "pass", "backend", "what") else "left")
    for r in rows:
        t.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
    return t


def show(obj: Any) -> None:
    console.print(obj)
