"""Shared fixtures and helpers of the test suite.

Registries: a test that registers a toy entry does it inside ``REGISTRY.scoped()`` (see
:meth:`lttoolbox.registry.Registry.scoped`), so ``lttrain --list`` and the coverage tests, which
read the registries, never see it. The autouse fixture below fails the test that leaves an entry
behind or removes one.
"""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest

from lttoolbox.engine.logging import RunLogger
from lttoolbox.registry import Registry

ROOT = Path(__file__).resolve().parents[1]

#: The end-to-end tests' base recipe: the embedded digits data and a small CNN, 2 epochs. Build a
#: variant with :func:`digits`, never by editing this one.
DIGITS = {"data": {"name": "digits_lt", "imbalance_ratio": 10},
          "model": {"name": "digits_cnn"},
          "optim": {"lr": 0.05},
          "train": {"epochs": 2, "batch_size": 64},
          "eval": {"many_threshold": 60, "few_threshold": 25}}

#: The imbalance ratios the CIFAR-LT recipes are checked at: as written (100) and with the
#: override ``data.imbalance_ratio=50``, the way a user runs ratio 50.
RATIOS = (100, 50)


def pytest_configure(config):
    """One CPU thread per pytest-xdist worker (README's command runs ``-n 2``), for torch here and
    in the processes the tests start: two workers with two threads each on two cores would wait
    on each other's threads (see ``train.threads``). Without xdist, or with ``OMP_NUM_THREADS``
    set, nothing changes."""
    if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def loaded_registries() -> list[Registry]:
    """Every registry defined at module level in the loaded ``lttoolbox`` modules."""
    found = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "lttoolbox" or name.startswith("lttoolbox.")):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, Registry):
                found[id(value)] = value
    return list(found.values())


def registry_changes(before: dict[int, tuple[Registry, dict]]) -> list[str]:
    """What changed in the registries since ``before`` (from :func:`registry_snapshot`) other
    than the package's own entries, registered when a family's module is first imported."""
    changes = []
    for reg in loaded_registries():
        old = before.get(id(reg), (reg, {}))[1]
        now = reg._entries
        for name in sorted(set(old) - set(now)):
            changes.append(f"{reg.kind} '{name}' was removed")
        for name in sorted(set(now)):
            if name in old:
                if now[name] is not old[name]:
                    changes.append(f"{reg.kind} '{name}' was replaced")
            elif not getattr(now[name], "__module__", "").startswith("lttoolbox"):
                changes.append(f"{reg.kind} '{name}' was left registered "
                               f"(by {getattr(now[name], '__module__', '?')})")
    return changes


def registry_snapshot() -> dict[int, tuple[Registry, dict]]:
    return {id(reg): (reg, dict(reg._entries)) for reg in loaded_registries()}


@pytest.fixture(autouse=True)
def registries_unchanged():
    """No test leaves a toy entry in (or takes an entry out of) a global registry."""
    before = registry_snapshot()
    yield
    changes = registry_changes(before)
    assert not changes, ("register toy entries inside Registry.scoped(): "
                         + "; ".join(changes))


# ------------------------------------------------------------------------- per-entry test data
class PerEntry(dict):
    """Test data for each entry of a registry, kept in one table.

    Parametrize over :attr:`names` (the registry's own names, so a new entry becomes a test case
    by itself) and read with ``table[name]``: an entry without data fails each of its cases with a
    message that names the table, instead of being skipped. Call :meth:`check` from a test: it
    also fails on data left for an entry that no longer exists.

    Args:
        registry: The registry whose entries the table describes.
        data: ``{entry name: test data}``.
        where: Where the table is, for the failure message (``"CASES in tests/test_data.py"``).
        select: Keeps only the entries this predicate accepts (called with the registered
            object), for a table that describes one kind of entry (the ImageNet backbones).
    """

    def __init__(self, registry: Registry, data: dict, *, where: str, select=None):
        super().__init__(data)
        self.registry, self.where, self.select = registry, where, select

    @property
    def names(self) -> list[str]:
        """The registry's names (those ``select`` keeps), sorted."""
        return sorted(name for name in self.registry.names()
                      if self.select is None or self.select(self.registry.get(name)))

    def __missing__(self, name: str):
        pytest.fail(f"{self.registry.kind} '{name}' has no test data: add it to {self.where}",
                    pytrace=False)

    def check(self) -> None:
        """The table's keys are exactly :attr:`names`."""
        missing, stale = set(self.names) - set(self), set(self) - set(self.names)
        assert not missing and not stale, (f"{self.where}: no data for {sorted(missing)}; "
                                           f"data for unknown entries {sorted(stale)}")


