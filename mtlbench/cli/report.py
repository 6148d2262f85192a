"""``mtlbench report``: the study as a static, self-contained HTML site (:mod:`mtlbench.report`)."""
from __future__ import annotations

import argparse
import sys
import time


def register(sub) -> None:
    p = sub.add_parser(
        "report", help="write the study as a self-contained HTML site (tables, claims, figures, predictions)",
        description="Write a static site that opens from the file system with no network: index.html with "
                    "the study's settings, the records' provenance and the claims report with a forest plot "
                    "per claim; a page per table with the numbers `mtlbench table` prints, the training "
                    "curves and a prediction gallery (input, ground truth, input-blind reference, each run's "
                    "predictions and errors on a few val images); and the methods' figures. Needs matplotlib "
                    "(pip install -e \".[plot]\").")
    p.add_argument("--preset", help="the preset of the runs (default: each table's own; e.g. quick)")
    p.add_argument("--seeds", metavar="LIST", help="seeds, e.g. 0-4 or 0,1,2 (default: every seed found)")
    p.add_argument("--tables", metavar="LIST",
                   help="tables, e.g. 1,4,5,extended (default: every table with records in its setting)")
    p.add_argument("--out", default="results", metavar="DIR",
                   help="results directory holding the run records (DIR/runs; default results)")
    p.add_argument("--site", default="docs/report", metavar="DIR",
                   help="the folder to write the site to (default docs/report); an earlier report there is "
                        "replaced, any other non-empty folder is refused")
    p.add_argument("--dataset", help="build on this dataset instead of each table's own (as mtlbench table)")
    p.add_argument("--data-root", metavar="DIR", help="data directory of a real dataset")
    p.add_argument("--checkpoints", action="append", default=[], metavar="DIR",
                   help="a further results directory whose checkpoints/ may hold the runs' final.pt, for "
                        "predictions not yet cached under --out/predictions (repeatable)")
    p.add_argument("--images", metavar="LIST", default="0-3",
                   help="the val images of the galleries (default 0-3)")
    p.add_argument("--gallery-seed", type=int, metavar="S",
                   help="the seed whose runs the galleries and curves show (default: each table's first)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..report import build_report
    from ..tables import parse_seeds

    seeds = parse_seeds(args.seeds)
    images = parse_seeds(args.images, flag="--images")
    t0 = time.perf_counter()
    res = build_report(out=args.out, site=args.site, preset=args.preset, seeds=seeds, tables=args.tables,
                       dataset=args.dataset, data_root=args.data_root, checkpoints=args.checkpoints,
                       images=images, gallery_seed=args.gallery_seed,
                       log=lambda m: print(f"mtlbench: {m}", file=sys.stderr, flush=True))
    preds = ", ".join(f"{n} {k}" for k, n in sorted(res.predictions.items())) or "none"
    print(f"wrote {res.site}/index.html: {len(res.pages)} pages, tables {', '.join(res.tables)}, "
          f"{res.claims} claims; {res.files} files, {res.bytes / 1e6:.2f} MB; run predictions: {preds} "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0
