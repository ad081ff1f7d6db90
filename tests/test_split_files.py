"""Split-file data sets (``txt_list``, ``inaturalist``) on tiny generated JPEG trees: parsing,
the join by image id, every error naming its file and line (or JSON entry), and a 1-epoch run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lttoolbox.cli import main
from lttoolbox.data.folder_io import decode_image
from lttoolbox.data.split_files import read_inaturalist_json, read_txt_list
from lttoolbox.engine import train
from lttoolbox.errors import ConfigError, DataError
from lttoolbox.recipe import resolve
from lttoolbox.registry import DATASETS

TRAIN_COUNTS = (6, 4, 3, 2)  # long-tailed already
TEST_PER_CLASS = 2
VAL_PER_CLASS = 1
SIZES = ((12, 12), (20, 14), (9, 17))  # (width, height): decoding must resize all of them


def write_images(root: Path) -> dict[str, list[tuple[str, int]]]:
    """ImageNet-like tree: train/ and val/ hold ``c<k>/<n>.jpg``; returns (path, label) per split.

    The validation list takes images from train/ (as ImageNet-LT's does), disjoint from training.
    """
    rng = np.random.default_rng(0)
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for label, count in enumerate(TRAIN_COUNTS):
        for split, folder, n in (("train", "train", count), ("val", "train", VAL_PER_CLASS),
                                 ("test", "val", TEST_PER_CLASS)):
            for i in range(n):
                relative = f"{folder}/c{label}/{split}_{i}.jpg"
                width, height = SIZES[(label + i) % len(SIZES)]
                (root / relative).parent.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / relative, quality=90)
                splits[split].append((relative, label))
    return splits


def write_list(path: Path, pairs, extra: str = "") -> Path:
    path.write_text("".join(f"{p} {label}\n" for p, label in pairs) + extra)
    return path


@pytest.fixture(name="tree")
def tree_fixture(tmp_path):
    """Images and split lists (``tree`` in a test; other files import ``tree_fixture``)."""
    root = tmp_path / "images"
    splits = write_images(root)
    lists = {name: write_list(tmp_path / f"LT_{name}.txt", pairs) for name, pairs in splits.items()}
    return {"root": root, "splits": splits, "lists": lists, "tmp": tmp_path}


def inat_json(pairs, categories=(0, 1, 2, 3), first_id=1000):
    """A COCO-style dict with non-contiguous image ids and annotations in another order."""
    images = [{"id": first_id + 7 * i, "file_name": p, "width": 8, "height": 8}
              for i, (p, _) in enumerate(pairs)]
    annotations = [{"id": 5 * i, "image_id": first_id + 7 * i, "category_id": label}
                   for i, (_, label) in enumerate(pairs)]
    annotations = annotations[1::2] + annotations[0::2]  # any order: joined by image id
    return {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": f"species_{c}"} for c in categories]}


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


def txt_cfg(tree, **extra):
    return {"name": "txt_list", "root": str(tree["root"]),
            "train_list": str(tree["lists"]["train"]), "test_list": str(tree["lists"]["test"]),
            "image_size": 16, "cache_dir": str(tree["tmp"] / "cache"), **extra}


def inat_cfg(tree, **extra):
    tmp = tree["tmp"]
    train_json = write_json(tmp / "train2018.json", inat_json(tree["splits"]["train"]))
    val_json = write_json(tmp / "val2018.json", inat_json(tree["splits"]["test"], first_id=9))
    return {"name": "inaturalist", "root": str(tree["root"]), "train_json": str(train_json),
            "val_json": str(val_json), "image_size": 16, "cache_dir": str(tmp / "cache"),
            **extra}


def raises(error, call, *texts):
    """Run ``call``; it must raise ``error`` whose message holds every text; returns it."""
    with pytest.raises(error) as info:
        call()
    for text in texts:
        assert text in str(info.value), (text, str(info.value))
    return str(info.value)


# ----------------------------------------------------------------------------------- happy paths
def test_txt_list_reads_paths_labels_and_lines(tree):
    pairs = tree["splits"]["train"]
    path = write_list(tree["tmp"] / "gaps.txt", pairs[:2], extra="\n   \n" + "".join(
        f"{p} {label}\n" for p, label in pairs[2:]))
    entries = read_txt_list(path, tree["root"])
    assert [(e.path, e.label) for e in entries] == pairs
    # blank lines are skipped but keep their number, so messages point at the real line
    assert [e.line for e in entries] == [1, 2] + list(range(5, 5 + len(pairs) - 2))
    assert entries[0].where == f"{path}:1"
    assert np.bincount([e.label for e in entries]).tolist() == list(TRAIN_COUNTS)
    first = tree["root"] / pairs[0][0]
    assert (entries[0].size, entries[0].mtime) == (first.stat().st_size, first.stat().st_mtime_ns)


def test_txt_list_leading_slash_and_dot_segments_stay_below_root(tree):
    pairs = [("/" + tree["splits"]["train"][0][0], 0),
             ("./train/c1/../c1/train_0.jpg", 1)]
    entries = read_txt_list(write_list(tree["tmp"] / "oltr.txt", pairs), tree["root"])
    assert [e.path for e in entries] == [tree["splits"]["train"][0][0], "train/c1/train_0.jpg"]


def test_json_is_joined_by_image_id_not_by_position(tree):
    pairs = tree["splits"]["train"]
    data = inat_json(pairs)
    data["images"].reverse()  # images and annotations now in two different orders
    positional = [a["category_id"] for a in data["annotations"]]
    truth = dict(pairs)
    assert positional != [truth[i["file_name"]] for i in data["images"]]  # a zip would mislabel
    split = read_inaturalist_json(write_json(tree["tmp"] / "t.json", data), tree["root"])
    assert [(e.path, e.label) for e in split.entries] == list(reversed(pairs))
    assert [e.image_id for e in split.entries] == [i["id"] for i in data["images"]]
    assert split.entries[0].where == f"{tree['tmp'] / 't.json'}: images[0] (id " \
                                     f"{data['images'][0]['id']})"
    assert split.category_ids == [0, 1, 2, 3]
    assert split.category_names == ["species_0", "species_1", "species_2", "species_3"]


def test_same_image_same_label_in_json_and_list_forms(tree):
    """The ``path label`` list some codebases write from the JSON reads back the same labels."""
    pairs = tree["splits"]["train"]
    data = inat_json(pairs)
    json_path = write_json(tree["tmp"] / "train2018.json", data)
    by_id = {i["id"]: i["file_name"] for i in data["images"]}
    lines = [(by_id[a["image_id"]], a["category_id"]) for a in data["annotations"]]
    list_path = write_list(tree["tmp"] / "iNaturalist18_train.txt", lines)
    from_json = {e.path: e.label for e in read_inaturalist_json(json_path, tree["root"]).entries}
    from_list = {e.path: e.label for e in read_txt_list(list_path, tree["root"])}
    assert from_json == from_list == dict(pairs)


def test_json_labels_rank_non_contiguous_category_ids(tree):
    pairs = tree["splits"]["test"]
    ids = (40, 10, 30, 20)  # listed unsorted; label = rank of the id
    data = inat_json([(p, ids[label]) for p, label in pairs], categories=ids)
    split = read_inaturalist_json(write_json(tree["tmp"] / "v.json", data), tree["root"])
    assert split.category_ids == [10, 20, 30, 40]
    assert split.category_names == ["species_10", "species_20", "species_30", "species_40"]
    assert [e.label for e in split.entries] == [[10, 20, 30, 40].index(ids[label])
                                                for _, label in pairs]


def test_txt_list_builds_the_bundle_from_the_registry(tree):
    bundle = DATASETS.build(txt_cfg(tree, val_list=str(tree["lists"]["val"]), num_classes=4))
    assert bundle.train.class_counts == list(TRAIN_COUNTS)  # imbalance_type null: as listed
    assert bundle.test.class_counts == [TEST_PER_CLASS] * 4
    assert bundle.val.class_counts == [VAL_PER_CLASS] * 4
    assert bundle.train.images.dtype == torch.uint8
    assert tuple(bundle.train.images.shape[1:]) == (3, 16, 16)
    assert bundle.num_classes == 4 and bundle.train.classes == ["0", "1", "2", "3"]
    # list order is kept, and each row is its file decoded the image_folder way
    pairs = tree["splits"]["train"]
    assert bundle.train.labels.tolist() == [label for _, label in pairs]
    for row in (0, 7, len(pairs) - 1):
        expected = decode_image(str(tree["root"] / pairs[row][0]), 16)
        assert np.array_equal(bundle.train.images[row].numpy(), expected)
    meta = bundle.meta
    assert meta["dataset"] == "txt_list" and meta["source"] == "txt_list"
    assert meta["imbalance_type"] is None and meta["num_classes"] == 4
    assert meta["train_list"] == str(tree["lists"]["train"])
    assert meta["val_list"] == str(tree["lists"]["val"])
    assert len(meta["kept_index_hash"]) == 40
    assert all(0 < s < 1 for s in bundle.train.std)


def test_txt_list_options_shared_with_image_folder(tree):
    capped = DATASETS.build(txt_cfg(tree, max_per_class=2, test_max_per_class=1))
    assert capped.train.class_counts == [2, 2, 2, 2] and capped.test.class_counts == [1] * 4
    profiled = DATASETS.build(txt_cfg(tree, imbalance_type="exp", imbalance_ratio=2))
    assert profiled.train.class_counts == [2, 1, 1, 1]  # n_max = smallest training class
    held_out = DATASETS.build(txt_cfg(tree, val_per_class=1))
    assert held_out.val.class_counts == [1] * 4
    assert sum(held_out.train.class_counts) == sum(TRAIN_COUNTS) - 4
    fixed = DATASETS.build(txt_cfg(tree, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]))
    assert fixed.train.mean == (0.5, 0.5, 0.5)


def test_inaturalist_builds_the_bundle_from_the_registry(tree):
    bundle = DATASETS.build(inat_cfg(tree, num_classes=4))
    assert bundle.train.class_counts == list(TRAIN_COUNTS)
    assert bundle.test.class_counts == [TEST_PER_CLASS] * 4
    assert bundle.train.classes == ["species_0", "species_1", "species_2", "species_3"]
    assert bundle.train.labels.tolist() == [label for _, label in tree["splits"]["train"]]
    assert bundle.meta["source"] == "json" and bundle.meta["category_ids"] == [0, 1, 2, 3]
    again = DATASETS.build(inat_cfg(tree, num_classes=4))  # second build: from the decode cache
    assert torch.equal(again.train.images, bundle.train.images) and again.meta == bundle.meta


@pytest.mark.parametrize("make", [txt_cfg, inat_cfg], ids=["txt_list", "inaturalist"])
def test_the_data_set_contract_of_tests_test_data(tree, make):
    """What tests/test_data.py's contract cases check of every registered data set."""
    cfg = make(tree, imbalance_type="exp", imbalance_ratio=2)
    bundle = DATASETS.build(cfg)
    n_max, classes = min(TRAIN_COUNTS), len(TRAIN_COUNTS)
    assert bundle.train.class_counts == [int(n_max * 0.5 ** (i / (classes - 1)))
                                         for i in range(classes)]
    assert bundle.test.class_counts == [TEST_PER_CLASS] * classes
    assert bundle.meta["imbalance_type"] == "exp" and bundle.meta["selection"] == "protocol"
    x = bundle.train.images[:4]
    for transform in (bundle.train_transform, bundle.eval_transform):
        y = transform(x)
        assert y.dtype == torch.float32 and y.shape == x.shape
        assert y.is_contiguous(memory_format=torch.channels_last)
    again = DATASETS.build(cfg)
    assert torch.equal(again.train.images, bundle.train.images) and again.meta == bundle.meta
    other = DATASETS.build({**cfg, "selection_seed": 1})
    assert other.meta["kept_index_hash"] != bundle.meta["kept_index_hash"]
    assert other.train.class_counts == bundle.train.class_counts
    for param, value in (("imbalance_ratio", 0.5), ("imbalance_ratio", "10"),
                         ("imbalance_type", "linear"), ("selection", "random"),
                         ("selection_seed", -1), ("crop_padding", -1), ("hflip", "yes"),
                         ("bogus", 1)):
        message = raises(ConfigError,
                         lambda param=param, value=value: DATASETS.build({**cfg, param: value}),
                         param)
        assert message.startswith("data")


# ------------------------------------------------------------------------ text-list errors
def damaged_list(tree, line: int, text: str) -> Path:
    """The training list with line ``line`` (1-based) replaced by ``text``."""
    lines = tree["lists"]["train"].read_text().splitlines()
    lines[line - 1] = text
    path = tree["tmp"] / "damaged.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("text, message", [
    ("train/c0/nowhere.jpg 0", "no image "),
    ("train/c0/train_0.jpg", "expected '<relative/path> <label>'"),
    ("train/c0/train_0.jpg 0 1", "expected '<relative/path> <label>'"),
    ("train/c0/train_3.jpg -1", "label -1 is negative"),
    ("train/c0/train_3.jpg 2.0", "label '2.0' is not an integer"),
    ("train/c0/train_3.jpg cat", "label 'cat' is not an integer"),
    ("train/c0/train_0.jpg 0", "train/c0/train_0.jpg is listed twice (first on line 1)"),
    ("./train/c0/train_1.jpg 0", "train/c0/train_1.jpg is listed twice (first on line 2)"),
    ("train/c1/train_0.jpg 9", "label 9 is out of range 0..3 (4 classes)"),
])
def test_txt_list_errors_name_file_and_line(tree, text, message):
    path = damaged_list(tree, 4, text)
    raises(DataError, lambda: read_txt_list(path, tree["root"], num_classes=4),
           f"{path}:4: ", message)


