"""``mtlbench data``: generate datasets and check data directories, for any registered dataset.

* ``mtlbench data synth --dataset synthetic --data-root DIR --variant nyuv2``: write a
  generated dataset (datasets whose plugin implements the ``synth`` hook);
* ``mtlbench data check --dataset nyuv2 --data-root DIR``: validate every file
  of a directory (datasets implementing the ``check`` hook: shapes, dtypes,
  value ranges, NaN/inf); exit 0 when clean, 2 with every problem listed
  otherwise.

Both go through :data:`mtlbench.registry.DATASETS` and the hooks of
:class:`mtlbench.data.base.DatasetPlugin`; options a dataset takes are config
keys (``--set KEY=VALUE``; ``--variant``, ``--n-train`` ... are shorthands).
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import UserError
from . import add_flag

#: shorthand flags -> the config key they set (passed to the dataset's hook, which decides)
_SHORTHANDS = {"variant": "variant", "n_train": "n_train", "n_val": "n_val", "height": "height",
               "width": "width", "seed": "seed"}


def register(sub) -> None:
    p = sub.add_parser("data", help="generate a dataset; check a data directory",
                       description="Generate datasets and check data directories (any registered "
                                   "dataset whose plugin implements the synth / check hook).")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    s = dsub.add_parser("synth", help="write a generated dataset (e.g. synthetic scenes in the MTAN layout)",
                        description="Write a generated dataset into DIR. The built-in `synthetic` "
                                    "renders procedural scenes (RGB, labels, depth, normals from one "
                                    "ray-cast geometry) into DIR/{train,val}/... as .npy files.")
    s.add_argument("--dataset", metavar="NAME",
                   help="which dataset to generate (default: the only registered one that can be)")
    add_flag(s, "--data-root", "--out", required=True, metavar="DIR",
             help="the data directory to write (new or empty), as `run --data-root` then reads it")
    s.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a generation option (a key of the dataset's config), e.g. --set variant=cityscapes")
    s.add_argument("--variant", help="shorthand for --set variant=V (synthetic: nyuv2 | cityscapes)")
    s.add_argument("--n-train", type=int, metavar="N", help="shorthand for --set n_train=N (training images)")
    s.add_argument("--n-val", type=int, metavar="N", help="shorthand for --set n_val=N (validation images)")
    s.add_argument("--height", type=int, metavar="H", help="shorthand for --set height=H")
    s.add_argument("--width", type=int, metavar="W", help="shorthand for --set width=W")
    s.add_argument("--seed", type=int, help="shorthand for --set seed=S (generation seed)")
    s.set_defaults(func=synth)

    c = dsub.add_parser("check", help="validate a data directory file by file",
                        description="Check every file of a data directory against its dataset's format: "
                                    "layout, shapes, dtypes, value ranges and NaN/inf. Exit 0 when clean, "
                                    "2 otherwise.")
    c.add_argument("--dataset", required=True, metavar="NAME",
                   help="which dataset's format to check against (`mtlbench list datasets`)")
    c.add_argument("--data-root", metavar="DIR", help="the data directory")
    c.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a check option, e.g. --set variant=nyuv2 for synthetic data without its manifest")
    c.add_argument("--variant", help="shorthand for --set variant=V (synthetic, when DIR has no synthetic.json)")
    c.add_argument("--quick", action="store_true", help="structure and headers only (what the loaders check)")
    c.set_defaults(func=check)

    p.set_defaults(func=lambda args: _no_subcommand(p))


def _no_subcommand(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2


def _options(args: argparse.Namespace) -> dict:
    """``--set`` items and the shorthand flags given, as ``{config key: value}``."""
    from ..config import parse_set

    opts = dict(parse_set(item) for item in args.sets)
    for dest, key in _SHORTHANDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            if key in opts and opts[key] != value:
                raise UserError(f"--{dest.replace('_', '-')} {value} contradicts --set {key}={opts[key]}",
                                hint="give one of the two")
            opts[key] = value
    return opts


def _synth_dataset(name: str | None) -> str:
    if name:
        return name
    from ..data.base import implementing

    able = implementing("synth")
    if len(able) == 1:
        return able[0]
    raise UserError("data synth needs --dataset NAME: " + (
        f"several registered datasets can be generated ({', '.join(able)})" if able
        else "no registered dataset implements the synth hook"))


def synth(args: argparse.Namespace) -> int:
    from ..progress import Progress
    from ..registry import DATASETS

    name = DATASETS.canonical(_synth_dataset(args.dataset))
    cls = DATASETS.get(name)
    options = _options(args)
    out = os.path.abspath(os.path.expanduser(args.data_root))
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UserError(f"--data-root {args.data_root} already exists and is not an empty directory",
                        hint="choose a new directory, or delete this one first")
    label = f"{name}" + (f" {options['variant']}" if "variant" in options else "")
    with Progress("auto", label=f"writing {label}") as bar:
        summary = cls.synth(out, options, progress=bar.update)
    print(summary)
    return 0


def check(args: argparse.Namespace) -> int:
    from ..progress import Progress
    from ..registry import DATASETS

    name = DATASETS.canonical(args.dataset)
    cls = DATASETS.get(name)
    with Progress("auto", label=f"checking {name}", plain_updates=False) as bar:
        report = cls.check(args.data_root, full=not args.quick, progress=bar.update, options=_options(args))
    if report.problems:
        for p in report.problems:
            print(f"{p}" + ("" if p.fatal else " [tolerated in training]"))
        n = len(report.problems)
        layout = f" ({report.layout})" if report.layout else ""
        remedy = f", or {report.remedy}" if report.remedy else ""
        print(f"FAILED: {n} problem{'s' if n != 1 else ''} in {report.root}{layout}; "
              f"fix the files listed{remedy}")
        return 2
    counts = ", ".join(f"{v} {k}" for k, v in report.counts.items())
    print(f"OK: {counts} images ({report.layout or name}, {report.root})" if counts
          else f"OK: {report.root} ({report.layout or name})")
    return 0
