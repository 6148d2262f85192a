"""``mtlbench status``: the runs of a results directory that are training now or were interrupted."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="the runs training now and the interrupted ones, with their epochs",
                       description="List the runs of a results directory that are training now (their lock "
                                   "is held: pid, host, start) or were interrupted (a checkpoint and no "
                                   "record: `--resume` or the next sweep continues them), each with the "
                                   "epoch its last checkpoint reached. Reads only: it takes no lock.")
    p.add_argument("--out", default="results", help="results directory (default results)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import UserError
    from ..status import report

    out = Path(args.out)
    if not out.is_dir():
        raise UserError(f"--out {args.out}: {'not a directory' if out.exists() else 'no such directory'}",
                        hint="pass the results directory the runs write to (default results)")
    print(report(out))
    return 0
