"""The extension-point contract (lttoolbox/api.py), checked on every registered entry of every
component family and every head: the trainer calls these methods uniformly, so each entry must
answer them with the declared types, act only at points the model has, keep a checkpoint state
that loads back, and do in a step what its declared capabilities say."""
from __future__ import annotations

import inspect
from dataclasses import fields, replace

import numpy as np
import pytest
import torch

from lttoolbox.api import Component, Context, Head
from lttoolbox.batch import Batch
from lttoolbox.engine.optim import lr_at
from lttoolbox.registry import (AUGMENTS, GENERATORS, HEADS, LOSSES, MODELS, OPTIMIZERS,
                                SAMPLERS, SCHEDULES, accepted_parameters, recipe_parameters)

pytestmark = pytest.mark.filterwarnings("ignore::lttoolbox.epochs.UnreachableEpochWarning")

COUNTS = [40, 20, 10, 6, 4]
LABELS = np.repeat(np.arange(len(COUNTS)), COUNTS)
MODEL = MODELS.build({"name": "digits_cnn"}, num_classes=len(COUNTS), in_channels=1,
                     image_size=16)
IMAGES = torch.rand(len(LABELS), 1, 16, 16)


def fetch(indices: torch.Tensor):
    return IMAGES[indices], torch.as_tensor(LABELS)[indices]


CONTEXT = {"class_counts": COUNTS, "num_classes": len(COUNTS), "labels": LABELS, "seed": 0,
           "total_epochs": 6, "rank": 0, "world_size": 1, "feature_dim": MODEL.feature_dim,
           "point_names": MODEL.point_names, "point_shapes": MODEL.point_shapes(IMAGES[:2]),
           "imbalance_type": "exp", "fetch": fetch, "image_shape": (1, 16, 16),
           "train_transform": lambda x: x.float() / 255}
#: Values for parameters an entry requires (no default), by parameter name: a new entry with a
#: required parameter of another name fails below, asking for one.
REQUIRED = {"choices": [{"name": "mixup"}, {"name": "cutmix"}], "p": [0.5, 0.25],
            "open": {"source": "noise", "size": 64}}
#: The model an entry acts on where it refuses digits_cnn (``check_model``: it trains the two
#: branches of a two-branch model), by entry name.
MODEL_FOR = {"bbn": {"name": "two_branch_digits_cnn", "layout": "bbn"},
             "dbn_mix": {"name": "two_branch_digits_cnn", "layout": "dbn_mix"}}
FAMILIES = {"sampler": SAMPLERS, "loss": LOSSES, "augment": AUGMENTS, "generator": GENERATORS}
FLAGS = ("mixes", "generates", "adds_loss", "adds_images", "reads_trained_model", "learned",
         "adds_rows", "regroups_rows", "multilabel", "single_label")


def shipped(registry) -> list[str]:
    """The entries lttoolbox ships (not toys other tests register)."""
    return [n for n in registry.names()
            if registry.get(n).__module__.startswith("lttoolbox.")]


CASES = [(family, name) for family, registry in FAMILIES.items() for name in shipped(registry)]


def required(family: str, name: str) -> dict:
    """Values for the recipe parameters the entry requires."""
    params = {}
    for p in recipe_parameters(FAMILIES[family], name):
        if p.default is inspect.Parameter.empty:
            assert p.name in REQUIRED, f"{family} '{name}' requires '{p.name}': add an example"
            params[p.name] = REQUIRED[p.name]
    return params


#: The training labels as multi-hot rows, for the entries made for multi-label sets only.
LABEL_MATRIX = np.eye(len(COUNTS), dtype=np.float32)[LABELS]


def context_for(family: str, name: str) -> dict:
    """The context the entry is checked with: a multi-label one (the same images, one-hot rows)
    for an entry that takes multi-hot targets only."""
    if getattr(FAMILIES[family].get(name), "single_label", True):
        return CONTEXT
    return {**CONTEXT, "labels": LABEL_MATRIX}


def build(family: str, name: str):
    return FAMILIES[family].build({"name": name, **required(family, name)},
                                  **context_for(family, name))


def model_for(part) -> torch.nn.Module:
    """digits_cnn, or the model the entry names in :data:`MODEL_FOR` where it refuses
    digits_cnn (and accepts that one)."""
    reason = part.refusal(MODEL)
    assert reason is None or (isinstance(reason, str) and reason and "\n" not in reason)
    if reason is None:
        return MODEL
    name = part.registry_name
    assert name in MODEL_FOR, f"'{name}' refuses digits_cnn ({reason}): add it to MODEL_FOR"
    model = MODELS.build(MODEL_FOR[name], num_classes=len(COUNTS), in_channels=1,
                         image_size=16)
    assert part.refusal(model) is None
    return model


