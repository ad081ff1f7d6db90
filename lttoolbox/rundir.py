"""The run directory: the one owner of its layout, its lock and the way its files are written.

Every file ``lttrain`` writes into ``--out``, and every file ``lteval``, ``ltpredict``,
``load_run``, ``--from-run`` and the leaderboard read there, is named by :class:`RunDir`:

==========================  ===================================================================
``recipe.yaml``             the resolved recipe (written first, before any training)
``data.json``               the data facts a trained model depends on (classes, counts, ...)
``checkpoint.pt``           the state to resume from (model, optimizer, history, generators)
``log.jsonl``               one JSON line per trained epoch
``metrics.csv``             the same, one row per epoch
``model-<phase>.pt``        the weights at the end of each phase
``generated-<phase>.pt``    a generator's extra training features of a phase
``results.json``            the final evaluation: a run holding it is *finished*
``eval-<name>.json``        an evaluation ``lteval`` made afterwards
``tensorboard/``            the scalars of ``train.loggers: [tensorboard]``
``tracking.json``           the MLflow / W&B run this run logs to, and how many epochs it holds
``mlflow.db``               ``train.loggers: [mlflow]``'s default tracking store (SQLite) ...
``mlartifacts/``            ... and its artifacts
``wandb/``                  ``train.loggers: [wandb]``'s run files (``train.wandb.dir`` unset)
``*.png``                   the plots of :data:`RunDir.PLOTS`
``leaderboard_run.json``    the leaderboard runner's record of its attempts on the run
``planned_recipe.yaml``     the recipe the leaderboard runner gave ``lttrain``
``lttrain.log``             the output of the leaderboard runner's ``lttrain``
``.lock``                   the writer's lock (:class:`RunLock`), holding its process id
``.<name>.<random>.tmp``    a write in progress (:func:`atomic_write`)
==========================  ===================================================================

A run directory holding ``checkpoint.pt`` but no ``results.json`` is *unfinished* (``lttrain
--resume`` continues it). This module imports nothing of lttoolbox but :mod:`lttoolbox.errors`
(which imports nothing of lttoolbox either), so every part of the package can use it.

* Atomic writes: each file is written to a temporary name beside it (``.<name>.<random>.tmp``),
  flushed, and renamed over the target, so the target holds either its previous or its complete
  new content. Temporary files get the user's normal mode (0666 minus the umask), like any other
  output of a run. The decode cache and the recipe files are written the same way.
* :func:`check_out_dir` refuses an ``--out`` that is a file, lies under a file or cannot be
  written, before any data is loaded.
* :class:`RunLock` holds an exclusive OS lock (``flock``) on ``<run>/.lock`` while a run writes
  there. The operating system releases it when the process ends, however it ends, so a stale lock
  file never blocks; a second writer is refused with the holder's process id. A forked child
  (a DataLoader worker) closes its copy of the descriptor at once, so the lock ends with the
  process that took it, not with its last orphaned child.
  :func:`lock_holder` tells a reader (``lteval``, the leaderboard) whether a live process holds
  it, without taking it or writing anything, so an archived run on a read-only file system can
  still be read.
* :func:`write_log` rewrites ``log.jsonl`` and ``metrics.csv`` from the checkpointed history, so
  after a resume both equal the history exactly (no epoch lost between a checkpoint and its log
  line, none logged twice when ``checkpoint_every`` > 1).

Example:
    >>> import tempfile
    >>> run = RunDir(Path(tempfile.mkdtemp()) / "run")
    >>> check_out_dir(run.path)
    >>> row = {"phase": "main", "epoch": 0, "loss": 1.0, "lr": 0.1, "seconds": 2.0,
    ...        "images_per_second": 50.0}
    >>> with run.lock():
    ...     write_log(run.path, [row])
    ...     atomic_write_json({"top1": 0.5}, run.results)
    >>> run.metrics.read_text().splitlines()[1]
    'main,0,1.0,0.1,2.0,50.0,,,,,'
    >>> run.weights("joint").name, run.is_finished(), run.holder()
    ('model-joint.pt', True, None)
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import LTError


class RunDir:
    """The files of one run directory, by role (see the module docstring for the layout).

    Only names and predicates: nothing is created or locked by building one.

    Args:
        path: The run directory (need not exist).

    Example:
        >>> run = RunDir("runs/quickstart/20261130-101500")
        >>> run.checkpoint.name, run.generated("rsg").name
        ('checkpoint.pt', 'generated-rsg.pt')
        >>> RunDir.phase_of_weights("model-joint.pt"), RunDir.phase_of_weights("other.pt")
        ('joint', None)
    """

    RECIPE = "recipe.yaml"
    DATA = "data.json"
    CHECKPOINT = "checkpoint.pt"
    LOG = "log.jsonl"
    METRICS = "metrics.csv"
    RESULTS = "results.json"
    LEADERBOARD = "leaderboard_run.json"
    PLANNED_RECIPE = "planned_recipe.yaml"
    RUNNER_LOG = "lttrain.log"
    LOCK = ".lock"
    TENSORBOARD = "tensorboard"
    TRACKING = "tracking.json"
    MLFLOW_DB = "mlflow.db"
    MLFLOW_ARTIFACTS = "mlartifacts"
    EVAL_PREFIX = "eval-"
    PLOTS = ("per_class_accuracy.png", "confusion_matrix.png", "training_curves.png")
    WEIGHTS_PREFIX = "model-"
    EMA_PREFIX = "ema-"
    GENERATED_PREFIX = "generated-"
    SUFFIX = ".pt"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------------------- the files
    @property
    def recipe(self) -> Path:
        return self.path / self.RECIPE

    @property
    def data(self) -> Path:
        return self.path / self.DATA

    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def log(self) -> Path:
        return self.path / self.LOG

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def results(self) -> Path:
        return self.path / self.RESULTS

    @property
    def leaderboard_record(self) -> Path:
        return self.path / self.LEADERBOARD

    @property
    def planned_recipe(self) -> Path:
        return self.path / self.PLANNED_RECIPE

    @property
    def runner_log(self) -> Path:
        return self.path / self.RUNNER_LOG

    @property
    def tracking(self) -> Path:
        return self.path / self.TRACKING

    @property
    def mlflow_db(self) -> Path:
        return self.path / self.MLFLOW_DB

    @property
    def mlflow_artifacts(self) -> Path:
        return self.path / self.MLFLOW_ARTIFACTS

    @property
    def lock_file(self) -> Path:
        return self.path / self.LOCK

    @property
    def plots(self) -> tuple[Path, ...]:
        return tuple(self.path / name for name in self.PLOTS)

    @classmethod
    def weights_name(cls, phase: str) -> str:
        """``model-<phase>.pt``: a phase's weights at its end."""
        return f"{cls.WEIGHTS_PREFIX}{phase}{cls.SUFFIX}"

    @classmethod
    def ema_name(cls, phase: str) -> str:
        """``ema-<phase>.pt``: the moving average of a phase's weights (``train.ema``)."""
        return f"{cls.EMA_PREFIX}{phase}{cls.SUFFIX}"

    def ema(self, phase: str) -> Path:
        return self.path / self.ema_name(phase)

    def weights(self, phase: str) -> Path:
        return self.path / self.weights_name(phase)

    def artifact(self, name: str, phase: str) -> Path:
        """``<name>-<phase>.pt``: what a component computed once at a phase's start (see
        :meth:`lttoolbox.api.PhaseEvents.artifact`), kept so that a resumed run reuses it."""
        return self.path / f"{name}-{phase}{self.SUFFIX}"

    def generated(self, phase: str) -> Path:
        """``generated-<phase>.pt``: the training images a component added at a phase's start
        (CAM-based re-sampling's artifact ``generated``)."""
        return self.artifact(self.GENERATED_PREFIX[:-1], phase)

    def evaluation(self, name: str) -> Path:
        """``eval-<name>.json``: what ``lteval --name NAME`` measured."""
        return self.path / f"{self.EVAL_PREFIX}{name}.json"

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    @classmethod
    def phase_of_weights(cls, path: str | os.PathLike) -> str | None:
        """The phase whose weights ``path`` names (``model-<phase>.pt``, or ``ema-<phase>.pt``
        for their moving average), else None."""
        name = Path(path).name
        for prefix in (cls.WEIGHTS_PREFIX, cls.EMA_PREFIX):
            if name.startswith(prefix) and name.endswith(cls.SUFFIX):
                return name[len(prefix):-len(cls.SUFFIX)] or None
        return None

    def weights_files(self) -> list[Path]:
        """The phases' weights files present, sorted by name."""
        return sorted(self.path.glob(f"{self.WEIGHTS_PREFIX}*{self.SUFFIX}"))

    def temp_files(self) -> list[Path]:
        """The temporary files interrupted writes left here (see :func:`is_temp_file`)."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if is_temp_file(p))

    # ------------------------------------------------------------------------------ its state
    def holds_run(self) -> bool:
        """Whether a run was started here (its resolved ``recipe.yaml`` is written first)."""
        return self.recipe.is_file()

    def is_finished(self) -> bool:
        """Whether the run ended: its ``results.json`` is written (last, atomically)."""
        return self.results.is_file()

    def is_unfinished(self) -> bool:
        """Whether a run can be resumed here: a checkpoint and no results yet."""
        return self.checkpoint.is_file() and not self.results.exists()

    def holder(self) -> str | None:
        """The process id of a live writer holding the lock, else None (:func:`lock_holder`)."""
        return lock_holder(self.path)

    def lock(self) -> "RunLock":
        """The writer's lock (:class:`RunLock`), to be entered with ``with``."""
        return RunLock(self.path)

    @classmethod
    def is_saved_recipe(cls, path: str | os.PathLike) -> bool:
        """Whether ``path`` is the ``recipe.yaml`` a run saved (beside its checkpoint or
        results), rather than a recipe a person wrote."""
        path = Path(path)
        run = cls(path.parent)
        return path.name == cls.RECIPE and (run.checkpoint.is_file() or run.results.is_file())

    # ------------------------------------------------------------------------------- listings
    @classmethod
    def runs_under(cls, root: str | os.PathLike) -> list["RunDir"]:
        """The run directories directly under ``root`` (sorted by name: by start time for
        ``lttrain``'s default names)."""
        root = Path(root)
        if not root.is_dir():
            return []
        return [cls(p) for p in sorted(root.iterdir())
                if p.is_dir() and (cls(p).holds_run() or cls(p).checkpoint.is_file())]

    @classmethod
    def unfinished_under(cls, root: str | os.PathLike) -> list["RunDir"]:
        """The run directories directly under ``root`` that ``--resume`` can continue."""
        return [run for run in cls.runs_under(root) if run.is_unfinished()]


