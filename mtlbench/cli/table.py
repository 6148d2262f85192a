"""``mtlbench table``: one of the paper's Tables 1-5, rebuilt from run records."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import add_flag


def add_table_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``table``, ``sweep`` and ``claims``: what the table is built on."""
    p.add_argument("--seeds", metavar="LIST",
                   help="seeds, e.g. 0,1,2 or 0-2 (default: table, claims: every seed found in the "
                        "records, or 0; sweep: 0)")
    p.add_argument("--dataset", help="build on this dataset instead of the table's own, e.g. synthetic "
                                     "(default: the table's own, or the preset's stand-in dataset "
                                     "with --preset quick|smoke)")
    p.add_argument("--preset", help="the preset of the runs (default: paper on the table's own dataset, "
                                    "quick on any other)")
    p.add_argument("--data-root", metavar="DIR", help="data directory of a real dataset (goes into the commands)")
    p.add_argument("--override", dest="overrides", action="append", default=[], metavar="METHOD.OPTION=VALUE",
                   help="set a method option on every row of that method that does not set it itself, "
                        "e.g. --override okd.profile=script (repeatable)")
    p.add_argument("--out", default="results", metavar="DIR",
                   help="results directory holding the run records (DIR/runs; default results)")


def add_delta_ref_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--delta-ref", metavar="ROW", default=None,
                   help="the row Δ is measured against: baseline (the paper's, default) or stl")


def require_results_dir(out: str) -> None:
    """``--out`` of a command that reads records must exist (a typo would show an empty table)."""
    from ..errors import UserError

    p = Path(out)
    if not p.is_dir():
        raise UserError(f"--out {out}: no such directory, so there are no run records to read",
                        hint="pass the results directory the runs wrote to (default: results), "
                             "or produce the runs first with `mtlbench sweep`")


def register(sub) -> None:
    p = sub.add_parser(
        "table", help="rebuild one of the paper's Tables 1-5 from run records",
        description="Rebuild one of the paper's Tables 1-5 from the run records under --out: mean ± std "
                    "over seeds, Δ (Eq. 4) paired per seed against the reference row with its 95% "
                    "confidence interval and a verdict, the paper's number beside each cell, and the exact "
                    "command of every missing run. --compare A,B prints the paired Δ of two rows instead.")
    add_flag(p, "--table", "--id", required=True, metavar="N", help="table number (1-5) or a table spec YAML")
    add_table_flags(p)
    add_delta_ref_flag(p)
    p.add_argument("--format", default="rich", choices=["rich", "md", "csv", "latex", "html"],
                   help="output format (default rich; html: the fragment `mtlbench report` puts on a page)")
    p.add_argument("--paper", action=argparse.BooleanOptionalAction, default=True,
                   help="show the paper's number beside each cell (default: yes)")
    p.add_argument("--save", metavar="FILE",
                   help="also write the table to FILE (md, csv, latex or html; missing folders are created)")
    p.add_argument("--compare", action="append", default=[], metavar="A,B",
                   help="print the paired Δ of row A against row B (row keys, e.g. okd,baseline): per seed, "
                        "mean ± 95%% CI and the verdict, instead of the table (repeatable)")
    p.set_defaults(func=main)


def parse_pair(text: str, flag: str = "--compare") -> tuple[str, str]:
    from ..errors import UserError

    parts = [x.strip() for x in str(text).split(",")]
    if len(parts) != 2 or not all(parts):
        raise UserError(f"{flag} {text!r} must name two rows, A,B", hint=f"e.g. {flag} okd,baseline")
    return parts[0], parts[1]


def main(args: argparse.Namespace) -> int:
    from ..tables import (apply_overrides, build_table, choose_setting, load_spec, parse_overrides,
                          parse_seeds, render, render_comparisons, render_rich)

    from . import check_output_path

    seeds = parse_seeds(args.seeds)
    pairs = [parse_pair(c) for c in args.compare]
    if args.save:  # before the table is built: a path that cannot be written is said at once
        check_output_path(args.save, "--save", directory=False)
    spec, notes = apply_overrides(load_spec(args.table, flag="--table"), parse_overrides(args.overrides))
    require_results_dir(args.out)
    setting = choose_setting(spec, dataset=args.dataset, preset=args.preset, data_root=args.data_root,
                             out=args.out)
    bt = build_table(spec, setting, seeds=seeds, delta_ref=args.delta_ref)
    bt.notes[:0] = notes
    if pairs:
        comps = []
        for a, b in pairs:
            ra, rb = bt.row(a), bt.row(b)
            comps += [bt.compare(ra, rb, bb) for bb in spec.backbones
                      if bb not in ra.unsupported and bb not in rb.unsupported]
        s = setting
        print(f"Table {spec.id} on {s.describe()}, preset {s.preset}, seeds {', '.join(map(str, bt.seeds))} "
              f"(records from {s.out})")
        print(render_comparisons(comps, multi_backbone=len(spec.backbones) > 1), end="")
        for bad in bt.problems:
            print(f"note: unreadable record {bad.describe()}")
        return 0
    if args.format == "rich":
        render_rich(bt, paper=args.paper)
    else:
        print(render(bt, args.format, paper=args.paper), end="")
    if args.save:
        fmt = args.format if args.format != "rich" else "md"
        path = Path(args.save)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render(bt, fmt, paper=args.paper))
        except OSError as exc:
            from ..errors import UserError

            raise UserError(f"--save {args.save}: cannot write the table: {exc.strerror or exc}",
                            hint="pass --save a file path you can write to") from None
        print(f"wrote {path}")
    return 0
