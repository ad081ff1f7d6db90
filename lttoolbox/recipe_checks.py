"""Checks and defaults of the sections the trainer reads itself: optim, schedule, train, eval.

Every value is checked for its type and range before anything is built or written, so a bad
recipe stops with one line naming the key. Numbers may be written in exponent form (``1e-3``,
``1e2``); an integer-valued key accepts a float only when it is a whole number (``1e2`` -> 100).

Each optimizer has its own defaults, so ``optim: {name: adam}`` does not inherit SGD's
``momentum`` and ``nesterov``; the extra keys go to the optimizer's constructor.
"""
from __future__ import annotations

import math
import re
from typing import Any

from .errors import ConfigError
from .registry import suggest



def optimizer_defaults() -> dict[str, dict[str, Any]]:
    """Each registered optimizer's recipe defaults: its entry's parameters (``OPTIMIZERS``,
    lttoolbox/engine/optim.py), then ``no_decay``."""
    from .registry import OPTIMIZERS, recipe_parameters
    return {name: {**{p.name: list(p.default) if isinstance(p.default, tuple) else p.default
                      for p in recipe_parameters(OPTIMIZERS, name)}, "no_decay": []}
            for name in OPTIMIZERS.names()}


def needs_closure(name: str) -> bool:
    """Whether the optimizer entry ``name`` declares that its step evaluates the closure itself
    (``needs_closure = True``, a two-pass method such as sam): fp16 loss scaling, which steps
    through ``GradScaler`` without a closure, cannot run it."""
    from .registry import OPTIMIZERS
    return bool(getattr(OPTIMIZERS.get(name), "needs_closure", False))


def check_optimizer_builds(optim: dict, key: str) -> None:
    """Build the ``optim`` section's entry on a stand-in parameter: the values only the entry
    checks (``sam``'s ``rho`` and ``base``, a range torch enforces) are refused now, with their
    key, rather than when the phase's optimizer is built after the run directory was written."""
    import torch

    from .registry import OPTIMIZERS
    cfg = {k: v for k, v in optim.items() if k != "no_decay"}
    OPTIMIZERS.build(cfg, key=key, params=[{"params": [torch.nn.Parameter(torch.zeros(1))]}])


def schedule_names() -> tuple[str, ...]:
    """The registered learning-rate schedules (``SCHEDULES``)."""
    from .registry import SCHEDULES
    return tuple(SCHEDULES.names())

LOGGERS = ("tensorboard", "mlflow", "wandb")
WANDB_MODES = ("offline", "online")
# W&B refuses these characters in a project name, and more than 128 of them
# (wandb/sdk/wandb_settings.py, Settings.validate_project, wandb 0.31.0)
WANDB_PROJECT_FORBIDDEN = "/\\#?%:"
AMP_MODES = ("auto", "off", "bf16", "fp16")
COMPILE_MODES = ("auto", "off", "on")
WARMUP_UNITS = ("epoch", "step")
SEED_LIMIT = 2 ** 32  # numpy's seeds are 32-bit
PHASE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_LR = 1e6
MAX_ECE_BINS = 1000  # calibration bins: 15 is usual; far more leaves most bins empty


def number(value: Any, key: str, *, integer: bool = False, minimum: float | None = None,
           below: float | None = None, positive: bool = False) -> int | float:
    """A finite number (a whole one with ``integer``) within the given bounds.

    Returns:
        The value, an ``int`` when ``integer`` (``1e2`` becomes ``100``).
    """
    what = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"must be {what}, got {value!r}", key=key)
    if not math.isfinite(value):
        raise ConfigError(f"must be a finite number, got {value!r}", key=key)
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"must be a whole number, got {value!r}", key=key)
        value = int(value)
    if positive and not value > 0:
        raise ConfigError(f"must be positive, got {value!r}", key=key)
    if minimum is not None and value < minimum:
        raise ConfigError(f"must be at least {minimum}, got {value!r}", key=key)
    if below is not None and not value < below:
        raise ConfigError(f"must be below {below}, got {value!r}", key=key)
    return value


def boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {value!r}", key=key)
    return value


def choice(value: Any, key: str, options: tuple[str, ...], what: str = "") -> str:
    if not isinstance(value, str) or value not in options:
        hint = suggest(value, options) if isinstance(value, str) else ""
        raise ConfigError(f"unknown {what or 'value'} {value!r}{hint} Known: {', '.join(options)}.",
                          key=key)
    return value