# ----------------------------------------------------------------------------- atomic writes
TEMP_SUFFIX = ".tmp"


class DiskFullError(LTError, OSError):
    """The disk filled while a file was written; the previous version of the file is kept."""


class WritesRefused(LTError, OSError):
    """A file would have been written inside :func:`no_writes`; nothing was."""


_REFUSING: list[str] = []  # why, for each enclosing no_writes block


@contextlib.contextmanager
def no_writes(reason: str) -> Iterator[None]:
    """Within the block, every write of this module raises :class:`WritesRefused` instead.

    Every file lttoolbox writes goes through :func:`atomic_write` (results, checkpoints, the
    decode cache), so a check that must leave the disk as it found it can build a run exactly as
    training does inside this block (``lttrain --print-config``): a decode cache that would be
    written on its first use is not (its loader reports the refusal and goes on).
    """
    _REFUSING.append(reason)
    try:
        yield
    finally:
        _REFUSING.pop()


class WriteError(LTError, OSError):
    """A file could not be written (a read-only file system, no permission, a folder in the
    way); the previous version of the file, if any, is kept."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class _RecordingWriter:
    """The temporary file as ``write(handle)`` sees it: every call passes through, and an
    ``OSError`` raised by a write is kept before it propagates.

    A writer may swallow the error and raise its own instead: ``torch.save`` calls ``write``
    from C++, and a full disk surfaces as ``RuntimeError: [enforce fail at
    inline_container.cc] ... unexpected pos``. The kept error still tells what happened.
    """

    def __init__(self, handle):
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data):
        try:
            return self._handle.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str):
        return getattr(self._handle, name)


def _disk_full(err: BaseException, recorded: OSError | None) -> bool:
    """Whether ``err``, an error it was raised from or during, or a write error a writer
    swallowed, says that the disk is full."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            return True
        err = err.__cause__ or err.__context__
    return recorded is not None and recorded.errno in DISK_FULL


