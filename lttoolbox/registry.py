"""A small registry: names to classes (or factories), built from recipe dicts.

Each family (data sets, models, heads, samplers, losses, augmentations, generators, optimizers,
learning-rate schedules) has one registry.
``build(cfg, **context)`` takes a dict with a ``name`` key plus the entry's own parameters, and
``context`` with what the data tells (``class_counts``, ``num_classes``, ``labels``,
``total_epochs``, ...). An entry receives a context item only if its signature names it, so the
trainer can offer everything it knows without any entry having to accept everything; an entry
that names ``context`` receives all of it as one :class:`lttoolbox.api.Context` (see
:meth:`Registry.build`). A recipe parameter the entry does not accept is an error: nothing is
ever silently ignored.

An entry's parameters are read from its signature. A constructor that takes ``**kwargs`` forwards
them to its base class, so its parameters are its own named ones plus its base's, up the class's
MRO to the first ``__init__`` without ``**kwargs`` (:func:`signature_parameters`); a class that
sets one of its base's parameters itself names it in ``fixed_parameters``, and a recipe cannot
set it.

Every error names the full recipe key. An entry states a problem with one of its parameters
either with a key relative to its own section (``ConfigError("must be odd", key="kernel")``) or as
a message that starts with the parameter's name (``"gamma must lie in [0, 20], got -1"``, as
:func:`lttoolbox.losses.weights.check_number` writes it); ``build`` turns both into the full key
(``phases[1].loss.gamma: must lie in [0, 20], got -1``). A key that already starts at a recipe
section is left as it is.

Example:
    >>> from lttoolbox.registry import Registry
    >>> TOYS = Registry("toy")
    >>> @TOYS.register("ball")
    ... class Ball:
    ...     def __init__(self, size=1.0, num_classes=None):
    ...         self.size, self.num_classes = size, num_classes
    >>> TOYS.build({"name": "ball", "size": 2.0}, num_classes=10).num_classes
    10
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import os
import pkgutil
import re
import sys
from typing import Any, Callable, Iterable, Iterator

from .errors import ConfigError, DataError


# The recipe's sections: a key that starts with one is complete (see ``Registry.build``).
SECTIONS = ("data", "model", "sampler", "loss", "augment", "generator", "optim", "schedule",
            "train", "eval", "phases", "meta")
# "<parameter>[.sub|[i]]... <problem>" or "<parameter>...: <problem>": how entries word a problem
# with one of their parameters.
_PARAMETER_FIRST = re.compile(r"([A-Za-z_]\w*)((?:\.\w+|\[\d+\])*):? (.+)", re.S)


def join_key(prefix: str | None, key: str) -> str:
    """``prefix`` and a key below it: ``join_key("augment[0]", "p")`` is ``augment[0].p``."""
    if not prefix:
        return key
    return f"{prefix}{key}" if key.startswith("[") else f"{prefix}.{key}"


def _complete(key: str, prefix: str) -> bool:
    """Whether an entry's error key is already a full recipe key (or a command-line option)."""
    root = re.split(r"[.\[]", key, maxsplit=1)[0]
    return (key.startswith("-") or root in SECTIONS
            or (bool(prefix) and (key == prefix or key.startswith((prefix + ".", prefix + "[")))))


def locate(err: ConfigError, prefix: str, parameters: Iterable[str]) -> ConfigError:
    """``err``, raised by an entry built at recipe key ``prefix``, with its full key.

    Args:
        err: The entry's error: with a key relative to the entry, a complete key, or no key
            and a message that may start with one of ``parameters``.
        prefix: The entry's recipe key (``loss``, ``phases[1].augment[0]``); empty for an entry
            built inside another one, whose own ``build`` completes the key.
        parameters: The entry's recipe parameters (not what the trainer passes).
    """
    if err.key is not None:
        # A key that starts with one of the entry's own parameters is relative to the entry,
        # even where that parameter is named like a recipe section (``absgd``'s inner ``loss``).
        if re.split(r"[.\[]", err.key, maxsplit=1)[0] in parameters:
            return ConfigError(err.detail, join_key(prefix, err.key))
        return err if _complete(err.key, prefix) else ConfigError(err.detail,
                                                                   join_key(prefix, err.key))
    match = _PARAMETER_FIRST.fullmatch(err.detail)
    if match and match.group(1) in parameters:
        return ConfigError(match.group(3), key=join_key(prefix, match.group(1) + match.group(2)))
    return ConfigError(err.detail, key=prefix or None)


