"""The leaderboard's fault cases, for ``benchmarks/fault_sweep.py``: bad ``--merge`` archives and
``kill -9`` of a running leaderboard.

Merge cases run ``leaderboard.main`` in this process on the embedded digits data (nothing
trains: ``--report-only``) and count, per case, a *clear error* (exit 2 and exactly one
``error:`` line naming the archive and, where one is at fault, the member), a *misleading error*
(any other refusal: several lines, or a line that does not name them), a *traceback*, and a
refusal that *wrote* into the output folder anyway. Valid archives are controls that must be
accepted. Kill trials start the leaderboard on one digits run, ``kill -9`` it at a random moment
of its training, and check that its ``lttrain`` child stops with it (within ``STOP_SECONDS``,
without finishing the run), that a rerun started at once exits 0 without a failure, and that the
resumed run equals an uninterrupted one.

Example:
    >>> sweep = sweep_merge(Path("/tmp/lb-faults"))  # doctest: +SKIP
    >>> sweep["tracebacks"], sweep["misleading_errors"]  # doctest: +SKIP
    (0, 0)
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

import yaml

from ..rundir import RunDir
from .archive import LIMIT

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
RUN = "runs/exp10/ce/seed0"
STOP_SECONDS = 30  # how long a killed runner's child may take to checkpoint and stop


def digits_suite(work: Path) -> Path:
    """A one-row suite on the digits (the quickstart recipe; ``paper``: its own 30 epochs)."""
    path = work / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "digits_faults", "baseline": "ce", "references": None,
        "settings": [{"id": "exp10", "overlay": {"data": {"imbalance_type": "exp",
                                                          "imbalance_ratio": 10}}}],
        "rows": [{"id": "ce", "label": "CE", "recipe": str(QUICKSTART)},
                 {"id": "focal", "label": "Focal", "recipe": str(QUICKSTART),
                  "overlay": {"loss": {"name": "focal", "gamma": 1.0}}}]}))
    return path


# ------------------------------------------------------------------------------ merge cases
# The planned hash of the suite's runs under smoke, so that the report reads a merged
# results.json as it would a real one (set by merge_cases).
_HASH = {"value": "unset"}


def _results(top1=71.5, **extra) -> bytes:
    return json.dumps({"recipe_hash": _HASH["value"], "protocol": "smoke", "top1": top1,
                       **extra}).encode()


def _run(run: str = RUN, top1=71.5) -> list:
    return [(f"{run}/{RunDir.RECIPE}", b"train: {epochs: 1}\n"),
            (f"{run}/{RunDir.LOG}", b'{"epoch": 0, "eval": {"top1": 60.0}}\n'),
            (f"{run}/{RunDir.RESULTS}", _results(top1))]


def _info(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def _tgz(path: Path, members: list) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return path


def merge_cases(work: Path, suite: Path) -> list[dict]:
    """Each case: ``archives`` to merge, ``names`` its error must contain (empty: accepted),
    ``local`` (a finished local run to put in the way) and ``flags``."""
    from .suite import Planner, load_suite

    _HASH["value"] = Planner(load_suite(suite), "smoke", work).plan("ce", "exp10", 0).hash
    good = _run("runs/exp10/focal/seed0")  # a valid run before the bad member
    shaped = {
        "results_not_json": [(f"{RUN}/{RunDir.RESULTS}", b"{not json")],
        "results_top1_text": [(f"{RUN}/{RunDir.RESULTS}", _results("abc"))],
        "results_top1_null": [(f"{RUN}/{RunDir.RESULTS}", _results(None))],
        "results_top1_nan": [(f"{RUN}/{RunDir.RESULTS}", _results(float("nan")))],
        "results_top1_over_100": [(f"{RUN}/{RunDir.RESULTS}", _results(250.0))],
        "results_top1_bool": [(f"{RUN}/{RunDir.RESULTS}", _results(True))],
        "results_a_list": [(f"{RUN}/{RunDir.RESULTS}", b"[1, 2]")],
        "results_no_hash": [(f"{RUN}/{RunDir.RESULTS}", b'{"top1": 50}')],
        "results_metric_text": [(f"{RUN}/{RunDir.RESULTS}", _results(few="low"))],
        "results_history_text": [(f"{RUN}/{RunDir.RESULTS}", _results(history="x"))],
        "results_not_utf8": [(f"{RUN}/{RunDir.RESULTS}", b"\xff\xfe\x00")],
        "results_empty": [(f"{RUN}/{RunDir.RESULTS}", b"")],
        "log_bad_line": [(f"{RUN}/{RunDir.LOG}", b'{"epoch": 0}\n{oops\n'),
                         (f"{RUN}/{RunDir.RESULTS}", _results())],
        "log_eval_text": [(f"{RUN}/{RunDir.LOG}", b'{"eval": {"top1": "hi"}}\n'),
                          (f"{RUN}/{RunDir.RESULTS}", _results())],
        "recipe_bad_yaml": [(f"{RUN}/{RunDir.RECIPE}", b"a: [1\n"),
                            (f"{RUN}/{RunDir.RESULTS}", _results())],
        "recipe_a_list": [(f"{RUN}/{RunDir.RECIPE}", b"- 1\n"),
                          (f"{RUN}/{RunDir.RESULTS}", _results())],
        "no_results": [(f"{RUN}/{RunDir.LOG}", b"")],
        "duplicate": [*_run(), (f"{RUN}/{RunDir.RESULTS}", _results())],
        "symlink": [_info(f"{RUN}/{RunDir.RESULTS}", tarfile.SYMTYPE, "/etc/passwd")],
        "hardlink": [_info(f"{RUN}/{RunDir.RESULTS}", tarfile.LNKTYPE, "runs/x")],
        "folder": [_info(f"{RUN}/{RunDir.RESULTS}", tarfile.DIRTYPE)],
        "fifo": [_info(f"{RUN}/{RunDir.RESULTS}", tarfile.FIFOTYPE)],
        "escape": [(f"runs/exp10/../../../escape/seed0/{RunDir.RESULTS}", _results())],
        "absolute": [(f"/tmp/lb-fault-absolute/{RunDir.RESULTS}", _results())],
        "checkpoint": [(f"{RUN}/{RunDir.CHECKPOINT}", b"weights")],
        "bad_seed": [(f"runs/exp10/ce/seedX/{RunDir.RESULTS}", _results())],
        "member_over_limit": [(f"{RUN}/{RunDir.LOG}", b" " * (LIMIT + 1)),
                              (f"{RUN}/{RunDir.RESULTS}", _results())],
    }
    member_named = {  # what the one error line must name besides the archive
        "escape": "escape", "absolute": "/tmp/lb-fault-absolute", "checkpoint": RunDir.CHECKPOINT,
        "bad_seed": "seedX", "log_bad_line": RunDir.LOG, "log_eval_text": RunDir.LOG,
        "recipe_bad_yaml": RunDir.RECIPE, "recipe_a_list": RunDir.RECIPE,
        "member_over_limit": RunDir.LOG}
    cases = []
    for name, members in shaped.items():
        archive = _tgz(work / f"{name}.tar.gz", good + members)
        cases.append({"name": f"merge:{name}", "archives": [archive],
                      "names": [str(archive), member_named.get(name, RunDir.RESULTS)]})
    whole = _tgz(work / "whole.tar.gz", _run() + good)
    data = whole.read_bytes()
    for cut in (1, 10, len(data) // 3, len(data) // 2, len(data) - 8, len(data) - 1):
        part = work / f"cut{cut}.tar.gz"
        part.write_bytes(data[:cut])
        cases.append({"name": f"merge:truncated_at_{cut}_of_{len(data)}", "archives": [part],
                      "names": [str(part)]})
    plain = work / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        info = tarfile.TarInfo(f"{RUN}/{RunDir.RESULTS}")
        info.size = len(_results())
        tar.addfile(info, io.BytesIO(_results()))
    trailing = work / "trailing.tar.gz"
    trailing.write_bytes(data + b"garbage")
    empty = work / "empty.tar.gz"
    empty.write_bytes(b"")
    heavy = work / "heavy.tar.gz"
    heavy.write_bytes(b"\0" * (LIMIT + 1))
    nothing = _tgz(work / "nothing.tar.gz", [])
    other = _tgz(work / "other.tar.gz", _run(top1=12.0))
    for name, path in (("not_gzip", plain), ("trailing_data", trailing), ("empty_file", empty),
                       ("archive_over_limit", heavy), ("no_runs", nothing),
                       ("missing_file", work / "absent.tar.gz"), ("a_folder", work)):
        cases.append({"name": f"merge:{name}", "archives": [path], "names": [str(path)]})
    cases += [
        {"name": "merge:two_archives_disagree", "archives": [whole, other],
         "names": [str(other), RunDir.RESULTS]},
        {"name": "merge:replaces_local_finished_run", "archives": [whole], "local": True,
         "names": [str(whole), RunDir.RESULTS, "--merge-overwrite"]},
        # controls: accepted
        {"name": "merge:valid (control)", "archives": [whole], "names": []},
        {"name": "merge:valid_twice (control)", "archives": [whole], "twice": True, "names": []},
        {"name": "merge:replaces_local_with_flag (control)", "archives": [whole], "local": True,
         "flags": ["--merge-overwrite"], "names": []},
    ]
    return cases


def _leaderboard_inproc(args: list[str]) -> dict:
    """``benchmarks/leaderboard.py`` in this process: exit code, stderr lines, escaped error."""
    from .cli import main

    out, err = io.StringIO(), io.StringIO()
    escaped = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except BaseException:  # noqa: BLE001 - a traceback is what is being counted
            code, escaped = None, traceback.format_exc().splitlines()[-1]
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return {"code": code, "stderr": lines, "traceback": escaped}


def _snapshot(folder: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def sweep_merge(work: Path) -> dict:
    """Run every merge case; the counts the reliability work is judged by."""
    work.mkdir(parents=True, exist_ok=True)
    suite = digits_suite(work)
    results = []
    for i, case in enumerate(merge_cases(work, suite)):
        out = work / "homes" / f"case{i}"
        if case.get("local"):
            local = out / RUN
            local.mkdir(parents=True)
            (local / RunDir.RESULTS).write_bytes(_results(50.0))
            (local / RunDir.CHECKPOINT).write_bytes(b"local weights")
        args = [str(suite), "--protocol", "smoke", "--out", str(out), "--report-only",
                "--no-plots", "--merge", *map(str, case["archives"]), *case.get("flags", [])]
        if case.get("twice"):
            _leaderboard_inproc(args)
        runs_before = _snapshot(out / "runs")
        got = _leaderboard_inproc(args)
        expected_ok = not case["names"]
        accepted = got["code"] == 0
        one_line = (got["code"] == 2 and len(got["stderr"]) == 1
                    and got["stderr"][0].startswith("error:"))
        clear = one_line and all(n in got["stderr"][0] for n in case["names"])
        refused = not accepted and got["traceback"] is None
        outside = [work / "homes" / "escape", Path("/tmp/lb-fault-absolute")]
        wrote = refused and (_snapshot(out / "runs") != runs_before
                             or any(p.exists() for p in outside))
        if case.get("local") and accepted:  # the local run must survive, moved aside
            kept = list((out / RUN).parent.glob(f"seed0.replaced-*/{RunDir.CHECKPOINT}"))
            accepted = bool(kept)
        results.append({"name": case["name"], **got, "expected_ok": expected_ok,
                        "accepted": accepted, "clear": clear and not expected_ok,
                        "misleading": refused and not clear and not expected_ok,
                        "wrote": wrote})
    refusals = [r for r in results if not r["expected_ok"]]
    controls = [r for r in results if r["expected_ok"]]
    return {"cases": results, "tried": len(refusals),
            "clear_errors": sum(r["clear"] for r in refusals),
            "misleading_errors": sum(r["misleading"] for r in refusals),
            "tracebacks": sum(r["traceback"] is not None for r in results),
            "accepted_bad": sum(r["accepted"] for r in refusals),
            "wrote_before_refusing": sum(r["wrote"] for r in refusals),
            "controls": len(controls), "controls_accepted": sum(r["accepted"] for r in controls)}


# ------------------------------------------------------------------------------- kill trials
def _ended(pid: int) -> bool:
    """Gone, or a zombie nobody reaped (it holds no lock and runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def _leaderboard(args: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "leaderboard.py"), *args],
                            cwd=REPO, **popen)


