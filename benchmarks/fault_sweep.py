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


# ==================================================================================================
# Component values, output paths and a full disk: every recipe parameter of every registered
# component set to values none of them accepts, the messages that used to name the wrong key or
# problem, values that were accepted without a word, ltpredict/lteval output paths and weights,
# and a checkpoint written onto a full disk (then resumed). A clear error is one line that starts
# with the full key (or names the file); a misleading one is any other single error line.
# ==================================================================================================
COMPONENT_VALUES = ["{bad: 1}", "abc", "-7", "[1, 2]"]
TAU_STAGE = ("stages=[{name: joint}, {name: tau, train: {epochs: 0}, model: {head: "
             "{name: tau_norm, %s}}}]")
CAM_STAGE = "stages=[{name: joint}, {name: cam, augment: [%s]%s}]"
ONE_OF = "augment=[{name: one_of, choices: [%s, {name: cutmix}], p: [0.5, 0.5]}]"
# (overrides, the start of the expected line after "error: ")
NAMED_CASES = [
    ((TAU_STAGE % "tau: auto, grid: 0.5",), "stages[1].model.head.grid"),
    ((TAU_STAGE % "tau: auto, grid: []",), "stages[1].model.head.grid"),
    ((TAU_STAGE % "tau: 1.0, grid: [0.5, 1.0]",), "stages[1].model.head.grid"),
    ((ONE_OF % "{name: cam_resample}",), "augment[0].choices[0].name"),
    ((ONE_OF % "{name: mixup, p: 0.3}",), "augment[0].choices[0].p"),
    ((ONE_OF % "{name: one_of, choices: [mixup, cutmix], p: [0.5, 0.5]}",),
     "augment[0].choices[0].name"),
    ((ONE_OF % "mixupp",), "augment[0].choices[0].name"),
    (("generator={name: rsg, stage: layer2, mv_terms: [foo]}",), "generator.mv_terms"),
    (("generator={name: ftl, stage: layer2, feature_shape: [5]}",), "generator.feature_shape"),
    (("augment=[{name: cmo, weighting: paper}]",), "augment[0].weighting"),
    (("augment=[{name: cmo, r: -1}]",), "augment[0].r"),
    (("sampler={name: cmo_weighted, r: -1}",), "sampler.r"),
    (("augment=[{name: manifold_mixup, stage: [layer1, layer9]}]",), "augment[0].stage"),
    (("augment=[{name: cam_resample}]",), "augment[0]"),
    ((CAM_STAGE % ("{name: cam_resample}", ", train: {epochs: 0}"),), "stages[1].augment[0]"),
    ((CAM_STAGE % ("{name: cam_resample}, {name: cam_resample}", ""),), "stages[1].augment[1]"),
    ((CAM_STAGE % ("{name: cam_resample, threshold: 50}", ""),),
     "stages[1].augment[0].threshold"),
    (("sampler={name: instance, end_epoch: true}",), "sampler.end_epoch"),
    (("loss={name: cb, base: ce, gamma: 2}",), "loss.gamma"),
    (("loss={name: ce, weights: {name: effective_number, beta: 2}}",), "loss.weights.beta"),
]


def component_parameter_cases() -> list[tuple[tuple[str, ...], str]]:
    """Every recipe parameter of every sampler, loss, augmentation, generator and head (read
    from the registries), each set to every value of COMPONENT_VALUES."""
    from lttoolbox import AUGMENTS, GENERATORS, LOSSES, SAMPLERS
    from lttoolbox.models.heads import HEADS
    from lttoolbox.registry import recipe_parameters

    cases = []
    for section, registry in (("sampler", SAMPLERS), ("loss", LOSSES), ("augment", AUGMENTS),
                              ("generator", GENERATORS), ("head", HEADS)):
        for name in registry.names():
            for param in (p.name for p in recipe_parameters(registry, name)):
                for value in COMPONENT_VALUES:
                    extra = {"one_of": ", choices: [mixup, cutmix], p: [0.5, 0.5]",
                             "tau_norm": ", tau: auto"}.get(name, "")
                    if name == "one_of" and param in ("choices", "p"):
                        extra = ", p: [0.5, 0.5]" if param == "choices" else \
                            ", choices: [mixup, cutmix]"
                    if section == "generator" and param != "stage":
                        extra = ", stage: layer2"
                    if name == "tau_norm" and param == "tau":
                        extra = ""
                    entry = f"{{name: {name}, {param}: {value}{extra}}}"
                    if name == "cam_resample":
                        cases.append(((CAM_STAGE % (entry, ""),), f"stages[1].augment[0].{param}"))
                    elif section == "augment":
                        cases.append(((f"augment=[{entry}]",), f"augment[0].{param}"))
                    elif section == "head":
                        cases.append(((f"stages=[{{name: a}}, {{name: b, model: {{head: {entry}}},"
                                       f" train: {{epochs: 0}}}}]",),
                                      f"stages[1].model.head.{param}"))
                    else:
                        cases.append(((f"{section}={entry}",), f"{section}.{param}"))
    return cases


