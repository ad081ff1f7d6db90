"""Run a leaderboard suite and write its tables: the papers' rows side by side, with seeds.

The command line of :mod:`lttoolbox.leaderboard.cli` (its docstring gives the usage and the exit
statuses; ``python benchmarks/leaderboard.py --help``). See docs/leaderboard_guide.md.
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
