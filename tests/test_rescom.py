"""ResCom (``rescom``): the contrast rows and the hard positive and negative mining against numpy
on a known queue, the class-balanced contrastive loss against numpy and the fact sheet's worked
example, the vectorised enqueue against the code's loop, the second view, the momentum key
encoder, bad parameters, the digits end to end, exact resume and two processes."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, digits, eager_and_compiled, on_digits, resumed_run, assert_same_training
from lttoolbox.api import Context
from lttoolbox.augment.rescom import (ResCom, contrast_logits, contrastive_loss,
                                      effective_number_weights, enqueue, gather_keys)
from lttoolbox.batch import Batch
from lttoolbox.engine import train
from lttoolbox.errors import ConfigError
from lttoolbox.recipe import read_recipe, resolve
from lttoolbox.registry import AUGMENTS, LOSSES


def rescom(counts, feature_dim=6, fetch=None, seed=0, **params) -> ResCom:
    part = AUGMENTS.build({"name": "rescom", **params}, **Context.from_counts(
        counts, feature_dim=feature_dim, fetch=fetch, seed=seed).as_kwargs())
    part.before_epoch(0)
    return part


# ------------------------------------------------------------------- numpy, as the code computes
def np_contrast(z, y, queue, q, k_pos, k_neg):
    """The code's gather through its index tables (builder.py:28-35, 76-97), in numpy."""
    c = queue.shape[0] // q
    pos_index = np.arange(c * q).reshape(c, q)
    neg_index = np.stack([np.concatenate([np.arange(q * i), np.arange(q * (i + 1), q * c)])
                          for i in range(c)])
    sim = z @ queue.T
    pos = np.take_along_axis(sim, pos_index[y], axis=1)
    neg = np.take_along_axis(sim, neg_index[y], axis=1)
    hard_pos = np.sort(pos, axis=1)[:, :k_pos]            # -topk(-pos): increasing
    hard_neg = np.sort(neg, axis=1)[:, ::-1][:, :k_neg]   # topk(neg): decreasing
    n = len(y)
    off = ~np.eye(n, dtype=bool)
    batch = (z @ z.T)[off].reshape(n, n - 1)
    same = (y[:, None] == y[None, :])[off].reshape(n, n - 1).astype(float)
    return (np.concatenate([batch, hard_pos, hard_neg], axis=1),
            np.concatenate([same, np.ones((n, k_pos)), np.zeros((n, k_neg))], axis=1))


def np_loss(s, t, w, tau):
    a = s / tau
    log_p = a - a.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    return float(np.mean(w * (-(t * log_p).sum(axis=1) / t.sum(axis=1))))


def unit(rng, *shape):
    v = rng.normal(size=shape)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def loop_enqueue(queue, ptr, keys, labels, q):
    """The code's loop (builder.py:50-59), one sample at a time."""
    queue, ptr = queue.copy(), ptr.copy()
    for key, c in zip(keys, labels):
        queue[c * q + ptr[c]] = key
        ptr[c] = (ptr[c] + 1) % q
    return queue, ptr


