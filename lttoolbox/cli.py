"""``lttrain``: train a recipe from the command line.

Usage::

    lttrain configs/quickstart.yaml
    lttrain configs/cifar10_lt/ce.yaml --epochs 30 loss.name=focal --out runs/focal
    lttrain --resume --out runs/focal                  # the recipe saved in the run directory
    lttrain configs/cifar10_lt/ce.yaml --epochs 30 --print-config
    lttrain --list loss
    lttrain configs/cifar10_lt/ce_crt.yaml --from-run runs/ce --out runs/ce_crt   # reuse CE

A mistake in the recipe or the data stops the run before training with one line that names the
key or the file; nothing already in the run directory is touched. The helpers here (stop
signals, one-line errors) are shared by ``lteval`` and ``ltpredict``.
"""
from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from .errors import LTError
from .rundir import RunDir

# Stop requests that end a run resumably: Ctrl-C, kill / a scheduler's pre-emption, a closed
# terminal.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))
FAMILIES = ("data", "model", "head", "sampler", "loss", "augment", "generator", "optim",
            "schedule")


def default_run_dir(recipe_path: str, resume: bool, recipe: dict | None = None) -> Path:
    """``runs/<recipe path under configs/, without .yaml>/<time>`` (``runs/<name>/<time>`` for a
    recipe elsewhere), so ``cifar10_lt/ce`` and ``cifar100_lt/ce`` do not share a folder; with
    ``--resume``, the newest unfinished run there, and, given the resolved ``recipe``, the newest
    one trained with it (a run of the same file with other overrides, ``data.imbalance_ratio=50``,
    is another run)."""
    parts = Path(recipe_path).resolve().with_suffix("").parts
    inside = parts[len(parts) - parts[::-1].index("configs"):] if "configs" in parts else ()
    root = Path("runs").joinpath(*(inside or (Path(recipe_path).stem,)))
    if resume:
        unfinished = RunDir.unfinished_under(root)
        if not unfinished:
            raise LTError(f"--resume: no unfinished run under {root}; name it with --out")
        if recipe is not None:
            same = [run for run in unfinished if _trained_with(run, recipe)]
            if not same:
                raise LTError(f"--resume: the unfinished runs under {root} were trained with "
                              f"another recipe (other overrides?); name one with --out")
            unfinished = same
        return unfinished[-1].path
    return root / time.strftime("%Y%m%d-%H%M%S")


def _trained_with(run: RunDir, recipe: dict) -> bool:
    """Whether ``run`` saved ``recipe`` (by hash; an unreadable one is not it)."""
    from .recipe import recipe_hash
    from .runs import RunError, read_run_recipe

    try:
        return recipe_hash(read_run_recipe(run.path)) == recipe_hash(recipe)
    except RunError:
        return False


def registries() -> dict:
    """Every family's registry, in the order ``lttrain --list`` prints them."""
    import lttoolbox
    from .registry import HEADS, OPTIMIZERS, SCHEDULES

    return {"data": lttoolbox.DATASETS, "model": lttoolbox.MODELS, "head": HEADS,
            "sampler": lttoolbox.SAMPLERS, "loss": lttoolbox.LOSSES,
            "augment": lttoolbox.AUGMENTS, "generator": lttoolbox.GENERATORS,
            "optim": OPTIMIZERS, "schedule": SCHEDULES}


def list_registries(console, family: str | None) -> None:
    """Each entry of each family (or of one): every parameter with its default and the entry's
    summary, read from the signatures and docstrings; then the parameters the trainer (or, for a
    head, the model) fills in itself."""
    from rich.markup import escape

    from .registry import describe, given_by_builder

    for title, registry in registries().items():
        if family not in (None, title):
            continue
        console.print(f"[bold]{title}[/bold]" + ("" if registry.names() else ": (none yet)"))
        for name, params, summary in describe(registry):
            console.print(f"  [cyan]{name}[/cyan]({escape(params)})  {escape(summary)}",
                          soft_wrap=True)
        given = given_by_builder(registry)
        if given:
            builder = "the model" if title == "head" else "the trainer"
            console.print(f"  [dim]filled in by {builder}: {escape(', '.join(given))}[/dim]",
                          soft_wrap=True)
        if title == "data":  # a data setting is an override of a recipe, not a recipe of its own
            console.print("  [dim]a data setting is an override: lttrain RECIPE "
                          "data.imbalance_ratio=50 (or data.imbalance_type=step)[/dim]",
                          soft_wrap=True)


def check_without_training(recipe: dict, out: Path, resume: bool = False):
    """Build the run as training would, with every check the trainer makes before its first step
    (data, model, heads, every phase's components), and write nothing: no run directory, no
    decode cache (``lttoolbox.rundir.no_writes``). Returns the trainer, never run."""
    import warnings

    from .rundir import no_writes
    from .engine import Trainer

    with no_writes("lttrain --print-config writes nothing"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="could not write the decode cache",
                                category=RuntimeWarning)
        return Trainer(recipe, out, resume=resume, quiet=True)