def temp_name(path: Path) -> Path:
    """The temporary name of ``path``'s next version (see :func:`is_temp_file`)."""
    return path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def is_temp_file(path: Path) -> bool:
    """Whether ``path`` is a temporary file this module creates (left behind by a crash)."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX) and path.is_file()


def atomic_write(path: str | os.PathLike, write: Callable[[object], None], binary: bool) -> None:
    """Create a temporary file, let ``write(handle)`` fill it, then rename it over ``path``.

    Raises:
        DiskFullError: no space was left (also when the writer turned the write's error into
            another, as ``torch.save`` does); ``path`` keeps its previous content.
        WriteError: ``path`` cannot be written (read-only, no permission, a folder there).
        WritesRefused: inside :func:`no_writes`; nothing is written.
    """
    path = Path(path)
    if _REFUSING:
        raise WritesRefused(f"{path} is not written: {_REFUSING[-1]}")
    tmp = temp_name(path)
    recorder = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as handle:
            recorder = _RecordingWriter(handle)
            write(recorder)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):  # there may be no temporary file, nor a folder for it
            tmp.unlink(missing_ok=True)
        if isinstance(err, Exception) and _disk_full(err, recorder and recorder.error):
            raise DiskFullError(f"no space left on the device while writing {path}; its previous "
                                f"version is kept. Free some space and run the command again "
                                f"(an interrupted run continues with --resume)") from None
        if isinstance(err, OSError) and not isinstance(err, LTError):
            reason = "it is a folder" if os.path.isdir(path) else (err.strerror or str(err))
            raise WriteError(f"cannot write {path}: {reason}") from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file (UTF-8) atomically."""
    atomic_write(path, lambda handle: handle.write(text), binary=False)


