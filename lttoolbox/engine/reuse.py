"""Reusing a finished first phase: start a multi-phase run at its first phase boundary.

Decoupling recipes (cRT, LWS, tau-norm) and every ``A then B`` recipe spend almost all their time
in a first phase that other runs train too: cRT after CE trains the very CE run of the table for
200 epochs before its 30 epochs of classifier re-training. When a finished run (the *donor*)
trained that phase with the same resolved recipe, ``lttrain RECIPE --from-run DONOR`` takes the
donor's state at the end of that phase and trains only the later phases.

The result is the one a run from scratch gives, exactly: at a phase boundary the trainer keeps
nothing but the weights (a new phase builds a new optimizer and new components, and re-seeds every
random generator from (seed, phase) alone, see ``phase_seed``), which is what makes a run
resumed at a boundary bit-identical to an uninterrupted one; the donor's weights at the boundary
are the weights a from-scratch run would have there, because the phase's recipe, seed included,
is the same (checked by hash). The reused phase's history, training time and commits are taken
over, so ``results.json`` reads as for a run from scratch, plus a ``reused`` record naming the
donor.

Example:
    >>> from lttoolbox.engine.reuse import reused_start
    >>> recipe = load_recipe("configs/cifar10_lt/ce_crt.yaml")  # doctest: +SKIP
    >>> state = reused_start("runs/ce", recipe)  # doctest: +SKIP
    >>> train(recipe, "runs/ce_crt", start=state)  # doctest: +SKIP
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import LTError
from ..recipe import phase_recipes, recipe_differences, recipe_hash, resolve
from ..rundir import RunDir
from ..runs import RunError, read_run_recipe
from ..upgrade import upgrade_record
from .checkpoint import load_checkpoint, rng_state

CHECKPOINT = RunDir.CHECKPOINT


class ReuseError(LTError):
    """A donor run whose first phase cannot be reused for this recipe."""


def first_phase_hash(recipe: dict) -> str:
    """The hash of a recipe's first phase (its name and notes left out, as in ``recipe_hash``).

    Two recipes with the same first-phase hash train the same weights in that phase: a
    single-phase CE recipe and the ``joint`` phase of cRT after CE, for instance.
    """
    return recipe_hash(phase_recipes(resolve(recipe))[0])


def _donor_recipe(donor: Path) -> dict:
    """The donor's saved recipe (the checks of :func:`lttoolbox.runs.read_run_recipe`, named
    as ``--from-run``'s)."""
    try:
        return read_run_recipe(donor)
    except RunError as err:
        raise ReuseError(f"--from-run: {err}") from None


def reused_start(donor: str | os.PathLike, recipe: dict) -> dict:
    """The checkpoint state of ``recipe`` at the end of its first phase, from a donor run.

    Args:
        donor: A run directory whose first phase has ended, trained with the same resolved
            first-phase recipe (seed included) as ``recipe``'s first phase.
        recipe: The resolved multi-phase recipe to train.

    Returns:
        A checkpoint dict, as the trainer writes one at the end of the first phase, plus a
        ``reused`` record; pass it to the trainer as ``start``.

    Raises:
        ReuseError: the recipe has one phase, the donor is no run, its first phase differs
            (the first differing key is named) or has not ended.
    """
    donor = Path(donor)
    phases = phase_recipes(recipe)
    if len(phases) < 2:
        raise ReuseError("--from-run reuses the first phase of a multi-phase recipe; this recipe "
                         "has one phase (nothing would be left to train)")
    donor_recipe = _donor_recipe(donor)
    donor_phases = phase_recipes(donor_recipe)
    mine, theirs = phases[0], donor_phases[0]
    if recipe_hash(mine) != recipe_hash(theirs):
        diff = recipe_differences(theirs, mine, ("donor", "this recipe"))
        raise ReuseError(f"--from-run: the first phase of {donor} was trained with another recipe "
                         f"({'; '.join(diff[:3])}); only an identical first phase can be reused")
    name, donor_name = mine["meta"]["phase"], theirs["meta"]["phase"]
    if RunDir(donor).generated(donor_name).exists():
        raise ReuseError(f"--from-run: the first phase of {donor} added generated images to the "
                         f"training set; such a phase cannot be reused, train it afresh")
    epochs = mine["train"]["epochs"]
    state = _donor_state(donor, donor_name, len(donor_phases))
    history = [{**row, "phase": name} for row in state["history"] if row["phase"] == donor_name]
    if len(history) != epochs:
        raise ReuseError(f"--from-run: {donor} logs {len(history)} epochs of its first phase "
                         f"'{donor_name}', not {epochs}")
    return {"phase": 0, "epoch": epochs - 1, "phase_done": True, "model": state["model"],
            "optimizer": {}, "scaler": {}, "components": [],
            "rng": state.get("rng") or rng_state(), "history": history,
            "seconds": round(sum(r["seconds"] for r in history), 3),
            "images": state["images"], "recipe_hash": recipe_hash(recipe),
            "commits": list(state.get("commits") or []), "loss_reference": None,
            "selection": dict(state.get("selection") or {}),
            "reused": {"phase": name, "from": str(donor.resolve()), "donor_phase": donor_name,
                       "phase_hash": recipe_hash(mine), "epochs": epochs}}


def _donor_state(donor: Path, phase: str, phases: int) -> dict:
    """The donor's model, history and counters at the end of its first phase ``phase``."""
    if not (donor / CHECKPOINT).is_file():
        raise ReuseError(f"--from-run: {donor} holds no {CHECKPOINT}; its first phase has not "
                         f"started or the run was cleaned up")
    checkpoint = upgrade_record(load_checkpoint(donor / CHECKPOINT))
    if not isinstance(checkpoint, dict) or "phase" not in checkpoint:
        raise ReuseError(f"--from-run: {donor / CHECKPOINT} is not an lttoolbox checkpoint")
    if checkpoint["phase"] == 0:
        if not checkpoint["phase_done"]:
            raise ReuseError(f"--from-run: the first phase '{phase}' of {donor} has not ended "
                             f"(epoch {checkpoint['epoch'] + 1} done); finish it first "
                             f"(lttrain --resume --out {donor})")
        return {**checkpoint, "images": checkpoint["images"]}
    # The donor went on to later phases: the first phase's weights were saved when it ended.
    weights = RunDir(donor).weights(phase)
    if not weights.is_file():
        raise ReuseError(f"--from-run: {donor} has passed its first phase '{phase}' but holds no "
                         f"{weights.name}")
    rows = [r for r in checkpoint["history"] if r["phase"] == phase]
    # Images seen are not logged per epoch; a phase's count is its epochs' (rate x time).
    images = int(round(sum(r["images_per_second"] * r["seconds"] for r in rows)))
    return {"model": load_checkpoint(weights), "history": rows, "images": images,
            "commits": checkpoint.get("commits"), "selection": {}}