def one_per_entry(recipes: dict[str, str], prefer=lambda recipe: False) -> list:
    """Recipe names as test parameters, all but one recipe per registry entry marked ``long``.

    Args:
        recipes: ``{recipe name: the registry entry it exercises}``.
        prefer: Which recipe of an entry stays in README's quick set (the first one it accepts,
            in name order; the first name when it accepts none).

    Returns:
        The recipe names, sorted; README's test command still runs every entry the recipes use
        end to end once, ``.ci/run`` runs every recipe.
    """
    kept: dict[str, str] = {}
    for recipe in sorted(recipes, key=lambda r: (not prefer(r), r)):
        kept.setdefault(recipes[recipe], recipe)
    return [recipe if kept[recipes[recipe]] == recipe
            else pytest.param(recipe, marks=pytest.mark.long) for recipe in sorted(recipes)]


# --------------------------------------------------------------------------- end-to-end recipes
def digits(**sections) -> dict:
    """A copy of :data:`DIGITS` with ``sections`` merged in (mappings merge, lists replace):
    ``digits(train={"epochs": 3})``."""
    from lttoolbox.recipe import deep_merge

    return deep_merge(copy.deepcopy(DIGITS), copy.deepcopy(sections))


def write_recipe(path: Path, recipe: dict | None = None, text: str | None = None) -> Path:
    """Write ``recipe`` (default: :data:`DIGITS`) or the raw ``text`` to ``path``."""
    import yaml

    path.write_text(text if text is not None else yaml.safe_dump(recipe or DIGITS))
    return path


# ------------------------------------------------------------------------------- shipped recipes
def read_at_ratio(path: Path, ratio: int) -> dict:
    """The recipe at ``path`` (merged with its ``_base_`` chain) with ``data.imbalance_ratio``
    set to ``ratio`` by an override, as ``lttrain PATH data.imbalance_ratio=50`` runs it."""
    from lttoolbox.recipe import apply_overrides, read_recipe

    return apply_overrides(read_recipe(path), [f"data.imbalance_ratio={ratio}"])


def case_id(value) -> str:
    """Test ids for ``(recipe path, ratio)`` cases: ``cifar10_lt/ce.yaml`` and ``50``."""
    if isinstance(value, Path):
        return value.relative_to(ROOT / "configs").as_posix()
    return str(value)


def on_digits(recipe: dict, epochs: int = 2, switch_epoch: int = 1) -> dict:
    """The same tricks on ``digits_lt`` with ``digits_cnn`` for ``epochs`` epochs.

    Every deferred switch (``*_epoch`` keys of the trick sections and of the mappings inside them,
    such as a wrapped loss) moves to ``switch_epoch`` so a short run still exercises both sides of
    it; the learning-rate schedule becomes flat.
    """
    recipe = copy.deepcopy(recipe)
    # a recipe with a validation split (a bilevel loss reads it) keeps one, sized for digits
    has_val = "val_per_class" in recipe["data"]
    recipe["data"] = {"name": "digits_lt", **({"val_per_class": 6} if has_val else {})}
    recipe["model"]["name"] = "digits_cnn"
    recipe["train"]["epochs"] = epochs
    recipe["schedule"].update(warmup_epochs=0, milestones=[])
    parts = [recipe["sampler"], recipe["loss"], *recipe["augment"]]
    if recipe.get("generator"):
        parts.append(recipe["generator"])
    def move(section: dict) -> None:  # and in the mappings inside it (a wrapped loss)
        for key, value in section.items():
            if isinstance(value, dict):
                move(value)
            elif key.endswith("_epoch") and isinstance(value, int) and value > 0:
                section[key] = switch_epoch

    for part in parts:
        move(part)
    return recipe


