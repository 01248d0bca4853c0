"""Progress bars on stderr (stdout stays clean for the result table), off when not wanted."""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def progress_task(description: str, total: int, enabled: bool = True):
    """`with progress_task("calibrating", 300) as advance: advance(1)`."""
    if not enabled or total <= 0:
        yield lambda count=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda count=1: progress.advance(task, count)