def test_every_family_has_entries():
    assert all(shipped(r) for r in FAMILIES.values()) and shipped(HEADS)


@pytest.mark.parametrize("family,name", CASES, ids=[f"{f}-{n}" for f, n in CASES])
def test_the_component_contract(family, name):
    torch.manual_seed(0)
    part = build(family, name)
    assert isinstance(part, Component)
    for flag in FLAGS:
        assert isinstance(getattr(part, flag), bool), flag
    assert part.registry_name == name
    points = part.points()
    assert isinstance(points, tuple) and set(points) <= set(MODEL.point_names)
    if part.mixes or part.generates:
        assert points, "a component that mixes or generates acts at a model point"
    if part.generates:
        assert len(points) == 1
    # the epoch window, as the trainer sends the epochs
    for epoch in range(CONTEXT["total_epochs"]):
        part.before_epoch(epoch)
        end = part.end_epoch if part.end_epoch is not None else float("inf")
        assert part.active == (part.start_epoch <= epoch < end)
        part.after_epoch(epoch)
    frozen = list(part.frozen_parameters())
    assert all(isinstance(p, torch.nn.Parameter) for p in frozen)
    if part.learned:
        owned = {id(p) for p in part.parameters()}
        assert owned and all(id(p) in owned for p in frozen)
    # a step through the model with its hooks, in an epoch where it acts
    part.before_epoch(part.start_epoch)
    model = model_for(part).train()
    x, y = fetch(torch.arange(0, len(LABELS), 3))
    logits, batch = model.forward_hooked(Batch.plain(x, y),
                                         {p: part.hook(p) for p in points})
    assert logits.shape == (batch.y_a.shape[0], len(COUNTS))
    extra = part.auxiliary_loss()
    if part.adds_loss:
        assert extra is None or (extra.dim() == 0 and torch.isfinite(extra))
    else:
        assert extra is None
    if family == "loss":  # a loss on multi-hot targets only scores the one-hot rows
        target = (batch.y_a if part.single_label
                  else torch.nn.functional.one_hot(batch.y_a, len(COUNTS)).float())
        value = part(logits.detach(), target)
        assert value.dim() == 0 and torch.isfinite(value)
    if family == "sampler":
        idx = part.indices()
        assert idx.dtype == torch.int64 and 0 <= int(idx.min()) and int(idx.max()) < len(LABELS)
    # the checkpoint state loads into a fresh instance
    state = part.state_dict()
    fresh = build(family, name)
    fresh.load_state_dict(state)
    assert {k: v for k, v in fresh.state_dict().items()}.keys() == dict(state).keys()


# ------------------------------------------------------------------ the context, one object
CONTEXT_FIELDS = {f.name for f in fields(Context)}
#: What the trainer would tell a phase on this data, made the standalone way.
WHOLE = Context.from_counts(COUNTS, **{k: v for k, v in CONTEXT.items()
                                       if k not in ("class_counts", "num_classes", "labels")})


def family_base(registry) -> type:
    """The most derived class every shipped entry of the family derives from (the loss base, the
    sampler base, ...): the one class that may offer the context's fields as shorthands."""
    mros = [registry.get(n).__mro__ for n in shipped(registry)]
    return next(c for c in mros[0] if all(c in m for m in mros))


def snapshot(obj):
    """Everything an object holds, recursively, as comparable values: attributes, tensors and
    arrays by value, contexts field by field, functions by identity."""
    if isinstance(obj, Context):
        return ("Context", tuple((f.name, snapshot(getattr(obj, f.name))) for f in fields(obj)))
    if isinstance(obj, torch.Tensor):
        return ("tensor", str(obj.dtype), tuple(obj.shape), obj.detach().cpu().flatten().tolist())
    if isinstance(obj, np.ndarray):
        return ("array", str(obj.dtype), obj.shape, obj.ravel().tolist())
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(snapshot(v) for v in obj))
    if isinstance(obj, (set, frozenset)):
        return ("set", tuple(sorted(map(repr, obj))))
    if isinstance(obj, dict):
        return ("dict", tuple(sorted((repr(k), snapshot(v)) for k, v in obj.items())))
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return ("callable", obj)  # the same function, or a method of the same object
    if isinstance(obj, (Component, torch.nn.Module)):
        return (type(obj).__name__, snapshot(vars(obj)))
    return obj