# ------------------------------------------------------------------------------ the formulas
def test_the_contrast_rows_and_the_mining_match_numpy_on_a_known_queue():
    rng = np.random.default_rng(0)
    q, k_pos, k_neg = 4, 2, 5
    y = np.array([0, 2, 0, 1, 0, 2, 0, 1])  # two views of 4 images
    z, queue = unit(rng, 8, 3), unit(rng, 3 * q, 3)
    logits, targets = contrast_logits(torch.tensor(z), torch.tensor(y), torch.tensor(queue), q,
                                      k_pos, k_neg)
    s, t = np_contrast(z, y, queue, q, k_pos, k_neg)
    assert logits.shape == (8, 7 + k_pos + k_neg)
    np.testing.assert_allclose(logits.numpy(), s, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(targets.numpy(), t)
    # by hand: anchor 0 (class 0) against queue class 0's keys: the 2 least similar
    own = np.sort(queue[:q] @ z[0])[:2]
    np.testing.assert_allclose(logits[0, 7:9].numpy(), own, atol=1e-12)
    # the other view of image 0 (row 4, column 3 once the anchor is dropped) is a positive
    assert targets[0, 3] == 1 and targets[0, :7].sum() == 3


def test_a_hard_positive_is_the_farthest_own_key_and_a_hard_negative_the_nearest_other_key():
    """Hand-made keys: class 0's keys are e1 and e2, class 1's e1 and -e1; an anchor e1 of class 0
    keeps e2 (similarity 0) as its hard positive and e1 of class 1 (similarity 1) as its hard
    negative."""
    e = torch.eye(3, dtype=torch.float64)
    queue = torch.stack([e[0], e[1], e[0], -e[0]])
    z = torch.stack([e[0], e[2]])
    logits, targets = contrast_logits(z, torch.tensor([0, 1]), queue, 2, 1, 1)
    assert logits[0].tolist() == [0.0, 0.0, 1.0]  # in batch, hard positive e2, hard negative e1
    assert logits[1].tolist() == [0.0, 0.0, 0.0]
    assert targets.tolist() == [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]


def test_the_worked_example_of_the_loss_the_class_weights_and_balanced_softmax():
    s = torch.tensor([[0.9, 0.1, -0.2, 0.3, 0.6, 0.5]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0, 0, 1, 0, 0]], dtype=torch.float64)
    assert float(contrastive_loss(s, t, torch.ones(1, dtype=torch.float64), 0.2)) == \
        pytest.approx(1.858132, abs=1e-6)
    np.testing.assert_allclose(effective_number_weights([100, 10, 1], 0.999999),
                               [0.370002, 3.699850, 36.998335], atol=1e-6)
    assert effective_number_weights([100, 10, 1], 0.0).tolist() == [1.0, 1.0, 1.0]
    bs = LOSSES.build({"name": "balanced_softmax"}, class_counts=[100, 10, 1], num_classes=3)
    loss = bs(torch.tensor([[2.0, 1.0, 0.5]]), torch.tensor([2]))
    assert float(loss) == pytest.approx(6.143447, abs=1e-5)


def test_the_loss_matches_numpy_with_weights_and_temperature():
    rng = np.random.default_rng(1)
    s = rng.uniform(-1, 1, size=(6, 9))
    t = (rng.uniform(size=(6, 9)) < 0.4).astype(float)
    t[:, 0] = 1.0
    w = rng.uniform(0.5, 3, size=6)
    got = contrastive_loss(torch.tensor(s), torch.tensor(t), torch.tensor(w), 0.3)
    assert float(got) == pytest.approx(np_loss(s, t, w, 0.3), rel=1e-12)


def test_the_component_s_term_is_con_weight_times_the_weighted_loss_of_both_views():
    """The whole features hook on a known queue: the projection of the 2B rows (read from the
    component's head), the contrast rows and the term, against numpy."""
    counts = [40, 12, 4]
    part = rescom(counts, queue_size_per_cls=3, select_num_pos=2, select_num_neg=4,
                  temperature=0.2, con_weight=0.5, effective_num_beta=0.99)
    rng = np.random.default_rng(2)
    queue = unit(rng, 9, 32)
    part.queue.copy_(torch.tensor(queue, dtype=torch.float32))
    h = torch.randn(8, 6)
    y = torch.tensor([0, 1, 2, 0, 0, 1, 2, 0])
    part.contrast(h, Batch.plain(h, y))
    with torch.no_grad():
        z = F.normalize(part.projection(h), dim=1).double().numpy()
    s, t = np_contrast(z, y.numpy(), queue, 3, 2, 4)
    e = (1 - 0.99 ** np.array(counts, dtype=float)) / (1 - 0.99)
    expected = 0.5 * np_loss(s, t, (e.mean() / e)[y.numpy()], 0.2)
    assert float(part.auxiliary_loss().detach()) == pytest.approx(expected, rel=1e-5)
    head = part.projection
    assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (6, 6, 32)


