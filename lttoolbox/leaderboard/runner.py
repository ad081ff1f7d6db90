"""Run the planned runs as ``lttrain`` subprocesses: skip, resume or start each one.

Each run lives in its own directory (``<out>/runs/<setting>/<row>/seed<k>``) and is decided on
what that directory holds:

* ``results.json`` whose ``recipe_hash`` and ``protocol`` match the plan: finished, skipped;
* ``checkpoint.pt`` (no results) whose saved ``recipe.yaml`` matches: continued with ``--resume``;
* a finished or started run of a *different* recipe (the suite, the recipe or the protocol
  changed): moved aside to ``seed<k>.stale-<time>``, never deleted, and the run starts afresh;
* anything else: started afresh.

A run is a subprocess (``python -m lttoolbox.cli``), so a crash or a bad recipe fails that run
only; its exit code, wall time and last error line are kept in ``leaderboard_run.json`` beside it.
Several runs may go at once (``jobs``); on an interrupt (Ctrl-C, or SIGTERM to the leaderboard)
every running ``lttrain`` is sent SIGINT and stops, keeping its last complete checkpoint, so the
next invocation resumes it.

Runs that share a first phase share its training. A multi-phase run (cRT after CE) whose first
phase is the recipe of another planned run of the same setting and seed (the CE row), or of
another multi-phase run (LWS after CE), is started with ``lttrain --from-run DONOR`` as soon as
the donor's first phase has ended, and gives the result of a run from scratch
(``lttoolbox.engine.reuse``). The scheduler starts such a run only once no earlier donor is
queued or running in this invocation, and fills free slots with other runs meanwhile; without a
finished donor it trains from scratch.

The runner owns its children. Each ``lttrain`` runs in its own session (a terminal's Ctrl-C
reaches the runner only, which forwards exactly one SIGINT), and on Linux it is also told, with
``prctl(PR_SET_PDEATHSIG)``, to receive SIGTERM when the runner dies, however it dies (``kill
-9``, the OOM killer): it then stops as on Ctrl-C, keeping its last checkpoint. A
run whose ``RUN/.lock`` is still held when the runner comes to it (a child of a runner killed a
moment ago, still writing its checkpoint; or another invocation's run) is waited for, then
decided again: skipped if that process finished it, resumed otherwise, never failed as "in use".
"""
from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..engine.provenance import cpu_name
from ..engine.reuse import first_phase_hash
from ..recipe import dump_recipe, phase_recipes, recipe_hash, resolve_saved
from ..rundir import RunDir, atomic_write_text, lock_holder
from ..upgrade import upgrade_record
from ..yamlio import load_yaml

from .metrics import MetricSpec, metric_spec
from .suite import Run

RESULTS = RunDir.RESULTS
CHECKPOINT = RunDir.CHECKPOINT
SAVED_RECIPE = RunDir.RECIPE
PLANNED = RunDir.PLANNED_RECIPE
SIDECAR = RunDir.LEADERBOARD
LOG = RunDir.RUNNER_LOG

SKIP, RESUME, FRESH, STALE = "skip", "resume", "fresh", "stale"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def matching_results(run: Run, protocol: str) -> dict | None:
    """The run's ``results.json`` if it belongs to exactly this recipe and protocol (in today's
    spelling, also when it was written before phases were called so)."""
    results = upgrade_record(read_json(run.dir / RESULTS))
    if (isinstance(results, dict) and results.get("recipe_hash") == run.hash
            and results.get("protocol") == protocol):
        return results
    return None


def saved_recipe_hash(run_dir: Path) -> str | None:
    try:
        return recipe_hash(resolve_saved(load_yaml((run_dir / SAVED_RECIPE).read_text())))
    except Exception:  # unreadable or not a recipe: treat as a different recipe
        return None


def decide(run: Run, protocol: str) -> tuple[str, str]:
    """What to do with ``run``: ``(action, why)``, action one of skip/resume/fresh/stale."""
    if matching_results(run, protocol) is not None:
        return SKIP, "finished"
    if (run.dir / RESULTS).exists():
        return STALE, "its results.json is from another recipe or protocol"
    if (run.dir / CHECKPOINT).exists():
        if saved_recipe_hash(run.dir) == run.hash:
            return RESUME, "unfinished"
        return STALE, "its checkpoint is from another recipe"
    return FRESH, "not started"


