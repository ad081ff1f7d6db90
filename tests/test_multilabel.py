"""The multi-label path: the digits_mlt mosaics, multi-hot batches through samplers, losses and
mixing, the refusal of single-label-only entries, mAP against scikit-learn, lteval, ltpredict,
and an exact resume."""
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import average_precision_score

from conftest import PerEntry, resumed_run
from lttoolbox.batch import Batch
from lttoolbox.engine import Trainer, train
from lttoolbox.engine.build import check_multilabel
from lttoolbox.engine.evaluate import average_precision, multilabel_metrics
from lttoolbox.errors import ConfigError, DataError
from lttoolbox.losses import mixed_loss
from lttoolbox.recipe import apply_overrides, load_recipe, read_recipe, resolve
from lttoolbox.registry import AUGMENTS, DATASETS, LOSSES, SAMPLERS

SMALL = {"name": "digits_mlt", "num_train": 300, "num_test": 150}


def ml_recipe(*overrides):
    base = {"data": dict(SMALL), "model": {"name": "digits_cnn"},
            "sampler": {"name": "instance"}, "loss": {"name": "bce"},
            "optim": {"lr": 0.05}, "train": {"epochs": 2, "batch_size": 64, "seed": 0}}
    return resolve(apply_overrides(base, list(overrides)))


@pytest.fixture(scope="module")
def bundle():
    return DATASETS.build(SMALL)


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ml") / "run"
    results = train(ml_recipe("eval.every=1"), out, quiet=True)
    return out, results


# ------------------------------------------------------------------------------------- data
def test_mosaic_labels_are_the_digits_it_shows_from_disjoint_sources(bundle):
    digits = load_digits()
    tiles = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    lookup = {t.tobytes(): i for i, t in enumerate(tiles)}
    used = {}
    for split in ("train", "test"):
        data = getattr(bundle, split)
        used[split] = set()
        for image, label in zip(data.images.numpy(), data.labels.numpy()):
            shown = set()
            for r in range(2):
                for q in range(2):
                    tile = image[0, 8 * r:8 * r + 8, 8 * q:8 * q + 8]
                    if not tile.any():
                        continue
                    source = lookup[tile.tobytes()]  # a source digit, unchanged
                    used[split].add(source)
                    shown.add(int(digits.target[source]))
            assert shown == set(np.flatnonzero(label).tolist())
            assert len(shown) == int(label.sum())  # distinct digits, one tile each
    # no blank digit exists in the source set, so a blank tile is never a digit
    assert all(t.any() for t in tiles)
    assert not used["train"] & used["test"]


def test_bundle_declares_multilabel_and_counts_come_from_the_label_matrix(bundle):
    assert bundle.multilabel and not DATASETS.build({"name": "digits_lt"}).multilabel
    labels = bundle.train.labels
    assert labels.dtype == torch.float32 and tuple(labels.shape) == (300, 10)
    assert bundle.train.class_counts == labels.sum(0).long().tolist()
    assert bundle.meta["train_class_counts"] == bundle.train.class_counts
    assert bundle.image_size == 16 and bundle.in_channels == 1


def test_label_frequency_is_long_tailed_and_generation_is_seeded():
    a = DATASETS.build({"name": "digits_mlt", "imbalance_ratio": 20})
    counts = np.array(a.train.class_counts)
    # drawn with probability 0.6 * 20 ** (-c / 9): a head 5 to 40 times the tail, decreasing
    assert 5 < counts[0] / counts[-1] < 40
    assert np.corrcoef(np.arange(10), np.log(counts))[0, 1] < -0.95
    test = np.array(a.test.class_counts)
    assert test.max() / test.min() < 1.5  # balanced test split
    b = DATASETS.build({"name": "digits_mlt", "imbalance_ratio": 20})
    c = DATASETS.build({"name": "digits_mlt", "imbalance_ratio": 20, "seed": 1})
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels,
                                                                       b.test.labels)
    assert not torch.equal(a.train.images, c.train.images)


@pytest.mark.parametrize("param, value", [("imbalance_ratio", 0.5), ("head_rate", 1.0),
                                          ("test_rate", 0), ("num_train", 0)])
def test_bad_parameters_are_refused_naming_the_key(param, value):
    with pytest.raises(ConfigError, match=param):
        DATASETS.build({**SMALL, param: value}, key="data")


def _split_file_set(name):
    """A recipe of ``name`` on its fixture in the official formats, written to ``folder``."""
    def make(folder):
        from test_mlt_sets import MAKE, cfg
        return cfg(name, MAKE[name](folder / "data"), folder / "cache")
    return make