# ------------------------------------------------------------------------------------- the queue
@pytest.mark.parametrize("case", ["distinct", "repeated", "overflow"])
def test_the_vectorised_enqueue_equals_the_code_s_loop(case):
    """Several steps in a row, from pointers that wrap around the ring: two samples of a class in
    one batch, and more samples of a class than its ring holds (the last ones stay)."""
    rng = np.random.default_rng(3)
    q, c = 3, 4
    queue = unit(rng, q * c, 5).astype(np.float32)
    ptr = np.array([2, 0, 1, 2])
    labels = {"distinct": [[0, 1, 2, 3], [3, 1, 0, 2]],
              "repeated": [[0, 0, 1, 3], [2, 0, 2, 0, 1]],
              "overflow": [[1, 1, 1, 1, 1, 0, 1], [3, 3, 3, 3, 2, 3, 3, 3]]}[case]
    tq, tp = torch.tensor(queue), torch.tensor(ptr)
    for step in labels:
        keys = unit(rng, len(step), 5).astype(np.float32)
        queue, ptr = loop_enqueue(queue, ptr, keys, step, q)
        enqueue(tq, tp, torch.tensor(keys), torch.tensor(step), q)
        np.testing.assert_array_equal(tq.numpy(), queue)
        np.testing.assert_array_equal(tp.numpy(), ptr)


def test_the_initial_queue_is_unit_gaussian_keys_from_the_run_s_seed():
    a, b, other = (rescom([5, 3, 2], seed=s, select_num_neg=4) for s in (0, 0, 1))
    torch.testing.assert_close(a.queue.norm(dim=1), torch.ones(30))
    assert torch.equal(a.queue, b.queue) and not torch.equal(a.queue, other.queue)
    assert a.queue_ptr.tolist() == [0, 0, 0]
    assert sorted(a.state_dict()) == sorted(["queue", "queue_ptr", *(
        f"projection.{k}" for k in a.projection.state_dict())])


def test_the_second_view_is_fetched_for_the_batch_s_images_and_the_first_view_is_enqueued():
    fetched = []
    images = torch.randn(10, 6)

    def fetch(index):
        fetched.append(index.clone())
        return images[index] + 1.0, torch.zeros(len(index), dtype=torch.long)

    part = rescom([6, 3, 1], fetch=fetch, queue_size_per_cls=2, select_num_neg=4)
    index = torch.tensor([7, 2, 5])
    step = SimpleNamespace(batch=Batch.plain(images[index], torch.tensor([1, 0, 1]), index=index))
    part.before_step(step)
    two = step.batch
    assert [i.tolist() for i in fetched] == [[7, 2, 5]]
    torch.testing.assert_close(two.x, torch.cat([images[index], images[index] + 1.0]))
    assert two.y_a.tolist() == [1, 0, 1, 1, 0, 1] and not two.mixed
    assert two.index.tolist() == [7, 2, 5, 7, 2, 5]
    part.contrast(two.x, two)  # features = the inputs here
    with torch.no_grad():
        z = F.normalize(part.projection(two.x), dim=1)
    part.after_step(step)
    assert part.queue_ptr.tolist() == [1, 0, 0]  # class 1: slots 0 and 1, wrapped to 0
    # rows 2 and 3 hold class 1's ring, row 0 class 0's first slot
    torch.testing.assert_close(part.queue[[2, 0, 3]], z[:3])


