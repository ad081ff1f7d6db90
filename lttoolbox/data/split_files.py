"""Parsers of the split files that define the large long-tailed benchmarks.

Two formats:

* a text list, one ``<relative/path> <label>`` per line, as ImageNet-LT and Places-LT are released
  (OLTR, classifier-balancing) and as some codebases convert iNaturalist 2018's JSON;
* the COCO-style JSON of iNaturalist 2018 (``train2018.json``, ``val2018.json``), whose ``images``
  and ``annotations`` are joined by ``image_id``.

A parser reads the split file and checks that every image exists (one ``stat`` per image; its
size and mtime key the decode cache) but decodes nothing, so the in-memory data sets of
:mod:`lttoolbox.data.listed` and a streaming loader can share it. Every problem is one
:class:`~lttoolbox.errors.DataError` that names the split file and the line (text list) or the
entry (JSON).

Example:
    >>> entries = read_txt_list("lists/ImageNet_LT_test.txt", "/data/imagenet")  # doctest: +SKIP
    >>> entries[0].path, entries[0].label, entries[0].where                       # doctest: +SKIP
    ('val/n01440764/ILSVRC2012_val_00029930.JPEG', 0, '/home/me/lists/ImageNet_LT_test.txt:1')
"""
from __future__ import annotations

import json
import os
import posixpath
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError

_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class SplitEntry:
    """One labelled image of a split file.

    Attributes:
        path: Image path relative to the root, normalised (``a/./b`` is ``a/b``; a leading ``/``
            is dropped, so ``/a/b.jpg`` is read below the root too, as OLTR reads it).
        label: Class id.
        source: The split file it comes from.
        line: 1-based line in a text list; ``None`` for JSON.
        index: Position in the JSON ``images`` list; ``None`` for a text list.
        image_id: The JSON image id; ``None`` for a text list.
        size: File size in bytes (part of the decode-cache key).
        mtime: Modification time in ns (part of the decode-cache key).
    """

    path: str
    label: int
    source: str
    line: int | None = None
    index: int | None = None
    image_id: int | None = None
    size: int = 0
    mtime: int = 0

    @property
    def where(self) -> str:
        """``file:line`` for a text list, ``file: images[i] (id n)`` for JSON (for messages)."""
        if self.line is not None:
            return f"{self.source}:{self.line}"
        return f"{self.source}: images[{self.index}] (id {self.image_id})"


@dataclass
class JsonSplit:
    """What :func:`read_inaturalist_json` returns.

    Attributes:
        entries: One per image, in the order of the JSON ``images`` list.
        category_ids: The category ids in label order (ascending): label ``i`` is category
            ``category_ids[i]``, so the label is the id itself when the ids are ``0..C-1``.
        category_names: A name per label (the category's ``name``, else its id as text).
    """

    entries: list[SplitEntry]
    category_ids: list[int]
    category_names: list[str]


def split_file(path: str | Path) -> Path:
    """The split file as an absolute path (``~`` expanded; relative to the working directory).

    Raises:
        DataError: it does not exist or is not a file.
    """
    path = Path(str(path)).expanduser().absolute()
    if not path.is_file():
        raise DataError(f"split file {path} does not exist" if not path.exists()
                        else f"split file {path} is not a file")
    return path


