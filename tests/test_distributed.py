"""Training across processes: DDP on the gloo backend, on the CPU, two processes.

The sampler shards (disjoint, their union the global stream) are checked in
``tests/test_samplers_ddp.py``; here the trainer: a two-process run matches a one-process run
with the same global batch, a run resumes with another number of processes, evaluation counts
every test image once when the test set does not split evenly, and rank 0 alone writes.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_engine import StopAfter
from test_split_files import raises, tree_fixture, txt_cfg, write_list  # noqa: F401  (fixture)

from lttoolbox.engine import train
from lttoolbox.engine.distributed import (DistributedError, World, gather_predictions,
                                          per_rank_batch)
from lttoolbox.errors import ConfigError
from lttoolbox.recipe import apply_overrides, resolve

WORLD = 2
# A model without batch norm and a data set without random transforms: a step's gradient is the
# mean over the global batch however it is split, so two processes must follow one closely.
# drop_last keeps every step's global batch the same 64 images (503 images: 7 steps either way).
DIGITS = {"data": {"name": "digits_lt"},
          "model": {"name": "digits_cnn", "batch_norm": False},
          "optim": {"lr": 0.05, "weight_decay": 5e-4},
          "schedule": {"name": "cosine", "warmup_epochs": 1},
          "train": {"epochs": 3, "batch_size": 64, "seed": 0, "drop_last": True},
          "eval": {"many_threshold": 60, "few_threshold": 25}}
# Float sums in another order (per-rank means, then the all-reduce) over 21 steps.
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 1e-4


def digits(*overrides) -> dict:
    return resolve(apply_overrides(DIGITS, list(overrides)))


def _worker(rank: int, init_file: str, recipe: dict, out: str, resume: bool) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        results = train(recipe, out, resume=resume, quiet=True)
        # every rank returns the same results (the gathered evaluation)
        torch.save(results["top1"], f"{out}.rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(tmp_path, recipe: dict, out, resume: bool = False) -> dict:
    init = tmp_path / f"init-{out.name}"
    mp.spawn(_worker, args=(str(init), recipe, str(out), resume), nprocs=WORLD, join=True)
    tops = [torch.load(f"{out}.rank{r}.pt") for r in range(WORLD)]
    assert tops[0] == tops[1]
    return json.loads((out / "results.json").read_text())


def weights(run_dir):
    return torch.load(run_dir / "model-main.pt", map_location="cpu")


@pytest.mark.long
def test_two_processes_match_one(tmp_path):
    one = train(digits(), tmp_path / "one", quiet=True)
    two = run_ranks(tmp_path, digits(), tmp_path / "two")
    assert two["processes"] == 2 and one["processes"] == 1
    np.testing.assert_allclose([h["loss"] for h in two["history"]],
                               [h["loss"] for h in one["history"]], rtol=LOSS_RTOL)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=WEIGHT_ATOL, rtol=0)
    assert abs(two["top1"] - one["top1"]) <= 0.2 + 1e-9  # one image of 500 at most
    # the images counted: every rank's share, once
    assert two["history"][0]["images_per_second"] > 0
    assert sum(sum(row) for row in two["confusion_matrix"]) == 500
    # rank 0 alone wrote: one log line per epoch, no stray files
    lines = (tmp_path / "two" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir())


@pytest.mark.long
def test_class_weighted_means_are_over_the_global_batch(tmp_path):
    """Inverse-frequency class weights: each step's loss is ``sum w l / sum w`` over the global
    batch, as one process computes, not the mean of the two ranks' own weighted means (a rank
    whose half of the batch holds fewer rare samples would count as much as the other)."""
    recipe = digits("loss={name: ce, weights: inverse}")
    one = train(recipe, tmp_path / "one", quiet=True)
    two = run_ranks(tmp_path, recipe, tmp_path / "two")
    np.testing.assert_allclose([h["loss"] for h in two["history"]],
                               [h["loss"] for h in one["history"]], rtol=LOSS_RTOL)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=WEIGHT_ATOL, rtol=0)


@pytest.mark.long
def test_resume_with_another_number_of_processes(tmp_path):
    whole = train(digits(), tmp_path / "whole", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        train(digits(), tmp_path / "cut", logger=StopAfter(1))
    resumed = run_ranks(tmp_path, digits(), tmp_path / "cut", resume=True)
    assert len(resumed["history"]) == 3
    np.testing.assert_allclose([h["loss"] for h in resumed["history"]],
                               [h["loss"] for h in whole["history"]], rtol=LOSS_RTOL)
    assert abs(resumed["top1"] - whole["top1"]) <= 0.2 + 1e-9


@pytest.mark.long
def test_evaluation_counts_each_image_once_on_an_uneven_test_set(tree, tmp_path):
    # 7 test images over 2 ranks (4 + 3), streamed from their files
    pairs = tree["splits"]["test"][:-1]
    test_list = write_list(tmp_path / "LT_test7.txt", pairs)
    recipe = resolve({
        "data": txt_cfg(tree, path="stream", image_size=8, test_list=str(test_list)),
        "model": {"name": "digits_cnn"},
        "optim": {"lr": 0.05}, "sampler": {"name": "class_balanced"},
        "train": {"epochs": 1, "batch_size": 4, "seed": 0, "workers": 0},
        "eval": {"many_threshold": 4, "few_threshold": 3}})
    one = train(recipe, tmp_path / "one", quiet=True)
    two = run_ranks(tmp_path, recipe, tmp_path / "two")
    expected = np.bincount([label for _, label in pairs], minlength=4).tolist()
    assert two["test_class_counts"] == one["test_class_counts"] == expected
    assert sum(sum(row) for row in two["confusion_matrix"]) == 7


def _generator_worker(rank: int, init_file: str, recipe: dict, out: str) -> None:
    from lttoolbox.engine.trainer import Trainer
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        trainer = Trainer(recipe, out, quiet=True)
        trainer.run()
        torch.save({"generator": trainer.phases[0].generator.state_dict(),
                    "model": trainer.model.state_dict()}, f"{out}.rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.long
def test_a_generator_trains_through_the_wrapped_hooked_forward(tmp_path):
    # RSG at a named point: before its generation epoch part of it is unused in a step, after it
    # its contrastive module is frozen through the optimizer; DDP must keep every rank's
    # generator and model identical all along.
    recipe = digits("train.epochs=2", "model.batch_norm=true")
    recipe = resolve({**recipe, "generator": {"name": "rsg", "contrastive_channels": 16,
                                              "generation_start_epoch": 1}})
    out = tmp_path / "rsg"
    mp.spawn(_generator_worker, args=(str(tmp_path / "init"), recipe, str(out)), nprocs=WORLD,
             join=True)
    states = [torch.load(f"{out}.rank{r}.pt") for r in range(WORLD)]
    for part in ("generator", "model"):
        # the model's batch-norm statistics too: evaluation gives every rank rank 0's
        for name, value in states[0][part].items():
            assert torch.equal(value, states[1][part][name]), (part, name)
    results = json.loads((out / "results.json").read_text())
    assert results["processes"] == 2 and len(results["history"]) == 2
    assert np.isfinite([h["loss"] for h in results["history"]]).all()


def _console_worker(rank: int, init_file: str, recipe: dict, out: str) -> None:
    import sys
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    # this rank's console, as the user's terminal would receive it: everything the run prints
    with open(f"{out}.rank{rank}.out", "w") as stdout, open(f"{out}.rank{rank}.err", "w") as stderr:
        sys.stdout, sys.stderr = stdout, stderr
        try:
            train(recipe, out)  # not quiet: rank 0 prints its epoch lines and tables
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            dist.destroy_process_group()


@pytest.mark.long
def test_rank_0_alone_writes_to_the_console(tmp_path):
    out = tmp_path / "console"
    mp.spawn(_console_worker, args=(str(tmp_path / "init"), digits("train.epochs=1"), str(out)),
             nprocs=WORLD, join=True)
    rank0 = (tmp_path / "console.rank0.out").read_text()
    assert "Per-class accuracy" in rank0 and "Results" in rank0
    for stream in ("out", "err"):
        assert (tmp_path / f"console.rank1.{stream}").read_text() == "", stream


def test_gather_refuses_a_missing_or_doubled_image():
    world = World()
    pred, conf = np.array([2, 0, 1]), np.array([0.5, 0.6, 0.7])
    out_pred, _ = gather_predictions(np.array([2, 0, 1]), pred, conf, 3, world)
    assert out_pred.tolist() == [0, 1, 2]  # back in position order
    raises(DistributedError, lambda: gather_predictions(np.array([0, 1, 1]), pred, conf, 3,
                                                        world), "exactly once")
    raises(DistributedError, lambda: gather_predictions(np.array([0, 1]), pred[:2], conf[:2], 3,
                                                        world), "2 predictions", "split of 3")


def test_global_batch_must_divide_among_processes():
    assert per_rank_batch(128, World(0, 4)) == 32
    raises(ConfigError, lambda: per_rank_batch(100, World(0, 3)), "train.batch_size",
           "not divisible by 3")


def test_impossible_distributed_settings_are_refused_before_training(tmp_path, monkeypatch):
    # The checks run before any collective call, so rank 0 of a pretended two-process world
    # shows them without spawning processes.
    monkeypatch.setattr(World, "current", classmethod(lambda cls: World(0, WORLD)))
    raises(ConfigError, lambda: train(digits("train.sync_bn=true"), tmp_path / "a", quiet=True),
           "train.sync_bn", "CUDA")
    raises(ConfigError, lambda: train(digits("train.batch_size=63"), tmp_path / "b", quiet=True),
           "train.batch_size", "not divisible by 2")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written


def test_sync_bn_and_workers_are_ways_of_running_not_part_of_the_recipe_hash():
    from lttoolbox.recipe import recipe_hash
    assert recipe_hash(digits()) == recipe_hash(digits("train.sync_bn=true", "train.workers=4"))
    raises(ConfigError, lambda: digits("train.workers=-1"), "train.workers")
    raises(ConfigError, lambda: digits("train.sync_bn=maybe"), "train.sync_bn")


@pytest.mark.parametrize("rank, shown", [(0, True), (1, False)])
def test_only_rank_0_prints_warnings(rank, shown, caplog):
    import logging
    import warnings

    from lttoolbox.engine.distributed import quiet_unless_main

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            quiet_unless_main(rank)
            warnings.warn("a component's warning", stacklevel=1)
            logging.getLogger("lttoolbox.test").warning("a log warning")
            logging.getLogger("lttoolbox.test").error("an error")
        finally:
            logging.disable(logging.NOTSET)
    assert bool(caught) is shown
    logged = [r.getMessage() for r in caplog.records]
    assert ("a log warning" in logged) is shown and "an error" in logged


@pytest.mark.long
def test_accumulated_parts_across_processes_match_one_whole_batch(tmp_path):
    """``train.accumulate: 2`` on two processes (each rank's 32 images in two parts of 16, one
    all-reduce per step) trains as one process on whole batches; the moving average too."""
    recipe = digits("loss={name: ce, weights: inverse}", "train.ema={decay: 0.9}")
    one = train(recipe, tmp_path / "one", quiet=True)
    two = run_ranks(tmp_path, digits("loss={name: ce, weights: inverse}",
                                     "train.ema={decay: 0.9}", "train.accumulate=2"),
                    tmp_path / "two")
    np.testing.assert_allclose([h["loss"] for h in two["history"]],
                               [h["loss"] for h in one["history"]], rtol=LOSS_RTOL)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=WEIGHT_ATOL, rtol=0)
    a, b = (torch.load(d / "ema-main.pt") for d in (tmp_path / "one", tmp_path / "two"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=WEIGHT_ATOL, rtol=0)
