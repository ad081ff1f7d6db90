"""CAM-based re-sampling: the maps, the boxes, the pasted foreground, the class totals, the
samplers over the grown set, and resume across the generation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import digits
from lttoolbox.api import Context
from lttoolbox.augment.cam import (CAMResample, class_activation_maps, compose_moved_foreground,
                                   foreground_boxes, move_matrices)
from lttoolbox.engine import train
from lttoolbox.errors import LTError
from lttoolbox.recipe import resolve
from lttoolbox.registry import SAMPLERS


class FeatureIsInput(nn.Module):
    """A hand-built model: its last feature map is the input itself (K = channels)."""

    num_classes = 2

    def __init__(self, weight):
        super().__init__()
        self.head = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))

    def forward_hooked(self, batch, hooks):
        h, batch = hooks["layer"](batch.x, batch)
        return self.head(h.mean(dim=(2, 3))), batch


def test_cam_of_a_model_whose_answer_is_known():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 6, 6))
    weight = np.array([[1.0, -2.0], [0.5, 3.0]])
    labels = np.array([0, 1, 0])
    cam = class_activation_maps(FeatureIsInput(weight), torch.as_tensor(x, dtype=torch.float32),
                                torch.as_tensor(labels), "layer").numpy()
    for i, y in enumerate(labels):
        raw = weight[y, 0] * x[i, 0] + weight[y, 1] * x[i, 1]  # sum_k w_yk A_k
        expected = (raw - raw.min()) / (raw.max() - raw.min())
        assert np.allclose(cam[i], expected, atol=1e-5)


def test_foreground_boxes_are_the_true_boxes():
    mask = torch.zeros(3, 8, 8, dtype=torch.bool)
    mask[0, 2:5, 1:7] = True
    mask[1, 3, 3] = True
    mask[1, 6, 1] = True          # two separate pixels: the box spans both
    boxes = foreground_boxes(mask).tolist()
    assert boxes[0] == [2, 1, 4, 6] and boxes[1] == [3, 1, 6, 3]
    assert boxes[2] == [0, 0, 7, 7]  # an empty mask: the whole image


def square_case():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) % 251
    images = images.to(torch.uint8)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, 1:4, 2:5] = True
    return images, mask


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_the_moved_foreground_lands_where_the_mask_lands(kind):
    images, mask = square_case()
    gen = torch.Generator().manual_seed(kind)
    theta = move_matrices(torch.full((2,), kind), foreground_boxes(mask), 8, 8, gen)
    out, written = compose_moved_foreground(images, mask, theta, "copy")
    moved = written  # with ``copy`` only the moved foreground is written
    # outside the moved foreground: the image unchanged
    assert torch.equal(out.permute(0, 2, 3, 1)[~moved], images.permute(0, 2, 3, 1)[~moved])
    if kind == 0:  # a mirror image of the foreground, pixel for pixel
        assert torch.equal(moved, mask.flip(2))
        assert torch.equal(out.permute(0, 2, 3, 1)[moved],
                           images.flip(3).permute(0, 2, 3, 1)[moved])
    if kind == 1:  # a shift in whole pixels that keeps the whole box inside
        for i in range(2):
            dx = round(-float(theta[i, 0, 2]) * 8 / 2)
            dy = round(-float(theta[i, 1, 2]) * 8 / 2)
            assert torch.equal(moved[i], torch.roll(mask[i], (dy, dx), dims=(0, 1)))
            ys, xs = torch.nonzero(mask[i], as_tuple=True)
            assert torch.equal(out[i][:, ys + dy, xs + dx], images[i][:, ys, xs])
    if kind == 2:  # rotation within 45 degrees and scale within 0.8-1.2 about the box centre
        area = int(mask[0].sum())
        assert all(0.4 * area <= int(m.sum()) <= 1.6 * area for m in moved)
    # ``move`` writes the same moved foreground, and more
    moved_out, union = compose_moved_foreground(images, mask, theta)
    assert torch.equal(moved_out.permute(0, 2, 3, 1)[moved], out.permute(0, 2, 3, 1)[moved])
    assert torch.equal(union & moved, moved)


def reference_composition(image: np.ndarray, fg: np.ndarray, dy: int, dx: int, flip: bool,
                          compose: str) -> np.ndarray:
    """Bag of Tricks' composition (cam_based_sampling.py 117-121, 151-155, 163-167 at ce7859a)
    for a flip or a whole-pixel shift, written out pixel by pixel: T is the transformed image
    (None where it maps from outside the image), P the moved foreground; ``move`` writes T over
    fg | P, ``copy`` over P only. (Their code composes by non-zero values; this image has no
    zero pixel inside the image, so the two agree except where T comes from outside.)"""
    c, h, w = image.shape
    out = image.copy()
    moved_fg = np.zeros_like(fg)
    for y in range(h):
        for x in range(w):
            sy, sx = (y, w - 1 - x) if flip else (y - dy, x - dx)
            if 0 <= sy < h and 0 <= sx < w:
                moved_fg[y, x] = fg[sy, sx]
    for y in range(h):
        for x in range(w):
            sy, sx = (y, w - 1 - x) if flip else (y - dy, x - dx)
            inside = 0 <= sy < h and 0 <= sx < w
            region = moved_fg[y, x] or (compose == "move" and fg[y, x])
            if region and inside:
                out[:, y, x] = image[:, sy, sx]
    return out


@pytest.mark.parametrize("compose", ["move", "copy"])
@pytest.mark.parametrize("flip, dy, dx", [(True, 0, 0), (False, 2, 1), (False, -3, 2)])
def test_the_composition_is_bag_of_tricks_by_default(compose, flip, dy, dx):
    """A 2-channel 6x6 image with an L-shaped object: the output is computed here independently,
    pixel by pixel. With ``move`` the object's old place shows the transformed image (the object
    moves); with ``copy`` it keeps the object (it appears twice). The (-3, 2) shift moves part
    of the old place's source outside the image, where the original stays."""
    rng = np.random.default_rng(3)
    image = rng.integers(1, 256, size=(2, 6, 6)).astype(np.uint8)
    fg = np.zeros((6, 6), dtype=bool)
    fg[3, 1:4] = True
    fg[4:6, 1] = True
    h = w = 6
    theta = torch.tensor([[[-1.0 if flip else 1.0, 0.0, 0.0 if flip else -2 * dx / w],
                           [0.0, 1.0, -2 * dy / h]]])
    out, _ = compose_moved_foreground(torch.from_numpy(image)[None], torch.from_numpy(fg)[None],
                                      theta, compose)
    expected = reference_composition(image, fg, dy, dx, flip, compose)
    np.testing.assert_array_equal(out[0].numpy(), expected)
    other = compose_moved_foreground(torch.from_numpy(image)[None], torch.from_numpy(fg)[None],
                                     theta, "copy" if compose == "move" else "move")[0]
    # the two differ where the old place has a transformed pixel to show: here, unless the
    # source of the whole old place lies outside the image (the (-3, 2) shift)
    assert torch.equal(other, out) is (not flip and dy == -3)


