"""Finished runs as one archive, to carry results off a machine and merge them into a report.

A GPU window returns a few files only, so every finished run's ``results.json``, ``log.jsonl``
and ``recipe.yaml``, with the runner's record of its attempts (``leaderboard_run.json``) and
``lttrain.log`` where the leaderboard ran it (not its checkpoints or weights), go into one
``.tar.gz``, with paths relative to the leaderboard's output folder
(``runs/<setting>/<row>/seed<k>/...``). Merging extracts such an archive into another output
folder, where ``--report-only`` then finds the runs exactly as if they had run there: the report
matches each ``results.json`` to its planned recipe by hash, and reads the wall time (and whether
it is a lower bound) from the two runner files.

A merge trusts nothing in the archive. The whole archive is read and checked before anything is
written: every member's path, type and size, every file's content (``results.json`` with a
numeric top-1, or the suite's metric: ``mAP`` for a multi-label suite; ``log.jsonl`` one JSON
object per line, ``recipe.yaml`` a mapping, ``leaderboard_run.json`` a list of attempts whose
wall times are numbers, ``lttrain.log`` text), and every run
against the local one it would land on. A local run is never replaced unless asked
(``overwrite``), and then it is moved aside, not deleted. Any problem is one :class:`ArchiveError`
line naming the archive and the member.

An *unfinished* run travels too, to be continued on another machine (a GPU window that ended
mid-run, a machine that is given back between sittings): ``pack(..., unfinished=True)`` writes the
runs that hold a ``checkpoint.pt`` and no ``results.json``, each as its checkpoint with the files
a resume reads or keeps (:data:`CARRIED`). A merge checks such a checkpoint as ``lttrain
--resume`` would load it (``torch.load(weights_only=True)``: tensors and plain values only, with
an lttoolbox checkpoint's keys); the runner then resumes the run from it (its saved recipe must
hash as the planned one). The resumed run's ``leaderboard_run.json`` keeps the attempts of both
machines, so its wall time is their sum.

Example:
    >>> pack(Path("runs/lb/gpu"), Path("out/results.tar.gz"))  # doctest: +SKIP
    12
    >>> merge(Path("out/results.tar.gz"), Path("runs/lb/c10-paper"))  # doctest: +SKIP
    12
    >>> pack(Path("runs/lb/c10-paper"), Path("carry.tar.gz"), unfinished=True)  # doctest: +SKIP
    2
"""
from __future__ import annotations

import gzip
import io
import json
import math
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..rundir import RunDir, atomic_write
from ..upgrade import upgrade_record
from ..yamlio import load_yaml
from .metrics import metric_spec

KEPT = (RunDir.RESULTS, RunDir.LOG, RunDir.RECIPE, RunDir.LEADERBOARD, RunDir.RUNNER_LOG)
# An unfinished run: its checkpoint, the recipe a resume checks it against, and the files the run
# keeps (its data facts, its history as a log, the runner's attempts and output).
CARRIED = (RunDir.CHECKPOINT, RunDir.RECIPE, RunDir.DATA, RunDir.LOG, RunDir.LEADERBOARD,
           RunDir.RUNNER_LOG)
LIMIT = 16 * 2 ** 20  # what one file brought back from a GPU window may weigh
UNPACKED_LIMIT = 4 * LIMIT  # all members of one archive together, uncompressed
# The order a run's files are written in: what marks a run, its checkpoint (resumable, once its
# recipe is there) or results.json (finished), last.
WRITE_ORDER = (RunDir.RECIPE, RunDir.DATA, RunDir.LOG, RunDir.LEADERBOARD, RunDir.RUNNER_LOG,
               RunDir.CHECKPOINT, RunDir.RESULTS)
NAMES = tuple(dict.fromkeys(KEPT + CARRIED))
MEMBER = re.compile(r"runs/([A-Za-z0-9][A-Za-z0-9_.-]*)/([A-Za-z0-9][A-Za-z0-9_.-]*)/"
                    r"(seed\d+)/(" + "|".join(map(re.escape, NAMES)) + ")")
EXPECTED = f"runs/<setting>/<row>/seed<k>/{{{','.join(NAMES)}}}"
METRICS = metric_spec("top1").numbers[1:]  # besides top1: number or null (see _check_results)
COSTS = ("seconds", "images_per_second", "compile_seconds")


class ArchiveError(ValueError):
    """An archive that cannot be written within the limit or safely merged."""


