"""Two-branch models with BBN and DBN-Mix: the reversed and balanced streams, the cumulative
weight, the feature and loss combination against the fact sheets' worked examples, the class-wise
temperatures and their loss against numpy, the bilateral mixup's pairing, the routed trunk's
separate BatchNorm statistics, evaluation as each paper evaluates, refusals, the recipes on the
digits, exact resume and two processes."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, assert_same_training, digits, eager_and_compiled, on_digits, resumed_run
from lttoolbox.api import Context
from lttoolbox.augment.two_branch import BBN, DBNMix
from lttoolbox.batch import Batch
from lttoolbox.engine import train
from lttoolbox.errors import ConfigError
from lttoolbox.losses import mixed_loss
from lttoolbox.recipe import load_recipe, resolve
from lttoolbox.registry import AUGMENTS, LOSSES, MODELS

BBN_MODEL = {"name": "two_branch_digits_cnn", "layout": "bbn"}
DBN_MODEL = {"name": "two_branch_digits_cnn", "layout": "dbn_mix"}


def labelled_images(counts):
    """Labels of a training set with these class counts (class 0 first) and one constant image
    per index whose value is the index, so a fetched image names its index."""
    labels = np.repeat(np.arange(len(counts)), counts)
    n = len(labels)
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4).clone()
    return labels, images


def context(counts, total_epochs=10, **more):
    labels, images = labelled_images(counts)
    fetch = lambda i: (images[i], torch.as_tensor(labels)[i])  # noqa: E731
    return Context.from_counts(counts, total_epochs=total_epochs, fetch=fetch, **more)


# ------------------------------------------------------------------------- the reversed stream
def test_reversed_sampler_probabilities_are_the_worked_example():
    """N = [100, 10, 1]: w = N_max / N = [1, 10, 100], P = w / 111 (bbn.md section 6)."""
    part = BBN(context=context([100, 10, 1]))
    np.testing.assert_allclose(part.probabilities.numpy(), [1 / 111, 10 / 111, 100 / 111],
                               rtol=1e-12)


def test_reversed_draws_follow_the_probabilities_and_are_uniform_within_a_class():
    counts = [40, 10, 4]
    labels, _ = labelled_images(counts)
    part = BBN(context=context(counts))
    torch.manual_seed(0)
    drawn = part.draw(60000).numpy()
    expected = np.array([1, 4, 10]) / 15  # N_max / N = [1, 4, 10]
    classes = np.bincount(labels[drawn], minlength=3) / drawn.size
    np.testing.assert_allclose(classes, expected, atol=0.01)
    for c in range(3):  # every image of a class equally often
        inside = drawn[labels[drawn] == c]
        share = np.bincount(inside, minlength=len(labels))[labels == c] / inside.size
        # four standard deviations of a share 1 / N_c estimated from inside.size draws
        np.testing.assert_allclose(share, 1 / counts[c],
                                   atol=4 * np.sqrt(1 / counts[c] / inside.size))


def test_the_draws_come_from_torchs_global_generator():
    part = BBN(context=context([30, 5, 2]))
    torch.manual_seed(3)
    a = part.draw(50)
    torch.manual_seed(3)
    assert torch.equal(a, part.draw(50))
    assert not torch.equal(a, part.draw(50))


# ---------------------------------------------------------------------------------- alpha
@pytest.mark.parametrize("epoch, alpha", [(0, 1.0), (99, 1 - (99 / 200) ** 2),
                                          (199, 1 - (199 / 200) ** 2)])
def test_alpha_is_the_codes_parabola(epoch, alpha):
    """combiner.py line 48, epochs counted from 1 there: 1, 0.754975 and 0.009975."""
    part = BBN(context=context([5, 1], total_epochs=200))
    part.before_epoch(epoch)
    assert part.alpha == pytest.approx(alpha, abs=1e-12)
    assert round(part.alpha, 6) == {0: 1.0, 99: 0.754975, 199: 0.009975}[epoch]


def test_alpha_counts_from_the_window_and_t_max_is_its_length():
    part = BBN(start_epoch=4, context=context([5, 1], total_epochs=12))
    assert part.t_max == 8
    part.before_epoch(4)
    assert part.alpha == 1.0
    part.before_epoch(11)
    assert part.alpha == pytest.approx(1 - (7 / 8) ** 2)
    assert BBN(t_max=200, context=context([5, 1], total_epochs=180)).t_max == 200


# ----------------------------------------------------- the feature and loss combination (BBN)
def test_the_mixed_step_is_the_worked_example():
    """alpha 0.75, f_c = [1, 0] (y 0), f_r = [0, 2] (y 2), W as in bbn.md section 6, bias 0:
    input 2 [0.75 f_c; 0.25 f_r] = [1.5, 0, 0, 1], z = [1.5, 0.5, 1.0], and the loss
    0.75 (-log softmax(z)_0) + 0.25 (-log softmax(z)_2) = 0.805270."""
    part = BBN(t_max=2, context=context([5, 5, 5], total_epochs=2))
    part.before_epoch(1)  # 1 - (1 / 2)^2
    assert part.alpha == 0.75
    h = torch.tensor([[1.0, 0.0, 0.0, 2.0]])  # [f_c; f_r] as the model joins them
    joined = Batch(h, torch.tensor([0]), torch.tensor([2]), torch.tensor([0.5]))
    x, batch = part.combine(h, joined)
    assert x.tolist() == [[1.5, 0.0, 0.0, 1.0]]
    w = torch.tensor([[1.0, 0, 0.5, 0], [0, 1, 0, 0.5], [0, 0, 1, 1]])
    z = x @ w.T
    assert z.tolist() == [[1.5, 0.5, 1.0]]
    loss = mixed_loss(LOSSES.build({"name": "ce"}, num_classes=3), z, batch)
    assert float(loss) == pytest.approx(0.805270, abs=1e-6)
    assert batch.lam.tolist() == [0.75] and batch.y_b.tolist() == [2]


def test_routed_bbn_logits_are_the_head_of_each_branch_on_its_own_stream():
    """A train-mode step: the uniform images through trunk and branch 1, the reversed ones
    through trunk and branch 2, each pass normalised with its own batch's statistics (the
    running statistics move once per stream, in that order), computed here module by module
    on a copy of the model."""
    torch.manual_seed(0)
    model = MODELS.build(BBN_MODEL, num_classes=3).train()
    reference = copy.deepcopy(model)
    counts = [6, 3, 2]
    labels = np.repeat(np.arange(3), counts)
    images = torch.randn(len(labels), 1, 8, 8)
    part = AUGMENTS.build({"name": "bbn"}, **Context.from_counts(
        counts, total_epochs=4, fetch=lambda i: (images[i], torch.as_tensor(labels)[i]))
        .as_kwargs())
    part.before_epoch(2)  # alpha = 1 - (2 / 4)^2 = 0.75
    x_u, y_u = images[:5], torch.as_tensor(labels[:5])
    torch.manual_seed(1)
    logits, batch = model.forward_hooked(Batch.plain(x_u, y_u),
                                         {"input": part.hook("input"),
                                          "features": part.hook("features")})
    x_r, y_r = images[part.last_indices], torch.as_tensor(labels)[part.last_indices]
    m = reference
    f_c = m.features.branch[0](m.layer1(m.stem(x_u)))
    f_r = m.features.branch[1](m.layer1(m.stem(x_r)))
    expected = m.head(torch.cat([1.5 * f_c, 0.5 * f_r], dim=1))
    torch.testing.assert_close(logits, expected)
    assert torch.equal(batch.y_a, y_u) and torch.equal(batch.y_b, y_r)
    assert batch.lam.tolist() == [0.75] * 5
    for a, b in zip(model.modules(), reference.modules()):
        if isinstance(a, torch.nn.BatchNorm2d):
            torch.testing.assert_close(a.running_mean, b.running_mean)
            torch.testing.assert_close(a.running_var, b.running_var)
    # one pass of the 10 images together would have normalised them with common statistics
    joint = copy.deepcopy(reference)
    both = joint.layer1(joint.stem(torch.cat([x_u, x_r])))
    assert not torch.allclose(joint.features.branch[0](both[:5]), f_c)


@pytest.mark.parametrize("layout", ["bbn", "dbn_mix"])
def test_evaluation_is_the_papers_combination(layout):
    """bbn: W [f_c(x); f_r(x)] + b on the same image, no alpha, no factor 2 (valid.py line
    51); dbn_mix: the mean of the two classifiers' logits (main.py lines 392-395)."""
    torch.manual_seed(0)
    model = MODELS.build({"name": "two_branch_resnet32", "layout": layout},
                         num_classes=5).eval()
    x = torch.randn(3, 3, 32, 32)
    trunk = x
    for name in model.point_names[1:-1]:
        trunk = getattr(model, name)(trunk)
    f1, f2 = (model.features.branch[k](trunk) for k in (0, 1))
    if layout == "bbn":
        w, b = model.head.weight, model.head.bias
        expected = torch.cat([f1, f2], 1) @ w.T + b
        assert model.point_names[-2] == "layer3" and len(model.layer3) == 4
    else:
        heads = model.head.heads
        expected = ((f1 @ heads[0].weight.T + heads[0].bias)
                    + (f2 @ heads[1].weight.T + heads[1].bias)) / 2
        assert model.point_names[-2] == "layer2" and len(model.features.branch[0]) == 6
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
        logits, _ = model.forward_hooked(Batch.plain(x, torch.zeros(3, dtype=torch.long)), {})
        torch.testing.assert_close(logits, expected)