#: name -> recipe (or a function of a fresh folder returning one, for a set read from files) of
#: every multi-label data set (declared ``multilabel`` on its entry), small.
ML_CASES = PerEntry(DATASETS, {"digits_mlt": SMALL, "voc_mlt": _split_file_set("voc_mlt"),
                               "coco_mlt": _split_file_set("coco_mlt")},
                    where="ML_CASES in tests/test_multilabel.py",
                    select=lambda entry: getattr(entry, "multilabel", False))


def test_every_multilabel_dataset_has_a_contract_case():
    ML_CASES.check()
    assert ML_CASES.names  # digits_mlt at least


@pytest.mark.parametrize("name", ML_CASES.names)
def test_multilabel_dataset_contract(name, tmp_path):
    cfg = ML_CASES[name]
    cfg = cfg(tmp_path) if callable(cfg) else cfg
    built = DATASETS.build(cfg)
    assert built.multilabel and built.meta["dataset"] == name
    for ds in (built.train, built.test):
        assert ds.images.dtype == torch.uint8 and ds.images.dim() == 4
        assert ds.labels.dtype == torch.float32 and ds.labels.shape == (len(ds), ds.num_classes)
        assert set(ds.labels.unique().tolist()) <= {0.0, 1.0}
        assert ds.class_counts == ds.labels.sum(0).long().tolist() and min(ds.class_counts) > 0
    assert built.meta["train_class_counts"] == built.train.class_counts
    x = built.train.images[:4]
    for transform in (built.train_transform, built.eval_transform):
        assert transform(x).dtype == torch.float32 and transform(x).shape == x.shape
    again = DATASETS.build(cfg)
    assert torch.equal(again.train.images, built.train.images)
    assert torch.equal(again.train.labels, built.train.labels) and again.meta == built.meta
    with pytest.raises(ConfigError, match="bogus"):
        DATASETS.build({**cfg, "bogus": 1}, key="data")


# ------------------------------------------------------------------------------------- losses
def test_bce_is_the_element_mean_per_sample():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 3))
    y = (rng.random((4, 3)) < 0.5).astype(np.float64)
    p = 1 / (1 + np.exp(-z))
    by_hand = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=1)
    loss = LOSSES.build({"name": "bce"}, class_counts=[2, 2, 2], num_classes=3)
    zt, yt = torch.tensor(z), torch.tensor(y)
    assert np.allclose(loss(zt, yt, reduction="none").numpy(), by_hand)
    assert np.isclose(float(loss(zt, yt)), by_hand.mean())  # = the mean of all B*C elements
    # a mixed batch: lam * L(y_a) + (1 - lam) * L(y_b) per sample
    y_b = torch.flip(yt, [0])
    lam = torch.tensor([1.0, 0.25, 0.5, 0.0])
    other = -(y_b.numpy() * np.log(p) + (1 - y_b.numpy()) * np.log(1 - p)).mean(axis=1)
    mixed = mixed_loss(loss, zt, Batch(zt, yt, y_b, lam))
    assert np.isclose(float(mixed), np.mean(lam.numpy() * by_hand + (1 - lam.numpy()) * other))


MULTILABEL_LOSSES = [n for n in LOSSES.names() if getattr(LOSSES.get(n), "multilabel", False)]


