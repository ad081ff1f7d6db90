"""``lteval``: evaluate a finished run, or any of its saved weights, again.

Usage::

    lteval runs/cifar10_lt/ce/20261130-101500                       # final weights, its test split
    lteval RUN_DIR --weights model-joint.pt                          # a phase's weights
    lteval RUN_DIR data.imbalance_ratio=50 --name ratio50           # another data setting
    lteval RUN_DIR "data={name: image_folder, root: my/test}"       # my/test/<class>/*.jpg

It prints the same results table as training and writes ``RUN_DIR/eval-<name>.json`` with the
same metrics as ``results.json`` (top-1, mean per class, many / medium / few, per class, the
confusion matrix, ECE), through the trainer's own evaluation. The model is evaluated as it was
trained (normalisation, memory format, autocast), so ``lteval RUN_DIR`` reproduces
``results.json``. Many / medium / few use the run's training counts. A multi-label run is
evaluated with mAP, its head / medium / tail groups and the per-class AP, as in training.
Only ``data.*`` and ``eval.*`` may be overridden. An image folder is read as test images only
(no ``train/`` folder, no long-tail profile), labelled by the run's class names.

Evaluation only reads the run directory (it takes no lock): a run archived on a read-only file
system is evaluated and printed (``--out FILE`` saves the evaluation elsewhere), and a run that
another process is still training is refused, naming that process.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import time
from pathlib import Path

from .cli import run_command
from .errors import ConfigError
from .rundir import RunDir, atomic_write_json

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# --help is read in a terminal: plain text, not the docstring's reStructuredText.
DESCRIPTION = ("Evaluate a finished run, or any of its saved weights, again: print the results "
               "table and write RUN/eval-<name>.json (the metrics of results.json).")
EPILOG = """examples:
  lteval RUN                                      the last phase's weights, the run's test split
  lteval RUN --weights model-joint.pt             a finished phase's weights
  lteval RUN data.imbalance_ratio=50 --name r50   another data setting
  lteval RUN "data={name: image_folder, root: my/test}"   the images of my/test/<class>/

