"""The data path: in memory and streamed, behind one interface.

The streaming path's transforms are checked against values computed here by hand; its epochs are
checked to be the same whatever the number of DataLoader workers, and a small recipe is run on
both paths (same class counts, same sampler streams), through an interruption and a resume.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_engine import StopAfter
from test_split_files import inat_cfg, raises, tree_fixture, txt_cfg  # noqa: F401  (a fixture)

from lttoolbox.data.datapath import MemoryPath, StreamPath, build_data_path, shard
from lttoolbox.data.path_choice import choose_path
from lttoolbox.data.stream import (CROP_RATIO, FileSplit, StreamTransform, crop_box, draw_seeds,
                                   read_image)
from lttoolbox.engine import train
from lttoolbox.engine.trainer import Trainer
from lttoolbox.errors import ConfigError, DataError
from lttoolbox.recipe import resolve
from lttoolbox.registry import DATASETS

CPU = torch.device("cpu")


def recipe(tree, path, **train_extra):
    return resolve({
        "data": txt_cfg(tree, path=path, image_size=8, mean=[0.5] * 3, std=[0.25] * 3),
        "model": {"name": "digits_cnn"},
        "sampler": {"name": "class_balanced"},
        "optim": {"lr": 0.05},
        "train": {"epochs": 3, "batch_size": 4, "seed": 3, "workers": 0, **train_extra},
        "eval": {"many_threshold": 4, "few_threshold": 3}})


# --------------------------------------------------------------------------- choosing the path
def test_auto_chooses_by_decoded_size():
    # 4 GiB of uint8 RGB: ImageNet-LT at 224 px streams, CIFAR-10-LT at 32 px stays in memory
    assert choose_path("auto", 115_846, 224) == "stream"
    assert choose_path("auto", 50_000, 32) == "memory"
    limit = 4 * 2 ** 30 // (3 * 64 * 64)
    assert choose_path("auto", limit, 64) == "memory"
    assert choose_path("auto", limit + 1, 64) == "stream"
    assert choose_path("memory", 10 ** 9, 224) == "memory"
    raises(ConfigError, lambda: choose_path("disk", 1, 1), "path", "memory", "stream")


def test_bundle_paths_and_options(tree):
    memory = DATASETS.build(txt_cfg(tree, path="memory"))
    stream = DATASETS.build(txt_cfg(tree, path="stream", color_jitter=0.4))
    auto = DATASETS.build(txt_cfg(tree))  # 15 images of 16 px: memory
    assert (memory.path, stream.path, auto.path) == ("memory", "stream", "memory")
    assert memory.meta["path"] == "memory" and stream.meta["path"] == "stream"
    assert stream.meta["color_jitter"] == 0.4 and stream.meta["eval_resize"] == 18  # 16*256/224
    assert isinstance(stream.train, FileSplit)
    assert stream.train.class_counts == memory.train.class_counts
    assert stream.test.class_counts == memory.test.class_counts
    assert stream.train.mean == (0.485, 0.456, 0.406)  # nothing is decoded up front
    assert all(p.endswith(".jpg") for p in stream.train.paths)
    raises(ConfigError, lambda: DATASETS.build(txt_cfg(tree, path="memory", color_jitter=0.4)),
           "color_jitter", "streaming")
    raises(ConfigError, lambda: DATASETS.build(txt_cfg(tree, color_jitter=0.4)),
           "auto chose memory")
    raises(ConfigError, lambda: DATASETS.build(txt_cfg(tree, path="stream", eval_resize=8)),
           "eval_resize", ">= image_size")
    raises(ConfigError, lambda: DATASETS.build(txt_cfg(tree, path="stream", color_jitter=1.5)),
           "color_jitter")


# --------------------------------------------------------------------------- transforms
def test_crop_box_follows_random_resized_crop():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = crop_box(60, 90, gen)
        assert 0 <= top <= 60 - h and 0 <= left <= 90 - w and h > 0 and w > 0
        # the rounding of w and h bounds area and aspect ratio up to a pixel
        assert 0.08 * 5400 * 0.8 <= h * w <= 5400
        assert CROP_RATIO[0] * 0.85 <= w / h <= CROP_RATIO[1] * 1.15
    # Where no try fits (a 1 x 100 strip), the central crop clamped to the widest ratio: h = 1,
    # w = round(1 * 4/3) = 1, centred at (0, (100 - 1) // 2) = (0, 49).
    assert crop_box(1, 100, torch.Generator().manual_seed(1)) == (0, 49, 1, 1)
    # 100 x 2 (tall): w = 2, h = round(2 / (3/4)) = 3, top = (100 - 3) // 2 = 48
    assert crop_box(100, 2, torch.Generator().manual_seed(1)) == (48, 0, 3, 2)


def test_eval_transform_is_resize_then_centre_crop():
    # A 3 x 20 x 40 ramp: resize to shorter side 10 (10 x 20), centre crop 8 -> columns 6..13.
    x = torch.arange(40, dtype=torch.uint8).repeat(3, 20, 1)
    out = StreamTransform(8, train=False, resize=10)(x, None)
    assert out.shape == (3, 8, 8) and out.dtype == torch.uint8
    from torchvision.transforms.v2 import functional as F
    expected = F.resize(x, [10, 20], antialias=True)[:, 1:9, 6:14]
    assert torch.equal(out, expected)
    assert StreamTransform(224, train=False).resize == 256


def test_train_transform_is_seeded_per_image_and_jitters():
    x = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    plain = StreamTransform(16, train=True, hflip=False)
    jitter = StreamTransform(16, train=True, hflip=False, color_jitter=0.4)
    a = plain(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, plain(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, plain(x, torch.Generator().manual_seed(6)))
    # The jitter draws after the crop, so the same seed gives the same crop, then other colours.
    b = jitter(x, torch.Generator().manual_seed(5))
    assert b.shape == a.shape and not torch.equal(a, b)
    # brightness alone on a constant image: v * f, f uniform in [0.6, 1.4]
    grey = torch.full((3, 16, 16), 100, dtype=torch.uint8)
    values = set()
    for seed in range(20):
        out = jitter(grey, torch.Generator().manual_seed(seed))
        values.update(out.unique().tolist())
    assert min(values) >= 0 and max(values) <= 255 and len(values) > 5


def test_draw_seeds_depend_on_the_global_position_only():
    positions = np.arange(10)
    seeds = draw_seeds(7, (0, 2), positions)
    assert len(set(seeds.tolist())) == 10
    # rank 1 of 2 holds the odd positions: the same seeds as the single process there
    assert np.array_equal(draw_seeds(7, (0, 2), positions[1::2]), seeds[1::2])
    assert not np.array_equal(draw_seeds(7, (0, 3), positions), seeds)
    assert not np.array_equal(draw_seeds(8, (0, 2), positions), seeds)


def test_read_image_names_a_broken_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    raises(DataError, lambda: read_image(str(bad)), str(bad))


def test_shard_covers_every_position_once():
    for total in (0, 1, 7, 10):
        for world in (1, 2, 3, 4):
            parts = [shard(total, r, world) for r in range(world)]
            joined = np.concatenate(parts)
            assert np.array_equal(np.sort(joined), np.arange(total))


# --------------------------------------------------------------------------- the interface
def batches_of(path, indices, batch_size=4, epoch_key=(0, 1)):
    indices = torch.as_tensor(indices)
    return list(path.epoch(indices, np.arange(len(indices)), batch_size, epoch_key))


@pytest.mark.parametrize("workers", [1, 2])
def test_stream_epoch_is_the_same_with_any_number_of_workers(tree, workers):
    bundle = DATASETS.build(txt_cfg(tree, path="stream", image_size=8, color_jitter=0.4))
    reference = batches_of(StreamPath(bundle, CPU, seed=1, workers=0), [3, 1, 4, 1, 5, 9, 2, 6])
    path = StreamPath(bundle, CPU, seed=1, workers=workers)
    for _ in range(2):  # the persistent workers serve a second epoch too
        again = batches_of(path, [3, 1, 4, 1, 5, 9, 2, 6])
        assert len(again) == len(reference) == 2
        for (x, y), (rx, ry) in zip(again, reference):
            assert torch.equal(x, rx) and torch.equal(y, ry)
    other = batches_of(path, [3, 1, 4, 1, 5, 9, 2, 6], epoch_key=(0, 2))
    assert not torch.equal(other[0][0], reference[0][0])  # another epoch, other draws


def test_stream_batches_are_normalised_channels_last(tree):
    bundle = DATASETS.build(txt_cfg(tree, path="stream", image_size=8, mean=[0.5] * 3,
                                    std=[0.25] * 3))
    path = build_data_path(bundle, CPU, seed=0, workers=0)
    assert isinstance(path, StreamPath) and (path.in_channels, path.image_size) == (3, 8)
    (x, y), = batches_of(path, [0, 1, 2], batch_size=3)
    assert x.dtype == torch.float32 and x.shape == (3, 3, 8, 8)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert y.tolist() == bundle.train.labels[[0, 1, 2]].tolist()
    # (v / 255 - 0.5) / 0.25 lies in [-2, 2]
    assert float(x.min()) >= -2.0 and float(x.max()) <= 2.0
    # evaluation: resize + centre crop of the decoded file, then the same normalisation
    first = next(path.eval_batches("test", 2, np.array([0])))
    raw = read_image(bundle.test.paths[0])
    expected = (StreamTransform(8, False)(raw, None).float() / 255 - 0.5) / 0.25
    assert torch.allclose(first[0], expected, atol=1e-5)
    fx, fy = path.fetch(torch.tensor([2, 0]))
    assert fx.shape == (2, 3, 8, 8) and fy.tolist() == bundle.train.labels[[2, 0]].tolist()
    raises(ConfigError, lambda: path.add(torch.zeros(1, 3, 8, 8), torch.zeros(1)),
           "data.path", "memory")


def test_memory_path_is_the_batched_transform(tree):
    bundle = DATASETS.build(txt_cfg(tree, path="memory", image_size=8, crop_padding=0,
                                    hflip=False))
    path = build_data_path(bundle, CPU)
    assert isinstance(path, MemoryPath)
    (x, y), = batches_of(path, [4, 0], batch_size=2)
    assert torch.equal(x, bundle.eval_transform(bundle.train.images[[4, 0]]))
    assert y.tolist() == bundle.train.labels[[4, 0]].tolist()


# --------------------------------------------------------------------------- through the trainer
def test_same_recipe_on_both_paths_same_counts_and_sampler_streams(tree, tmp_path):
    trainers = {p: Trainer(recipe(tree, p), tmp_path / p, quiet=True)
                for p in ("memory", "stream")}
    memory, stream = trainers["memory"], trainers["stream"]
    assert memory.data_path.kind == "memory" and stream.data_path.kind == "stream"
    assert memory.class_counts == stream.class_counts == [6, 4, 3, 2]
    assert memory.data.test.class_counts == stream.data.test.class_counts
    for epoch in (0, 1, 2):
        streams = []
        for trainer in (memory, stream):
            sampler = trainer.phases[0].sampler
            sampler.set_epoch(epoch)
            streams.append(sampler.indices())
        assert torch.equal(*streams)


def test_stream_run_resumes_exactly(tree, tmp_path):
    whole = train(recipe(tree, "stream"), tmp_path / "whole", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        train(recipe(tree, "stream"), tmp_path / "cut", logger=StopAfter(1))
    resumed = train(recipe(tree, "stream"), tmp_path / "cut", resume=True, quiet=True)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    assert resumed["top1"] == whole["top1"]
    assert resumed["data"]["path"] == "stream"
    assert sum(resumed["test_class_counts"]) == 8


def test_the_stream_loader_leaves_the_global_generator_alone(tree):
    """The mixing augmentations draw from torch's global generator: a loader that drew its
    workers' base seed there would shift them (once per epoch with 0 workers, once per process
    with persistent workers, so differently with each worker count and across a resume)."""
    bundle = DATASETS.build(txt_cfg(tree, path="stream", image_size=8))
    for workers in (0, 1):
        path = StreamPath(bundle, CPU, seed=1, workers=workers)
        before = torch.get_rng_state()
        for epoch in range(2):
            batches_of(path, [3, 1, 4, 1, 5], epoch_key=(0, epoch))
        list(path.eval_batches("test", 4))
        assert torch.equal(torch.get_rng_state(), before), f"{workers} workers"


def test_fetch_draws_depend_on_the_epoch_and_call_not_on_the_process_history(tree):
    """CMO's foreground images: the k-th fetch of an epoch is the same in a process that trained
    earlier epochs (an uninterrupted run) and in a fresh one (a run resumed at that epoch)."""
    bundle = DATASETS.build(txt_cfg(tree, path="stream", image_size=8))
    idx = torch.tensor([2, 0, 5, 7])
    uninterrupted = StreamPath(bundle, CPU, seed=1, workers=0)
    batches_of(uninterrupted, [0, 1, 2, 3], epoch_key=(0, 0))
    earlier = uninterrupted.fetch(idx)[0]
    batches_of(uninterrupted, [0, 1, 2, 3], epoch_key=(0, 1))
    first, second = uninterrupted.fetch(idx)[0], uninterrupted.fetch(idx)[0]
    resumed = StreamPath(bundle, CPU, seed=1, workers=0)
    batches_of(resumed, [0, 1, 2, 3], epoch_key=(0, 1))
    assert torch.equal(resumed.fetch(idx)[0], first)
    assert torch.equal(resumed.fetch(idx)[0], second)
    assert not torch.equal(first, second) and not torch.equal(first, earlier)


def test_fetch_draws_differ_between_processes_and_rank_0_draws_as_one_process(tree):
    """Two processes fetching their foreground images at the same call of an epoch draw their
    own crops; rank 0 draws what a single process draws."""
    bundle = DATASETS.build(txt_cfg(tree, path="stream", image_size=8))
    idx = torch.tensor([2, 0, 5, 7])
    drawn = {}
    for rank in (None, 0, 1):
        path = (StreamPath(bundle, CPU, seed=1, workers=0) if rank is None
                else StreamPath(bundle, CPU, seed=1, workers=0, rank=rank))
        batches_of(path, [0, 1, 2, 3], epoch_key=(0, 1))
        drawn[rank] = path.fetch(idx)[0]
    assert torch.equal(drawn[0], drawn[None])
    assert not torch.equal(drawn[1], drawn[0])


def test_a_streamed_mixing_run_is_the_same_with_any_workers_and_across_a_resume(tree, tmp_path):
    """The mixing augmentations of the registry, as the choices of one ``one_of`` (one run
    instead of one per augmentation): an uninterrupted run with 1 worker equals a run stopped
    in its second epoch with 0 workers and resumed with 1. (``manifold_mixup`` acts through its
    point hooks, which ``one_of`` does not call; it draws from the same generator as mixup.)"""
    # every registered mixing augmentation that acts on any model (not the two-branch ones)
    from test_augment import ANY_MODEL, contract_config
    # one_of draws each choice with its own p, so a choice's own p is left out; all act at
    # the input, their default point
    choices = [{"name": name, **{k: v for k, v in contract_config(name).items()
                                 if k not in ("p", "point")}}
               for name in ANY_MODEL if name not in ("one_of", "manifold_mixup")]
    aug = {"name": "one_of", "choices": choices, "p": [1 / len(choices)] * len(choices)}
    cfg = dict(recipe(tree, "stream", epochs=2), augment=[aug])
    one = dict(cfg, train={**cfg["train"], "workers": 1})
    whole = train(resolve(one), tmp_path / "whole", quiet=True)
    with pytest.raises(KeyboardInterrupt):  # epoch 0 checkpointed, stopped in epoch 1
        train(resolve(cfg), tmp_path / "cut", logger=StopAfter(1))
    resumed = train(resolve(one), tmp_path / "cut", resume=True, quiet=True)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    assert resumed["per_class_acc"] == whole["per_class_acc"]


def test_workers_do_not_change_the_recipe_hash(tree):
    from lttoolbox.recipe import recipe_hash
    assert recipe_hash(recipe(tree, "stream")) == recipe_hash(recipe(tree, "stream", workers=3))


def test_generated_images_need_the_memory_path(tree, tmp_path):
    cfg = recipe(tree, "stream")
    cfg["phases"] = [{"meta": {"phase": "one"}},
                     {"meta": {"phase": "cam"}, "augment": [{"name": "cam_resample"}],
                      "train": {"epochs": 1}}]
    raises(ConfigError, lambda: Trainer(resolve(cfg), tmp_path / "cam", quiet=True),
           "streaming data path", "data.path: memory")


def test_decoders_agree_on_a_png_and_are_validated(tmp_path, tree):
    from PIL import Image
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")  # lossless: both decoders must agree
    expected = torch.from_numpy(pixels).permute(2, 0, 1)
    for decoder in ("pil", "torchvision"):
        assert torch.equal(read_image(str(tmp_path / "x.png"), decoder), expected)
    bundle = DATASETS.build(txt_cfg(tree, path="stream", decoder="torchvision"))
    assert bundle.train.decoder == "torchvision" and bundle.meta["decoder"] == "torchvision"
    raises(ConfigError, lambda: DATASETS.build(txt_cfg(tree, decoder="nvjpeg")), "decoder")


def test_lteval_and_ltpredict_read_a_streamed_run_as_it_evaluated(tree, tmp_path):
    from lttoolbox.cli_eval import evaluate_run
    from lttoolbox.cli_predict import predict_files

    results = train(recipe(tree, "stream", epochs=1), tmp_path / "run", quiet=True)
    doc, _ = evaluate_run(tmp_path / "run")
    assert doc["top1"] == results["top1"]
    assert doc["confusion_matrix"] == results["confusion_matrix"]
    # an image file: resized and centre-cropped as the run's evaluation did, then predicted
    from lttoolbox.engine.evaluate import logits_of
    from lttoolbox.runs import open_run
    run = open_run(tmp_path / "run")
    bundle = DATASETS.build(recipe(tree, "stream")["data"])
    path = build_data_path(bundle, CPU, workers=0, stats=(run.info["mean"], run.info["std"]))
    logits = next(logits_of(run.model, path.eval_batches("test", 1, np.array([0]))))
    probs = torch.softmax(logits, dim=1)[0]
    rows, skipped = predict_files(tmp_path / "run", [bundle.test.paths[0]], topk=2)
    assert not skipped and len(rows) == 1
    top = probs.topk(2)
    assert rows[0][1::2] == [results["class_names"][int(i)] for i in top.indices]
    assert [float(p) for p in rows[0][2::2]] == pytest.approx(top.values.tolist(), abs=1e-6)


# --------------------------------------------------------------------------- broken files
def bomb_png(path):
    """A PNG whose header declares 30,000 x 30,000 pixels, with a few bytes of data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def damage(path, kind):
    """Break an image file the way files break: cut short, emptied, not an image, a bomb."""
    from PIL import Image
    if kind == "truncated_jpeg":
        pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, format="JPEG", quality=90)
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif kind == "truncated_png":
        pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, format="PNG")
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("class,label\nnot,an image\n")
    else:
        bomb_png(path)


