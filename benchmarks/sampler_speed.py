"""Time to draw one epoch of every sampler at iNaturalist 2018 scale.

iNaturalist 2018 has 437,513 training images in 8,142 classes (1,000 down to 2 images per class);
the synthetic labels here have the same size, class count and extremes (see
:func:`inaturalist_like_labels`). Prints the construction time and the median time
to draw one epoch (``set_epoch`` + ``indices()``) for each registered sampler.

Usage:
    python benchmarks/sampler_speed.py [--repeats 5] [--world-size 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import lttoolbox.samplers  # noqa: F401  (registers the samplers)
from lttoolbox.registry import SAMPLERS

NUM_IMAGES, NUM_CLASSES, N_MAX, N_MIN = 437_513, 8_142, 1_000, 2


def inaturalist_like_labels(seed: int = 0) -> np.ndarray:
    """Shuffled long-tailed labels with iNaturalist 2018's size, class count and extremes.

    The profile n_j = n_max * (n_min / n_max)^(x_j^b), x_j = j / (C - 1), falls from n_max to
    n_min; ``b`` (found by bisection) makes it fall fast enough for the real mean of about 54
    images per class. Rounding leaves the total a little above N, so one image is taken from that
    many mid-sized classes.
    """
    j = np.arange(NUM_CLASSES)
    x = j / (NUM_CLASSES - 1)

    def profile(b: float) -> np.ndarray:
        return np.ceil(N_MAX * (N_MIN / N_MAX) ** (x ** b)).astype(np.int64)

    lo, hi = 1e-6, 1.0  # the total grows with b
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if profile(mid).sum() > NUM_IMAGES else (mid, hi)
    counts = profile(hi)
    excess = int(counts.sum() - NUM_IMAGES)
    middle = np.flatnonzero((counts > N_MIN + 1) & (counts < N_MAX))
    counts[middle[:excess]] -= 1
    assert counts.sum() == NUM_IMAGES and counts.min() == N_MIN and counts.max() == N_MAX
    labels = np.repeat(j, counts)
    np.random.default_rng(seed).shuffle(labels)
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="epochs timed per sampler")
    parser.add_argument("--world-size", type=int, default=1, help="time rank 0 of this many")
    args = parser.parse_args()

    labels = inaturalist_like_labels()
    counts = np.bincount(labels)
    print(f"labels: N={labels.size:,}  C={counts.size:,}  n_max={counts.max()}  "
          f"n_min={counts.min()}  world_size={args.world_size}")
    print(f"{'sampler':<20}{'build (s)':>11}{'epoch (s)':>11}{'epoch length':>15}")
    for name in SAMPLERS.names():
        t0 = time.perf_counter()
        sampler = SAMPLERS.build({"name": name}, labels=labels, num_classes=NUM_CLASSES, seed=0,
                                 total_epochs=200, rank=0, world_size=args.world_size)
        build = time.perf_counter() - t0
        times = []
        for epoch in range(args.repeats):
            t0 = time.perf_counter()
            sampler.set_epoch(epoch)
            idx = sampler.indices()
            times.append(time.perf_counter() - t0)
        print(f"{name:<20}{build:>11.3f}{statistics.median(times):>11.3f}"
              f"{sampler.epoch_length:>15,}")
        assert len(idx) == len(sampler)


if __name__ == "__main__":
    main()