@pytest.mark.parametrize("name", MULTILABEL_LOSSES)
def test_multilabel_loss_gradients_and_extremes(name):
    counts = [40, 20, 8, 3]
    loss = LOSSES.build({"name": name}, class_counts=counts, num_classes=4, total_epochs=4,
                        labels=np.eye(4)[np.repeat(np.arange(4), counts)])
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(5, 4, generator=g) < 0.4).double()
    z = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: loss(v, y), (z,))
    big = torch.tensor([[80.0, -80.0, 0.0, 40.0]] * 2, requires_grad=True)
    value = loss(big, torch.tensor([[0.0, 1.0, 1.0, 0.0]] * 2))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(big.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = loss(z.detach().to(torch.bfloat16), y.float())
    assert half.dtype == torch.float32


def test_bce_refuses_class_ids_and_weights():
    loss = LOSSES.build({"name": "bce"}, class_counts=[2, 2], num_classes=2)
    with pytest.raises(ValueError, match="multi-hot"):
        loss(torch.zeros(2, 2), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="weights"):
        LOSSES.build({"name": "bce", "weights": "inverse"}, class_counts=[2, 2])


# ------------------------------------------------------------------------------------- samplers
MATRIX = np.array([[1, 0], [1, 1], [0, 1], [1, 0]], dtype=np.float32)


def test_instance_sampler_draws_every_image_of_a_label_matrix():
    sampler = SAMPLERS.build({"name": "instance"}, labels=MATRIX, num_classes=2, seed=0)
    assert sorted(sampler.indices().tolist()) == [0, 1, 2, 3]
    assert sampler.class_counts.tolist() == [3, 2]
    with pytest.raises(DataError, match="only 0 and 1"):
        SAMPLERS.get("instance")(labels=MATRIX * 2, num_classes=2)


@pytest.mark.parametrize("name", [n for n in SAMPLERS.names()
                                  if not getattr(SAMPLERS.get(n), "multilabel", False)])
def test_class_id_samplers_refuse_a_label_matrix(name):
    with pytest.raises(DataError, match="single-label"):
        SAMPLERS.get(name)(labels=MATRIX, num_classes=2, seed=0, total_epochs=4)


# ------------------------------------------------------------------------------------- refusals
def _refused(registry) -> list[str]:
    return [n for n in registry.names() if not getattr(registry.get(n), "multilabel", False)]


@pytest.mark.parametrize("section, registry", [("sampler", SAMPLERS), ("loss", LOSSES)])
def test_single_label_samplers_and_losses_are_refused(section, registry):
    for name in _refused(registry):
        recipe = ml_recipe(f"{section}.name={name}")
        with pytest.raises(ConfigError, match="single-label") as err:
            check_multilabel(recipe, "")
        assert err.value.key == section


def test_single_label_augmentations_are_refused_and_mixing_ones_accepted():
    refused = _refused(AUGMENTS)
    assert refused and "mixup" not in refused and "remix" in refused
    for name in refused:
        with pytest.raises(ConfigError, match="single-label") as err:
            check_multilabel(ml_recipe() | {"augment": [{"name": name}]}, "")
        assert err.value.key == "augment[0]"
    check_multilabel(ml_recipe() | {"augment": [{"name": "mixup"}]}, "")


@pytest.mark.parametrize("data, loss, says", [(SMALL, "ce", "takes single-label targets"),
                                               ({"name": "digits_lt"}, "bce",
                                                "takes multi-hot targets")])
def test_trainer_refuses_before_anything_is_written(tmp_path, data, loss, says):
    recipe = ml_recipe(f"loss.name={loss}") | {"data": data}
    with pytest.raises(ConfigError, match=says) as err:
        Trainer(recipe, tmp_path / "run")
    assert err.value.key == "loss"
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


# ------------------------------------------------------------------------------------- metrics
def test_average_precision_equals_sklearn_with_ties():
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=(300, 6)), 1)  # many tied scores
    targets = (rng.random((300, 6)) < np.linspace(0.05, 0.6, 6)).astype(int)
    expected = average_precision_score(targets, scores, average=None)
    assert np.allclose(average_precision(scores, targets), expected, atol=1e-12)


def test_a_class_without_positives_has_no_ap_and_is_left_out():
    scores = np.array([[0.9, 0.5, 0.5], [0.2, 0.8, 0.4], [0.7, 0.3, 0.6]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0]])
    m = multilabel_metrics(scores, targets, [150, 50, 5])
    assert m["per_class_ap"][2] is None and m["tail_mAP"] is None
    # class 0: its positive ranks first (AP 1); class 1: positives at ranks 1 and 3, so
    # (precision 1 + precision 2/3) / 2
    assert m["per_class_ap"][:2] == [100.0, round(100 * (1 + 2 / 3) / 2, 4)]
    assert np.isclose(m["mAP"], (100 + 100 * (1 + 2 / 3) / 2) / 2)
    assert m["head_mAP"] == 100.0 and np.isclose(m["medium_mAP"], 100 * (1 + 2 / 3) / 2)


def test_groups_follow_the_thresholds():
    rng = np.random.default_rng(0)
    scores, targets = rng.normal(size=(50, 4)), (rng.random((50, 4)) < 0.4).astype(int)
    ap = 100 * average_precision_score(targets, scores, average=None)
    m = multilabel_metrics(scores, targets, [100, 99, 20, 19], head_threshold=100,
                           tail_threshold=20)
    assert np.isclose(m["head_mAP"], ap[0])  # exactly 100 is head
    assert np.isclose(m["medium_mAP"], ap[1:3].mean())  # 20..99
    assert np.isclose(m["tail_mAP"], ap[3])
    assert np.isclose(m["mAP"], ap.mean())