def test_the_file_check_refuses_only_what_pillow_cannot_decode(tmp_path):
    from PIL import Image

    from lttoolbox.data.images import check_image
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    good = {"plain.jpg": "JPEG", "plain.png": "PNG", "gif_named.png": "GIF", "bmp.jpg": "BMP"}
    for name, form in good.items():
        Image.fromarray(pixels).save(tmp_path / name, format=form)
        check_image(str(tmp_path / name))
    # bytes after the end-of-image marker (camera trailers): no ending found, decoded in full
    trailer = tmp_path / "trailer.jpg"
    trailer.write_bytes((tmp_path / "plain.jpg").read_bytes() + b"\x00MakerTrailer" * 200)
    check_image(str(trailer))
    for kind, why in KINDS.items():
        damage(tmp_path / "bad.jpg", kind)
        raises(DataError, lambda: check_image(str(tmp_path / "bad.jpg")),
               f"cannot read image {tmp_path / 'bad.jpg'}: ", why)


@pytest.mark.parametrize("pooled", [False, True])
def test_check_files_names_the_first_broken_file_and_counts_the_others(tmp_path, monkeypatch,
                                                                       pooled):
    from PIL import Image

    from lttoolbox.data import images
    if pooled:  # the thread pool of large splits, on a small one
        monkeypatch.setattr(images, "POOL_MIN_FILES", 1)
        monkeypatch.setattr(images, "CHUNK", 2)
    paths = [tmp_path / f"{i}.png" for i in range(7)]
    for path in paths:
        Image.new("RGB", (4, 4)).save(path)
    images.check_files(paths)
    damage(paths[5], "empty")
    damage(paths[2], "text")
    raises(DataError, lambda: images.check_files(paths),
           f"cannot read image {paths[2]}: not an image file Pillow can read (and 1 more")


