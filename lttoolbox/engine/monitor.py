"""What the trainer watches and says once per epoch: divergence, and the epoch's console line."""
from __future__ import annotations

import math


DIVERGENCE_FACTOR = 100.0


def check_divergence(mean_loss: float, reference: float | None, epoch: int, phase: str,
                     lr: float) -> None:
    """Stop a run whose loss is not finite or has grown far beyond where it started.

    A run diverged when an epoch's mean loss exceeds ``DIVERGENCE_FACTOR`` (100) times the loss of
    the phase's first step, or 100 when that was below 1: a learning rate or momentum too large
    gives losses such as 8e16, 5e25, 2e33 that are finite but meaningless.

    Raises:
        FloatingPointError: with one line saying what to change.
    """
    where = f"in epoch {epoch + 1} of phase '{phase}' (learning rate {lr:g})"
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"the training loss became {mean_loss} {where}; lower optim.lr "
                                 f"or check the loss parameters")
    bound = DIVERGENCE_FACTOR * max(1.0, reference or 0.0)
    if mean_loss > bound:
        raise FloatingPointError(f"the training diverged: the mean loss reached {mean_loss:.3g} "
                                 f"{where}, above {bound:.3g} ({DIVERGENCE_FACTOR:g} times the "
                                 f"first step's loss {reference:.3g}, at least "
                                 f"{DIVERGENCE_FACTOR:g}); lower optim.lr (or optim.momentum) "
                                 f"and start again")


def epoch_line(row: dict, label: str, epochs: int, eta_seconds: float) -> str:
    """The console line of an epoch: loss, rate, speed, the evaluation if any, the run's ETA."""
    terms = ", ".join(f"{name} {value:.4f}" for name, value in row.get("loss_terms", {}).items())
    line = (f"{label}epoch {row['epoch'] + 1:>3}/{epochs}  loss {row['loss']:.4f}"
            + (f" ({terms})" if terms else "")
            + f"  lr {row['lr']:.2e}  {row['images_per_second']:,.0f} img/s")
    evaluation = row.get("eval")
    if evaluation and "mAP" in evaluation:  # a multi-label run
        split = "/".join("-" if evaluation.get(k) is None else f"{evaluation[k]:.1f}"
                         for k in ("head_mAP", "medium_mAP", "tail_mAP"))
        line += f"  mAP {evaluation['mAP']:.2f} (head/med/tail {split})"
    elif evaluation:
        split = "/".join("-" if evaluation.get(k) is None else f"{evaluation[k]:.1f}"
                         for k in ("many", "medium", "few"))
        line += f"  top-1 {evaluation['top1']:.2f} (many/med/few {split})"
    if eta_seconds > 0:
        minutes, sec = divmod(int(round(eta_seconds)), 60)
        hours, minutes = divmod(minutes, 60)
        line += f"  ETA {hours}:{minutes:02d}:{sec:02d}"
    return line