def _setting_text(value: Any, key: str, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"must be {'null or ' if optional else ''}a non-empty string, got "
                          f"{value!r}", key=key)


#: ``train.mlflow`` and ``train.wandb``, read only when ``train.loggers`` names them
#: (lttoolbox/engine/tracking.py).
TRACKING_DEFAULTS = {"mlflow": {"tracking_uri": None, "experiment": "lttoolbox", "run_name": None},
                     "wandb": {"project": "lttoolbox", "mode": "offline", "dir": None}}


def check_tracking(train: dict, p: str = "") -> None:
    """The ``train.mlflow`` and ``train.wandb`` settings (checked whether or not
    ``train.loggers`` names them, so a typo is caught before the logger is switched on)."""
    for section in ("mlflow", "wandb"):
        value = train[section]
        key = f"{p}train.{section}"
        if not isinstance(value, dict):
            raise ConfigError(f"must be a mapping with the keys "
                              f"{', '.join(TRACKING_DEFAULTS[section])}, got {value!r}", key=key)
        known = TRACKING_DEFAULTS[section]
        for name in value:
            if name not in known:
                raise ConfigError(f"unknown key{suggest(name, tuple(known))} "
                                  f"Known: {', '.join(known)}.", key=f"{key}.{name}")
    mlflow, wandb = train["mlflow"], train["wandb"]
    _setting_text(mlflow["tracking_uri"], f"{p}train.mlflow.tracking_uri", optional=True)
    _setting_text(mlflow["experiment"], f"{p}train.mlflow.experiment")
    _setting_text(mlflow["run_name"], f"{p}train.mlflow.run_name", optional=True)
    _setting_text(wandb["project"], f"{p}train.wandb.project")
    if len(wandb["project"]) > 128 or any(c in wandb["project"] for c in WANDB_PROJECT_FORBIDDEN):
        raise ConfigError(f"a W&B project name has at most 128 characters and none of "
                          f"{' '.join(WANDB_PROJECT_FORBIDDEN)}, got {wandb['project']!r}",
                          key=f"{p}train.wandb.project")
    choice(wandb["mode"], f"{p}train.wandb.mode", WANDB_MODES, "mode")
    _setting_text(wandb["dir"], f"{p}train.wandb.dir", optional=True)


def optim_defaults(optim: Any, key: str) -> dict:
    """The ``optim`` section with its optimizer's defaults filled in; unknown keys refused."""
    if optim is None:
        optim = {}
    if not isinstance(optim, dict):
        raise ConfigError(f"must be a mapping, got {optim!r}", key=key)
    table = optimizer_defaults()
    name = choice(optim.get("name", "sgd"), f"{key}.name", tuple(table), "optimizer")
    known = table[name]
    for extra in optim:
        if extra != "name" and extra not in known:
            inherited = ("; it belongs to another optimizer: replace the whole section, e.g. "
                         f"optim={{name: {name}, lr: {known['lr']}}}"
                         if any(extra in d for d in table.values()) else "")
            raise ConfigError(f"optimizer '{name}' has no parameter '{extra}'"
                              f"{suggest(extra, known)} Accepted: {', '.join(sorted(known))}"
                              f"{inherited}.", key=f"{key}.{extra}")
    return {"name": name, **known, **{k: v for k, v in optim.items() if k != "name"}}


