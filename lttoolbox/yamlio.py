"""YAML as recipes need it: plain numbers are numbers, choices stay strings, keys are unique.

PyYAML implements YAML 1.1, which has three traps for recipes and ``key=value`` overrides:

* ``1e-3`` and ``1e2`` are strings (YAML 1.1 floats need a dot: ``1.0e-3``), so ``optim.lr=1e-3``
  arrived as text;
* ``on``, ``off``, ``yes``, ``no`` (any case) are booleans, so ``train.amp=off`` arrived as
  ``False`` instead of the choice ``"off"``;
* a key given twice keeps the last value without a word.

:func:`load_yaml` reads numbers as YAML 1.2 does (``1e-3``, ``1e2``, ``.5``, ``.inf``, ``.nan``),
reads only ``true`` / ``false`` as booleans, and refuses duplicate keys. Text that nests deeper
than :data:`MAX_DEPTH` is refused too (PyYAML would recurse until Python's stack runs out).

Example:
    >>> load_yaml("lr: 1e-3\\namp: off\\nepochs: 1e2")
    {'lr': 0.001, 'amp': 'off', 'epochs': 100.0}
"""
from __future__ import annotations

import re
from typing import Any

import yaml

BOOL_TAG = "tag:yaml.org,2002:bool"
FLOAT_TAG = "tag:yaml.org,2002:float"
MAX_DEPTH = 64  # a recipe nests a few levels; far deeper is a mistake or an attack


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 numbers and booleans and unique keys."""

    def compose_node(self, parent, index):  # noqa: D102 (PyYAML hook)
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.YAMLError(f"nesting deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # noqa: D102 (PyYAML hook)
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if (isinstance(key_node, yaml.ScalarNode)
                        and key_node.tag != "tag:yaml.org,2002:merge"):
                    key = self.construct_object(key_node, deep=True)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            "while reading a mapping", node.start_mark,
                            f"the key '{key}' is given twice", key_node.start_mark)
                    seen[key] = True
        return super().construct_mapping(node, deep=deep)


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag not in (BOOL_TAG, FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
RecipeLoader.add_implicit_resolver(BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))
# Checked after the integer resolver (registered first), so "12" stays an int.
RecipeLoader.add_implicit_resolver(
    FLOAT_TAG,
    re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`RecipeLoader`.

    Raises:
        yaml.YAMLError: invalid YAML, a duplicate key or too deep nesting.
    """
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 (a SafeLoader subclass)
