"""Run a leaderboard suite and write its tables: the papers' rows side by side, with seeds.

Usage (from the repository root, where the recipes' data roots are relative to)::

    python benchmarks/leaderboard.py benchmarks/suites/cifar10_lt_core.yaml --protocol quick \\
        --seeds 0 1 2 --out runs/lb
    python benchmarks/leaderboard.py SUITE --seeds 0 1 2 --rows ce ldam_drw --out runs/lb
    python benchmarks/leaderboard.py SUITE --out runs/lb --report-only
    python benchmarks/leaderboard.py SUITE --protocol paper --priority ce ldam_drw --jobs 4 \
        --budget 8 --pack $OUT/results.tar.gz --out runs/lb/gpu        # a GPU window
    python benchmarks/leaderboard.py SUITE --protocol paper --merge results.tar.gz \
        --report-only --out runs/lb/paper --publish docs/leaderboard-paper.md

Every cell (row x setting x seed) is one ``lttrain`` run in ``<out>/runs/<setting>/<row>/seed<k>``.
A run whose ``results.json`` matches its planned recipe is skipped and an interrupted one resumes,
so a long leaderboard can be completed over several sittings (``--max-runs`` stops after a few).
The tables (``leaderboard.md``, ``.csv``, ``.json`` and, with matplotlib, ``plots/*.png``) are
rewritten at the end of every invocation from all the matching runs on disk, whichever invocation
ran them. A multi-phase run whose first phase another run trains too (cRT after CE) starts from
that run's first phase (``lttrain --from-run``), with the result of a run from scratch.
See docs/leaderboard_guide.md.

Exit status: 0 when every asked-for run finished (or ``--max-runs`` stopped the queue), 1 when a
run failed or a recipe is invalid, 2 for a bad suite, argument or archive, 3 when ``--budget``
stopped with runs left (they resume next time), 130 when interrupted.
"""
from __future__ import annotations

import sys
from pathlib import Path

# The lttoolbox of this checkout, whatever else is installed (the runs it starts are the
# checkout's too: ``python -m lttoolbox.cli`` from the repository root).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lttoolbox.leaderboard.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