@pytest.mark.parametrize("layout", ["bbn", "dbn_mix"])
def test_a_reset_head_is_fresh_per_branch_and_a_following_head_takes_its_own_branch(layout):
    """cRT after a two-branch model: bbn gets one new classifier on [f_c; f_r], dbn_mix one per
    branch; a tau-norm head takes over each branch's weights (w / ||w||^tau, bias dropped)."""
    torch.manual_seed(0)
    model = MODELS.build({"name": "two_branch_resnet32", "layout": layout}, num_classes=5)
    old = copy.deepcopy(model.head)
    model.freeze("head")
    new = model.reset_head("linear")
    assert model.head is new and all(not p.requires_grad for p in new.parameters())
    pairs = [(new, old)] if layout == "bbn" else list(zip(new.heads, old.heads))
    assert len(pairs) == (1 if layout == "bbn" else 2)
    for fresh, before in pairs:
        assert fresh.weight.shape == before.weight.shape
        assert not torch.equal(fresh.weight, before.weight)
    trained = copy.deepcopy(model.head)
    model.reset_head({"name": "tau_norm", "tau": 1.0})
    x = torch.randn(2, 2 * model.branch_dim if layout == "dbn_mix" else model.feature_dim)
    with torch.no_grad():
        if layout == "bbn":
            w = trained.weight / trained.weight.norm(dim=1, keepdim=True)
            expected = x @ w.T
        else:
            d = model.branch_dim
            w0, w1 = (h.weight / h.weight.norm(dim=1, keepdim=True) for h in trained.heads)
            expected = (x[:, :d] @ w0.T + x[:, d:] @ w1.T) / 2
        torch.testing.assert_close(model.head(x), expected)


