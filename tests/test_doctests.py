"""Every example in lttoolbox's docstrings runs as written.

The ``>>>`` examples of every module of the package (module, class and function docstrings) are
collected with :mod:`doctest` and run, one test per module, from the repository root. An example
that cannot run in a test (it trains, downloads, or needs a data set that is not here) is marked
``# doctest: +SKIP`` where it stands.

Every registered entry (of every registry in :mod:`lttoolbox.registry`) has such an example in
its own docstring, the one ``help()`` and ``lttrain --list`` read: the style guide's "runnable
example" for each trick, which the per-module runner above then runs.
"""
from __future__ import annotations

import doctest
import importlib
import inspect
from pathlib import Path

import pytest

from lttoolbox import registry

ROOT = Path(__file__).resolve().parents[1]


def module_names() -> list[str]:
    names = []
    for path in sorted((ROOT / "lttoolbox").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def examples(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    # Objects a module imports from another are that module's to test.
    return [t for t in tests if t.examples and _defined_in(t, module)]


def _defined_in(test: doctest.DocTest, module) -> bool:
    return test.filename is None or Path(test.filename).resolve() == Path(module.__file__).resolve()


def test_the_package_has_examples():
    assert sum(len(examples(n)) for n in ("lttoolbox", "lttoolbox.rundir")) >= 3
    # The model and generator contracts are shown by examples; they are no registered entry, so
    # the check of every entry's own example below does not reach them.
    assert all(examples(n) for n in ("lttoolbox.models.base", "lttoolbox.generators.base"))


@pytest.mark.parametrize("name", module_names())
def test_docstring_examples_run(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    # a module of an optional extra names what its examples need (DOCTEST_REQUIRES)
    for requirement in getattr(importlib.import_module(name), "DOCTEST_REQUIRES", ()):
        pytest.importorskip(requirement, reason=f"{name}'s examples need {requirement}, an "
                                                f"optional extra that is not installed")
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    found = examples(name)
    if not found:
        pytest.skip("no examples")
    for test in found:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"


def test_a_wrong_example_fails_and_an_imported_one_is_left_to_its_module(tmp_path, monkeypatch):
    (tmp_path / "lt_doc_a.py").write_text('def f():\n    """\n    >>> f()\n    2\n    """\n'
                                          '    return 1\n')
    (tmp_path / "lt_doc_b.py").write_text("from lt_doc_a import f\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [t.name for t in examples("lt_doc_b")] == []
    found = examples("lt_doc_a")
    runner = doctest.DocTestRunner()
    for test in found:
        runner.run(test, out=lambda text: None)
    assert [t.name for t in found] == ["lt_doc_a.f"] and runner.summarize(False).failed == 1


def registries() -> dict[str, registry.Registry]:
    """Every family's registry, by kind, as :mod:`lttoolbox.registry` defines them."""
    found = {r.kind: r for r in vars(registry).values() if isinstance(r, registry.Registry)}
    assert len(found) >= 9, sorted(found)  # data, model, head, sampler, loss, augment, ...
    return found


def own_example(factory) -> bool:
    """Whether ``factory``'s own docstring has a ``>>>`` example. ``inspect.getdoc`` falls back
    to a base class's docstring for a class without one: that is not the entry's own."""
    return factory.__doc__ is not None and ">>>" in inspect.getdoc(factory)


@pytest.mark.parametrize("kind, name", [(kind, name) for kind, r in registries().items()
                                        for name in r.names()])
def test_every_registered_entry_has_an_example_of_its_own(kind, name):
    factory = registries()[kind].get(name)
    assert own_example(factory), (f"{kind} '{name}' ({factory.__module__}."
                                  f"{factory.__qualname__}) has no >>> example in its docstring")


def test_an_entry_without_an_example_of_its_own_is_found():
    class Documented:
        """A toy.

        Example:
            >>> Documented()  # doctest: +ELLIPSIS
            <...>
        """

    class Inherits(Documented):
        pass

    def bare():
        """A toy without an example."""

    assert [own_example(f) for f in (Documented, Inherits, bare)] == [True, False, False]