def move_aside(run_dir: Path, tag: str = "stale") -> Path:
    """Rename a stale (or replaced) run directory to ``<name>.<tag>-<time>``; nothing is
    deleted, and the tables never read such a copy."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.{tag}-{stamp}")
    n = 1
    while target.exists():
        target = run_dir.with_name(f"{run_dir.name}.{tag}-{stamp}-{n}")
        n += 1
    run_dir.rename(target)
    return target


def read_attempts(run_dir: Path) -> list[dict]:
    data = read_json(run_dir / SIDECAR)
    return data.get("attempts", []) if isinstance(data, dict) else []


# The line ``Runner.execute`` writes into the run's log before it starts ``lttrain``.
_START_LINE = re.compile(r"^# \d{4}-\d\d-\d\dT\S+ .*-m lttoolbox\.cli ")


def started_attempts(run_dir: Path) -> int:
    """How many attempts the runner started on this directory, counted from the log.

    An attempt is recorded in ``leaderboard_run.json`` only when it ends, so one whose runner was
    killed outright (``kill -9``, a lost machine) is missing there but still started here: more
    starts than records means the summed wall time is a lower bound.
    """
    try:
        text = (run_dir / LOG).read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if _START_LINE.match(line))


def last_error(log_path: Path) -> str | None:
    """The ``error:`` line ``lttrain`` printed, else the last line (a traceback's message)."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines()]
    except OSError:
        return None
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln) for ln in lines if ln and not ln.startswith("#")]
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1][len("error:"):].strip()
    return lines[-1] if lines else None


