"""The registered multi-label sets voc_mlt and coco_mlt: built through the registry and a recipe,
on the in-memory and the streaming path (multi-hot targets through MultiLabelFileSplit and the
DataLoader), a short training run and lteval on both paths, the head/medium/tail groups of
class_split.pkl against the trainer's, and every error as one line.

The fixtures are written in the official formats with the builders of tests/test_mlt_data.py;
unlike that file's, every class has a training and a test image (the sets require a training
image per label), and the VOC training counts sit on the group boundaries (100, 99, 20, 19).
Expected values are the fixtures' own numbers.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from test_mlt_data import COCO_IDS, freq_pickle, id_file, jpeg, split_pickle, voc_xml

from lttoolbox.data.datapath import StreamPath, build_data_path
from lttoolbox.data.mlt import COCO_CLASSES, VOC_CLASSES
from lttoolbox.data.mlt_sets import HEAD_AT_LEAST, TAIL_BELOW, count_groups
from lttoolbox.data.multilabel import MultiLabelDataset
from lttoolbox.data.stream import IMAGENET_MEAN, IMAGENET_STD, FileSplit, MultiLabelFileSplit
from lttoolbox.engine.evaluate import multilabel_metrics
from lttoolbox.errors import ConfigError, DataError
from lttoolbox.recipe import resolve
from lttoolbox.registry import DATASETS

CPU = torch.device("cpu")


def official_groups(counts) -> dict[str, list[int]]:
    """class_split.pkl's groups as tools/create_longtail_dataset.py:172-174 computes them."""
    n = np.asarray(counts)
    return {"head": sorted(np.where(n >= 100)[0].tolist()),
            "middle": sorted(np.where((n < 100) * (n >= 20))[0].tolist()),
            "tail": sorted(np.where(n < 20)[0].tolist())}


def _split_files(folder: Path, ids, rows, list_name: str) -> None:
    id_file(folder / list_name, ids)
    freq_pickle(folder / "class_freq.pkl", rows)
    groups = official_groups(np.asarray(rows).sum(0))
    split_pickle(folder / "class_split.pkl", groups["head"], groups["middle"], groups["tail"])


def voc_rows() -> np.ndarray:
    """110 training rows: person 100 (head at the boundary), chair 99, bicycle 20 (medium at
    both boundaries), aeroplane 19 (tail), the other 16 classes two or three images each."""
    rows = np.zeros((110, 20), dtype=np.int64)
    rows[0:100, 14] = 1
    rows[10:109, 8] = 1
    rows[0:20, 1] = 1
    rows[90:109, 0] = 1
    for c in set(range(20)) - {0, 1, 8, 14}:
        rows[[c, c + 50], c] = 1
    rows[109, 19] = 1
    return rows


VOC_TEST_IDS = [f"{k:06d}" for k in range(1, 11)]  # image k holds classes 2(k-1), 2(k-1)+1


def make_voc_set(root: Path) -> dict:
    rows = voc_rows()
    ids = [f"{2008 + k % 4}_{k:06d}" for k in range(len(rows))]
    _split_files(root / "appendix" / "VOCdevkit" / "longtail2012", ids, rows, "img_id.txt")
    devkit = root / "VOCdevkit"
    for k, i in enumerate(ids):
        jpeg(devkit / "VOC2012" / "JPEGImages" / f"{i}.jpg", k)
    id_file(devkit / "VOC2007" / "ImageSets" / "Main" / "test.txt", VOC_TEST_IDS)
    test = np.zeros((10, 20), dtype=np.float32)
    for k, i in enumerate(VOC_TEST_IDS):
        voc_xml(devkit / "VOC2007" / "Annotations" / f"{i}.xml",
                [(VOC_CLASSES[2 * k], 0), (VOC_CLASSES[2 * k + 1], 1)])
        test[k, [2 * k, 2 * k + 1]] = 1
        jpeg(devkit / "VOC2007" / "JPEGImages" / f"{i}.jpg", 1000 + k)
    return {"root": root, "train": rows.astype(np.float32), "test": test, "ids": ids}