# ------------------------------------------------------------------------------- DBN-Mix
def test_temperatures_are_the_worked_example():
    """n = [100, 10, 1], epsilon 0.6, eta 3: phi = [2.2, 0.58, 0.418], T = (2.2 / phi)^(1/3)
    = [1, 1.559546, 1.739464] (dbn_mix.md section 6)."""
    loss = LOSSES.build({"name": "class_temperature", "epsilon": 0.6, "eta": 3},
                        class_counts=[100, 10, 1])
    phi = np.array([2.2, 0.58, 0.418])
    np.testing.assert_allclose(loss.temperature.numpy(), (2.2 / phi) ** (1 / 3), rtol=1e-6)
    np.testing.assert_allclose(loss.temperature.numpy(), [1, 1.559546, 1.739464], atol=1e-6)


def numpy_loss(z, t, temperature):
    s = z / temperature
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return -((t * np.log(p)).sum(axis=1) + ((1 - t) * np.log(1 - p)).sum(axis=1))


def test_the_loss_of_a_mixed_target_is_the_worked_example_and_linear_in_the_target():
    """z = [2, 1, 0.5], t = 0.7 e_0 + 0.3 e_2: 1.524362 (dbn_mix.md section 6); the two-target
    batch (y_a 0, y_b 2, lam 0.7) gives the code's loss of the mixed one-hot target."""
    loss = LOSSES.build({"name": "class_temperature", "epsilon": 0.6, "eta": 3},
                        class_counts=[100, 10, 1])
    z = torch.tensor([[2.0, 1.0, 0.5]], dtype=torch.float64)
    batch = Batch(z, torch.tensor([0]), torch.tensor([2]), torch.tensor([0.7]))
    assert float(mixed_loss(loss, z, batch)) == pytest.approx(1.524362, abs=1e-6)
    rng = np.random.default_rng(0)
    counts = [50, 20, 9, 3]
    loss = LOSSES.build({"name": "class_temperature", "epsilon": 0.3, "eta": 2},
                        class_counts=counts)
    z = rng.normal(size=(6, 4)) * 2
    y_a, y_b = rng.integers(0, 4, 6), rng.integers(0, 4, 6)
    lam = rng.uniform(size=6)
    t = lam[:, None] * np.eye(4)[y_a] + (1 - lam[:, None]) * np.eye(4)[y_b]
    phi = 0.3 * 4 * np.array(counts) / 50 + 0.7
    expected = numpy_loss(z, t, (phi.max() / phi) ** 0.5).mean()
    got = mixed_loss(loss, torch.tensor(z), Batch(torch.tensor(z), torch.tensor(y_a),
                                                 torch.tensor(y_b), torch.tensor(lam)))
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_the_loss_stays_finite_where_a_probability_rounds_to_one():
    loss = LOSSES.build({"name": "class_temperature", "epsilon": 0.0}, class_counts=[10, 5, 1])
    z = torch.tensor([[200.0, 0.0, -50.0], [0.0, 300.0, 0.0]], requires_grad=True)
    value = loss(z, torch.tensor([0, 0]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all()
    # the second sample: log p_0 ~ -300, log(1 - p_1) at its bound log(1e-7)
    assert float(loss(z.detach()[1:], torch.tensor([0]))) == pytest.approx(
        300 - np.log(1e-7) - np.log(1 - np.exp(-300.0)), rel=1e-3)


def test_bilateral_mixup_pairs_each_image_with_its_balanced_partner():
    counts = [30, 6, 2]
    labels, images = labelled_images(counts)
    part = DBNMix(context=context(counts))
    part.before_epoch(0)
    x_u = images[:8] + 100.0  # distinct from every fetched image
    y_u = torch.zeros(8, dtype=torch.long)
    torch.manual_seed(5)
    x, batch = part(x_u, Batch.plain(x_u, y_u))
    lam, drawn = part.last_lam, part.last_indices
    assert 0.5 <= lam <= 1
    x_b = images[drawn]
    torch.testing.assert_close(x[:8], lam * x_u + (1 - lam) * x_b)
    torch.testing.assert_close(x[8:], (1 - lam) * x_u + lam * x_b)
    assert batch.streams == 2 and batch.mixed
    assert batch.y_a.tolist() == y_u.tolist() * 2
    assert batch.y_b.tolist() == labels[drawn.numpy()].tolist() * 2
    np.testing.assert_allclose(batch.lam.numpy(), [lam] * 8 + [1 - lam] * 8, rtol=1e-6)


def test_the_folded_lam_and_the_balanced_classes():
    counts = [40, 8, 2]
    labels, _ = labelled_images(counts)
    part = DBNMix(context=context(counts))
    torch.manual_seed(0)
    classes = np.bincount(labels[part.draw(30000).numpy()], minlength=3) / 30000
    np.testing.assert_allclose(classes, [1 / 3] * 3, atol=0.01)
    lams = []
    x = torch.zeros(2, 1, 4, 4)
    for _ in range(2000):
        part(x, Batch.plain(x, torch.zeros(2, dtype=torch.long)))
        lams.append(part.last_lam)
    lams = np.array(lams)  # max(u, 1 - u) for u ~ U(0, 1) is U(0.5, 1)
    assert lams.min() >= 0.5 and abs(lams.mean() - 0.75) < 0.01


def test_routed_dbn_logits_are_each_branch_on_its_mix_and_the_loss_is_half_the_sum():
    torch.manual_seed(0)
    model = MODELS.build(DBN_MODEL, num_classes=3).train()
    reference = copy.deepcopy(model)
    x = torch.randn(8, 1, 8, 8)
    y_a, y_b = torch.tensor([0, 1, 2, 0] * 2), torch.tensor([2, 2, 1, 1] * 2)
    lam = torch.tensor([0.8] * 4 + [0.2] * 4)
    logits, batch = model.forward_hooked(Batch(x, y_a, y_b, lam, streams=2), {})
    m = reference
    z1 = m.head.heads[0](m.features.branch[0](m.layer1(m.stem(x[:4]))))
    z2 = m.head.heads[1](m.features.branch[1](m.layer1(m.stem(x[4:]))))
    torch.testing.assert_close(logits, torch.cat([z1, z2]))
    loss = LOSSES.build({"name": "class_temperature"}, class_counts=[5, 3, 1])
    t = lam[:, None] * F.one_hot(y_a, 3) + (1 - lam[:, None]) * F.one_hot(y_b, 3)
    phi = 0.6 * 3 * np.array([5, 3, 1]) / 5 + 0.4
    temp = (phi.max() / phi) ** (1 / 3)
    each = numpy_loss(torch.cat([z1, z2]).detach().double().numpy(), t.double().numpy(), temp)
    expected = 0.5 * (each[:4].mean() + each[4:].mean())
    assert mixed_loss(loss, logits, batch).item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("model, augment, words", [
    ({"name": "digits_cnn"}, "bbn", "has a single branch"),
    ({"name": "digits_cnn"}, "dbn_mix", "has a single branch"),
    (DBN_MODEL, "bbn", "meet at their logits"),
    (BBN_MODEL, "dbn_mix", "meet at their features"),
])
def test_a_model_without_the_branches_is_refused_before_training(tmp_path, model, augment,
                                                                  words):
    recipe = resolve(digits(model=model, augment=[{"name": augment}]))
    with pytest.raises(ConfigError) as err:
        train(recipe, tmp_path / "run", quiet=True)
    message = str(err.value)
    assert message.startswith(f"augment[0]: {augment} cannot train model.name "
                              f"'{model['name']}'") and words in message
    assert "\n" not in message and not (tmp_path / "run").exists()


@pytest.mark.parametrize("choice, key", [({"name": "dbn_mix"}, "augment[0].choices[1].name"),
                                         ({"name": "bbn"}, "augment[0].choices[1].name")])
def test_neither_can_be_a_choice_of_one_of(tmp_path, choice, key):
    """one_of mixes a batch with one choice at a time, at one point with a probability each;
    the two streams are the whole method, on every batch of the window. The refusal names the
    choice and says why (not a 'p' the recipe never wrote)."""
    recipe = resolve(digits(model=BBN_MODEL if choice["name"] == "bbn" else DBN_MODEL,
                            augment=[{"name": "one_of", "p": [0.5, 0.5],
                                      "choices": [{"name": "mixup"}, choice]}]))
    with pytest.raises(ConfigError, match="^" + key.replace("[", r"\[").replace("]", r"\]")) as err:
        train(recipe, tmp_path / "run", quiet=True)
    assert "second stream" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("augment, key", [
    ([{"name": "bbn"}, {"name": "mixup"}], "augment[0]"),
    ([{"name": "bbn", "t_max": 1}], "augment[0].t_max"),
    ([{"name": "bbn", "t_max": 0}], "augment[0].t_max"),
    ([{"name": "dbn_mix", "alpha": 0}], "augment[0].alpha"),
])
def test_bad_parameters_and_combinations_are_one_line_naming_the_key(tmp_path, augment, key):
    model = DBN_MODEL if augment[0]["name"] == "dbn_mix" else BBN_MODEL
    with pytest.raises(ConfigError) as err:
        train(resolve(digits(model=model, augment=augment)), tmp_path / "run", quiet=True)
    assert str(err.value).startswith(key + ":") and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("cfg, key", [
    ({"name": "class_temperature", "epsilon": 1.5}, "loss.epsilon"),
    ({"name": "class_temperature", "eta": 0}, "loss.eta"),
])
def test_bad_temperature_parameters_are_named(cfg, key):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        LOSSES.build(cfg, key="loss", class_counts=[5, 1])


def test_bad_layout_and_an_empty_class_are_refused():
    with pytest.raises(ConfigError, match="^model.layout:"):
        MODELS.build({"name": "two_branch_resnet32", "layout": "three"}, key="model",
                     num_classes=10)
    ctx = Context(labels=np.array([0, 0, 2]), num_classes=3, fetch=lambda i: None)
    with pytest.raises(ConfigError, match="class 1 has no training image"):
        BBN(t_max=2, context=ctx)


def test_a_model_without_branches_refuses_two_streams_in_a_loop_of_ones_own():
    from lttoolbox.models import DigitsCNN

    part = BBN(context=context([5, 3]))
    x = torch.randn(4, 1, 4, 4)  # the size of context()'s images
    with pytest.raises(ConfigError, match="DigitsCNN has no branches to route"):
        DigitsCNN(num_classes=2).forward_hooked(Batch.plain(x, torch.tensor([0, 1, 0, 1])),
                                                {"input": part.hook("input")})


def test_a_routed_batch_cannot_be_mixed_before_a_features_join():
    model = MODELS.build(BBN_MODEL, num_classes=3)
    x = torch.randn(4, 1, 8, 8)
    mixed = Batch(x, torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 1, 1]),
                  torch.full((4,), 0.5), streams=2)
    with pytest.raises(ConfigError, match="must be unmixed"):
        model.forward_hooked(mixed, {})


