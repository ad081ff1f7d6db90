"""``lttrain``: train a recipe from the command line.

Usage::

    lttrain configs/quickstart.yaml
    lttrain configs/cifar10_lt/ce.yaml --epochs 30 loss.name=focal --out runs/focal
    lttrain configs/cifar10_lt/ce.yaml --epochs 30 loss.name=focal --out runs/focal --resume
    lttrain --list

A mistake in the recipe or the data stops the run before training with one line that names the
key or the file; nothing already in the run directory is touched.
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

from .errors import LTError

# Stop requests that end a run resumably: Ctrl-C, kill / a scheduler's pre-emption, a closed
# terminal.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))


def default_run_dir(recipe_path: str, resume: bool) -> Path:
    """``runs/<recipe name>/<time>``; with ``--resume``, the newest unfinished one."""
    root = Path("runs") / Path(recipe_path).stem
    if resume:
        unfinished = sorted(p for p in root.glob("*")
                            if (p / "checkpoint.pt").exists() and not (p / "results.json").exists())
        if not unfinished:
            raise LTError(f"--resume: no unfinished run under {root}; name it with --out")
        return unfinished[-1]
    return root / time.strftime("%Y%m%d-%H%M%S")


def list_registries(console) -> None:
    import lttoolbox
    for title, registry in (("data", lttoolbox.DATASETS), ("model", lttoolbox.MODELS),
                            ("sampler", lttoolbox.SAMPLERS), ("loss", lttoolbox.LOSSES),
                            ("augment", lttoolbox.AUGMENTS), ("generator", lttoolbox.GENERATORS)):
        console.print(f"[bold]{title}[/bold]: {', '.join(registry.names()) or '(none yet)'}")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def stop_signals_interrupt():
    """Within the block, SIGINT, SIGTERM and SIGHUP all raise ``KeyboardInterrupt``.

    A program started in the background by a non-interactive shell (``nohup lttrain ... &``, or a
    leaderboard launched that way) inherits SIGINT *ignored*, and Python then installs no handler,
    so an interrupt would be lost; SIGTERM (``kill``, a scheduler's pre-emption) and SIGHUP (the
    terminal closed) would end the run silently. All take the same path as Ctrl-C: the last
    complete checkpoint stays and the run continues with ``--resume``. The previous handlers come
    back on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT
                      else _raise_interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    with stop_signals_interrupt():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    from rich.console import Console  # after the stop handlers: a Ctrl-C here ends quietly
    from rich.text import Text

    parser = argparse.ArgumentParser(
        prog="lttrain", description="Train a long-tailed recognition recipe.",
        epilog="Overrides are key=value pairs with YAML values, e.g. train.epochs=5 loss.gamma=1.0")
    parser.add_argument("recipe", nargs="?", help="recipe YAML file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    parser.add_argument("--epochs", type=int, metavar="N",
                        help="shorten or lengthen the recipe to N epochs, moving every "
                             "epoch-valued key (milestones, warm-up, DRW/DRS switches) in "
                             "proportion, as the leaderboard's quick protocol does")
    parser.add_argument("--out", help="run directory (default: runs/<recipe>/<time>)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--quiet", action="store_true", help="print only the final results line")
    parser.add_argument("--list", action="store_true", help="list every registered component")
    args = parser.parse_args(argv)
    console = Console(stderr=True, highlight=False)
    if args.list:
        list_registries(Console(highlight=False))
        return 0
    if not args.recipe:
        parser.error("a recipe file is required (try configs/quickstart.yaml)")
    out = trainer = None
    try:
        from .engine import Trainer
        from .recipe import load_recipe, resolve, scale_epochs

        recipe = load_recipe(args.recipe, args.overrides)
        if args.epochs is not None:
            recipe = resolve(scale_epochs(recipe, args.epochs))
        out = Path(args.out) if args.out else default_run_dir(args.recipe, args.resume)
        trainer = Trainer(recipe, out, resume=args.resume, quiet=args.quiet)
        trainer.run()
    except LTError as err:
        console.print(Text.assemble(("error:", "bold red"), f" {err}"), soft_wrap=True)
        return 2
    except FloatingPointError as err:  # a diverged run: say so in one line, keep the checkpoint
        console.print(Text.assemble(("error:", "bold red"), f" {err}"), soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        if trainer is None:
            console.print("interrupted before the run started; nothing was written",
                          soft_wrap=True)
        else:
            epochs = [] if args.epochs is None else ["--epochs", str(args.epochs)]
            again = " ".join(shlex.quote(a) for a in [args.recipe, *args.overrides, *epochs])
            # One line however narrow the terminal or pipe: it is meant to be copied.
            console.print(f"interrupted; continue with: lttrain {again} --out "
                          f"{shlex.quote(str(out))} --resume", soft_wrap=True, markup=False)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
