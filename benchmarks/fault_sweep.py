"""Fault sweep: many malformed inputs and random kill -9 trials against ``lttrain``.

Reports the figures the reliability work is judged by: cases tried, clear one-line errors,
misleading errors (one line that does not name the key or file; goal 0), tracebacks (goal 0),
half-written run directories (goal 0) and kill -9 trials whose resumed run equals the
uninterrupted one (goal: all). The test suite keeps a fixed subset of these (tests/test_faults.py,
tests/test_stream.py); this script tries many more, with random kill times.

Parts (``--parts``, all by default):

* ``malformed``: bad recipe values, files and ``--out`` paths;
* ``components``: every recipe parameter of every sampler, loss, augmentation, generator and head
  set to bad values, ``lteval``/``ltpredict`` output paths, and a full disk (resumed identically);
* ``kills``: random kill -9 trials of a two-phase digits recipe (in memory);
* ``files``: broken image files (truncated JPEG and PNG, empty, text named ``.jpg``,
  decompression bomb) in the training and the test split of each split format
  (``image_folder``, ``txt_list``, ``inaturalist``), on both data paths; and, on the streaming
  path, a training file broken during the run (one line, then a resume once it is repaired);
* ``path_kills``: kill -9 trials on both data paths (a generated image tree, streamed with 2
  workers or held in memory) with every mixing augmentation and every feature generator of the
  registries, each resumed at once (the orphaned workers of a streamed run must not hold it);
* ``leaderboard``: the leaderboard's cases (lttoolbox/leaderboard/faults.py): bad ``--merge``
  archives, counted as clear errors, misleading errors and tracebacks, and ``kill -9`` of a running
  leaderboard (``--lb-kills``), whose ``lttrain`` must end with it and whose rerun must succeed.

Usage::

    python benchmarks/fault_sweep.py --kills 30 --lb-kills 5 --out runs/fault_sweep
    python benchmarks/fault_sweep.py --parts files path_kills --path-kills 2
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

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lttoolbox.cli import main  # noqa: E402
from lttoolbox.leaderboard import faults as lb_faults  # noqa: E402
from lttoolbox.registry import AUGMENTS, GENERATORS  # noqa: E402
from lttoolbox.rundir import RunDir  # noqa: E402

DIGITS = {"data": {"name": "digits_lt", "imbalance_ratio": 10},
          "model": {"name": "digits_cnn"}, "optim": {"lr": 0.05},
          "train": {"epochs": 1, "batch_size": 64},
          "eval": {"many_threshold": 60, "few_threshold": 25}}
TWO_PHASE = {**DIGITS, "data": {"name": "digits_lt", "imbalance_ratio": 10, "crop_padding": 1,
                                "hflip": True},
             "train": {"epochs": 4, "batch_size": 64, "checkpoint_every": 2},
             "phases": [{"name": "joint"},
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
    "phase_escape": yaml.safe_dump({**DIGITS, "phases": [{"name": "x/../../escaped"}]}),
    "phase_nested": yaml.safe_dump({**DIGITS, "phases": [{"name": "a", "phases": []}]}),
}
# What a file case's message must name besides the file itself (a key inside it, a base file).
FILE_KEYS = {"unknown_section": "trian", "base_missing": "nowhere.yaml",
             "phase_escape": "phases[0].name", "phase_nested": "phases[0].phases"}


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
            "misleading": sum(r["clear"] and not r["named"] for r in results),
            "tracebacks": sum(r["traceback"] is not None for r in results),
            "half_written": sum(r["half_written"] for r in results)}


def lttrain(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lttoolbox.cli", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def history(out: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (out / RunDir.LOG).read_text().splitlines()]
    return [(r["phase"], r["epoch"], r["loss"], r["lr"]) for r in rows]


def sweep_kills(work: Path, trials: int, seed: int) -> dict:
    recipe = work / "two_phase.yaml"
    recipe.write_text(yaml.safe_dump(TWO_PHASE))
    reference = work / "reference"
    start = time.monotonic()
    proc = lttrain(str(recipe), "--out", str(reference), "--quiet")
    proc.communicate()
    duration = time.monotonic() - start
    expected = json.loads((reference / RunDir.RESULTS).read_text())
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
        killed_finished = (out / RunDir.RESULTS).exists()
        resumed = lttrain(str(recipe), "--out", str(out), "--quiet",
                          *(["--resume"] if out.exists() else []))
        output, _ = resumed.communicate()
        ok = resumed.returncode == 0 and (out / RunDir.RESULTS).exists()
        same = ok and json.loads((out / RunDir.RESULTS).read_text())["per_class_acc"] == \
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
TAU_PHASE = ("phases=[{name: joint}, {name: tau, train: {epochs: 0}, model: {head: "
             "{name: tau_norm, %s}}}]")
CAM_PHASE = "phases=[{name: joint}, {name: cam, augment: [%s]%s}]"
ONE_OF = "augment=[{name: one_of, choices: [%s, {name: cutmix}], p: [0.5, 0.5]}]"
# (overrides, the start of the expected line after "error: ")
NAMED_CASES = [
    ((TAU_PHASE % "tau: auto, grid: 0.5",), "phases[1].model.head.grid"),
    ((TAU_PHASE % "tau: auto, grid: []",), "phases[1].model.head.grid"),
    ((TAU_PHASE % "tau: 1.0, grid: [0.5, 1.0]",), "phases[1].model.head.grid"),
    ((ONE_OF % "{name: cam_resample}",), "augment[0].choices[0].name"),
    ((ONE_OF % "{name: mixup, p: 0.3}",), "augment[0].choices[0].p"),
    ((ONE_OF % "{name: one_of, choices: [mixup, cutmix], p: [0.5, 0.5]}",),
     "augment[0].choices[0].name"),
    ((ONE_OF % "mixupp",), "augment[0].choices[0].name"),
    (("generator={name: rsg, point: layer2, mv_terms: [foo]}",), "generator.mv_terms"),
    (("generator={name: ftl, point: layer2, feature_shape: [5]}",), "generator.feature_shape"),
    (("augment=[{name: cmo, weighting: paper}]",), "augment[0].weighting"),
    (("augment=[{name: cmo, r: -1}]",), "augment[0].r"),
    (("sampler={name: cmo_weighted, r: -1}",), "sampler.r"),
    (("augment=[{name: manifold_mixup, point: [layer1, layer9]}]",), "augment[0].point"),
    (("augment=[{name: cam_resample}]",), "augment[0]"),
    ((CAM_PHASE % ("{name: cam_resample}", ", train: {epochs: 0}"),), "phases[1].augment[0]"),
    ((CAM_PHASE % ("{name: cam_resample}, {name: cam_resample}", ""),), "phases[1].augment[1]"),
    ((CAM_PHASE % ("{name: cam_resample, threshold: 50}", ""),),
     "phases[1].augment[0].threshold"),
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
                    if section == "generator" and param != "point":
                        extra = ", point: layer2"
                    if name == "tau_norm" and param == "tau":
                        extra = ""
                    entry = f"{{name: {name}, {param}: {value}{extra}}}"
                    if name == "cam_resample":
                        cases.append(((CAM_PHASE % (entry, ""),), f"phases[1].augment[0].{param}"))
                    elif section == "augment":
                        cases.append(((f"augment=[{entry}]",), f"augment[0].{param}"))
                    elif section == "head":
                        cases.append(((f"phases=[{{name: a}}, {{name: b, model: {{head: {entry}}},"
                                       f" train: {{epochs: 0}}}}]",),
                                      f"phases[1].model.head.{param}"))
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

    # a finished run whose last phase trains 0 epochs, for the output-path and weights cases
    finished = work / "components" / "tau_run"
    tau = work / "tau.yaml"
    tau.write_text(yaml.safe_dump({**DIGITS, "data": {**DIGITS["data"], "val_per_class": 5},
                                   "phases": [{"name": "joint"},
                                              {"name": "tau", "train": {"epochs": 0},
                                               "model": {"head": {"name": "tau_norm",
                                                                  "tau": "auto"}}}]}))
    assert main([str(tau), "--out", str(finished), "--quiet"]) == 0
    image = work / "one.png"
    from PIL import Image
    Image.new("L", (8, 8), 200).save(image)
    afile = work / "afile.txt"
    afile.write_text("x")
    bad_weights = work / RunDir.weights_name("bad")
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
        ("lteval a run whose last phase trains 0 epochs", lteval, [str(finished), "--quiet"],
         None),
    ]
    for name, tool, args, key in tool_cases:
        got = run_tool(tool, args)
        if key is None:  # must succeed
            results.append({"name": name, "kind": "tool", "key": "", **got,
                            "accepted": got["code"] == 0, "clear": got["code"] == 0,
                            "named": got["code"] == 0,
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
        if Path(path).name.startswith(f".{RunDir.CHECKPOINT}.") and str(path).endswith(".tmp"):
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
        (full / RunDir.RESULTS).read_text())["per_class_acc"] == json.loads(
        (reference / RunDir.RESULTS).read_text())["per_class_acc"])
    results.append(case)
    return {"cases": results, "tried": len(results),
            "accepted": sum(bool(r["accepted"]) for r in results),
            "clear_errors": sum(bool(r["clear"]) and r["code"] != 0 for r in results),
            "misleading": sum(bool(r["misleading"]) for r in results),
            "tracebacks": sum(bool(r["traceback"]) for r in results),
            "half_written": sum(bool(r["half_written"]) for r in results),
            "disk_full_resumed_identical": case["resumed_identical"]}
# ====================================================================== end of the component sweep


# ------------------------------------------------------------------------------ image files
TREE_COUNTS = (24, 12, 6, 4)  # training images per class; 4 test images per class
DAMAGES = ("truncated_jpeg", "truncated_png", "empty", "text", "bomb")
FORMATS = ("image_folder", "txt_list", "inaturalist")


def image_tree(root: Path) -> dict:
    """A small long-tailed JPEG tree (``train/c<k>/`` and ``val/c<k>/``, 12 px, a colour per
    class so that it can be learnt), its text lists and its iNaturalist-style JSON files."""
    from PIL import Image

    rng = np.random.default_rng(0)
    splits: dict[str, list] = {"train": [], "test": []}
    for label, count in enumerate(TREE_COUNTS):
        for split, folder, n in (("train", "train", count), ("test", "val", 4)):
            for i in range(n):
                relative = f"{folder}/c{label}/{i:03d}.jpg"
                colour = np.array([60 * label, 255 - 60 * label, 40 * (i % 3)], dtype=float)
                pixels = np.clip(colour + rng.normal(0, 40, (12, 12, 3)), 0, 255)
                (root / relative).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels.astype(np.uint8)).save(root / relative, quality=90)
                splits[split].append((relative, label))
    for split, pairs in splits.items():
        (root / f"LT_{split}.txt").write_text("".join(f"{p} {c}\n" for p, c in pairs))
        (root / f"{split}.json").write_text(json.dumps({
            "images": [{"id": 100 + i, "file_name": p} for i, (p, _) in enumerate(pairs)],
            "annotations": [{"id": i, "image_id": 100 + i, "category_id": c}
                            for i, (_, c) in enumerate(pairs)],
            "categories": [{"id": c, "name": f"species_{c}"} for c in range(len(TREE_COUNTS))]}))
    return splits


def data_config(root: Path, form: str, path: str, cache: Path) -> dict:
    common = {"path": path, "image_size": 8, "cache_dir": str(cache), "imbalance_type": None}
    if form == "image_folder":
        return {"name": "image_folder", "root": str(root), "test_dir": "val", **common}
    if form == "txt_list":
        return {"name": "txt_list", "root": str(root), "train_list": str(root / "LT_train.txt"),
                "test_list": str(root / "LT_test.txt"), **common}
    return {"name": "inaturalist", "root": str(root), "train_json": str(root / "train.json"),
            "val_json": str(root / "test.json"), **common}


def damage(path: Path, kind: str) -> None:
    """Break an image file as files break: cut short, emptied, not an image, a bomb."""
    import struct
    import zlib

    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    if kind.startswith("truncated"):
        Image.fromarray(pixels).save(path, format="JPEG" if kind.endswith("jpeg") else "PNG")
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("id,label\n1,cat\n")
    else:  # a PNG header declaring 30,000 x 30,000 pixels over a few bytes of data
        def chunk(tag: bytes, data: bytes) -> bytes:
            return (struct.pack(">I", len(data)) + tag + data
                    + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
        path.write_bytes(b"\x89PNG\r\n\x1a\n"
                         + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
                         + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def tree_recipe(data: dict, epochs: int = 1, workers: int = 1, **extra) -> dict:
    return {"data": data, "model": {"name": "digits_cnn"}, "optim": {"lr": 0.05},
            "train": {"epochs": epochs, "batch_size": 8, "workers": workers, "seed": 0},
            "eval": {"many_threshold": 20, "few_threshold": 5}, **extra}


def sweep_files(work: Path) -> dict:
    """Broken files before the run (every kind, format, split and data path) and during it."""
    root = work / "tree"
    splits = image_tree(root)
    results = []
    for form in FORMATS:
        for path in ("stream", "memory"):
            for split in ("train", "test"):
                for kind in DAMAGES:
                    target = root / splits[split][-1][0]
                    saved = target.read_bytes()
                    damage(target, kind)
                    name = f"{form}:{path}:{split}:{kind}"
                    recipe = work / "files.yaml"
                    recipe.write_text(yaml.safe_dump(tree_recipe(
                        data_config(root, form, path, work / "cache"))))
                    out = work / "runs" / name.replace(":", "-")
                    try:
                        got = run_inproc([str(recipe), "--out", str(out), "--quiet"])
                    finally:
                        target.write_bytes(saved)
                    results.append(_judge(name, got, str(target), out, before=False))
    for form in FORMATS:  # a training file broken after the check, during the first epoch
        results.append(_broken_mid_run(work, root, splits, form))
    return _summary(results)


def _judge(name: str, got: dict, names: str, out: Path, before: bool) -> dict:
    lines = got["lines"]
    clear = (got["code"] == 2 and len(lines) == 1 and lines[0].startswith("error:")
             and got["traceback"] is None and not any("Traceback" in x for x in lines))
    named = clear and names in lines[0]
    return {"name": name, **got, "clear": clear, "named": named,
            "traceback": got["traceback"] or next((x for x in lines if "Traceback" in x), None),
            "half_written": not before and out.exists()}


def _broken_mid_run(work: Path, root: Path, splits: dict, form: str) -> dict:
    """Stream with 1 worker, break a training file once epoch 0 is logged: one line naming the
    file and the resume command; repaired and resumed, the run equals an uninterrupted one."""
    import lttoolbox.engine.trainer as trainer_module

    target = root / splits["train"][0][0]
    saved = target.read_bytes()
    recipe = work / f"mid_{form}.yaml"
    recipe.write_text(yaml.safe_dump(tree_recipe(
        data_config(root, form, "stream", work / "cache"), epochs=2)))
    reference = work / "runs" / f"mid-{form}-whole"
    run_inproc([str(recipe), "--out", str(reference), "--quiet"])
    out = work / "runs" / f"mid-{form}"
    real = trainer_module.append_log

    def append_and_break(*args, **kwargs):
        real(*args, **kwargs)
        trainer_module.append_log = real
        target.write_bytes(b"")

    trainer_module.append_log = append_and_break
    try:
        got = run_inproc([str(recipe), "--out", str(out), "--quiet"])
    finally:
        trainer_module.append_log = real
        target.write_bytes(saved)
    result = _judge(f"{form}:stream:train:broken_during_the_run", got, str(target), out,
                    before=True)
    result["named"] = result["named"] and got["lines"][0].endswith("--resume")
    resumed = run_inproc([str(recipe), "--out", str(out), "--resume", "--quiet"])
    result["resumed_identical"] = resumed["code"] == 0 and history(out) == history(reference) \
        and _accuracy(out) == _accuracy(reference)
    result["half_written"] = not result["resumed_identical"]
    return result


def _accuracy(out: Path) -> list:
    return json.loads((out / RunDir.RESULTS).read_text())["per_class_acc"]


def _summary(results: list[dict]) -> dict:
    return {"cases": results, "tried": len(results),
            "clear_errors": sum(r["clear"] for r in results),
            "naming_the_file": sum(r["named"] for r in results),
            "misleading": sum(r["clear"] and not r["named"] for r in results),
            "tracebacks": sum(r["traceback"] is not None for r in results),
            "half_written": sum(r["half_written"] for r in results)}


# --------------------------------------------------------------- kill -9 on both data paths
# Parameters an entry needs on the small model; every other entry is built with its defaults.
AUGMENT_PARAMS = {"cmo": {"p": 1.0}, "cutmix": {"p": 1.0}, "manifold_mixup": {"point": "input"},
                  "one_of": {"choices": [{"name": "mixup"}, {"name": "cmo"}], "p": [0.4, 0.4]}}
GENERATOR_PARAMS = {"rsg": {"contrastive_channels": 16, "generation_start_epoch": 1},
                    "delta_encoder": {"hidden": 32}}


def component_configs() -> list[tuple[str, dict]]:
    """Every mixing augmentation and every feature generator of the registries."""
    configs = [(f"augment:{name}", {"augment": [{"name": name, **AUGMENT_PARAMS.get(name, {})}]})
               for name, factory in sorted(AUGMENTS.entries.items())
               if getattr(factory, "mixes", False)]
    configs += [(f"generator:{name}", {"generator": {"name": name,
                                                     **GENERATOR_PARAMS.get(name, {})}})
                for name in sorted(GENERATORS.entries)]
    return configs


def _logged_epochs(out: Path) -> int:
    try:
        return len((out / RunDir.LOG).read_text().splitlines())
    except OSError:
        return -1  # training has not started


def sweep_path_kills(work: Path, trials: int, seed: int, only: list[str] | None = None,
                     paths: tuple[str, ...] = ("stream", "memory"), epochs: int = 3) -> dict:
    """kill -9 at a random moment of training after its first checkpoint (once ``k`` >= 1
    epochs are logged, then up to half a second: the resume must restore a checkpoint; kills
    before any are the ``kills`` part's), then an immediate ``--resume``; the result and the log
    must equal the uninterrupted run's. A kill that lands after the run finished is reported,
    not counted."""
    root = work / "tree"
    if not root.exists():
        image_tree(root)
    rng = random.Random(seed)
    doc: dict[str, list] = {path: [] for path in paths}
    for path in paths:
        for name, extra in component_configs():
            if only and name.split(":")[1] not in only:
                continue
            recipe = work / f"kill_{path}_{name.replace(':', '_')}.yaml"
            recipe.write_text(yaml.safe_dump(tree_recipe(
                data_config(root, "image_folder", path, work / "cache"), epochs=epochs,
                workers=2, **extra)))
            reference = work / "path_kills" / f"{path}-{name.replace(':', '-')}-whole"
            lttrain(str(recipe), "--out", str(reference), "--quiet").communicate()
            if not (reference / RunDir.RESULTS).exists():
                doc[path].append({"name": name, "error": "the uninterrupted run failed"})
                continue
            for trial in range(trials):
                out = work / "path_kills" / f"{path}-{name.replace(':', '-')}-{trial}"
                after, delay = rng.randrange(1, epochs), rng.uniform(0.0, 0.5)
                proc = lttrain(str(recipe), "--out", str(out), "--quiet")
                while proc.poll() is None and _logged_epochs(out) < after:
                    time.sleep(0.01)
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
                finished = (out / RunDir.RESULTS).exists()
                resumed = lttrain(str(recipe), "--out", str(out), "--quiet",
                                  *(["--resume"] if out.exists() else []))
                output, _ = resumed.communicate()
                ok = resumed.returncode == 0 and (out / RunDir.RESULTS).exists()
                same = ok and _accuracy(out) == _accuracy(reference) and \
                    history(out) == history(reference)
                doc[path].append({"name": name, "after_epochs": after,
                                  "delay_s": round(delay, 2), "finished_before_kill": finished,
                                  "resumed_ok": ok, "identical": same,
                                  "output": output.strip().splitlines()[-1:] if not ok else []})
    summary = {}
    for path, rows in doc.items():
        counted = [r for r in rows if not r.get("finished_before_kill")]
        summary[path] = {"trials": rows, "tried": len(counted),
                         "identical": sum(bool(r.get("identical")) for r in counted),
                         "landed_after_the_end": len(rows) - len(counted)}
    return summary


PARTS = ("malformed", "components", "kills", "files", "path_kills", "leaderboard")


def _problems(cases: list[dict]) -> None:
    for case in cases:
        if case["traceback"] or case["half_written"] or not (case["named"]
                                                             or case.get("accepted")):
            print(f"  PROBLEM {case['name']}: {case['traceback'] or case['lines'][:2]}")
        elif case.get("accepted"):
            print(f"  accepted (valid there): {case['name']}")


def main_cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="which parts to run (all by default)")
    parser.add_argument("--kills", type=int, default=20, help="random kill -9 trials")
    parser.add_argument("--path-kills", type=int, default=1,
                        help="kill -9 trials per data path and component")
    parser.add_argument("--components", nargs="+", metavar="NAME",
                        help="path_kills: only these augmentations and generators")
    parser.add_argument("--paths", nargs="+", choices=("stream", "memory"),
                        default=["stream", "memory"], help="path_kills: these data paths")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--lb-kills", type=int, default=3,
                        help="kill -9 trials of a running leaderboard")
    parser.add_argument("--out", type=Path, help="where to write fault_sweep.json")
    args = parser.parse_args()
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "malformed" in args.parts:
            report["malformed"] = sweep_malformed(work)
        if "components" in args.parts:
            report["components"] = sweep_components(work)
        if "kills" in args.parts and args.kills:
            report["kills"] = sweep_kills(work, args.kills, args.seed)
        if "files" in args.parts:
            report["files"] = sweep_files(work)
        if "path_kills" in args.parts and args.path_kills:
            report["path_kills"] = sweep_path_kills(work, args.path_kills, args.seed,
                                                    args.components, tuple(args.paths))
        if "leaderboard" in args.parts:
            report["leaderboard"] = {
                "merge": lb_faults.sweep_merge(work / "leaderboard"),
                "kills": (lb_faults.sweep_kills(work / "leaderboard", args.lb_kills, args.seed)
                          if args.lb_kills else None)}
    bad = 0
    for part in ("malformed", "components", "files"):
        if part in report:
            print(f"{part}: {({k: v for k, v in report[part].items() if k != 'cases'})}")
            _problems(report[part]["cases"])
            bad += report[part]["tracebacks"] + report[part]["half_written"] \
                + report[part]["misleading"]
    if "components" in report:
        bad += not report["components"]["disk_full_resumed_identical"]
    if "kills" in report:
        kills = report["kills"]
        print(f"kill -9 trials: {kills['identical']} of {kills['tried']} identical to the "
              f"uninterrupted run ({kills['uninterrupted_seconds']} s uninterrupted)")
        bad += kills["tried"] - kills["identical"]
    for path, kills in report.get("path_kills", {}).items():
        print(f"kill -9 trials, {path} path: {kills['identical']} of {kills['tried']} identical "
              f"to the uninterrupted run ({kills['landed_after_the_end']} more landed after the "
              f"run had finished)")
        for trial in kills["trials"]:
            if not trial.get("identical") and not trial.get("finished_before_kill"):
                print(f"  NOT IDENTICAL {trial['name']}: {trial}")
        bad += kills["tried"] - kills["identical"]
    if "leaderboard" in report:
        lb = report["leaderboard"]
        for line in lb_faults.report(lb["merge"], lb["kills"]):
            print(line)
        bad += lb_faults.problems(lb["merge"], lb["kills"])
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fault_sweep.json").write_text(json.dumps(report, indent=2, default=str)
                                                   + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main_cli())
