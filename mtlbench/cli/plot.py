"""``mtlbench plot``: figures from run records: the core's (training curves, per-step values)
and every registered method's (``Method.figures()``; OKD-MTL: the paper's Fig. 3 and Fig. 4)."""
from __future__ import annotations

import argparse

from . import add_flag


def register(sub) -> None:
    p = sub.add_parser(
        "plot", help="draw a figure from run records (`mtlbench plot --list` shows them)",
        description="Draw a figure from run records: curves (training loss and primary validation "
                    "metric per epoch), steps (per-step logged values matching --keys), and the "
                    "figures methods provide (okd: fig3, fig4); `--list` shows every one. "
                    "Needs matplotlib (pip install -e \".[plot]\").")
    p.add_argument("--kind", default="curves", metavar="NAME",
                   help="which figure (default curves); METHOD:NAME when two methods share a name")
    p.add_argument("--list", action="store_true", help="list the available figures and exit")
    p.add_argument("--runs", nargs="+", metavar="PATH",
                   help="run records (.json) or directories of them (default: the figure's own choice "
                        "among the records under --out, e.g. fig3 the newest pair of okd runs "
                        "differing only in OTW; curves and steps every run)")
    add_flag(p, "--out", "--results", default="results", metavar="DIR",
             help="results directory searched when --runs is not given (default results)")
    add_flag(p, "--save", "--out-dir", default="figures", metavar="DIR",
             help="the directory to write the figure to (default figures)")
    p.add_argument("--format", default="png", choices=["png", "pdf"], help="png (default) or pdf")
    p.add_argument("--smooth", type=float, metavar="W",
                   help="the figure's smoothing option: exponential weight in [0, 1)")
    p.add_argument("--keys", nargs="+", metavar="PATTERN",
                   help="the figure's keys option: shell patterns of logged keys (steps: e.g. 'weight/*')")
    p.add_argument("--option", dest="options", action="append", default=[], metavar="NAME=VALUE",
                   help="any option the figure declares (see --list), value as YAML (repeatable)")
    p.set_defaults(func=main)


def _options(args: argparse.Namespace) -> dict:
    from ..config import parse_set
    from ..errors import UserError

    opts: dict = {}
    for item in args.options:
        key, value = parse_set(item)
        opts[key] = value
    for flag, key, value in (("--smooth", "smoothing", args.smooth), ("--keys", "keys", args.keys)):
        if value is not None:
            if key in opts:
                raise UserError(f"{flag} and --option {key}=... both set the figure's {key}",
                                hint="give one of the two")
            opts[key] = value
    return opts


def list_figures() -> int:
    from ..plots import available_figures

    figures = available_figures()
    width = max(len(f.qualified) for f in figures)
    print("figures (mtlbench plot --kind NAME):")
    for f in figures:
        by = f"method {f.provider}" if f.provider else "core"
        print(f"  {f.qualified:<{width}}  [{by}] {f.spec.summary}")
        for name, text in f.spec.options.items():
            print(f"  {'':<{width}}    option {name}: {text}")
    return 0


def main(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..plots import default_selection, find_figure, load_runs, make_plot, pyplot

    if args.list:
        return list_figures()
    entry = find_figure(args.kind)
    options = _options(args)
    unknown = [k for k in options if k not in entry.spec.options]
    if unknown:  # before reading records: a flag that would do nothing is an error
        flags = {"smoothing": "--smooth", "keys": "--keys"}
        raise UserError(f"{', '.join(flags.get(k, f'--option {k}') for k in unknown)}: figure "
                        f"{entry.qualified!r} takes no such option, so it would do nothing",
                        hint=f"its options: {', '.join(entry.spec.options) or 'none'}")
    from . import check_output_path

    check_output_path(args.save, "--save", directory=True)  # before the records are read
    pyplot()  # a missing matplotlib is reported before records are read
    records = load_runs(args.runs, args.out)
    if not args.runs:
        records = default_selection(entry, records)
    path = make_plot(entry, records, args.save, args.format, **options)
    print(f"wrote {path} ({len(records)} run{'s' if len(records) != 1 else ''})")
    return 0
