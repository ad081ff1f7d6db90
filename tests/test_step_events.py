"""The run and step events (lttoolbox/api.py): the order the trainer sends them in, a step's batch
replaced by a component, and the door of a bilevel method (a draw from the validation split at
every step), which must be deterministic, never touch the test split, and resume exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import assert_same_training, digits, resumed_run
from lttoolbox.api import Component
from lttoolbox.batch import Batch
from lttoolbox.engine import train
from lttoolbox.errors import ConfigError
from lttoolbox.losses import LTLoss
from lttoolbox.recipe import resolve
from lttoolbox.registry import AUGMENTS, DATASETS, LOSSES

HEARD: list[tuple[int, str]] = []


class Listener(Component):
    """Notes every event it hears, with the index it was built with (its phase)."""

    def __init__(self, tag: int = 0):
        super().__init__()
        self.tag = tag

    def _note(self, name):
        HEARD.append((self.tag, name))

    def before_run(self, run):
        self._note("before_run")

    def before_phase(self, events):
        self._note("before_phase")

    def before_epoch(self, epoch):
        super().before_epoch(epoch)
        self._note("before_epoch")

    def before_step(self, step):
        self._note("before_step")

    def after_step(self, step):
        self._note("after_step")

    def after_epoch(self, epoch):
        self._note("after_epoch")

    def after_phase(self, events):
        self._note("after_phase")

    def after_run(self, run):
        self._note("after_run")


def steps_per_epoch(recipe: dict) -> int:
    data = DATASETS.build(recipe["data"])
    return int(np.ceil(len(data.train.labels) / recipe["train"]["batch_size"]))


def test_events_arrive_in_the_declared_order(tmp_path):
    HEARD.clear()
    recipe = resolve(digits(train={"epochs": 1},
                            phases=[{"name": "one", "augment": [{"name": "toy_listen", "tag": 0}]},
                                    {"name": "two",
                                     "augment": [{"name": "toy_listen", "tag": 1}]}]))
    with AUGMENTS.scoped():
        AUGMENTS.register("toy_listen")(Listener)
        train(recipe, tmp_path / "run", quiet=True)
    steps = steps_per_epoch(recipe)

    def phase(tag):
        return ([(tag, "before_phase"), (tag, "before_epoch")]
                + [(tag, e) for _ in range(steps) for e in ("before_step", "after_step")]
                + [(tag, "after_epoch"), (tag, "after_phase")])

    assert HEARD == ([(0, "before_run"), (1, "before_run"), *phase(0), *phase(1),
                      (0, "after_run"), (1, "after_run")])


class FirstHalf(Component):
    """Trains on the first half of every batch: replaces ``step.batch``."""

    def before_step(self, step):
        half = step.batch.x.shape[0] // 2
        step.batch = Batch.plain(step.batch.x[:half], step.batch.y_a[:half])


class SizeNoting(LTLoss):
    """Cross-entropy that notes the batch sizes it scores."""

    sizes: list[int] = []

    def per_sample(self, logits, target):
        SizeNoting.sizes.append(int(target.shape[0]))
        return torch.nn.functional.cross_entropy(logits, target, reduction="none")


def test_a_component_replaces_the_batch_the_step_trains_on(tmp_path):
    SizeNoting.sizes = []
    recipe = resolve(digits(train={"epochs": 1, "batch_size": 64},
                            loss={"name": "toy_sizes"}, augment=[{"name": "toy_half"}]))
    with AUGMENTS.scoped(), LOSSES.scoped():
        AUGMENTS.register("toy_half")(FirstHalf)
        LOSSES.register("toy_sizes")(SizeNoting)
        train(recipe, tmp_path / "run", quiet=True)
    n = len(DATASETS.build(recipe["data"]).train.labels)
    full = [64] * (n // 64) + ([n % 64] if n % 64 else [])
    assert SizeNoting.sizes == [b // 2 for b in full]


class ValidationWeighted(LTLoss):
    """A toy bilevel loss: per-class weights that an outer step moves towards the classes the
    model gets wrong on a validation batch drawn at every step (the shape of AutoBalance's or
    a meta-re-weighting's outer step)."""

    needs_validation = True
    drawn: list = []

    def __init__(self, num_classes=None, size=8):
        super().__init__(num_classes=num_classes)
        self.size = size
        self.register_buffer("w", torch.ones(num_classes))

    def per_sample(self, logits, target):
        ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
        return self.w[target] * ce

    def after_step(self, step):
        x, y = step.validation_batch(self.size)
        ValidationWeighted.drawn.append((step.epoch, step.step, y.tolist(), x.sum().item()))
        with torch.no_grad():
            wrong = (step.model(x).argmax(1) != y).float()
            self.w.index_add_(0, y, 0.01 * wrong)


def test_a_validation_draw_is_from_the_validation_split_and_seeded_by_the_step(tmp_path):
    recipe = resolve(digits(data={"val_per_class": 6}, train={"epochs": 1},
                            loss={"name": "toy_val_weighted", "size": 8}))
    runs = []
    with LOSSES.scoped():
        LOSSES.register("toy_val_weighted")(ValidationWeighted)
        for name in ("a", "b"):
            ValidationWeighted.drawn = []
            train(recipe, tmp_path / name, quiet=True)
            runs.append(list(ValidationWeighted.drawn))
    assert runs[0] == runs[1]  # the same draws, step by step
    data = DATASETS.build(recipe["data"])
    val = np.bincount(np.asarray(data.val.labels), minlength=10)
    assert val.tolist() == [6] * 10
    for _, _, labels, _ in runs[0]:
        # 8 distinct images (drawn without replacement) of a split of 6 per class
        assert len(labels) == 8 and all(np.bincount(labels, minlength=10) <= val)
    assert len({tuple(labels) for _, _, labels, _ in runs[0]}) > 1  # each step draws anew


@pytest.mark.long
def test_a_run_that_learns_on_the_validation_split_resumes_exactly(tmp_path):
    recipe = resolve(digits(data={"val_per_class": 6}, train={"epochs": 3, "checkpoint_every": 1},
                            loss={"name": "toy_val_weighted"}))
    with LOSSES.scoped():
        LOSSES.register("toy_val_weighted")(ValidationWeighted)
        full = train(recipe, tmp_path / "full", quiet=True)
        resumed = resumed_run(recipe, tmp_path / "cut", stop_after=1)
    assert_same_training(resumed, full)


def test_a_component_that_reads_the_validation_split_needs_one(tmp_path):
    recipe = resolve(digits(loss={"name": "toy_val_weighted"}))
    with LOSSES.scoped():
        LOSSES.register("toy_val_weighted")(ValidationWeighted)
        with pytest.raises(ConfigError, match=r"loss.*val_per_class"):
            train(recipe, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_the_objective_a_step_sees_is_the_one_it_trains_on(tmp_path):
    """``step.objective(batch)`` is the step's differentiable loss: its value on the step's
    batch, before the update, equals the logged loss of a one-step epoch."""
    seen = []

    class Probe(Component):
        def before_step(self, step):
            with torch.no_grad():
                seen.append(float(step.objective(step.batch)[0]))

    n = len(DATASETS.build(digits()["data"]).train.labels)
    recipe = resolve(digits(train={"epochs": 1, "batch_size": n},
                            augment=[{"name": "toy_probe"}]))
    with AUGMENTS.scoped():
        AUGMENTS.register("toy_probe")(Probe)
        results = train(recipe, tmp_path / "run", quiet=True)
    assert len(seen) == 1 and seen[0] == pytest.approx(results["history"][0]["loss"], rel=1e-5)


def test_a_step_batch_knows_the_training_indices_it_was_drawn_from(tmp_path):
    """``batch.index`` is what the sampler drew for the step, so a component can fetch another
    view of the same images: the fetched labels are the batch's."""
    seen = []

    class Indices(Component):
        def __init__(self, *, context):
            super().__init__(context=context)

        def before_step(self, step):
            _, labels = self.context.fetch(step.batch.index)
            same = torch.equal(labels.cpu(), step.batch.y_a.cpu())
            seen.append((step.batch.index.clone(), same))

    recipe = resolve(digits(train={"epochs": 1, "batch_size": 64},
                            sampler={"name": "class_balanced"}, augment=[{"name": "toy_indices"}]))
    with AUGMENTS.scoped():
        AUGMENTS.register("toy_indices")(Indices)
        train(recipe, tmp_path / "run", quiet=True)
    n = len(DATASETS.build(recipe["data"]).train.labels)
    assert all(same for _, same in seen) and len(seen) == -(-n // 64)
    drawn = torch.cat([index for index, _ in seen])
    assert len(drawn) == n and len(torch.unique(drawn)) < n  # class-balanced: with repeats
