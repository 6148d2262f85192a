"""``mtlbench list [methods|architectures|backbones|datasets|presets]``: what is registered, with origins."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("list", help="list registered methods, architectures, backbones and datasets")
    p.add_argument("kind", nargs="?", default="all",
                   choices=["all", "methods", "architectures", "backbones", "datasets", "presets"])
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..config import available_presets
    from ..registry import ARCHITECTURES, BACKBONES, DATASETS, METHODS

    console = Console()
    regs = {"methods": METHODS, "architectures": ARCHITECTURES, "backbones": BACKBONES, "datasets": DATASETS}
    kinds = list(regs) if args.kind == "all" else [args.kind] if args.kind in regs else []
    for kind in kinds:
        table = Table(title=kind)
        table.add_column("name", style="bold")
        table.add_column("summary")
        table.add_column("origin")
        for e in regs[kind].entries():
            name = e.name + (f" ({', '.join(e.aliases)})" if e.aliases else "")
            table.add_row(name, e.summary, e.origin)
        console.print(table)
    if args.kind in ("all", "presets"):
        console.print("presets: " + ", ".join(available_presets()))
    return 0