def finished_runs(out: Path) -> list[Path]:
    """Run folders ``out/runs/<setting>/<row>/seed<k>`` that hold a ``results.json``; a run
    moved aside (``seed<k>.stale-<time>``, ``.replaced-<time>``, or renamed by hand) is not one
    of the table's, and a merge would refuse its path."""
    return sorted(p.parent for p in (out / "runs").glob(f"*/*/seed*/{RunDir.RESULTS}")
                  if re.fullmatch(r"seed\d+", p.parent.name))


def unfinished_runs(out: Path) -> list[Path]:
    """Run folders ``out/runs/<setting>/<row>/seed<k>`` that hold a ``checkpoint.pt`` and no
    ``results.json`` (as :func:`finished_runs`, a run moved aside is none of them)."""
    return sorted(p.parent for p in (out / "runs").glob(f"*/*/seed*/{RunDir.CHECKPOINT}")
                  if re.fullmatch(r"seed\d+", p.parent.name)
                  and not (p.parent / RunDir.RESULTS).exists())


# ------------------------------------------------------------------------------ content checks
def _number(value, lo: float | None = None, hi: float | None = None) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and (lo is None or value >= lo)
            and (hi is None or value <= hi))


def _check_results(data: dict, metric: str = "top1") -> str | None:
    """What is wrong with a ``results.json`` the report of a ``metric`` suite would read, or
    None."""
    spec = metric_spec(metric)
    if not isinstance(data, dict):
        return f"results.json must hold a JSON object, not {type(data).__name__}"
    if not isinstance(data.get("recipe_hash"), str) or not data["recipe_hash"]:
        return "'recipe_hash' must be a non-empty string"
    if data.get("protocol") is not None and not isinstance(data["protocol"], str):
        return f"'protocol' must be a string, got {data['protocol']!r}"
    if not _number(data.get(spec.key), 0, 100):
        return f"'{spec.key}' must be a number from 0 to 100, got {data.get(spec.key)!r}"
    for key in spec.numbers[1:]:
        if data.get(key) is not None and not _number(data[key]):
            return f"'{key}' must be a number or null, got {data[key]!r}"
    for key in COSTS:
        if data.get(key) is not None and not _number(data[key], 0):
            return f"'{key}' must be a number >= 0 or null, got {data[key]!r}"
    if data.get(spec.per_class) is not None and not (
            isinstance(data[spec.per_class], list)
            and all(a is None or _number(a) for a in data[spec.per_class])):
        return f"'{spec.per_class}' must be a list of numbers or nulls"
    for key in ("train_class_counts", "test_class_counts"):
        if data.get(key) is not None and not (
                isinstance(data[key], list) and all(_number(c, 0) for c in data[key])):
            return f"'{key}' must be a list of counts"
    for key, kind in (("history", list), ("phases", list), ("machine", dict),
                      ("selection", dict), ("commits", list)):
        if data.get(key) is not None and not isinstance(data[key], kind):
            return f"'{key}' must be a JSON {'array' if kind is list else 'object'}"
    for key in ("history", "phases"):
        if any(not isinstance(r, dict) for r in data.get(key) or []):
            return f"every entry of '{key}' must be a JSON object"
    if any(not isinstance(c, dict) for c in (data.get("selection") or {}).values()):
        return "every entry of 'selection' must be a JSON object"
    return None


def _check_log_row(row, metric: str = "top1") -> str | None:
    if not isinstance(row, dict):
        return f"a JSON object per line, not {type(row).__name__}"
    evaluation = row.get("eval")
    if evaluation is not None and not (isinstance(evaluation, dict)
                                       and _number(evaluation.get(metric), 0, 100)):
        return f"'eval' must be an object with a numeric '{metric}'"
    return None


def _check_attempts(data) -> str | None:
    """What is wrong with a ``leaderboard_run.json`` the report reads wall times from, or
    None."""
    if not isinstance(data, dict) or not isinstance(data.get("attempts"), list):
        return "leaderboard_run.json must hold a JSON object with an 'attempts' list"
    for number, attempt in enumerate(data["attempts"], start=1):
        if not isinstance(attempt, dict):
            return f"attempt {number} must be a JSON object"
        wall = attempt.get("wall_seconds")
        if wall is not None and not _number(wall, 0):
            return f"attempt {number}: 'wall_seconds' must be a number >= 0 or null, got {wall!r}"
    return None


def _check_checkpoint(data: bytes) -> str | None:
    """What keeps ``lttrain --resume`` from loading these bytes as a checkpoint, or None: they
    are read as it reads them (plain data only, so a crafted file runs no code here either)."""
    from ..engine.checkpoint import CheckpointError, load_checkpoint
    from ..engine.state import CHECKPOINT_KEYS

    try:
        state = upgrade_record(load_checkpoint("the checkpoint", "pack it again from its run",
                                               data=data))
    except CheckpointError as err:
        return str(err)
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= set(state):
        return "not an lttoolbox checkpoint (its keys are not a run's state)"
    return None