def test_the_step_s_loss_is_balanced_softmax_on_both_views_plus_the_term():
    """The trainer's step on the batch ResCom made: the recipe's Balanced Softmax over the 2B
    rows (numpy: CE(z + log n, y) averaged over both views) plus con_weight x L_con."""
    from lttoolbox.api import Component
    from lttoolbox.engine.phases import Phase
    from lttoolbox.engine.step import TrainStep
    from lttoolbox.models import DigitsCNN

    torch.manual_seed(0)
    counts = [30, 10, 3]
    model = DigitsCNN(num_classes=3).train()
    images = torch.randn(8, 1, 8, 8)
    part = rescom(counts, feature_dim=model.feature_dim, queue_size_per_cls=2,
                  fetch=lambda i: (images[i].flip(-1), None))
    criterion = LOSSES.build({"name": "balanced_softmax"}, class_counts=counts, num_classes=3)
    phase = Phase("main", {"loss": {"name": "balanced_softmax"}, "augment": [{"name": "rescom"}],
                           "generator": None}, Component(), criterion, [part], None)
    step = TrainStep(model, phase)
    step.hooks = {"features": part.hook("features")}
    events = SimpleNamespace(batch=Batch.plain(images[:4], torch.tensor([0, 1, 2, 0]),
                                               index=torch.arange(4)), model=model)
    part.before_step(events)
    total, cls, term = step(events.batch).detach()
    with torch.no_grad():
        logits = model(events.batch.x).double().numpy()  # batch statistics of the same 2B rows
    y = events.batch.y_a.numpy()
    z = logits + np.log(counts)
    ce = -(z[np.arange(8), y] - np.log(np.exp(z).sum(axis=1)))
    assert float(cls) == pytest.approx(ce.mean(), rel=1e-5)
    assert float(term) == pytest.approx(float(part.auxiliary_loss().detach()), rel=1e-6)
    assert float(total) == pytest.approx(float(cls) + float(term), rel=1e-6)


def test_outside_its_window_the_batch_and_the_queue_are_left_alone():
    part = rescom([6, 3, 1], fetch=lambda i: 1 / 0, select_num_neg=4, start_epoch=2)
    batch = Batch.plain(torch.randn(3, 6), torch.tensor([1, 0, 1]), index=torch.arange(3))
    step = SimpleNamespace(batch=batch)
    part.before_step(step)
    part.after_step(step)
    assert step.batch is batch and part.auxiliary_loss() is None
    assert part.queue_ptr.tolist() == [0, 0, 0]


def test_another_component_adding_rows_is_refused_with_the_reason():
    part = rescom([6, 3, 1], fetch=lambda i: (torch.randn(len(i), 6), None), select_num_neg=4)
    step = SimpleNamespace(batch=Batch.plain(torch.randn(4, 6), torch.zeros(4, dtype=torch.long),
                                             index=torch.arange(4)))
    part.before_step(step)
    h = torch.randn(10, 6)
    with pytest.raises(ConfigError, match="10 rows, not the two views of 4 images"):
        part.contrast(h, Batch.plain(h, torch.zeros(10, dtype=torch.long)))


def test_the_default_keeps_every_other_class_key_as_a_negative():
    assert rescom([6, 3, 1], queue_size_per_cls=4).select_num_neg == 8


# -------------------------------------------------------------------------- the momentum copy
def test_the_momentum_copy_moves_by_ema_before_each_step_and_embeds_the_keys():
    from lttoolbox.models import DigitsCNN

    torch.manual_seed(0)
    model = DigitsCNN(num_classes=3)
    part = rescom([6, 3, 1], feature_dim=model.feature_dim, queue_size_per_cls=2,
                  select_num_neg=4, key_encoder="momentum", momentum=0.9)
    part.before_run(SimpleNamespace(model=model))
    part.before_phase(SimpleNamespace(model=model))
    online = model.stem[0].weight
    torch.testing.assert_close(part.key_backbone.stem[0].weight, online)
    assert not any(p.requires_grad for p in part.key_backbone.parameters())
    before = online.detach().clone()
    with torch.no_grad():
        online.add_(1.0)
        part.projection[0].weight.mul_(2.0)
    key_head = part.key_projection[0].weight.detach().clone()
    x = torch.randn(2, 1, 8, 8)
    part.fetch = lambda index: (x + 0.5, torch.zeros(2, dtype=torch.long))
    step = SimpleNamespace(model=model, batch=Batch.plain(x, torch.tensor([0, 2]),
                                                          index=torch.arange(2)))
    part.before_step(step)
    torch.testing.assert_close(part.key_backbone.stem[0].weight, 0.9 * before + 0.1 * (before + 1))
    torch.testing.assert_close(part.key_projection[0].weight,
                               0.9 * key_head + 0.1 * part.projection[0].weight)
    # the keys: the moved copy's embedding of the first view, enqueued after the step
    copy_ = copy.deepcopy(part)
    with torch.no_grad():
        expected = F.normalize(copy_.key_projection(copy_.key_backbone(x)), dim=1)
    logits, _ = model.forward_hooked(step.batch, {"features": part.hook("features")})
    assert logits.shape[0] == 4
    part.after_step(step)
    torch.testing.assert_close(part.queue[[0, 4]], expected)


