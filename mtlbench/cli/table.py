"""``mtlbench table``: one of the paper's Tables 1-5, rebuilt from run records."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_table_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``table`` and ``sweep``: what the table is built on."""
    p.add_argument("--seeds", metavar="LIST",
                   help="seeds, e.g. 0,1,2 or 0-2 (default: table: every seed found in the records, "
                        "or 0; sweep: 0)")
    p.add_argument("--dataset", help="build on this dataset instead of the table's own, e.g. synthetic "
                                     "(default: the table's own, or the preset's synthetic stand-in "
                                     "with --preset quick|smoke)")
    p.add_argument("--preset", help="the preset of the runs (default: paper on the table's own dataset, "
                                    "quick on any other)")
    p.add_argument("--data-root", metavar="DIR", help="data directory of a real dataset (goes into the commands)")
    p.add_argument("--delta-ref", metavar="ROW", default=None,
                   help="the row Δ is measured against: baseline (the paper's, default) or stl")
    p.add_argument("--out", default="results", metavar="DIR",
                   help="results directory holding the run records (DIR/runs)")


def register(sub) -> None:
    p = sub.add_parser(
        "table", help="rebuild one of the paper's Tables 1-5 from run records",
        description="Rebuild one of the paper's Tables 1-5 from the run records under --out: mean ± std "
                    "over seeds, Δ (Eq. 4) against the reference row, the paper's number beside each "
                    "cell, and the exact command of every missing run.")
    p.add_argument("--id", required=True, metavar="N", help="table number (1-5) or a table spec YAML")
    add_table_flags(p)
    p.add_argument("--format", default="rich", choices=["rich", "md", "csv", "latex"],
                   help="output format (default rich)")
    p.add_argument("--paper", action=argparse.BooleanOptionalAction, default=True,
                   help="show the paper's number beside each cell (default: yes)")
    p.add_argument("--save", metavar="FILE", help="also write the table to FILE (md, csv or latex)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..tables.build import build_table, choose_setting, load_spec, parse_seeds, render, render_rich

    spec = load_spec(args.id)
    setting = choose_setting(spec, dataset=args.dataset, preset=args.preset, data_root=args.data_root,
                             out=args.out)
    bt = build_table(spec, setting, seeds=parse_seeds(args.seeds), delta_ref=args.delta_ref)
    if args.format == "rich":
        render_rich(bt, paper=args.paper)
    else:
        print(render(bt, args.format, paper=args.paper), end="")
    if args.save:
        fmt = args.format if args.format != "rich" else "md"
        path = Path(args.save)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(bt, fmt, paper=args.paper))
        print(f"wrote {path}")
    return 0
