"""Strong augmentations (AutoAugment, RandAugment, Cutout) on both data paths.

Every operation at every magnitude against torchvision's per-image operation; the whole batched
policy against torchvision applied image by image with the same draws; the policies' frequencies
against their tables; Cutout's squares against the official code's arithmetic (numpy here) and
hand cases; seeding, fresh draws through ``fetch``, exact resume on both paths; bad keys.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_split_files import raises, tree_fixture, txt_cfg  # noqa: F401  (a fixture)
from torchvision.transforms import v2

from conftest import assert_same_training, digits, resumed_run
from lttoolbox.data.datapath import MemoryPath, StreamPath
from lttoolbox.data.strong_aug import (ALL_OPS, AUTO_BINS, RAND_BINS, BatchStrong, ImageStrong,
                                       cutout_mask, strong_augment)
from lttoolbox.data.stream import StreamTransform
from lttoolbox.data.transforms import BatchTransform, pad_crop
from lttoolbox.engine import train
from lttoolbox.errors import ConfigError
from lttoolbox.recipe import resolve
from lttoolbox.registry import DATASETS

CPU = torch.device("cpu")


def images(count, channels, size, seed=0):
    """Random uint8 images, one of them flat (autocontrast and equalize keep a flat image)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (count, channels, size, size), dtype=torch.uint8, generator=g)
    x[0] = 77
    x[1, :, :, : size // 2] = 3  # few distinct values: equalize's steps
    return x


def reference(op, image, magnitude, fill):
    """torchvision's own operation on one image (``_apply_image_or_video_transform``)."""
    t = v2.RandAugment(fill=fill)
    return t._apply_image_or_video_transform(image, op, magnitude, interpolation=t.interpolation,
                                             fill=t._fill)


def tv_magnitude(op, bins, height, width, bin_, negative):
    """The signed magnitude torchvision uses for ``op`` at ``bin_`` (its own tables)."""
    space = {**v2.RandAugment._AUGMENTATION_SPACE, **v2.AutoAugment._AUGMENTATION_SPACE}
    table, signed = space[op]
    values = table(bins, height, width)
    if values is None:
        return 0.0
    m = float(values[bin_])
    return -m if signed and negative else m


# ------------------------------------------------------------------- each operation, each bin
@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("channels,size,fill", [(3, 12, 128), (1, 9, 0)])
def test_each_operation_at_each_magnitude_is_torchvisions_on_every_image(op, channels, size,
                                                                         fill):
    x = images(6, channels, size)
    strong = BatchStrong(strong_augment(randaugment=1, augment_fill=fill))
    for bins in (AUTO_BINS, RAND_BINS):
        for bin_ in range(bins):
            for negative in (False, True):
                index = torch.full((len(x),), 2 * bin_ + int(negative))
                got = strong.apply_op(op, x, index, bins)
                m = tv_magnitude(op, bins, size, size, bin_, negative)
                for i in range(len(x)):
                    assert torch.equal(got[i], reference(op, x[i], m, fill)), (op, bins, bin_,
                                                                                 negative, i)


def test_magnitudes_differ_per_image_within_one_call():
    """One call, a different magnitude and sign per image: each image is torchvision's at its
    own magnitude (the grid and the blend factor are per image)."""
    x = images(8, 3, 10, seed=1)
    strong = BatchStrong(strong_augment(randaugment=1))
    index = torch.arange(8) * 3 % 20  # bins 0..9, both signs
    for op in ("Rotate", "ShearY", "TranslateX", "Contrast", "Sharpness", "Posterize",
               "Solarize"):
        got = strong.apply_op(op, x, index, AUTO_BINS)
        for i in range(8):
            m = tv_magnitude(op, AUTO_BINS, 10, 10, int(index[i]) // 2, bool(index[i] % 2))
            assert torch.equal(got[i], reference(op, x[i], m, 0)), (op, i)


# --------------------------------------------------------------- the whole policy, image by image
def autoaugment_by_image(x, policy, generator, fill):
    """AutoAugment as torchvision applies it to each image, with the draws the batch makes
    (documented order: sub-policy (B,), apply (2, B), sign (2, B); sign: rand <= 0.5 negates)."""
    b, _, h, w = x.shape
    t = v2.AutoAugment(v2.AutoAugmentPolicy(policy), fill=fill)
    table = t._policies
    sub = torch.randint(0, len(table), (b,), generator=generator)
    apply = torch.rand(2, b, generator=generator)
    sign = torch.rand(2, b, generator=generator) <= 0.5
    out = []
    for i in range(b):
        image = x[i]
        for s, (op, p, bin_) in enumerate(table[int(sub[i])]):
            if apply[s, i] <= p:
                m = tv_magnitude(op, AUTO_BINS, h, w, bin_ or 0, bool(sign[s, i]))
                image = t._apply_image_or_video_transform(image, op, m, t.interpolation,
                                                          t._fill)
        out.append(image)
    return torch.stack(out)


def randaugment_by_image(x, num_ops, magnitude, generator, fill):
    b, _, h, w = x.shape
    t = v2.RandAugment(num_ops, magnitude, fill=fill)
    names = list(t._AUGMENTATION_SPACE)
    ops = torch.randint(0, len(names), (num_ops, b), generator=generator)
    sign = torch.rand(num_ops, b, generator=generator) <= 0.5
    out = []
    for i in range(b):
        image = x[i]
        for n in range(num_ops):
            op = names[int(ops[n, i])]
            m = tv_magnitude(op, RAND_BINS, h, w, magnitude, bool(sign[n, i]))
            image = t._apply_image_or_video_transform(image, op, m, t.interpolation, t._fill)
        out.append(image)
    return torch.stack(out)


@pytest.mark.parametrize("policy", ["cifar10", "svhn"])
def test_the_batched_autoaugment_is_torchvisions_image_by_image(policy):
    x = images(64, 3, 12, seed=2)
    got, holes = BatchStrong(strong_augment(autoaugment=policy, augment_fill=[128, 64, 0]))(
        x, torch.Generator().manual_seed(5))
    expected = autoaugment_by_image(x, policy, torch.Generator().manual_seed(5), [128, 64, 0])
    assert holes is None and torch.equal(got, expected)
    assert (got != x).flatten(1).any(1).float().mean() > 0.5  # most images changed


@pytest.mark.parametrize("num_ops,magnitude", [(2, 9), (3, 30), (1, 0)])
def test_the_batched_randaugment_is_torchvisions_image_by_image(num_ops, magnitude):
    x = images(48, 3, 10, seed=3)
    got, _ = BatchStrong(strong_augment(randaugment=num_ops, randaugment_magnitude=magnitude))(
        x, torch.Generator().manual_seed(9))
    expected = randaugment_by_image(x, num_ops, magnitude, torch.Generator().manual_seed(9), 0)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("keys", [{"autoaugment": "cifar10"}, {"randaugment": 3}])
def test_whole_batch_and_selected_images_give_the_same_pixels(keys):
    """The accelerator's way (every operation on the whole batch, the drawn images kept) and the
    CPU's (only the drawn images computed) give the same images from the same draws."""
    x = images(40, 3, 10, seed=8)
    outs = []
    for select in (True, False):
        strong = BatchStrong(strong_augment(**keys, augment_fill=9))
        strong.select = select
        outs.append(strong(x, torch.Generator().manual_seed(2))[0])
    assert torch.equal(*outs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_host_synchronisation_on_cuda():
    x = images(64, 3, 32).cuda()
    spec = strong_augment(autoaugment="cifar10", cutout=16, cutout_fill="mean")
    t = BatchTransform((0.5,) * 3, (0.25,) * 3, crop_padding=4, hflip=True, strong=spec)
    t(x)  # the tables are copied to the device once, here
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = t(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == (64, 3, 32, 32) and torch.isfinite(out).all()


def test_the_policy_frequencies_match_the_tables():
    """With the batch's own draws (documented order): each sub-policy takes 1/25 of the images,
    its two slots hold its operations at its bins, each applied to the share p of its images;
    signs are fair. RandAugment: its 14 operations (Identity included) uniform, all at bin M.
    Five standard errors."""
    b = 200_000
    g = torch.Generator().manual_seed(4)
    sub = torch.randint(0, 25, (b,), generator=g)
    slots, _ = BatchStrong(strong_augment(autoaugment="cifar10"))._slots(
        b, CPU, torch.Generator().manual_seed(4))
    table = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)._policies
    assert len(table) == 25
    share = torch.bincount(sub, minlength=25).double() / b
    assert torch.all((share - 0.04).abs() < 5 * math.sqrt(0.04 * 0.96 / b))
    for s in range(2):
        names, op, bins, negative, applied = slots[s]
        for k in range(25):
            members = sub == k
            want_op, p, want_bin = table[k][s]
            assert {names[i] for i in op[members].unique().tolist()} == {want_op}
            assert torch.all(bins[members] == (want_bin or 0))
            rate = float(applied[members].float().mean())
            n = int(members.sum())
            assert abs(rate - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12, (k, s)
        assert abs(float(negative.float().mean()) - 0.5) < 5 * math.sqrt(0.25 / b)
    slots, _ = BatchStrong(strong_augment(randaugment=2))._slots(
        b, CPU, torch.Generator().manual_seed(1))
    assert len(slots) == 2
    for names, op, bins, _, applied in slots:
        assert applied is None and names == list(v2.RandAugment._AUGMENTATION_SPACE)
        counts = torch.bincount(op, minlength=14).double() / b
        assert torch.all((counts - 1 / 14).abs() < 5 * math.sqrt((1 / 14) * (13 / 14) / b))
        assert torch.all(bins == 9)


@pytest.mark.parametrize("keys", [{"autoaugment": "cifar10"}, {"randaugment": 2}])
def test_operation_and_magnitude_frequencies_match_torchvisions_own_transform(keys, monkeypatch):
    """torchvision's ``v2.AutoAugment`` / ``v2.RandAugment`` forward, run per image with its
    operation recorded instead of applied, and the batch's draws: every (operation, signed
    magnitude) is applied as often (five standard errors of the difference)."""
    from collections import Counter

    n, size = 20_000, 8
    seen: Counter = Counter()

    def record(self, image, transform_id, magnitude, interpolation, fill):
        seen[(transform_id, round(magnitude, 5))] += 1
        return image

    monkeypatch.setattr(v2.AutoAugment, "_apply_image_or_video_transform", record)
    monkeypatch.setattr(v2.RandAugment, "_apply_image_or_video_transform", record)
    t = (v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10) if "autoaugment" in keys
         else v2.RandAugment(keys["randaugment"]))
    image = torch.zeros(3, size, size, dtype=torch.uint8)
    torch.manual_seed(0)
    for _ in range(n):
        t(image)
    slots, bins_total = BatchStrong(strong_augment(**keys))._slots(
        n, CPU, torch.Generator().manual_seed(1))
    drawn: Counter = Counter()
    for names, op, bins, negative, applied in slots:
        keep = torch.ones(n, dtype=torch.bool) if applied is None else applied
        for k, b_, neg in zip(op[keep].tolist(), bins[keep].tolist(), negative[keep].tolist()):
            m = tv_magnitude(names[k], bins_total, size, size, b_, neg)
            drawn[(names[k], round(m, 5))] += 1
    assert set(seen) == set(drawn)
    for key in seen:
        p, q = seen[key] / n, drawn[key] / n
        pooled = (p + q) / 2
        assert abs(p - q) <= 5 * math.sqrt(2 * pooled * (1 - pooled) / n), (key, p, q)


# ------------------------------------------------------------------------------------ Cutout
def cutout_numpy(height, width, length, centres):
    """The official ``Cutout.__call__`` (uoguelph-mlrg/Cutout 287f934 util/cutout.py; the same in
    ResCom/augment/autoaugment.py) for given centres ``[(y, x), ...]``: 1 = kept."""
    mask = np.ones((height, width), np.float32)
    for y, x in centres:
        y1, y2 = np.clip(y - length // 2, 0, height), np.clip(y + length // 2, 0, height)
        x1, x2 = np.clip(x - length // 2, 0, width), np.clip(x + length // 2, 0, width)
        mask[y1:y2, x1:x2] = 0.0
    return mask


@pytest.mark.parametrize("length,holes", [(16, 1), (5, 2), (4, 3)])
def test_cutout_squares_are_the_official_codes(length, holes):
    b, h, w = 50, 20, 14
    mask = cutout_mask(b, h, w, length, holes, CPU, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    cy = torch.randint(0, h, (holes, b), generator=g)
    cx = torch.randint(0, w, (holes, b), generator=g)
    for i in range(b):
        centres = [(int(cy[k, i]), int(cx[k, i])) for k in range(holes)]
        expected = cutout_numpy(h, w, length, centres) == 0
        assert np.array_equal(mask[i, 0].numpy(), expected)


def test_cutout_hand_cases():
    g = torch.Generator().manual_seed(0)
    # L = 16 on a 5 x 5 image covers everything wherever the centre falls
    assert cutout_mask(10, 5, 5, 16, 1, CPU, g).all()
    # L = 1: y - 0 .. y + 0 is empty in the official code, nothing is cut
    assert not cutout_mask(10, 5, 5, 1, 1, CPU, g).any()
    # L = 3 cuts (3 // 2) * 2 = 2 rows and columns at most: 4 pixels, fewer at the border
    area = cutout_mask(400, 9, 9, 3, 1, CPU, g).flatten(1).sum(1)
    assert area.max() == 4 and set(area.tolist()) <= {1, 2, 4}
    # L = 4, by hand: rows and columns max(y - 2, 0) .. min(y + 2, 9), for the drawn centres
    g = torch.Generator().manual_seed(8)
    mask = cutout_mask(30, 9, 9, 4, 1, CPU, g)
    g = torch.Generator().manual_seed(8)
    cy, cx = torch.randint(0, 9, (1, 30), generator=g), torch.randint(0, 9, (1, 30), generator=g)
    for i in range(30):
        y, x = int(cy[0, i]), int(cx[0, i])
        area = (min(y + 2, 9) - max(y - 2, 0)) * (min(x + 2, 9) - max(x - 2, 0))
        assert int(mask[i].sum()) == area and bool(mask[i, 0, max(y - 2, 0), max(x - 2, 0)])


@pytest.mark.parametrize("fill", ["black", "mean"])
def test_cutout_fill_is_zero_before_or_after_normalising(fill):
    mean, std = (0.25, 0.5, 0.75), (0.5, 0.25, 0.2)
    spec = strong_augment(cutout=6, cutout_fill=fill)
    t = BatchTransform(mean, std, strong=spec, generator=torch.Generator().manual_seed(3))
    x = torch.full((20, 3, 8, 8), 200, dtype=torch.uint8)
    out = t(x)
    holes = cutout_mask(20, 8, 8, 6, 1, CPU, torch.Generator().manual_seed(3)).expand(-1, 3, -1,
                                                                                        -1)
    kept = torch.tensor([(200 / 255 - m) / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
    black = torch.tensor([(0 - m) / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
    inside = torch.zeros(1, 3, 1, 1) if fill == "mean" else black
    expected = torch.where(holes, inside.expand(20, 3, 8, 8), kept.expand(20, 3, 8, 8))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert holes.any() and not holes.all()


# ---------------------------------------------------------------------- the training transform
def test_strong_augmentations_follow_the_crop_and_flip_and_the_generator():
    x = images(16, 3, 8, seed=4)
    spec = strong_augment(autoaugment="cifar10", cutout=4)

    def transform(seed):
        return BatchTransform((0.5,) * 3, (0.25,) * 3, crop_padding=2, hflip=True, strong=spec,
                              generator=torch.Generator().manual_seed(seed))

    t = transform(1)
    assert t.random
    first = t(x)
    assert torch.equal(first, transform(1)(x))  # the same generator state, the same images
    assert not torch.equal(first, t(x))  # its next draws, other images
    # by hand: crop, flip, AutoAugment, the square (black), normalise, with the draws in order
    g = torch.Generator().manual_seed(1)
    offsets = torch.randint(0, 5, (2, 16), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    cropped = pad_crop(x, 2, offsets[0], offsets[1])
    cropped = torch.where(flip.view(16, 1, 1, 1), cropped.flip(3), cropped)
    aug = autoaugment_by_image(cropped, "cifar10", g, 0)
    cy, cx = torch.randint(0, 8, (1, 16), generator=g), torch.randint(0, 8, (1, 16), generator=g)
    for i in range(16):
        aug[i][:, torch.from_numpy(cutout_numpy(8, 8, 4, [(int(cy[0, i]),
                                                           int(cx[0, i]))]) == 0)] = 0
    expected = (aug.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(first, expected, rtol=0, atol=1e-5)


def test_the_global_rng_seeds_the_in_memory_path():
    x = images(8, 3, 8)
    t = BatchTransform((0.5,) * 3, (0.25,) * 3, strong=strong_augment(randaugment=2, cutout=3))
    torch.manual_seed(11)
    a = t(x)
    torch.manual_seed(11)
    assert torch.equal(a, t(x))


def test_no_key_no_change():
    """Without a strong key the bundle's transforms and meta are what they were."""
    bundle = DATASETS.build({"name": "digits_lt"})
    assert bundle.train_transform.strong is None and "autoaugment" not in bundle.meta
    assert not strong_augment(augment_fill=[1, 2, 3]).active


@pytest.mark.parametrize("extra,key", [
    ({"randaugment_magnitude": 20}, "data.randaugment_magnitude=20"),
    ({"cutout_fill": "mean"}, "data.cutout_fill=mean"),
    ({"cutout_holes": 2}, "data.cutout_holes=2"),
    ({"augment_fill": 128, "cutout": 4}, "data.augment_fill=[128]"),
])
def test_a_key_with_nothing_to_act_on_is_a_warning_naming_it(extra, key):
    """Valid, but probably not meant: the trainer prints the bundle's warnings."""
    bundle = DATASETS.build({"name": "digits_lt", **extra})
    assert [w for w in bundle.warnings if w.startswith(key) and "no effect" in w]
    assert not DATASETS.build({"name": "digits_lt"}).warnings


def test_the_recipe_keys_reach_the_transform_and_the_meta():
    bundle = DATASETS.build({"name": "digits_lt", "autoaugment": "cifar10", "cutout": 4,
                             "cutout_fill": "mean", "augment_fill": 128})
    spec = bundle.train_transform.strong
    assert (spec.autoaugment, spec.cutout, spec.cutout_fill, spec.augment_fill) == (
        "cifar10", 4, "mean", (128,))
    assert bundle.eval_transform.strong is None and not bundle.eval_transform.random
    assert bundle.meta["autoaugment"] == "cifar10" and bundle.meta["cutout"] == 4


# ------------------------------------------------------------------------ the streaming path
def test_the_streaming_transform_is_torchvisions_seeded_by_the_image(tree):
    spec = strong_augment(autoaugment="cifar10", cutout=3)
    t = StreamTransform(8, True, color_jitter=0.0, strong=spec)
    plain = StreamTransform(8, True, color_jitter=0.0)
    image = images(3, 3, 20, seed=6)[2]
    a = t(image, torch.Generator().manual_seed(2))
    assert torch.equal(a, t(image, torch.Generator().manual_seed(2)))
    # the same crop and flip as without, then torchvision's AutoAugment under the drawn seed
    g = torch.Generator().manual_seed(2)
    base = plain(image, g)
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=g))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        expected = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)(base)
    y, x = int(torch.randint(0, 8, (1, 1), generator=g)), int(torch.randint(0, 8, (1, 1),
                                                                            generator=g))
    expected[:, torch.from_numpy(cutout_numpy(8, 8, 3, [(y, x)]) == 0)] = 0
    assert torch.equal(a, expected)
    before = torch.random.get_rng_state()
    t(image, torch.Generator().manual_seed(3))
    assert torch.equal(before, torch.random.get_rng_state())  # the global stream untouched


def test_cutout_fill_mean_is_refused_on_the_streaming_path(tree):
    raises(ConfigError, lambda: DATASETS.build(txt_cfg(tree, path="stream", cutout=4,
                                                       cutout_fill="mean")),
           "data.cutout_fill", "in-memory")
    raises(ConfigError, lambda: ImageStrong(strong_augment(cutout=4, cutout_fill="mean")),
           "cutout_fill")


@pytest.mark.parametrize("path", ["memory", "stream"])
def test_fetch_draws_a_second_independent_view(tree, path):
    """``context.fetch(batch.index)`` applies the training transform again with fresh draws:
    the same images, other augmentations (ResCom's two views)."""
    bundle = DATASETS.build(txt_cfg(tree, path=path, image_size=8, randaugment=2,
                                    randaugment_magnitude=15, cutout=4))
    data = MemoryPath(bundle, CPU) if path == "memory" else StreamPath(bundle, CPU, seed=1)
    index = torch.tensor([0, 1, 2, 3, 4, 5])
    torch.manual_seed(0)
    (x, y), = list(data.epoch(index, np.arange(6), 6, (0, 0)))
    v1, y1 = data.fetch(index)
    v2_, y2 = data.fetch(index)
    assert torch.equal(y, y1) and torch.equal(y1, y2)
    for a, b in ((x, v1), (v1, v2_), (x, v2_)):
        differs = (a != b).flatten(1).any(1)
        assert differs.float().mean() >= 0.5  # per image, other draws
    # without strong augmentation or crop, the fetched view is the evaluation image
    plain = DATASETS.build(txt_cfg(tree, path="memory", image_size=8, crop_padding=0,
                                   hflip=False))
    px, _ = MemoryPath(plain, CPU).fetch(index)
    assert torch.equal(px, plain.eval_transform(plain.train.images[index]))


# -------------------------------------------------------------------------------- bad keys
@pytest.mark.parametrize("extra,key", [
    ({"autoaugment": "cifar"}, "data.autoaugment"),
    ({"autoaugment": True}, "data.autoaugment"),
    ({"randaugment": -1}, "data.randaugment"),
    ({"randaugment": 1.5}, "data.randaugment"),
    ({"randaugment": 2, "autoaugment": "cifar10"}, "data.randaugment"),
    ({"randaugment": 2, "randaugment_magnitude": 31}, "data.randaugment_magnitude"),
    ({"cutout": -2}, "data.cutout"),
    ({"cutout": 4, "cutout_holes": 0}, "data.cutout_holes"),
    ({"cutout": 4, "cutout_fill": "grey"}, "data.cutout_fill"),
    ({"autoaugment": "cifar10", "augment_fill": 256}, "data.augment_fill"),
    ({"autoaugment": "cifar10", "augment_fill": [1, 2, 3]}, "data.augment_fill"),
])
def test_bad_keys_are_one_line_naming_the_key(extra, key):
    with pytest.raises(ConfigError) as err:
        DATASETS.build({"name": "digits_lt", **extra}, key="data")
    assert str(err.value).startswith(key + ":") and "\n" not in str(err.value)


def test_a_bad_key_stops_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="data.cutout_fill"):
        train(resolve(digits(data={"cutout": 4, "cutout_fill": "noise"})), tmp_path / "run",
              quiet=True)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- end to end
def test_a_digits_run_with_autoaugment_and_cutout_resumes_exactly(tmp_path):
    recipe = resolve(digits(data={"autoaugment": "cifar10", "cutout": 4, "crop_padding": 1},
                            train={"epochs": 2}))
    full = train(recipe, tmp_path / "full", quiet=True)
    assert full["data"]["autoaugment"] == "cifar10" and full["top1"] > 15.0  # chance: 10 %
    assert_same_training(resumed_run(recipe, tmp_path / "cut", stop_after=1), full)


def test_a_streamed_run_with_randaugment_resumes_exactly_with_any_workers(tree, tmp_path):
    def recipe(workers):
        return resolve({
            "data": txt_cfg(tree, path="stream", image_size=8, mean=[0.5] * 3, std=[0.25] * 3,
                            randaugment=2, cutout=3),
            "model": {"name": "digits_cnn"}, "optim": {"lr": 0.05},
            "train": {"epochs": 2, "batch_size": 4, "seed": 3, "workers": workers},
            "eval": {"many_threshold": 4, "few_threshold": 3}})
    full = train(recipe(0), tmp_path / "full", quiet=True)
    assert full["data"]["randaugment"] == 2
    assert_same_training(train(recipe(1), tmp_path / "one", quiet=True), full)
    assert_same_training(resumed_run(recipe(0), tmp_path / "cut", stop_after=0), full)


def test_the_step_cost_benchmark_times_each_strong_augmentation(tmp_path):
    """benchmarks/throughput.py --strong times the bare loop with each strong augmentation; one
    step each here, the figures are for the benchmark."""
    import runpy

    from conftest import ROOT
    from lttoolbox.engine.trainer import Trainer

    script = runpy.run_path(str(ROOT / "benchmarks" / "throughput.py"))
    recipe = resolve(digits())
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    figures = script["time_strong"](trainer, recipe, 1, 1)
    assert set(figures) == {"plain", *script["STRONG_TIMED"]}
    assert all(ips > 0 and ms > 0 for ips, ms in figures.values())
    for keys in script["STRONG_TIMED"].values():
        assert strong_augment(**keys).active  # each entry is a valid set of data keys


@pytest.mark.long
def test_two_processes_train_with_strong_augmentations(tmp_path):
    """Each rank draws its images' augmentations from its own stream (rank 0 the run's, the
    others reseeded per epoch by (seed, phase, epoch, rank)), as the crop and flip: two processes
    train, and the one run directory records the keys."""
    from test_distributed import DIGITS as DDP_DIGITS
    from test_distributed import run_ranks

    recipe = resolve({**DDP_DIGITS, "data": {**DDP_DIGITS["data"], "autoaugment": "cifar10",
                                             "cutout": 4},
                      "train": {**DDP_DIGITS["train"], "epochs": 1}})
    two = run_ranks(tmp_path, recipe, tmp_path / "two")
    assert two["processes"] == 2 and two["data"]["autoaugment"] == "cifar10"
    assert np.isfinite(two["history"][0]["loss"])
    assert sum(sum(row) for row in two["confusion_matrix"]) == 500
