"""Helpers of ``benchmarks/leaderboard.py``: suites, protocols, the run queue and the tables.

The modules are small on purpose:

* :mod:`lb.suite`: read a suite file, apply a protocol, plan one resolved recipe per run,
* :mod:`lb.references`: the papers' numbers (``benchmarks/reference_numbers.yaml``),
* :mod:`lb.runner`: decide per run whether to skip, resume or start it, and run ``lttrain``,
* :mod:`lb.report`: aggregate the runs' ``results.json`` and write md/csv/json,
* :mod:`lb.plots`: optional PNG plots (needs matplotlib: ``pip install -e .[plot]``).
"""