def test_compose_is_checked():
    from lttoolbox.errors import ConfigError
    with pytest.raises(ConfigError, match="compose must be one of move, copy"):
        CAMResample(compose="paste")


def test_classes_are_topped_up_to_the_target():
    part = CAMResample(context=Context(seed=0, point_names=("input", "layer", "features")))
    assert part.additions([50, 20, 5]) == [5, 35, 50]      # to n_max + n_min = 55
    assert CAMResample(target=30).additions([50, 20, 5]) == [0, 10, 25]


DIGITS = digits(phases=[{"name": "joint"},
                        {"name": "cam", "augment": [{"name": "cam_resample"}],
                         "sampler": {"name": "class_balanced"}, "train": {"epochs": 2}}])


@pytest.fixture(scope="module")
def cam_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cam") / "run"
    results = train(resolve(DIGITS), out, quiet=True)
    return out, results


def test_generation_tops_every_class_up_and_is_stored(cam_run):
    out, results = cam_run
    generated = torch.load(out / "generated-cam.pt")
    counts = np.asarray(results["train_class_counts"])   # the original long tail
    target = counts.max() + counts.min()
    grown = counts + np.bincount(generated["labels"].numpy(), minlength=10)
    assert grown.tolist() == [target] * 10
    assert results["phases"][1]["generated"]["images"] == int(target * 10 - counts.sum())
    assert generated["images"].dtype == torch.uint8