def _load_prctl():
    """libc's ``prctl`` on Linux (looked up once, here: a child between fork and exec may only
    call what is already loaded), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
DEATH_SIGNAL = signal.SIGTERM  # lttrain takes it as Ctrl-C: checkpoint kept, exit 130


AUTOGROUP = Path("/proc/self/autogroup")


def keep_priority() -> None:
    """Give the child's new session the runner's CPU priority (its ``nice`` value).

    Linux groups the processes of each session (``setsid``) into an *autogroup*, and the
    scheduler shares the processor between autogroups before it looks at any ``nice`` value
    inside them: a child in a session of its own competes with the test suite as an equal,
    however niced (measured here: two niced runs took 47 % and 41 % of a core each beside a
    test process at 47 %). Setting the new autogroup's nice to the runner's restores the
    priority ``nice -n 19`` asked for. Raising a nice value needs no privilege; nothing happens
    without autogroups.
    """
    niceness = os.nice(0)
    if niceness > 0:
        try:
            fd = os.open(AUTOGROUP, os.O_WRONLY)
            try:
                os.write(fd, str(niceness).encode())
            finally:
                os.close(fd)
        except OSError:
            pass  # no autogroups (or a kernel without the file): nice applies as usual


def die_with_runner() -> Callable[[], None]:
    """The children's ``preexec_fn``: the runner's priority for the child's new session
    (:func:`keep_priority`) and, on Linux, :data:`DEATH_SIGNAL` sent to the child when the
    runner dies.

    The signal is tied to the thread that forks the child, which here waits for that child to
    end, so it fires only when the runner itself is gone.
    """
    parent = os.getpid()

    def arm() -> None:
        keep_priority()
        if _PRCTL is None:
            return
        _PRCTL(PR_SET_PDEATHSIG, int(DEATH_SIGNAL), 0, 0, 0)
        if os.getppid() != parent:  # the runner died before the request took effect
            os._exit(1)

    return arm


def first_phase_ended(run: Run, protocol: str) -> bool:
    """Whether ``run``'s first phase has ended on disk, for this very plan, with what
    ``lttrain --from-run`` reads: its ``checkpoint.pt`` and, for a multi-phase run, the first
    phase's ``model-<phase>.pt``; the run is finished, or past that phase.

    A finished run merged from a ``--pack`` archive holds its results but no weights, so it
    gives no first phase: the runs that would share it train that phase themselves.
    """
    if not (run.dir / CHECKPOINT).is_file():
        return False
    phases = phase_recipes(run.recipe)
    has_weights = RunDir(run.dir).weights(phases[0]["meta"]["phase"]).is_file()
    if matching_results(run, protocol) is not None:
        return len(phases) == 1 or has_weights
    return has_weights and saved_recipe_hash(run.dir) == run.hash


def donor_map(runs: list[Run], candidates: list[Run]) -> dict[str, list[Run]]:
    """For every multi-phase run of ``runs``: the ``candidates`` of the same setting and seed
    that train its first phase with the same recipe (single-phase runs first, since they are
    that phase and nothing more)."""
    by_cell: dict[tuple[str, int, str], list[Run]] = {}
    for cand in candidates:
        by_cell.setdefault((cand.setting, cand.seed, first_phase_hash(cand.recipe)),
                           []).append(cand)
    donors = {}
    for run in runs:
        if len(phase_recipes(run.recipe)) < 2:
            continue
        same = [c for c in by_cell.get((run.setting, run.seed, first_phase_hash(run.recipe)), [])
                if c.key != run.key]
        if same:
            donors[run.key] = sorted(same, key=lambda c: len(phase_recipes(c.recipe)) > 1)
    return donors


@dataclass
class Outcome:
    """What became of one run in this invocation."""

    run: Run
    action: str
    returncode: int | None
    wall_seconds: float
    error: str | None = None
    results: dict | None = None

    @property
    def ok(self) -> bool:
        return self.results is not None


class Runner:
    """Runs planned runs, ``jobs`` at a time, each as an ``lttrain`` subprocess.

    Args:
        protocol: Protocol name the runs must carry (checked in their ``results.json``).
        jobs: Runs at once.
        threads_per_job: ``OMP_NUM_THREADS`` for each run (None: leave the environment alone).
        report: Called with a one-line message per event.
        metric: The suite's metric (:mod:`lttoolbox.leaderboard.metrics`), shown per finished run.
    """

    def __init__(self, protocol: str, jobs: int = 1, threads_per_job: int | None = None,
                 report: Callable[[str], None] = print, deadline: float | None = None,
                 metric: MetricSpec | None = None):
        self.protocol = protocol
        self.metric = metric or metric_spec("top1")
        self.jobs = max(1, int(jobs))
        self.threads_per_job = threads_per_job
        self.report = report
        self.deadline = deadline  # time.monotonic() after which nothing runs
        self.stop = threading.Event()
        self.budget_spent = False  # the deadline stopped the queue
        self.donors: dict[str, list[Run]] = {}  # run key -> runs that train its first phase
        self._active: set[str] = set()  # keys queued or running in run_all
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def command(self, run: Run, resume: bool) -> list[str]:
        cmd = [sys.executable, "-m", "lttoolbox.cli", str(run.dir / PLANNED), "--out",
               str(run.dir), "--quiet"]
        return cmd + (["--resume"] if resume else [])

    def _environment(self) -> dict:
        env = dict(os.environ)
        if self.threads_per_job:
            env["OMP_NUM_THREADS"] = str(self.threads_per_job)
            env["MKL_NUM_THREADS"] = str(self.threads_per_job)
        return env

    def wait_for_holder(self, run: Run) -> bool:
        """Wait while another process holds the run's lock; False if stopped while waiting."""
        holder = lock_holder(run.dir)
        if holder is None:
            return True
        self.report(f"  {run.key}: process {holder} (a run left by an earlier invocation, or "
                    f"another one's) still holds it; waiting for it to end")
        while lock_holder(run.dir) is not None:
            if self.stop.is_set():
                return False
            time.sleep(0.5)
        return True

    def execute(self, run: Run) -> Outcome:
        """Decide and carry out one run."""
        if not self.wait_for_holder(run):
            return Outcome(run, "wait", None, 0.0)  # stopped before it could start
        action, why = decide(run, self.protocol)
        if action == SKIP:
            return Outcome(run, SKIP, 0, 0.0, results=matching_results(run, self.protocol))
        if action == STALE:
            moved = move_aside(run.dir)
            self.report(f"  {run.key}: {why}; moved to {moved.name}, starting afresh")
            action = FRESH
        run.dir.mkdir(parents=True, exist_ok=True)
        dump_recipe(run.recipe, run.dir / PLANNED)
        cmd = self.command(run, resume=action == RESUME)
        donor = (next((d for d in self.donors.get(run.key, ())
                       if first_phase_ended(d, self.protocol)), None)
                 if action == FRESH else None)
        if donor is not None:
            cmd += ["--from-run", str(donor.dir)]
            self.report(f"  {run.key}: its first phase is taken from {donor.key}")
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        t0 = time.perf_counter()
        with open(run.dir / LOG, "a") as log:
            log.write(f"# {started} {' '.join(cmd)}\n")
            log.flush()
            # A new session keeps a terminal Ctrl-C away from the children: the runner forwards
            # exactly one SIGINT itself, so no run is interrupted while it writes its checkpoint.
            # On Linux the death signal ends the child with the runner, however the runner ends.
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    env=self._environment(), start_new_session=True,
                                    preexec_fn=die_with_runner())
            with self._lock:
                self._procs.add(proc)
            try:
                returncode = proc.wait()
            finally:
                with self._lock:
                    self._procs.discard(proc)
        wall = time.perf_counter() - t0
        results = matching_results(run, self.protocol)
        error = None
        interrupted = results is None and self.stop.is_set()
        if results is None and not interrupted:
            error = last_error(run.dir / LOG) or f"lttrain exited with code {returncode}"
            if returncode == 0:
                error = f"lttrain exited 0 but left no matching results.json ({error})"
        attempts = read_attempts(run.dir) + [{
            "started": started, "action": action, "wall_seconds": round(wall, 2),
            "returncode": returncode, "recipe_hash": run.hash, "error": error,
            "interrupted": interrupted, "command": cmd,
            # which machine: a run carried between machines (--pack-unfinished) names only the
            # last one in its results.json
            "host": platform.node(), "cpu": cpu_name()}]
        atomic_write_text(run.dir / SIDECAR, json.dumps({"attempts": attempts}, indent=2) + "\n")
        return Outcome(run, action, returncode, wall, error, results)

    def interrupt(self) -> None:
        """Stop starting runs and ask the running ones to checkpoint and stop."""
        self.stop.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGINT)
                except OSError:
                    pass

    def donors_first(self, runs: list[Run]) -> list[Run]:
        """``runs`` in order, except that a run's preferred donor, if queued, moves just before
        it (``--priority`` may list cRT before the CE run it takes its first phase from)."""
        queued = {run.key: run for run in runs}
        placed: dict[str, Run] = {}
        visiting: set[str] = set()

        def place(run: Run) -> None:
            if run.key in placed or run.key in visiting:
                return  # placed, or a donor that needs this very run: it waits instead
            visiting.add(run.key)
            donor = next((d for d in self.donors.get(run.key, ()) if d.key in queued), None)
            if donor is not None:
                place(queued[donor.key])
            placed[run.key] = run

        for run in runs:
            place(run)
        return list(placed.values())

    def run_all(self, runs: list[Run]) -> tuple[list[Outcome], bool]:
        """Run ``runs`` (in order, ``jobs`` at a time).

        Returns:
            The outcomes of the runs that were started, and whether the user interrupted.
        """
        outcomes: list[Outcome] = []
        total = len(runs)
        counter = iter(range(1, total + 1))

        def work(run: Run) -> Outcome | None:
            if self.stop.is_set():
                return None
            index = next(counter)
            self.report(f"[{index}/{total}] {run.key}: starting")
            out = self.execute(run)
            if out.ok:
                r = out.results
                self.report(f"[{index}/{total}] {run.key}: done in "
                            f"{out.wall_seconds / 60:.1f} min, {self.metric.name} "
                            f"{r.get(self.metric.key, float('nan')):.2f}")
            elif not self.stop.is_set():
                self.report(f"[{index}/{total}] {run.key}: FAILED ({out.error})")
            else:
                self.report(f"[{index}/{total}] {run.key}: interrupted; it resumes next time")
            return out

        queue = self.donors_first(runs)
        order = {run.key: i for i, run in enumerate(queue)}
        self._active = set(order)

        def ready(run: Run) -> bool:
            """No donor that comes earlier is still queued or running (a donor queued later
            waits for this run instead, so two runs never wait for each other)."""
            return not any(d.key in self._active and order.get(d.key, -1) < order[run.key]
                           for d in self.donors.get(run.key, ()))

        def finished(future) -> Outcome | None:
            self._active.discard(started.pop(future).key)
            return future.result()

        interrupted = False
        started: dict = {}
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            pending: set = set()
            while pending or (queue and not self.stop.is_set()):
                while queue and len(pending) < self.jobs and not self.stop.is_set():
                    pick = next((r for r in queue if ready(r)), None)
                    if pick is None:
                        break  # every queued run waits for a running donor
                    queue.remove(pick)
                    future = pool.submit(work, pick)
                    started[future] = pick
                    pending.add(future)
                if not pending:
                    break
                if (self.deadline is not None and not self.stop.is_set()
                        and time.monotonic() >= self.deadline):
                    # The budget is spent: the running runs checkpoint and stop (they resume
                    # next time), the queued ones do not start. Not a user interrupt.
                    self.report("budget spent: stopping the running runs at their next step; "
                                "they resume next time")
                    self.budget_spent = True
                    self.interrupt()
                try:
                    done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                except KeyboardInterrupt:
                    if interrupted:  # a second Ctrl-C: stop waiting for the children politely
                        with self._lock:
                            for proc in self._procs:
                                proc.kill()
                        continue
                    interrupted = True
                    self.report("interrupt: asking the running runs to checkpoint and stop ...")
                    self.interrupt()
                    continue
                for future in done:
                    result = finished(future)
                    if result is not None:
                        outcomes.append(result)
        self._active = set()
        return outcomes, interrupted