# ------------------------------------------------------------------------------------- end to end
def test_multilabel_run_reports_sklearn_map(ml_run):
    out, results = ml_run
    saved = json.loads((out / "results.json").read_text())
    for key in ("mAP", "head_mAP", "medium_mAP", "tail_mAP", "per_class_ap",
                "train_class_counts", "test_class_counts"):
        assert key in saved, key
    assert "top1" not in saved
    # the saved model's logits on the test split, scored by scikit-learn
    from lttoolbox.runs import open_run
    run = open_run(out)
    test = DATASETS.build(SMALL).test
    with torch.no_grad():
        run.model.eval()
        logits = run.model(run.eval_transform(test.images.to(run.device))).float().cpu().numpy()
    expected = 100 * average_precision_score(test.labels.numpy(), logits, average=None).mean()
    assert np.isclose(saved["mAP"], expected, atol=1e-9)
    assert json.loads((out / "data.json").read_text())["multilabel"] is True
    from lttoolbox.engine.logged_run import final_scalars
    assert final_scalars(saved) == {f"final/{k}": saved[k] for k in
                                    ("mAP", "head_mAP", "medium_mAP", "tail_mAP")
                                    if saved[k] is not None}
    # the evaluation during training (eval.every) logs the mAP too, in metrics.csv as well
    assert set(saved["history"][0]["eval"]) == {"mAP", "head_mAP", "medium_mAP", "tail_mAP"}
    rows = list(csv.DictReader(io.StringIO((out / "metrics.csv").read_text())))
    logged = [float(r["eval_mAP"]) if r["eval_mAP"] else None for r in rows]
    assert logged == [h.get("eval", {}).get("mAP") for h in saved["history"]]
    assert logged[0] is not None  # the last epoch's evaluation is the final one, in results
    from lttoolbox.engine.plots import plots_available
    if plots_available():  # per-class AP and the curves; no confusion matrix
        assert (out / "per_class_accuracy.png").is_file()
        assert (out / "training_curves.png").is_file()
        assert not (out / "confusion_matrix.png").exists()


def test_lteval_reproduces_the_run(ml_run, capsys):
    from lttoolbox.cli_eval import main as lteval
    out, results = ml_run
    assert lteval([str(out), "--name", "again"]) == 0
    doc = json.loads((out / "eval-again.json").read_text())
    assert doc["mAP"] == results["mAP"] and doc["per_class_ap"] == results["per_class_ap"]
    assert "mAP" in capsys.readouterr().out


def test_ltpredict_writes_per_label_scores_and_a_threshold(ml_run, tmp_path, capsys):
    from PIL import Image

    from lttoolbox.cli_predict import main as ltpredict
    out, _ = ml_run
    test = DATASETS.build(SMALL).test
    for i in range(3):
        Image.fromarray(test.images[i, 0].numpy()).save(tmp_path / f"{i}.png")
    assert ltpredict([str(out), str(tmp_path), "--threshold", "0.3"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    header, rows = rows[0], rows[1:]
    assert header[:2] == ["path", "labels"] and header[2:] == [f"prob_{c}" for c in range(10)]
    assert len(rows) == 3
    for row in rows:
        probs = np.array(row[2:], dtype=float)
        assert ((0 <= probs) & (probs <= 1)).all()
        chosen = [str(c) for c in np.flatnonzero(probs >= 0.3)]
        assert row[1] == ";".join(chosen)
    assert ltpredict([str(out), str(tmp_path), "--tau", "1"]) != 0
    printed = capsys.readouterr()
    assert "--tau" in printed.out + printed.err and "prob_0" not in printed.out


ML_SAMPLERS = [n for n in SAMPLERS.names() if getattr(SAMPLERS.get(n), "multilabel", False)]
ML_PAIRS = ([(name, "bce") for name in ML_SAMPLERS]
            + [("class_aware_ml", name) for name in MULTILABEL_LOSSES if name != "bce"])


@pytest.mark.parametrize("sampler, loss", ML_PAIRS)
def test_every_multilabel_sampler_and_loss_trains(tmp_path, sampler, loss):
    results = train(ml_recipe(f"sampler.name={sampler}", f"loss.name={loss}", "train.epochs=1"),
                    tmp_path / "run", quiet=True)
    assert np.isfinite(results["history"][-1]["loss"]) and 0 <= results["mAP"] <= 100


ROOT = Path(__file__).resolve().parents[1]
ML_RECIPES = sorted((ROOT / "configs" / "multilabel").glob("*.yaml"))


@pytest.mark.parametrize("path", [p for p in ML_RECIPES
                                  if read_recipe(p)["data"]["name"] == "digits_mlt"],
                         ids=lambda p: p.stem)
def test_every_embedded_multilabel_recipe_trains(path, tmp_path):
    recipe = load_recipe(path, ["train.epochs=1", "data.num_train=300", "data.num_test=150",
                                "schedule.warmup_epochs=0"])
    results = train(recipe, tmp_path / "run", quiet=True)
    assert np.isfinite(results["history"][-1]["loss"]) and 0 <= results["mAP"] <= 100


@pytest.mark.long
@pytest.mark.parametrize("parts", [("augment=[{name: mixup, alpha: 1.0}]",),
                                   ("sampler.name=class_aware_ml", "loss.name=db",
                                    "sampler.start_epoch=1")])
def test_multilabel_resume_is_exact(tmp_path, parts):
    recipe = ml_recipe("train.epochs=2", *parts)
    full = train(recipe, tmp_path / "full", quiet=True)
    resumed = resumed_run(recipe, tmp_path / "cut", 0)
    assert resumed["per_class_ap"] == full["per_class_ap"] and resumed["mAP"] == full["mAP"]
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in full["history"]]
