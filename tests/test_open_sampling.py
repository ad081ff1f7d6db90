"""Open-sampling (``open_sampling``): Gamma and the weights against numpy, the step's loss
against a hand computation, the label and image draws, the open-set readers (folder, list,
noise, digits), bad parameters and bad open sets refused before anything is written, the
components refused while the open rows ride in the batch, the recipes on the digits, an exact
resume and two processes."""
from __future__ import annotations

import runpy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, digits, eager_and_compiled, on_digits, resumed_run, assert_same_training
from lttoolbox.api import Component, Context
from lttoolbox.augment.open_sampling import (OpenSampling, complementary_distribution,
                                             open_loss, open_weights)
from lttoolbox.batch import Batch
from lttoolbox.data.open_set import load_open_set
from lttoolbox.data.transforms import BatchTransform
from lttoolbox.engine import train
from lttoolbox.engine.phases import Phase
from lttoolbox.engine.step import TrainStep
from lttoolbox.errors import ConfigError, DataError
from lttoolbox.losses import CELoss
from lttoolbox.models import DigitsCNN
from lttoolbox.recipe import read_recipe, resolve
from lttoolbox.registry import AUGMENTS

NOISE = {"source": "noise", "size": 300}
COUNTS = [100, 10, 1]


def context(counts=COUNTS, shape=(1, 8, 8), **more) -> Context:
    transform = BatchTransform((0.5,) * shape[0], (0.25,) * shape[0])
    return Context.from_counts(counts, image_shape=shape, train_transform=transform, **more)


def build(counts=COUNTS, shape=(1, 8, 8), ctx=None, **params) -> OpenSampling:
    params.setdefault("open", NOISE)
    return AUGMENTS.build({"name": "open_sampling", **params},
                          **(ctx or context(counts, shape)).as_kwargs())


def numpy_gamma(counts, alpha=None):
    pi = np.asarray(counts, dtype=np.float64) / np.sum(counts)
    alpha = pi.max() + pi.min() if alpha is None else alpha
    return (alpha - pi) / (alpha - pi).sum()


# ------------------------------------------------------------------------------------ formulas
def test_gamma_and_weights_of_the_worked_example():
    """K = 3, counts [100, 10, 1]: alpha = pi_max + pi_min = 0.909910, Gamma = (alpha - pi) /
    (3 alpha - 1) = [0.005208, 0.473958, 0.520833], w = 3 Gamma."""
    gamma = complementary_distribution(COUNTS)
    np.testing.assert_allclose(gamma, [0.0052083, 0.4739583, 0.5208333], atol=1e-7)
    np.testing.assert_allclose(open_weights(gamma), [0.015625, 1.421875, 1.5625], atol=1e-7)


@pytest.mark.parametrize("alpha", [None, 0.5, 0.95])
def test_gamma_matches_numpy_on_random_counts(alpha):
    counts = np.random.default_rng(1).integers(1, 5000, size=10)
    counts[0] = 4000  # pi_max < 0.5
    np.testing.assert_allclose(complementary_distribution(counts, alpha),
                               numpy_gamma(counts, alpha), rtol=1e-12)
    np.testing.assert_allclose(open_weights(complementary_distribution(counts, alpha)),
                               10 * numpy_gamma(counts, alpha), rtol=1e-12)


def test_balanced_classes_give_a_uniform_gamma():
    np.testing.assert_allclose(complementary_distribution([7] * 4), [0.25] * 4)


def test_the_open_term_of_the_worked_example():
    """(1.421875 CE([2, 1, 0.5], 1) + 1.5625 CE([0, 0, 0], 2)) / (1.421875 + 1.5625) = 1.272873;
    without the weights the plain mean (1.464369 + ln 3) / 2."""
    z = torch.tensor([[2.0, 1.0, 0.5], [0.0, 0.0, 0.0]])
    y = torch.tensor([1, 2])
    ce1 = -np.log(np.exp(1) / (np.exp(2) + np.exp(1) + np.exp(0.5)))
    assert ce1 == pytest.approx(1.464369, abs=1e-6)
    w = torch.tensor([0.015625, 1.421875, 1.5625])
    assert float(open_loss(z, y, w)) == pytest.approx(1.272873, abs=1e-6)
    assert float(open_loss(z, y, None)) == pytest.approx((ce1 + np.log(3)) / 2, abs=1e-6)