def run_tool(tool, args: list[str]) -> dict:
    """A command's ``main`` in this process, as :func:`run_inproc` runs ``lttrain``."""
    out, err = io.StringIO(), io.StringIO()
    escaped = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = tool(args)
        except BaseException:  # noqa: BLE001 - a traceback is exactly what is being counted
            code, escaped = None, traceback.format_exc().splitlines()[-1]
    lines = [line for line in (err.getvalue() + out.getvalue()).splitlines() if line.strip()]
    return {"code": code, "lines": lines, "traceback": escaped}


def classify(got: dict, key: str, out: Path, existed: bool) -> dict:
    """One case's outcome: accepted, clear (one line starting with the key), misleading (any
    other single error line), traceback (anything escaped or several lines), half-written."""
    accepted = got["code"] == 0
    one_line = (got["code"] in (1, 2) and len(got["lines"]) == 1
                and got["lines"][0].startswith("error:"))
    clear = one_line and got["lines"][0].startswith(f"error: {key}")
    return {**got, "accepted": accepted, "clear": clear, "misleading": one_line and not clear,
            "traceback": got["traceback"] or (not accepted and not one_line and "several lines"),
            "half_written": not accepted and not existed and out.exists()}


def sweep_components(work: Path) -> dict:
    """Recipe cases through ``lttrain`` (in this process), output-path and weights cases through
    ``ltpredict`` and ``lteval``, and a full disk under ``torch.save`` with its resume."""
    import torch

    from lttoolbox.cli_eval import main as lteval
    from lttoolbox.cli_predict import main as ltpredict

    base = work / "components.yaml"
    base.write_text(yaml.safe_dump({**DIGITS, "data": {**DIGITS["data"], "val_per_class": 5}}))
    results = []
    cases = [(o, k, "named") for o, k in NAMED_CASES]
    cases += [(o, k, "parameter") for o, k in component_parameter_cases()]
    for i, (overrides, key, kind) in enumerate(cases):
        out = work / "components" / f"case{i}"
        got = run_inproc([str(base), *overrides, "--out", str(out), "--quiet"])
        results.append({"name": " ".join(overrides), "kind": kind, "key": key,
                        **classify(got, key, out, False)})

    # a finished run whose last stage trains 0 epochs, for the output-path and weights cases
    finished = work / "components" / "tau_run"
    tau = work / "tau.yaml"
    tau.write_text(yaml.safe_dump({**DIGITS, "data": {**DIGITS["data"], "val_per_class": 5},
                                   "stages": [{"name": "joint"},
                                              {"name": "tau", "train": {"epochs": 0},
                                               "model": {"head": {"name": "tau_norm",
                                                                  "tau": "auto"}}}]}))
    assert main([str(tau), "--out", str(finished), "--quiet"]) == 0
    image = work / "one.png"
    from PIL import Image
    Image.new("L", (8, 8), 200).save(image)
    afile = work / "afile.txt"
    afile.write_text("x")
    bad_weights = work / "model-bad.pt"
    bad_weights.write_bytes(b"not weights")
    tool_cases = [
        ("ltpredict --out EXISTING_DIR", ltpredict, [str(finished), str(image), "--out", str(work)],
         "--out"),
        ("ltpredict --out under a file", ltpredict,
         [str(finished), str(image), "--out", str(afile / "p.csv")], "--out"),
        ("ltpredict --out /sys (refused to root)", ltpredict,
         [str(finished), str(image), "--out", "/sys/lttoolbox-predictions.csv"], "cannot write"),
        ("lteval --weights unreadable", lteval, [str(finished), "--weights", str(bad_weights)],
         str(bad_weights)),
        ("lteval a run whose last stage trains 0 epochs", lteval, [str(finished), "--quiet"],
         None),
    ]
    for name, tool, args, key in tool_cases:
        got = run_tool(tool, args)
        if key is None:  # must succeed
            results.append({"name": name, "kind": "tool", "key": "", **got,
                            "accepted": got["code"] == 0, "clear": got["code"] == 0,
                            "misleading": False, "traceback": got["traceback"] or
                            (got["code"] != 0 and "failed"), "half_written": False})
        else:
            results.append({"name": name, "kind": "tool", "key": key,
                            **classify(got, key, work / "never", False)})

    # a full disk: torch.save's failed write comes back as its RuntimeError, the first
    # checkpoint survives, and the resumed run equals the uninterrupted one
    reference = work / "components" / "disk_reference"
    two = work / "two_epochs.yaml"
    two.write_text(yaml.safe_dump({**DIGITS, "train": {"epochs": 2, "batch_size": 64}}))
    assert main([str(two), "--out", str(reference), "--quiet"]) == 0
    real_save, real_open, seen = torch.save, os.open, [0]

    def torch_like_save(obj, handle, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        failed = False
        try:
            handle.write(buffer.getvalue())
        except OSError:
            failed = True
        if failed:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")

    def full_at_second_checkpoint(path, flags, mode=0o777, **kwargs):
        if Path(path).name.startswith(".checkpoint.pt.") and str(path).endswith(".tmp"):
            seen[0] += 1
            if seen[0] == 2:
                return real_open("/dev/full", os.O_WRONLY)
        return real_open(path, flags, mode, **kwargs)

    full = work / "components" / "disk_full"
    torch.save, os.open = torch_like_save, full_at_second_checkpoint
    try:
        got = run_inproc([str(two), "--out", str(full), "--quiet"])
    finally:
        torch.save, os.open = real_save, real_open
    case = {"name": "full disk at the second checkpoint", "kind": "disk",
            "key": f"no space left on the device while writing {full}",
            **classify(got, f"no space left on the device while writing {full}", work / "x",
                       False)}
    resumed = run_inproc([str(two), "--out", str(full), "--resume", "--quiet"])
    case["resumed_identical"] = (resumed["code"] == 0 and json.loads(
        (full / "results.json").read_text())["per_class_acc"] == json.loads(
        (reference / "results.json").read_text())["per_class_acc"])
    results.append(case)
    return {"cases": results, "tried": len(results),
            "accepted": sum(bool(r["accepted"]) for r in results),
            "clear_errors": sum(bool(r["clear"]) and r["code"] != 0 for r in results),
            "misleading": sum(bool(r["misleading"]) for r in results),
            "tracebacks": sum(bool(r["traceback"]) for r in results),
            "half_written": sum(bool(r["half_written"]) for r in results),
            "disk_full_resumed_identical": case["resumed_identical"]}
# ====================================================================== end of the component sweep


def main_cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="random kill -9 trials")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--lb-kills", type=int, default=3,
                        help="kill -9 trials of a running leaderboard")
    parser.add_argument("--out", type=Path, help="where to write fault_sweep.json")
    parser.add_argument("--no-components", action="store_true",
                        help="skip the component-value, output-path and full-disk cases")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        malformed = sweep_malformed(work)
        components = None if args.no_components else sweep_components(work)
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
    if components:
        print(f"component values, output paths, full disk: "
              f"{ {k: v for k, v in components.items() if k != 'cases'} }")
        for case in components["cases"]:
            if case["traceback"] or case["half_written"] or case["misleading"]:
                print(f"  PROBLEM {case['name']}: {case['traceback'] or case['lines'][:2]}")
    if kills:
        print(f"kill -9 trials: {kills['identical']} of {kills['tried']} identical to the "
              f"uninterrupted run ({kills['uninterrupted_seconds']} s uninterrupted)")
    for line in lb_faults.report(lb_merge, lb_kills):
        print(line)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fault_sweep.json").write_text(json.dumps(
            {"malformed": malformed, "components": components, "kills": kills,
             "leaderboard": {"merge": lb_merge, "kills": lb_kills}},
            indent=2, default=str) + "\n")
    bad = (malformed["tracebacks"] + malformed["half_written"]
           + lb_faults.problems(lb_merge, lb_kills))
    if components:
        bad += (components["tracebacks"] + components["half_written"] + components["misleading"]
                + (not components["disk_full_resumed_identical"]))
    return 1 if bad or (kills and kills["identical"] != kills["tried"]) else 0


if __name__ == "__main__":
    sys.exit(main_cli())
