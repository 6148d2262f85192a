"""The ``mtlbench`` command line.

One module per subcommand; each exposes ``register(subparsers)`` that adds its
parser and sets ``func``.  Heavy imports (torch, timm) happen inside the
subcommand, so ``mtlbench --help`` stays fast.  A :class:`~mtlbench.errors.UserError`
exits with code 2 and a one-paragraph message; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys

from ..errors import UserError

# subcommand -> module (``list`` lives in ``listing`` so it does not shadow the builtin)
SUBCOMMANDS = {"run": "run", "list": "listing", "data": "data", "table": "table",
               "sweep": "sweep", "plot": "plot", "claims": "claims", "noise": "noise",
               "pretrain": "pretrain", "report": "report"}


class _Renamed(argparse.Action):
    """An old spelling of a flag: stores into the new flag's ``dest`` and says what replaced it."""

    def __init__(self, option_strings, dest, *, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"mtlbench: note: {option_string} is now {self.new} (the old spelling goes in the next "
              "release)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_flag(p: argparse.ArgumentParser, new: str, *old: str, required: bool = False, **kwargs) -> None:
    """Add the flag ``new`` and, for one release, its old spellings ``old`` (hidden from --help).

    An old spelling sets the same value and prints a one-line note to stderr
    naming its replacement; giving the new and an old spelling together is a
    usage error (exit 2), as is giving neither when the flag is ``required``.
    """
    if not old:
        p.add_argument(new, required=required, **kwargs)
        return
    group = p.add_mutually_exclusive_group(required=required)
    action = group.add_argument(new, **kwargs)
    for o in old:
        group.add_argument(o, dest=action.dest, metavar=action.metavar, action=_Renamed, new=new,
                           default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="mtlbench",
        description="Benchmark harness for multi-task dense scene understanding (OKD-MTL and baselines).")
    parser.add_argument("--version", action="version", version=f"mtlbench {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for modname in SUBCOMMANDS.values():
        try:
            mod = importlib.import_module(f"{__name__}.{modname}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{modname}":
                continue  # subcommand not available in this build
            raise
        mod.register(sub)
    return parser



def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage; bad flags are user errors
        return int(exc.code or 0) if exc.code in (0, None) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = _handle_sigterm()
    try:
        rc = args.func(args)
        return int(rc or 0)
    except UserError as exc:
        if debug:
            raise
        print(f"mtlbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated):
            print("mtlbench: terminated (SIGTERM); an interrupted run continues with --resume", file=sys.stderr)
            return 128 + signal.SIGTERM
        print("mtlbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `mtlbench ... | head`: the reader left, nothing to report
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, a cluster scheduler, a SLURM preemption), raised where the process is,
    so it unwinds exactly as Ctrl-C does: checkpoints kept, temporary files and locks removed."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _handle_sigterm():
    """Route SIGTERM to :class:`Terminated` while a command runs (main thread only: elsewhere, e.g.
    mtlbench called from a worker thread, the process's own handling stays). Returns the handler
    to restore, or None."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except (ValueError, OSError):
        return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
