"""Data sets, long-tail profiles and batched on-device transforms.

Importing this package registers every data set in :data:`lttoolbox.registry.DATASETS`:
``digits_lt`` (embedded, no download), ``digits_mlt`` (its multi-label mosaics),
``cifar10_lt``, ``cifar100_lt``, ``image_folder``, the split-file sets ``txt_list``
(ImageNet-LT, Places-LT) and ``inaturalist`` (iNaturalist 2018), and the multi-label
``voc_mlt`` and ``coco_mlt`` (VOC-MLT, COCO-MLT).
Each returns a :class:`DataBundle` (train/test :class:`LTDataset`, train/eval
:class:`BatchTransform`, provenance ``meta``).

Example:
    >>> from lttoolbox.registry import DATASETS
    >>> bundle = DATASETS.build({"name": "digits_lt"})
    >>> bundle.train.images.dtype, bundle.num_classes
    (torch.uint8, 10)
"""
from .cifar import CIFAR10_CLASSES, cifar10_lt, cifar100_lt, load_cifar_pickle
from .dataset import DataBundle, LTDataset, pixel_mean_std
from .digits import digits_lt
from .folder import image_folder
from .folder_io import default_cache_dir
from .listed import inaturalist, txt_list
from .mlt_sets import coco_mlt, voc_mlt
from .multilabel import MultiLabelDataset, digits_mlt
from .profiles import IMBALANCE_TYPES, SELECTIONS, index_hash, long_tail_counts, select_long_tail
from .split_files import JsonSplit, SplitEntry, read_inaturalist_json, read_txt_list
from .transforms import BatchTransform, pad_crop

__all__ = [
    "BatchTransform", "CIFAR10_CLASSES", "DataBundle", "IMBALANCE_TYPES", "JsonSplit", "LTDataset",
    "MultiLabelDataset", "SELECTIONS", "SplitEntry", "cifar100_lt", "cifar10_lt", "coco_mlt",
    "default_cache_dir", "digits_lt", "digits_mlt",
    "image_folder", "inaturalist", "index_hash", "load_cifar_pickle", "long_tail_counts",
    "pad_crop", "pixel_mean_std", "read_inaturalist_json", "read_txt_list", "select_long_tail",
    "txt_list", "voc_mlt",
]