def test_txt_list_missing_image_names_the_full_path(tree):
    path = damaged_list(tree, 3, "train/c0/gone.jpg 0")
    raises(DataError, lambda: read_txt_list(path, tree["root"]),
           f"{path}:3: no image {tree['root'] / 'train/c0/gone.jpg'}")


def test_txt_list_line_numbers_count_skipped_blank_lines(tree):
    pairs = tree["splits"]["train"]
    path = tree["tmp"] / "blank.txt"
    path.write_text(f"\n{pairs[0][0]} 0\n\n\n{pairs[1][0]} x\n")
    raises(DataError, lambda: read_txt_list(path, tree["root"]), f"{path}:5: label 'x'")


def test_txt_list_non_utf8_and_empty_and_missing_files(tree):
    path = tree["tmp"] / "latin.txt"
    path.write_bytes(f"{tree['splits']['train'][0][0]} 0\n".encode() + b"caf\xe9.jpg 1\n")
    raises(DataError, lambda: read_txt_list(path, tree["root"]), f"{path}:2: not UTF-8 text")
    empty = tree["tmp"] / "empty.txt"
    empty.write_text("\n  \n")
    raises(DataError, lambda: read_txt_list(empty, tree["root"]), f"{empty} lists no image")
    raises(DataError, lambda: read_txt_list(tree["tmp"] / "nope.txt", tree["root"]),
           f"split file {tree['tmp'] / 'nope.txt'} does not exist")


