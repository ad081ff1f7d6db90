"""Fault sweep: many malformed inputs and random kill -9 trials against ``lttrain``.

Reports the figures the reliability work is judged by: cases tried, clear one-line errors,
tracebacks (goal 0), half-written run directories (goal 0) and kill -9 trials whose resumed run
equals the uninterrupted one (goal: all). The test suite keeps a fixed subset of these
(tests/test_faults.py); this script tries many more, with random kill times.

The leaderboard's cases (benchmarks/lb/faults.py) are part of the sweep: bad ``--merge``
archives, counted as clear errors, misleading errors and tracebacks, and ``kill -9`` of a running
leaderboard (``--lb-kills``), whose ``lttrain`` must end with it and whose rerun must succeed.

Usage::

    python benchmarks/fault_sweep.py --kills 30 --lb-kills 5 --out runs/fault_sweep
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lttoolbox.cli import main  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from lb import faults as lb_faults  # noqa: E402

DIGITS = {"data": {"name": "digits_lt", "imbalance_ratio": 10},
          "model": {"name": "digits_cnn"}, "optim": {"lr": 0.05},
          "train": {"epochs": 1, "batch_size": 64},
          "eval": {"many_threshold": 60, "few_threshold": 25}}
TWO_STAGE = {**DIGITS, "data": {"name": "digits_lt", "imbalance_ratio": 10, "crop_padding": 1,
                                "hflip": True},
             "train": {"epochs": 4, "batch_size": 64, "checkpoint_every": 2},
             "stages": [{"name": "joint"},
                        {"name": "crt", "sampler": {"name": "class_balanced"},
                         "train": {"epochs": 3, "freeze": ["backbone"], "reset_head": True,
                                   "checkpoint_every": 1}}]}

# Keys the trainer reads, and values none of them accepts (or accepts only where valid: an
# accepted case trains one short epoch and is reported as accepted, not as a failure).
KEYS = ["train.epochs", "train.batch_size", "train.seed", "train.checkpoint_every",
        "train.device", "train.amp", "train.channels_last", "train.drop_last", "train.reset_head",
        "train.freeze", "optim.lr", "optim.momentum", "optim.weight_decay", "optim.nesterov",
        "optim.no_decay", "schedule.name", "schedule.milestones", "schedule.gamma",
        "schedule.min_lr", "schedule.warmup_epochs", "schedule.warmup_unit", "eval.every",
        "eval.many_threshold", "eval.few_threshold", "eval.ece_bins", "eval.batch_size", "meta",
        "loss.gamma", "sampler.start_epoch", "data.imbalance_ratio"]
VALUES = ["abc", "[1, 2]", ".nan", "1e400", "-7", "maybe", "{a: 1}", "null"]
FILES = {
    "duplicate_key": "data: {name: digits_lt}\nmodel: {name: digits_cnn}\nmodel: {name: x}\n",
    "deep_nesting": "a: " + "[" * 500 + "]" * 500 + "\n",
    "empty": "",
    "comments_only": "# train:\n",
    "list_top": "- data\n",
    "tabs": "data:\n\t name: digits_lt\n",
    "unclosed": "data: {name: digits_lt\n",
    "unknown_section": "data: {name: digits_lt}\nmodel: {name: digits_cnn}\ntrian: {}\n",
    "base_missing": "_base_: nowhere.yaml\n",
    "base_loop": "_base_: base_loop.yaml\n",
    "stage_escape": yaml.safe_dump({**DIGITS, "stages": [{"name": "x/../../escaped"}]}),
    "stage_nested": yaml.safe_dump({**DIGITS, "stages": [{"name": "a", "stages": []}]}),
}
# What a file case's message must name besides the file itself (a key inside it, a base file).
FILE_KEYS = {"unknown_section": "trian", "base_missing": "nowhere.yaml",
             "stage_escape": "stages[0].name", "stage_nested": "stages[0].stages"}


def run_inproc(args: list[str]) -> dict:
    """``lttrain`` in this process: exit code, output lines, and whether anything escaped."""
    out, err = io.StringIO(), io.StringIO()
    escaped = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except BaseException:  # noqa: BLE001 - a traceback is exactly what is being counted
            code, escaped = None, traceback.format_exc().splitlines()[-1]
    lines = [line for line in (err.getvalue() + out.getvalue()).splitlines() if line.strip()]
    return {"code": code, "lines": lines, "traceback": escaped}


def malformed_cases(work: Path) -> list[dict]:
    base = work / "digits.yaml"
    base.write_text(yaml.safe_dump(DIGITS))
    cases = [{"name": f"{key}={value}", "args": [str(base), f"{key}={value}"], "key": key}
             for key in KEYS for value in VALUES]
    for name, text in FILES.items():
        path = work / f"{name}.yaml"
        path.write_text(text)
        cases.append({"name": f"file:{name}", "args": [str(path)],
                      "key": FILE_KEYS.get(name, str(path))})
    latin = work / "latin.yaml"
    latin.write_bytes("data: {name: digits_lt}  # caf\xe9\n".encode("latin-1"))
    cases.append({"name": "file:not_utf8", "args": [str(latin)], "key": str(latin)})
    afile = work / "afile"
    afile.write_text("x")
    cases += [{"name": "out:is_a_file", "args": [str(base)], "out": str(afile), "key": "--out"},
              {"name": "out:under_a_file", "args": [str(base)], "out": str(afile / "r"),
               "key": "--out"}]
    return cases


def sweep_malformed(work: Path) -> dict:
    results = []
    for i, case in enumerate(malformed_cases(work)):
        out = Path(case.get("out") or work / "runs" / f"case{i}")
        before = out.exists()
        got = run_inproc([*case["args"], "--out", str(out), "--quiet"])
        accepted = got["code"] == 0
        clear = (got["code"] in (1, 2) and len(got["lines"]) == 1
                 and got["lines"][0].startswith("error:"))
        named = clear and (case["key"] in got["lines"][0] or case["key"].split(".")[0]
                           in got["lines"][0])
        half_written = not accepted and not before and out.exists()
        results.append({**case, **got, "accepted": accepted, "clear": clear, "named": named,
                         "half_written": half_written})
    return {"cases": results,
            "tried": len(results),
            "accepted": sum(r["accepted"] for r in results),
            "clear_errors": sum(r["clear"] for r in results),
            "naming_the_key": sum(r["named"] for r in results),
            "tracebacks": sum(r["traceback"] is not None for r in results),
            "half_written": sum(r["half_written"] for r in results)}


def lttrain(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lttoolbox.cli", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def history(out: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [(r["stage"], r["epoch"], r["loss"], r["lr"]) for r in rows]


def sweep_kills(work: Path, trials: int, seed: int) -> dict:
    recipe = work / "two_stage.yaml"
    recipe.write_text(yaml.safe_dump(TWO_STAGE))
    reference = work / "reference"
    start = time.monotonic()
    proc = lttrain(str(recipe), "--out", str(reference), "--quiet")
    proc.communicate()
    duration = time.monotonic() - start
    expected = json.loads((reference / "results.json").read_text())
    expected_log = history(reference)
    rng = random.Random(seed)
    trials_doc = []
    for i in range(trials):
        out = work / "kills" / f"trial{i}"
        delay = rng.uniform(0.2, duration)
        proc = lttrain(str(recipe), "--out", str(out), "--quiet")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        killed_finished = (out / "results.json").exists()
        resumed = lttrain(str(recipe), "--out", str(out), "--quiet",
                          *(["--resume"] if out.exists() else []))
        output, _ = resumed.communicate()
        ok = resumed.returncode == 0 and (out / "results.json").exists()
        same = ok and json.loads((out / "results.json").read_text())["per_class_acc"] == \
            expected["per_class_acc"] and history(out) == expected_log
        trials_doc.append({"delay_s": round(delay, 2), "finished_before_kill": killed_finished,
                           "resumed_ok": ok, "identical": same,
                           "output": output.strip().splitlines()[-1:] if not ok else []})
    return {"trials": trials_doc, "tried": trials,
            "identical": sum(t["identical"] for t in trials_doc),
            "uninterrupted_seconds": round(duration, 1)}


def main_cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="random kill -9 trials")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--lb-kills", type=int, default=3,
                        help="kill -9 trials of a running leaderboard")
    parser.add_argument("--out", type=Path, help="where to write fault_sweep.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        malformed = sweep_malformed(work)
        kills = sweep_kills(work, args.kills, args.seed) if args.kills else None
        lb_merge = lb_faults.sweep_merge(work / "leaderboard")
        lb_kills = (lb_faults.sweep_kills(work / "leaderboard", args.lb_kills, args.seed)
                    if args.lb_kills else None)
    summary = {k: v for k, v in malformed.items() if k != "cases"}
    print(f"malformed inputs: {summary}")
    for case in malformed["cases"]:
        if case["traceback"] or case["half_written"] or not (case["clear"] or case["accepted"]):
            print(f"  PROBLEM {case['name']}: {case['traceback'] or case['lines'][:2]}")
        elif case["accepted"]:
            print(f"  accepted (valid there): {case['name']}")
    if kills:
        print(f"kill -9 trials: {kills['identical']} of {kills['tried']} identical to the "
              f"uninterrupted run ({kills['uninterrupted_seconds']} s uninterrupted)")
    for line in lb_faults.report(lb_merge, lb_kills):
        print(line)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fault_sweep.json").write_text(json.dumps(
            {"malformed": malformed, "kills": kills,
             "leaderboard": {"merge": lb_merge, "kills": lb_kills}},
            indent=2, default=str) + "\n")
    bad = (malformed["tracebacks"] + malformed["half_written"]
           + lb_faults.problems(lb_merge, lb_kills))
    return 1 if bad or (kills and kills["identical"] != kills["tried"]) else 0


if __name__ == "__main__":
    sys.exit(main_cli())