def step_events(batch, model):
    return SimpleNamespace(batch=batch, model=model)


@pytest.mark.parametrize("reweight", [True, False])
def test_the_steps_loss_is_the_batch_ce_plus_lambda_times_the_open_term(reweight):
    """The trainer's objective on a tiny batch: CE mean of the batch's rows + lambda_o * the
    (weighted) mean CE of the open rows with the drawn labels, computed in numpy from each
    row's logits (no batch norm: the rows' logits do not depend on each other)."""
    torch.manual_seed(0)
    part = build(batch_size=5, lambda_o=0.7, reweight=reweight)
    model = DigitsCNN(num_classes=3, batch_norm=False)
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 2, 1])
    batch = Batch.plain(x, y)
    step = TrainStep(model, Phase("main", {"loss": {"name": "ce"}, "augment": [
        {"name": "open_sampling"}], "generator": None}, Component(), CELoss(num_classes=3),
        [part], None))
    step.hooks = {p: part.hook(p) for p in part.points()}
    part.before_epoch(0)
    part.before_step(step_events(batch, model))
    total, ce, term = step(batch).tolist()
    open_x = part.transform(part.images[part.last_indices])
    labels = part.last_labels.numpy()

    def ce_rows(z, t):
        z = z.detach().double().numpy()
        z = z - z.max(axis=1, keepdims=True)
        return -(z[np.arange(len(t)), t] - np.log(np.exp(z).sum(axis=1)))

    inside = ce_rows(model(x), y.numpy()).mean()
    per = ce_rows(model(open_x), labels)
    w = 3 * numpy_gamma(COUNTS)[labels] if reweight else np.ones(5)
    expected = 0.7 * (w * per).sum() / w.sum()
    assert ce == pytest.approx(inside, rel=1e-5)
    assert term == pytest.approx(expected, rel=1e-5)
    assert total == pytest.approx(inside + expected, rel=1e-5)


def test_one_forward_shares_the_batch_norm_statistics():
    """The batch's logits are those of one forward of batch + open images (training mode): the
    open images change them, as in the code's single forward of the concatenation."""
    torch.manual_seed(0)
    part = build(batch_size=6)
    model = DigitsCNN(num_classes=3).train()
    x = torch.randn(4, 1, 8, 8)
    batch = Batch.plain(x, torch.tensor([0, 1, 2, 0]))
    part.before_epoch(0)
    part.before_step(step_events(batch, model))
    logits, out = model.forward_hooked(batch, {p: part.hook(p) for p in part.points()})
    joint = model(torch.cat([x, part._pending[0]]))
    torch.testing.assert_close(logits, joint[:4])
    assert not torch.allclose(logits, model(x), atol=1e-4)
    assert out.y_a.shape == (4,) and part.auxiliary_loss() is not None
    assert part.auxiliary_loss() is None  # read once per forward


def test_the_labels_follow_gamma():
    """40,000 labels drawn by the component: each class's share within 4 standard errors of
    Gamma_c."""
    part = build(counts=[60, 30, 10], batch_size=40000)
    part.set_epoch(0)
    _, labels = part.next_draw()
    share = np.bincount(labels.numpy(), minlength=3) / 40000
    gamma = numpy_gamma([60, 30, 10])
    assert np.all(np.abs(share - gamma) <= 4 * np.sqrt(gamma * (1 - gamma) / 40000))