def suggest(word: str, choices: Iterable[str]) -> str:
    """Return a ``"; did you mean 'x'?"`` hint for a misspelt ``word``, or an empty string."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def signature_parameters(factory: Callable) -> tuple[list[inspect.Parameter], bool]:
    """The keyword parameters ``factory`` accepts, and whether it takes any keyword at all.

    A function: its named parameters, and whether it has ``**kwargs``. A class: its
    ``__init__``'s named parameters; where that ``__init__`` takes ``**kwargs`` (it forwards them
    to its base class), also those of the next ``__init__`` up the MRO, and so on up to the first
    ``__init__`` without ``**kwargs`` (the convention of every family: a subclass declares only
    its own parameters and passes ``**base`` up). A name in a class's ``fixed_parameters`` is a
    base parameter the class sets itself: it is not accepted. The nearest declaration of a name
    wins (its default is the one listed).

    Example:
        >>> class Base:
        ...     def __init__(self, weights=None, scale=1.0, num_classes=None): ...
        >>> class Child(Base):
        ...     fixed_parameters = ("scale",)
        ...     def __init__(self, gamma=2.0, **base):
        ...         super().__init__(scale=2.0, **base)
        >>> [p.name for p in signature_parameters(Child)[0]], signature_parameters(Child)[1]
        (['gamma', 'weights', 'num_classes'], False)
    """
    if not inspect.isclass(factory):
        params = inspect.signature(factory).parameters.values()
        return ([p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)],
                any(p.kind is p.VAR_KEYWORD for p in params))
    fixed = set(getattr(factory, "fixed_parameters", ()))
    found: dict[str, inspect.Parameter] = {}
    for cls in factory.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        if init is object.__init__:  # the chain ends at object: it takes nothing
            return list(found.values()), False
        params = list(inspect.signature(init).parameters.values())[1:]  # less self
        for p in params:
            if (p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in fixed
                    and p.name not in found):
                found[p.name] = p
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return list(found.values()), False
    return list(found.values()), True


def accepted_parameters(factory: Callable) -> tuple[set[str], bool]:
    """Keyword parameters ``factory`` accepts (following ``**kwargs`` up a class's MRO, see
    :func:`signature_parameters`), and whether it takes any keyword at all."""
    params, var_kw = signature_parameters(factory)
    return {p.name for p in params}, var_kw


def offer(context: dict[str, Any], accepted: set[str], takes_any: bool) -> dict[str, Any]:
    """What of ``context`` an entry that accepts ``accepted`` receives.

    An entry that names ``context`` receives one :class:`lttoolbox.api.Context`: the one offered
    as ``context``, else one made of the fields offered by name; it receives no field by name
    (they are in the object). Any other entry receives the items it names (all of them when it
    takes ``**kwargs``).
    """
    if "context" not in accepted:
        return {k: v for k, v in context.items() if k in accepted or takes_any}
    from dataclasses import fields

    from .api import Context  # here, not at the top: importing the registry stays light

    names = {f.name for f in fields(Context)}
    given = context.get("context")
    if given is None and names & set(context):
        given = Context(**{k: v for k, v in context.items() if k in names})
    offered = {k: v for k, v in context.items()
               if k != "context" and k not in names and (k in accepted or takes_any)}
    if given is not None:
        offered["context"] = given
    return offered


class Registry:
    """Maps names to component classes of one family.

    Args:
        kind: Family name used in messages and as the default recipe key (``"loss"``).
        module: The package whose import registers the family's entries; it is imported the first
            time the registry is read, so ``import lttoolbox`` itself stays light (and a Ctrl-C
            while torch loads reaches ``lttrain``'s handler, not a traceback).
    """

    def __init__(self, kind: str, module: str | None = None, context: Iterable[str] = ()):
        self.kind = kind
        self.module = module
        # What the builder of this family passes to its entries (the trainer, a model): their
        # parameters of these names are filled in, not set in recipes (``lttrain --list``).
        self.context = frozenset(context)
        self._entries: dict[str, Callable] = {}

    @property
    def entries(self) -> dict[str, Callable]:
        if self.module is not None and self.module not in sys.modules:
            importlib.import_module(self.module)
        load_plugins()
        return self._entries

    def register(self, name: str) -> Callable[[Callable], Callable]:
        """Decorator that registers a class or factory under ``name``."""

        def decorate(factory: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = factory
            if inspect.isclass(factory):
                factory.registry_name = name
            return factory

        return decorate

    @contextlib.contextmanager
    def scoped(self) -> Iterator["Registry"]:
        """A temporary scope: what is registered inside it is removed when it ends.

        For tests and experiments that register a toy entry without leaving it in the
        family's registry (where ``lttrain --list`` and the coverage tests would find it).
        The family's own entries are loaded first, so the scope removes only what was
        registered inside it; an entry registered there may reuse a name another scope used.

        Example:
            >>> from lttoolbox.registry import Registry
            >>> TOYS = Registry("toy")
            >>> with TOYS.scoped():
            ...     @TOYS.register("ball")
            ...     class Ball:
            ...         pass
            ...     print("ball" in TOYS)
            True
            >>> "ball" in TOYS
            False
        """
        saved = dict(self.entries)  # imports the family's module first: its entries stay
        try:
            yield self
        finally:
            self._entries.clear()
            self._entries.update(saved)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, name: str, key: str | None = None) -> Callable:
        """The entry registered as ``name``; an unknown name lists the known ones."""
        if name not in self.entries:
            raise ConfigError(
                f"unknown {self.kind} '{name}'{suggest(name, self.entries)} "
                f"Registered: {', '.join(self.names()) or '(none)'}.",
                key=join_key(key or self.kind, "name"))
        return self.entries[name]

    def build(self, cfg: dict[str, Any] | str, key: str | None = None, **context: Any) -> Any:
        """Build an entry from a recipe dict.

        Args:
            cfg: ``{"name": ..., **params}``, or just the name.
            key: Recipe key for error messages (defaults to the family name).
            **context: What the data tells; passed only where the entry's signature names it
                (an entry that names ``context`` receives it as one
                :class:`~lttoolbox.api.Context`, see :func:`offer`). A recipe parameter of the
                same name wins over the context.

        Raises:
            ConfigError: unknown name, unknown parameter, or an entry that rejects its values.
        """
        key = self.kind if key is None else key  # "": built inside another entry
        if isinstance(cfg, str):
            cfg = {"name": cfg}
        if not isinstance(cfg, dict) or "name" not in cfg:
            raise ConfigError(f"expected a mapping with a 'name' key, got {cfg!r}", key=key or None)
        params = {k: v for k, v in cfg.items() if k != "name"}
        factory = self.get(cfg["name"], key=key or None)
        accepted, has_var_kw = accepted_parameters(factory)
        public = sorted(a for a in accepted if a not in context and a not in self.context)
        if not has_var_kw:
            for param in params:
                if param not in accepted:
                    raise ConfigError(
                        f"{self.kind} '{cfg['name']}' has no parameter '{param}'"
                        f"{suggest(param, accepted)} Accepted: {', '.join(public) or '(none)'}.",
                        key=join_key(key, param))
        offered = offer(context, accepted, has_var_kw)
        try:
            return factory(**{**offered, **params})
        except ConfigError as err:  # named by the full recipe key
            raise locate(err, key, [*public, *params]) from None
        except DataError:  # already names the file; keep its type
            raise
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{self.kind} '{cfg['name']}': {err}", key=key or None) from None


PLUGINS_VARIABLE = "LTTOOLBOX_PLUGINS"
_loaded_plugins: set[str] = set()


def load_plugins() -> None:
    """Import the modules named in ``LTTOOLBOX_PLUGINS`` (comma-separated importable module
    names), once each: entries registered outside the package (docs/extending.md)."""
    for name in filter(None, (n.strip() for n in os.environ.get(PLUGINS_VARIABLE, "").split(","))):
        if name not in _loaded_plugins:
            _loaded_plugins.add(name)
            try:
                importlib.import_module(name)
            except ImportError as err:
                _loaded_plugins.discard(name)
                raise ConfigError(f"cannot import plugin module '{name}' named in "
                                  f"{PLUGINS_VARIABLE}: {err}") from None


def import_submodules(package: str) -> None:
    """Import every module of ``package`` and export the entry classes registered there: a
    family package registers each entry file in it without listing it, and
    ``from lttoolbox.losses import VSLoss`` works for a new entry too (a new entry is one new
    file)."""
    parent = sys.modules[package]
    exported = getattr(parent, "__all__", None)
    for info in pkgutil.iter_modules(parent.__path__):
        module = importlib.import_module(f"{package}.{info.name}")
        for name, value in vars(module).items():
            if (inspect.isclass(value) and value.__module__ == module.__name__
                    and "registry_name" in vars(value) and not name.startswith("_")):
                setattr(parent, name, value)
                if exported is not None and name not in exported:
                    exported.append(name)


def _parameters(factory: Callable) -> list[inspect.Parameter]:
    """The named parameters of an entry's constructor (or factory function), following
    ``**kwargs`` up a class's MRO (:func:`signature_parameters`)."""
    return signature_parameters(factory)[0]


def recipe_parameters(registry: "Registry", name: str) -> list[inspect.Parameter]:
    """The parameters a recipe sets for the entry ``name`` of ``registry``: its constructor's,
    less those the family's builder fills in (``registry.context``)."""
    return [p for p in _parameters(registry.get(name)) if p.name not in registry.context]


def describe(registry: "Registry") -> list[tuple[str, str, str]]:
    """``(name, "param=default, ...", first docstring line)`` of every entry, from its
    signature (``lttrain --list``), so the listing cannot drift from the code. Every parameter
    is listed but those the family's builder fills in (``registry.context``, see
    :func:`given_by_builder`)."""
    rows = []
    for name in registry.names():
        factory = registry.get(name)
        params = [p.name if p.default is p.empty else f"{p.name}={p.default!r}"
                  for p in recipe_parameters(registry, name)]
        doc = inspect.getdoc(factory) or ""
        rows.append((name, ", ".join(params), doc.split("\n\n")[0].replace("\n", " ")))
    return rows


def given_by_builder(registry: "Registry") -> list[str]:
    """The parameters of the family's entries that its builder fills in (the trainer passes
    ``class_counts``, ``total_epochs``, ... to a loss), sorted."""
    return sorted({p.name for name in registry.names() for p in _parameters(registry.get(name))
                   if p.name in registry.context})


# What the trainer tells the sampler, loss, augmentations and generator of every phase
# (``Trainer._context``); a model is built from its recipe and the data's shape.
# ``context`` is all of them as one typed object (lttoolbox.api.Context), for an entry that
# names it. The names are its fields, written out rather than read from it so that importing the
# registries does not import torch (a stop while starting stays quiet); tests/test_daily_use.py
# checks them against what the trainer passes.
PHASE_CONTEXT = ("class_counts", "num_classes", "labels", "total_epochs", "seed", "rank",
                 "world_size", "feature_dim", "point_names", "point_shapes", "feature_maps",
                 "imbalance_type", "fetch", "has_validation", "image_shape", "train_transform",
                 "sampler", "context")
MODEL_CONTEXT = ("num_classes", "in_channels", "image_size")

# One registry per family; the kind doubles as the recipe section the entries come from.
# ``run_data``: what lteval tells a data set about the run it evaluates (data.json), so a
# test-only folder is read as the run read its images.
DATASETS = Registry("data", "lttoolbox.data", context=("run_data",))
MODELS = Registry("model", "lttoolbox.models", context=MODEL_CONTEXT)
SAMPLERS = Registry("sampler", "lttoolbox.samplers", context=PHASE_CONTEXT)
LOSSES = Registry("loss", "lttoolbox.losses", context=PHASE_CONTEXT)
AUGMENTS = Registry("augment", "lttoolbox.augment", context=PHASE_CONTEXT)
GENERATORS = Registry("generator", "lttoolbox.generators", context=PHASE_CONTEXT)
# Heads are built by the model (``model.head``), from its feature width and class count.
HEAD_CONTEXT = ("in_features", "num_classes")
HEADS = Registry("head", "lttoolbox.models", context=HEAD_CONTEXT)
# ``optim``: an entry gets the parameter groups (``params``), whether a fused kernel is to be
# used (``fused``) and the network (``model``: a two-pass method may hold its BatchNorm statistics
# during the second pass); it returns a ``torch.optim.Optimizer`` whose ``step(closure)`` may call
# the closure more than once, as torch's convention allows.
OPTIMIZERS = Registry("optimizer", "lttoolbox.optimizers", context=("params", "fused", "model"))
# ``schedule``: an entry is the decayed rate of an epoch, ``f(epoch, base_lr, total_epochs,
# warmup_epochs, **its parameters)``; the warm-up multiplies it (lttoolbox.engine.optim.lr_at).
SCHEDULE_CONTEXT = ("epoch", "base_lr", "total_epochs", "warmup_epochs")
SCHEDULES = Registry("schedule", "lttoolbox.optimizers", context=SCHEDULE_CONTEXT)
