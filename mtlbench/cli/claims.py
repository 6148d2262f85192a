"""``mtlbench claims``: the paper's claims, checked against the run records."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    from .table import add_table_flags

    p = sub.add_parser(
        "claims", help="check the paper's claims (OKD-MTL beats the baseline, ...) against the run records",
        description="Check each claim of the paper (mtlbench/tables/claims.yaml) against the run records: "
                    "the paired Δ (per seed) of the claimed row against each row it should beat, with its "
                    "95% confidence interval, the verdict (reproduced / not reproduced / inconclusive / "
                    "too few seeds), the paper's number beside it, and the commands of the missing runs.")
    p.add_argument("--table", metavar="N", help="only the claims about table N (default: every claim)")
    add_table_flags(p)
    p.add_argument("--claims", metavar="FILE", help="a claims YAML instead of the built-in one")
    p.add_argument("--paper", action=argparse.BooleanOptionalAction, default=True,
                   help="show the paper's number beside each comparison (default: yes)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..tables import parse_overrides, parse_seeds
    from ..tables.claims import build_claim_tables, check_claims, load_claims, render_claims
    from .table import require_results_dir

    seeds = parse_seeds(args.seeds)
    overrides = parse_overrides(args.overrides)
    claims = load_claims(args.claims)
    require_results_dir(args.out)
    tables = build_claim_tables(claims, table=args.table, dataset=args.dataset, preset=args.preset,
                                data_root=args.data_root, out=args.out, seeds=seeds, overrides=overrides)
    print(render_claims(check_claims(claims, tables), paper=args.paper), end="")
    return 0