def test_the_stream_is_a_permutation_per_pass_and_restarts_with_the_epoch():
    """300 open images, 128 a step: two steps from the first permutation, then a new one (the
    44 left would not make a batch); every step's images are distinct. An epoch starts the same
    stream again (a resumed run draws the same)."""
    part = build(batch_size=128)
    part.set_epoch(3)
    steps = [part.next_draw()[0] for _ in range(5)]
    assert all(len(set(s.tolist())) == 128 for s in steps)
    assert len(set(torch.cat(steps[:2]).tolist())) == 256
    assert len(set(torch.cat(steps[2:4]).tolist())) == 256  # the second pass
    part.set_epoch(3)
    assert all(torch.equal(part.next_draw()[0], s) for s in steps)
    part.set_epoch(4)
    assert not torch.equal(part.next_draw()[0], steps[0])
    big = build(batch_size=700)  # larger than the set: whole passes, then a part of one
    big.set_epoch(0)
    counts = np.bincount(big.next_draw()[0].numpy(), minlength=300)
    assert sorted(set(counts.tolist())) == [2, 3] and counts.sum() == 700


def test_each_process_takes_its_share_of_the_global_draw():
    """Two processes: rank r takes positions [r m, (r + 1) m) of the one-process draw, images
    and labels, so the ranks' open images are distinct and together the global batch."""
    one = build(batch_size=64)
    ranks = [build(batch_size=64, ctx=context(rank=r, world_size=2)) for r in range(2)]
    for part in (one, *ranks):
        part.set_epoch(0)
    for _ in range(6):  # 384 > 300: across a pass boundary too
        idx, lab = one.next_draw()
        shares = [part.next_draw() for part in ranks]
        assert torch.equal(torch.cat([s[0] for s in shares]), idx)
        assert torch.equal(torch.cat([s[1] for s in shares]), lab)
        assert not set(shares[0][0].tolist()) & set(shares[1][0].tolist())


def test_outside_its_window_nothing_is_drawn_or_added():
    part = build(start_epoch=1)
    model = DigitsCNN(num_classes=3)
    batch = Batch.plain(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))
    part.before_epoch(0)
    state = torch.get_rng_state()
    part.before_step(step_events(batch, model))
    assert part._pending is None and part.auxiliary_loss() is None
    assert torch.equal(torch.get_rng_state(), state)


