"""The run directory: checked before anything is written, one writer at a time, tidy on resume.

* :func:`check_out_dir` refuses an ``--out`` that is a file, lies under a file or cannot be
  written, before any data is loaded.
* :class:`RunLock` holds an exclusive OS lock (``flock``) on ``<run>/.lock`` while a run writes
  there. The operating system releases it when the process ends, however it ends, so a stale lock
  file never blocks; a second writer is refused with the holder's process id. A forked child
  (a DataLoader worker) closes its copy of the descriptor at once, so the lock ends with the
  process that took it, not with its last orphaned child.
  :func:`lock_holder` tells a reader (``lteval``) whether a live process holds it, without taking
  it or writing anything, so an archived run on a read-only file system can still be read.
* :func:`write_log` rewrites ``log.jsonl`` and ``metrics.csv`` from the checkpointed history, so
  after a resume both equal the history exactly (no epoch lost between a checkpoint and its log
  line, none logged twice when ``checkpoint_every`` > 1).

Example:
    >>> import tempfile, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> check_out_dir(run)
    >>> row = {"phase": "main", "epoch": 0, "loss": 1.0, "lr": 0.1, "seconds": 2.0,
    ...        "images_per_second": 50.0}
    >>> with RunLock(run):
    ...     write_log(run, [row])
    >>> (run / "metrics.csv").read_text().splitlines()[1]
    'main,0,1.0,0.1,2.0,50.0,,,,,'
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import weakref
from pathlib import Path

from ..atomic import atomic_write_text, is_temp_file
from ..errors import LTError

LOCK = ".lock"
LOG = "log.jsonl"
CSV = "metrics.csv"
CSV_FIELDS = ("phase", "epoch", "loss", "lr", "seconds", "images_per_second")
EVAL_FIELDS = ("top1", "mean_class_acc", "many", "medium", "few")


class RunDirError(LTError):
    """A run directory that cannot be used: not a folder, not writable, or in use."""


def check_out_dir(out: Path) -> None:
    """Refuse an output path that a run could not write into (nothing is created here)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a folder; choose another --out")
    parent = out
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent != out and parent.exists() and not parent.is_dir():
        raise RunDirError(f"--out {out} lies under {parent}, which is a file; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(f"--out {out}: {parent} is not writable; choose another --out")


# The locks this process holds, for the fork handler below.
_HELD: "weakref.WeakSet[RunLock]" = weakref.WeakSet()


def _close_in_child() -> None:
    """Run in every child forked by ``os.fork`` (DataLoader workers, process pools): close the
    inherited descriptors of this process's run locks.

    An ``flock`` lock belongs to the open file description, which a fork shares with the child:
    it lasts until every descriptor of it is closed. After a kill -9 of the training process its
    orphaned DataLoader workers (which notice their parent's death only every 5 s) kept the run
    locked, and an immediate ``--resume`` was refused. Closing the child's copy (not ``LOCK_UN``,
    which would release the parent's lock too) leaves the parent the only holder. POSIX record
    locks (``fcntl.lockf``) are not inherited, but a process loses them when it closes *any*
    descriptor of the file, and they do not exclude a second lock taken in the same process.
    """
    for lock in list(_HELD):
        if lock._fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock._fd)
            lock._fd = None
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class RunLock:
    """An exclusive lock on a run directory for as long as the ``with`` block (or the process
    that took it) lasts; children it forks do not hold it.

    Raises:
        RunDirError: another process holds it (its process id is named).
    """

    def __init__(self, out: Path):
        self.out = Path(out)
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.out / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(f"{self.out} is in use by another run (process {holder}); wait for "
                              f"it to end") from None  # lteval locks too, and has no --out
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        _HELD.add(self)
        return self

    def __exit__(self, *exc) -> None:
        _HELD.discard(self)
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_holder(out: Path) -> str | None:
    """The process id recorded in ``<out>/.lock`` while a live process holds the lock, else
    ``None``.

    Takes no lock that outlives the call and writes nothing (a run directory on a read-only file
    system, or with no ``.lock`` at all, is simply not held). The probe is a non-blocking shared
    ``flock`` released at once; a writer that starts in that instant is refused as if it were a
    second writer, which it can retry.
    """
    try:
        fd = os.open(Path(out) / LOCK, os.O_RDONLY)
    except OSError:
        return None  # no lock file (never trained here) or none we may read
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        except OSError:
            return None  # a file system without flock: nothing to learn
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def remove_temp_files(out: Path) -> list[Path]:
    """Delete the temporary files an interrupted write left in ``out`` (under the lock only)."""
    removed = [p for p in Path(out).iterdir() if is_temp_file(p)]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def csv_line(row: dict, terms: tuple = ()) -> str:
    """One ``metrics.csv`` line: the epoch's fields, its loss terms (empty in a phase without
    them), then its evaluation (empty without one)."""
    evaluation = row.get("eval") or {}
    parts = row.get("loss_terms") or {}
    values = ([row[f] for f in CSV_FIELDS] + [parts.get(t) for t in terms]
              + [evaluation.get(f) for f in EVAL_FIELDS])
    return ",".join("" if v is None else str(v) for v in values) + "\n"


def csv_header(terms: tuple = ()) -> str:
    """``metrics.csv``'s header: a ``loss_<name>`` column per loss term any phase logs."""
    return ",".join(CSV_FIELDS + tuple(f"loss_{t}" for t in terms)
                    + tuple(f"eval_{f}" for f in EVAL_FIELDS)) + "\n"


def write_log(out: Path, history: list[dict], terms: tuple = ()) -> None:
    """``log.jsonl`` (one JSON line per trained epoch) and ``metrics.csv`` (the same, one row per
    epoch, with a column per name in ``terms``), both rewritten atomically from ``history``."""
    out = Path(out)
    atomic_write_text(out / LOG, "".join(json.dumps(row) + "\n" for row in history))
    atomic_write_text(out / CSV, csv_header(terms) + "".join(csv_line(row, terms)
                                                            for row in history))


def append_log(out: Path, row: dict, terms: tuple = ()) -> None:
    """Add one epoch to ``log.jsonl`` and ``metrics.csv`` (the checkpointed history stays the
    reference they are rewritten from; ``terms`` as given to :func:`write_log`)."""
    out = Path(out)
    with open(out / LOG, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    with open(out / CSV, "a", encoding="utf-8") as handle:
        handle.write(csv_line(row, terms))