#: The published numbers of the old Bag of Tricks results page, on Cui et al.'s split; no recipe
#: may cite them any more (see benchmarks/reference_numbers.yaml).
OUTDATED_NUMBERS = ("30.12", "31.22", "29.37", "23.63", "30.35", "30.81", "29.35", "27.08",
                    "27.73", "26.66", "24.61", "26.83", "30.88")


class StopAfter(RunLogger):
    """Raises KeyboardInterrupt at the end of the n-th epoch, before its checkpoint."""

    def __init__(self, epochs):
        super().__init__(quiet=True)
        self.left = epochs

    def end_epoch(self, summary):
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt


def resumed_run(recipe: dict, out: Path, stop_after: int) -> dict:
    """The results of ``recipe`` trained in ``out``, interrupted by :class:`StopAfter` at the end
    of its ``stop_after``-th epoch (counted from 0, before that epoch's checkpoint) and resumed."""
    from lttoolbox.engine import train

    with pytest.raises(KeyboardInterrupt):
        train(recipe, out, logger=StopAfter(stop_after))
    return train(recipe, out, resume=True, quiet=True)


def assert_same_training(resumed: dict, full: dict) -> None:
    """Two results trained the same: every epoch's loss and every class's accuracy, exactly."""
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in full["history"]]
    assert resumed["per_class_acc"] == full["per_class_acc"]


def eager_and_compiled(monkeypatch, out: Path, recipe: dict,
                       terms: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """The first epoch's log rows of ``recipe`` (unresolved) trained eagerly and through
    ``torch.compile``, after checking that the compiled run compiled (no fallback) and trains as
    the eager one: the same loss, and the same loss term of each of ``terms``, to 1e-5. The
    compiler runs AOTAutograd's eager backend: inductor's C++ code generation takes minutes on
    this CPU (tests/test_compile.py)."""
    import torch

    import lttoolbox.engine.compile as compile_module
    from lttoolbox.engine import train
    from lttoolbox.recipe import deep_merge, resolve

    torch._dynamo.reset()
    monkeypatch.setattr(compile_module, "BACKEND", "aot_eager")
    try:
        eager, compiled = (
            train(resolve(deep_merge(copy.deepcopy(recipe), {"train": {"compile": mode}})),
                  out / mode, quiet=True)["history"][0] for mode in ("off", "on"))
    finally:
        torch._dynamo.reset()
    assert compiled["compile_seconds"] > 0 and "compile_failed" not in compiled
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-5)
    for term in terms:
        assert compiled["loss_terms"][term] == pytest.approx(eager["loss_terms"][term],
                                                             rel=1e-5), term
    return eager, compiled


def recipes_that_set(section: str, datasets=("cifar10_lt", "cifar100_lt")) -> list[str]:
    """The file names of the CIFAR-LT recipes whose own file sets ``section`` (``loss``,
    ``sampler``), not those that add an augmentation, a generator or phases on top of one."""
    import yaml

    from lttoolbox.recipe import read_recipe

    names = set()
    for dataset in datasets:
        for path in (ROOT / "configs" / dataset).glob("*.yaml"):
            recipe = read_recipe(path)
            if (path.name != "base.yaml" and section in yaml.safe_load(path.read_text())
                    and not (recipe.get("augment") or recipe.get("generator")
                             or recipe.get("phases"))):
                names.add(path.stem)
    return sorted(names)
