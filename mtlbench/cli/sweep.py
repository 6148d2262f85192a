"""``mtlbench sweep``: run every missing run of a table, locally or on Ray."""
from __future__ import annotations

import argparse
from pathlib import Path
import shlex


def register(sub) -> None:
    from .table import add_delta_ref_flag, add_table_flags

    p = sub.add_parser(
        "sweep", help="run every missing run of a table (locally or on a Ray cluster)",
        description="Run every missing run of one of the paper's tables, dependencies first (stl before "
                    "kd_mtl and okd with pretrained teachers), skipping recorded runs and resuming "
                    "interrupted ones. An unreadable record of a planned run is moved aside to "
                    "<name>.corrupt-<time> and the run is trained again.")
    p.add_argument("--table", required=True, metavar="N", help="table number (1-5) or a table spec YAML")
    add_table_flags(p)
    add_delta_ref_flag(p)
    p.set_defaults(seeds="0")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local (default): this machine; ray: Ray tasks (pip install -e \".[ray]\")")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--jobs", type=int, default=1, metavar="K",
                   help="local executor: run K runs at once as subprocesses (default 1: in this process)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, metavar="N", help="Ray: CPUs per run (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=None, metavar="N",
                   help="Ray: GPUs per run (default: 1 when the cluster has GPUs, else 0)")
    p.add_argument("--device", help="train.device of the runs: auto (default) | cpu | cuda | cuda:N")
    p.add_argument("--dry-run", action="store_true", help="print the ordered commands and exit")
    p.add_argument("--retrain-lost", action="store_true",
                   help="train again the recorded runs whose checkpoints are gone but that runs of this "
                        "sweep load (e.g. stl for kd_mtl); their old records are kept, renamed")
    p.add_argument("--quiet", action="store_true", help="no progress bars from the runs")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..sweep import dry_run_text, plan_sweep, run_sweep
    from ..tables import apply_overrides, choose_setting, load_spec, parse_overrides, parse_seeds

    if args.executor != "ray" and args.address:
        raise UserError("--address is the address of a Ray cluster", hint="add --executor ray")
    if args.executor == "ray" and args.jobs != 1:
        raise UserError("--jobs is for the local executor; Ray runs as many runs at once as the cluster's "
                        "resources allow", hint="use --cpus-per-run / --gpus-per-run instead")
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs} must be at least 1")
    seeds = parse_seeds(args.seeds)
    from ..trainer import check_out_dir

    if not args.dry_run or Path(args.out).exists():
        check_out_dir(Path(args.out))  # a file, or a directory the runs could not write to
    spec, _ = apply_overrides(load_spec(args.table, flag="--table"), parse_overrides(args.overrides))
    setting = choose_setting(spec, dataset=args.dataset, preset=args.preset, data_root=args.data_root,
                             out=args.out)
    plan = plan_sweep(spec, setting, seeds, args.delta_ref)
    if args.dry_run:
        print(dry_run_text(plan, device=args.device), end="")
        return 0
    res = run_sweep(plan, executor=args.executor, jobs=args.jobs, address=args.address, device=args.device,
                    cpus=args.cpus_per_run, gpus=args.gpus_per_run, quiet=args.quiet,
                    retrain_lost=args.retrain_lost)
    print(f"sweep: {res.summary()}")
    for o in res.failed:
        print(f"  {o.status}: {o.job.describe()}: {o.detail}")
    if not res.failed:
        extra = "".join(f" --override {shlex.quote(o)}" for o in args.overrides)
        print(f"next: mtlbench table --table {spec.id} --dataset {setting.dataset} --preset {setting.preset} "
              f"--seeds {','.join(map(str, plan.seeds))}"
              + (f" --out {setting.out}" if str(setting.out) != "results" else "") + extra)
    return 1 if res.failed else 0
