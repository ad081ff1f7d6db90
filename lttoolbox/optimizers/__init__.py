"""Optimizers and learning-rate schedules (registries ``OPTIMIZERS``, recipe section ``optim``,
and ``SCHEDULES``, section ``schedule``).

The plain ones (``sgd``, ``adam``, ``adamw``; ``multistep``, ``cosine``, ``constant``) live beside
the training loop in :mod:`lttoolbox.engine.optim`; every module of this package registers its
entries when the registry is first read (``sam``), so a new optimizer is one new file here.
See docs/extending.md ("An optimizer").
"""
from ..engine import optim as _plain  # noqa: F401  (registers sgd, adam, adamw and the schedules)
from ..registry import import_submodules

import_submodules(__name__)