@pytest.mark.parametrize("family", FAMILIES)
def test_only_the_family_base_names_the_context_fields(family):
    """An entry declares its own parameters only: what the data and the run tell it comes as the
    one ``context`` (or, for standalone use, as the shorthands of the family's base class)."""
    registry = FAMILIES[family]
    base = family_base(registry)
    assert "context" in inspect.signature(base.__init__).parameters, base
    for name in shipped(registry):
        for cls in registry.get(name).__mro__:
            if cls is base:
                break
            init = cls.__dict__.get("__init__")
            named = set(inspect.signature(init).parameters) & CONTEXT_FIELDS if init else set()
            assert not named, (f"{family} '{name}': {cls.__qualname__}.__init__ declares "
                               f"{', '.join(sorted(named))}; read them from self.context")


@pytest.mark.parametrize("family,name", CASES, ids=[f"{f}-{n}" for f, n in CASES])
def test_every_entry_builds_from_the_context_alone(family, name):
    """``Entry(context=..., **its required parameters)`` builds the same object as the registry
    does from the context's fields by name, and as it does from what the trainer offers (the
    object and its fields); the entry keeps the object it was given."""
    registry, factory = FAMILIES[family], FAMILIES[family].get(name)
    params = required(family, name)
    assert "context" in accepted_parameters(factory)[0]
    whole = (WHOLE if getattr(factory, "single_label", True)
             else replace(WHOLE, labels=LABEL_MATRIX))
    torch.manual_seed(0)
    direct = factory(context=whole, **params)
    torch.manual_seed(0)
    by_fields = registry.build({"name": name, **params},
                               **{f: getattr(whole, f) for f in CONTEXT_FIELDS})
    torch.manual_seed(0)
    as_trained = registry.build({"name": name, **params}, **whole.as_kwargs())
    assert direct.context is whole and as_trained.context is whole
    assert snapshot(direct) == snapshot(by_fields) == snapshot(as_trained)


@pytest.mark.parametrize("name", shipped(HEADS))
def test_the_head_contract(name):
    head = HEADS.build({"name": name}, in_features=MODEL.feature_dim, num_classes=len(COUNTS))
    assert isinstance(head, Head) and isinstance(head, torch.nn.Module)
    assert isinstance(head.follows, tuple) and set(head.follows) <= set(HEADS.names())
    assert isinstance(head.needs_validation, bool)
    assert head(torch.randn(3, MODEL.feature_dim)).shape == (3, len(COUNTS))
    if head.follows:  # takes over a head it names
        previous = HEADS.build({"name": head.follows[0]}, in_features=MODEL.feature_dim,
                               num_classes=len(COUNTS))
        head.adopt(previous)


@pytest.mark.parametrize("name", shipped(OPTIMIZERS))
def test_the_optimizer_contract(name):
    """An optimizer entry takes parameter groups and steps with a closure that computes the
    loss and its gradients (called once or, by a two-pass method, more often); it returns what
    the closure returned first."""
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = OPTIMIZERS.build({"name": name}, key="optim", params=[{"params": [weight]}])
    assert isinstance(opt, torch.optim.Optimizer)
    calls = []

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = (weight ** 2).sum()
        loss.backward()
        calls.append(loss.detach())
        return loss.detach().reshape(1)

    before = weight.detach().clone()
    out = opt.step(closure)
    assert calls and torch.equal(out, calls[0].reshape(1))
    assert not torch.equal(weight.detach(), before)  # it moved the parameter
    assert weight.detach().abs().sum() < before.abs().sum()  # downhill on |w|^2


@pytest.mark.parametrize("name", shipped(SCHEDULES))
def test_the_schedule_contract(name):
    """A schedule gives a finite rate in [0, base_lr] for every epoch, and the warm-up scales
    it: epoch 0 of a 4-epoch warm-up trains at a quarter of the decayed rate."""
    total = 10
    rates = [lr_at(e, 0.1, name=name, total_epochs=total, milestones=[5], gamma=0.1)
             for e in range(total)]
    assert all(0.0 <= r <= 0.1 + 1e-12 for r in rates)
    warm = lr_at(0, 0.1, name=name, total_epochs=total, milestones=[5], warmup_epochs=4)
    plain = SCHEDULES.get(name)(**{k: v for k, v in {
        "epoch": 0, "base_lr": 0.1, "total_epochs": total, "warmup_epochs": 4,
        "milestones": [5]}.items() if k in inspect.signature(SCHEDULES.get(name)).parameters})
    assert warm == pytest.approx(plain / 4)
