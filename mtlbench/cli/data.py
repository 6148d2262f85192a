"""``mtlbench data``: generate synthetic datasets and check data directories.

* ``mtlbench data synth --variant nyuv2 --out DIR``: write a procedural dataset
  in the MTAN layout (the same files the real loaders read).
* ``mtlbench data check --dataset nyuv2 --data-root DIR``: validate every file
  of a directory (shapes, dtypes, value ranges, NaN/inf); exit 0 when clean,
  2 with every problem listed otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from ..errors import UserError

_VARIANTS = ("nyuv2", "cityscapes")  # = synthetic.VARIANTS, without importing numpy here
_CHECKABLE = ("nyuv2", "cityscapes", "synthetic")


def register(sub) -> None:
    p = sub.add_parser("data", help="generate synthetic data; check a data directory",
                       description="Generate synthetic datasets and check MTAN-format data directories.")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    s = dsub.add_parser("synth", help="write a synthetic dataset in the MTAN layout",
                        description="Render procedural scenes (RGB, labels, depth, normals from one "
                                    "ray-cast geometry) into DIR/{train,val}/... as .npy files.")
    s.add_argument("--variant", choices=_VARIANTS, default="nyuv2",
                   help="nyuv2: rooms, 13 classes, depth, normals; cityscapes: streets, 7 classes, "
                        "disparity (default: nyuv2)")
    s.add_argument("--out", required=True, metavar="DIR", help="output directory (new or empty)")
    s.add_argument("--n-train", type=int, default=256, metavar="N", help="training images (default 256)")
    s.add_argument("--n-val", type=int, default=64, metavar="N", help="validation images (default 64)")
    s.add_argument("--height", type=int, default=96, metavar="H", help="image height (default 96)")
    s.add_argument("--width", type=int, default=128, metavar="W", help="image width (default 128)")
    s.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    s.set_defaults(func=synth)

    c = dsub.add_parser("check", help="validate a data directory file by file",
                        description="Check every file of an MTAN-format directory: layout, shapes, "
                                    "dtypes, value ranges and NaN/inf. Exit 0 when clean, 2 otherwise.")
    c.add_argument("--dataset", required=True, choices=_CHECKABLE, help="which format to check against")
    c.add_argument("--data-root", metavar="DIR", help="the data directory")
    c.add_argument("--variant", choices=_VARIANTS,
                   help="synthetic only: the variant, when DIR has no synthetic.json")
    c.add_argument("--quick", action="store_true", help="headers only (what the loaders check)")
    c.set_defaults(func=check)

    p.set_defaults(func=lambda args: _no_subcommand(p))


def _no_subcommand(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2


class _Progress:
    """A rich progress bar on a terminal, plain lines every ~10% otherwise."""

    def __init__(self, label: str, plain: bool = True):
        self.label = label
        self.plain = plain  # print plain lines when not on a terminal
        self.tty = sys.stdout.isatty()
        self._bar = None
        self._tasks: dict[str, int] = {}
        self._next_pct: dict[str, int] = {}

    def __enter__(self):
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn())
            self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, done: int, total: int, name: str = "") -> None:
        desc = f"{self.label} {name}".strip()
        if self._bar is not None:
            if desc not in self._tasks:
                self._tasks[desc] = self._bar.add_task(desc, total=total)
            self._bar.update(self._tasks[desc], completed=done)
            return
        if not self.plain:
            return
        pct = 100 * done // max(total, 1)
        if pct >= self._next_pct.get(desc, 10) or done == total:
            print(f"{desc}: {done}/{total}", flush=True)
            self._next_pct[desc] = (pct // 10 + 1) * 10


def synth(args: argparse.Namespace) -> int:
    from ..data import synthetic

    out = os.path.abspath(os.path.expanduser(args.out))
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UserError(f"--out {args.out} already exists and is not an empty directory",
                        hint="choose a new directory, or delete this one first")
    t0 = time.perf_counter()
    with _Progress(f"synthetic {args.variant}") as bar:
        synthetic.generate(args.variant, out, args.n_train, args.n_val, args.height, args.width, args.seed,
                           progress=bar.update)
    dt = time.perf_counter() - t0
    total = args.n_train + args.n_val
    print(f"wrote {total} images ({args.n_train} train + {args.n_val} val, {args.variant}, "
          f"{args.height}x{args.width}) to {out} in {dt:.1f} s: {total / dt:.0f} images/s")
    return 0


def check(args: argparse.Namespace) -> int:
    from ..data import mtan, synthetic

    if args.dataset == "synthetic":
        if not args.data_root:
            raise UserError("data check needs the directory to check: pass --data-root DIR",
                            hint="for synthetic data, a directory written by `mtlbench data synth --out DIR`")
        root = os.path.expanduser(args.data_root)
        if not os.path.isdir(root):
            raise UserError(f"--data-root {args.data_root} is not an existing directory",
                            hint="pass a directory written by `mtlbench data synth --out DIR`")
        manifest = synthetic.read_manifest(root)
        variant = (manifest or {}).get("variant") or args.variant
        if variant is None:
            raise UserError(f"{root} has no complete {synthetic.MANIFEST} (written last by `mtlbench data "
                            "synth`), so its variant is unknown",
                            hint="pass --variant nyuv2|cityscapes, or generate the data again")
        spec = mtan.NYUV2 if variant == "nyuv2" else mtan.CITYSCAPES
        remedy = "generate the data again with `mtlbench data synth`"
    else:
        spec = mtan.NYUV2 if args.dataset == "nyuv2" else mtan.CITYSCAPES
        root = mtan.require_root(args.data_root, spec)
        remedy = f"get the data again from {spec.source}"

    with _Progress(f"checking {args.dataset}", plain=False) as bar:
        problems = mtan.validate(root, spec, full=not args.quick,
                                 progress=lambda split, d, t: bar.update(d, t, split))
    if problems:
        for p in problems:
            print(p)
        n = len(problems)
        print(f"FAILED: {n} problem{'s' if n != 1 else ''} in {root} "
              f"({spec.name} layout: {{train,val}}/{{{', '.join(d[0] for d in spec.folders().values())}}}"
              f"/{{0..N-1}}.npy); fix the files listed, or {remedy}")
        return 2
    counts = [sum(1 for f in os.listdir(os.path.join(root, split, "image")) if f.endswith(".npy"))
              for split in mtan.SPLITS]
    print(f"OK: {counts[0]} train, {counts[1]} val images ({spec.name} layout, {root})")
    return 0