def atomic_write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write JSON atomically (indent 2, keys in insertion order, a final newline)."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# ---------------------------------------------------------------------- the writer and its lock

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
        fd = os.open(RunDir(self.out).lock_file, os.O_RDWR | os.O_CREAT, 0o666)
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


def lock_holder(out: str | os.PathLike) -> str | None:
    """The process id recorded in ``<out>/.lock`` while a live process holds the lock, else
    ``None``.

    Takes no lock that outlives the call and writes nothing (a run directory on a read-only file
    system, or with no ``.lock`` at all, is simply not held). The lock is ``flock``: it ends with
    the process that took it, so a held lock means a live writer, never a stale file. The probe
    is a non-blocking shared ``flock`` released at once; a writer that starts in that instant is
    refused as if it were a second writer, which it can retry.
    """
    try:
        fd = os.open(RunDir(out).lock_file, os.O_RDONLY)
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
    removed = RunDir(out).temp_files()
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


# ------------------------------------------------------------------ log.jsonl and metrics.csv
CSV_FIELDS = ("phase", "epoch", "loss", "lr", "seconds", "images_per_second")
EVAL_FIELDS = ("top1", "mean_class_acc", "many", "medium", "few")
#: A multi-label run's evaluation columns.
MULTILABEL_EVAL_FIELDS = ("mAP", "head_mAP", "medium_mAP", "tail_mAP")


def csv_line(row: dict, terms: tuple = (), fields: tuple = EVAL_FIELDS) -> str:
    """One ``metrics.csv`` line: the epoch's fields, its loss terms (empty in a phase without
    them), then its evaluation's ``fields`` (empty without one)."""
    evaluation = row.get("eval") or {}
    parts = row.get("loss_terms") or {}
    values = ([row[f] for f in CSV_FIELDS] + [parts.get(t) for t in terms]
              + [evaluation.get(f) for f in fields])
    return ",".join("" if v is None else str(v) for v in values) + "\n"


def csv_header(terms: tuple = (), fields: tuple = EVAL_FIELDS) -> str:
    """``metrics.csv``'s header: a ``loss_<name>`` column per loss term any phase logs, then an
    ``eval_<metric>`` column per evaluation field (:data:`MULTILABEL_EVAL_FIELDS` for a
    multi-label run)."""
    return ",".join(CSV_FIELDS + tuple(f"loss_{t}" for t in terms)
                    + tuple(f"eval_{f}" for f in fields)) + "\n"


def write_log(out: Path, history: list[dict], terms: tuple = (),
              fields: tuple = EVAL_FIELDS) -> None:
    """``log.jsonl`` (one JSON line per trained epoch) and ``metrics.csv`` (the same, one row per
    epoch, with a column per name in ``terms``), both rewritten atomically from ``history``."""
    run = RunDir(out)
    atomic_write_text(run.log, "".join(json.dumps(row) + "\n" for row in history))
    atomic_write_text(run.metrics, csv_header(terms, fields)
                      + "".join(csv_line(row, terms, fields) for row in history))


def append_log(out: Path, row: dict, terms: tuple = (), fields: tuple = EVAL_FIELDS) -> None:
    """Add one epoch to ``log.jsonl`` and ``metrics.csv`` (the checkpointed history stays the
    reference they are rewritten from; ``terms`` as given to :func:`write_log`)."""
    run = RunDir(out)
    with open(run.log, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    with open(run.metrics, "a", encoding="utf-8") as handle:
        handle.write(csv_line(row, terms, fields))
