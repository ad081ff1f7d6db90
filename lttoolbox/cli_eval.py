"""``lteval``: evaluate a finished run, or any of its saved weights, again.

Usage::

    lteval runs/cifar10_lt/ce/20261130-101500                       # final weights, its test split
    lteval RUN_DIR --weights model-joint.pt                          # a stage's weights
    lteval RUN_DIR data.imbalance_ratio=50 --name ratio50           # another data setting
    lteval RUN_DIR data={name: image_folder, root: my/photos, image_size: 32}

It prints the same results table as training and writes ``RUN_DIR/eval-<name>.json`` with the
same metrics as ``results.json`` (top-1, mean per class, many / medium / few, per class, the
confusion matrix, ECE), through the trainer's own evaluation. The model is evaluated as it was
trained (normalisation, memory format, autocast), so ``lteval RUN_DIR`` reproduces
``results.json``. Many / medium / few use the run's training counts. Only ``data.*`` and
``eval.*`` may be overridden.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from pathlib import Path

from .cli import run_command
from .errors import ConfigError

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def evaluate_run(run_dir: str | Path, overrides: list[str] = (), weights: str | None = None,
                 device: str | None = None, name: str | None = None) -> tuple[dict, Path]:
    """Evaluate a run; returns the document written and its path (``eval-<name>.json``)."""
    from .atomic import atomic_write_text
    from .data.datapath import build_data_path
    from .engine.evaluate import metrics_from_predictions, predict_batches
    from .engine.provenance import git_commit, machine_info
    from .engine.rundir import RunLock
    from .recipe import apply_overrides, recipe_hash, resolve
    from .registry import DATASETS
    from .runs import RunError, check_eval_overrides, open_run

    overrides = list(overrides)
    check_eval_overrides(overrides)
    run = open_run(run_dir, weights, device)
    stage_name = run.stage["meta"]["stage"]
    if name is None:
        name = stage_name + (f"-{hashlib.sha1(' '.join(overrides).encode()).hexdigest()[:8]}"
                             if overrides else "")
    if not NAME.match(name):
        raise ConfigError(f"must be letters, digits, '_', '-' or '.', got {name!r}", key="--name")
    # the stage's own recipe: a later stage may train 0 epochs (tau-normalisation)
    recipe = resolve(apply_overrides(run.stage, overrides), min_epochs=0)
    data = DATASETS.build(recipe["data"], key="data")
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
    pred, conf = predict_batches(run.model, path.eval_batches("test", ev["batch_size"]),
                                 run.autocast)
    metrics = metrics_from_predictions(pred, path.eval_labels("test"), conf, len(classes),
                                       run.info["train_class_counts"], ev["many_threshold"],
                                       ev["few_threshold"], ev["ece_bins"])
    doc = {**metrics, "class_names": classes, "weights": run.weights.name,
           "stage": stage_name, "overrides": overrides, "data": data.meta,
           "recipe_hash": recipe_hash(run.recipe), "commit": git_commit(),
           "machine": machine_info(run.device),
           "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = run.dir / f"eval-{name}.json"
    import json
    with RunLock(run.dir):
        atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return doc, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lteval", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run directory")
    parser.add_argument("overrides", nargs="*", help="data.* / eval.* key=value overrides")
    parser.add_argument("--weights", help="weights file (default: the last stage's)")
    parser.add_argument("--name", help="writes eval-<name>.json (default: the stage's name, "
                                       "plus a hash of the overrides)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: the run's train.device)")
    parser.add_argument("--quiet", action="store_true", help="print only the results line")
    args = parser.parse_args(argv)

    def body(console) -> int:
        from .engine.logging import RunLogger

        doc, path = evaluate_run(args.run, args.overrides, args.weights, args.device, args.name)
        RunLogger(quiet=args.quiet).results_table(doc, title=f"Evaluation ({path})")
        return 0

    return run_command(body, lambda console: console.print("interrupted; nothing was written"))


if __name__ == "__main__":
    sys.exit(main())