# ------------------------------------------------------------------------------- open sets
def write_png(path, value, size=(10, 12), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    pixels[..., 1] = (value + 40) % 256
    Image.fromarray(pixels if mode == "RGB" else pixels[..., 0]).save(path)


def test_a_folder_at_any_depth_in_path_order(tmp_path):
    root = tmp_path / "open"
    write_png(root / "b" / "deep" / "x.png", 30)
    write_png(root / "a.png", 10, size=(8, 8))
    write_png(root / "b" / "c.jpg", 200)
    (root / ".hidden.png").write_bytes(b"not read")
    (root / "b" / "loop").symlink_to(root, target_is_directory=True)  # read once, no cycle
    (root / "notes.txt").write_text("skipped")
    images = load_open_set({"source": "folder", "root": str(root), "cache_dir": str(tmp_path)},
                           (3, 8, 8))
    assert images.shape == (3, 3, 8, 8) and images.dtype == torch.uint8
    # a.png, b/c.jpg, b/deep/x.png: red channel 10, ~200 (JPEG), 30
    assert images[0, 0].unique().tolist() == [10] and images[2, 0].unique().tolist() == [30]
    assert abs(int(images[1, 0].float().mean()) - 200) <= 3
    kept = load_open_set({"source": "folder", "root": str(root), "max_images": 1,
                          "cache_dir": str(tmp_path)}, (3, 8, 8))
    assert torch.equal(kept, images[:1])


def test_one_channel_images_get_the_luminance(tmp_path):
    write_png(tmp_path / "open" / "a.png", 100)  # R 100, G 140, B 100
    images = load_open_set({"source": "folder", "root": str(tmp_path / "open"),
                            "cache_dir": str(tmp_path)}, (1, 8, 8))
    assert images.shape == (1, 1, 8, 8)
    assert images.unique().tolist() == [round(0.299 * 100 + 0.587 * 140 + 0.114 * 100)]


def test_a_list_with_or_without_labels(tmp_path):
    root = tmp_path / "imgs"
    write_png(root / "one.png", 50)
    write_png(root / "two" / "two.png", 90)
    listing = tmp_path / "open.txt"
    listing.write_text("two/two.png\n\n/one.png 7\n")
    images = load_open_set({"source": "list", "file": str(listing), "root": str(root),
                            "cache_dir": str(tmp_path)}, (3, 8, 8))
    assert [int(images[i, 0, 0, 0]) for i in range(2)] == [90, 50]  # the list's order
    local = root / "list.txt"
    local.write_text("one.png\n")
    assert load_open_set({"source": "list", "file": str(local), "cache_dir": str(tmp_path)},
                         (3, 8, 8)).shape[0] == 1  # root: the list's folder


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_noise_is_seeded_and_of_its_kind(kind):
    cfg = {"source": "noise", "kind": kind, "size": 400, "seed": 3}
    images = load_open_set(cfg, (3, 8, 8))
    assert images.shape == (400, 3, 8, 8) and torch.equal(images, load_open_set(cfg, (3, 8, 8)))
    assert not torch.equal(images, load_open_set({**cfg, "seed": 4}, (3, 8, 8)))
    values = images.double().numpy().ravel()
    if kind == "uniform":
        assert values.min() == 0 and values.max() == 255
        assert values.mean() == pytest.approx(127.5, abs=1.5)
    else:  # clip(N(0, 0.5), -1, 1) on [-1, 1]: 127.5 + 63.75 N(0, 1), clipped at 2 sigma
        assert values.mean() == pytest.approx(127.5, abs=1.0)
        from math import erf, exp, pi, sqrt
        tail = 1 - erf(2 / sqrt(2))  # P(|N| > 2)
        clipped_var = (1 - tail) - 2 * 2 * exp(-2) / sqrt(2 * pi) + 4 * tail
        assert values.std() == pytest.approx(63.75 * sqrt(clipped_var), rel=0.02)
        assert np.mean(values == 255) == pytest.approx(tail / 2, abs=0.004)


def test_the_digits_upscaled_to_rgb():
    """scikit-learn's 1,797 digits, round(x * 255 / 16), resized bilinearly (Pillow's bilinear
    resize agrees within one grey level) and repeated over three channels."""
    from sklearn.datasets import load_digits

    raw = np.rint(load_digits().images * (255.0 / 16.0)).astype(np.uint8)
    small = load_open_set({"source": "digits"}, (1, 8, 8))
    assert small.shape == (1797, 1, 8, 8) and np.array_equal(small[:, 0].numpy(), raw)
    images = load_open_set("digits", (3, 32, 32))
    assert images.shape == (1797, 3, 32, 32)
    assert torch.equal(images[:, 0], images[:, 2])
    for i in (0, 100, 1796):
        pil = np.asarray(Image.fromarray(raw[i]).resize((32, 32), Image.Resampling.BILINEAR))
        assert np.abs(images[i, 1].numpy().astype(int) - pil.astype(int)).max() <= 1


@pytest.mark.parametrize("cfg, key, error", [
    ({"source": "folder", "root": "/no/such/folder"}, "open.root", ConfigError),
    ({"source": "folder"}, "open.root", ConfigError),
    ({"source": "list"}, "open.file", ConfigError),
    ({"source": "list", "file": "/no/such/list.txt"}, "/no/such/list.txt", DataError),
    ({"source": "noise", "kind": "pink"}, "open.kind", ConfigError),
    ({"source": "noise", "size": 0}, "open.size", ConfigError),
    ({"source": "digits", "root": "x"}, "open.root", ConfigError),
    ({"source": "tiny_images"}, "open.source", ConfigError),
    ({"root": "x"}, "open", ConfigError),
])
def test_a_bad_open_set_is_one_line_naming_the_key_or_file(cfg, key, error):
    with pytest.raises(error, match=key) as err:
        load_open_set(cfg, (3, 8, 8))
    assert "\n" not in str(err.value)


def test_a_bad_file_and_a_missing_listed_image_are_named(tmp_path):
    root = tmp_path / "open"
    write_png(root / "good.png", 10)
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png") as err:
        load_open_set({"source": "folder", "root": str(root), "cache_dir": str(tmp_path)},
                      (3, 8, 8))
    assert "\n" not in str(err.value)
    listing = tmp_path / "open.txt"
    listing.write_text("good.png\nmissing.png\n")
    with pytest.raises(DataError, match=r"open.txt:2: no image .*missing.png"):
        load_open_set({"source": "list", "file": str(listing), "root": str(root)}, (3, 8, 8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .png/.jpg/.jpeg image below"):
        load_open_set({"source": "folder", "root": str(tmp_path / "empty")}, (3, 8, 8))


# --------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("params, key", [
    ({"batch_size": 0}, "batch_size"),
    ({"lambda_o": -1}, "lambda_o"),
    ({"alpha": 0.5}, "alpha"),  # below pi_max = 0.9009
    ({"alpha": "big"}, "alpha"),
    ({"reweight": "yes"}, "reweight"),
    ({"open": None}, "open"),
    ({"open": {"source": "noise", "size": -3}}, "open.size"),
    ({"start_epoch": -1}, "start_epoch"),
])
def test_bad_parameters_are_one_line_naming_the_key(params, key):
    with pytest.raises(ConfigError) as err:
        build(**params)
    assert str(err.value).startswith(f"augment.{key}: ") and "\n" not in str(err.value)


def test_the_global_open_batch_must_split_over_the_processes():
    with pytest.raises(ConfigError, match="batch_size.*divisible by 2"):
        build(batch_size=5, ctx=context(rank=0, world_size=2))


def test_without_a_batch_transform_it_asks_for_the_memory_path():
    ctx = Context.from_counts(COUNTS, image_shape=(3, 8, 8))
    with pytest.raises(ConfigError, match="data.path: memory"):
        AUGMENTS.build({"name": "open_sampling", "open": NOISE}, **ctx.as_kwargs())


def test_a_bad_open_set_stops_the_recipe_before_anything_is_written(tmp_path):
    recipe = digits(augment=[{"name": "open_sampling",
                              "open": {"source": "folder", "root": str(tmp_path / "nope")}}])
    with pytest.raises(ConfigError, match=r"augment\[0\]\.open\.root: no folder at") as err:
        train(resolve(recipe), tmp_path / "run", quiet=True)
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("augment, key", [
    ([{"name": "open_sampling", "open": NOISE}, {"name": "mixup"}], r"augment\[1\]"),
    ([{"name": "open_sampling", "open": NOISE},
      {"name": "manifold_mixup", "point": "layer1"}], r"augment\[1\]"),
    ([{"name": "manifold_mixup", "point": "features"},
      {"name": "open_sampling", "open": NOISE}], r"augment\[0\]"),
])
def test_components_acting_on_the_open_rows_are_refused(tmp_path, augment, key):
    """A mix at 'input' after it, at a point in between, or at 'features' before it would see
    the open rows, which have no targets."""
    with pytest.raises(ConfigError, match=key + ".*open rows|" + key + ".*added its rows"):
        train(resolve(digits(augment=augment)), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_in_other_epochs_a_mix_is_allowed(tmp_path):
    """Windows that do not meet: mixup in epoch 0, open-sampling from epoch 1; and a mix listed
    before it at 'input' mixes the batch alone."""
    for augment in ([{"name": "open_sampling", "open": NOISE, "batch_size": 32,
                      "start_epoch": 1}, {"name": "mixup", "end_epoch": 1}],
                    [{"name": "mixup"}, {"name": "open_sampling", "open": NOISE,
                                         "batch_size": 32}]):
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        results = train(resolve(digits(train={"epochs": 2}, augment=augment)), out, quiet=True)
        assert results["history"][-1]["loss_terms"]["open_sampling"] > 0


# ------------------------------------------------------------------------------ end to end
def test_the_cifar_recipe_runs_on_the_digits(tmp_path):
    """The CIFAR-10-LT recipe's settings on the digits (its open set, the upscaled digits, would
    be the training images themselves here: noise instead), two epochs."""
    recipe = on_digits(read_recipe(ROOT / "configs" / "cifar10_lt" / "open_sampling.yaml"))
    assert recipe["augment"][0]["open"]["source"] == "digits"
    recipe["augment"][0].update(open={"source": "noise", "size": 500}, batch_size=128)
    results = train(resolve(recipe), tmp_path / "run", quiet=True)
    terms = [row["loss_terms"] for row in results["history"]]
    assert all(t["open_sampling"] > 0 and t["ce"] > 0 for t in terms)
    assert results["top1"] > 15.0  # chance is 10 %


@pytest.mark.parametrize("dataset", ["cifar10_lt", "cifar100_lt"])
def test_the_recipes_carry_the_official_settings(dataset):
    recipe = read_recipe(ROOT / "configs" / dataset / "open_sampling.yaml")
    (part,) = recipe["augment"]
    assert (part["name"], part["batch_size"], part["lambda_o"]) == ("open_sampling", 512, 1.0)
    assert part["open"] == {"source": "digits"} and part.get("reweight", True)
    assert recipe["loss"]["name"] == "ce" and recipe["train"]["epochs"] == 200
    assert recipe["train"]["batch_size"] == 128 and recipe["optim"]["weight_decay"] == 2e-4


@pytest.mark.long
def test_resume_matches_an_uninterrupted_run(tmp_path):
    """Stopped at the end of epoch 2, before its checkpoint, and resumed from epoch 1's: the
    open stream restarts with the epoch, the crops continue torch's checkpointed generator."""
    recipe = resolve(digits(data={"crop_padding": 1}, train={"epochs": 3, "checkpoint_every": 1},
                            augment=[{"name": "open_sampling", "open": NOISE, "batch_size": 48,
                                      "start_epoch": 1}]))
    full = train(recipe, tmp_path / "full", quiet=True)
    assert_same_training(resumed_run(recipe, tmp_path / "cut", stop_after=2), full)
    assert full["history"][2]["loss_terms"]["open_sampling"] > 0


@pytest.mark.long
def test_two_processes_match_one(tmp_path):
    """Each rank trains on its share of the global open batch (distinct images, the labels one
    process draws) and the weighted mean divides by the global sum of weights, so two processes
    follow one (no batch norm, no random transform)."""
    from test_distributed import DIGITS as DDP_DIGITS
    from test_distributed import LOSS_RTOL, WEIGHT_ATOL, run_ranks, weights

    recipe = resolve({**DDP_DIGITS, "train": {**DDP_DIGITS["train"], "epochs": 1},
                      "augment": [{"name": "open_sampling", "open": NOISE, "batch_size": 32}]})
    one = train(recipe, tmp_path / "one", quiet=True)
    two = run_ranks(tmp_path, recipe, tmp_path / "two")
    assert two["processes"] == 2
    for a, b in zip(one["history"], two["history"]):
        assert b["loss_terms"]["open_sampling"] == pytest.approx(
            a["loss_terms"]["open_sampling"], rel=LOSS_RTOL)
        assert b["loss"] == pytest.approx(a["loss"], rel=LOSS_RTOL)
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], atol=WEIGHT_ATOL, rtol=0)


