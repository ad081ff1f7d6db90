"""docs/extending.md's steps, followed by a newcomer: a loss, a phase-start action and a two-pass
(closure) optimizer, each in a file of its own outside the package, registered through
``LTTOOLBOX_PLUGINS`` alone (no edit of lttoolbox), trained on digits for one epoch."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

from lttoolbox import registry
from lttoolbox.engine import train
from lttoolbox.recipe import resolve

TOY = '''
import torch

from lttoolbox.api import Component
from lttoolbox.losses import LTLoss
from lttoolbox.registry import AUGMENTS, LOSSES, OPTIMIZERS

CLOSURE_CALLS = [0]


@LOSSES.register("toy_square")
class ToySquare(LTLoss):
    """(1 - p_y)^power of each sample."""

    def __init__(self, power=2.0, **base):
        super().__init__(**base)  # weights, weights_start_epoch and the context
        self.power = power

    def per_sample(self, logits, target):
        p = torch.softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
        return (1 - p) ** self.power


@AUGMENTS.register("toy_count_at_start")
class CountAtStart(Component):
    """Counts the training images per class at its phase's start (an artifact) and records
    them in results.json's selection; it takes the run's context as one object."""

    def __init__(self, *, context):
        super().__init__(context=context)  # kept as self.context

    def before_phase(self, events):
        events.record("toy_context", [self.context.num_classes, self.context.has_validation,
                                      list(self.context.class_counts)])
        made = events.artifact("toycounts", lambda: {
            "counts": torch.bincount(torch.as_tensor(events.train_labels()))})
        events.record("toy_counts", made["counts"].tolist())


class TwoPassSGD(torch.optim.SGD):
    """Evaluates the closure twice per step (as a sharpness-aware method does), then steps."""

    def step(self, closure):
        first = closure()
        CLOSURE_CALLS[0] += 1
        closure()
        CLOSURE_CALLS[0] += 1
        super().step()
        return first


@OPTIMIZERS.register("toy_two_pass")
def toy_two_pass(params, lr=0.05, weight_decay=0.0, fused=None):
    """Plain SGD whose step evaluates the closure twice."""
    return TwoPassSGD(params, lr=lr, weight_decay=weight_decay)
'''


@pytest.fixture
def toy_plugin(tmp_path, monkeypatch):
    (tmp_path / "lt_toy_extension.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(registry.PLUGINS_VARIABLE, "lt_toy_extension")
    added = {registry.LOSSES: "toy_square", registry.AUGMENTS: "toy_count_at_start",
             registry.OPTIMIZERS: "toy_two_pass"}
    try:
        yield
    finally:  # leave the registries as the other tests expect them
        for reg, name in added.items():
            reg._entries.pop(name, None)
        registry._loaded_plugins.discard("lt_toy_extension")
        import sys
        sys.modules.pop("lt_toy_extension", None)


def test_a_toy_loss_action_and_optimizer_train_through_the_documented_steps(toy_plugin,
                                                                            tmp_path):
    recipe = resolve({"data": {"name": "digits_lt", "imbalance_ratio": 10},
                      "model": {"name": "digits_cnn"},
                      "loss": {"name": "toy_square", "power": 2.0},
                      "augment": [{"name": "toy_count_at_start"}],
                      "optim": {"name": "toy_two_pass", "lr": 0.05},
                      "train": {"epochs": 1, "batch_size": 64}})
    # the loss's base parameters are its parameters: a misspelt one is refused before training
    bad = {**recipe, "loss": {"name": "toy_square", "wieghts": "sqrt_inverse"}}
    with pytest.raises(registry.ConfigError, match=r"^loss.wieghts: .*did you mean 'weights'"):
        train(bad, tmp_path / "bad", quiet=True)
    assert not (tmp_path / "bad").exists()
    results = train(recipe, tmp_path / "run", quiet=True)
    import lt_toy_extension as toy

    steps = len(results["history"]) and results["history"][0]
    assert len(results["history"]) == 1 and np.isfinite(steps["loss"])
    # the optimizer evaluated the closure twice per step, once per batch of the epoch
    from lttoolbox.registry import DATASETS
    data = DATASETS.build({"name": "digits_lt", "imbalance_ratio": 10})
    labels = np.asarray(data.train.labels)
    assert toy.CLOSURE_CALLS[0] == 2 * int(np.ceil(len(labels) / 64))
    # the phase-start action saw the training set and left its artifact for a resumed run
    assert results["selection"]["toy_counts"] == np.bincount(labels).tolist()
    # ... and the run's context, as one typed object
    assert results["selection"]["toy_context"] == [10, False, np.bincount(labels).tolist()]
    assert (tmp_path / "run" / f"toycounts-{results['phases'][0]['name']}.pt").is_file()
    assert results["top1"] > 100.0 / len(np.bincount(labels))  # it learned something


def test_an_unimportable_plugin_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setenv(registry.PLUGINS_VARIABLE, "lt_no_such_module")
    try:
        with pytest.raises(registry.ConfigError, match="LTTOOLBOX_PLUGINS"):
            registry.LOSSES.names()
    finally:
        registry._loaded_plugins.discard("lt_no_such_module")


def test_a_module_added_to_a_family_package_registers_without_an_import_line(tmp_path,
                                                                             monkeypatch):
    """A family package imports every module in it (as lttoolbox's do), so a new entry file
    needs no line in the package's __init__.py."""
    import sys

    package = tmp_path / "lt_toy_family"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from lttoolbox.registry import Registry, import_submodules\n"
        "TOYS = Registry('toy')\n"
        "import_submodules(__name__)\n")
    (package / "kite.py").write_text(
        "from . import TOYS\n\n@TOYS.register('kite')\nclass Kite:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import lt_toy_family
        assert lt_toy_family.TOYS.names() == ["kite"]
    finally:
        for name in [m for m in sys.modules if m.startswith("lt_toy_family")]:
            sys.modules.pop(name)


def test_an_entry_that_is_not_a_component_is_refused_naming_its_key(tmp_path):
    """The trainer calls the declared methods on every component: an entry written without the
    base class stops before training with one line, not an AttributeError inside the loop."""
    from lttoolbox.errors import ConfigError

    class Bare:
        def __call__(self, h, batch):
            return h, batch

    registry.AUGMENTS.register("toy_bare")(Bare)
    try:
        with pytest.raises(ConfigError, match=r"^augment\[0\]: Bare is not an lttoolbox.api"):
            train(resolve({"data": {"name": "digits_lt", "imbalance_ratio": 10},
                           "model": {"name": "digits_cnn"}, "augment": [{"name": "toy_bare"}],
                           "train": {"epochs": 1}}), tmp_path / "run", quiet=True)
    finally:
        registry.AUGMENTS._entries.pop("toy_bare", None)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
