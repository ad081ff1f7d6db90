"""One epoch of training, the phase events around it, and evaluation."""
from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings

import numpy as np
import torch

from .. import stop
from ..batch import Batch
from ..data.datapath import shard
from ..epochs import UnreachableEpochWarning
from ..recipe import phase_recipes
from .device import phase_seed
from .distributed import gather_predictions, mean_over_ranks, per_rank_batch, sync_buffers
from .evaluate import (metrics_from_predictions, multilabel_metrics, predict_batches, ranks_for,
                       score_batches)
from .events import RunPhaseEvents, RunStepEvents
from .monitor import check_divergence
from .optim import lr_at, set_lr, warms_up_per_step
from .phases import Phase, active_hooks
from .step import TrainStep

STATUS_EVERY = 25  # steps between progress-bar status updates


class EpochLoop:
    """Trains an epoch and evaluates (a mixin of :class:`~lttoolbox.engine.trainer.Trainer`)."""

    def _train_epoch(self, phase: Phase, index: int, epoch: int, optimizer, scaler,
                     autocast, step_module: TrainStep, step_fn, compiled=None
                     ) -> tuple[dict, float, int]:
        recipe = phase.recipe
        rate = functools.partial(lr_at, epoch, recipe["optim"]["lr"],
                                 total_epochs=recipe["train"]["epochs"], **recipe["schedule"])
        per_step = warms_up_per_step(recipe["schedule"], epoch)
        for part in phase.components:
            part.before_epoch(epoch)
        step_module.hooks = active_hooks(phase)
        if self.world.rank:
            # Ranks draw independent augmentations (crops, mixing partners): a stream of
            # (seed, phase, epoch, rank), so a resumed rank draws as an uninterrupted one.
            torch.manual_seed(phase_seed(recipe["train"]["seed"], index, epoch, self.world.rank))
        # Parameters a component freezes for this epoch (a generator's module once it
        # generates): their gradients are withheld from the step, so neither the update, the
        # momentum nor the weight decay moves them.
        withheld = [p for part in phase.components for p in part.frozen_parameters()]
        self.model.train()
        indices = phase.sampler.indices()  # this rank's every world-size-th position
        # The recipe's batch is the global one: each rank trains on its share, and global batch
        # k is the union of the ranks' batches k.
        batch_size = per_rank_batch(recipe["train"]["batch_size"], self.world)
        steps = (indices.numel() // batch_size if recipe["train"]["drop_last"]
                 else math.ceil(indices.numel() / batch_size))
        positions = self.world.rank + self.world.size * np.arange(indices.numel())
        batches = self.data_path.epoch(indices, positions, batch_size, (index, epoch), steps)
        lr = rate(step=0, steps=steps)
        set_lr(optimizer, lr)
        # Sums of (total, criterion, *auxiliary) over the epoch's steps, or of the total alone.
        loss_sum = torch.zeros(1 + len(step_module.term_names), device=self.device)
        compile_seconds = 0.0
        self.log.start_epoch(f"{self._epoch_label(phase)}epoch {epoch + 1}/"
                             f"{recipe['train']['epochs']}", steps)
        start = time.perf_counter()
        events = RunStepEvents(self, index, epoch, steps, optimizer, step_fn, autocast)
        parts = recipe["train"]["accumulate"]
        clip = gradient_clipping(recipe["train"]["clip_grad_norm"], optimizer, scaler)
        ema = self.ema
        for step in range(steps):
            stop.check()  # a stop request some library swallowed still ends the run here
            if per_step and step:
                lr = rate(step=step, steps=steps)
                set_lr(optimizer, lr)
            drawn = indices[step * batch_size:(step + 1) * batch_size]
            events.begin(step, Batch.plain(*next(batches), index=drawn), lr)
            for part in phase.components:
                part.before_step(events)
            batch = events.batch
            # The compiled step takes full batches only: the last, partial one runs eagerly
            # rather than compiling a second graph (nothing dropped, nothing padded). A full
            # batch is one of batch_size drawn images, whatever rows the components made of it.
            fast = (compiled is not None and drawn.numel() == batch_size
                    and compiled.takes(batch.x.shape[0]))

            if parts == 1:
                def closure(batch=batch, fast=fast):
                    """Forward and backward of the batch; returns the step's losses. An
                    optimizer may call it more than once (``torch.optim``'s closure
                    convention)."""
                    nonlocal compile_seconds
                    timed = fast and not compiled.ready  # the first call compiles: time it apart
                    begin = time.perf_counter()
                    with autocast() if autocast else contextlib.nullcontext():
                        losses = (compiled if fast else step_fn)(batch)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(losses[0]).backward()
                    if timed:
                        compiled.mark_ready(self.device, time.perf_counter() - begin)
                        compile_seconds = compiled.seconds
                    for param in withheld:
                        param.grad = None
                    clip()
                    return losses
            else:
                def closure(batch=batch):
                    """``train.accumulate``: the batch's forward and backward in ``parts``
                    parts, their gradients summed (see :func:`accumulated_step`)."""
                    optimizer.zero_grad(set_to_none=True)
                    losses = accumulated_step(step_module, step_fn, batch, parts, autocast,
                                              scaler, self.world.distributed)
                    for param in withheld:
                        param.grad = None
                    clip()
                    return losses

            if scaler.is_enabled():  # fp16 loss scaling steps without a closure
                losses = closure()
                scaler.step(optimizer)
            else:
                losses = optimizer.step(closure)
            scaler.update()
            if ema is not None:
                ema.update(self.model)
            for part in phase.components:
                part.after_step(events)
            loss = losses[0]
            loss_sum += losses.detach()
            if self._loss_reference is None:  # once per phase: what divergence is judged by
                self._loss_reference = float(mean_over_ranks(loss.detach(), self.world))
            if self.log.live and (step + 1) % STATUS_EVERY == 0:
                # Only with a visible bar, and only every few steps: reading the loss waits for
                # the device.
                speed = (step + 1) * batch_size / (time.perf_counter() - start)
                self.log.advance(status=f"loss {loss_sum[0].item() / (step + 1):.4f}  "
                                        f"lr {lr:.2e}  {speed:,.0f} img/s")
            else:
                self.log.advance()
        for _ in batches:  # let the data path finish its epoch (a loader's last StopIteration)
            pass
        for part in phase.components:
            part.after_epoch(epoch)
        # the epoch's one host synchronization (and, across processes, its one all-reduce)
        means = [total / max(1, steps) for total in mean_over_ranks(loss_sum, self.world).tolist()]
        mean_loss = means[0]
        spent = time.perf_counter() - start - compile_seconds
        count = int(min(indices.numel(), steps * batch_size)) * self.world.size
        check_divergence(mean_loss, self._loss_reference, epoch, phase.name, lr)
        row = {"phase": phase.name, "epoch": epoch, "loss": round(mean_loss, 6), "lr": lr,
               "seconds": round(spent, 3), "images_per_second": round(count / spent, 1)}
        if step_module.term_names:  # each term's mean, named as in the recipe
            row["loss_terms"] = {name: round(value, 6)
                                 for name, value in zip(step_module.term_names, means[1:])}
        if compile_seconds:  # training time above excludes it
            row["compile_seconds"] = round(compile_seconds, 3)
            if compiled.failed:  # the phase then trained eagerly
                row["compile_failed"] = compiled.failed
        return row, spent, count

    #: The moving average of the phase's weights (``train.ema``), or None.
    ema = None

    def _all_components(self) -> list:
        """Every phase's components, in phase order."""
        return [part for phase in self.phases for part in phase.components]

    def _epoch_label(self, phase: Phase) -> str:
        return f"{phase.name} " if len(self.phases) > 1 else ""

    def _before_phase(self, index: int, replay: bool = False) -> None:
        """Send the phase's components ``before_phase``; a component that grew the training set
        (``adds_images``) makes the phase's components be rebuilt on the grown set
        (samplers and losses see the new counts)."""
        events = RunPhaseEvents(self, index, replay)
        phase = self.phases[index]
        for part in phase.components:
            part.before_phase(events)
        if events.training_set_changed:
            with warnings.catch_warnings():  # named once per recipe key before training
                warnings.simplefilter("ignore", UnreachableEpochWarning)
                self.phases[index] = self._build_phase(phase.recipe, index,
                                                       phase_recipes(self.recipe)[0])
            for part in self.phases[index].components:  # new objects: each hears it once
                part.before_run(self._run_info)

    def _after_phase(self, index: int, autocast) -> None:
        """Send the phase's components and the model's head ``after_phase`` (a head may choose a
        setting on the validation split there)."""
        events = RunPhaseEvents(self, index, autocast=autocast)
        for part in [*self.phases[index].components, self.model.head]:
            part.after_phase(events)

    def evaluate(self, phase: Phase, autocast, split: str = "test", model=None) -> dict:
        """The metrics of the model (or of ``model``, the moving average of its weights) on the
        test split, or on the validation split.

        Across processes each rank predicts its shard (no padding) and every rank gathers all
        predictions with their positions, checked to count each image exactly once; every rank
        then holds the same metrics (a post-hoc choice made on them is the same everywhere).
        """
        ev = phase.recipe["eval"]
        model = self.model if model is None else model
        sync_buffers(model, self.world)  # rank 0's batch-norm statistics, as checkpointed
        total = self.data_path.eval_size(split)
        positions = shard(total, self.world.rank, self.world.size)
        if self.data.multilabel:  # multi-hot targets: average precision of the logits' ranks
            scores = score_batches(model, self.data_path.eval_batches(
                split, ev["batch_size"], positions), autocast).reshape(-1, self.num_classes)
            scores, _ = gather_predictions(positions, scores, np.zeros(len(positions)), total,
                                           self.world)
            # eval.many_threshold / few_threshold cut the groups as the multi-label
            # benchmarks do: head n >= many_threshold, tail n < few_threshold
            return multilabel_metrics(scores, self.data_path.eval_labels(split),
                                      self.class_counts, ev["many_threshold"],
                                      ev["few_threshold"])
        pred, conf = predict_batches(
            model, self.data_path.eval_batches(split, ev["batch_size"], positions), autocast,
            k=ranks_for(self.num_classes))
        pred, conf = gather_predictions(positions, pred, conf, total, self.world)
        return metrics_from_predictions(pred, self.data_path.eval_labels(split), conf,
                                        self.num_classes, self.class_counts,
                                        ev["many_threshold"], ev["few_threshold"], ev["ece_bins"])


