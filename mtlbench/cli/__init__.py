"""The ``mtlbench`` command line.

One module per subcommand; each exposes ``register(subparsers)`` that adds its
parser and sets ``func``.  Heavy imports (torch, timm) happen inside the
subcommand, so ``mtlbench --help`` stays fast.  A :class:`~mtlbench.errors.UserError`
exits with code 2 and a one-paragraph message; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import signal
import sys
from pathlib import Path

from ..errors import UserError

# subcommand -> module (``list`` lives in ``listing`` so it does not shadow the builtin)
SUBCOMMANDS = {"run": "run", "list": "listing", "data": "data", "table": "table",
               "sweep": "sweep", "plot": "plot", "claims": "claims", "noise": "noise",
               "pretrain": "pretrain", "report": "report", "status": "status"}


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


def check_output_path(path, flag: str, *, directory: bool):
    """``path`` (a Path) if an output can be written there; otherwise a UserError naming ``flag`` and
    the path, before any work is done.  ``directory``: the output is a directory (created if
    missing, so it must not be a file); else a file (overwritten if it exists, so it must not be
    a directory or a special file).  Missing folders are fine when the nearest existing one is a
    directory a file can be created in (tried, not guessed from permission bits)."""
    import os
    from pathlib import Path

    p = Path(path).expanduser()
    fix = (f"pass {flag} a directory you can write to (it is created if missing)" if directory
           else f"pass {flag} a file path you can write to (missing folders are created)")
    if p.exists():
        if directory and not p.is_dir():
            raise UserError(f"{flag} {path}: {p} exists and is not a directory", hint=fix)
        if not directory and not p.is_file():
            what = "a directory" if p.is_dir() else "not a regular file"
            raise UserError(f"{flag} {path}: {p} is {what}; expected a file",
                            hint=f"pass a file name, e.g. {flag} {p / 'table.md'}" if p.is_dir() else fix)
        if not directory:
            if not os.access(p, os.W_OK):
                raise UserError(f"{flag} {path}: {p} is not writable", hint=fix)
            return p
        _probe(p, flag, path, fix)
        return p
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, so {p} cannot be created under it", hint=fix)
    _probe(parent, flag, path, fix)
    return p


def _probe(folder, flag: str, path, fix: str) -> None:
    """Create and remove a file in ``folder``: a UserError when that fails."""
    import os
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".mtlbench-probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot write in {folder} ({exc.strerror or exc})", hint=fix) from None


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
    args.argv = argv  # the command line as given (`run --nproc` starts its processes with it)
    previous = _handle_sigterm()
    try:
        rc = args.func(args)
        return int(rc or 0)
    except UserError as exc:
        if debug:
            raise
        import os

        # a data-parallel run: every process reports (an error may be one process's alone)
        rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"
        where = "" if rank == "0" else f" (process {rank})"
        print(f"mtlbench: error{where}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated):
            print("mtlbench: terminated (SIGTERM); an interrupted run continues with --resume", file=sys.stderr)
            return 128 + signal.SIGTERM
        print("mtlbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `mtlbench ... | head`: the reader left, nothing to report
        return 0
    except OSError as exc:
        if debug or exc.errno not in _NO_ROOM:
            raise
        print(f"mtlbench: error: {_no_room_message(exc)}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _no_room_message(exc: OSError) -> str:
    """One line for a write the file system refused: which file, why, what to do."""
    name = exc.filename
    if name:
        p = Path(str(name))
        m = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", p.name)  # a temporary file of records._atomic_target
        name = str(p.with_name(m.group(1))) if m else str(p)
    where = f"could not write {name}" if name else "a write failed"
    needed = getattr(exc, "needed_bytes", None)
    if name and needed:
        import shutil

        try:
            free = shutil.disk_usage(Path(name).parent).free
            where += f" (it needs at least {needed / 2**20:.1f} MiB; {free / 2**20:.1f} MiB are free there)"
        except OSError:
            where += f" (it needs at least {needed / 2**20:.1f} MiB)"
    if exc.errno == errno.EROFS:
        hint = "the file system is read-only; choose another folder with --out"
    else:
        hint = ("free some space (or raise the quota) on that file system, or choose another "
                "folder with --out")
    return (f"{where}: {exc.strerror or os.strerror(exc.errno)}; {hint}. Files written before are "
            "intact; an interrupted run continues from its last checkpoint with --resume")


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
