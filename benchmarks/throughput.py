"""Training throughput of the full trainer against a bare PyTorch loop, as a ratio.

For each recipe, in one process and on one device: the trainer trains ``--steps`` steps per epoch
for two epochs (the second is timed, so start-up costs stay out), then a bare loop trains the same
model architecture with the same batch size, the same device-resident uint8 data and the same
batched crop/flip/normalise for the same number of steps, with plain cross-entropy and SGD. The
ratio trainer/bare is the price of everything the trainer adds (sampler, loss wrapper, hooks,
logging, checkpointing). A second bare figure, the step alone on one pre-made batch, shows what the
data path itself costs.

    python benchmarks/throughput.py                                   # configs/cifar10_lt/ce.yaml
    python benchmarks/throughput.py --recipes configs/cifar10_lt/*.yaml --steps 30
    python benchmarks/throughput.py --recipes configs/quickstart.yaml --steps 20
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import sys
import tempfile
import time
from pathlib import Path

import torch

from lttoolbox.engine.provenance import git_commit, machine_info
from lttoolbox.engine.trainer import Trainer, autocast_factory
from lttoolbox.errors import LTError
from lttoolbox.recipe import apply_overrides, load_recipe, resolve


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_trainer(recipe: dict, steps: int) -> tuple[float, Trainer]:
    """Images/s of the trainer's second epoch of ``steps`` steps."""
    batch = recipe["train"]["batch_size"]
    recipe = resolve(apply_overrides(recipe, [
        "train.epochs=2", "schedule.warmup_epochs=0", "eval.every=0",
        f"sampler.num_samples={steps * batch}", "train.checkpoint_every=1000"]))
    recipe.pop("stages", None)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(recipe, out, quiet=True)
        history, _, _ = trainer.fit()
    return history[-1]["images_per_second"], trainer


def time_bare(trainer: Trainer, recipe: dict, steps: int, warmup: int) -> tuple[float, float]:
    """Images/s of a bare loop with the trainer's data path, and of the step alone."""
    from lttoolbox.registry import MODELS

    device = trainer.device
    images, labels = trainer.train_images, trainer.train_labels
    model = MODELS.build(recipe["model"], num_classes=trainer.num_classes,
                         in_channels=images.shape[1], image_size=images.shape[-1]).to(device)
    if recipe["train"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    optim = recipe["optim"]
    opt = torch.optim.SGD(model.parameters(), lr=optim["lr"], momentum=optim.get("momentum", 0),
                          weight_decay=optim.get("weight_decay", 0))
    criterion = torch.nn.CrossEntropyLoss()
    autocast, _ = autocast_factory(recipe["train"]["amp"], device)
    transform = trainer.data.train_transform
    batch = recipe["train"]["batch_size"]
    model.train()

    def step(x, y):
        with autocast() if autocast else contextlib.nullcontext():
            loss = criterion(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def loop(with_data: bool) -> float:
        fixed = transform(images[:batch]), labels[:batch]
        order = torch.randint(0, images.shape[0], ((steps + warmup) * batch,), device=device)
        for i in range(steps + warmup):
            if i == warmup:
                sync(device)
                start = time.perf_counter()
            if with_data:
                idx = order[i * batch:(i + 1) * batch]
                step(transform(images[idx]), labels[idx])
            else:
                step(*fixed)
        sync(device)
        return steps * batch / (time.perf_counter() - start)

    return loop(True), loop(False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["configs/cifar10_lt/ce.yaml"],
                        help="recipe files or globs")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps of the bare loop")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every recipe")
    args = parser.parse_args(argv)
    paths = sorted({p for pattern in args.recipes for p in (glob.glob(pattern) or [pattern])})
    rows = []
    for path in paths:
        try:
            recipe = load_recipe(path, args.overrides)
            trainer_ips, trainer = time_trainer(recipe, args.steps)
            bare_ips, step_ips = time_bare(trainer, recipe, args.steps, args.warmup)
        except LTError as err:
            print(f"{path}: skipped: {err}", file=sys.stderr)
            continue
        rows.append((Path(path).as_posix(), trainer_ips, bare_ips, step_ips, trainer.device))
        print(f"{path}: trainer {trainer_ips:,.0f} img/s, bare loop {bare_ips:,.0f} img/s, "
              f"ratio {trainer_ips / bare_ips:.3f} (bare step alone {step_ips:,.0f} img/s)",
              flush=True)
    if not rows:
        return 1
    info = machine_info(rows[0][4])
    print(f"\nmachine: {info['cpu']} ({info['cpu_count']} cores, {info['torch_threads']} torch "
          f"threads), device {info['device']}{' ' + info['gpu'] if 'gpu' in info else ''}, "
          f"torch {info['torch']}, commit {git_commit()}, {args.steps} timed steps each")
    print("| recipe | trainer img/s | bare loop img/s | ratio | bare step alone img/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for path, t, b, s, _ in rows:
        print(f"| {path} | {t:,.0f} | {b:,.0f} | {t / b:.3f} | {s:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