def test_txt_list_dataset_errors(tree):
    lists = tree["lists"]
    # the recipe's num_classes differs from the classes the list has
    raises(DataError, lambda: DATASETS.build(txt_cfg(tree, num_classes=5)),
           f"{lists['train']}: no image of class(es) 4: it has 4 classes, num_classes is 5")
    raises(DataError, lambda: DATASETS.build(txt_cfg(tree, num_classes=3)),
           f"{lists['train']}:", "label 3 is out of range 0..2 (3 classes)")
    # a test label beyond the training list's classes names the test file and line
    test_pairs = tree["splits"]["test"] + [(tree["splits"]["val"][0][0], 4)]
    bad_test = write_list(tree["tmp"] / "bad_test.txt", test_pairs)
    raises(DataError, lambda: DATASETS.build(txt_cfg(tree, test_list=str(bad_test))),
           f"{bad_test}:{len(test_pairs)}: label 4 is out of range 0..3 (4 classes)")
    # a class missing in the middle of the training labels
    gap = write_list(tree["tmp"] / "gap.txt", [p for p in tree["splits"]["train"] if p[1] != 1])
    raises(DataError, lambda: DATASETS.build(txt_cfg(tree, train_list=str(gap))),
           f"{gap}: no image of class(es) 1: it has 3 classes, the highest label is 3")
    # a test image that is also a training image
    leak = write_list(tree["tmp"] / "leak.txt",
                      tree["splits"]["test"] + [tree["splits"]["train"][2]])
    raises(DataError, lambda: DATASETS.build(txt_cfg(tree, test_list=str(leak))),
           f"{leak}:{len(tree['splits']['test']) + 1}: {tree['splits']['train'][2][0]} is also "
           f"in {lists['train']}:3")