def gradient_clipping(max_norm: float | None, optimizer, scaler):
    """``train.clip_grad_norm``: a function that scales the step's gradients so that their
    global L2 norm is at most ``max_norm`` (``torch.nn.utils.clip_grad_norm_`` over every
    parameter the optimizer updates, the components' too), after unscaling fp16 gradients;
    with ``None`` a function that does nothing. It runs after the backward of each closure
    call, so a two-pass optimizer (sam) clips each pass's gradient. No host synchronization:
    the norm and the factor stay on the device."""
    if max_norm is None:
        return lambda: None
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def clip() -> None:
        if scaler.is_enabled():
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)

    return clip


def accumulated_step(step_module: TrainStep, step_fn, batch: Batch, parts: int, autocast,
                     scaler, distributed: bool) -> torch.Tensor:
    """``train.accumulate``: one step's gradient computed in ``parts`` consecutive parts of the
    batch, summed, equal to the gradient of the whole batch where the loss is a batch mean.

    Each part's criterion is divided by the whole batch's normalizer (its size, or the sum of
    its class weights; the step's cross-process normalisation applies to that), not by its own,
    and each component's auxiliary loss is weighed by the part's share of the batch: summed over
    the parts, the loss and its gradient are the whole batch's. What cannot be the same is
    refused before training (a loss whose batch reduction is its own, a class-weighted loss
    with a mixing augmentation, a two-pass optimizer); what differs by nature is documented:
    BatchNorm's statistics and a mixing augmentation's draws are each part's. Across processes
    the gradients are all-reduced once, after the last part (``no_sync`` before it).

    Returns:
        The step's losses ``(total, criterion, *auxiliary)``, summed over the parts: the whole
        batch's.
    """
    base = step_module.normalize
    loss = step_module.loss
    first = loss.normalizer(batch.y_a)
    # A batch mixed before the step (by a component's before_step) has its second targets now;
    # one that a hook mixes inside the forward has the same normalizer for both (its size: a
    # class-weighted loss with a mixing hook is refused).
    full = torch.stack([first, loss.normalizer(batch.y_b) if batch.mixed else first]).detach()
    size = batch.x.shape[0]

    def normalize(norms: torch.Tensor) -> torch.Tensor:
        whole = full[:norms.numel()]
        return whole if base is None else base(whole)

    total = None
    chunks = batch.chunks(parts)
    try:
        step_module.normalize = normalize
        for j, chunk in enumerate(chunks):
            step_module.share = chunk.x.shape[0] / size
            last = j == len(chunks) - 1
            with (step_fn.no_sync() if distributed and not last else contextlib.nullcontext()):
                with autocast() if autocast else contextlib.nullcontext():
                    losses = step_fn(chunk)
                scaler.scale(losses[0]).backward()
            total = losses.detach() if total is None else total + losses.detach()
    finally:
        step_module.normalize = base
        step_module.share = 1.0
    return total