@pytest.mark.parametrize("sampler", ["class_balanced", "square_root", "progressive"])
def test_every_generated_image_is_drawn_by_the_samplers(cam_run, sampler):
    out, results = cam_run
    from lttoolbox.registry import DATASETS
    original = DATASETS.build({"name": "digits_lt", "imbalance_ratio": 10}).train.labels.numpy()
    extra = torch.load(out / "generated-cam.pt")["labels"].numpy()
    labels = np.concatenate([original, extra])
    built = SAMPLERS.build({"name": sampler}, labels=labels, num_classes=10, seed=0,
                           total_epochs=60)
    seen = set()
    for epoch in range(60):
        built.set_epoch(epoch)
        seen |= set(built.indices().tolist())
    assert set(range(len(original), len(labels))) <= seen


@pytest.mark.long
def test_resume_after_the_generation_uses_the_same_images(tmp_path, cam_run):
    from test_engine import StopAfter

    _, full = cam_run
    # StopAfter counts the generation's progress line too: 4 stops after the cam phase's first
    # epoch was checkpointed, so resuming replays the phase's entry
    with pytest.raises(KeyboardInterrupt):
        train(resolve(DIGITS), tmp_path / "cut", logger=StopAfter(4))
    stored = (tmp_path / "cut" / "generated-cam.pt").read_bytes()
    resumed = train(resolve(DIGITS), tmp_path / "cut", resume=True, quiet=True)
    assert resumed["per_class_acc"] == full["per_class_acc"]
    assert (tmp_path / "cut" / "generated-cam.pt").read_bytes() == stored
    with pytest.raises(KeyboardInterrupt):
        train(resolve(DIGITS), tmp_path / "gone", logger=StopAfter(4))
    (tmp_path / "gone" / "generated-cam.pt").unlink()
    with pytest.raises(LTError, match="cannot be made again exactly"):
        train(resolve(DIGITS), tmp_path / "gone", resume=True, quiet=True)


def test_cam_resample_parameters_are_checked():
    from lttoolbox.errors import ConfigError
    with pytest.raises(ConfigError, match="transforms"):
        CAMResample(transforms=["shear"])
    with pytest.raises(ConfigError, match="target"):
        CAMResample(target=0)
    assert math.isclose(CAMResample().threshold, 0.75)


@pytest.mark.long
@pytest.mark.parametrize("name", ["cam_drs", "bag_of_tricks"])
def test_cam_recipes_run(tmp_path, name):
    from pathlib import Path

    from lttoolbox.recipe import read_recipe
    root = Path(__file__).resolve().parents[1] / "configs"
    recipe = read_recipe(root / "cifar10_lt" / f"{name}.yaml")
    recipe.update(data={"name": "digits_lt"}, model={"name": "digits_cnn"},
                  schedule={**recipe["schedule"], "warmup_epochs": 0, "milestones": []})
    for phase in recipe["phases"]:
        phase["train"]["epochs"] = 1
        phase.setdefault("schedule", {})["milestones"] = []
    results = train(resolve(recipe), tmp_path / name, quiet=True)
    generated = [s for s in results["phases"] if "generated" in s]
    assert len(generated) == 1 and generated[0]["name"] == "cam_drs"
    assert generated[0]["generated"]["images"] > 0
    assert len(results["history"]) == len(recipe["phases"])