# ------------------------------------------------------------------------------ bad parameters
@pytest.mark.parametrize("params,key", [
    ({"dim": 0}, "dim"), ({"queue_size_per_cls": 0}, "queue_size_per_cls"),
    ({"select_num_pos": 0}, "select_num_pos"), ({"select_num_pos": 11}, "select_num_pos"),
    ({"select_num_neg": 0}, "select_num_neg"), ({"select_num_neg": 21}, "select_num_neg"),
    ({"temperature": 0}, "temperature"), ({"con_weight": -1}, "con_weight"),
    ({"effective_num_beta": 1.0}, "effective_num_beta"),
    ({"effective_num_beta": -0.1}, "effective_num_beta"),
    ({"key_encoder": "ema"}, "key_encoder"), ({"momentum": 1.0}, "momentum"),
    ({"start_epoch": -1}, "start_epoch"), ({"dim": 2.5}, "dim"),
])
def test_bad_parameters_are_one_line_naming_the_key(params, key):
    with pytest.raises(ConfigError, match=key) as err:
        rescom([6, 3, 1], **{"select_num_neg": 20, **params})
    assert "\n" not in str(err.value)


def test_a_class_without_images_is_refused():
    with pytest.raises(ConfigError, match="class 2"):
        rescom([6, 3, 0], select_num_neg=4)


def test_a_bad_recipe_stops_before_anything_is_written(tmp_path):
    recipe = digits(augment=[{"name": "rescom", "select_num_neg": 91}])  # 10 classes: 90 keys
    with pytest.raises(ConfigError, match=r"augment\[0\]\.select_num_neg") as err:
        train(resolve(recipe), tmp_path / "run", quiet=True)
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


def test_a_mixing_augmentation_before_the_features_is_refused_before_anything_is_written(
        tmp_path):
    recipe = digits(loss={"name": "balanced_softmax"},
                    augment=[{"name": "mixup"}, {"name": "rescom", "select_num_neg": 20}])
    with pytest.raises(ConfigError, match="single class") as err:
        train(resolve(recipe), tmp_path / "run", quiet=True)
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------- end to end
def test_the_cifar10_recipe_runs_on_the_digits_and_exports_encoder_and_classifier(tmp_path):
    recipe = on_digits(read_recipe(ROOT / "configs" / "cifar10_lt" / "rescom.yaml"), epochs=2)
    results = train(resolve(recipe), tmp_path / "run", quiet=True)
    first, second = (row["loss_terms"] for row in results["history"])
    # both terms fall (batch 128 on the digits: two epochs are 6 steps)
    assert 0 < second["balanced_softmax"] < first["balanced_softmax"]
    assert 0 < second["rescom"] < first["rescom"]
    from lttoolbox.models import DigitsCNN

    exported = torch.load(tmp_path / "run" / "model-main.pt")
    assert sorted(exported) == sorted(DigitsCNN(num_classes=10).state_dict())
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["components"]
    kept = next(s for s in state if s and "queue" in s)
    assert int(kept["queue_ptr"].sum()) > 0 and "projection.0.weight" in kept


