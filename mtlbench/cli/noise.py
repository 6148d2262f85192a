"""``mtlbench noise``: train the A/A pairs of a setting's reference method and print its noise floor."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    from .table import add_table_flags

    p = sub.add_parser(
        "noise", help="measure a setting's noise floor with A/A pairs of the reference method",
        description="Train A/A pairs of the Δ reference method (default: the table's, the equal-weight "
                    "baseline) in the setting a table is built on, and print the noise floor: the sd "
                    "over seeds of the paired Δ between two runs that share the initialisation and the "
                    "data order and differ only in the random stream after it (train.nuisance_seed). "
                    "Recorded runs are skipped, interrupted ones resumed; tables of the setting show "
                    "the floor under their rows.")
    p.add_argument("--table", default="1", metavar="N",
                   help="the table whose setting is measured (1-5 or a spec YAML; default 1)")
    add_table_flags(p)
    p.set_defaults(seeds="0-4")
    p.add_argument("--backbone", help="the backbone (default: the table's first)")
    p.add_argument("--method", help="the method of the pairs (default: the table's Δ reference row's)")
    p.add_argument("--nuisance", default="1,2", metavar="A,B",
                   help="the two nuisance seeds of every pair (default 1,2)")
    p.add_argument("--jobs", type=int, default=1, metavar="K",
                   help="run K runs at once as subprocesses (default 1: in this process)")
    p.add_argument("--device", help="train.device of the runs: auto (default) | cpu | cuda | cuda:N")
    p.add_argument("--dry-run", action="store_true", help="print the commands of the missing runs and exit")
    p.add_argument("--report", action="store_true", help="only print the floor from the records there are")
    p.add_argument("--quiet", action="store_true", help="no progress bars from the runs")
    p.set_defaults(func=main)


def _nuisance(text: str) -> tuple[int, int]:
    from ..errors import UserError

    parts = [x.strip() for x in text.split(",")]
    try:
        vals = tuple(int(x) for x in parts)
    except ValueError:
        vals = ()
    if len(vals) != 2 or min(vals) < 0 or vals[0] == vals[1]:
        raise UserError(f"--nuisance {text!r}: two different non-negative integers are needed",
                        hint="e.g. --nuisance 1,2")
    return vals  # type: ignore[return-value]


def main(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..noise import find_pairs, pair_jobs
    from ..records import RecordStore
    from ..sweep import job_argv, run_local, run_processes
    from ..tables import apply_overrides, choose_setting, load_spec, parse_overrides, parse_seeds
    from ..tables.aggregate import table_directions
    from ..trainer import check_out_dir

    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs} must be at least 1")
    nuisance = _nuisance(args.nuisance)
    seeds = parse_seeds(args.seeds)
    spec, _ = apply_overrides(load_spec(args.table, flag="--table"), parse_overrides(args.overrides))
    setting = choose_setting(spec, dataset=args.dataset, preset=args.preset, data_root=args.data_root,
                             out=args.out)
    backbone = args.backbone or spec.backbones[0]
    ref = spec.row(spec.paper_reference)
    method = args.method or ref.method
    overrides = ref.overrides if method == ref.method else {}
    if not args.report and (not args.dry_run or Path(args.out).exists()):
        check_out_dir(Path(args.out))

    def floor():
        store = RecordStore.scan(setting.out) if Path(setting.out).exists() else RecordStore()
        dirs = table_directions(spec, setting, [])
        return find_pairs(store, setting, method, backbone, seeds, nuisance, overrides, dirs)

    fl = floor()
    todo = [j for j in pair_jobs(setting, method, backbone, seeds, nuisance, overrides)
            if (j.seed, j.config.train.nuisance_seed if j.config else None) in set(fl.missing)]
    print(f"A/A pairs of {method} on {backbone}, {setting.describe()}, preset {setting.preset}, "
          f"seeds {','.join(map(str, seeds))}: {len(fl.records)} of {2 * len(seeds)} runs recorded, "
          f"{len(todo)} to run")
    if args.dry_run:
        for j in todo:
            print(j.command)
        return 0
    if todo and not args.report:
        if args.jobs > 1:
            res = run_processes(todo, {j.key: job_argv(j, device=args.device, quiet=True) for j in todo},
                                args.jobs, Path(setting.out), print)
        else:
            res = run_local(todo, setting.out, print, device=args.device, quiet=args.quiet)
        print(f"noise: {res.summary()}")
        fl = floor()
        failed = res.failed
    else:
        failed = []
    for s, v in fl.deltas.items():
        print(f"  seed {s}: Δ {v:+.2f} (nuisance {nuisance[1]} vs {nuisance[0]})")
    for s, err in fl.errors.items():
        print(f"  seed {s}: Δ undefined: {err}")
    print(fl.text())
    return 1 if failed else 0