class _StopSignals:
    """State shared by the stop handler, the helper that delivers a deferred stop, and the
    block that installed them; ``lock`` orders the helper's delivery against the block's end."""
    armed = False  # True while the handler may raise (inside the block, before a stop is handled)
    pending = None  # the helper thread waiting to deliver a deferred stop
    lock = threading.Lock()


def _inside_import(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _deliver_after_import(signum: int) -> None:
    """Re-deliver ``signum`` to the main thread as soon as it is out of every import."""
    main = threading.main_thread().ident

    def wait():
        while True:
            time.sleep(0.02)
            with _StopSignals.lock:
                if _StopSignals.armed and _inside_import(sys._current_frames().get(main)):
                    continue
                _StopSignals.pending = None
                if not _StopSignals.armed:
                    return  # the block ended, or the stop was handled another way
                if sys.version_info >= (3, 10):
                    import _thread
                    _thread.interrupt_main(signum)
                else:  # pragma: no cover - interrupt_main takes no signal before 3.10
                    import os
                    os.kill(os.getpid(), signum)
                return

    if _StopSignals.pending is None:
        _StopSignals.pending = threading.Thread(target=wait, name="lttoolbox-stop", daemon=True)
        _StopSignals.pending.start()


def _raise_interrupt(signum, frame):
    from . import stop
    stop.request()  # also recorded, in case the exception is swallowed before it unwinds
    if not _StopSignals.armed:
        return  # a stop already being handled, or a late one after the block
    if _inside_import(frame):
        # An exception raised inside an import can run through C++ that cannot pass it on
        # (torch's pybind11 start-up aborts the process), and one raised inside the string
        # exec() of dataclasses or namedtuple marks the interpreter as killed by Ctrl-C, so it
        # exits by SIGINT whatever the handler returns (CPython, bpo-1054041). The stop is
        # raised instead as soon as the import is over, some milliseconds later.
        _deliver_after_import(signum)
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _disarm() -> None:
    with _StopSignals.lock:  # no deferred stop is delivered after this
        _StopSignals.armed = False


@contextlib.contextmanager
def stop_signals_interrupt():
    """Within the block, SIGINT, SIGTERM and SIGHUP all raise ``KeyboardInterrupt``.

    A program started in the background by a non-interactive shell (``nohup lttrain ... &``, or a
    leaderboard launched that way) inherits SIGINT *ignored*, and Python then installs no handler,
    so an interrupt would be lost; SIGTERM (``kill``, a scheduler's pre-emption) and SIGHUP (the
    terminal closed) would end the run silently. All take the same path as Ctrl-C: the last
    complete checkpoint stays and the run continues with ``--resume``. A signal that lands inside
    an import is raised when the import is over. The previous handlers come back on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    from . import stop

    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    was_armed = _StopSignals.armed  # an enclosing block's state comes back on exit
    stop.clear()
    _StopSignals.armed = True
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_interrupt)
    try:
        yield
    finally:
        _disarm()
        for sig, handler in previous.items():
            # signal.signal first runs a stop still pending, with the disarmed handler: a no-op
            signal.signal(sig, handler)
        _StopSignals.armed = was_armed
        stop.clear()


def run_command(body: Callable, interrupted: Callable) -> int:
    """Run a command's ``body(console)`` with the stop signals handled and every user error as
    one line: exit 2 for a bad input, 1 for a diverged run, 130 when stopped."""
    with stop_signals_interrupt():
        from rich.console import Console  # after the stop handlers: a Ctrl-C here ends quietly
        from rich.text import Text

        console = Console(stderr=True, highlight=False)
        try:
            return body(console)
        except LTError as err:
            console.print(Text.assemble(("error:", "bold red"), f" {err}"), soft_wrap=True)
            return 2
        except FloatingPointError as err:  # a diverged run: one line, the checkpoint is kept
            console.print(Text.assemble(("error:", "bold red"), f" {err}"), soft_wrap=True)
            return 1
        except KeyboardInterrupt:
            # A second stop signal while the message is printed (or one still pending) must not
            # turn the clean exit into a death by signal.
            _disarm()
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
            interrupted(console)
            return 130


def version_line() -> str:
    import lttoolbox
    from .engine.provenance import git_commit
    return f"lttoolbox {lttoolbox.__version__} (commit {git_commit()})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lttrain", description="Train a long-tailed recognition recipe.",
        epilog="Overrides are key=value pairs with YAML values, e.g. train.epochs=5 loss.gamma=1.0 "
               "data.imbalance_ratio=50")
    parser.add_argument("recipe", nargs="?", help="recipe YAML file (with --resume --out DIR: "
                                                  "by default DIR/recipe.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    parser.add_argument("--epochs", type=int, metavar="N",
                        help="shorten or lengthen the recipe to N first-phase epochs: every "
                             "phase's epochs and epoch-valued keys (milestones, warm-up, "
                             "DRW/DRS switches) are multiplied by N / (the first phase's "
                             "epochs), as the leaderboard's quick protocol does; a phase left "
                             "too short for its schedule is named in a warning")
    parser.add_argument("--out", help="run directory (default: runs/<recipe path under "
                                      "configs/>/<time>)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--from-run", metavar="DIR",
                        help="start after the first phase, taken from the run in DIR, whose first "
                             "phase was trained with the same recipe and seed (checked); the "
                             "result equals a run from scratch")
    parser.add_argument("--quiet", action="store_true", help="print only the final results line")
    parser.add_argument("--print-config", action="store_true",
                        help="check the recipe as training would (data, model and every "
                             "component built), then print it fully resolved, each phase as its "
                             "difference from the base recipe, and exit without training or "
                             "writing anything")
    parser.add_argument("--full", action="store_true",
                        help="with --print-config: print every phase whole")
    parser.add_argument("--list", nargs="?", const="all", metavar="FAMILY",
                        choices=("all", *FAMILIES),
                        help="list the registered components (of one family) with their "
                             "parameters and defaults")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    args = parser.parse_args(argv)
    if args.recipe and "=" in args.recipe and not Path(args.recipe).exists():
        args.overrides.insert(0, args.recipe)  # `lttrain --resume --out DIR key=value`
        args.recipe = None
    if args.full and not args.print_config:
        parser.error("--full goes with --print-config")
    if not (args.recipe or args.version or args.list or (args.resume and args.out)):
        parser.error("a recipe file is required (try configs/quickstart.yaml), or --resume "
                     "--out DIR to continue the run in DIR with its saved recipe")
    state: dict = {}

    def body(console) -> int:
        if args.version:
            print(version_line())
            return 0
        if args.list:
            from rich.console import Console
            list_registries(Console(highlight=False), None if args.list == "all" else args.list)
            return 0
        from .data.images import UnreadableImage
        from .engine import Trainer
        from .recipe import (compact_recipe, dump_recipe_text, load_recipe, resolve,
                             scale_epochs, squeezed_phases)
        from .runs import is_saved_recipe

        recipe_path = args.recipe or str(RunDir(args.out).recipe)
        if not args.recipe and not Path(recipe_path).is_file():
            raise LTError(f"--resume: {args.out} holds no {RunDir.RECIPE}; give the recipe file")
        # A run's own recipe.yaml may be spelled as before phases and points were named so.
        saved = not args.recipe or is_saved_recipe(recipe_path)
        recipe = load_recipe(recipe_path, args.overrides, saved=saved)
        squeezed: list[str] = []
        if args.epochs is not None:
            squeezed = squeezed_phases(recipe, args.epochs)
            recipe = resolve(scale_epochs(recipe, args.epochs))
        if args.print_config:
            out = Path(args.out) if args.out else default_run_dir(args.recipe, args.resume, recipe)
            checked = check_without_training(recipe, out, args.resume)
            for message in squeezed:
                checked.log.warning(message)
            print(dump_recipe_text(recipe if args.full else compact_recipe(recipe)), end="")
            return 0
        from .engine.distributed import World, broadcast_object, init_from_environment
        # Under torchrun: join the process group the launcher describes (DDP training).
        joined = init_from_environment(recipe["train"]["device"])
        try:
            out = Path(args.out) if args.out else default_run_dir(args.recipe, args.resume, recipe)
            out = broadcast_object(out, World.current())  # one run directory for all ranks
            state["out"] = out
            start = None
            if args.from_run:
                from .engine.reuse import reused_start
                start = reused_start(args.from_run, recipe)
            trainer = Trainer(recipe, out, resume=args.resume, quiet=args.quiet, start=start)
            for message in squeezed if trainer.world.is_main else ():  # after every check
                trainer.log.warning(message)
            state["trainer"] = trainer
            try:
                trainer.run()
            except UnreadableImage as err:  # broken since the check at the start (streaming)
                raise UnreadableImage(f"{err}; the run keeps its last checkpoint: once the file "
                                      f"is readable, continue with: {resume_command()}") from None
        finally:
            if joined:
                import torch.distributed
                torch.distributed.destroy_process_group()
        return 0

    def interrupted(console) -> None:
        if "trainer" not in state:
            console.print("interrupted before the run started; nothing was written",
                          soft_wrap=True)
            return
        # One line however narrow the terminal or pipe: it is meant to be copied.
        console.print(f"interrupted; continue with: {resume_command()}", soft_wrap=True,
                      markup=False)

    def resume_command() -> str:
        epochs = [] if args.epochs is None else ["--epochs", str(args.epochs)]
        if args.from_run:  # used only while the run has no checkpoint of its own
            epochs += ["--from-run", args.from_run]
        again = " ".join(shlex.quote(a) for a in [args.recipe or "", *args.overrides, *epochs]
                         if a)
        return (f"lttrain {again} --out {shlex.quote(str(state['out']))} "
                f"--resume").replace("  ", " ")

    return run_command(body, interrupted)


if __name__ == "__main__":
    sys.exit(main())
