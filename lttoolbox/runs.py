"""A finished run as objects: its recipe, its model with trained weights, its data facts.

What ``lteval`` and ``ltpredict`` stand on, and what a notebook needs:

    >>> import lttoolbox
    >>> model, recipe = lttoolbox.load_run("runs/quickstart/20261130-101500")  # doctest: +SKIP
    >>> model.training  # doctest: +SKIP
    False

The model is built from the run's resolved ``recipe.yaml`` (the head of the phase whose weights
are loaded), laid out and evaluated exactly as the trainer evaluated it (memory format, autocast),
so evaluating it again reproduces ``results.json``. The data facts (class names, training counts,
normalisation, image size) come from ``data.json``, which the trainer writes at the start of a run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .data.dataset import data_info
from .errors import ConfigError, LTError
from .recipe import phase_recipes, resolve_saved
from .registry import DATASETS, MODELS
from .rundir import RunDir
from .yamlio import load_yaml


class RunError(LTError):
    """A run directory that cannot be evaluated or predicted with (missing, unfinished, foreign)."""


@dataclass
class Run:
    """An opened run: everything evaluation and prediction need."""

    dir: Path
    recipe: dict
    phase: dict               # the resolved recipe of the phase whose weights are loaded
    weights: Path
    model: torch.nn.Module    # eval mode, weights loaded, on ``device``
    device: torch.device
    info: dict                # class names, training counts, mean, std, channels, image size

    @property
    def autocast(self) -> Callable | None:
        from .engine.trainer import autocast_factory
        return autocast_factory(self.phase["train"]["amp"], self.device)[0]

    @property
    def eval_transform(self):
        from .data.transforms import BatchTransform
        return BatchTransform(self.info["mean"], self.info["std"])


def read_run_recipe(run_dir: str | os.PathLike) -> dict:
    """The resolved recipe saved in a run directory.

    Raises:
        RunError: no such run directory, or no readable ``recipe.yaml`` in it.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a run directory (no such folder)")
    path = RunDir(run_dir).recipe
    if not path.is_file():
        raise RunError(f"{run_dir} holds no {RunDir.RECIPE}: not a run directory of lttrain")
    try:
        return resolve_saved(load_yaml(path.read_text(encoding="utf-8")))
    except Exception as err:  # noqa: BLE001 - any failure means the file cannot be trusted
        raise RunError(f"{path} is corrupt ({str(err).splitlines()[0]})") from None


def is_saved_recipe(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the ``recipe.yaml`` a run saved (beside its checkpoint or results).

    Such a file may predate the rename of training stages to phases and of model stages to
    points; it is read in today's spelling (``load_recipe(..., saved=True)``), while a recipe a
    person writes must use today's keys.
    """
    return RunDir.is_saved_recipe(path)


def weights_phase(recipe: dict, run_dir: Path, weights: str | os.PathLike | None
                  ) -> tuple[dict, Path]:
    """The phase recipe and the weights file to load (the last phase's by default)."""
    phases = phase_recipes(recipe)
    names = [s["meta"]["phase"] for s in phases]
    if weights is None:
        path = RunDir(run_dir).weights(names[-1])
        if not path.is_file():
            done = [p.name for p in RunDir(run_dir).weights_files()]
            holder = RunDir(run_dir).holder()
            hint = (f"; finished phases: {', '.join(done)} (choose one with --weights)"
                    if done else "")
            hint += (f"; process {holder} is training it now" if holder is not None else
                     "" if done else "; resume it with lttrain --resume --out " + str(run_dir))
            raise RunError(f"{run_dir} holds no finished weights: its last phase '{names[-1]}' "
                           f"has not ended{hint}")
        return phases[-1], path
    path = Path(weights)
    if not path.is_absolute() and not path.exists():
        path = run_dir / path
    if not path.is_file():
        raise RunError(f"weights file not found: {path}")
    stem = RunDir.phase_of_weights(path)
    return (phases[names.index(stem)] if stem in names else phases[-1]), path


def load_weights(model: torch.nn.Module, path: Path,
                 remedy: str = "restore it, or choose other weights with --weights") -> None:
    """Load a weights file into ``model``, naming the first tensor that does not fit.

    Args:
        remedy: What to do about a file that cannot be read (ends the message).

    Raises:
        CheckpointError: the file cannot be read.
        RunError: a missing, extra or differently shaped tensor.
    """
    from .engine.checkpoint import load_checkpoint

    state = load_checkpoint(path, remedy)
    if isinstance(state, dict) and "model" in state and "optimizer" in state:
        state = state["model"]  # a checkpoint.pt: take its model
    if not isinstance(state, dict):
        raise RunError(f"{path} holds no weights (a {type(state).__name__})")
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in state:
            raise RunError(f"{path} does not fit the recipe's model: it has no tensor '{name}'")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise RunError(f"{path} does not fit the recipe's model: '{name}' is "
                           f"{tuple(state[name].shape)} there, {tuple(tensor.shape)} in the model")
    extra = sorted(set(state) - set(own))
    if extra:
        raise RunError(f"{path} does not fit the recipe's model: it has an extra tensor "
                       f"'{extra[0]}'")
    model.load_state_dict(state)


def open_run(run_dir: str | os.PathLike, weights: str | os.PathLike | None = None,
             device: str | None = None) -> Run:
    """Open a run for evaluation or prediction (see the module docstring).

    Args:
        run_dir: The run directory.
        weights: A weights file (``model-<phase>.pt``, in the run directory or a path); the
            last phase's by default.
        device: ``cpu``, ``cuda``...; the run's ``train.device`` by default.

    Raises:
        RunError: the directory is not a run, has no finished weights, or the weights do not fit.
    """
    from .engine.trainer import resolve_device

    run_dir = Path(run_dir)
    recipe = read_run_recipe(run_dir)
    phase, path = weights_phase(recipe, run_dir, weights)
    info = read_data_info(run_dir, recipe)
    target = resolve_device(device or phase["train"]["device"])
    # The run's own weights replace every tensor, so the pretrained file the run started from
    # (model.weights) is not read again and need not exist any more.
    config = {k: v for k, v in phase["model"].items() if k != "weights"}
    model = MODELS.build(config, key="model", num_classes=len(info["classes"]),
                         in_channels=info["in_channels"], image_size=info["image_size"])
    load_weights(model, path, "give another --weights file" if weights is not None
                 else "restore it, or choose other weights with --weights")
    model = model.to(target)
    if phase["train"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    return Run(run_dir, recipe, phase, path, model, target, info)


def read_data_info(run_dir: Path, recipe: dict) -> dict:
    """``data.json`` of the run, or (for a run written before it existed) the data set itself."""
    import json

    path = RunDir(run_dir).data
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise RunError(f"{path} is corrupt ({err})") from None
    return data_info(DATASETS.build(recipe["data"], key="data"))


def load_run(run_dir: str | os.PathLike, weights: str | os.PathLike | None = None,
             device: str | None = None) -> tuple[torch.nn.Module, dict]:
    """The trained model of a run (eval mode, weights loaded) and its resolved recipe.

    Example:
        >>> model, recipe = load_run("runs/quickstart/20261130-101500")  # doctest: +SKIP
    """
    run = open_run(run_dir, weights, device)
    return run.model, run.recipe


def check_eval_overrides(overrides: list[str]) -> None:
    """Evaluation may change the data and the evaluation settings, nothing that was trained."""
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if key.split(".")[0] not in ("data", "eval"):
            raise ConfigError("only data.* and eval.* can change for an evaluation (the model "
                              "was trained with the rest)", key=key)