@pytest.mark.long
def test_a_run_with_the_momentum_copy_resumes_exactly(tmp_path):
    """Stopped at the end of epoch 1 (before its checkpoint) and resumed from epoch 0's: the
    queue, its pointers, the projection and the momentum copy come back from the checkpoint."""
    recipe = resolve(digits(train={"epochs": 2, "checkpoint_every": 1},
                            loss={"name": "balanced_softmax"},
                            augment=[{"name": "rescom", "select_num_neg": 20,
                                      "key_encoder": "momentum", "momentum": 0.9}]))
    full = train(recipe, tmp_path / "full", quiet=True)
    assert_same_training(resumed_run(recipe, tmp_path / "cut", stop_after=1), full)


@pytest.mark.long
def test_the_two_view_step_is_compiled_and_trains_as_the_eager_one(tmp_path, monkeypatch):
    """ResCom makes 2B rows of a full batch of B drawn images before the step: the compiled
    step takes it (a full batch is counted in drawn images, not rows) and trains as the eager
    one; the last, partial batch runs eagerly."""
    import lttoolbox.engine.compile as compile_module

    rows: list[int] = []
    original = compile_module.CompiledStep.takes

    def takes(self, n):
        rows.append(n)
        return original(self, n)

    monkeypatch.setattr(compile_module.CompiledStep, "takes", takes)
    eager_and_compiled(monkeypatch, tmp_path, digits(
        train={"epochs": 1}, loss={"name": "balanced_softmax"},
        augment=[{"name": "rescom", "select_num_neg": 20}]), terms=("rescom",))
    batch = resolve(digits())["train"]["batch_size"]
    assert rows and set(rows) == {2 * batch}, rows  # every full batch: two views of B images



# ------------------------------------------------------------------------------- two processes
def _gather_worker(rank, init_file, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(rank)
        keys, labels = torch.randn(5, 4), torch.tensor([[0, 2, 0, 0, 1], [2, 2, 1, 0, 0]][rank])
        queue, ptr = torch.zeros(6, 4), torch.tensor([1, 0, 1])
        enqueue(queue, ptr, *gather_keys(keys, labels), 2)
        torch.save({"queue": queue, "ptr": ptr, "keys": keys, "labels": labels},
                   f"{out}.rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_enqueue_the_global_batch_in_rank_order(tmp_path):
    """As the code's concat_all_gather: every process's queue takes both processes' keys, rank 0's
    first, and the queues stay equal."""
    import torch.multiprocessing as mp

    mp.spawn(_gather_worker, args=(str(tmp_path / "init"), str(tmp_path / "q")), nprocs=2,
             join=True)
    a, b = (torch.load(tmp_path / f"q.rank{r}.pt") for r in range(2))
    queue, ptr = loop_enqueue(np.zeros((6, 4), dtype=np.float32), np.array([1, 0, 1]),
                              torch.cat([a["keys"], b["keys"]]).numpy(),
                              torch.cat([a["labels"], b["labels"]]).tolist(), 2)
    for rank in (a, b):
        np.testing.assert_array_equal(rank["queue"].numpy(), queue)
        np.testing.assert_array_equal(rank["ptr"].numpy(), ptr)


@pytest.mark.long
def test_a_two_process_run_trains(tmp_path):
    from test_distributed import DIGITS as DDP_DIGITS
    from test_distributed import run_ranks

    recipe = resolve({**DDP_DIGITS, "train": {**DDP_DIGITS["train"], "epochs": 1},
                      "loss": {"name": "balanced_softmax"},
                      "augment": [{"name": "rescom", "select_num_neg": 20}]})
    two = run_ranks(tmp_path, recipe, tmp_path / "two")
    assert two["processes"] == 2 and two["history"][0]["loss_terms"]["rescom"] > 0