# --------------------------------------------------------------------------- end to end
def shipped_on_digits(name: str, epochs: int = 2) -> dict:
    recipe = on_digits(load_recipe(ROOT / "configs" / "cifar10_lt" / f"{name}.yaml"),
                       epochs=epochs)
    recipe["model"] = {**recipe["model"], "name": "two_branch_digits_cnn"}
    return recipe


@pytest.mark.parametrize("name", ["bbn", "dbn_mix"])
def test_the_recipe_runs_on_the_digits(tmp_path, name):
    recipe = shipped_on_digits(name)
    results = train(resolve(recipe), tmp_path / "run", quiet=True)
    assert len(results["history"]) == 2
    assert all(np.isfinite(h["loss"]) for h in results["history"])
    assert results["top1"] > 15.0  # chance is 10 %


@pytest.mark.long
@pytest.mark.parametrize("name", ["bbn", "dbn_mix"])
def test_resume_matches(tmp_path, name):
    """Stopped at the end of epoch 1 (before its checkpoint) and resumed: the second stream's
    draws (torch's checkpointed generator) and alpha (a function of the epoch) continue."""
    recipe = resolve({**shipped_on_digits(name, epochs=3),
                      "train": {**shipped_on_digits(name)["train"], "epochs": 3,
                                "checkpoint_every": 1}})
    full = train(recipe, tmp_path / "full", quiet=True)
    assert_same_training(resumed_run(recipe, tmp_path / "cut", stop_after=1), full)