def sweep_kills(work: Path, trials: int, seed: int = 0) -> dict:
    """``kill -9`` of a leaderboard running one digits run (30 epochs) at random moments of its
    ``lttrain`` child's training (5 % to 90 % of an uninterrupted run's wall time)."""
    work.mkdir(parents=True, exist_ok=True)
    suite = digits_suite(work)

    def args(out: Path) -> list[str]:
        return [str(suite), "--protocol", "paper", "--rows", "ce", "--out", str(out),
                "--no-plots"]

    reference = work / "reference"
    _leaderboard(args(reference), stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL).wait()
    expected = json.loads((reference / RUN / RunDir.RESULTS).read_text())
    # the lttrain run's own wall time: the kills land while it trains
    duration = json.loads((reference / RUN / RunDir.LEADERBOARD).read_text())[
        "attempts"][-1]["wall_seconds"]
    rng = random.Random(seed)
    doc = []
    for i in range(trials):
        out = work / f"kill{i}"
        delay = rng.uniform(0.05, 0.9) * duration
        runner = _leaderboard(args(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while not (out / RUN / RunDir.LOCK).is_file() and runner.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.1)  # the child is started (its lock written)
        time.sleep(delay)
        results = out / RUN / RunDir.RESULTS
        try:
            child = int((out / RUN / RunDir.LOCK).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            child = None  # not started
        training = child is not None and not _ended(child) and not results.exists()
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        rerun = _leaderboard(args(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
        # Stopped, not finished: it ends within STOP_SECONDS without writing its results.
        deadline = time.monotonic() + STOP_SECONDS
        while training and not _ended(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        stopped = training and _ended(child) and not results.exists()
        if training and not _ended(child):
            os.kill(child, signal.SIGKILL)  # an orphan must not train on into the next trial
        output, _ = rerun.communicate()
        ok = (rerun.returncode == 0 and results.is_file() and "FAILED" not in output
              and "in use by another run" not in output)
        same = ok and json.loads(results.read_text())["per_class_acc"] == \
            expected["per_class_acc"]
        doc.append({"delay_s": round(delay, 2), "child": child, "child_training": training,
                    "child_stopped": stopped, "rerun_code": rerun.returncode, "rerun_ok": ok,
                    "identical": same,
                    "output": output.strip().splitlines()[-3:] if not ok else []})
    return {"trials": doc, "tried": trials,
            "children_training": sum(t["child_training"] for t in doc),
            "children_stopped": sum(t["child_stopped"] for t in doc),
            "reruns_ok": sum(t["rerun_ok"] for t in doc),
            "identical": sum(t["identical"] for t in doc),
            "uninterrupted_seconds": round(duration, 1)}  # the lttrain run alone


def report(merge: dict | None, kills: dict | None) -> list[str]:
    """The sweep's lines for the leaderboard cases."""
    lines = []
    if merge:
        lines.append(f"leaderboard --merge: {merge['tried']} bad archives, "
                     f"{merge['clear_errors']} clear errors, {merge['misleading_errors']} "
                     f"misleading errors, {merge['tracebacks']} tracebacks, "
                     f"{merge['accepted_bad']} accepted, {merge['wrote_before_refusing']} "
                     f"wrote before refusing; {merge['controls_accepted']} of "
                     f"{merge['controls']} valid archives accepted")
        for case in merge["cases"]:
            bad = (case["traceback"] or case["wrote"]
                   or (case["expected_ok"] != case["accepted"])
                   or (not case["expected_ok"] and not case["clear"]))
            if bad:
                lines.append(f"  PROBLEM {case['name']}: code {case['code']}, "
                             f"{case['traceback'] or case['stderr'][:2]}")
    if kills:
        lines.append(f"leaderboard kill -9: {kills['tried']} trials, {kills['children_stopped']} "
                     f"of {kills['children_training']} training children stopped with the runner "
                     f"(within {STOP_SECONDS} s, results unwritten), {kills['reruns_ok']} reruns "
                     f"exited 0 "
                     f"without a failure, {kills['identical']} identical to the uninterrupted "
                     f"run ({kills['uninterrupted_seconds']} s uninterrupted)")
    return lines


def problems(merge: dict | None, kills: dict | None) -> int:
    """How many leaderboard results miss their goal (0 is a pass)."""
    count = 0
    if merge:
        count += (merge["misleading_errors"] + merge["tracebacks"] + merge["accepted_bad"]
                  + merge["wrote_before_refusing"] + merge["controls"]
                  - merge["controls_accepted"])
    if kills:
        count += (kills["children_training"] - kills["children_stopped"]
                  + 2 * kills["tried"] - kills["reruns_ok"] - kills["identical"])
    return count