def check_step_options(train: dict, optim: dict, p: str) -> None:
    """Check (and normalise) ``train.ema``, ``train.clip_grad_norm`` and ``train.accumulate``."""
    if train["clip_grad_norm"] is not None:
        train["clip_grad_norm"] = number(train["clip_grad_norm"], f"{p}train.clip_grad_norm",
                                         positive=True)
    train["accumulate"] = number(train["accumulate"], f"{p}train.accumulate", integer=True,
                                 minimum=1)
    if train["accumulate"] > train["batch_size"]:
        raise ConfigError(f"splits each batch into that many parts, at most train.batch_size "
                          f"({train['batch_size']}); got {train['accumulate']}",
                          key=f"{p}train.accumulate")
    if train["accumulate"] > 1 and needs_closure(optim["name"]):
        raise ConfigError(f"optimizer '{optim['name']}' evaluates the loss more than once per "
                          f"step (a two-pass step), which gradient accumulation cannot split "
                          f"into parts; use accumulate: 1", key=f"{p}train.accumulate")
    ema = train["ema"]
    if ema is None:
        return
    if isinstance(ema, (int, float)) and not isinstance(ema, bool):
        ema = {"decay": ema}
    if not isinstance(ema, dict):
        raise ConfigError(f"must be null, a decay such as 0.999, or {{decay: 0.999, every: 1}}, "
                          f"got {ema!r}", key=f"{p}train.ema")
    unknown = sorted(set(ema) - set(EMA_DEFAULTS))
    if unknown:
        raise ConfigError(f"has no parameter '{unknown[0]}'; accepted: "
                          f"{', '.join(EMA_DEFAULTS)}", key=f"{p}train.ema.{unknown[0]}")
    ema = {**EMA_DEFAULTS, **ema}
    ema["decay"] = number(ema["decay"], f"{p}train.ema.decay", positive=True, below=1)
    ema["every"] = number(ema["every"], f"{p}train.ema.every", integer=True, minimum=1)
    train["ema"] = ema


#: ``train.ema``'s parameters: the decay of the average per update, and the optimizer steps
#: between two updates.
EMA_DEFAULTS = {"decay": 0.9999, "every": 1}