def make_coco_set(root: Path) -> dict:
    """40 training images (image k: classes 2k and 2k + 1, and person), 20 val images (image k:
    classes 4k .. 4k + 3) in a val2017-style JSON."""
    rows = np.zeros((40, 80), dtype=np.int64)
    for k in range(40):
        rows[k, [0, 2 * k, 2 * k + 1]] = 1
    ids = [100 + 7 * k for k in range(40)]
    _split_files(root / "appendix" / "coco" / "longtail2017", ids, rows, "img_id.pkl")
    for k, i in enumerate(ids):
        jpeg(root / "coco" / "train2017" / f"{i:012d}.jpg", k)
    test = np.zeros((20, 80), dtype=np.float32)
    images, annotations = [], []
    for k in range(20):
        name = f"{500 + k:012d}.jpg"
        images.append({"id": 500 + k, "file_name": name, "width": 12, "height": 9})
        for c in range(4 * k, 4 * k + 4):
            annotations.append({"id": len(annotations) + 1, "image_id": 500 + k,
                                "category_id": COCO_IDS[c], "bbox": [0, 0, 5, 5],
                                "area": 25.0, "iscrowd": 0})
            test[k, c] = 1
        jpeg(root / "coco" / "val2017" / name, 2000 + k)
    doc = {"images": images, "annotations": annotations,
           "categories": [{"id": c, "name": f"cat{c}"} for c in COCO_IDS]}
    (root / "coco" / "annotations").mkdir(parents=True)
    (root / "coco" / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    return {"root": root, "train": rows.astype(np.float32), "test": test, "ids": ids}


MAKE = {"voc_mlt": make_voc_set, "coco_mlt": make_coco_set}
CLASSES = {"voc_mlt": VOC_CLASSES, "coco_mlt": COCO_CLASSES}


def cfg(name: str, fixture: dict, cache: Path, **extra) -> dict:
    return {"name": name, "root": str(fixture["root"]), "image_size": 8,
            "cache_dir": str(cache), **extra}


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict:
    return {name: make(tmp_path_factory.mktemp(name)) for name, make in MAKE.items()}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


# ------------------------------------------------------------------------------ building
@pytest.mark.parametrize("name", sorted(MAKE))
def test_built_through_the_registry_and_a_recipe(name, sets, cache):
    fixture = sets[name]
    recipe = resolve({"data": cfg(name, fixture, cache), "model": {"name": "digits_cnn"},
                      "sampler": {"name": "instance"}, "loss": {"name": "bce"}})
    bundle = DATASETS.build(recipe["data"], key="data")
    assert bundle.multilabel and getattr(DATASETS.get(name), "multilabel", False)
    assert bundle.path == "memory" and bundle.val is None and not bundle.warnings
    for split in ("train", "test"):
        data = getattr(bundle, split)
        assert isinstance(data, MultiLabelDataset) and data.multilabel
        np.testing.assert_array_equal(data.labels.numpy(), fixture[split])
        assert data.class_counts == fixture[split].sum(0).astype(int).tolist()
        assert tuple(data.images.shape[1:]) == (3, 8, 8)
    meta = bundle.meta
    assert meta["dataset"] == name and meta["root"] == str(fixture["root"])
    assert meta["classes"] == list(CLASSES[name]) and meta["multilabel"] is True
    assert (meta["num_train"], meta["num_test"]) == (len(fixture["train"]), len(fixture["test"]))
    assert meta["train_class_counts"] == fixture["train"].sum(0).astype(int).tolist()
    assert meta["test_class_counts"] == fixture["test"].sum(0).astype(int).tolist()
    assert meta["path"] == "memory" and meta["imbalance_type"] is None
    assert meta["image_size"] == 8
    # the official extra_aug on by default: the distortion and the crop of >= 0.8 of each side
    assert (meta["min_crop_size"], meta["photometric"]) == (0.8, True)
    assert bundle.train_transform.min_crop_size == 0.8 and bundle.train_transform.photometric
    assert not bundle.eval_transform.random
    split = fixture["root"] / "appendix" / {"voc_mlt": "VOCdevkit/longtail2012",
                                            "coco_mlt": "coco/longtail2017"}[name]
    assert meta["split_files"]["class_freq"] == str(split / "class_freq.pkl")
    assert meta["split_files"]["class_split"] == str(split / "class_split.pkl")
    groups = official_groups(fixture["train"].sum(0))
    assert meta["class_split"] == {"head": groups["head"], "medium": groups["middle"],
                                   "tail": groups["tail"]}
    # the official img_norm_cfg (0..255) on the 0..1 scale: ImageNet's statistics
    np.testing.assert_allclose(meta["mean"], np.array([123.675, 116.28, 103.53]) / 255)
    np.testing.assert_allclose(meta["std"], np.array([58.395, 57.12, 57.375]) / 255)


def test_appendix_elsewhere_is_read_and_recorded(tmp_path):
    fixture = make_coco_set(tmp_path / "data")
    (tmp_path / "data" / "appendix").rename(tmp_path / "repo_appendix")
    with pytest.raises(DataError, match="img_id.pkl does not exist"):
        DATASETS.build(cfg("coco_mlt", fixture, tmp_path / "cache"))
    bundle = DATASETS.build(cfg("coco_mlt", fixture, tmp_path / "cache",
                                appendix=str(tmp_path / "repo_appendix")))
    assert bundle.meta["appendix"] == str(tmp_path / "repo_appendix")
    assert bundle.meta["split_files"]["train_list"] == str(
        tmp_path / "repo_appendix" / "coco" / "longtail2017" / "img_id.pkl")
    np.testing.assert_array_equal(bundle.train.labels.numpy(), fixture["train"])


def test_memory_and_stream_give_the_same_labels_and_counts(sets, cache):
    fixture = sets["voc_mlt"]
    memory = DATASETS.build(cfg("voc_mlt", fixture, cache, path="memory"))
    stream = DATASETS.build(cfg("voc_mlt", fixture, cache, path="stream"))
    assert stream.path == "stream" and stream.multilabel and stream.meta["path"] == "stream"
    for split in ("train", "test"):
        a, b = getattr(memory, split), getattr(stream, split)
        assert isinstance(b, MultiLabelFileSplit) and b.labels.dtype == torch.float32
        assert torch.equal(a.labels, b.labels) and a.class_counts == b.class_counts
    assert stream.train.paths[3].endswith(f"VOC2012/JPEGImages/{fixture['ids'][3]}.jpg")
    assert stream.train.mean == IMAGENET_MEAN and stream.train.std == IMAGENET_STD
    assert stream.meta["class_split"] == memory.meta["class_split"]
    # the streaming path's batches carry the multi-hot rows of the drawn images
    path = build_data_path(stream, CPU, seed=0, workers=0)
    assert isinstance(path, StreamPath) and path.train_labels().shape == (110, 20)
    order = torch.tensor([5, 0, 109, 42, 7])
    batches = list(path.epoch(order, np.arange(5), batch_size=3, epoch_key=(0, 0)))
    y = torch.cat([b[1] for b in batches])
    assert y.dtype == torch.float32 and torch.equal(y, torch.from_numpy(fixture["train"][order]))
    assert batches[0][0].shape == (3, 3, 8, 8)
    _, rows = path.fetch(torch.tensor([3, 108]))  # extra training images (CMO's way)
    assert torch.equal(rows, torch.from_numpy(fixture["train"][[3, 108]]))
    x, rows = path.eval_fetch("test", np.array([2, 9]))
    assert torch.equal(rows, torch.from_numpy(fixture["test"][[2, 9]]))
    assert path.eval_labels("test").shape == (10, 20)
    # evaluation sees the whole image resized to a square, as the in-memory path does
    assert stream.eval_transform.resize is None and stream.meta["eval_crop"] is False
    assert stream.meta["eval_resize"] is None
    cropped = DATASETS.build(cfg("voc_mlt", fixture, cache, path="stream", eval_crop=True,
                                 eval_resize=10))
    assert cropped.eval_transform.resize == 10 and cropped.meta["eval_resize"] == 10


def test_stream_evaluation_keeps_the_whole_image_unless_asked_to_crop():
    """A bright band at the left edge of a wide image: the whole-image resize keeps it in the
    first output column; the centre crop of the single-label sets cuts it out."""
    from lttoolbox.data.stream import StreamTransform

    image = torch.zeros(3, 8, 32, dtype=torch.uint8)
    image[:, :, :4] = 255  # columns 0-3 of 32: output column 0 of 8 when squeezed 4:1
    whole = StreamTransform(8, train=False, centre_crop=False)(image, None)
    crop = StreamTransform(8, train=False, resize=8)(image, None)  # columns 12-19 kept
    assert whole.shape == crop.shape == (3, 8, 8)
    # (the antialiasing filter spreads the band a little into column 1)
    assert (whole[:, :, 0] > 200).all() and (whole[:, :, 3:] == 0).all()
    assert (crop == 0).all()
    assert "resize to 8 x 8" in repr(StreamTransform(8, train=False, centre_crop=False))


def test_multilabel_file_split_checks_its_matrix():
    split = MultiLabelFileSplit(["/a", "/b", "/c"], [[1, 0], [1, 1], [0, 1]], ["x", "y"],
                                (0.5,) * 3, (0.2,) * 3, 8)
    assert split.class_counts == [2, 2] and split.multilabel and not FileSplit.multilabel
    for labels, says in (([[1, 0, 1]] * 3, "shape (3, 2)"), ([1, 0, 1], "shape (3, 2)"),
                         ([[1, 0], [2, 0], [0, 1]], "only 0 and 1"),
                         ([[1, 0], [0, 1]], "3 image paths but 2 labels")):
        with pytest.raises(DataError, match=f".*{says}".replace("(", r"\(").replace(")", r"\)")):
            MultiLabelFileSplit(["/a", "/b", "/c"], labels, ["x", "y"], (0.5,) * 3, (0.2,) * 3,
                                8)


# ------------------------------------------------------------------------------ through the trainer
def run_recipe(fixture: dict, cache: Path, path: str) -> dict:
    return resolve({"data": cfg("voc_mlt", fixture, cache, path=path),
                    "model": {"name": "digits_cnn"}, "sampler": {"name": "instance"},
                    "loss": {"name": "bce"}, "optim": {"lr": 0.05},
                    "train": {"epochs": 1, "batch_size": 32, "seed": 0, "workers": 0}})


@pytest.mark.parametrize("path", ["memory", "stream"])
def test_one_epoch_trains_and_lteval_reads_the_run(path, sets, cache, tmp_path):
    from lttoolbox.cli_eval import evaluate_run
    from lttoolbox.engine import train

    fixture = sets["voc_mlt"]
    results = train(run_recipe(fixture, cache, path), tmp_path / "run", quiet=True)
    assert results["data"]["path"] == path and results["data"]["dataset"] == "voc_mlt"
    assert results["train_class_counts"] == fixture["train"].sum(0).astype(int).tolist()
    assert results["test_class_counts"] == [1] * 20
    assert 0 <= results["mAP"] <= 100 and len(results["per_class_ap"]) == 20
    info = json.loads((tmp_path / "run" / "data.json").read_text())
    assert info["multilabel"] is True and (info.get("path") == "stream") == (path == "stream")
    if path == "stream":  # a new image is read as the run evaluated: whole, resized
        assert info["eval_crop"] is False and "eval_resize" not in info
    doc, written = evaluate_run(tmp_path / "run")
    assert written is not None and written.is_file()
    assert doc["mAP"] == results["mAP"] and doc["per_class_ap"] == results["per_class_ap"]
    assert doc["head_mAP"] == results["head_mAP"] and doc["tail_mAP"] == results["tail_mAP"]
    # ltpredict reads a test image as the run's evaluation did: the same per-label scores
    from lttoolbox.cli_predict import predict_labels
    from lttoolbox.engine.evaluate import logits_of
    from lttoolbox.runs import open_run
    run = open_run(tmp_path / "run")
    bundle = DATASETS.build(run.recipe["data"])
    data = build_data_path(bundle, CPU, workers=0, stats=(info["mean"], info["std"]))
    probs = torch.sigmoid(next(logits_of(run.model, data.eval_batches("test", 1,
                                                                       np.array([4])))))[0]
    image = fixture["root"] / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000005.jpg"
    header, rows, skipped = predict_labels(tmp_path / "run", [image])
    assert not skipped and header[2] == "prob_aeroplane" and len(header) == 22
    assert [float(v) for v in rows[0][2:]] == pytest.approx(probs.tolist(), abs=1e-5)


def test_a_streamed_multilabel_run_resumes_exactly(sets, cache, tmp_path):
    from conftest import resumed_run

    from lttoolbox.engine import train

    recipe = resolve({**run_recipe(sets["voc_mlt"], cache, "stream"),
                      "train": {"epochs": 2, "batch_size": 32, "seed": 0, "workers": 0}})
    whole = train(recipe, tmp_path / "whole", quiet=True)
    resumed = resumed_run(recipe, tmp_path / "cut", stop_after=0)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    assert resumed["per_class_ap"] == whole["per_class_ap"] and resumed["mAP"] == whole["mAP"]


# ------------------------------------------------------------------------------ groups
def test_class_split_groups_are_the_trainer_groups(sets, cache):
    """The mAP groups the trainer cuts by training count (eval.many_threshold 100,
    eval.few_threshold 20: its defaults) are the groups of class_split.pkl, boundaries included:
    each group's mAP is the mean AP of the classes the file puts there."""
    bundle = DATASETS.build(cfg("voc_mlt", sets["voc_mlt"], cache))
    recipe = resolve({"data": {"name": "digits_lt"}, "model": {"name": "digits_cnn"}})
    ev = recipe["eval"]
    split = bundle.meta["class_split"]
    counts = bundle.train.class_counts
    assert counts[14] == 100 and counts[8] == 99 and counts[1] == 20 and counts[0] == 19
    # the rule the data set checks the file against (its warning) is the evaluation's default
    assert (HEAD_AT_LEAST, TAIL_BELOW) == (ev["many_threshold"], ev["few_threshold"])
    assert count_groups(counts) == split and not bundle.warnings
    # per-class APs that tell the classes apart: class c ranks its positive (test image c // 2)
    # at place r_c = 1 + c % 4 among 10 images, so its AP is 1 / r_c
    targets = bundle.test.labels.numpy()
    rng = np.random.default_rng(0)
    scores = rng.random((10, 20))
    ap = np.empty(20)
    for c in range(20):
        positive = c // 2
        place = 1 + c % 4
        others = [i for i in range(10) if i != positive]
        order = others[:place - 1] + [positive] + others[place - 1:]
        scores[order, c] = np.linspace(1, 0, 10)
        ap[c] = 100.0 / place
    m = multilabel_metrics(scores, targets, counts, ev["many_threshold"], ev["few_threshold"])
    np.testing.assert_allclose(m["per_class_ap"], ap, atol=1e-4)
    for group, key in (("head", "head_mAP"), ("medium", "medium_mAP"), ("tail", "tail_mAP")):
        assert m[key] == pytest.approx(ap[split[group]].mean())


def test_class_split_that_differs_from_the_counts_is_a_warning(tmp_path):
    fixture = make_voc_set(tmp_path / "voc")
    target = tmp_path / "voc" / "appendix" / "VOCdevkit" / "longtail2012" / "class_split.pkl"
    data = pickle.loads(target.read_bytes())
    data["head"].remove(np.int64(14))
    data["middle"].add(np.int64(14))
    target.write_bytes(pickle.dumps(data, protocol=2))
    bundle = DATASETS.build(cfg("voc_mlt", fixture, tmp_path / "cache"))
    assert len(bundle.warnings) == 1
    message = bundle.warnings[0]
    assert str(target) in message and "person (100 images) is medium there" in message
    assert "\n" not in message
    assert bundle.meta["class_split"]["medium"] == [1, 8, 14]


def test_a_label_without_test_image_is_a_warning(tmp_path):
    fixture = make_voc_set(tmp_path / "voc")
    annotations = tmp_path / "voc" / "VOCdevkit" / "VOC2007" / "Annotations"
    voc_xml(annotations / "000010.xml", [("sofa", 0)])  # tvmonitor (19) loses its only image
    bundle = DATASETS.build(cfg("voc_mlt", fixture, tmp_path / "cache"))
    assert bundle.test.class_counts[19] == 0
    assert any("test.txt" in w and "tvmonitor" in w and "left out of every mAP" in w
               for w in bundle.warnings)


# ------------------------------------------------------------------------------ errors
def _no_training_image(root: Path) -> Path:
    split = root / "appendix" / "VOCdevkit" / "longtail2012"
    rows = voc_rows()
    rows[[2, 52], 2] = 0  # bird loses its two images; they keep their person label
    freq_pickle(split / "class_freq.pkl", rows)
    return split / "class_freq.pkl"


# (recipe change, file change, error type, what the message holds)
ERRORS = {
    "no root": ({"root": None}, None, ConfigError, "data.root"),
    "a profile": ({"imbalance_type": "exp"}, None, ConfigError, "data.imbalance_type"),
    "path": ({"path": "disk"}, None, ConfigError, "data.path"),
    "image_size": ({"image_size": 0}, None, ConfigError, "data.image_size"),
    "crop_padding": ({"crop_padding": -1}, None, ConfigError, "data.crop_padding"),
    "hflip": ({"hflip": "yes"}, None, ConfigError, "data.hflip"),
    "mean alone": ({"std": None}, None, ConfigError, "data"),
    "jitter in memory": ({"path": "memory", "color_jitter": 0.4}, None, ConfigError,
                         "color_jitter"),
    "eval_crop in memory": ({"path": "memory", "eval_crop": True}, None, ConfigError,
                            "data.eval_crop"),
    "eval_crop not a bool": ({"path": "stream", "eval_crop": "yes"}, None, ConfigError,
                             "data.eval_crop"),
    "eval_resize without the crop": ({"path": "stream", "eval_resize": 10}, None, ConfigError,
                                     "data.eval_resize"),
    "min_crop_size 0": ({"min_crop_size": 0}, None, ConfigError, "data.min_crop_size"),
    "min_crop_size above 1": ({"min_crop_size": 1.2}, None, ConfigError, "data.min_crop_size"),
    "photometric not a bool": ({"photometric": "on"}, None, ConfigError, "data.photometric"),
    "unknown key": ({"train_list": "x.txt"}, None, ConfigError, "data.train_list"),
    "root missing": ({"root": "/nonexistent/mlt"}, None, DataError, "/nonexistent/mlt"),
    "no class_freq": ({}, lambda r: (r / "appendix/VOCdevkit/longtail2012/class_freq.pkl").unlink(),
                      DataError, "class_freq.pkl"),
    "label without training image": ({}, _no_training_image, DataError,
                                     "no training image has label(s) bird"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_naming_the_key_or_file(case, tmp_path):
    change, damage, error, says = ERRORS[case]
    root = tmp_path / "voc"
    root.mkdir()
    if damage is not None:
        make_voc_set(root)
        damage(root)
    # a recipe error is found before any file is read: these cases have no files at all
    config = {**cfg("voc_mlt", {"root": root}, tmp_path / "cache"), **change}
    with pytest.raises(error) as caught:
        DATASETS.build(config, key="data")
    message = str(caught.value)
    assert "\n" not in message and says in message, message
    assert not (tmp_path / "cache").exists()  # nothing written


def test_a_broken_image_stops_the_stream_build_naming_the_file(tmp_path):
    fixture = make_voc_set(tmp_path / "voc")
    broken = tmp_path / "voc" / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000003.jpg"
    broken.write_bytes(b"not a jpeg")
    for path in ("memory", "stream"):
        with pytest.raises(DataError, match=f"cannot read image {broken}") as caught:
            DATASETS.build(cfg("voc_mlt", fixture, tmp_path / "cache", path=path))
        assert "\n" not in str(caught.value)


# ------------------------------------------------------------------------------ the protocols
PROTOCOLS = sorted((Path(__file__).resolve().parents[1] / "configs" / "multilabel").glob(
    "*_mlt_*.yaml"))


@pytest.mark.long  # a ResNet-50 epoch each, 10 to 80 s on two cores
@pytest.mark.parametrize("path", PROTOCOLS, ids=lambda p: p.stem)
def test_the_voc_and_coco_protocols_train_as_written_on_a_fixture(path, sets, cache, tmp_path):
    """The recipe as written (ResNet-50, pfc head, norm_eval, frozen stem and layer1, its
    sampler and loss, clipping, per-step warm-up), on the fixture: only the data root, a small
    image size, the weights (none here) and the budget change."""
    from lttoolbox.engine import train
    from lttoolbox.recipe import load_recipe, read_recipe

    name = read_recipe(path)["data"]["name"]
    overrides = [f"data.root={sets[name]['root']}", "data.image_size=32",
                 f"data.cache_dir={cache}", "model.weights=null", "train.epochs=1",
                 "train.batch_size=16"]
    if name == "coco_mlt" and read_recipe(path)["loss"]["name"] == "db":
        # the fixture's class 0 is in every image, where the class bias -log(N/n - 1) is infinite
        overrides.append("loss.init_bias=0.0")
    recipe = load_recipe(path, overrides)
    as_written = read_recipe(path)
    assert recipe["model"]["name"] == "resnet50" and recipe["model"]["norm_eval"] is True
    assert recipe["loss"]["name"] == as_written["loss"]["name"]
    results = train(recipe, tmp_path / "run", quiet=True)
    assert np.isfinite(results["history"][-1]["loss"]) and 0 <= results["mAP"] <= 100
    assert results["data"]["dataset"] == name