def check_file(name: str, data: bytes, metric: str = "top1") -> str | None:
    """What is wrong with one run file's content (``name`` one of :data:`KEPT` or
    :data:`CARRIED`) for the report of a ``metric`` suite, or a resume, or None."""
    if name == RunDir.CHECKPOINT:
        return _check_checkpoint(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not UTF-8 text ({err.reason} at byte {err.start})"
    if name in (RunDir.RESULTS, RunDir.LEADERBOARD):
        try:
            parsed = json.loads(text)
        except ValueError as err:
            return f"not valid JSON ({err})"
        if name == RunDir.LEADERBOARD:
            return _check_attempts(parsed)
        # upgrade: a pack from before phases were so named
        return _check_results(upgrade_record(parsed), metric)
    if name == RunDir.RUNNER_LOG:
        return None  # text the report only counts attempt lines in
    if name == RunDir.DATA:
        try:
            parsed = json.loads(text)
        except ValueError as err:
            return f"not valid JSON ({err})"
        return None if isinstance(parsed, dict) else "data.json must hold a JSON object"
    if name == RunDir.LOG:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                problem = _check_log_row(json.loads(line), metric)
            except ValueError as err:
                problem = f"not valid JSON ({err})"
            if problem:
                return f"line {number}: {problem}"
        return None
    try:
        recipe = load_yaml(text)
    except Exception as err:  # noqa: BLE001 - any parser failure is the same bad file
        return f"not valid YAML ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    return None if isinstance(recipe, dict) else "recipe.yaml must hold a mapping"


# ------------------------------------------------------------------------------------- pack
def pack(out: Path, archive: Path, limit: int = LIMIT,
         skipped: list[tuple[Path, str]] | None = None, metric: str = "top1",
         unfinished: bool = False) -> int:
    """Write the finished runs of ``out`` into ``archive``; returns how many.

    A run whose files :func:`merge` would refuse (``results.json`` without a numeric top-1, or
    ``metric``, a file over ``limit``, ...) is left out and appended to ``skipped`` as
    ``(folder, why)``, so every archive written here merges into a suite of that metric.

    With ``unfinished``, the unfinished runs instead (:func:`unfinished_runs`), each as the
    files of :data:`CARRIED`. A run still training is packed as its last checkpoint (written
    atomically, so whole); stop it first (SIGTERM: it checkpoints at its next step and records
    its attempt) to carry all of its progress and its wall time. With no unfinished run there
    is nothing to carry: no archive is written, and an earlier one at ``archive`` is removed
    (its runs have finished since, and merged beside their results it would be refused).

    Raises:
        ArchiveError: the archive, or its content unpacked, would exceed its limit (``limit``
            packed, :data:`UNPACKED_LIMIT` unpacked); no archive is left behind.
    """
    if unfinished and not unfinished_runs(out):
        archive.unlink(missing_ok=True)
        return 0
    buffer = io.BytesIO()
    runs, unpacked = [], 0
    # Same runs, same bytes: the gzip header and every member carry time 0, not the time of
    # packing or of the file (a merge rewrites files), so republishing unchanged results
    # leaves the committed archive unchanged instead of adding a new binary to the history.
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped, \
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for run in (unfinished_runs if unfinished else finished_runs)(out):
            files = {}
            for name in CARRIED if unfinished else KEPT:
                path = run / name
                if path.is_file() and not path.is_symlink():
                    files[name] = path.read_bytes()
            problem = None
            for name, data in files.items():
                why = (f"{len(data):,} bytes, over the {limit:,}-byte limit"
                       if len(data) > limit else check_file(name, data, metric))
                if why:
                    problem = f"{name}: {why}"
                    break
            if problem:
                if skipped is not None:
                    skipped.append((run, problem))
                continue
            for name, data in files.items():
                info = tarfile.TarInfo((run / name).relative_to(out).as_posix())
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
                unpacked += len(data)
            runs.append(run)
    if buffer.tell() > limit:
        raise ArchiveError(f"{len(runs)} runs make {buffer.tell():,} bytes, over the "
                           f"{limit:,}-byte limit of one file")
    if unpacked > UNPACKED_LIMIT:
        raise ArchiveError(f"{len(runs)} runs make {unpacked:,} bytes unpacked, over the "
                           f"{UNPACKED_LIMIT:,}-byte limit of a merge")
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(archive)
    return len(runs)


# ------------------------------------------------------------------------------------ merge
@dataclass
class MergePlan:
    """What merging one archive will do, decided before anything is written."""

    archive: Path
    runs: dict[str, dict[str, bytes]]  # "runs/<setting>/<row>/seed<k>" -> {file name: content}
    replace: dict[str, str] = field(default_factory=dict)  # run -> why the local one differs
    unchanged: set[str] = field(default_factory=set)  # runs already there, byte for byte


def read_archive(archive: Path, limit: int = LIMIT,
                 metric: str = "top1") -> dict[str, dict[str, bytes]]:
    """Read and check a whole :func:`pack` archive for a suite of ``metric``; nothing is written.

    Returns:
        The runs it holds: ``"runs/<setting>/<row>/seed<k>"`` -> {file name: bytes}.

    Raises:
        ArchiveError: one line naming the archive and the first member at fault: the archive
            is not a complete ``.tar.gz`` or weighs more than ``limit``; a member is not a
            regular file at ``runs/<setting>/<row>/seed<k>/NAME`` with NAME one of
            :data:`KEPT`, comes twice, weighs more than ``limit`` (or all together more than
            :data:`UNPACKED_LIMIT`), or its content is not what the report reads; a run has no
            ``results.json``.
    """
    try:
        size = archive.stat().st_size
    except OSError as err:
        raise ArchiveError(f"{archive}: cannot be read ({err.strerror or err})") from None
    if not archive.is_file():
        raise ArchiveError(f"{archive}: is not a file; expected a .tar.gz written by --pack")
    if size > limit:
        raise ArchiveError(f"{archive}: {size:,} bytes, over the {limit:,}-byte limit of an "
                           f"archive (the same as --pack's)")
    runs: dict[str, dict[str, bytes]] = {}
    total, name = 0, None
    try:
        _check_gzip(archive)
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:  # one header at a time: a huge member stops here, unread
                name = member.name
                match = MEMBER.fullmatch(name)
                if match is None:
                    raise ArchiveError(f"{archive}: unexpected member {name!r}; expected "
                                       f"{EXPECTED}")
                if not member.isreg():
                    raise ArchiveError(f"{archive}: member {name!r} is not a regular file "
                                       f"(a link, a folder or a device); expected {EXPECTED}")
                if member.size > limit:
                    raise ArchiveError(f"{archive}: member {name!r} weighs {member.size:,} "
                                       f"bytes, over the {limit:,}-byte limit (the same as "
                                       f"--pack's)")
                total += member.size
                if total > UNPACKED_LIMIT:
                    raise ArchiveError(f"{archive}: members up to {name!r} weigh {total:,} "
                                       f"bytes unpacked, over the {UNPACKED_LIMIT:,}-byte limit")
                run, file = name.rsplit("/", 1)
                if file in runs.get(run, {}):
                    raise ArchiveError(f"{archive}: member {name!r} comes twice")
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise EOFError(f"member {name!r} ends after {len(data):,} of "
                                   f"{member.size:,} bytes")
                problem = check_file(file, data, metric)
                if problem:
                    raise ArchiveError(f"{archive}: member {name!r}: {problem}")
                runs.setdefault(run, {})[file] = data
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        where = f" after member {name!r}" if name else ""
        raise ArchiveError(f"{archive}: not a complete .tar.gz (truncated or corrupt{where}: "
                           f"{err})") from None
    if not runs:
        raise ArchiveError(f"{archive}: holds no run; expected {EXPECTED}")
    for run, files in sorted(runs.items()):
        # a run is finished (its results) or unfinished (a checkpoint and its recipe), not both
        if RunDir.RESULTS in files:
            extra = sorted(set(files) - set(KEPT))
            if extra:
                raise ArchiveError(f"{archive}: member {run + '/' + extra[0]!r} comes with "
                                   f"{RunDir.RESULTS}: a finished run carries {', '.join(KEPT)}")
        elif RunDir.CHECKPOINT in files:
            if RunDir.RECIPE not in files:
                raise ArchiveError(f"{archive}: member {run + '/' + RunDir.RECIPE!r} is missing: "
                                   f"an unfinished run resumes only against its saved recipe")
        else:
            raise ArchiveError(f"{archive}: member {run + '/' + RunDir.RESULTS!r} is missing: "
                               f"{run} holds {', '.join(sorted(files))} only (a run needs its "
                               f"{RunDir.RESULTS}, or a {RunDir.CHECKPOINT} to resume from)")
    return runs


def _check_gzip(archive: Path) -> None:
    """Decompress the whole stream once, discarding it: tar stops reading at its end-of-archive
    blocks, so an archive cut inside the gzip trailer (its checksum) would pass unnoticed.

    Raises:
        EOFError: the stream is cut short; ArchiveError: data follows it, or it unpacks to more
            than twice :data:`UNPACKED_LIMIT` (tar headers and padding add to the members).
    """
    stream = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing
    unpacked, cap = 0, 2 * UNPACKED_LIMIT
    with open(archive, "rb") as handle:
        while not stream.eof:
            chunk = handle.read(1 << 16)
            if not chunk:
                raise EOFError("the gzip stream ends before its end-of-stream marker")
            while chunk and not stream.eof:
                unpacked += len(stream.decompress(chunk, 1 << 20))
                if unpacked > cap:
                    raise ArchiveError(f"{archive}: unpacks to more than {cap:,} bytes")
                chunk = stream.unconsumed_tail
        if stream.unused_data or handle.read(1):
            raise ArchiveError(f"{archive}: data follows the end of its gzip stream")


def _local_difference(run_dir: Path, files: dict[str, bytes]) -> str | None:
    """Why writing ``files`` into ``run_dir`` would replace or shadow a local run, or None."""
    if not run_dir.exists() and not run_dir.is_symlink():
        return None
    if run_dir.is_symlink() or not run_dir.is_dir():
        return f"{run_dir} is not a run folder"
    for name in WRITE_ORDER:
        target = run_dir / name
        if name in files and (target.exists() or target.is_symlink()):
            if not target.is_file() or target.is_symlink() or target.read_bytes() != files[name]:
                return f"its local {name} differs"
    if RunDir.RESULTS not in files and (run_dir / RunDir.RESULTS).exists():
        return "it is finished here"
    if (RunDir.CHECKPOINT not in files and (run_dir / RunDir.CHECKPOINT).exists()
            and not (run_dir / RunDir.RESULTS).exists()):
        return "it holds a local checkpoint (an unfinished run)"
    return None


def plan_merge(archives: list[Path], out: Path, overwrite: bool = False,
               limit: int = LIMIT, metric: str = "top1") -> list[MergePlan]:
    """Read and check every archive (for a suite of ``metric``), and decide what merging them
    into ``out`` does.

    Raises:
        ArchiveError: an archive is bad (see :func:`read_archive`), two archives hold different
            copies of one run, or, without ``overwrite``, an archive's run would replace a
            local one (a finished run, or files that differ from the archive's).
    """
    plans, seen = [], {}
    for archive in archives:
        runs = read_archive(Path(archive), limit, metric)
        plan = MergePlan(Path(archive), runs)
        for run, files in sorted(runs.items()):
            if run in seen and seen[run][1] != files:
                raise ArchiveError(f"{archive}: member {run + '/' + RunDir.RESULTS!r} differs from "
                                   f"the copy in {seen[run][0]}; merge one of them")
            seen[run] = (archive, files)
            run_dir = out.joinpath(*PurePosixPath(run).parts)
            why = _local_difference(run_dir, files)
            if why is None:
                if all((run_dir / n).is_file() for n in files):
                    plan.unchanged.add(run)
                continue
            if not overwrite:
                raise ArchiveError(
                    f"{archive}: member {run + '/' + RunDir.RESULTS!r} would replace the local run "
                    f"{run_dir} ({why}); nothing was merged. Keep the local run, or add "
                    f"--merge-overwrite to move it aside to {run_dir.name}.replaced-<time> "
                    f"and merge")
            plan.replace[run] = why
        plans.append(plan)
    return plans


def apply_merge(plan: MergePlan, out: Path) -> list[tuple[Path, Path]]:
    """Write a checked :class:`MergePlan` into ``out``; returns ``(run folder, where its local
    run was moved)`` for every local run it replaced."""
    from .runner import move_aside  # the runner's rule: rename, never delete

    moved = []
    for run, files in sorted(plan.runs.items()):
        if run in plan.unchanged:
            continue
        run_dir = out.joinpath(*PurePosixPath(run).parts)
        if run in plan.replace and (run_dir.exists() or run_dir.is_symlink()):
            moved.append((run_dir, move_aside(run_dir, "replaced")))
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in WRITE_ORDER:
            if name in files:
                atomic_write(run_dir / name, lambda handle, data=files[name]: handle.write(data),
                             binary=True)
    return moved


def merge(archive: Path, out: Path, overwrite: bool = False, metric: str = "top1") -> int:
    """Check an archive written by :func:`pack` whole, then extract it into ``out``; returns
    the runs it held.

    Raises:
        ArchiveError: see :func:`plan_merge`; nothing is written then.
    """
    plan = plan_merge([archive], out, overwrite, metric=metric)[0]
    apply_merge(plan, out)
    return len(plan.runs)