def check_trainer_values(recipe: dict, prefix: str, min_epochs: int = 1) -> None:
    """Check (and normalise in place) the optim, schedule, train and eval sections.

    ``min_epochs`` is 0 for a later phase, which may only change the model (tau-normalisation).
    """
    train, optim, schedule, ev = (recipe[s] for s in ("train", "optim", "schedule", "eval"))
    p = prefix
    # Rates of MAX_LR and beyond overflow float32 weight updates before any check could see
    # the loss; far smaller ones already diverge, which the trainer catches.
    optim["lr"] = number(optim["lr"], f"{p}optim.lr", positive=True, below=MAX_LR)
    optim["weight_decay"] = number(optim["weight_decay"], f"{p}optim.weight_decay", minimum=0)
    # ``null`` where the entry's default is null: an optimizer around a base one (sam) leaves
    # the value to the base's own default.
    nullable = {k for k, v in optimizer_defaults()[optim["name"]].items() if v is None}

    def given(name: str) -> bool:
        return name in optim and not (optim[name] is None and name in nullable)

    if given("momentum"):  # SGD: momentum 1 or more never forgets, so the steps only grow
        optim["momentum"] = number(optim["momentum"], f"{p}optim.momentum", minimum=0, below=1)
    if given("nesterov"):
        optim["nesterov"] = boolean(optim["nesterov"], f"{p}optim.nesterov")
    if "betas" in optim:
        betas = optim["betas"]
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise ConfigError(f"must be two numbers in [0, 1), got {betas!r}",
                              key=f"{p}optim.betas")
        optim["betas"] = [number(b, f"{p}optim.betas", minimum=0, below=1) for b in betas]
        optim["eps"] = number(optim["eps"], f"{p}optim.eps", positive=True)
    no_decay = optim["no_decay"]
    if not isinstance(no_decay, list) or not all(isinstance(n, str) and n for n in no_decay):
        raise ConfigError(f"must be a list of 'bias', 'norm' or parameter names, got {no_decay!r}",
                          key=f"{p}optim.no_decay")
    check_optimizer_builds(optim, f"{p}optim")

    choice(schedule["name"], f"{p}schedule.name", schedule_names(), "schedule")
    choice(schedule["warmup_unit"], f"{p}schedule.warmup_unit", WARMUP_UNITS)
    per_step = schedule["warmup_unit"] == "step"  # may then last a fraction of an epoch
    try:
        schedule["warmup_epochs"] = number(schedule["warmup_epochs"], f"{p}schedule.warmup_epochs",
                                           integer=not per_step, minimum=0)
    except ConfigError as err:
        raise ConfigError(f"{err.detail} (a fraction of an epoch needs warmup_unit: step)"
                          if not per_step else err.detail, key=err.key) from None
    schedule["warmup_start"] = number(schedule["warmup_start"], f"{p}schedule.warmup_start",
                                      minimum=0, below=1)
    schedule["gamma"] = number(schedule["gamma"], f"{p}schedule.gamma", positive=True)
    if schedule["gamma"] > 1:
        raise ConfigError(f"is the factor the rate is multiplied by at each milestone, a decay in "
                          f"(0, 1]; got {schedule['gamma']!r}", key=f"{p}schedule.gamma")
    schedule["min_lr"] = number(schedule["min_lr"], f"{p}schedule.min_lr", minimum=0)
    milestones = schedule["milestones"]
    if not isinstance(milestones, list):
        raise ConfigError(f"must be a list of epoch numbers, got {milestones!r}",
                          key=f"{p}schedule.milestones")
    schedule["milestones"] = [number(m, f"{p}schedule.milestones", integer=True, minimum=0)
                              for m in milestones]

    train["epochs"] = number(train["epochs"], f"{p}train.epochs", integer=True,
                             minimum=min_epochs)
    train["seed"] = number(train["seed"], f"{p}train.seed", integer=True, minimum=0,
                           below=SEED_LIMIT)
    for name in ("batch_size", "checkpoint_every"):
        train[name] = number(train[name], f"{p}train.{name}", integer=True, minimum=1)
    for name in ("channels_last", "reset_head", "drop_last", "sync_bn"):
        boolean(train[name], f"{p}train.{name}")
    if train["workers"] != "auto":
        train["workers"] = number(train["workers"], f"{p}train.workers", integer=True, minimum=0)
    if train["threads"] != "auto":
        try:
            train["threads"] = number(train["threads"], f"{p}train.threads", integer=True,
                                      minimum=1)
        except ConfigError:
            raise ConfigError(f"must be auto (torch's own choice) or a number of CPU threads of "
                              f"at least 1, got {train['threads']!r}", key=f"{p}train.threads"
                              ) from None
    if not isinstance(train["device"], str):
        raise ConfigError(f"must be a device name such as auto, cpu or cuda:0, got "
                          f"{train['device']!r}", key=f"{p}train.device")
    choice(train["amp"], f"{p}train.amp", AMP_MODES, "mode")
    if train["amp"] == "fp16" and needs_closure(optim["name"]):
        raise ConfigError(f"optimizer '{optim['name']}' evaluates the loss more than once per step "
                          f"and needs the closure, which fp16 loss scaling cannot give; use bf16 "
                          f"or off", key=f"{p}train.amp")
    choice(train["compile"], f"{p}train.compile", COMPILE_MODES, "mode")
    loggers = train["loggers"]
    if not isinstance(loggers, list):
        raise ConfigError(f"must be a list of logger names ({', '.join(LOGGERS)}), got "
                          f"{loggers!r}", key=f"{p}train.loggers")
    for name in loggers:
        choice(name, f"{p}train.loggers", LOGGERS, "logger")
    check_tracking(train, p)
    freeze = train["freeze"] if isinstance(train["freeze"], list) else [train["freeze"]]
    if not all(isinstance(f, str) for f in freeze):
        raise ConfigError(f"must be a list of model point names, backbone or head, got "
                          f"{train['freeze']!r}",
                          key=f"{p}train.freeze")
    train["freeze"] = freeze
    if boolean(train["freeze_bn_stats"], f"{p}train.freeze_bn_stats") and not freeze:
        raise ConfigError("keeps the BatchNorm statistics of the frozen layers fixed, but "
                          "train.freeze names none; freeze some (freeze: [backbone]) or drop "
                          "the key", key=f"{p}train.freeze_bn_stats")

    check_step_options(train, optim, p)

    ev["every"] = number(ev["every"], f"{p}eval.every", integer=True, minimum=0)
    ev["batch_size"] = number(ev["batch_size"], f"{p}eval.batch_size", integer=True, minimum=1)
    ev["ece_bins"] = number(ev["ece_bins"], f"{p}eval.ece_bins", integer=True, minimum=1,
                            below=MAX_ECE_BINS + 1)
    for name in ("many_threshold", "few_threshold"):
        ev[name] = number(ev[name], f"{p}eval.{name}", minimum=0)
    if not ev["few_threshold"] <= ev["many_threshold"]:
        raise ConfigError(f"few_threshold ({ev['few_threshold']}) must not exceed many_threshold "
                          f"({ev['many_threshold']})", key=f"{p}eval.few_threshold")


