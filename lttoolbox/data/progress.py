"""The one line (or progress bar) shown while the files of a split are decoded or checked.

Shared by the decode of the in-memory path (:mod:`lttoolbox.data.folder_io`) and the check of
every file before a streamed run (:func:`lttoolbox.data.images.check_files`).

Example:
    >>> with decode_progress(10, "/data/train") as advance:  # too few files to announce
    ...     advance(10)
"""
from __future__ import annotations

import contextlib
from pathlib import Path

# Below this many files the work takes a second or less: nothing is announced (the size at which
# the decode and the check start their pools).
ANNOUNCE_MIN_FILES = 2048


@contextlib.contextmanager
def decode_progress(total: int, root: Path, what: str | None = None):
    """A progress bar on a terminal (one line otherwise) while a split is decoded the first time
    (or ``what`` else happens to its files); yields the function that advances it."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    console = Console(stderr=True, highlight=False)
    if total < ANNOUNCE_MIN_FILES:  # a second or less: nothing to announce
        yield lambda n: None
        return
    if not console.is_terminal:
        console.print(what or f"decoding {total:,} images of {root}, first run only (cached "
                      f"afterwards)", soft_wrap=True, markup=False)
        yield lambda n: None
        return
    what = what or f"decoding {total:,} images of {root}, first run only"
    with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)
