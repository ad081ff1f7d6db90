"""The leaderboard: suites, protocols, the run queue and the tables.

``python benchmarks/leaderboard.py SUITE ...`` runs :func:`lttoolbox.leaderboard.cli.main`. The
modules are small on purpose:

* :mod:`~lttoolbox.leaderboard.suite`: read a suite file, apply a protocol, plan one resolved
  recipe per run,
* :mod:`~lttoolbox.leaderboard.metrics`: the suite's primary metric (top-1 or mAP) and the columns
  every table reads for it,
* :mod:`~lttoolbox.leaderboard.references`: the papers' numbers
  (``benchmarks/reference_numbers.yaml``),
* :mod:`~lttoolbox.leaderboard.runner`: decide per run whether to skip, resume or start it, and
  run ``lttrain``,
* :mod:`~lttoolbox.leaderboard.report`: aggregate the runs' ``results.json`` and write
  md/csv/json,
* :mod:`~lttoolbox.leaderboard.plots`: optional PNG plots (needs matplotlib:
  ``pip install -e .[plot]``),
* :mod:`~lttoolbox.leaderboard.archive`: pack and merge the runs of a GPU window,
* :mod:`~lttoolbox.leaderboard.faults`: the leaderboard's cases of ``benchmarks/fault_sweep.py``,
* :mod:`~lttoolbox.leaderboard.cli`: the command line.
"""
