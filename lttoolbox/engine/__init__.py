"""Training loop, evaluation, checkpoints and console output."""
from .evaluate import (evaluate, expected_calibration_error, metrics_from_predictions,
                       split_accuracies)
from .trainer import Trainer, train

__all__ = ["Trainer", "train", "evaluate", "expected_calibration_error",
           "metrics_from_predictions", "split_accuracies"]
