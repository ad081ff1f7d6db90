"""Files written so that a reader, a crash or a full disk never leaves half of one.

Each file is written to a temporary name beside it (``.<name>.<random>.tmp``), flushed, and renamed
over the target, so the target holds either its previous or its complete new content. Temporary
files get the user's normal mode (0666 minus the umask), like any other output of a run.

Example:
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
    >>> atomic_write_text(target, "hello\\n")
    >>> target.read_text()
    'hello\\n'
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path
from typing import Callable, Iterator

from .errors import LTError

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
