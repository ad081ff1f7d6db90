"""Samplers under torch.distributed: two gloo processes draw disjoint slices of one stream.

Each rank builds every sampler with ``rank``/``world_size`` left to ``torch.distributed`` and
saves its indices; the parent checks that the slices are disjoint positions of the same stream a
single process draws, that together they follow p_j, and that no rank drew a different stream.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import lttoolbox.samplers  # noqa: F401  (registers the samplers)
from lttoolbox.registry import SAMPLERS
from conftest import PerEntry

WORLD_SIZE = 2
COUNTS = np.array([300, 90, 30, 7])
EPOCHS = (0, 3)
DRAWS = 40_001  # odd, so that the stream is padded by wrapping
# The parameters of every registered sampler (one row each), then a deferred one.
PARAMS = PerEntry(SAMPLERS, {
    "instance": {},
    "class_balanced": {"num_samples": DRAWS},
    "square_root": {"num_samples": DRAWS},
    "progressive": {"num_samples": DRAWS},
    "cmo_weighted": {"weighting": "class", "num_samples": DRAWS},
    "random_oversample": {},
    "random_undersample": {},
    "class_aware_ml": {"reduce": 0.1},  # 12,000 draws of one-hot rows (multi-hot only)
}, where="PARAMS in tests/test_samplers_ddp.py")
CONFIGS = {**{name: {"name": name, **PARAMS[name]} for name in PARAMS.names},
           "drs_class_balanced": {"name": "class_balanced", "start_epoch": 2, "num_samples": DRAWS}}


def labels() -> np.ndarray:
    out = np.repeat(np.arange(len(COUNTS)), COUNTS)
    np.random.default_rng(1).shuffle(out)
    return out


def build(cfg, **ranks):
    given = labels()
    if not SAMPLERS.get(cfg["name"]).single_label:  # multi-hot rows: the labels one-hot
        given = np.eye(len(COUNTS))[given]
    return SAMPLERS.build(cfg, labels=given, num_classes=len(COUNTS), seed=11,
                          total_epochs=6, **ranks)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD_SIZE)
    try:
        result = {}
        for key, cfg in CONFIGS.items():
            sampler = build(cfg)  # rank and world size come from torch.distributed
            assert (sampler.rank, sampler.world_size) == (rank, WORLD_SIZE)
            for epoch in EPOCHS:
                sampler.set_epoch(epoch)
                result[key, epoch] = (sampler.indices(), len(sampler))
        torch.save(result, f"{out_dir}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD_SIZE)]


def expected_p(key: str, epoch: int) -> np.ndarray:
    """p_j by hand from the counts (T = 6 for progressive, DRS start 2)."""
    inst = COUNTS / COUNTS.sum()
    uniform = np.full(len(COUNTS), 1 / len(COUNTS))
    if key == "instance":
        return inst
    if key == "square_root":
        return np.sqrt(COUNTS) / np.sqrt(COUNTS).sum()
    if key == "progressive":
        return (1 - epoch / 6) * inst + (epoch / 6) * uniform
    if key == "cmo_weighted":
        return (1 / COUNTS) / (1 / COUNTS).sum()
    if key == "drs_class_balanced":
        return inst if epoch < 2 else uniform
    return uniform


def test_every_registered_sampler_is_drawn_by_the_ranks():
    PARAMS.check()


@pytest.mark.parametrize("key", sorted(CONFIGS))
@pytest.mark.parametrize("epoch", EPOCHS)
def test_rank_slices_are_disjoint_and_together_follow_p(rank_results, key, epoch):
    parts = [rank_results[r][key, epoch][0].numpy() for r in range(WORLD_SIZE)]
    lengths = [rank_results[r][key, epoch][1] for r in range(WORLD_SIZE)]
    assert lengths[0] == lengths[1] == len(parts[0]) == len(parts[1])

    single = build(CONFIGS[key], rank=0, world_size=1)
    single.set_epoch(epoch)
    stream = single.indices().numpy()
    assert lengths[0] == -(-len(stream) // WORLD_SIZE)
    # Rank r holds stream positions r, r + 2, ...: disjoint positions whose union is the stream
    # (plus the wrap-around pad when its length is odd).
    interleaved = np.stack(parts, axis=1).ravel()
    assert np.array_equal(interleaved[: len(stream)], stream)
    assert np.array_equal(interleaved[len(stream):], stream[: len(interleaved) - len(stream)])
    lab = labels()
    # The union of what the ranks drew, the pad left out (rank r's k-th item is position
    # r + k * world_size of the padded stream).
    union = np.concatenate([part[(r + WORLD_SIZE * np.arange(len(part))) < len(stream)]
                            for r, part in enumerate(parts)])
    assert len(union) == len(stream)
    if key == "instance":  # without replacement: apart from the pad, the slices share no image
        own = [part[(r + WORLD_SIZE * np.arange(len(part))) < len(stream)]
               for r, part in enumerate(parts)]
        assert set(own[0].tolist()).isdisjoint(own[1].tolist())
        assert np.array_equal(np.sort(union), np.arange(COUNTS.sum()))
    freq = np.bincount(lab[union], minlength=len(COUNTS))
    p = expected_p(key, epoch)
    bound = 5 * np.sqrt(p * (1 - p) / len(union)) + 1e-12
    assert np.all(np.abs(freq / len(union) - p) <= bound), (freq / len(union), p)