KINDS = {"truncated_jpeg": "truncated", "truncated_png": "truncated", "empty": "the file is empty",
         "text": "not an image file Pillow can read", "bomb": "decompression bomb"}
FORMATS = {"txt_list": txt_cfg, "inaturalist": inat_cfg,
           # the tree's train/ and val/ folders hold class folders: an image folder too
           "image_folder": lambda tree, **extra: {
               "name": "image_folder", "root": str(tree["root"]), "test_dir": "val",
               "imbalance_type": None, **extra}}


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("form", sorted(FORMATS))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_broken_file_on_the_streaming_path_stops_before_anything_is_written(
        tree, tmp_path, capsys, kind, form, split):
    """One line naming the file, exit 2, no run directory: found before training, also in the
    test split (which used to be read only after all the training)."""
    from test_faults import lttrain_inproc, write_recipe
    broken = tree["root"] / tree["splits"][split][-1][0]
    damage(broken, kind)
    recipe = write_recipe(tmp_path / "r.yaml", {
        "data": FORMATS[form](tree, path="stream", image_size=8), "model": {"name": "digits_cnn"},
        "train": {"epochs": 1, "batch_size": 4, "workers": 1}})
    code, lines = lttrain_inproc(capsys, recipe, "--out", tmp_path / "run")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: cannot read image {broken}: ") and KINDS[kind] in lines[0]
    assert not (tmp_path / "run").exists()


