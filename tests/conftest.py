"""Shared fixtures and helpers of the test suite.

Registries: a test that registers a toy entry does it inside ``REGISTRY.scoped()`` (see
:meth:`lttoolbox.registry.Registry.scoped`), so ``lttrain --list`` and the coverage tests, which
read the registries, never see it. The autouse fixture below fails the test that leaves an entry
behind or removes one.
"""
from __future__ import annotations

import sys

import pytest

from lttoolbox.registry import Registry


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
