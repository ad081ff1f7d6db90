"""``ltpredict``: the top-k classes of image files under a run's trained model.

Usage::

    ltpredict RUN_DIR photo.jpg more_photos/ --topk 5 --out predictions.csv
    ltpredict RUN_DIR photos/ --tau 1.0        # post-hoc logit adjustment by the training prior

Each image is read as the run's data was (RGB, or grey for a one-channel model, resized to the
model's square size with bilinear filtering) and normalised with the run's evaluation transform.
One CSV row per image: its path, then ``class_i, prob_i`` for i = 1..k, most probable first.

``--tau`` subtracts ``tau * log(prior)`` from the logits before the softmax, the prior being the
run's training class frequencies: the post-hoc logit adjustment of Menon et al. ("Long-tail
learning via logit adjustment", ICLR 2021, Eq. 9), which raises rare classes for a balanced test
distribution; tau = 1 is the Bayes-optimal correction for the balanced error.

A multi-label run (its data set is multi-label) writes instead, per image, its path, the labels
whose sigmoid probability is at least ``--threshold`` (default 0.5; ``;``-separated), then every
label's probability::

    ltpredict RUN_DIR mosaics/ --threshold 0.5

A file that cannot be decoded is named and skipped; the others are still predicted, the skipped
ones are listed at the end and the exit code is 1.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
from pathlib import Path

from .cli import run_command
from .errors import ConfigError, DataError
from .rundir import atomic_write_text


def image_files(arguments: list[str]) -> list[Path]:
    """The image files named, folders searched recursively (sorted), in argument order."""
    from .data.folder_io import IMAGE_EXTENSIONS

    files: list[Path] = []
    for text in arguments:
        path = Path(text)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"no such image or folder: {path}")
    if not files:
        raise DataError(f"no .png/.jpg/.jpeg image in {', '.join(arguments)}")
    return files


def decode_files(info: dict, files: list[Path]) -> tuple[list, list[Path], list[tuple[Path, str]]]:
    """The files decoded as the run's data was (``info``: its ``data.json``): the uint8 images,
    the files they came from, and ``(path, reason)`` of every file that could not be decoded."""
    from .data.folder_io import decode_image

    if info.get("path") == "stream":  # as the run evaluated: resize, then centre crop
        from .data.stream import StreamTransform, read_image
        crop = (StreamTransform(info["image_size"], train=False, resize=info["eval_resize"])
                if info.get("eval_crop", True) else  # or the whole image resized
                StreamTransform(info["image_size"], train=False, centre_crop=False))

        def decode(name: str):
            return crop(read_image(name), None).numpy()
    else:
        def decode(name: str):
            return decode_image(name, info["image_size"], info["in_channels"])
    images, kept, skipped = [], [], []
    for path in files:
        try:
            images.append(decode(str(path)))
            kept.append(path)
        except DataError as err:
            skipped.append((path, str(err).split(": ", 2)[-1]))
    return images, kept, skipped


def predict_files(run_dir: str | Path, files: list[Path], topk: int = 5, tau: float = 0.0,
                  weights: str | None = None, device: str | None = None, batch_size: int = 256
                  ) -> tuple[list[list], list[tuple[Path, str]]]:
    """Predict image files with a run's model.

    Returns:
        ``(rows, skipped)``: CSV rows ``[path, class_1, prob_1, ...]`` and ``(path, reason)`` of
        every file that could not be decoded.
    """
    import numpy as np
    import torch

    from .engine.evaluate import predict_topk
    from .runs import open_run

    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ConfigError(f"must be a positive integer, got {topk!r}", key="--topk")
    if not math.isfinite(tau):
        raise ConfigError(f"must be a finite number, got {tau!r}", key="--tau")
    run = open_run(run_dir, weights, device)
    info = run.info
    images, kept, skipped = decode_files(info, files)
    rows: list[list] = []
    if kept:
        offset = None
        if tau:
            counts = torch.tensor(info["train_class_counts"], dtype=torch.float64)
            offset = (-tau * torch.log(counts.clamp(min=1) / counts.sum())).float()
        classes, probs = predict_topk(run.model, torch.from_numpy(np.stack(images)).to(run.device),
                                      run.eval_transform, min(topk, len(info["classes"])),
                                      offset, batch_size, run.autocast)
        names = info["classes"]
        for path, top, prob in zip(kept, classes, probs):
            row = [str(path)]
            for c, p in zip(top, prob):
                row += [names[int(c)], f"{float(p):.6f}"]
            rows.append(row)
    return rows, skipped


def predict_labels(run_dir: str | Path, files: list[Path], threshold: float = 0.5,
                   weights: str | None = None, device: str | None = None,
                   batch_size: int = 256) -> tuple[list[str], list[list], list[tuple[Path, str]]]:
    """Per-label scores of image files under a multi-label run's model.

    Returns:
        ``(header, rows, skipped)``: the CSV header ``path, labels, prob_<class>...``, one row
        per image (its path, the labels with ``sigmoid(logit) >= threshold`` joined by ``;``,
        every label's probability) and ``(path, reason)`` of every file that could not be
        decoded.
    """
    import numpy as np
    import torch

    from .engine.evaluate import batched_logits
    from .runs import open_run

    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not 0 <= threshold <= 1:
        raise ConfigError(f"must be a probability in [0, 1], got {threshold!r}",
                          key="--threshold")
    run = open_run(run_dir, weights, device)
    info = run.info
    images, kept, skipped = decode_files(info, files)
    names = info["classes"]
    header = ["path", "labels", *(f"prob_{name}" for name in names)]
    rows: list[list] = []
    if kept:
        batch = torch.from_numpy(np.stack(images)).to(run.device)
        probs = torch.cat([torch.sigmoid(z) for z in batched_logits(
            run.model, batch, run.eval_transform, batch_size, run.autocast)]).cpu().numpy()
        for path, p in zip(kept, probs):
            chosen = ";".join(names[c] for c in np.flatnonzero(p >= threshold))
            rows.append([str(path), chosen, *(f"{float(v):.6f}" for v in p)])
    return header, rows, skipped


def run_is_multilabel(run_dir: str | Path) -> bool:
    """Whether a run's data set was multi-label (its ``data.json`` says so)."""
    import json

    from .rundir import RunDir
    try:
        return bool(json.loads(Path(RunDir(run_dir).data).read_text()).get("multilabel"))
    except (OSError, ValueError):
        return False  # open_run names what is missing


def check_out_file(out: str | Path) -> None:
    """Refuse a ``--out`` that cannot become the CSV file, before any image is predicted.

    Raises:
        ConfigError: ``out`` is a folder, lies under a file, or its folder cannot be written
            (a read-only file system, no permission).
    """
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"{out} is a folder; name the CSV file to write, for example "
                          f"{out / 'predictions.csv'}", key="--out")
    parent = out.parent
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{out} lies under {parent}, which is a file", key="--out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{out} cannot be written: {parent} is not writable (a read-only file "
                          f"system, or no permission)", key="--out")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ltpredict", epilog="One CSV row per image: its path, then class_i, prob_i for "
        "i = 1..k, most probable first. More in docs/after_training.md.",
        description="The top-k classes of image files under a run's trained model.")
    parser.add_argument("run", help="run directory")
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    parser.add_argument("--tau", type=float, default=0.0,
                        help="post-hoc logit adjustment strength (Menon et al. 2021); 0 = none")
    parser.add_argument("--threshold", type=float, default=None,
                        help="multi-label runs: a label is predicted when its sigmoid "
                             "probability is at least this (default 0.5)")
    parser.add_argument("--out", help="CSV file to write (default: standard output)")
    parser.add_argument("--weights", help="weights file (default: the last phase's)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: the run's train.device)")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)

    def body(console) -> int:
        if args.out:
            check_out_file(args.out)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if run_is_multilabel(args.run):
            if args.tau:
                raise ConfigError("is a softmax prior correction of single-label runs; a "
                                  "multi-label run thresholds each label (--threshold)",
                                  key="--tau")
            header, rows, skipped = predict_labels(
                args.run, image_files(args.images),
                0.5 if args.threshold is None else args.threshold, args.weights, args.device,
                args.batch_size)
            writer.writerow(header)
        else:
            if args.threshold is not None:
                raise ConfigError("applies to multi-label runs; this run predicts one class "
                                  "per image (--topk)", key="--threshold")
            rows, skipped = predict_files(args.run, image_files(args.images), args.topk,
                                          args.tau, args.weights, args.device, args.batch_size)
            width = max((len(r) - 1) // 2 for r in rows) if rows else 0
            writer.writerow(["path"] + [f"{kind}_{i}" for i in range(1, width + 1)
                                        for kind in ("class", "prob")])
        writer.writerows(rows)
        if args.out:
            atomic_write_text(args.out, buffer.getvalue())
            console.print(f"wrote {len(rows)} predictions to {args.out}", soft_wrap=True)
        else:
            sys.stdout.write(buffer.getvalue())
        if skipped:
            console.print(f"skipped {len(skipped)} file(s) that could not be decoded:",
                          soft_wrap=True)
            for path, why in skipped:
                console.print(f"  {path}: {why}", soft_wrap=True, markup=False)
            return 1
        return 0

    return run_command(body, lambda console: console.print("interrupted; nothing was written"))


if __name__ == "__main__":
    sys.exit(main())
