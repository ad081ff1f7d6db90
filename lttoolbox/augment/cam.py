"""CAM-based re-sampling (Bag of Tricks, Zhang et al., AAAI 2021, "data augmentation for
re-sampling"): new training images for the classes that have few, made from their own images.

For each image to generate, a training image of the class is drawn; its class activation map
for its true class (Zhou et al., CVPR 2016: the classifier row of the class times the last
feature map before pooling, upsampled to the image) splits foreground (the map at or above
``threshold`` times its mean; 0.75 in the official code) from background; the image is
transformed by one of a horizontal flip, a translation that keeps the foreground's bounding box
inside the image, or a rotation (uniform in [-45, 45) degrees) with a scaling (uniform in
[0.8, 1.2)) about the box's centre, each with probability 1/3, and the transformed image is
written over the union of the original and the moved foreground masks, so the object moves to
its new place (``compose: move``, the official code; ``compose: copy`` pastes the moved
foreground onto the unchanged image instead, so the object appears twice). Classes are topped
up to ``n_max + n_min`` images (the official code's CIFAR rule) or to ``target``.

The generated images join the training set for the phase and every later one: the samplers, the
losses' class counts and the data path see them (``before_phase``: the images are stored in the
run directory and the trainer rebuilds the phase on the grown set), so a
class-balanced, square-root or progressive sampler draws them like any other image.

Differences from the official code (``lib/utils/cam_based_sampling.py`` at ce7859a, unchanged
since 66c2087) that we know of; the list is what a line-by-line reading found, not a proof that
nothing else differs. Deliberate fixes:

* the CAM is computed on the un-augmented image it is composed from; the official code computes
  it on a randomly cropped and flipped view of the image (``_get_trans_image``) and uses it by
  the original's coordinates;
* the foreground's bounding box is the true one (first to last foreground row and column); the
  official loops stop at the second foreground row and column;
* the transformed image is written wherever it is to be written, also where a pixel's value is
  0; the official code composes by ``np.where`` on non-zero values, so black pixels of the
  transformed image let the original show through (the out-of-image padding does the same there,
  and that part is kept: see :func:`compose_moved_foreground`);
* generated images are ordinary training images, reachable by every sampler.

Other differences:

* the angle and the scale are drawn continuously; the official code draws whole degrees
  (``np.random.randint(-45, 45)``) and whole percents (``randint(80, 120) / 100``);
* the moved mask is the mask moved by nearest-neighbour sampling; the official code takes every
  pixel where the bilinear warp of the masked CAM is non-zero, which for a rotation is up to a
  pixel wider at the mask's edge;
* the map is upsampled, then min-max scaled, in floating point; the official code min-max
  scales the feature-map-sized map, quantises it to 0-255, then resizes it with OpenCV before
  thresholding at 3/4 of its mean.

Everything is batched on the training device with one generator seeded by (seed, phase), so the
images do not depend on anything else; the trainer also stores them in the run directory, so a
resumed run uses exactly the same ones.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..api import Component, Context
from ..errors import ConfigError
from ..losses.weights import check_number
from ..registry import AUGMENTS

TRANSFORMS = ("flip", "translate", "rotate_scale")


def class_activation_maps(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor,
                          feature_point: str) -> torch.Tensor:
    """CAM of each image for its own class, upsampled to the image, min-max scaled to [0, 1].

    Args:
        model: An ``LTModel`` with a head that has ``weight`` rows per class.
        x: Normalised images ``(B, C, H, W)``.
        labels: The class whose map is wanted, ``(B,)``.
        feature_point: The model point whose output is the last feature map before pooling.
    """
    from ..batch import Batch

    captured = {}

    def grab(h, batch):
        captured["h"] = h
        return h, batch

    with torch.no_grad():
        model.forward_hooked(Batch.plain(x, labels), {feature_point: grab})
        feats = captured["h"].float()                          # (B, K, h, w)
        weight = model.head.weight.float()[labels]             # (B, K)
        cam = torch.einsum("bk,bkhw->bhw", weight, feats)
        cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear",
                            align_corners=False)[:, 0]
        low = cam.flatten(1).min(dim=1).values[:, None, None]
        high = cam.flatten(1).max(dim=1).values[:, None, None]
        return (cam - low) / (high - low).clamp_min(1e-12)


def foreground_boxes(mask: torch.Tensor) -> torch.Tensor:
    """The true bounding box ``(top, left, bottom, right)`` (inclusive) of each mask ``(B, H, W)``;
    an empty mask gives the whole image."""
    b, h, w = mask.shape
    rows, cols = mask.any(dim=2), mask.any(dim=1)
    idx_h = torch.arange(h, device=mask.device)
    idx_w = torch.arange(w, device=mask.device)
    top = torch.where(rows, idx_h, h).min(dim=1).values
    bottom = torch.where(rows, idx_h, -1).max(dim=1).values
    left = torch.where(cols, idx_w, w).min(dim=1).values
    right = torch.where(cols, idx_w, -1).max(dim=1).values
    empty = ~rows.any(dim=1)
    top, left = torch.where(empty, 0, top), torch.where(empty, 0, left)
    bottom, right = torch.where(empty, h - 1, bottom), torch.where(empty, w - 1, right)
    return torch.stack([top, left, bottom, right], dim=1)


def move_matrices(kind: torch.Tensor, boxes: torch.Tensor, h: int, w: int,
                  generator: torch.Generator) -> torch.Tensor:
    """The inverse affine map (output -> input, ``F.affine_grid``'s convention, normalised
    coordinates) of each sample's move: 0 flip, 1 translate, 2 rotate and scale."""
    b = kind.shape[0]
    device = boxes.device
    rand = torch.rand(b, 4, generator=generator, device=device)
    top, left, bottom, right = (boxes[:, i].float() for i in range(4))
    # translation in pixels that keeps the box inside: dx in [-left, w - 1 - right]
    dx = (-left + rand[:, 0] * (w - 1 - right + left + 1)).floor()
    dy = (-top + rand[:, 1] * (h - 1 - bottom + top + 1)).floor()
    angle = (rand[:, 2] * 90.0 - 45.0) * math.pi / 180.0
    scale = 0.8 + rand[:, 3] * 0.4
    # pixel -> normalised coordinates (align_corners=False): u = (2 x + 1) / w - 1
    cx = (2 * (left + right) / 2 + 1) / w - 1
    cy = (2 * (top + bottom) / 2 + 1) / h - 1
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    flip, shift, turn = kind == 0, kind == 1, kind == 2
    theta[flip, 0, 0] = -1.0
    theta[shift, 0, 2] = -2 * dx[shift] / w
    theta[shift, 1, 2] = -2 * dy[shift] / h
    # rotate by a and scale by s about c; the inverse: p_in = c + R(-a) (p_out - c) / s
    cos, sin = torch.cos(-angle[turn]) / scale[turn], torch.sin(-angle[turn]) / scale[turn]
    theta[turn, 0, 0], theta[turn, 0, 1] = cos, -sin
    theta[turn, 1, 0], theta[turn, 1, 1] = sin, cos
    theta[turn, 0, 2] = cx[turn] - cos * cx[turn] + sin * cy[turn]
    theta[turn, 1, 2] = cy[turn] - sin * cx[turn] - cos * cy[turn]
    return theta


