"""Run a leaderboard suite and write its tables: the papers' rows side by side, with seeds.

Usage (from the repository root, where the recipes' data roots are relative to)::

    python benchmarks/leaderboard.py benchmarks/suites/cifar10_lt_core.yaml --protocol quick \\
        --seeds 0 1 2 --out runs/lb
    python benchmarks/leaderboard.py SUITE --seeds 0 1 2 --rows ce ldam_drw --out runs/lb
    python benchmarks/leaderboard.py SUITE --out runs/lb --report-only
    python benchmarks/leaderboard.py SUITE --protocol paper --priority ce ldam_drw --jobs 4 \
        --budget 8 --pack $OUT/results.tar.gz --pack-unfinished $OUT/carry.tar.gz \
        --out runs/lb/gpu                                              # a GPU window
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

import argparse
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from ..cli import stop_signals_interrupt
from ..errors import ConfigError
from . import plots as lb_plots
from .archive import ArchiveError, apply_merge, pack, plan_merge
from .references import References
from .report import collect, markdown, write_all
from .runner import SKIP, Runner, decide, donor_map, first_phase_ended
from .suite import Planner, load_suite


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="leaderboard", description="Run a leaderboard suite and write its tables.")
    parser.add_argument("suite", help="suite YAML (benchmarks/suites/*.yaml)")
    parser.add_argument("--protocol", default="quick",
                        help="paper | quick | smoke, or a protocol the suite defines "
                             "(default: quick)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds to run")
    parser.add_argument("--out",
                        help="output folder (default: runs/leaderboard/<suite>-<protocol>)")
    parser.add_argument("--rows", nargs="+", help="run only these rows (the tables show all)")
    parser.add_argument("--priority", nargs="+", default=[], metavar="ROW",
                        help="run these rows first, in this order, then the others in suite "
                             "order (within each seed: every row's seed 0 comes first)")
    parser.add_argument("--budget", type=float, metavar="MINUTES",
                        help="wall-clock minutes for running: start no run after that and "
                             "interrupt the running ones (they keep their checkpoints); exit "
                             "status 3 when runs are left")
    parser.add_argument("--pack", metavar="TGZ",
                        help="write every finished run's results.json, log.jsonl, "
                             "recipe.yaml, leaderboard_run.json and lttrain.log into this "
                             ".tar.gz (at most 16 MiB)")
    parser.add_argument("--pack-unfinished", metavar="TGZ",
                        help="write every unfinished run's checkpoint.pt, recipe.yaml, "
                             "data.json, log.jsonl, leaderboard_run.json and lttrain.log into "
                             "this .tar.gz (at most 16 MiB), to --merge and resume them on "
                             "another machine")
    parser.add_argument("--merge", nargs="+", default=[], metavar="TGZ",
                        help="first extract these --pack (or --pack-unfinished) archives into "
                             "--out, each checked whole before anything is written")
    parser.add_argument("--merge-overwrite", action="store_true",
                        help="with --merge: a local run that an archive's run would replace is "
                             "moved aside to seed<k>.replaced-<time> (never deleted); without "
                             "it such a merge stops before writing anything")
    parser.add_argument("--settings", nargs="+", help="run only these settings (columns)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--threads-per-job", type=int,
                        help="OMP threads per run (default: cores / jobs when jobs > 1)")
    parser.add_argument("--max-runs", type=int,
                        help="start at most this many runs, then write the tables and stop")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override applied to every run, stated in the tables "
                             "(e.g. --set train.amp=bf16); repeatable")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing; rewrite the tables from the runs on disk")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would run, run nothing, write nothing (--merge "
                             "archives are checked, not written)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--publish", metavar="MD",
                        help="also write the Markdown table to this file (e.g. "
                             "docs/leaderboard.md), its plots beside it in <name>_plots/")
    parser.add_argument("--appendix", metavar="MD", action="append", default=[],
                        help="a Markdown file appended as it is under the tables (e.g. earlier "
                             "runs whose run directories are gone, stated as such); repeatable")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.max_runs is not None and args.max_runs < 0:
        parser.error("--max-runs must be >= 0")
    if args.budget is not None and not args.budget > 0:
        parser.error("--budget must be a positive number of minutes")
    return args


EXIT_BUDGET = 3  # --budget ran out with asked-for runs unfinished


def say(message: str) -> None:
    print(message, flush=True)


def read_appendix(path: Path) -> str:
    """The text of an ``--appendix`` file, read before anything runs or is written."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}",
                          key="--appendix") from None
    if not text:
        raise ConfigError(f"{path} is empty", key="--appendix")
    return text