def test_the_step_cost_benchmark_times_both(tmp_path):
    """benchmarks/throughput.py --augment times a step with each augmentation on the model it
    needs; one step each here, the figures are for the benchmark."""
    import runpy

    from lttoolbox.engine.trainer import Trainer

    script = runpy.run_path(str(ROOT / "benchmarks" / "throughput.py"))
    recipe = resolve(digits())
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    figures = script["time_components"](trainer, recipe, 1, 1, "augment")
    assert {"bbn", "dbn_mix"} <= set(figures) and all(v > 0 for v in figures.values())


@pytest.mark.long
@pytest.mark.parametrize("name", ["bbn", "dbn_mix"])
def test_two_processes_train(tmp_path, name):
    """torchrun-style, two gloo processes: each rank draws its own second stream (torch's
    generator is seeded per rank), DDP averages the gradients, and both ranks end with the
    same model and metrics (run_ranks checks the metrics)."""
    from test_distributed import DIGITS as DDP_DIGITS
    from test_distributed import run_ranks, weights

    model = {**(BBN_MODEL if name == "bbn" else DBN_MODEL), "batch_norm": False}
    recipe = resolve({**DDP_DIGITS, "model": model, "train": {**DDP_DIGITS["train"], "epochs": 1},
                      "augment": [{"name": name}],
                      **({"loss": {"name": "class_temperature"}} if name == "dbn_mix" else {})})
    two = run_ranks(tmp_path, recipe, tmp_path / "two")
    assert two["processes"] == 2 and np.isfinite(two["history"][0]["loss"])
    trained = weights(tmp_path / "two")
    fresh = MODELS.build(model, num_classes=10)
    assert any(not torch.equal(trained[k], v) for k, v in fresh.state_dict().items())


@pytest.mark.long
@pytest.mark.parametrize("name", ["bbn", "dbn_mix"])
def test_the_compiled_step_trains_as_the_eager_one(tmp_path, monkeypatch, name):
    """The second stream is drawn and fetched inside the compiled step (graph breaks at the CPU
    draws): it still compiles (no fallback) and trains the same."""
    eager_and_compiled(monkeypatch, tmp_path, digits(
        model=BBN_MODEL if name == "bbn" else DBN_MODEL, augment=[{"name": name}],
        train={"epochs": 1}))