COMPOSITIONS = ("move", "copy")


def compose_moved_foreground(images: torch.Tensor, mask: torch.Tensor, theta: torch.Tensor,
                             compose: str = "move") -> tuple[torch.Tensor, torch.Tensor]:
    """Each uint8 image with its foreground (``mask``) moved by ``theta``.

    ``T`` is the whole image transformed by ``theta`` and ``P`` the moved mask (where the
    foreground lands). ``compose``:

    * ``move`` (Bag of Tricks' code, ``lib/utils/cam_based_sampling.py`` lines 117-121, 151-155
      and 163-167 at ce7859a): ``T`` is written over the union of the original and the moved
      foreground masks, ``mask | P``, so the object leaves its old place (which shows what the
      transform brought there) and appears at the new one. Where ``T`` has no content (the
      transform maps the pixel from outside the image) the original stays, as in the reference,
      whose zero padding leaves the original visible there.
    * ``copy``: ``T`` is written over ``P`` only, pasted onto the unchanged image, so the object
      appears twice (its old place is untouched).

    Returns:
        ``(images, written)``: the new images and the pixels where ``T`` was written.

    Example:
        >>> img = torch.tensor([[[[0, 9, 0, 0]]]], dtype=torch.uint8)   # an object at x = 1
        >>> mask = img[:, 0] > 0
        >>> flip = torch.tensor([[[-1.0, 0, 0], [0, 1, 0]]])
        >>> compose_moved_foreground(img, mask, flip)[0].flatten().tolist()
        [0, 0, 9, 0]
        >>> compose_moved_foreground(img, mask, flip, "copy")[0].flatten().tolist()
        [0, 9, 9, 0]
    """
    if compose not in COMPOSITIONS:
        raise ConfigError(f"compose must be one of {', '.join(COMPOSITIONS)}, got {compose!r}")
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    moved_mask = F.grid_sample(mask[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                               align_corners=False)[:, 0] > 0.5
    if compose == "copy":
        written = moved_mask
    else:
        inside = F.grid_sample(torch.ones_like(mask[:, None], dtype=torch.float32), grid,
                               mode="nearest", padding_mode="zeros",
                               align_corners=False)[:, 0] > 0.5
        written = (mask | moved_mask) & inside
    out = torch.where(written[:, None], moved.round().clamp(0, 255).to(torch.uint8), images)
    return out, written


@AUGMENTS.register("cam_resample")
class CAMResample(Component):
    """CAM-based re-sampling: tops classes up with CAM-guided generated images at the start of
    its phase (see the module docstring).

    Args:
        target: ``max_plus_min`` (every class to ``n_max + n_min``, the official CIFAR rule), or
            an integer (every class below it topped up to it).
        threshold: Foreground is the CAM at or above ``threshold`` times its mean (0.75); at
            most 1, which keeps every map's maximum in the foreground.
        transforms: The moves drawn from, uniformly (``flip``, ``translate``,
            ``rotate_scale``: all three, as the official code).
        compose: ``move`` (the official code: the transformed image is written over the
            original and the moved foreground masks, so the object moves) or ``copy`` (the moved
            foreground pasted onto the unchanged image, so the object appears twice); see
            :func:`compose_moved_foreground`.
        batch_size: Images generated per batch on the device.
        context: From the trainer: its ``seed`` seeds the generator (with the phase), and the
            feature map is the last of its ``feature_maps`` (the model's; without them, the
            point before ``features`` among its ``point_names``). A model without one is
            refused.

    Recipe (the second phase of a two-phase recipe)::

        phases:
          - name: joint
          - name: cam_drs
            augment: [{name: cam_resample}]
            sampler: {name: class_balanced}

    Example:
        >>> import torch
        >>> from lttoolbox.api import Context
        >>> from lttoolbox.augment import CAMResample
        >>> from lttoolbox.models import DigitsCNN
        >>> aug = CAMResample(target=100)
        >>> aug.adds_images, aug.reads_trained_model, aug.mixes, aug.points()
        (True, True, False, ())
        >>> aug.additions([120, 40, 7]), CAMResample().additions([500, 100, 20])  # to 100; to 520
        ([0, 60, 93], [20, 420, 500])
        >>> _ = torch.manual_seed(0)
        >>> model = DigitsCNN(num_classes=2)  # in a run: the model trained so far
        >>> aug = CAMResample(context=Context(point_names=model.point_names))
        >>> aug.feature_point  # the last feature map before pooling
        'layer2'
        >>> images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
        >>> out = aug.prepare(model, images, torch.tensor([0, 0, 0, 0, 1]),
        ...                   transform=lambda x: x.float() / 255, phase_index=0)
        >>> out["images"].dtype, tuple(out["images"].shape), out["labels"].tolist()  # to 4 + 1 each
        (torch.uint8, (5, 1, 8, 8), [0, 1, 1, 1, 1])
    """

    adds_images = True  # at its phase's start; it does not act inside the model (no points)
    reads_trained_model = True  # the maps come from the classifier trained so far

    def __init__(self, target: str | int = "max_plus_min", threshold: float = 0.75,
                 transforms: Sequence[str] = TRANSFORMS, compose: str = "move",
                 batch_size: int = 512, *, context: Context | None = None):
        super().__init__(context=context)
        if target != "max_plus_min" and (isinstance(target, bool) or not isinstance(target, int)
                                         or target < 1):
            raise ConfigError(f"target must be 'max_plus_min' or a positive integer, got "
                              f"{target!r}")
        self.target = target
        self.threshold = check_number("threshold", threshold, 0.0)
        if self.threshold > 1:  # the map is scaled to [0, 1]: its maximum, 1, is >= its mean
            raise ConfigError(f"threshold must lie in [0, 1], got {threshold!r}: the foreground is "
                              f"the map at or above threshold x its mean, and the map's maximum is "
                              f"1, so above 1 every map whose mean exceeds 1/threshold has none "
                              f"(an image would be pasted onto itself unchanged)")
        moves = [transforms] if isinstance(transforms, str) else transforms  # one move: a name
        if (not isinstance(moves, (list, tuple)) or not moves
                or any(t not in TRANSFORMS for t in moves)):
            raise ConfigError(f"transforms must be a non-empty list of {', '.join(TRANSFORMS)}, "
                              f"got {transforms!r}")
        self.transforms = [TRANSFORMS.index(t) for t in moves]
        if compose not in COMPOSITIONS:
            raise ConfigError(f"compose must be one of {', '.join(COMPOSITIONS)}, got "
                              f"{compose!r}")
        self.compose = compose
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.seed = self.context.seed
        names = list(self.context.point_names or ())
        maps = self.context.feature_maps
        if maps is not None and not maps:
            raise ConfigError("cam_resample reads class activation maps (Zhou et al. 2016) from "
                              "a spatial map that the model's features average, and this model "
                              "has none (a vision transformer's points carry tokens; some CNNs "
                              "normalise or project after pooling); use a model with one, e.g. "
                              "a ResNet")
        if maps:
            self.feature_point = maps[-1]
        elif names and "features" in names and names.index("features") > 0:
            self.feature_point = names[names.index("features") - 1]
        elif names:
            self.feature_point = names[-1]
        else:
            self.feature_point = None

    def before_phase(self, events) -> None:
        """Generate the images once (stored in the run directory, so a resumed run adds the very
        same ones) and add them to the training set."""
        def make() -> dict:
            start = time.perf_counter()
            counts = np.bincount(events.train_labels(), minlength=events.model.num_classes)
            total = sum(self.additions(counts))
            events.log.start_epoch(f"{events.name}: generating {total:,} images", total)
            out = self.prepare(events.model, events.images, events.labels,
                               events.eval_transform, events.index, progress=events.log.advance)
            events.log.end_epoch(f"{events.name}: generated {total:,} images in "
                                 f"{time.perf_counter() - start:.1f} s")
            return {"images": out["images"].cpu(), "labels": out["labels"].cpu(),
                    "seconds": round(time.perf_counter() - start, 2)}

        extra = events.artifact("generated", make)
        events.add_training_images(extra["images"], extra["labels"], extra.get("seconds"))

    def additions(self, counts: Sequence[int]) -> list[int]:
        """Images to generate per class."""
        counts = list(counts)
        goal = max(counts) + min(counts) if self.target == "max_plus_min" else self.target
        return [max(0, goal - n) for n in counts]

    def prepare(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                transform: Callable[[torch.Tensor], torch.Tensor], phase_index: int,
                progress: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
        """Generate the images: ``{"images": uint8 (N, C, H, W), "labels": (N,)}`` on the
        images' device (``images`` and ``labels`` are the current training set)."""
        if self.feature_point is None:
            raise ConfigError("cam_resample needs the model's point names (the trainer passes "
                              "them)")
        device = images.device
        generator = torch.Generator(device=device)
        generator.manual_seed(int(np.random.SeedSequence([self.seed, phase_index, 0xCA]).
                                  generate_state(1)[0]))
        counts = torch.bincount(labels, minlength=model.num_classes).tolist()
        todo = self.additions(counts)
        # the image each generated one is made from: uniform within its class
        bases, wanted = [], []
        for c, n in enumerate(todo):
            if n:
                members = torch.nonzero(labels == c).flatten()
                pick = torch.randint(len(members), (n,), generator=generator, device=device)
                bases.append(members[pick])
                wanted.append(torch.full((n,), c, device=device, dtype=torch.long))
        bases = torch.cat(bases) if bases else labels[:0]
        wanted = torch.cat(wanted) if wanted else labels[:0]
        out_images, out_labels = [], []
        was_training = model.training
        model.eval()
        try:
            for start in range(0, wanted.numel(), self.batch_size):
                cls = wanted[start:start + self.batch_size]
                x = images[bases[start:start + self.batch_size]]
                cam = class_activation_maps(model, transform(x), cls, self.feature_point)
                mean = cam.flatten(1).mean(dim=1)[:, None, None]
                mask = cam >= self.threshold * mean
                choice = torch.tensor(self.transforms, device=device)[torch.randint(
                    len(self.transforms), (len(cls),), generator=generator, device=device)]
                theta = move_matrices(choice, foreground_boxes(mask), x.shape[2], x.shape[3],
                                      generator)
                new, _ = compose_moved_foreground(x, mask, theta, self.compose)
                out_images.append(new)
                out_labels.append(cls)
                progress(len(cls))
        finally:
            model.train(was_training)
        if not out_images:
            return {"images": images[:0], "labels": labels[:0]}
        return {"images": torch.cat(out_images), "labels": torch.cat(out_labels)}
