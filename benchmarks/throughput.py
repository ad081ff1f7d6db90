"""Training throughput of the full trainer against a bare PyTorch loop, as a ratio.

For each recipe, in one process and on one device: the trainer trains ``--steps`` steps per epoch
for two epochs (the second is timed, so start-up costs stay out), then a bare loop trains the same
model architecture with the same batch size, the same device-resident uint8 data and the same
batched crop/flip/normalise for the same number of steps, with plain cross-entropy and SGD. The
ratio trainer/bare is the price of everything the trainer adds (sampler, loss wrapper, hooks,
logging, checkpointing). A second bare figure, the step alone on one pre-made batch, shows what the
data path itself costs.

Each measurement is repeated (``--repeats``, default 3, trainer and bare loop alternating) and
reported as min / median / max; when the slowest and fastest repeat of a figure differ by more
than 1.2x the machine is too noisy for one ratio to mean much, and the script says so.

    python benchmarks/throughput.py                                   # configs/cifar10_lt/ce.yaml
    python benchmarks/throughput.py --recipes configs/cifar10_lt/*.yaml --steps 30
    python benchmarks/throughput.py --recipes configs/quickstart.yaml --steps 20
    python benchmarks/throughput.py --augment --generator    # each component's step cost too
    python benchmarks/throughput.py --augment --steps 10     # ... gae's attack included
    # bbn and dbn_mix are timed on the two-branch counterpart of the recipe's model:
    python benchmarks/throughput.py --recipes configs/cifar10_lt/ce.yaml --augment
    python benchmarks/throughput.py --cam                    # CAM re-sampling vs one epoch
    python benchmarks/throughput.py --recipes configs/cifar10_lt/ot_reweight.yaml --phases
    python benchmarks/throughput.py --pure-noise             # open_noise + dar_bn vs plain
    python benchmarks/throughput.py --strong                 # AutoAugment/RandAugment/Cutout
    python benchmarks/throughput.py --recipes configs/cifar10_lt/ldam_drw_sam.yaml --optim-cost
    python benchmarks/throughput.py --stream --workers 0 1 2   # the streaming path, 224 px
    python benchmarks/throughput.py --concurrent 1 2 4 8       # K runs at once on one device

``--optim-cost`` also times the trainer with the recipe's optimizer replaced by plain SGD with
its rate, momentum and weight decay, and prints the recipe's step cost as a multiple of that
plain step (SGD img/s over the recipe's img/s; sharpness-aware minimisation, ``optim: {name:
sam}``, takes two forward and backward passes per step).

``--phases`` times every phase of a multi-phase recipe in one trainer run (each phase two epochs
of ``--steps`` steps, its second timed) and prints each as a ratio against the bare loop with
that phase's batch size on the first phase's model: the main figure above times the recipe's
first phase only, so a method that lives in a later phase (cRT, LWS, MARC, OT re-weighting, GAE's
fine-tuning) shows its cost here. A phase that freezes the backbone may be cheaper than the bare
step (ratio above 1).

``--strong`` times the bare loop (above) with the recipe's crop/flip/normalise plus each strong
augmentation of :data:`STRONG_TIMED` (AutoAugment's CIFAR-10 policy, RandAugment N=2 M=9,
Cutout 16, and ResCom's AutoAugment + Cutout), batched on the device as the in-memory path applies
them, and prints each as a multiple of the plain loop's step (plain img/s over img/s with it),
with the transform alone in ms per batch.

``--concurrent`` starts K trainer processes at once (each timing its own second epoch of
``--steps`` steps, as above) for each K, and reports the aggregate images/s (the sum) with the
per-run rate; the smallest K within 5 % of the best aggregate is printed last as
``best concurrency: K``, which ``benchmarks/gpu_window.sh`` reads to choose ``--jobs``.

``--stream`` measures the streaming data path (:mod:`lttoolbox.data.stream`) on ImageNet-like
JPEGs (written to a temporary folder, 500 x 375 at quality 90, unless ``--stream-root`` names an
image-folder tree): the loader alone (decode, RandomResizedCrop 224, flip, colour jitter 0.4,
copy, normalise) with N workers and each decoder, a ResNet-50 training step alone on a pre-made
224-px batch, and the two together; together / step alone says how far the loader is from
keeping the model fed.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from lttoolbox.engine.provenance import git_commit, machine_info
from lttoolbox.engine.trainer import Trainer, autocast_factory
from lttoolbox.errors import LTError
from lttoolbox.recipe import apply_overrides, load_recipe, resolve
from lttoolbox.registry import SAMPLERS, accepted_parameters


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def shorten_epoch(sampler: dict | None, images: int) -> None:
    """Give ``sampler`` (a resolved recipe's entry) an epoch of ``images`` draws, where it takes
    ``num_samples``; one whose epoch length is its definition's (``fixed_parameters``:
    ``class_aware_ml``, the random resamplers) keeps it, and its timed epoch is that long."""
    if sampler and "num_samples" in accepted_parameters(SAMPLERS.get(sampler["name"]))[0]:
        sampler["num_samples"] = images


def time_trainer(recipe: dict, steps: int) -> tuple[float, Trainer]:
    """Images/s of the trainer's second epoch of ``steps`` steps (or of the sampler's own
    epoch, see :func:`shorten_epoch`)."""
    batch = recipe["train"]["batch_size"]
    recipe = resolve(apply_overrides(recipe, [
        "train.epochs=2", "schedule.warmup_epochs=0", "eval.every=0",
        "train.checkpoint_every=1000"]))
    shorten_epoch(recipe.get("sampler"), steps * batch)
    recipe.pop("phases", None)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(recipe, out, quiet=True)
        history, _, _ = trainer.fit()
    return history[-1]["images_per_second"], trainer


def time_phases(recipe: dict, steps: int) -> list[tuple[str, int, float]]:
    """``(name, batch size, img/s)`` of every phase of a multi-phase recipe, from one trainer run
    in which each phase trains two epochs of ``steps`` steps (its second epoch is timed)."""
    recipe = resolve(apply_overrides(recipe, ["eval.every=0", "train.checkpoint_every=1000"]))
    for phase in recipe["phases"]:
        batch = phase["train"]["batch_size"]
        phase["train"].update(epochs=2, checkpoint_every=1000)
        phase["schedule"]["warmup_epochs"] = 0
        phase["eval"]["every"] = 0
        # the rate does not change a step's cost; a small one keeps a run of a few steps with no
        # warm-up from diverging (the trainer would stop it)
        phase["optim"]["lr"] = 1e-4
        shorten_epoch(phase.get("sampler"), steps * batch)
    with tempfile.TemporaryDirectory() as out:
        history, _, _ = Trainer(recipe, out, quiet=True).fit()
    last = {entry["phase"]: entry["images_per_second"] for entry in history}
    return [(p["meta"]["phase"], p["train"]["batch_size"], last[p["meta"]["phase"]])
            for p in recipe["phases"]]


def plain_sgd(recipe: dict) -> dict:
    """``recipe`` with its optimizer replaced by SGD at the same rate, momentum and decay."""
    optim = recipe["optim"]
    plain = {"name": "sgd", "lr": optim["lr"], "weight_decay": optim["weight_decay"],
             "no_decay": optim.get("no_decay", [])}
    for key in ("momentum", "nesterov"):
        if optim.get(key) is not None:
            plain[key] = optim[key]
    return {**recipe, "optim": plain}


def fresh_model(trainer: Trainer, recipe: dict) -> torch.nn.Module:
    """The recipe's model, newly initialised, laid out as the trainer lays it out."""
    from lttoolbox.registry import MODELS

    images = trainer.data_path.images
    model = MODELS.build(recipe["model"], num_classes=trainer.num_classes,
                         in_channels=images.shape[1], image_size=images.shape[-1])
    model = model.to(trainer.device)
    if recipe["train"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    return model


def time_bare(trainer: Trainer, recipe: dict, steps: int, warmup: int,
              compiled: bool = False, transform=None) -> tuple[float, float]:
    """Images/s of a bare loop with the trainer's data path, and of the step alone; ``compiled``:
    the model through ``torch.compile`` as the trainer compiles it (warm-up steps include the
    compilation); ``transform``: another training transform than the data's."""
    device = trainer.device
    images, labels = trainer.data_path.images, trainer.data_path.labels
    model = fresh_model(trainer, recipe)
    net = model
    if compiled:
        from lttoolbox.engine.compile import CUDA_MODE
        net = torch.compile(model, mode=CUDA_MODE if device.type == "cuda" else None,
                            dynamic=False)
    optim = recipe["optim"]
    opt = torch.optim.SGD(model.parameters(), lr=optim["lr"], momentum=optim.get("momentum", 0),
                          weight_decay=optim.get("weight_decay", 0))
    criterion = torch.nn.CrossEntropyLoss()
    autocast, _ = autocast_factory(recipe["train"]["amp"], device)
    transform = transform or trainer.data.train_transform
    batch = recipe["train"]["batch_size"]
    model.train()

    def step(x, y):
        with autocast() if autocast else contextlib.nullcontext():
            loss = criterion(net(x), y)
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


AUGMENTS_TIMED = {  # each at p = 1: the cost of a mixed batch (the recipes mix some batches only)
    "mixup": {"name": "mixup"}, "manifold_mixup": {"name": "manifold_mixup"},
    "remix": {"name": "remix"}, "cutmix": {"name": "cutmix", "p": 1.0},
    "cmo": {"name": "cmo", "p": 1.0},
    # guiding adversarial examples at their defaults (8 attack steps, the rarest half of the
    # classes): the attack in before_step and the adversarial term, every step
    "gae": {"name": "gae"},
    # open-sampling with the recipes' 512 open images a step (4x CIFAR's batch of 128): the
    # draw and transform in before_step, the forward of batch + open images, the open term
    "open_sampling": {"name": "open_sampling", "open": {"source": "noise"}, "batch_size": 512},
    # the second stream through a two-branch model (its trunk run once per stream): timed on
    # the two-branch counterpart of the recipe's model (TWO_BRANCH), so the figure is the cost
    # of the method, model included, against the plain step on the recipe's model
    "bbn": {"name": "bbn"}, "dbn_mix": {"name": "dbn_mix"},
    # ResCom with the CIFAR-10 recipe's values: the second view (fetched and transformed), a
    # forward and backward of 2B images, the projection, the queue's mining and the enqueue; and
    # with the momentum key encoder, which adds a forward of the first view through the copy
    "rescom": {"name": "rescom", "select_num_neg": 90},
    "rescom_momentum": {"name": "rescom", "select_num_neg": 90, "key_encoder": "momentum"},
}
#: The two-branch counterpart of a model, and its layout for a component that needs one (a
#: component whose ``check_model`` refuses the recipe's model).
TWO_BRANCH = {"resnet32": "two_branch_resnet32", "digits_cnn": "two_branch_digits_cnn"}
LAYOUT = {"bbn": "bbn", "dbn_mix": "dbn_mix"}


GENERATORS_TIMED = {  # generating from the first timed step, at the recipes' attachment point
    "rsg": {"name": "rsg", "generation_start_epoch": 0},
    "delta_encoder": {"name": "delta_encoder"}, "hallucinator": {"name": "hallucinator"},
    "ftl": {"name": "ftl"},
}


def timed_steps(model, step, opt, parts: list, draw, images: int, batch: int, steps: int,
                warmup: int, autocast, device: torch.device, timed_epoch: int = 0) -> float:
    """Images/s of ``steps`` training steps after ``warmup`` untimed ones, as the trainer takes
    them: the components' ``before_step`` and ``after_step`` around the step, the batch from
    ``draw(indices)`` of uniformly drawn images. The warm-up steps run in epoch 0, the timed
    ones in ``timed_epoch`` (a component whose work starts after epoch 0 is timed working)."""
    order = torch.randint(0, images, ((steps + warmup) * batch,), device=device)
    for i in range(steps + warmup):
        if i == warmup:
            if timed_epoch:
                for part in parts:
                    part.set_epoch(timed_epoch)
            sync(device)
            start = time.perf_counter()
        idx = order[i * batch:(i + 1) * batch]
        events = SimpleNamespace(batch=draw(idx), model=model, optimizer=opt,
                                 epoch=timed_epoch if i >= warmup else 0, step=i,
                                 steps=steps + warmup, lr=0.01)
        for part in parts:
            part.before_step(events)
        with autocast() if autocast else contextlib.nullcontext():
            loss = step(events.batch)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for part in parts:
            part.after_step(events)
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def time_components(trainer: Trainer, recipe: dict, steps: int, warmup: int, family: str
                    ) -> dict[str, float]:
    """Images/s of the trainer's training step (model hooks, mixed loss, auxiliary losses)
    without and with each augmentation (``family="augment"``) or generator
    (``"generator"``), on the same model, batches and device; ``plain`` is the step without.

    Each component hears the events the trainer sends around a step (``before_phase`` with the
    data's evaluation transform, ``before_step``, which may replace the batch or craft from it,
    and ``after_step``), so a component that acts in the step (``gae``'s attack) is timed with
    what it does there.

    Each component runs its warm-up steps in epoch 0 and the timed steps in epoch 1, so what
    learns statistics first (FTL) is timed while it generates. Images/s counts the batch's own
    images, not the generated ones."""
    from lttoolbox.api import Component
    from lttoolbox.batch import Batch
    from lttoolbox.engine.phases import Phase
    from lttoolbox.engine.step import TrainStep
    from lttoolbox.registry import AUGMENTS, GENERATORS, LOSSES

    registry, timed = ((AUGMENTS, AUGMENTS_TIMED) if family == "augment"
                       else (GENERATORS, GENERATORS_TIMED))
    device = trainer.device
    images, labels = trainer.data_path.images, trainer.data_path.labels
    model = fresh_model(trainer, recipe)
    criterion = LOSSES.build({"name": "ce"}, num_classes=trainer.num_classes).to(device)
    autocast, _ = autocast_factory(recipe["train"]["amp"], device)
    transform, batch = trainer.data.train_transform, recipe["train"]["batch_size"]
    # the shapes at the model's points, which a generator is built for (the trainer measures
    # them only for a recipe with a generator): in the one context object an entry receives
    shapes = model.point_shapes(trainer.data.eval_transform(images[:2]))
    context = dataclasses.replace(trainer._context(recipe)["context"],
                                  point_shapes=shapes).as_kwargs()
    model.train()

    def model_for(part):
        """The recipe's model, or the two-branch model a component needs."""
        if part is None or part.refusal(model) is None:
            return model
        name = recipe["model"]["name"]
        if name not in TWO_BRANCH or part.registry_name not in LAYOUT:
            raise SystemExit(f"{part.registry_name} cannot time on model {name}: "
                             f"{part.refusal(model)}")
        changed = {**recipe["model"], "name": TWO_BRANCH[name],
                   "layout": LAYOUT[part.registry_name]}
        return fresh_model(trainer, {**recipe, "model": changed}).train()

    def loop(part, cfg=None) -> float:
        model = model_for(part)
        hooks, params = {}, list(model.parameters())
        if part is not None:
            part.before_phase(SimpleNamespace(model=model, index=0, name="main", log=None,
                                              eval_transform=trainer.data.eval_transform))
            part.set_epoch(0)
            for point in part.points():  # the trainer's hooks (lttoolbox.api.Component)
                hooks[point] = part.hook(point)
            if isinstance(part, torch.nn.Module):
                params += list(part.to(device).parameters())
        # The trainer's own step (mixed loss, auxiliary losses, their terms), on a one-part phase.
        augments = [part] if family == "augment" and part is not None else []
        generator = part if family == "generator" else None
        # the sampler's place holds a component that does nothing: the batches are drawn here
        phase = Phase("main", {"loss": {"name": "ce"}, "augment": [cfg] if augments else [],
                               "generator": cfg if generator is not None else None},
                      Component(), criterion, augments, generator)
        step = TrainStep(model, phase)
        step.hooks = hooks
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
        # the index: a component may fetch another view of the same images (rescom)
        return timed_steps(model, step, opt, [part] if part is not None else [],
                           lambda idx: Batch.plain(transform(images[idx]), labels[idx],
                                                   index=idx),
                           images.shape[0], batch, steps, warmup, autocast, device,
                           timed_epoch=1)

    figures = {"plain": loop(None)}
    for name, cfg in timed.items():
        figures[name] = loop(registry.build(cfg, **context), cfg)
    return figures


def time_pure_noise(trainer: Trainer, recipe: dict, steps: int, warmup: int
                    ) -> dict[str, float]:
    """Images/s of the trainer's training step plain and with OPeN and DAR-BN acting on every
    step (``open_noise`` at its default delta, ``dar_bn`` routing the model's BatchNorm layers),
    on the same model architecture, batches and device. The two act together (DAR-BN alone
    routes nothing), so they are timed as one; each run on a fresh model, the plain layers back
    after it."""
    from lttoolbox.api import Component
    from lttoolbox.batch import Batch
    from lttoolbox.engine.phases import Phase
    from lttoolbox.engine.step import TrainStep
    from lttoolbox.registry import AUGMENTS, LOSSES

    device = trainer.device
    images, labels = trainer.data_path.images, trainer.data_path.labels
    criterion = LOSSES.build({"name": "ce"}, num_classes=trainer.num_classes).to(device)
    autocast, _ = autocast_factory(recipe["train"]["amp"], device)
    transform, batch = trainer.data.train_transform, recipe["train"]["batch_size"]
    context = trainer._context(recipe)

    def loop(cfgs: list) -> float:
        model = fresh_model(trainer, recipe).train()
        parts = [AUGMENTS.build(cfg, **context) for cfg in cfgs]
        run = SimpleNamespace(model=model)
        hooks = {}
        for part in parts:
            part.check_model(model)
            part.before_run(run)
            part.before_phase(SimpleNamespace(model=model, index=0, name="main", log=None,
                                              eval_transform=trainer.data.eval_transform))
            part.set_epoch(0)
            for point in part.points():
                hooks[point] = part.hook(point)
        phase = Phase("main", {"loss": {"name": "ce"}, "augment": cfgs, "generator": None},
                      Component(), criterion, parts, None)
        step = TrainStep(model, phase)
        step.hooks = hooks
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        speed = timed_steps(model, step, opt, parts,
                            lambda idx: Batch.plain(transform(images[idx]), labels[idx]),
                            images.shape[0], batch, steps, warmup, autocast, device)
        for part in parts:
            part.after_run(run)
        return speed

    return {"plain": loop([]),
            "open_noise+dar_bn": loop([{"name": "open_noise"}, {"name": "dar_bn"}])}


STRONG_TIMED = {  # data keys of the strong augmentations (lttoolbox.data.strong_aug)
    "autoaugment": {"autoaugment": "cifar10"},
    "randaugment": {"randaugment": 2, "randaugment_magnitude": 9},
    "cutout": {"cutout": 16},
    "autoaugment+cutout": {"autoaugment": "cifar10", "cutout": 16, "augment_fill": 128},
}


def time_strong(trainer: Trainer, recipe: dict, steps: int, warmup: int
                ) -> dict[str, tuple[float, float]]:
    """Per entry of :data:`STRONG_TIMED` (and ``plain``: the data's own transform): images/s of
    the bare loop with the recipe's crop/flip/normalise plus that augmentation, and the transform
    alone in ms per batch."""
    from lttoolbox.data.strong_aug import strong_augment
    from lttoolbox.data.transforms import BatchTransform

    base = trainer.data.train_transform
    images, device = trainer.data_path.images, trainer.device
    batch = images[:recipe["train"]["batch_size"]]
    figures = {}
    for name, keys in {"plain": None, **STRONG_TIMED}.items():
        transform = base if keys is None else BatchTransform(
            base.mean, base.std, base.crop_padding, base.hflip, strong=strong_augment(**keys))
        for _ in range(warmup):
            transform(batch)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            transform(batch)
        sync(device)
        alone = (time.perf_counter() - start) / steps * 1000
        figures[name] = (time_bare(trainer, recipe, steps, warmup, transform=transform)[0], alone)
    return figures


def time_cam(trainer: Trainer, recipe: dict) -> tuple[float, int]:
    """Seconds that CAM-based re-sampling (``cam_resample``, default settings) takes to generate
    its images for the recipe's training set with the recipe's (freshly initialised) model, and
    how many images that is. An untrained model gives other maps than a trained one, not other
    work: every generated image costs the same forward, CAM and move."""
    import numpy as np

    from lttoolbox.registry import AUGMENTS

    cam = AUGMENTS.build({"name": "cam_resample"}, **trainer._context(recipe))
    model = fresh_model(trainer, recipe)
    counts = np.bincount(trainer.data_path.labels.cpu().numpy(), minlength=trainer.num_classes)
    sync(trainer.device)
    start = time.perf_counter()
    out = cam.prepare(model, trainer.data_path.images, trainer.data_path.labels,
                      trainer.data.eval_transform, 1)
    sync(trainer.device)
    assert int(out["labels"].numel()) == sum(cam.additions(counts))
    return time.perf_counter() - start, int(out["labels"].numel())


def write_jpegs(root: Path, count: int, classes: int = 4, size=(500, 375)) -> None:
    """``root/{train,test}/c<k>/<i>.jpg``: smooth colour fields with noise, about the entropy of
    a photograph (pure noise would decode slower than any real image)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for split, n in (("train", count), ("test", classes)):
        for i in range(n):
            folder = root / split / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            a, b, c = rng.uniform(0.005, 0.03, 3)
            base = np.stack([np.sin(xx * a + i), np.cos(yy * b), np.sin((xx + yy) * c)], -1)
            pixels = (127 + 100 * base + rng.normal(0, 12, base.shape)).clip(0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)


def time_stream(root: Path, workers: list[int], decoders: list[str], batch: int, steps: int,
                warmup: int, device: torch.device):
    """Images/s of the ResNet-50 step alone, of the streaming loader alone and of both, as
    ``(name, img/s)`` pairs, each as soon as it is measured."""
    from lttoolbox.data.datapath import StreamPath
    from lttoolbox.data.folder import image_folder
    from lttoolbox.registry import MODELS

    def bundle(decoder):
        return image_folder(str(root), image_size=224, imbalance_type=None, path="stream",
                            color_jitter=0.4, decoder=decoder)

    data = bundle(decoders[0])
    total = batch * (steps + warmup)
    order = torch.arange(total) % len(data.train)

    def batches(path, epoch):
        return path.epoch(order, torch.arange(total).numpy(), batch, (0, epoch))

    def timed(iterator, work=None) -> float:
        start = None
        for i, (x, y) in enumerate(iterator):
            if i == warmup:
                sync(device)
                start = time.perf_counter()
            if work is not None:
                work(x, y)
        sync(device)
        return batch * steps / (time.perf_counter() - start)

    model = MODELS.build({"name": "resnet50"}, num_classes=data.num_classes, in_channels=3,
                         image_size=224).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    autocast, _ = autocast_factory("auto", device)

    def step(x, y):
        with autocast() if autocast else contextlib.nullcontext():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    x0, y0 = next(iter(batches(StreamPath(data, device, 0, workers=0), 0)))
    yield ("ResNet-50 step alone (one pre-made batch)",
           timed(((x0, y0) for _ in range(steps + warmup)), step))
    for decoder in decoders:
        data = bundle(decoder)
        for count in workers:
            path = StreamPath(data, device, 0, workers=count)
            yield f"loader alone, {count} workers, {decoder}", timed(batches(path, 1))
    data = bundle(decoders[0])
    for count in workers:
        path = StreamPath(data, device, 0, workers=count)
        yield f"loader + step, {count} workers, {decoders[0]}", timed(batches(path, 2), step)


NOISY = 1.2  # max/min of repeats beyond which a figure is called noisy


def spread(values: list[float]) -> tuple[float, float, float]:
    """(min, median, max)."""
    ordered = sorted(values)
    return ordered[0], statistics.median(ordered), ordered[-1]


def fmt_spread(values: list[float], digits: int = 0) -> str:
    low, mid, high = spread(values)
    return f"{low:,.{digits}f} / {mid:,.{digits}f} / {high:,.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["configs/cifar10_lt/ce.yaml"],
                        help="recipe files or globs")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps of the bare loop")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per recipe")
    parser.add_argument("--augment", action="store_true",
                        help="also time each augmentation's step (the mixing ones and gae's "
                             "attack) against the plain step")
    parser.add_argument("--generator", action="store_true",
                        help="also time each feature generator's step against the plain step")
    parser.add_argument("--optim-cost", action="store_true",
                        help="the recipe's optimizer step against a plain SGD step")
    parser.add_argument("--pure-noise", action="store_true",
                        help="also time the step with open_noise and dar_bn (pure-noise images "
                             "routed by DAR-BN) against the plain step")
    parser.add_argument("--strong", action="store_true",
                        help="also time each strong augmentation (AutoAugment, RandAugment, "
                             "Cutout) in the bare loop, as a multiple of its plain step")
    parser.add_argument("--phases", action="store_true",
                        help="also time every phase of a multi-phase recipe (after CE: cRT, "
                             "MARC, OT re-weighting, GAE's fine-tuning) against a bare step of "
                             "the phase's batch size")
    parser.add_argument("--cam", action="store_true",
                        help="also time CAM-based re-sampling's generation against one epoch")
    parser.add_argument("--stream", action="store_true",
                        help="measure the streaming data path with a 224-px ResNet-50 instead")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="--stream: DataLoader worker counts to measure")
    parser.add_argument("--decoders", nargs="+", default=["pil", "torchvision"],
                        help="--stream: JPEG decoders to measure (the first is used with the step)")
    parser.add_argument("--batch", type=int, default=32, help="--stream: batch size")
    parser.add_argument("--stream-root", help="--stream: an image-folder tree to read instead "
                                              "of generated JPEGs")
    parser.add_argument("--concurrent", type=int, nargs="+", metavar="K",
                        help="measure the aggregate img/s of K trainer processes at once, "
                             "for each K, on the first recipe")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="also time the bare loop compiled, and compile the trainer's step "
                             "(train.compile); auto: on CUDA only")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every recipe")
    args = parser.parse_args(argv)
    # ``--recipes`` takes every word after it, so ``--recipes a.yaml key=value`` would read the
    # override as a recipe path: a word with '=' that names no file is an override
    overrides = [w for w in args.recipes if "=" in w and not Path(w).exists()]
    args.recipes = [w for w in args.recipes if w not in overrides]
    args.overrides = [*args.overrides, *overrides]
    if args.worker:  # one process of --concurrent: the trainer's img/s as one JSON line
        ips, _ = time_trainer(load_recipe(args.recipes[0], args.overrides), args.steps)
        print(json.dumps({"images_per_second": ips}), flush=True)
        return 0
    if args.concurrent:
        return concurrent_main(args)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.stream:
        return stream_main(args)
    paths = sorted({p for pattern in args.recipes for p in (glob.glob(pattern) or [pattern])})
    from lttoolbox.engine.trainer import resolve_device
    compiled = args.compile == "on" or (args.compile == "auto"
                                        and resolve_device("auto").type == "cuda")
    rows = []
    for path in paths:
        trainer_ips, bare_ips, step_ips, compiled_ips = [], [], [], []
        try:
            recipe = load_recipe(path, [*args.overrides,
                                        f"train.compile={'on' if compiled else 'off'}"])
            for _ in range(args.repeats):
                ips, trainer = time_trainer(recipe, args.steps)
                bare, step = time_bare(trainer, recipe, args.steps, args.warmup)
                if compiled:
                    compiled_ips.append(time_bare(trainer, recipe, args.steps, args.warmup,
                                                  compiled=True)[0])
                trainer_ips.append(ips)
                bare_ips.append(bare)
                step_ips.append(step)
        except LTError as err:
            print(f"{path}: skipped: {err}", file=sys.stderr)
            continue
        ratios = [t / b for t, b in zip(trainer_ips, bare_ips)]
        for family, wanted in (("augment", args.augment), ("generator", args.generator)):
            if not wanted:
                continue
            costs: dict[str, list[float]] = {}
            for _ in range(args.repeats):
                figures = time_components(trainer, recipe, args.steps, args.warmup, family)
                for name, ips in figures.items():
                    if name != "plain":  # cost = plain img/s over img/s with the component
                        costs.setdefault(name, []).append(figures["plain"] / ips)
            print(f"{path}: step cost with each {family} (x the plain step, min / median / "
                  f"max of {args.repeats}): " + "; ".join(
                      f"{name} {fmt_spread(v, 3)}" for name, v in costs.items()), flush=True)
        if args.optim_cost:
            plain_ips = [time_trainer(plain_sgd(recipe), args.steps)[0]
                         for _ in range(args.repeats)]
            costs = [p / t for p, t in zip(plain_ips, trainer_ips)]
            print(f"{path}: optimizer '{recipe['optim']['name']}' step cost "
                  f"{fmt_spread(costs, 3)} x the plain SGD step ({fmt_spread(plain_ips)} img/s "
                  f"with SGD; min / median / max of {args.repeats})", flush=True)
        if args.pure_noise:
            costs = []
            for _ in range(args.repeats):
                figures = time_pure_noise(trainer, recipe, args.steps, args.warmup)
                costs.append(figures["plain"] / figures["open_noise+dar_bn"])
            print(f"{path}: step cost with open_noise + dar_bn {fmt_spread(costs, 3)} x the plain "
                  f"step (min / median / max of {args.repeats})", flush=True)
        if args.strong:
            costs, alone = {}, {}
            for _ in range(args.repeats):
                figures = time_strong(trainer, recipe, args.steps, args.warmup)
                for name, (ips, ms) in figures.items():
                    alone.setdefault(name, []).append(ms)
                    if name != "plain":
                        costs.setdefault(name, []).append(figures["plain"][0] / ips)
            print(f"{path}: step cost with each strong augmentation (x the bare loop's step "
                  f"with crop/flip only; transform alone in ms per batch; min / median / max "
                  f"of {args.repeats}): plain transform {fmt_spread(alone['plain'], 3)} ms; "
                  + "; ".join(f"{name} {fmt_spread(v, 3)} ({fmt_spread(alone[name], 3)} ms)"
                              for name, v in costs.items()), flush=True)
        if args.phases and recipe.get("phases"):
            timed: dict[tuple[str, int], list[float]] = {}
            for _ in range(args.repeats):
                for name, batch, ips in time_phases(recipe, args.steps):
                    first = recipe["phases"][0]
                    bare = time_bare(trainer, {**first, "train": {**first["train"],
                                                                  "batch_size": batch}},
                                     args.steps, args.warmup)[0]
                    timed.setdefault((name, batch), []).append(ips / bare)
            print(f"{path}: each phase's step against the bare step of its batch size on the "
                  f"first phase's model (ratio, min / median / max of {args.repeats}): "
                  + "; ".join(f"{name} (batch {batch}) {fmt_spread(v, 3)}"
                              for (name, batch), v in timed.items()), flush=True)
        if args.cam:
            seconds, made = time_cam(trainer, recipe)
            epoch = trainer.data_path.labels.numel() / statistics.median(trainer_ips)
            print(f"{path}: CAM-based re-sampling generated {made:,} images in {seconds:.1f} s, "
                  f"{seconds / epoch:.2f} x one training epoch of the trainer "
                  f"({trainer.data_path.labels.numel():,} images at the median "
                  f"{statistics.median(trainer_ips):,.0f} img/s)", flush=True)
        noisy = [name for name, values in (("trainer", trainer_ips), ("bare loop", bare_ips))
                 if max(values) / min(values) > NOISY]
        rows.append((Path(path).as_posix(), trainer_ips, bare_ips, ratios, step_ips,
                     trainer.device, compiled_ips))
        print(f"{path}: trainer {fmt_spread(trainer_ips)} img/s, bare loop "
              f"{fmt_spread(bare_ips)} img/s, ratio {fmt_spread(ratios, 3)} (min / median / max "
              f"of {args.repeats})", flush=True)
        for name in noisy:
            values = trainer_ips if name == "trainer" else bare_ips
            print(f"warning: {path}: the {name}'s img/s varied {max(values) / min(values):.2f}x "
                  f"between repeats (more than {NOISY}x): the machine is noisy and the ratio "
                  f"is not reliable; measure again on an idle machine", file=sys.stderr)
    if not rows:
        return 1
    info = machine_info(rows[0][5])
    print(f"\nmachine: {info['cpu']} ({info['cpu_count']} cores, {info['torch_threads']} torch "
          f"threads), device {info['device']}{' ' + info['gpu'] if 'gpu' in info else ''}, "
          f"torch {info['torch']}, commit {git_commit()}, {args.steps} timed steps each, "
          f"{args.repeats} repeats (min / median / max)")
    extra = " bare compiled loop img/s | trainer / compiled |" if compiled else ""
    print(f"| recipe | trainer img/s | bare loop img/s | ratio | bare step alone img/s |{extra}")
    print("| --- | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if compiled else ""))
    for path, t, b, r, s, _, c in rows:
        line = (f"| {path} | {fmt_spread(t)} | {fmt_spread(b)} | {fmt_spread(r, 3)} | "
                f"{fmt_spread(s)} |")
        if compiled:
            line += f" {fmt_spread(c)} | {fmt_spread([x / y for x, y in zip(t, c)], 3)} |"
        print(line)
    if compiled:
        print("(trainer and compiled loop: torch.compile; their compilation happens in untimed "
              "steps, the trainer reports it as compile_seconds)")
    return 0


def time_concurrent(recipe: str, k: int, steps: int, overrides: list[str]) -> list[float]:
    """Each process's img/s when ``k`` trainer processes run ``recipe`` at once."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--recipes", recipe,
           "--steps", str(steps), *overrides]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(k)]
    rates = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"a concurrent run failed: {err.strip().splitlines()[-1:]}")
        rates.append(json.loads(out.strip().splitlines()[-1])["images_per_second"])
    return rates