Only data.* and eval.* may be overridden. An image folder is read as test images only, labelled
by the run's class names. Nothing locks the run: a read-only run is evaluated all the same.
More in docs/after_training.md."""


def evaluate_run(run_dir: str | Path, overrides: list[str] = (), weights: str | None = None,
                 device: str | None = None, name: str | None = None,
                 out: str | Path | None = None) -> tuple[dict, Path | None]:
    """Evaluate a run; returns the document and the file it was written to: ``out``, by default
    ``RUN_DIR/eval-<name>.json``, or ``None`` when the run directory cannot be written (a run
    archived on a read-only file system is evaluated all the same).

    Nothing here locks the run directory: evaluation only reads it. A run that a live process
    is training (it holds ``RUN_DIR/.lock``) is refused, naming that process.
    """
    from .data.datapath import build_data_path
    from .engine.evaluate import (metrics_from_predictions, multilabel_metrics,
                                  predict_batches, ranks_for, score_batches)
    from .engine.provenance import git_commit, machine_info
    from .recipe import apply_overrides, recipe_hash, resolve
    from .registry import DATASETS
    from .runs import RunError, check_eval_overrides, open_run

    overrides = list(overrides)
    check_eval_overrides(overrides)
    holder = RunDir(run_dir).holder()
    if holder is not None:
        raise RunError(f"{run_dir} is being trained by process {holder}; evaluate it when it "
                       f"finishes")
    if out is not None:
        out = Path(out)
        if out.is_dir() or not _writable(out.parent):
            raise ConfigError(f"{out} cannot be written (a folder, or in a folder that cannot "
                              f"be written)", key="--out")
    run = open_run(run_dir, weights, device)
    phase_name = run.phase["meta"]["phase"]
    if name is None:
        name = phase_name + (f"-{hashlib.sha1(' '.join(overrides).encode()).hexdigest()[:8]}"
                             if overrides else "")
    if not NAME.match(name):
        raise ConfigError(f"must be letters, digits, '_', '-' or '.', got {name!r}", key="--name")
    # the phase's own recipe: a later phase may train 0 epochs (tau-normalisation)
    recipe = resolve(apply_overrides(run.phase, overrides), min_epochs=0)
    # A data set that can read its test images alone (image_folder) does so, labelled by the
    # run's class names; the run's image size is the default.
    data = DATASETS.build(recipe["data"], key="data", run_data=run.info,
                          image_size=run.info["image_size"])
    classes = run.info["classes"]
    if data.num_classes != len(classes):
        raise RunError(f"the data has {data.num_classes} classes, the model of {run.dir} was "
                       f"trained for {len(classes)}")
    if (data.in_channels, data.image_size) != (run.info["in_channels"], run.info["image_size"]):
        raise RunError(f"the data's images are {data.in_channels} x {data.image_size} x "
                       f"{data.image_size}, the model of {run.dir} was trained on "
                       f"{run.info['in_channels']} x {run.info['image_size']} x "
                       f"{run.info['image_size']}")
    ev = recipe["eval"]
    # in memory or streamed from the files, as the data set says
    path = build_data_path(data, run.device, workers=recipe["train"]["workers"],
                           stats=(run.info["mean"], run.info["std"]))
    if data.multilabel != bool(run.info.get("multilabel", False)):
        kinds = {True: "multi-label", False: "single-label"}
        raise RunError(f"the data is {kinds[data.multilabel]}, the model of {run.dir} was "
                       f"trained on {kinds[bool(run.info.get('multilabel', False))]} data")
    if data.multilabel:  # mAP of the logits, as the trainer's evaluation
        scores = score_batches(run.model, path.eval_batches("test", ev["batch_size"]),
                               run.autocast).reshape(-1, len(classes))
        metrics = multilabel_metrics(scores, path.eval_labels("test"),
                                     run.info["train_class_counts"], ev["many_threshold"],
                                     ev["few_threshold"])
    else:
        pred, conf = predict_batches(run.model, path.eval_batches("test", ev["batch_size"]),
                                     run.autocast, k=ranks_for(len(classes)))
        metrics = metrics_from_predictions(pred, path.eval_labels("test"), conf, len(classes),
                                           run.info["train_class_counts"],
                                           ev["many_threshold"], ev["few_threshold"],
                                           ev["ece_bins"])
    doc = {**metrics, "class_names": classes, "weights": run.weights.name,
           "phase": phase_name, "overrides": overrides, "data": data.meta,
           "recipe_hash": recipe_hash(run.recipe), "commit": git_commit(),
           "machine": machine_info(run.device),
           "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = out or RunDir(run.dir).evaluation(name)
    if out is None and not _writable(run.dir):
        return doc, None
    _write_json(path, doc)
    return doc, path


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` or, while it does not exist, where it would be
    created (``access`` also says no on a read-only file system)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def _write_json(path: Path, doc: dict) -> None:
    from .errors import LTError
    try:
        atomic_write_json(doc, path)
    except LTError:
        raise
    except OSError as err:
        raise LTError(f"could not write {path}: {err.strerror or err}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lteval", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory")
    parser.add_argument("overrides", nargs="*", help="data.* / eval.* key=value overrides")
    parser.add_argument("--weights", help="weights file (default: the last phase's)")
    parser.add_argument("--name", help="writes eval-<name>.json (default: the phase's name, "
                                       "plus a hash of the overrides)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: the run's train.device)")
    parser.add_argument("--out", help="write the evaluation to this JSON file instead of "
                                      "RUN/eval-<name>.json (for a run that cannot be written)")
    parser.add_argument("--quiet", action="store_true", help="print only the results line")
    args = parser.parse_args(argv)

    def body(console) -> int:
        from .engine.logging import RunLogger

        doc, path = evaluate_run(args.run, args.overrides, args.weights, args.device, args.name,
                                 args.out)
        logger = RunLogger(quiet=args.quiet)
        logger.results_table(doc, title=f"Evaluation ({path or args.run})")
        if path is None:
            logger.warning(f"{args.run} cannot be written (a read-only archive?): the evaluation "
                           f"was not saved; --out FILE saves it elsewhere")
        return 0

    return run_command(body, lambda console: console.print("interrupted; nothing was written"))


if __name__ == "__main__":
    sys.exit(main())
