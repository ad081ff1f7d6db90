"""VOC-MLT and COCO-MLT: the multi-label long-tailed sets of the distribution-balanced loss.

Wu et al., "Distribution-Balanced Loss for Multi-Label Classification in Long-Tailed Datasets",
ECCV 2020; official code wutong16/DistributionBalancedLoss at commit
``14460d0acda6a3e77a8a6a5999b9746243cb1535`` (file:line references below are at that commit).
The training sets are subsets of VOC2012 trainval (1,142 images, 20 classes) and COCO train2017
(1,909 images, 80 classes) chosen by ``tools/create_longtail_dataset.py``; the test sets are the
whole VOC2007 test and COCO val2017, as in the repository's configs
(``configs/voc/LT_resnet50_pfc_DB.py:66-83``, ``configs/coco/LT_resnet50_pfc_DB.py:67-85``).

Layout of ``root`` (the official ``appendix/`` folder next to the images, as the configs read
them; ``appendix=`` points elsewhere)::

    <root>/appendix/VOCdevkit/longtail2012/img_id.txt        one VOC id per line (2008_000023)
    <root>/appendix/VOCdevkit/longtail2012/class_freq.pkl
    <root>/appendix/VOCdevkit/longtail2012/class_split.pkl
    <root>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg              training images
    <root>/VOCdevkit/VOC2007/ImageSets/Main/test.txt          test ids
    <root>/VOCdevkit/VOC2007/Annotations/<id>.xml             test labels
    <root>/VOCdevkit/VOC2007/JPEGImages/<id>.jpg              test images

    <root>/appendix/coco/longtail2017/img_id.pkl              TEXT: one COCO image id per line
    <root>/appendix/coco/longtail2017/class_freq.pkl
    <root>/appendix/coco/longtail2017/class_split.pkl
    <root>/coco/train2017/<id as 12 digits>.jpg               training images
    <root>/coco/annotations/instances_val2017.json            test images and labels
    <root>/coco/val2017/<file_name>                           test images

The split files, byte by byte:

- VOC's id list is ``img_id.txt`` (the repository's README calls it ``img_id.pkl``; the file and
  ``configs/voc/LT_resnet50_pfc_DB.py:56`` say ``.txt``). COCO's ``img_id.pkl`` is plain text
  despite its name (written with ``"%s\\n"``, ``tools/create_longtail_dataset.py:312-318``).
- ``class_freq.pkl``: a pickle (protocol 2) of a dict ``gt_labels`` (a list, in id-list order, of
  int64 ``(C,)`` 0/1 arrays), ``class_freq`` (int64 ``(C,)``, the column sums),
  ``neg_class_freq`` (int64 ``(C,)``, ``N - class_freq``) and ``condition_prob`` (float64
  ``(C, C)``, unused here) (``mllt/datasets/custom.py:300-343``).
- ``class_split.pkl``: a pickle of a dict ``head`` / ``middle`` / ``tail``, each a ``set`` of
  ``numpy.int64`` class indices (``tools/create_longtail_dataset.py:172-174, 305-307``): head has
  100 or more training images, middle 20-99, tail fewer than 20. It is returned as ``head`` /
  ``medium`` / ``tail``.

Where this differs from the official readers, and why:

- Training labels are the ``gt_labels`` of ``class_freq.pkl`` (checked against its
  ``class_freq`` and ``neg_class_freq``), not a new parse of the VOC2012 XML or of
  ``instances_train2017.json``: they are the labels the loss statistics were computed from, and
  the 448 MB training JSON is not needed. The COCO training file name is the id as 12 digits, the
  name of every file of train2017.
- Test labels follow the official parsers: VOC sets a class for every ``<object>``, ``difficult``
  ones included (``mllt/datasets/xml_style.py:36-47``); COCO keeps every image of the JSON (those
  without annotations get an all-zero row) and skips annotations with ``ignore``, ``area <= 0``,
  ``w < 1`` or ``h < 1`` while keeping ``iscrowd`` ones (``mllt/datasets/coco.py:71-95``); a
  COCO class is the position of its category id among the sorted ids (``coco.py:33-37``).
- The official training reader drops images with a side below 32 pixels
  (``custom.py:65-73``); none of the listed images is that small (1,142 and 1,909 images in both
  the lists and ``class_freq.pkl``), so nothing is dropped here.
- Pickles are read with an unpickler that admits only the numpy array, dtype and scalar
  constructors and ``set`` (what the official files hold), so a split file cannot run code.

Every problem is one :class:`~lttoolbox.errors.DataError` that names the file (and line or
entry). Images are decoded and cached like every other image set
(:func:`~lttoolbox.data.folder_io.load_split`), or listed for streaming
(:func:`~lttoolbox.data.folder_io.file_paths`): see :func:`load_images`.

Example:
    >>> voc = read_voc_mlt("/data/mlt")                   # doctest: +SKIP
    >>> voc.train.labels.shape, voc.class_freq[14], sorted(voc.groups)  # doctest: +SKIP
    ((1142, 20), 775, ['head', 'medium', 'tail'])
"""
from __future__ import annotations