def _text_lines(path: Path):
    """``(line number, text)`` of every line, decoded one by one so a bad byte names its line."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path}:{number}: not UTF-8 text") from None
        yield number, text


def _label(value: Any, where: str, num_classes: int | None = None, what: str = "label",
           text: bool = False) -> int:
    """An integer ``>= 0`` (``< num_classes`` when given), from a list's text field (``text``) or
    a JSON value (where ``"3"`` or ``3.0`` is refused: not what the file's producer wrote)."""
    if text and isinstance(value, str) and _INTEGER.fullmatch(value):
        value = int(value)
    elif not isinstance(value, int) or isinstance(value, bool):
        raise DataError(f"{where}: {what} {value!r} is not an integer")
    if value < 0:
        raise DataError(f"{where}: {what} {value} is negative")
    if num_classes is not None and value >= num_classes:
        raise DataError(f"{where}: {what} {value} is out of range 0..{num_classes - 1} "
                        f"({num_classes} classes)")
    return value


def _relative(name: str) -> str:
    # OLTR reads a line starting with "/" as root + line, so such a path is below the root too.
    return posixpath.normpath(name.lstrip("/"))


def _stat(root: Path, relative: str, where: str) -> tuple[int, int]:
    """Size and mtime of ``root/relative``; the error names ``where``."""
    full = root / relative
    try:
        info = os.stat(full)
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{where}: no image {full}") from None
    except OSError as err:
        raise DataError(f"{where}: cannot read {full}: {err.strerror or err}") from None
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{where}: {full} is not a file")
    return info.st_size, info.st_mtime_ns


def read_txt_list(path: str | Path, root: str | Path,
                  num_classes: int | None = None) -> list[SplitEntry]:
    """Read a ``<relative/path> <label>`` list (ImageNet-LT, Places-LT, iNaturalist lists).

    Fields are separated by whitespace, so a path cannot contain spaces; lines that are empty or
    only whitespace are skipped (they keep their number for messages). A leading ``/`` in a path is
    read below ``root`` (OLTR's convention).

    Args:
        path: The list file.
        root: Folder the paths are relative to; every image must exist there.
        num_classes: When given, a label must be below it.

    Returns:
        The entries in file order, each with its ``line``.

    Raises:
        DataError: a missing or unreadable list, a line that is not UTF-8 or not two fields, a
            label that is not an integer, negative or out of range, a path listed twice, a
            missing image, or a list without any image; each names ``file:line``.

    Example:
        >>> test = read_txt_list("Places_LT_test.txt", "/data/places365_standard")  # doctest: +SKIP
        >>> test[0].path, test[0].label                                           # doctest: +SKIP
        ('val/airfield/Places365_val_00003597.jpg', 0)
    """
    path = split_file(path)
    root = Path(str(root)).expanduser().absolute()
    entries: list[SplitEntry] = []
    first_line: dict[str, int] = {}
    for number, text in _text_lines(path):
        fields = text.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) != 2:
            raise DataError(f"{where}: expected '<relative/path> <label>', got {text.strip()!r}")
        relative = _relative(fields[0])
        label = _label(fields[1], where, num_classes, text=True)
        if relative in first_line:
            raise DataError(f"{where}: {relative} is listed twice (first on line "
                            f"{first_line[relative]})")
        first_line[relative] = number
        size, mtime = _stat(root, relative, where)
        entries.append(SplitEntry(relative, label, str(path), line=number, size=size, mtime=mtime))
    if not entries:
        raise DataError(f"{path} lists no image (expected '<relative/path> <label>' lines)")
    return entries


def _json_list(data: dict, key: str, path: Path, required: bool = True) -> list:
    value = data.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise DataError(f"{path}: '{key}' must be a list, got "
                        f"{'nothing' if value is None else type(value).__name__}")
    return value


def _categories(path: Path, data: dict, given: list[int] | None) -> tuple[list[int], list[str]]:
    """Category ids in label order and their names; checked against ``given`` (the training
    file's ids) when this is a second file."""
    listed = _json_list(data, "categories", path, required=given is None)
    ids: dict[int, str] = {}
    for i, category in enumerate(listed):
        where = f"{path}: categories[{i}]"
        if not isinstance(category, dict):
            raise DataError(f"{where}: expected an object with an 'id', got {category!r}")
        cid = _label(category.get("id"), where, what="id")
        if cid in ids:
            raise DataError(f"{where}: category id {cid} is listed twice")
        name = category.get("name")
        ids[cid] = name if isinstance(name, str) and name else str(cid)
    if given is None:
        if not ids:
            raise DataError(f"{path}: 'categories' is empty")
        order = sorted(ids)
        return order, [ids[c] for c in order]
    if ids and set(ids) != set(given):
        extra, missing = sorted(set(ids) - set(given)), sorted(set(given) - set(ids))
        raise DataError(f"{path}: its categories differ from the training file's: "
                        f"{len(extra)} only here {extra[:5]}, {len(missing)} missing "
                        f"{missing[:5]}")
    return list(given), [ids.get(c, str(c)) for c in given]


