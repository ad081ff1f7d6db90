"""Every example in lttoolbox's docstrings runs as written.

The ``>>>`` examples of every module of the package (module, class and function docstrings) are
collected with :mod:`doctest` and run, one test per module, from the repository root. An example
that cannot run in a test (it trains, downloads, or needs a data set that is not here) is marked
``# doctest: +SKIP`` where it stands.
"""
from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("name", module_names())
def test_docstring_examples_run(name, monkeypatch):
    monkeypatch.chdir(ROOT)
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
