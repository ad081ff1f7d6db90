"""``train.compile``: the compiled step trains as the eager one, compiles full batches only, and
reports its compilation time apart.

Inductor's C++ code generation takes minutes on this CPU, so the suite compiles through a counting
backend (dynamo and AOTAutograd as in a real compile, then the captured graphs run as they are);
the CUDA path is the same call with ``mode="reduce-overhead"``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_engine import digits_recipe
from test_split_files import raises

from lttoolbox.engine import compile as compile_module
from lttoolbox.engine import train
from lttoolbox.engine.compile import compile_step
from lttoolbox.errors import ConfigError

CPU = torch.device("cpu")


def test_modes():
    step = torch.nn.Linear(2, 1)
    assert compile_step(step, "off", CPU) is None
    assert compile_step(step, "auto", CPU) is None  # auto: CUDA only
    compiled = compile_step(step, "on", CPU)
    assert compiled is not None and not compiled.ready
    raises(ConfigError, lambda: compile_step(step, "fast", CPU), "train.compile")
    raises(ConfigError, lambda: train(digits_recipe("train.compile=yes"), "unused"),
           "train.compile")


@pytest.fixture
def graphs(monkeypatch):
    """Every graph dynamo hands to the backend: the batch sizes of its example inputs."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    seen: list[set[int]] = []

    def counting(gm, example_inputs):
        # the image batch: (B, 1, 8, 8) digits (conv weights are 4-D too)
        seen.append({int(t.shape[0]) for t in example_inputs
                     if isinstance(t, torch.Tensor) and tuple(t.shape[1:]) == (1, 8, 8)})
        return aot_module_simplified(gm, example_inputs,
                                     fw_compiler=lambda g, _: make_boxed_func(g.forward))

    torch._dynamo.reset()
    monkeypatch.setattr(compile_module, "BACKEND", counting)
    yield seen
    torch._dynamo.reset()


@pytest.mark.long
def test_compiled_step_trains_as_the_eager_one(tmp_path, graphs):
    # 503 training images, batch 64: seven full batches and a last one of 55.
    eager = train(digits_recipe("train.epochs=2"), tmp_path / "eager", quiet=True)
    compiled = train(digits_recipe("train.epochs=2", "train.compile=on"), tmp_path / "compiled",
                     quiet=True)
    np.testing.assert_allclose([h["loss"] for h in compiled["history"]],
                               [h["loss"] for h in eager["history"]], rtol=1e-5)
    assert abs(compiled["top1"] - eager["top1"]) <= 0.2 + 1e-9
    assert graphs, "nothing was compiled"
    # only full batches reach the compiled step: the partial batch of 55 ran eagerly
    assert {64} in graphs and all(sizes <= {64} for sizes in graphs), graphs
    first, second = compiled["history"]
    assert first["compile_seconds"] > 0 and "compile_seconds" not in second
    assert "compile_seconds" not in eager["history"][0]


def test_compile_is_a_way_of_running_not_part_of_the_recipe_hash():
    from lttoolbox.recipe import recipe_hash
    assert recipe_hash(digits_recipe()) == recipe_hash(digits_recipe("train.compile=on"))


@pytest.mark.long
def test_a_step_that_fails_to_compile_trains_eagerly(tmp_path, monkeypatch):
    def failing(gm, example_inputs):
        raise NotImplementedError("this backend compiles nothing")

    torch._dynamo.reset()
    monkeypatch.setattr(compile_module, "BACKEND", failing)
    # dynamo would otherwise turn the backend's error into its own eager fallback
    monkeypatch.setattr(torch._dynamo.config, "suppress_errors", False)
    try:
        with pytest.warns(RuntimeWarning, match="trains eagerly"):
            fallback = train(digits_recipe("train.epochs=1", "train.compile=on"),
                             tmp_path / "fallback", quiet=True)
    finally:
        torch._dynamo.reset()
    eager = train(digits_recipe("train.epochs=1"), tmp_path / "eager", quiet=True)
    assert [h["loss"] for h in fallback["history"]] == [h["loss"] for h in eager["history"]]
    assert "failing" in fallback["history"][0]["compile_failed"]  # the backend named