def read_inaturalist_json(path: str | Path, root: str | Path,
                          category_ids: list[int] | None = None) -> JsonSplit:
    """Read an iNaturalist (COCO-style) JSON: ``images`` joined to ``annotations`` by image id.

    The join goes through a dictionary keyed by ``image_id``, never by list position, so the two
    lists may come in any order. Each image must have exactly one annotation.

    Args:
        path: ``train2018.json`` or ``val2018.json`` (or any file of that shape).
        root: Folder the ``file_name`` paths are relative to (the one holding ``train_val2018/``).
        category_ids: The training file's :attr:`JsonSplit.category_ids`, when reading a second
            file (validation/test): labels then follow the training file, and this file's own
            ``categories`` (optional here) must list the same ids.

    Returns:
        A :class:`JsonSplit`; entries in ``images`` order, each with its ``index`` and
        ``image_id``.

    Raises:
        DataError: invalid JSON (with its line and column), a missing list, an image without an
            integer ``id`` or a ``file_name``, a duplicated image id or file, an annotation whose
            ``image_id`` has no image, a ``category_id`` that is not an integer, negative or not
            a category, an image with no or two annotations, a missing image file; each names the
            file and the ``images[i]`` / ``annotations[k]`` entry with its image id.

    Example:
        >>> train = read_inaturalist_json("train2018.json", "/data/inat2018")     # doctest: +SKIP
        >>> val = read_inaturalist_json("val2018.json", "/data/inat2018", train.category_ids)
        ... # doctest: +SKIP
    """
    path = split_file(path)
    root = Path(str(root)).expanduser().absolute()
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object with 'images', 'annotations' and "
                        f"'categories', got {type(data).__name__}")
    order, names = _categories(path, data, category_ids)
    label_of = {cid: label for label, cid in enumerate(order)}
    images = _json_list(data, "images", path)
    annotations = _json_list(data, "annotations", path)

    index_of: dict[int, int] = {}
    file_of: dict[str, int] = {}
    relatives = []
    for i, image in enumerate(images):
        where = f"{path}: images[{i}]"
        if not isinstance(image, dict):
            raise DataError(f"{where}: expected an object with 'id' and 'file_name'")
        image_id = image.get("id")
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise DataError(f"{where}: 'id' must be an integer, got {image_id!r}")
        where = f"{where} (id {image_id})"
        if image_id in index_of:
            raise DataError(f"{where}: image id {image_id} is also images[{index_of[image_id]}]")
        name = image.get("file_name")
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{where}: 'file_name' must be a path, got {name!r}")
        relative = _relative(name)
        if relative in file_of:
            raise DataError(f"{where}: {relative} is listed twice (also images"
                            f"[{file_of[relative]}])")
        index_of[image_id], file_of[relative] = i, i
        relatives.append(relative)

    annotation_of: dict[int, int] = {}
    labels: dict[int, int] = {}
    for k, annotation in enumerate(annotations):
        where = f"{path}: annotations[{k}]"
        if not isinstance(annotation, dict):
            raise DataError(f"{where}: expected an object with 'image_id' and 'category_id'")
        image_id = annotation.get("image_id")
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise DataError(f"{where}: 'image_id' must be an integer, got {image_id!r}")
        where = f"{where} (image_id {image_id})"
        if image_id not in index_of:
            raise DataError(f"{where}: no image has id {image_id}")
        category = _label(annotation.get("category_id"), where, what="category_id")
        if category not in label_of:
            raise DataError(f"{where}: category_id {category} is not one of the {len(order)} "
                            f"categories" + (" of the training file" if category_ids else ""))
        if image_id in annotation_of:
            raise DataError(f"{where}: images[{index_of[image_id]}] already has an annotation "
                            f"(annotations[{annotation_of[image_id]}]); each image needs exactly "
                            f"one")
        annotation_of[image_id] = k
        labels[image_id] = label_of[category]

    entries = []
    for i, image in enumerate(images):
        image_id = image["id"]
        where = f"{path}: images[{i}] (id {image_id})"
        if image_id not in labels:
            raise DataError(f"{where}: no annotation for {relatives[i]}")
        size, mtime = _stat(root, relatives[i], where)
        entries.append(SplitEntry(relatives[i], labels[image_id], str(path), index=i,
                                  image_id=image_id, size=size, mtime=mtime))
    if not entries:
        raise DataError(f"{path}: 'images' is empty")
    return JsonSplit(entries, order, names)
