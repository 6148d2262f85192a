"""``mtlbench pretrain``: build a pretrained encoder from a recipe (cached; see :mod:`mtlbench.pretrain`)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain an encoder on a generated corpus (cached, with a record)",
                       description="Build the pretrained encoder of a recipe (mtlbench/pretraining/NAME.yaml) "
                                   "once; runs use it with --set backbone.pretraining=NAME.")
    p.add_argument("--recipe", help="the recipe's name")
    p.add_argument("--list", action="store_true", help="list the recipes and whether each is built here")
    p.add_argument("--out", default="results", help="results directory: the record is copied to OUT/pretrained")
    p.add_argument("--force", action="store_true", help="build again even if the artefact exists")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..pretrain import _log_stderr, artefact_dir, build, read_artefact, recipe_names

    if args.list:
        for name in recipe_names():
            found = read_artefact(name)
            print(f"{name}: {'built, ' + str(found[0]) if found else 'not built (' + str(artefact_dir(name)) + ')'}")
        return 0
    if not args.recipe:
        raise UserError("mtlbench pretrain needs --recipe NAME (or --list)",
                        hint=f"recipes: {', '.join(recipe_names())}")
    path, record = build(args.recipe, out=args.out, force=args.force, log=None if args.quiet else _log_stderr)
    print(f"{args.recipe}: {path} (key {record['key']}, sha256 {record['sha256'][:12]}, "
          f"{record['seconds']:.0f} s to build)")
    return 0