def test_the_step_cost_benchmark_times_it(tmp_path):
    """benchmarks/throughput.py --augment times the step with open-sampling (its draw and
    transform in before_step, the longer forward); one step here, the figures are for the
    benchmark."""
    from lttoolbox.engine.trainer import Trainer

    script = runpy.run_path(str(ROOT / "benchmarks" / "throughput.py"))
    assert "open_sampling" in script["AUGMENTS_TIMED"]
    recipe = resolve(digits())
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    drawn = []
    original = OpenSampling.next_draw

    def counting(self):
        drawn.append(1)
        return original(self)

    OpenSampling.next_draw = counting
    try:
        figures = script["time_components"](trainer, recipe, 1, 1, "augment")
    finally:
        OpenSampling.next_draw = original
    assert figures["open_sampling"] > 0 and len(drawn) == 2


@pytest.mark.long
def test_the_compiled_step_trains_as_the_eager_one(tmp_path, monkeypatch):
    """The open images are drawn and transformed outside the compiled step and concatenated
    inside it: the step compiles (no fallback) and trains as the eager one."""
    eager_and_compiled(monkeypatch, tmp_path, digits(
        train={"epochs": 1, "drop_last": True},
        augment=[{"name": "open_sampling", "open": NOISE, "batch_size": 32}]),
        terms=("open_sampling",))