def concurrent_main(args) -> int:
    recipe = sorted(glob.glob(args.recipes[0]) or [args.recipes[0]])[0]
    aggregate: dict[int, list[float]] = {}
    per_run: dict[int, list[float]] = {}
    for _ in range(args.repeats):
        for k in args.concurrent:
            rates = time_concurrent(recipe, k, args.steps, args.overrides)
            aggregate.setdefault(k, []).append(sum(rates))
            per_run.setdefault(k, []).extend(rates)
    from lttoolbox.engine.trainer import resolve_device
    info = machine_info(resolve_device("auto"))
    print(f"machine: {info['cpu']} ({info['cpu_count']} cores), device {info['device']}"
          f"{' ' + info['gpu'] if 'gpu' in info else ''}, torch {info['torch']}, commit "
          f"{git_commit()}; {recipe}, {args.steps} timed steps per run, {args.repeats} repeats "
          f"(min / median / max)")
    print("| runs at once | aggregate img/s | img/s per run |")
    print("| ---: | ---: | ---: |")
    for k in args.concurrent:
        print(f"| {k} | {fmt_spread(aggregate[k])} | {fmt_spread(per_run[k])} |")
    best = max(statistics.median(v) for v in aggregate.values())
    chosen = min(k for k, v in aggregate.items() if statistics.median(v) >= 0.95 * best)
    print(f"best concurrency: {chosen} (median aggregate "
          f"{statistics.median(aggregate[chosen]):,.0f} img/s)", flush=True)
    return 0


def stream_main(args) -> int:
    from lttoolbox.engine.trainer import resolve_device

    device = resolve_device("auto")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.stream_root) if args.stream_root else Path(tmp)
        if not args.stream_root:
            write_jpegs(root, args.batch * 4)
        figures: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for name, ips in time_stream(root, args.workers, args.decoders, args.batch,
                                         args.steps, args.warmup, device):
                figures.setdefault(name, []).append(ips)
                print(f"- {name}: {ips:,.1f} img/s", flush=True)  # kept if the run is cut short
    info = machine_info(device)
    print(f"machine: {info['cpu']} ({info['cpu_count']} cores, {info['torch_threads']} torch "
          f"threads), device {info['device']}{' ' + info['gpu'] if 'gpu' in info else ''}, "
          f"torch {info['torch']}, commit {git_commit()}; batch {args.batch}, {args.steps} "
          f"timed steps after {args.warmup}, {args.repeats} repeats (min / median / max)")
    step = statistics.median(figures["ResNet-50 step alone (one pre-made batch)"])
    print("| measurement | img/s | x the step alone |")
    print("| --- | ---: | ---: |")
    for name, values in figures.items():
        print(f"| {name} | {fmt_spread(values, 1)} | {statistics.median(values) / step:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
