"""Finished runs as one archive, to carry results off a machine and merge them into a report.

A GPU window returns a few files only, so every finished run's ``results.json``, ``log.jsonl``
and ``recipe.yaml`` (not its checkpoints or weights) go into one ``.tar.gz``, with paths relative
to the leaderboard's output folder (``runs/<setting>/<row>/seed<k>/...``). Merging extracts such
an archive into another output folder, where ``--report-only`` then finds the runs exactly as if
they had run there: the report matches each ``results.json`` to its planned recipe by hash.

Example:
    >>> pack(Path("runs/lb/gpu"), Path("out/results.tar.gz"))  # doctest: +SKIP
    12
    >>> merge(Path("out/results.tar.gz"), Path("runs/lb/c10-paper"))  # doctest: +SKIP
    12
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath

KEPT = ("results.json", "log.jsonl", "recipe.yaml")
LIMIT = 16 * 2 ** 20  # what one file brought back from a GPU window may weigh


class ArchiveError(ValueError):
    """An archive that cannot be written within the limit or safely merged."""


def finished_runs(out: Path) -> list[Path]:
    """Run folders under ``out/runs`` that hold a ``results.json``."""
    return sorted(p.parent for p in (out / "runs").glob("*/*/seed*/results.json"))


def pack(out: Path, archive: Path, limit: int = LIMIT) -> int:
    """Write the finished runs of ``out`` into ``archive``; returns how many.

    Raises:
        ArchiveError: the archive would exceed ``limit`` bytes (it is not left behind).
    """
    buffer = io.BytesIO()
    runs = finished_runs(out)
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for run in runs:
            for name in KEPT:
                path = run / name
                if path.is_file():
                    tar.add(path, arcname=str(path.relative_to(out).as_posix()))
    if buffer.tell() > limit:
        raise ArchiveError(f"{len(runs)} runs make {buffer.tell():,} bytes, over the "
                           f"{limit:,}-byte limit of one file")
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(archive)
    return len(runs)


def merge(archive: Path, out: Path) -> int:
    """Extract an archive written by :func:`pack` into ``out``; returns the runs it held.

    Only ``runs/<setting>/<row>/seed<k>/{results.json,log.jsonl,recipe.yaml}`` members are
    accepted: no absolute path, no ``..``, no link, nothing else.

    Raises:
        ArchiveError: naming the archive and the first member that is not such a file.
    """
    try:
        tar = tarfile.open(archive, mode="r:gz")
    except (OSError, tarfile.TarError) as err:
        raise ArchiveError(f"{archive}: not a readable .tar.gz ({err})") from None
    runs = set()
    with tar:
        members = tar.getmembers()
        for member in members:
            parts = PurePosixPath(member.name).parts
            if (not member.isfile() or len(parts) != 5 or parts[0] != "runs"
                    or not parts[3].startswith("seed") or parts[4] not in KEPT
                    or any(p in ("", ".", "..") for p in parts)):
                raise ArchiveError(f"{archive}: unexpected member {member.name!r}; expected "
                                   f"runs/<setting>/<row>/seed<k>/{{{','.join(KEPT)}}}")
        for member in members:
            target = out.joinpath(*PurePosixPath(member.name).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            data = tar.extractfile(member).read()
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
            runs.add(target.parent)
    return len(runs)
