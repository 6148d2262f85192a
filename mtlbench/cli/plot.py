"""``mtlbench plot``: the paper's Fig. 3 and Fig. 4, and training curves, from run records."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "plot", help="draw Fig. 3, Fig. 4 or training curves from run records",
        description="fig3: smoothed MTL and STL task losses of okd runs, without and with OTW; "
                    "fig4: box plots of the AFD weights ω per layer and task over epochs; "
                    "curves: training loss and validation metric per epoch of any runs. "
                    "Needs matplotlib (pip install -e \".[plot]\").")
    p.add_argument("--kind", default="curves", choices=["fig3", "fig4", "curves"],
                   help="which figure (default curves)")
    p.add_argument("--runs", nargs="+", metavar="PATH",
                   help="run records (.json) or directories of them (default: fig3 the newest pair "
                        "of okd runs differing only in OTW, fig4 the newest run logging ω, default "
                        "settings first, curves every run under --results)")
    p.add_argument("--results", default="results", metavar="DIR",
                   help="results directory searched when --runs is not given (default results)")
    p.add_argument("--out-dir", default="figures", metavar="DIR", help="where to write (default figures)")
    p.add_argument("--format", default="png", choices=["png", "pdf"], help="png (default) or pdf")
    p.add_argument("--smooth", type=float, default=0.9, metavar="W",
                   help="fig3: exponential smoothing weight in [0, 1) (default 0.9)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..plots import _plt, default_selection, load_runs, make_plot

    _plt()  # a missing matplotlib is reported before records are read
    if not 0 <= args.smooth < 1:
        raise UserError(f"--smooth {args.smooth} must be in [0, 1)", hint="e.g. --smooth 0.9")
    records = load_runs(args.runs, args.results)
    if not args.runs:
        records = default_selection(args.kind, records)
    kw = {"smoothing": args.smooth} if args.kind == "fig3" else {}
    path = make_plot(args.kind, records, args.out_dir, args.format, **kw)
    print(f"wrote {path} ({len(records)} run{'s' if len(records) != 1 else ''})")
    return 0
