"""``train.ema``, ``train.clip_grad_norm`` and ``train.accumulate``: formulas against values
worked out here, the whole-batch equality of accumulated gradients, end-to-end runs with exact
resume, and the refusals."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from conftest import DIGITS, assert_same_training, digits, resumed_run
from lttoolbox.batch import Batch
from lttoolbox.engine import train
from lttoolbox.engine.ema import WeightAverage
from lttoolbox.engine.loop import accumulated_step, gradient_clipping
from lttoolbox.engine.step import TrainStep
from lttoolbox.engine.trainer import Trainer
from lttoolbox.errors import ConfigError


# ------------------------------------------------------------------------------ formulas
def test_the_average_follows_the_ema_recurrence():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(7, 3))
    net = torch.nn.Linear(3, 1, bias=False)
    ema = WeightAverage(net, decay=0.8, every=2)
    expected = None
    for step, w in enumerate(weights, start=1):
        net.weight.data = torch.tensor(w[None], dtype=torch.float32)
        ema.update(net)
        if step % 2 == 0:  # updates at steps 2, 4, 6; the first copies
            expected = w if expected is None else 0.8 * expected + 0.2 * w
    np.testing.assert_allclose(ema.module.weight.detach().numpy()[0], expected, rtol=1e-6)
    assert ema.steps == 7 and not ema.module.weight.requires_grad


def test_clipping_scales_the_global_norm_down_only():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])  # global norm 5
    gradient_clipping(1.0, opt, scaler)()
    np.testing.assert_allclose([*a.grad.tolist(), *b.grad.tolist()], [0.6, 0.0, 0.8], rtol=1e-5)
    a.grad, b.grad = torch.tensor([0.3, 0.0]), torch.tensor([0.4])  # norm 0.5: left alone
    gradient_clipping(1.0, opt, scaler)()
    assert a.grad.tolist() == pytest.approx([0.3, 0.0]) and b.grad.tolist() == pytest.approx([0.4])


def test_batch_chunks_keep_every_field_aligned():
    x = torch.arange(7.0)[:, None]
    mixed = Batch(x, torch.arange(7), torch.arange(7).flip(0), torch.linspace(0, 1, 7),
                  torch.arange(10, 17))
    parts = mixed.chunks(3)
    assert [p.x.shape[0] for p in parts] == [3, 2, 2]
    for name in ("x", "y_a", "y_b", "lam", "index"):
        assert torch.equal(torch.cat([getattr(p, name) for p in parts]), getattr(mixed, name))
    assert all(p.mixed for p in parts)
    assert not any(p.mixed for p in Batch.plain(x, torch.arange(7)).chunks(3))


# ------------------------------------------------------- accumulation = the whole batch
def whole_and_parts(tmp_path, loss: dict, mix: bool, parts: int = 4):
    recipe = digits(loss=loss, train={"epochs": 1})
    trainer = Trainer(recipe, tmp_path / "run")
    model = trainer.model.eval()  # BatchNorm's running statistics: the same in every part
    step = TrainStep(model, trainer.phases[0])
    torch.manual_seed(0)
    index = torch.randperm(len(trainer.data_path.train_labels()))[:50]
    x, y = trainer.data_path.fetch(index)
    batch = Batch.plain(x, y, index=index)
    if mix:  # mixed before the step, as a component's before_step may do
        batch = batch.replace(y_b=y.flip(0), lam=torch.rand(50))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    grads = []
    for split in (1, parts):
        model.zero_grad(set_to_none=True)
        if split == 1:
            losses = step(batch)
            losses[0].backward()
        else:
            losses = accumulated_step(step, step, batch, split, None, scaler, False)
        grads.append(([p.grad.clone() for p in model.parameters()], losses.detach()))
    return grads


@pytest.mark.parametrize("loss", [{"name": "ce"}, {"name": "ce", "weights": "inverse"},
                                  {"name": "ldam"}, {"name": "focal", "gamma": 2.0}],
                         ids=["ce", "weighted", "ldam", "focal"])
@pytest.mark.parametrize("mix", [False, True], ids=["plain", "mixed"])
def test_accumulated_gradient_is_the_whole_batch_gradient(tmp_path, loss, mix):
    (whole, whole_loss), (acc, acc_loss) = whole_and_parts(tmp_path, loss, mix)
    for g, h in zip(whole, acc):
        torch.testing.assert_close(h, g, rtol=1e-4, atol=1e-6)  # float sums regrouped
    torch.testing.assert_close(acc_loss, whole_loss.reshape(acc_loss.shape), rtol=1e-5, atol=0)


def test_an_auxiliary_loss_is_weighed_by_each_part_share(tmp_path):
    trainer = Trainer(digits(train={"epochs": 1}), tmp_path / "run")
    step = TrainStep(trainer.model.eval(), trainer.phases[0])

    class Constant:  # a batch-mean auxiliary term that is 2.5 on every part
        def auxiliary_loss(self):
            return torch.tensor(2.5)

    step.aux_parts, step.term_names = [Constant()], ["ce", "const"]
    x, y = trainer.data_path.fetch(torch.arange(10))
    losses = accumulated_step(step, step, Batch.plain(x, y), 3, None,
                              torch.amp.GradScaler("cpu", enabled=False), False)
    assert float(losses[2]) == pytest.approx(2.5)  # 3/10 + 3/10 + 4/10 of it
    assert step.share == 1.0 and step.normalize is None  # restored after the step


# ------------------------------------------------------------------------ end to end
def test_the_average_changes_nothing_of_the_training_and_is_reported(tmp_path):
    plain = train(digits(train={"epochs": 2}), tmp_path / "plain", quiet=True)
    with_ema = train(digits(train={"epochs": 2, "ema": 0.9}), tmp_path / "ema", quiet=True)
    assert_same_training(with_ema, plain)
    raw = torch.load(tmp_path / "plain" / "model-main.pt")
    assert all(torch.equal(raw[k], v) for k, v in
               torch.load(tmp_path / "ema" / "model-main.pt").items())
    averaged = torch.load(tmp_path / "ema" / "ema-main.pt")
    assert set(averaged) == set(raw)  # loads into the plain network
    assert not all(torch.equal(averaged[k], raw[k]) for k in raw)
    saved = json.loads((tmp_path / "ema" / "results.json").read_text())
    assert saved["ema"]["top1"] == with_ema["ema"]["top1"] and "ema" not in plain


def test_lteval_evaluates_the_average(tmp_path):
    from lttoolbox.cli_eval import main as lteval

    train(digits(train={"epochs": 1, "ema": {"decay": 0.5}}), tmp_path / "run", quiet=True)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert lteval([str(tmp_path / "run"), "--weights", "ema-main.pt", "--quiet",
                   "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["top1"] == results["ema"]["top1"]


@pytest.mark.long
@pytest.mark.parametrize("options", [{"ema": {"decay": 0.9, "every": 2}},
                                     {"accumulate": 3, "clip_grad_norm": 0.5}],
                         ids=["ema", "accumulate-clip"])
def test_an_interrupted_run_resumes_exactly(tmp_path, options):
    recipe = digits(train={"epochs": 3, **options})
    full = train(copy.deepcopy(recipe), tmp_path / "full", quiet=True)
    resumed = resumed_run(copy.deepcopy(recipe), tmp_path / "resumed", stop_after=1)
    assert_same_training(resumed, full)
    if "ema" in options:
        assert resumed["ema"]["per_class_acc"] == full["ema"]["per_class_acc"]
        a = torch.load(tmp_path / "full" / "ema-main.pt")
        b = torch.load(tmp_path / "resumed" / "ema-main.pt")
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_clipping_acts_and_an_unreachable_bound_changes_nothing(tmp_path):
    plain = train(digits(train={"epochs": 1}), tmp_path / "plain", quiet=True)
    loose = train(digits(train={"epochs": 1, "clip_grad_norm": 1e9}), tmp_path / "loose",
                  quiet=True)
    tight = train(digits(train={"epochs": 1, "clip_grad_norm": 1e-3}), tmp_path / "tight",
                  quiet=True)
    assert_same_training(loose, plain)
    assert tight["history"][0]["loss"] != plain["history"][0]["loss"]


def test_the_new_keys_at_their_defaults_keep_the_recipe_hash():
    from lttoolbox.recipe import recipe_hash, resolve

    plain = resolve(copy.deepcopy(DIGITS))
    spelled = resolve(digits(train={"ema": None, "clip_grad_norm": None, "accumulate": 1}))
    assert recipe_hash(plain) == recipe_hash(spelled)
    assert recipe_hash(resolve(digits(train={"accumulate": 2}))) != recipe_hash(plain)


# ------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("sections, key", [
    ({"train": {"accumulate": 0}}, "train.accumulate"),
    ({"train": {"accumulate": 65}}, "train.accumulate"),
    ({"train": {"accumulate": 2}, "optim": {"name": "sam", "lr": 0.05}}, "train.accumulate"),
    ({"train": {"accumulate": 2}, "loss": {"name": "absgd"}}, "train.accumulate"),
    ({"train": {"accumulate": 2}, "loss": {"name": "ce", "weights": "inverse"},
      "augment": [{"name": "mixup"}]}, "train.accumulate"),
    ({"train": {"accumulate": 2},
      "augment": [{"name": "open_sampling", "open": {"source": "noise", "size": 64}}]},
     "train.accumulate"),
    ({"train": {"accumulate": 2}, "augment": [{"name": "bbn"}],
      "model": {"name": "two_branch_digits_cnn"}}, "train.accumulate"),
    ({"train": {"accumulate": 2}, "augment": [{"name": "rescom", "select_num_neg": 9}]},
     "train.accumulate"),
    ({"train": {"accumulate": 2}, "generator": {"name": "rsg", "point": "layer1"}},
     "train.accumulate"),
    ({"train": {"clip_grad_norm": 0}}, "train.clip_grad_norm"),
    ({"train": {"clip_grad_norm": "big"}}, "train.clip_grad_norm"),
    ({"train": {"ema": 1.0}}, "train.ema.decay"),
    ({"train": {"ema": {"decay": 0.9, "warmup": True}}}, "train.ema.warmup"),
    ({"train": {"ema": {"every": 0}}}, "train.ema.every"),
    ({"train": {"ema": "yes"}}, "train.ema"),
], ids=["zero-parts", "more-parts-than-images", "two-pass-optimizer", "batch-weighted-loss",
        "weights-with-mixing", "rows-added", "two-streams", "two-views", "generator",
        "clip-zero", "clip-text", "decay-1", "unknown-key", "every-0", "not-a-mapping"])
def test_bad_options_are_refused_naming_the_key(tmp_path, sections, key):
    with pytest.raises(ConfigError) as err:
        Trainer(digits(**sections), tmp_path / "run")
    assert err.value.key == key, str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.long
def test_a_run_in_parts_trains_as_the_run_in_whole_batches(tmp_path):
    # Without BatchNorm (whose statistics are each part's) the two runs are the same up to the
    # order of float sums.
    recipe = digits(model={"name": "digits_cnn", "batch_norm": False},
                    loss={"name": "ce", "weights": "inverse"}, train={"epochs": 2})
    whole = train(copy.deepcopy(recipe), tmp_path / "whole", quiet=True)
    recipe["train"]["accumulate"] = 4
    parts = train(recipe, tmp_path / "parts", quiet=True)
    np.testing.assert_allclose([r["loss"] for r in parts["history"]],
                               [r["loss"] for r in whole["history"]], rtol=1e-4)
    a, b = (torch.load(tmp_path / d / "model-main.pt") for d in ("whole", "parts"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-4, rtol=0)