def check_phase_name(name: Any, key: str) -> str:
    """Phase names become file names (``model-<phase>.pt``): letters, digits, ``_`` and ``-``."""
    if not isinstance(name, str) or not PHASE_NAME.match(name):
        raise ConfigError(f"must be a plain name of letters, digits, '_' and '-' (it names the "
                          f"file model-<phase>.pt), got {name!r}", key=key)
    return name


# ``meta``: what a recipe says about itself. None of it changes the trained model, so none of it
# is part of the recipe hash (``lttoolbox.recipe.recipe_hash``); docs/recipes.md, "Provenance".
META_KEYS = {
    "paper": "the method's paper: authors, venue and year, arXiv id with its version",
    "code": "the official code, a URL pinned by a commit",
    "reference": "the published number for exactly this recipe and setting (a mapping)",
    "note": "free text",
    "protocol": "the leaderboard protocol that trained the run (set by the leaderboard)",
    "phase": "the training phase's name (set by the recipe loader)",
}
REFERENCE_KEYS = {
    "source": "a key of `sources` in benchmarks/reference_numbers.yaml",
    "table": "the table (or page) the number is printed in",
    "row": "the table's row",
    "top1_error": "top-1 error %, as printed",
    "top1_accuracy": "top-1 accuracy %, as printed",
}
COMMIT = re.compile(r"/(?:blob|tree|commit)/[0-9a-f]{7,40}(?:/|$)")


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"must be a non-empty string, got {value!r}", key=key)
    return value


def check_meta(meta: Any, prefix: str = "") -> None:
    """Check a recipe's ``meta`` mapping against the provenance schema (:data:`META_KEYS`).

    An unknown key is refused, so a misspelt ``papr:`` cannot hide the citation; free text
    belongs in ``note``. Recipes a run saved are not checked: their ``meta`` may predate the
    schema, and it changes no result.

    Example:
        >>> check_meta({"paper": "Cao et al., NeurIPS 2019, arXiv:1906.07413v2",
        ...             "reference": {"source": "ldam", "table": "Table 2", "row": "LDAM-DRW",
        ...                           "top1_error": 22.97}})
        >>> check_meta({"papr": "x"})  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        lttoolbox.errors.ConfigError: meta.papr: unknown meta key; did you mean 'paper'?
        Known: code, note, paper, phase, protocol, reference (free text goes in meta.note).
    """
    key = prefix + "meta"
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise ConfigError(f"must be a mapping of notes, got {meta!r}", key=key)
    for name, value in meta.items():
        if name not in META_KEYS:
            raise ConfigError(f"unknown meta key{suggest(name, META_KEYS)} Known: "
                              f"{', '.join(sorted(META_KEYS))} (free text goes in meta.note).",
                              key=f"{key}.{name}")
        if name != "reference":
            _text(value, f"{key}.{name}")
    if "code" in meta and not (meta["code"].startswith("https://") and COMMIT.search(meta["code"])):
        raise ConfigError("must be an https URL pinned by a commit (.../blob/<commit>/...), got "
                          f"{meta['code']!r}", key=f"{key}.code")
    if "reference" in meta:
        _check_reference(meta["reference"], f"{key}.reference")


def _check_reference(ref: Any, key: str) -> None:
    if not isinstance(ref, dict):
        raise ConfigError(f"must be a mapping ({', '.join(REFERENCE_KEYS)}), got {ref!r}", key=key)
    for name in ref:
        if name not in REFERENCE_KEYS:
            raise ConfigError(f"unknown key{suggest(name, REFERENCE_KEYS)} Known: "
                              f"{', '.join(REFERENCE_KEYS)}.", key=f"{key}.{name}")
    for name in ("source", "table"):
        if name not in ref:
            raise ConfigError("is required", key=f"{key}.{name}")
    for name in ("source", "table", "row"):
        if name in ref:
            _text(ref[name], f"{key}.{name}")
    values = [name for name in ("top1_error", "top1_accuracy") if name in ref]
    if len(values) != 1:
        raise ConfigError("needs exactly one of top1_error, top1_accuracy", key=key)
    value = number(ref[values[0]], f"{key}.{values[0]}", minimum=0)
    if value > 100:
        raise ConfigError(f"must be a percentage, at most 100, got {value!r}",
                          key=f"{key}.{values[0]}")