@pytest.mark.parametrize("extra, key", [
    ({"train_list": None}, "data.train_list: is required"),
    ({"test_list": 5}, "data.test_list: must be a file path"),
    ({"root": None}, "data.root: is required"),
    ({"num_classes": 0}, "num_classes"),
    ({"num_classes": "4"}, "num_classes"),
    ({"image_size": 0}, "image_size"),
    ({"val_per_class": 1, "val_list": "x.txt"}, "not both"),
    ({"mean": [0.5, 0.5, 0.5]}, "give both mean and std"),
    ({"imbalance_ratio": 0.5}, "imbalance_ratio"),
])
def test_txt_list_bad_recipe_values_are_config_errors(tree, extra, key):
    message = raises(ConfigError, lambda: DATASETS.build({**txt_cfg(tree), **extra}), key)
    assert message.startswith("data")


def test_a_broken_list_is_one_line_from_lttrain(tree, capsys):
    path = damaged_list(tree, 2, "train/c0/train_1.jpg zero")
    recipe = tree["tmp"] / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": txt_cfg(tree, train_list=str(path)),
                                      "model": {"name": "resnet32"},
                                      "train": {"epochs": 1, "batch_size": 8}}))
    code = main([str(recipe), "--out", str(tree["tmp"] / "run")])
    captured = capsys.readouterr()
    lines = [line for line in (captured.err + captured.out).splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and f"{path}:2: label 'zero'" in lines[0], lines
    assert not (tree["tmp"] / "run").exists()


# ------------------------------------------------------------------------------- JSON errors
def json_error(tree, data, *texts, category_ids=None):
    path = write_json(tree["tmp"] / "broken.json", data)
    return raises(DataError, lambda: read_inaturalist_json(path, tree["root"], category_ids),
                  str(path), *texts)


def test_json_annotation_without_image(tree):
    data = inat_json(tree["splits"]["train"])
    data["annotations"][3]["image_id"] = 424242
    json_error(tree, data, "annotations[3] (image_id 424242): no image has id 424242")


def test_json_image_without_annotation(tree):
    data = inat_json(tree["splits"]["train"])
    lost = data["annotations"].pop(2)["image_id"]
    index = [i["id"] for i in data["images"]].index(lost)
    json_error(tree, data, f"images[{index}] (id {lost}): no annotation for "
                           f"{data['images'][index]['file_name']}")


def test_json_image_with_two_annotations(tree):
    data = inat_json(tree["splits"]["train"])
    first = data["annotations"][0]
    data["annotations"].append({"id": 99, "image_id": first["image_id"], "category_id": 1})
    index = [i["id"] for i in data["images"]].index(first["image_id"])
    k = len(data["annotations"]) - 1
    json_error(tree, data, f"annotations[{k}] (image_id {first['image_id']}): images[{index}] "
                           f"already has an annotation (annotations[0])")


@pytest.mark.parametrize("value, message", [
    (7, "category_id 7 is not one of the 4 categories"),
    (-2, "category_id -2 is negative"),
    ("2", "category_id '2' is not an integer"),
    (1.5, "category_id 1.5 is not an integer"),
    (None, "category_id None is not an integer"),
])
def test_json_bad_category_ids(tree, value, message):
    data = inat_json(tree["splits"]["train"])
    data["annotations"][4]["category_id"] = value
    json_error(tree, data, f"annotations[4] (image_id {data['annotations'][4]['image_id']}): "
                           f"{message}")


def test_json_missing_file_duplicates_and_bad_entries(tree):
    pairs = tree["splits"]["train"]
    data = inat_json(pairs)
    data["images"][5]["file_name"] = "train_val2018/Plantae/0/gone.jpg"
    json_error(tree, data, f"images[5] (id {data['images'][5]['id']}): no image "
                           f"{tree['root'] / 'train_val2018/Plantae/0/gone.jpg'}")
    data = inat_json(pairs)
    data["images"][6]["file_name"] = data["images"][1]["file_name"]
    json_error(tree, data, f"images[6] (id {data['images'][6]['id']}): {pairs[1][0]} is listed "
                           f"twice (also images[1])")
    data = inat_json(pairs)
    data["images"][6]["id"] = data["images"][2]["id"]
    json_error(tree, data, f"images[6] (id {data['images'][2]['id']}): image id "
                           f"{data['images'][2]['id']} is also images[2]")
    data = inat_json(pairs)
    data["images"][3]["id"] = "1021"
    json_error(tree, data, "images[3]: 'id' must be an integer, got '1021'")
    data = inat_json(pairs)
    del data["annotations"]
    json_error(tree, data, "'annotations' must be a list, got nothing")


def test_json_syntax_error_names_line_and_column(tree):
    path = tree["tmp"] / "cut.json"
    path.write_text('{"images": [\n  {"id": 1, "file_name": "a.jpg"},\n  {"id": 2,, }\n]}')
    raises(DataError, lambda: read_inaturalist_json(path, tree["root"]),
           f"{path}:3:12: not valid JSON")


def test_json_validation_file_must_use_the_training_categories(tree):
    train = read_inaturalist_json(
        write_json(tree["tmp"] / "train.json", inat_json(tree["splits"]["train"])), tree["root"])
    val = inat_json(tree["splits"]["test"], categories=(0, 1, 2, 5), first_id=1)
    json_error(tree, val, "its categories differ from the training file's: 1 only here [5], "
                          "1 missing [3]", category_ids=train.category_ids)
    val = inat_json(tree["splits"]["test"], first_id=1)
    del val["categories"]  # optional in a second file; its ids are checked against training's
    val["annotations"][0]["category_id"] = 5
    json_error(tree, val, "category_id 5 is not one of the 4 categories of the training file",
               category_ids=train.category_ids)


def test_inaturalist_class_count_and_leaks(tree):
    raises(DataError, lambda: DATASETS.build(inat_cfg(tree, num_classes=8142)),
           "train2018.json: lists 4 categories, num_classes is 8142")
    cfg = inat_cfg(tree)
    leak = inat_json(tree["splits"]["test"] + [tree["splits"]["train"][0]], first_id=1)
    write_json(Path(cfg["val_json"]), leak)
    n = len(tree["splits"]["test"])
    raises(DataError, lambda: DATASETS.build(cfg),
           f"{cfg['val_json']}: images[{n}] (id {1 + 7 * n}): {tree['splits']['train'][0][0]} "
           f"is also in {cfg['train_json']}: images[0] (id 1000)")


# ------------------------------------------------------------------------------ 1-epoch run
def test_one_epoch_of_resnet32_on_a_txt_list(tree):
    recipe = resolve({"data": txt_cfg(tree, image_size=32),
                      "model": {"name": "resnet32"},
                      "optim": {"lr": 0.05},
                      "train": {"epochs": 1, "batch_size": 8, "device": "cpu"},
                      "eval": {"many_threshold": 5, "few_threshold": 2}})
    results = train(recipe, tree["tmp"] / "run", quiet=True)
    saved = json.loads((tree["tmp"] / "run" / "results.json").read_text())
    assert saved["top1"] == results["top1"] and 0 <= saved["top1"] <= 100
    assert saved["train_class_counts"] == list(TRAIN_COUNTS)
    assert sum(map(sum, saved["confusion_matrix"])) == TEST_PER_CLASS * 4
    assert len(saved["history"]) == 1
