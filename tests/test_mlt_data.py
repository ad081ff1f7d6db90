"""VOC-MLT and COCO-MLT readers (lttoolbox.data.mlt) against fixtures in the official formats.

The fixtures are written here the way the DB-loss repository wrote its split files (commit
14460d0): ``class_freq.pkl`` a protocol-2 pickle of a dict ``gt_labels`` (list of int64 (C,)
arrays), ``class_freq`` / ``neg_class_freq`` (int64 (C,)), ``condition_prob`` (float64 (C, C));
``class_split.pkl`` a dict ``head`` / ``middle`` / ``tail`` of sets of ``numpy.int64``; VOC's
``img_id.txt`` and COCO's ``img_id.pkl`` plain text, one id and LF per line; the images tiny JPEGs
in the VOCdevkit and COCO folder layouts; VOC2007 test XMLs and a COCO instances JSON.
Expected values are the fixture's own numbers, never the reader's.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lttoolbox.data import mlt
from lttoolbox.errors import ConfigError, DataError

# The 80 COCO category ids (1..90 with the ten unused ones left out), as instances_val2017.json.
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def jpeg(path: Path, seed: int, size=(12, 9)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def freq_pickle(path: Path, rows: np.ndarray) -> None:
    """class_freq.pkl as mllt/datasets/custom.py:_save_info writes it (keys in its order)."""
    rows = np.asarray(rows, dtype=np.int64)
    cond = np.stack([rows[rows[:, i] == 1].mean(0) if rows[:, i].any() else np.zeros(rows.shape[1])
                     for i in range(rows.shape[1])]).astype(np.float64)
    data = {"gt_labels": [r.copy() for r in rows], "class_freq": rows.sum(0),
            "neg_class_freq": len(rows) - rows.sum(0), "condition_prob": cond}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data, protocol=2))


def split_pickle(path: Path, head, middle, tail) -> None:
    data = {"head": {np.int64(c) for c in head}, "middle": {np.int64(c) for c in middle},
            "tail": {np.int64(c) for c in tail}}
    path.write_bytes(pickle.dumps(data, protocol=2))


def id_file(path: Path, ids) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(f"{i}\n" for i in ids).encode("ascii"))


# ------------------------------------------------------------------------------------- VOC

VOC_TRAIN = ["2008_000023", "2011_003276", "2009_000012", "2010_001000"]
VOC_ROWS = np.zeros((4, 20), dtype=np.int64)
VOC_ROWS[0, [14, 8]] = 1
VOC_ROWS[1, [14]] = 1
VOC_ROWS[2, [0, 14, 19]] = 1
VOC_ROWS[3, [9]] = 1
VOC_HEAD, VOC_MIDDLE = [4, 6, 8, 10, 14, 15], [1, 7, 11, 13, 17, 19]
VOC_TAIL = [0, 2, 3, 5, 9, 12, 16, 18]
VOC_TEST = {"000001": [("dog", 0), ("person", 0)], "000004": [("car", 1)],  # difficult counts
            "000006": [("chair", 0), ("chair", 0), ("pottedplant", 0)]}


def voc_xml(path: Path, objects) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>"
                   for n, d in objects)
    path.write_text(f"<annotation><size><width>12</width><height>9</height></size>{body}"
                    f"</annotation>")


def make_voc(root: Path) -> Path:
    split = root / "appendix" / "VOCdevkit" / "longtail2012"
    id_file(split / "img_id.txt", VOC_TRAIN)
    freq_pickle(split / "class_freq.pkl", VOC_ROWS)
    split_pickle(split / "class_split.pkl", VOC_HEAD, VOC_MIDDLE, VOC_TAIL)
    devkit = root / "VOCdevkit"
    for k, i in enumerate(VOC_TRAIN):
        jpeg(devkit / "VOC2012" / "JPEGImages" / f"{i}.jpg", k)
    id_file(devkit / "VOC2007" / "ImageSets" / "Main" / "test.txt", list(VOC_TEST))
    for k, (i, objects) in enumerate(VOC_TEST.items()):
        voc_xml(devkit / "VOC2007" / "Annotations" / f"{i}.xml", objects)
        jpeg(devkit / "VOC2007" / "JPEGImages" / f"{i}.jpg", 100 + k)
    return split


@pytest.fixture
def voc(tmp_path) -> Path:
    make_voc(tmp_path)
    return tmp_path


def test_voc_reads_back_the_official_formats(voc):
    data = mlt.read_voc_mlt(voc)
    assert data.name == "voc_mlt" and data.num_classes == 20 and data.classes[14] == "person"
    assert data.train.image_ids == VOC_TRAIN
    assert data.train.files == [f"VOC2012/JPEGImages/{i}.jpg" for i in VOC_TRAIN]
    assert all(Path(p).is_file() for p in data.train.paths + data.test.paths)
    assert data.train.labels.dtype == np.float32 and data.train.labels.shape == (4, 20)
    np.testing.assert_array_equal(data.train.labels, VOC_ROWS)
    assert data.class_freq.dtype == np.int64
    assert data.class_freq.tolist() == VOC_ROWS.sum(0).tolist()
    assert {k: v.tolist() for k, v in data.groups.items()} == {
        "head": VOC_HEAD, "medium": VOC_MIDDLE, "tail": VOC_TAIL}
    # test labels from the XMLs: every object, difficult included, a repeated class once
    expected = np.zeros((3, 20), dtype=np.float32)
    expected[0, [11, 14]] = 1
    expected[1, 6] = 1
    expected[2, [8, 15]] = 1
    assert data.test.image_ids == list(VOC_TEST)
    assert data.test.files[0] == "VOC2007/JPEGImages/000001.jpg"
    np.testing.assert_array_equal(data.test.labels, expected)


def test_voc_appendix_elsewhere(tmp_path):
    make_voc(tmp_path / "data")
    os.rename(tmp_path / "data" / "appendix", tmp_path / "repo_appendix")
    with pytest.raises(DataError, match="img_id.txt does not exist"):
        mlt.read_voc_mlt(tmp_path / "data")
    data = mlt.read_voc_mlt(tmp_path / "data", appendix=tmp_path / "repo_appendix")
    assert data.train.image_ids == VOC_TRAIN


# ------------------------------------------------------------------------------------ COCO

COCO_TRAIN = [554625, 118113, 149]
COCO_ROWS = np.zeros((3, 80), dtype=np.int64)
COCO_ROWS[0, [0, 2]] = 1
COCO_ROWS[1, [0, 79]] = 1
COCO_ROWS[2, [45]] = 1


def coco_json(path: Path) -> dict:
    """val2017-style instances: categories out of order, an image without annotation, and one
    annotation of each kind the official parser skips or keeps."""
    categories = [{"id": c, "name": f"cat{c}"} for c in reversed(COCO_IDS)]
    images = [{"id": 397133, "file_name": "000000397133.jpg", "width": 12, "height": 9},
              {"id": 37777, "file_name": "000000037777.jpg", "width": 12, "height": 9},
              {"id": 252219, "file_name": "000000252219.jpg", "width": 12, "height": 9}]

    def ann(k, image, cat, bbox=(0, 0, 5, 5), area=25.0, **extra):
        return {"id": k, "image_id": image, "category_id": cat, "bbox": list(bbox),
                "area": area, "iscrowd": 0, **extra}

    annotations = [
        ann(1, 397133, 1),                          # person -> class 0
        ann(2, 397133, 90),                         # toothbrush -> class 79
        ann(3, 397133, 18, iscrowd=1),              # dog (class 16), crowd: kept
        ann(4, 37777, 3, area=0.0),                 # area <= 0: skipped
        ann(5, 37777, 44, bbox=(0, 0, 0.5, 4)),     # w < 1: skipped
        ann(6, 37777, 62, bbox=(0, 0, 4, 0.9)),     # h < 1: skipped
        ann(7, 37777, 64, ignore=True),             # ignore: skipped
        ann(8, 37777, 51),                          # bowl (id 51) -> class 45
    ]                                               # 252219: no annotation, zero row
    data = {"images": images, "annotations": annotations, "categories": categories}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return data


def make_coco(root: Path) -> Path:
    split = root / "appendix" / "coco" / "longtail2017"
    id_file(split / "img_id.pkl", COCO_TRAIN)
    freq_pickle(split / "class_freq.pkl", COCO_ROWS)
    split_pickle(split / "class_split.pkl", range(0, 20), range(20, 50), range(50, 80))
    for k, i in enumerate(COCO_TRAIN):
        jpeg(root / "coco" / "train2017" / f"{i:012d}.jpg", k)
    data = coco_json(root / "coco" / "annotations" / "instances_val2017.json")
    for k, image in enumerate(data["images"]):
        jpeg(root / "coco" / "val2017" / image["file_name"], 200 + k)
    return split


@pytest.fixture
def coco(tmp_path) -> Path:
    make_coco(tmp_path)
    return tmp_path


def test_coco_reads_back_the_official_formats(coco):
    data = mlt.read_coco_mlt(coco)
    assert data.name == "coco_mlt" and data.num_classes == 80
    assert data.classes[0] == "person" and data.classes[79] == "toothbrush"
    assert data.train.image_ids == [str(i) for i in COCO_TRAIN]
    assert data.train.files == ["train2017/000000554625.jpg", "train2017/000000118113.jpg",
                                "train2017/000000000149.jpg"]
    np.testing.assert_array_equal(data.train.labels, COCO_ROWS)
    assert data.train.labels.dtype == np.float32
    assert data.class_freq.tolist() == COCO_ROWS.sum(0).tolist()
    assert data.groups["medium"].tolist() == list(range(20, 50))
    expected = np.zeros((3, 80), dtype=np.float32)
    expected[0, [0, 79, 16]] = 1
    expected[1, 45] = 1
    assert data.test.image_ids == ["397133", "37777", "252219"]
    assert data.test.files[1] == "val2017/000000037777.jpg"
    np.testing.assert_array_equal(data.test.labels, expected)
    # the category -> class map is the sorted ids, whatever the JSON's order
    assert COCO_IDS.index(18) == 16 and COCO_IDS.index(51) == 45


# ---------------------------------------------------------------------------------- images

def test_load_images_decodes_caches_and_streams(voc, tmp_path):
    split = mlt.read_voc_mlt(voc).train
    cache = tmp_path / "cache"
    images, how = mlt.load_images(split, image_size=7, cache_dir=cache, path="memory")
    assert how == "memory" and images.shape == (4, 3, 7, 7) and images.dtype == np.uint8
    with Image.open(split.paths[2]) as img:
        expected = np.asarray(img.convert("RGB").resize((7, 7), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(images[2], expected.transpose(2, 0, 1))
    assert len(list(cache.glob("*.npy"))) == 1
    again, _ = mlt.load_images(split, image_size=7, cache_dir=cache, path="memory")
    np.testing.assert_array_equal(again, images)
    paths, how = mlt.load_images(split, image_size=224, path="stream")
    assert how == "stream" and list(paths) == [str(voc / "VOCdevkit" / f) for f in split.files]


def test_load_images_names_a_broken_file(voc, tmp_path):
    split = mlt.read_voc_mlt(voc).train
    Path(split.paths[1]).write_bytes(b"not a jpeg")
    for path in ("memory", "stream"):
        with pytest.raises(DataError, match=f"cannot read image {split.paths[1]}"):
            mlt.load_images(split, image_size=7, cache_dir=tmp_path / "c", path=path)


# ---------------------------------------------------------------------------------- faults

def _edit_pickle(path: Path, change) -> None:
    data = pickle.loads(path.read_bytes())
    change(data)
    path.write_bytes(pickle.dumps(data, protocol=2))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _rows(change):
    def edit(data):
        change(data["gt_labels"])
    return edit


VOC_SPLIT = "appendix/VOCdevkit/longtail2012/"
COCO_SPLIT = "appendix/coco/longtail2017/"

# (data set, file to break, how, what the one-line message says besides the file name)
FAULTS = {
    "missing id list": ("voc", VOC_SPLIT + "img_id.txt", "delete", "does not exist"),
    "README's img_id.pkl name": ("voc", VOC_SPLIT + "img_id.txt", "rename:img_id.pkl",
                                 "the VOC id list is img_id.txt"),
    "malformed id": ("voc", VOC_SPLIT + "img_id.txt", b"2008_000023\n2008-28\n", "2008-28"),
    "empty line": ("voc", VOC_SPLIT + "img_id.txt", b"2008_000023\n\n2011_003276\n",
                   "img_id.txt:2"),
    "id twice": ("voc", VOC_SPLIT + "img_id.txt", b"2008_000023\n2008_000023\n",
                 "listed twice"),
    "coco id list is a pickle": ("coco", COCO_SPLIT + "img_id.pkl",
                                 pickle.dumps(COCO_TRAIN, protocol=2), "a pickle"),
    "missing class_freq": ("voc", VOC_SPLIT + "class_freq.pkl", "delete", "does not exist"),
    "class_freq not a pickle": ("coco", COCO_SPLIT + "class_freq.pkl", b"\x80\x02garbage",
                                "not a readable pickle"),
    "class_freq runs code": ("voc", VOC_SPLIT + "class_freq.pkl",
                             pickle.dumps({"gt_labels": Evil()}, protocol=2), "posix.system"),
    "wrong keys": ("voc", VOC_SPLIT + "class_freq.pkl",
                   lambda d: d.update(labels=d.pop("gt_labels")), "missing key(s) 'gt_labels'"),
    "not a dict": ("coco", COCO_SPLIT + "class_freq.pkl", pickle.dumps([1, 2], protocol=2),
                   "expected a dict"),
    "rows disagree with ids": ("voc", VOC_SPLIT + "class_freq.pkl",
                               _rows(lambda rows: rows.pop()), "has 3 rows but"),
    "row shape": ("coco", COCO_SPLIT + "class_freq.pkl",
                  _rows(lambda rows: rows.__setitem__(1, rows[1][:20])), "gt_labels[1] has shape"),
    "row not 0/1": ("voc", VOC_SPLIT + "class_freq.pkl",
                    _rows(lambda rows: rows[0].__setitem__(3, 2)), "only 0 and 1"),
    "row without label": ("voc", VOC_SPLIT + "class_freq.pkl",
                          _rows(lambda rows: rows[3].__setitem__(9, 0)), "has no label"),
    "class_freq disagrees": ("voc", VOC_SPLIT + "class_freq.pkl",
                             lambda d: d["class_freq"].__setitem__(14, 2),
                             "class_freq[14] is 2 but 3 rows"),
    "neg_class_freq disagrees": ("coco", COCO_SPLIT + "class_freq.pkl",
                                 lambda d: d["neg_class_freq"].__setitem__(0, 0),
                                 "neg_class_freq[0] is 0"),
    "class_freq shape": ("coco", COCO_SPLIT + "class_freq.pkl",
                         lambda d: d.update(class_freq=d["class_freq"][:20]),
                         "'class_freq' must be an integer array of shape (80,)"),
    "class_split 'medium' key": ("voc", VOC_SPLIT + "class_split.pkl",
                                 lambda d: d.update(medium=d.pop("middle")),
                                 "keys 'head', 'middle', 'tail'"),
    "class in two groups": ("voc", VOC_SPLIT + "class_split.pkl",
                            lambda d: d["tail"].add(np.int64(4)), "class 4 is in both"),
    "class in no group": ("coco", COCO_SPLIT + "class_split.pkl",
                          lambda d: d["tail"].remove(np.int64(79)), "[79] are in no group"),
    "class out of range": ("voc", VOC_SPLIT + "class_split.pkl",
                           lambda d: d["head"].add(np.int64(20)), "holds 20"),
    "training image absent": ("voc", "VOCdevkit/VOC2012/JPEGImages/2009_000012.jpg", "delete",
                              "img_id.txt:3 (image 2009_000012): no image"),
    "coco training image absent": ("coco", "coco/train2017/000000000149.jpg", "delete",
                                   "img_id.pkl:3 (image 149): no image"),
    "missing test list": ("voc", "VOCdevkit/VOC2007/ImageSets/Main/test.txt", "delete",
                          "test list"),
    "missing test annotation": ("voc", "VOCdevkit/VOC2007/Annotations/000004.xml", "delete",
                                "test.txt:2 (image 000004): no annotation"),
    "unknown VOC class": ("voc", "VOCdevkit/VOC2007/Annotations/000006.xml",
                          b"<annotation><object><name>Chair</name></object></annotation>",
                          "class 'Chair'"),
    "bad XML": ("voc", "VOCdevkit/VOC2007/Annotations/000006.xml", b"<annotation>",
                "not valid XML"),
    "test image absent": ("voc", "VOCdevkit/VOC2007/JPEGImages/000006.jpg", "delete",
                          "test.txt:3 (image 000006): no image"),
    "missing val json": ("coco", "coco/annotations/instances_val2017.json", "delete",
                         "annotation file"),
    "val json not JSON": ("coco", "coco/annotations/instances_val2017.json", b"{\"images\": [",
                          "not valid JSON"),
    "val json categories": ("coco", "coco/annotations/instances_val2017.json",
                            lambda d: d["categories"].pop(), "79 distinct categories"),
    "val annotation of no image": ("coco", "coco/annotations/instances_val2017.json",
                                   lambda d: d["annotations"][2].update(image_id=5),
                                   "annotations[2]: its image_id 5"),
    "val annotation of no category": ("coco", "coco/annotations/instances_val2017.json",
                                      lambda d: d["annotations"][0].update(category_id=12),
                                      "category_id 12"),
    "val image absent": ("coco", "coco/val2017/000000252219.jpg", "delete",
                         "images[2] (id 252219): no image"),
}


@pytest.mark.parametrize("case", list(FAULTS))
def test_fault_is_one_line_naming_the_file(case, tmp_path):
    dataset, relative, how, says = FAULTS[case]
    (make_voc if dataset == "voc" else make_coco)(tmp_path)
    target = tmp_path / relative
    if how == "delete":
        target.unlink()
    elif isinstance(how, str) and how.startswith("rename:"):
        target.rename(target.with_name(how.split(":", 1)[1]))
    elif isinstance(how, bytes):
        target.write_bytes(how)
    elif target.suffix == ".json":
        data = json.loads(target.read_text())
        how(data)
        target.write_text(json.dumps(data))
    else:
        _edit_pickle(target, how)
    reader = mlt.read_voc_mlt if dataset == "voc" else mlt.read_coco_mlt
    with pytest.raises(DataError) as caught:
        reader(tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert says in message
    named = target.with_name("img_id.txt") if how == "rename:img_id.pkl" else target
    if relative.endswith(".jpg") or relative.endswith(".xml"):
        named = target.name  # named through the list line that lists it, and its path
    assert str(named) in message


def test_every_fixture_file_is_read(voc, coco):
    """Each fault above breaks a file the clean fixture reads without complaint, so a message
    comes from the fault, not from a fixture the reader never accepted."""
    assert mlt.read_voc_mlt(voc).train.labels.sum() == VOC_ROWS.sum()
    assert mlt.read_coco_mlt(coco).test.labels.sum() == 4


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        mlt.read_coco_mlt(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="root is required"):
        mlt.read_voc_mlt(None)


def test_pickles_written_by_numpy_1_load(voc):
    """The official pickles were written under numpy 1, whose arrays and scalars name
    ``numpy.core.multiarray`` (numpy 2 writes ``numpy._core``): both are read."""
    split = voc / VOC_SPLIT
    for name in ("class_freq.pkl", "class_split.pkl"):
        data = (split / name).read_bytes()
        assert b"numpy._core.multiarray\n" in data
        (split / name).write_bytes(data.replace(b"numpy._core.multiarray\n",
                                                b"numpy.core.multiarray\n"))
    data = mlt.read_voc_mlt(voc)
    np.testing.assert_array_equal(data.train.labels, VOC_ROWS)
    assert data.groups["head"].tolist() == VOC_HEAD
