"""``mtlbench sweep``: run every missing run of a table, locally, on Ray or on SLURM."""
from __future__ import annotations

import argparse
from pathlib import Path
import shlex


def register(sub) -> None:
    from .table import add_delta_ref_flag, add_table_flags

    p = sub.add_parser(
        "sweep", help="run every missing run of a table (locally, on a Ray cluster or on SLURM)",
        description="Run every missing run of one of the paper's tables, dependencies first (stl before "
                    "kd_mtl and okd with pretrained teachers), skipping recorded runs and resuming "
                    "interrupted ones. An unreadable record of a planned run is moved aside to "
                    "<name>.corrupt-<time> and the run is trained again.")
    p.add_argument("--table", required=True, metavar="N", help="table number (1-5) or a table spec YAML")
    add_table_flags(p)
    add_delta_ref_flag(p)
    p.set_defaults(seeds="0")
    p.add_argument("--executor", default="local", choices=["local", "ray", "slurm"],
                   help="local (default): this machine; ray: Ray tasks (pip install -e \".[ray]\"); "
                        "slurm: submitit job arrays (pip install -e \".[slurm]\")")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--jobs", type=int, default=1, metavar="K",
                   help="local executor: run K runs at once as subprocesses (default 1: in this process)")
    p.add_argument("--cpus-per-run", type=float, default=1.0, metavar="N", help="Ray: CPUs per run (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=None, metavar="N",
                   help="Ray: GPUs per run (default: 1 when the cluster has GPUs, else 0)")
    g = p.add_argument_group("SLURM (--executor slurm; each job one run, requeued and resumed when "
                             "preempted or timed out)")
    g.add_argument("--slurm-partition", metavar="NAME", help="partition (default: the cluster's)")
    g.add_argument("--slurm-time", metavar="TIME",
                   help="time limit of each job: minutes, H:MM:SS or D-HH:MM:SS (default 4:00:00); a run "
                        "longer than that requeues and resumes from its checkpoint")
    g.add_argument("--slurm-gpus", type=int, metavar="N", help="GPUs per job (default 1; 0: CPU jobs)")
    g.add_argument("--slurm-cpus", type=int, metavar="N", help="CPUs per task (default: the cluster's)")
    g.add_argument("--slurm-array-parallelism", type=int, metavar="N",
                   help="at most N jobs of an array at once (default: submitit's, 256)")
    g.add_argument("--slurm-requeues", type=int, metavar="N",
                   help="time limits a run may requeue after before it fails (default 3; preemptions do not count)")
    g.add_argument("--slurm-extra", action="append", metavar="KEY=VALUE",
                   help="another sbatch option, e.g. account=myproject or qos=high (repeatable)")
    g.add_argument("--slurm-folder", metavar="DIR",
                   help="submitit's job folder: scripts, pickles, logs (default <out>/logs/slurm; shared with the nodes)")
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
    slurm_opts = slurm_options(args)
    seeds = parse_seeds(args.seeds)
    from ..trainer import check_out_dir

    if not args.dry_run or Path(args.out).exists():
        check_out_dir(Path(args.out))  # a file, or a directory the runs could not write to
    spec, _ = apply_overrides(load_spec(args.table, flag="--table"), parse_overrides(args.overrides))
    setting = choose_setting(spec, dataset=args.dataset, preset=args.preset, data_root=args.data_root,
                             out=args.out)
    plan = plan_sweep(spec, setting, seeds, args.delta_ref)
    if args.dry_run:
        print(dry_run_text(plan, device=args.device, jobs=args.jobs or 1), end="")
        return 0
    res = run_sweep(plan, executor=args.executor, jobs=args.jobs, address=args.address, device=args.device,
                    cpus=args.cpus_per_run, gpus=args.gpus_per_run, quiet=args.quiet,
                    retrain_lost=args.retrain_lost, slurm=slurm_opts)
    print(f"sweep: {res.summary()}")
    if any(o.ref for o in res.outcomes):  # cluster jobs: every run, its state and job
        for o in res.outcomes:
            print(f"  {o.status}: {o.job.describe()}" + (f" (job {o.ref})" if o.ref else "")
                  + (f": {o.detail}" if o.status not in ("done", "exists") and o.detail else ""))
    else:
        for o in res.failed:
            print(f"  {o.status}: {o.job.describe()}: {o.detail}")
    if res.interrupted:
        return 130
    if not res.failed:
        extra = "".join(f" --override {shlex.quote(o)}" for o in args.overrides)
        print(f"next: mtlbench table --table {spec.id} --dataset {setting.dataset} --preset {setting.preset} "
              f"--seeds {','.join(map(str, plan.seeds))}"
              + (f" --out {setting.out}" if str(setting.out) != "results" else "") + extra)
    return 1 if res.failed else 0


SLURM_FLAGS = ("slurm_partition", "slurm_time", "slurm_gpus", "slurm_cpus", "slurm_array_parallelism",
               "slurm_requeues", "slurm_extra", "slurm_folder")


def slurm_options(args: argparse.Namespace):
    """The checked ``--slurm-*`` flags as :class:`mtlbench.slurm.SlurmOptions` (``None`` for the other
    executors, which refuse them); ``--executor slurm`` without submitit is refused here, before planning."""
    from ..errors import UserError

    given = [f"--{k.replace('_', '-')}" for k in SLURM_FLAGS if getattr(args, k, None) is not None]
    if args.executor != "slurm":
        if given:
            raise UserError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for the SLURM executor",
                            hint="add --executor slurm")
        return None
    from .. import slurm

    if args.jobs != 1:
        raise UserError("--jobs is for the local executor; SLURM runs as many jobs at once as the cluster "
                        "gives", hint="use --slurm-array-parallelism N to cap them")
    if args.address:
        raise UserError("--address is the address of a Ray cluster", hint="leave it out with --executor slurm")
    opts = slurm.SlurmOptions()
    if args.slurm_partition is not None:
        if not args.slurm_partition.strip() or any(c.isspace() for c in args.slurm_partition):
            raise UserError(f"--slurm-partition {args.slurm_partition!r} is not a partition name",
                            hint="see the cluster's partitions with sinfo -s")
        opts.partition = args.slurm_partition
    if args.slurm_time is not None:
        opts.time_min = slurm.parse_time(args.slurm_time)
    for flag, attr, low in (("--slurm-gpus", "gpus", 0), ("--slurm-cpus", "cpus", 1),
                            ("--slurm-array-parallelism", "array_parallelism", 1), ("--slurm-requeues", "requeues", 0)):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if value < low:
            raise UserError(f"{flag} {value} must be at least {low}")
        setattr(opts, attr, value)
    opts.extra = slurm.parse_extra(args.slurm_extra)
    if args.slurm_folder is not None:
        opts.folder = Path(args.slurm_folder)
    if not args.dry_run:
        slurm.require_submitit()
        slurm.cluster()
    return opts