import io
import json
import pickle
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .folder_io import SplitListing, file_paths, load_split
from .path_choice import choose_path
from .split_files import _stat, _text_lines

# mllt/datasets/voc.py:7-11
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
# mllt/datasets/coco.py:11-24 (in the order of the sorted COCO category ids)
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic_light", "fire_hydrant", "stop_sign", "parking_meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports_ball", "kite",
    "baseball_bat", "baseball_glove", "skateboard", "surfboard", "tennis_racket", "bottle",
    "wine_glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot_dog", "pizza", "donut", "cake", "chair", "couch",
    "potted_plant", "bed", "dining_table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell_phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy_bear", "hair_drier", "toothbrush")

FREQ_KEYS = ("gt_labels", "class_freq", "neg_class_freq")
# The file's "middle" is the shared interface's "medium".
SPLIT_KEYS = {"head": "head", "middle": "medium", "tail": "tail"}

_VOC_ID = re.compile(r"[0-9]{4}_[0-9]{6}")
_COCO_ID = re.compile(r"[0-9]+")
_PICKLE_START = (b"\x80", b"(", b"}", b"]")  # protocol 2+ opcode, or protocol 0/1 first opcodes

# What the official pickles reference (numpy 1 wrote numpy.core, numpy 2 writes numpy._core;
# protocol 2 names the builtins module __builtin__).
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("__builtin__", "set"), ("builtins", "set"), ("__builtin__", "frozenset"),
    ("builtins", "frozenset"),
}


@dataclass
class MultiLabelSplit:
    """One split of a multi-label set, listed but not decoded.

    Attributes:
        root: The folder ``files`` are relative to.
        files: Image paths relative to ``root``, in the split file's order.
        image_ids: The ids as the split file gives them (VOC ``2008_000023``, COCO ``554625``).
        labels: Multi-hot float32 ``(N, C)``, 1.0 where the label is present.
        sizes: File sizes in bytes (part of the decode-cache key).
        mtimes: Modification times in ns (part of the decode-cache key).
        source: The file the list comes from (for messages and provenance).
    """

    root: Path
    files: list[str]
    image_ids: list[str]
    labels: np.ndarray
    sizes: list[int]
    mtimes: list[int]
    source: str

    @property
    def paths(self) -> list[str]:
        """Absolute image paths."""
        return [str(self.root / f) for f in self.files]


@dataclass
class MultiLabelData:
    """What :func:`read_voc_mlt` / :func:`read_coco_mlt` return.

    Attributes:
        name: ``voc_mlt`` or ``coco_mlt``.
        classes: Class names in label order.
        train: The long-tailed training split.
        test: The test split.
        class_freq: int64 ``(C,)``: training images with each label (n_i of the DB loss).
        groups: ``head`` / ``medium`` / ``tail``: sorted int64 class indices from
            ``class_split.pkl`` (its ``middle`` is ``medium``).
        files: The split files read (for provenance).
    """

    name: str
    classes: list[str]
    train: MultiLabelSplit
    test: MultiLabelSplit
    class_freq: np.ndarray
    groups: dict[str, np.ndarray]
    files: dict[str, str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ----------------------------------------------------------------------------- small readers

def _existing(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist" if not path.exists()
                        else f"{what} {path} is not a file")
    return path


class _SplitUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which the official "
                                         f"split files never hold")
        return super().find_class(module, name)