class BreakAfterFirstEpoch:
    """Damages a training file once the first epoch is logged, as a disk or a sync job might."""

    def __init__(self, path):
        self.path, self.done = path, False

    def __call__(self, real):
        def append_log(*args, **kwargs):
            real(*args, **kwargs)
            if not self.done:
                self.done = True
                self.saved = self.path.read_bytes()
                self.path.write_bytes(b"")
        return append_log


def test_a_file_broken_during_a_streamed_run_is_one_line_and_the_run_resumes(
        tree, tmp_path, capsys, monkeypatch):
    """Read by a DataLoader worker, the broken file used to end the run with the worker's
    17-line traceback."""
    import lttoolbox.engine.trainer as trainer_module
    from test_faults import lttrain_inproc, write_recipe
    cfg = recipe(tree, "stream", epochs=2, workers=1)
    cfg.pop("sampler")  # every training image is read every epoch
    path = write_recipe(tmp_path / "r.yaml", cfg)
    broken = tree["root"] / tree["splits"]["train"][0][0]
    breaker = BreakAfterFirstEpoch(broken)
    monkeypatch.setattr(trainer_module, "append_log", breaker(trainer_module.append_log))
    out = tmp_path / "run"
    code, lines = lttrain_inproc(capsys, path, "--out", out, "--quiet")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: cannot read image {broken}: the file is empty; the run "
                               f"keeps its last checkpoint"), lines
    assert lines[0].endswith(f"--out {out} --resume")
    broken.write_bytes(breaker.saved)
    code, lines = lttrain_inproc(capsys, path, "--out", out, "--resume", "--quiet")
    assert code == 0, lines
    assert [r["epoch"] for r in (json.loads(line) for line in (out / "log.jsonl").open())] \
        == [0, 1]