def publish(doc: dict, out: Path, plots: dict[str, list[str]], target: Path) -> Path:
    """Write the Markdown table to ``target`` with its plots copied to ``<stem>_plots/``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = f"{target.stem}_plots"
    moved: dict[str, list[str]] = {}
    for setting, names in plots.items():
        for name in names:
            (target.parent / folder).mkdir(exist_ok=True)
            shutil.copyfile(out / name, target.parent / folder / Path(name).name)
            moved.setdefault(setting, []).append(f"{folder}/{Path(name).name}")
    from lttoolbox.rundir import atomic_write_text
    atomic_write_text(target, markdown(doc, moved))
    return target


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        suite = load_suite(args.suite)
        out = Path(args.out or Path("runs") / "leaderboard" / f"{suite.name}-{args.protocol}")
        planner = Planner(suite, args.protocol, out, args.overrides)
        refs = References.load(suite.references) if suite.references else References.empty()
        for given, known, what in ((args.rows, [r.id for r in suite.rows], "--rows"),
                                   (args.priority, [r.id for r in suite.rows], "--priority"),
                                   (args.settings, [s.id for s in suite.settings], "--settings")):
            unknown = [x for x in (given or []) if x not in known]
            if unknown:
                raise ConfigError(f"unknown id '{unknown[0]}'; the suite has {', '.join(known)}",
                                  key=what)
        appendix = [read_appendix(Path(a)) for a in args.appendix]
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.merge:
        try:  # every archive is read and checked before any is written
            plans = plan_merge([Path(a) for a in args.merge], out, args.merge_overwrite,
                               metric=suite.metric.key)
        except ArchiveError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for plan in plans:
            if args.dry_run:  # checked whole, as a merge would be; nothing written
                say(f"would merge {len(plan.runs)} runs from {plan.archive} into {out} (dry "
                    f"run: the plan below is of the runs on disk without them)")
                continue
            try:
                moved = apply_merge(plan, out)
            except OSError as err:
                print(f"error: merging {plan.archive} into {out}: {err}", file=sys.stderr)
                return 2
            for run_dir, aside in moved:
                say(f"moved the local run {run_dir} aside to {aside.name} (--merge-overwrite)")
            say(f"merged {len(plan.runs)} runs from {plan.archive} into {out}"
                + (f" ({len(plan.unchanged)} already there)" if plan.unchanged else ""))
    rows = [r for r in suite.rows if not args.rows or r.id in args.rows]
    first = {row_id: i for i, row_id in enumerate(args.priority)}
    rows.sort(key=lambda r: first.get(r.id, len(first)))  # stable: the rest in suite order
    settings = [s for s in suite.settings if not args.settings or s.id in args.settings]
    seeds = list(dict.fromkeys(args.seeds))

    # Seed-major order: every row gets its first seed before any row gets a second one.
    queue, finished, invalid, unavailable = [], 0, 0, set()
    for seed in seeds:
        for setting in settings:
            for row in rows:
                if not row.runs_in(setting.id):
                    continue
                if not row.available:
                    unavailable.add(row.id)
                    continue
                plan = planner.plan(row.id, setting.id, seed)
                if isinstance(plan, ConfigError):
                    invalid += 1
                    say(f"  {setting.id}/{row.id}/seed{seed}: invalid recipe: {plan}")
                    continue
                if decide(plan, args.protocol)[0] == SKIP:
                    finished += 1
                else:
                    queue.append(plan)
    # Runs that train the first phase of a queued multi-phase run, whether they are queued or
    # finished on disk (rows not asked for included): that phase is trained once.
    candidates = [plan for seed in seeds for setting in settings for row in suite.rows
                  if row.runs_in(setting.id) and row.available
                  and not isinstance(plan := planner.plan(row.id, setting.id, seed), ConfigError)]
    donors = donor_map(queue, candidates)
    for warning in sorted({f"{p.row}: {w}" for p in queue for w in p.warnings}):
        say(f"warning: {warning}")
    say(f"{suite.name} ({args.protocol}): {finished + len(queue)} runs planned, {finished} "
        f"finished, {len(queue)} to run; {len(unavailable)} rows not available; output {out}")
    if args.dry_run:
        runner = Runner(args.protocol)
        queued = {run.key for run in queue}
        for run in queue:
            action = decide(run, args.protocol)[0]
            # the donors the runner can wait for: queued here, or past their first phase on disk
            usable = [d.key for d in donors.get(run.key, ())
                      if d.key in queued or first_phase_ended(d, args.protocol)]
            shared = (f" (first phase from {' or '.join(usable)} once it has ended)"
                      if usable and action != "resume" else "")
            say(f"  {run.key} [{action}]: {' '.join(runner.command(run, action == 'resume'))}"
                f"{shared}")
        return 0

    interrupted, failed = False, 0
    left, budget_left = 0, 0
    if not args.report_only and queue:
        if args.max_runs is not None:
            left = max(0, len(queue) - args.max_runs)
            queue = queue[:args.max_runs]
        threads = args.threads_per_job
        if threads is None and args.jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
            threads = max(1, (os.cpu_count() or 1) // args.jobs)
        deadline = (time.monotonic() + 60 * args.budget) if args.budget else None
        runner = Runner(args.protocol, args.jobs, threads, say, deadline=deadline,
                        metric=suite.metric)
        runner.donors = donors
        with stop_signals_interrupt():  # SIGTERM or a lost SIGINT stops the runs resumably
            outcomes, interrupted = runner.run_all(queue)
        # A run stopped by an interrupt or by the budget has no error: it resumes next time.
        failed = sum(1 for o in outcomes if o.error is not None)
        if runner.budget_spent:
            budget_left = (sum(1 for o in outcomes if not o.ok and o.error is None)
                           + len(queue) - len(outcomes))
            if budget_left:
                say(f"--budget {args.budget:g}: {budget_left} runs left; run the same command "
                    f"again to continue")
        if left:
            say(f"--max-runs {args.max_runs}: {left} runs left; run the same command again "
                f"to continue")

    doc = collect(suite, planner, refs, seeds, {r.id for r in rows}, {s.id for s in settings})
    if appendix:
        doc["appendix"] = appendix
    doc["command"] = " ".join(shlex.quote(a) for a in ["python", "benchmarks/leaderboard.py",
                                                        *(sys.argv[1:] if argv is None else argv)])
    plots = {}
    if not args.no_plots:
        if lb_plots.available():
            plots = lb_plots.write_plots(doc, out)
        else:
            doc["plots_note"] = ("Plots skipped: matplotlib is not installed "
                                 "(`pip install -e .[plot]`).")
    for path in write_all(doc, out, plots):
        say(f"wrote {path}")
    for target, unfinished in ((args.pack, False), (args.pack_unfinished, True)):
        if not target:
            continue
        try:
            skipped: list = []
            packed = pack(out, Path(target), skipped=skipped, metric=suite.metric.key,
                          unfinished=unfinished)
            if unfinished and not packed:
                say(f"no unfinished runs: {target} not written (nor kept, if it was there)")
            else:
                say(f"packed {packed} {'unfinished' if unfinished else 'finished'} runs into "
                    f"{target}")
            for run, why in skipped:
                say(f"warning: {run} left out of the pack: {why}")
        except ArchiveError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    if args.publish:
        say(f"wrote {publish(doc, out, plots, Path(args.publish))}")
    if interrupted:
        return 130
    if failed or invalid:
        return 1
    return EXIT_BUDGET if budget_left else 0