def load_split_pickle(path: str | Path):
    """Unpickle an official split pickle (``class_freq.pkl``, ``class_split.pkl``) admitting only
    numpy arrays, dtypes, scalars and sets.

    Raises:
        DataError: missing, unreadable or not such a pickle; names the file.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "class_split.pkl")
        >>> with open(path, "wb") as f:
        ...     pickle.dump({"head": {np.int64(1)}}, f, protocol=2)
        >>> load_split_pickle(path)
        {'head': {np.int64(1)}}
    """
    path = _existing(Path(path), "split file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        return _SplitUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as err:  # pickle raises many types for a damaged file
        raise DataError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from None


def read_id_list(path: str | Path, pattern: re.Pattern, example: str) -> list[tuple[int, str]]:
    """``(line, id)`` of an id list (one id per line, as ``mmcv.list_from_file`` reads it).

    Raises:
        DataError: a missing file, a pickle where text is expected, an empty or malformed line,
            an id listed twice, or no id; each names ``file:line``.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "img_id.pkl")
        >>> _ = open(path, "w").write("554625\\n118113\\n")
        >>> read_id_list(path, _COCO_ID, "554625")
        [(1, '554625'), (2, '118113')]
    """
    path = _existing(Path(path), "split file")
    with open(path, "rb") as handle:
        head = handle.read(1)
    if head.startswith(_PICKLE_START):
        raise DataError(f"{path}: a pickle, but the official id list is text, one id per line "
                        f"(e.g. {example}), whatever its extension")
    seen: dict[str, int] = {}
    out = []
    for number, text in _text_lines(path):
        value = text.strip()
        if not pattern.fullmatch(value):
            raise DataError(f"{path}:{number}: expected an image id like {example}, got "
                            f"{text!r}")
        if value in seen:
            raise DataError(f"{path}:{number}: id {value} is listed twice (first on line "
                            f"{seen[value]})")
        seen[value] = number
        out.append((number, value))
    if not out:
        raise DataError(f"{path} lists no image id")
    return out


def _as_vector(value, path: Path, key: str, num_classes: int, kind: str) -> np.ndarray:
    array = np.asarray(value) if isinstance(value, (np.ndarray, list, tuple)) else None
    if array is None or array.shape != (num_classes,) or array.dtype.kind not in kind:
        got = (f"shape {array.shape}, dtype {array.dtype}" if array is not None
               else type(value).__name__)
        raise DataError(f"{path}: '{key}' must be an integer array of shape ({num_classes},) "
                        f"({num_classes} classes), got {got}")
    return array


def read_class_freq(path: str | Path, num_classes: int, num_images: int,
                    id_source: str) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, class_freq)`` of a ``class_freq.pkl``: float32 ``(N, C)`` and int64 ``(C,)``.

    Raises:
        DataError: a missing file or key, a shape that is not ``(C,)`` per row or
            ``num_images`` rows (the id list ``id_source`` has that many), a label that is not
            0/1, an image without any label, or ``class_freq`` / ``neg_class_freq`` that
            disagree with the label rows; each names the file.
    """
    path = Path(path)
    data = load_split_pickle(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict with keys {', '.join(FREQ_KEYS)}, got "
                        f"{type(data).__name__}")
    missing = [k for k in FREQ_KEYS if k not in data]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(map(repr, missing))} (an official "
                        f"class_freq.pkl has {', '.join(FREQ_KEYS)}, condition_prob); it has "
                        f"{', '.join(map(repr, data)) or 'none'}")
    rows = data["gt_labels"]
    if not isinstance(rows, (list, tuple, np.ndarray)):
        raise DataError(f"{path}: 'gt_labels' must be a list of ({num_classes},) arrays, got "
                        f"{type(rows).__name__}")
    if len(rows) != num_images:
        raise DataError(f"{path}: 'gt_labels' has {len(rows)} rows but {id_source} lists "
                        f"{num_images} images")
    labels = np.zeros((num_images, num_classes), dtype=np.float32)
    for i, row in enumerate(rows):
        row = np.asarray(row)
        if row.shape != (num_classes,):
            raise DataError(f"{path}: gt_labels[{i}] has shape {row.shape}, expected "
                            f"({num_classes},) ({num_classes} classes)")
        if row.dtype.kind not in "biuf" or not np.isin(row, (0, 1)).all():
            raise DataError(f"{path}: gt_labels[{i}] must hold only 0 and 1, got {row.tolist()}")
        if not row.any():
            raise DataError(f"{path}: gt_labels[{i}] (line {i + 1} of {id_source}) has no "
                            f"label; every training image of the official lists has one")
        labels[i] = row
    class_freq = _as_vector(data["class_freq"], path, "class_freq", num_classes, "iu")
    negative = _as_vector(data["neg_class_freq"], path, "neg_class_freq", num_classes, "iu")
    counted = labels.sum(0).astype(np.int64)
    wrong = np.flatnonzero(counted != class_freq)
    if wrong.size:
        c = int(wrong[0])
        raise DataError(f"{path}: class_freq[{c}] is {int(class_freq[c])} but {int(counted[c])} "
                        f"rows of gt_labels have label {c} ({wrong.size} class(es) disagree)")
    wrong = np.flatnonzero(negative != num_images - class_freq)
    if wrong.size:
        c = int(wrong[0])
        raise DataError(f"{path}: neg_class_freq[{c}] is {int(negative[c])} but {num_images} "
                        f"images - class_freq {int(class_freq[c])} = "
                        f"{num_images - int(class_freq[c])}")
    return labels, class_freq.astype(np.int64)


def read_class_split(path: str | Path, num_classes: int) -> dict[str, np.ndarray]:
    """The ``head`` / ``medium`` / ``tail`` class indices of a ``class_split.pkl``.

    Raises:
        DataError: a missing file, keys other than ``head``, ``middle``, ``tail``, a value that
            is not a collection of integers in ``0..C-1``, a class in two groups or in none;
            each names the file.
    """
    path = Path(path)
    data = load_split_pickle(path)
    if not isinstance(data, dict) or set(data) != set(SPLIT_KEYS):
        got = (", ".join(map(repr, data)) or "none") if isinstance(data, dict) \
            else type(data).__name__
        raise DataError(f"{path}: expected a dict with keys 'head', 'middle', 'tail', got "
                        f"{got}")
    groups: dict[str, np.ndarray] = {}
    owner: dict[int, str] = {}
    for key, name in SPLIT_KEYS.items():
        value = data[key]
        if not isinstance(value, (set, frozenset, list, tuple, np.ndarray)):
            raise DataError(f"{path}: '{key}' must be a set of class indices, got "
                            f"{type(value).__name__}")
        indices = []
        for item in value:
            if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)) \
                    or not 0 <= int(item) < num_classes:
                shown = repr(item) if isinstance(item, (bool, np.bool_)) \
                    or not isinstance(item, (int, np.integer)) else int(item)
                raise DataError(f"{path}: '{key}' holds {shown}, not a class index in "
                                f"0..{num_classes - 1}")
            if int(item) in owner:
                raise DataError(f"{path}: class {int(item)} is in both '{owner[int(item)]}' and "
                                f"'{key}'")
            owner[int(item)] = key
            indices.append(int(item))
        groups[name] = np.asarray(sorted(indices), dtype=np.int64)
    left = sorted(set(range(num_classes)) - set(owner))
    if left:
        raise DataError(f"{path}: class(es) {left[:10]} are in no group (head, middle, tail "
                        f"must cover all {num_classes} classes)")
    return groups


def _listed_images(root: Path, relatives: list[str], wheres: list[str]):
    sizes, mtimes = [], []
    for relative, where in zip(relatives, wheres):
        size, mtime = _stat(root, relative, where)
        sizes.append(size)
        mtimes.append(mtime)
    return sizes, mtimes


def _train_split(images_root: Path, folder: Path, id_name: str, pattern, example: str,
                 file_of, num_classes: int):
    id_file = folder / id_name
    ids = read_id_list(id_file, pattern, example)
    labels, class_freq = read_class_freq(folder / "class_freq.pkl", num_classes, len(ids),
                                         str(id_file))
    relatives = [file_of(i) for _, i in ids]
    sizes, mtimes = _listed_images(images_root, relatives,
                                   [f"{id_file}:{n} (image {i})" for n, i in ids])
    split = MultiLabelSplit(images_root, relatives, [i for _, i in ids], labels, sizes, mtimes,
                            str(id_file))
    return split, class_freq


def _appendix(root: Path, appendix) -> Path:
    return root / "appendix" if appendix is None else Path(str(appendix)).expanduser().absolute()


def _data_root(root) -> Path:
    if root is None or isinstance(root, bool) or str(root) == "":
        raise ConfigError("root is required: the folder holding appendix/ and the images")
    root = Path(str(root)).expanduser().absolute()
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist")
    return root


# ----------------------------------------------------------------------------------- VOC-MLT

def voc_labels(xml_path: Path, where: str) -> np.ndarray:
    """The multi-hot row of a VOC annotation: 1 for the class of every ``<object>``, difficult
    ones included (``mllt/datasets/xml_style.py:43-45``)."""
    if not xml_path.is_file():
        raise DataError(f"{where}: no annotation {xml_path}")
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as err:
        raise DataError(f"{xml_path}: not valid XML ({err})") from None
    except OSError as err:
        raise DataError(f"cannot read {xml_path}: {err.strerror or err}") from None
    row = np.zeros(len(VOC_CLASSES), dtype=np.float32)
    for k, obj in enumerate(tree.getroot().findall("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise DataError(f"{xml_path}: object {k + 1} has class {name!r}, not one of the 20 "
                            f"VOC classes")
        row[VOC_CLASSES.index(name)] = 1.0
    return row


def read_voc_mlt(root, appendix=None) -> MultiLabelData:
    """Read VOC-MLT: the long-tailed VOC2012 training list and the VOC2007 test set.

    Args:
        root: The folder holding ``appendix/`` and ``VOCdevkit/`` (see the module docstring).
        appendix: The official ``appendix/`` folder, when it is not ``<root>/appendix``.

    Returns:
        A :class:`MultiLabelData` with 20 classes; image paths relative to
        ``<root>/VOCdevkit``.

    Raises:
        DataError: one line naming the file: see :func:`read_id_list`,
            :func:`read_class_freq`, :func:`read_class_split`, and a listed image, a test
            annotation or the test list that is missing.

    Example:
        >>> voc = read_voc_mlt("/data/mlt")                        # doctest: +SKIP
        >>> voc.train.files[0], voc.test.files[0]                  # doctest: +SKIP
        ('VOC2012/JPEGImages/2008_000023.jpg', 'VOC2007/JPEGImages/000001.jpg')
    """
    root = _data_root(root)
    folder = _appendix(root, appendix) / "VOCdevkit" / "longtail2012"
    if not (folder / "img_id.txt").exists() and (folder / "img_id.pkl").exists():
        raise DataError(f"{folder / 'img_id.txt'} does not exist: the VOC id list is img_id.txt "
                        f"(the README's img_id.pkl is the same list under another name)")
    images_root = root / "VOCdevkit"
    train, class_freq = _train_split(images_root, folder, "img_id.txt", _VOC_ID, "2008_000023",
                                     lambda i: f"VOC2012/JPEGImages/{i}.jpg", len(VOC_CLASSES))
    groups = read_class_split(folder / "class_split.pkl", len(VOC_CLASSES))

    test_list = _existing(images_root / "VOC2007" / "ImageSets" / "Main" / "test.txt",
                          "test list")
    ids = read_id_list(test_list, re.compile(r"[0-9]{6}"), "000001")
    rows = [voc_labels(images_root / "VOC2007" / "Annotations" / f"{i}.xml",
                       f"{test_list}:{n} (image {i})") for n, i in ids]
    relatives = [f"VOC2007/JPEGImages/{i}.jpg" for _, i in ids]
    sizes, mtimes = _listed_images(images_root, relatives,
                                   [f"{test_list}:{n} (image {i})" for n, i in ids])
    test = MultiLabelSplit(images_root, relatives, [i for _, i in ids], np.stack(rows), sizes,
                           mtimes, str(test_list))
    return MultiLabelData("voc_mlt", list(VOC_CLASSES), train, test, class_freq, groups,
                          {"train_list": train.source, "class_freq": str(folder / "class_freq.pkl"),
                           "class_split": str(folder / "class_split.pkl"),
                           "test_list": str(test_list)})


# ---------------------------------------------------------------------------------- COCO-MLT

def coco_test_split(json_path: Path, images_root: Path, image_dir: str) -> MultiLabelSplit:
    """Every image of a COCO instances JSON with its multi-hot row, as the official
    ``CocoDataset`` builds it (``mllt/datasets/coco.py:33-95``): a class is the position of the
    category id among the sorted ids; annotations with ``ignore``, ``area <= 0``, ``w < 1`` or
    ``h < 1`` are skipped, ``iscrowd`` ones kept; an image without annotation has a zero row.

    Raises:
        DataError: invalid JSON, not 80 categories, an image without an integer ``id`` or a
            ``file_name``, a duplicated id, an annotation of an unknown image or category, a
            missing image; each names the file and the entry.
    """
    try:
        data = json.loads(json_path.read_bytes())
    except json.JSONDecodeError as err:
        raise DataError(f"{json_path}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}") \
            from None
    except UnicodeDecodeError:
        raise DataError(f"{json_path}: not UTF-8 text") from None
    except OSError as err:
        raise DataError(f"cannot read {json_path}: {err.strerror or err}") from None
    lists = {}
    for key in ("images", "annotations", "categories"):
        value = data.get(key) if isinstance(data, dict) else None
        if not isinstance(value, list):
            raise DataError(f"{json_path}: '{key}' must be a list (a COCO instances file)")
        lists[key] = value
    try:
        category_ids = sorted(int(c["id"]) for c in lists["categories"])
    except (TypeError, KeyError, ValueError):
        raise DataError(f"{json_path}: every category needs an integer 'id'") from None
    if len(set(category_ids)) != len(COCO_CLASSES):
        raise DataError(f"{json_path}: {len(set(category_ids))} distinct categories, expected "
                        f"{len(COCO_CLASSES)} (COCO instances)")
    label_of = {cid: i for i, cid in enumerate(category_ids)}
    index_of: dict[int, int] = {}
    relatives, ids = [], []
    for i, image in enumerate(lists["images"]):
        where = f"{json_path}: images[{i}]"
        image_id = image.get("id") if isinstance(image, dict) else None
        name = image.get("file_name") if isinstance(image, dict) else None
        if not isinstance(image_id, int) or isinstance(image_id, bool) \
                or not isinstance(name, str) or not name:
            raise DataError(f"{where}: expected an integer 'id' and a 'file_name'")
        if image_id in index_of:
            raise DataError(f"{where}: image id {image_id} is also images[{index_of[image_id]}]")
        index_of[image_id] = i
        relatives.append(f"{image_dir}/{name}")
        ids.append(str(image_id))
    labels = np.zeros((len(relatives), len(COCO_CLASSES)), dtype=np.float32)
    for k, ann in enumerate(lists["annotations"]):
        where = f"{json_path}: annotations[{k}]"
        if not isinstance(ann, dict) or ann.get("image_id") not in index_of:
            raise DataError(f"{where}: its image_id "
                            f"{ann.get('image_id') if isinstance(ann, dict) else None!r} is no "
                            f"image of the file")
        if ann.get("category_id") not in label_of:
            raise DataError(f"{where}: category_id {ann.get('category_id')!r} is not one of the "
                            f"file's categories")
        if ann.get("ignore", False):
            continue
        try:
            _, _, w, h = ann["bbox"]
            small = ann["area"] <= 0 or w < 1 or h < 1
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}: needs 'bbox' [x, y, w, h] and 'area'") from None
        if not small:
            labels[index_of[ann["image_id"]], label_of[ann["category_id"]]] = 1.0
    if not relatives:
        raise DataError(f"{json_path}: 'images' is empty")
    sizes, mtimes = _listed_images(images_root, relatives,
                                   [f"{json_path}: images[{i}] (id {d})"
                                    for i, d in enumerate(ids)])
    return MultiLabelSplit(images_root, relatives, ids, labels, sizes, mtimes, str(json_path))


def read_coco_mlt(root, appendix=None) -> MultiLabelData:
    """Read COCO-MLT: the long-tailed train2017 list and all of val2017 as the test set.

    Args:
        root: The folder holding ``appendix/`` and ``coco/`` (see the module docstring).
        appendix: The official ``appendix/`` folder, when it is not ``<root>/appendix``.

    Returns:
        A :class:`MultiLabelData` with 80 classes; image paths relative to ``<root>/coco``.

    Raises:
        DataError: one line naming the file: see :func:`read_id_list`,
            :func:`read_class_freq`, :func:`read_class_split`, :func:`coco_test_split`.

    Example:
        >>> coco = read_coco_mlt("/data/mlt")                      # doctest: +SKIP
        >>> coco.train.files[0], coco.test.labels.shape            # doctest: +SKIP
        ('train2017/000000554625.jpg', (5000, 80))
    """
    root = _data_root(root)
    folder = _appendix(root, appendix) / "coco" / "longtail2017"
    images_root = root / "coco"
    train, class_freq = _train_split(images_root, folder, "img_id.pkl", _COCO_ID, "554625",
                                     lambda i: f"train2017/{int(i):012d}.jpg", len(COCO_CLASSES))
    groups = read_class_split(folder / "class_split.pkl", len(COCO_CLASSES))
    json_path = _existing(images_root / "annotations" / "instances_val2017.json",
                          "annotation file")
    test = coco_test_split(json_path, images_root, "val2017")
    return MultiLabelData("coco_mlt", list(COCO_CLASSES), train, test, class_freq, groups,
                          {"train_list": train.source, "class_freq": str(folder / "class_freq.pkl"),
                           "class_split": str(folder / "class_split.pkl"),
                           "test_list": str(json_path)})


# -------------------------------------------------------------------------------- the images

def load_images(split: MultiLabelSplit, image_size: int = 224, cache_dir=None,
                path: str = "auto") -> tuple[np.ndarray, str]:
    """The split's images, decoded or listed for streaming, in the split's order.

    ``memory`` decodes every image once to uint8 ``(N, 3, image_size, image_size)`` (RGB,
    bilinear resize to a square, aspect ratio not kept, as the official ``resize_keep_ratio=False``
    does) and caches the array (:func:`~lttoolbox.data.folder_io.load_split`); ``stream`` checks
    every file and returns the absolute paths (:func:`~lttoolbox.data.folder_io.file_paths`);
    ``auto`` streams above 4 GiB of decoded images.

    Returns:
        ``(images or paths, "memory" | "stream")``.

    Raises:
        DataError: naming the first file that cannot be decoded.

    Example:
        >>> images, how = load_images(read_voc_mlt("/data/mlt").train, 224)  # doctest: +SKIP
    """
    path = choose_path(path, len(split.files), image_size)
    listing = SplitListing(split.root, [], list(split.files),
                           np.zeros(len(split.files), dtype=np.int64), list(split.sizes),
                           list(split.mtimes))
    if path == "stream":
        return file_paths(listing)[0], "stream"
    return load_split(listing, image_size, cache_dir)[0], "memory"
