"""``mtlbench run``: train one (method, backbone, dataset, seed) and keep its record."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by commands that resolve a run config (run, sweep)."""
    p.add_argument("--dataset", help="dataset name (default: the preset's; `mtlbench list datasets`)")
    p.add_argument("--data-root", metavar="DIR", help="data directory of a real dataset")
    p.add_argument("--preset", help="quick (default) | smoke | standard | paper | script (mtlbench/presets)")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--batch-size", type=int, help="batch size")
    p.add_argument("--device", help="auto (default) | cpu | cuda | cuda:N")
    p.add_argument("--config", metavar="FILE", help="experiment YAML holding only deltas")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set method.T=0.05 (repeatable)")
    p.add_argument("--out", default="results", metavar="DIR",
                   help="results directory (records in DIR/runs, checkpoints in DIR/checkpoints)")


def config_flags(args: argparse.Namespace) -> list[tuple[str, object, str]]:
    return [
        ("method.name", getattr(args, "method", None), "--method"),
        ("backbone.name", getattr(args, "backbone", None), "--backbone"),
        ("dataset.name", args.dataset, "--dataset"),
        ("dataset.root", args.data_root, "--data-root"),
        ("seed", getattr(args, "seed", None), "--seed"),
        ("train.epochs", args.epochs, "--epochs"),
        ("train.batch_size", args.batch_size, "--batch-size"),
        ("train.device", args.device, "--device"),
    ]


def parse_run_argv(argv: list[str]):
    """Parse ``run ...`` arguments exactly as ``mtlbench run`` does; return (args, resolved config)."""
    from ..config import resolve
    from . import build_parser

    args = build_parser().parse_args(list(argv))
    cfg = resolve(preset=args.preset, config_file=args.config, flags=config_flags(args), sets=args.sets)
    return args, cfg


def register(sub) -> None:
    p = sub.add_parser("run", help="train one run and write its result record",
                       description="Train one (method, backbone, dataset, seed) run.")
    p.add_argument("--method", help="method name (`mtlbench list methods`)")
    p.add_argument("--backbone", help="backbone name (`mtlbench list backbones`)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    add_config_flags(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    p.add_argument("--force", action="store_true", help="run again even if a record exists")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="data parallel: train over N processes on this machine (as `torchrun "
                        "--nproc-per-node N -m mtlbench run ...`; the batch size is the global batch)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..config import resolve

    from ..data.base import check_data_root
    from ..errors import UserError
    from ..registry import DATASETS

    if args.resume and args.force:  # --force would win and overwrite the checkpoint --resume means to keep
        raise UserError("--resume and --force contradict each other: --resume continues an interrupted run "
                        "from its checkpoint (last.pt), --force starts the run over, replacing its "
                        "checkpoint and any record",
                        hint="give --resume to continue the run, or --force to train it again from scratch")
    cfg = resolve(preset=args.preset, config_file=args.config, flags=config_flags(args),
                  sets=args.sets)
    check_data_root(DATASETS.get(cfg.name("dataset")), args.data_root)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        print(f"# config hash: {cfg.hash}")
        return 0
    if args.nproc is not None:
        return launch(args, cfg)
    from ..trainer import RunExists, TrainOptions, train

    try:
        record = train(cfg, TrainOptions(out=Path(args.out), resume=args.resume, force=args.force,
                                         quiet=args.quiet))
    except RunExists as exc:
        print(f"skipped: a record of this run already exists at {exc.path}\n"
              f"  (pass --force to run it again)")
        return 0
    if not args.quiet and record is not None and _is_rank0():
        print_summary(record, Path(args.out))
    return 0


def _is_rank0() -> bool:
    import os

    return "WORLD_SIZE" not in os.environ or os.environ.get("RANK", "0") == "0"


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def launch(args: argparse.Namespace, cfg) -> int:
    """``mtlbench run --nproc N``: the same command in N processes of one data-parallel run.

    The config and the refusals that need no data (a method not verified under data
    parallelism, a batch that does not split) are checked here first; then N processes
    start with torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, a free local
    MASTER_PORT; OMP_NUM_THREADS=1 unless set, as torchrun does).  The first process to
    fail stops the others; its exit code is the command's (2 for a UserError)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    from ..errors import UserError
    from ..trainer import check_data_parallel

    n = args.nproc
    if n < 1:
        raise UserError(f"--nproc {n}: the number of processes must be at least 1", hint="e.g. --nproc 2")
    if "WORLD_SIZE" in os.environ:
        raise UserError("--nproc starts the processes itself; this one is already one of a data-parallel "
                        f"world (WORLD_SIZE={os.environ['WORLD_SIZE']})",
                        hint="use either torchrun or --nproc, not both")
    check_data_parallel(cfg, size=n)
    argv = _without_nproc(getattr(args, "argv", None) or sys.argv[1:])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(n),
            "LOCAL_WORLD_SIZE": str(n)}
    base.setdefault("OMP_NUM_THREADS", "1")
    procs = [subprocess.Popen([sys.executable, "-m", "mtlbench", *argv],
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(n)]
    rc = 0
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                rc = failed[0]
                break
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.05)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the processes stop too (checkpoints are kept)
        from ..children import stop_children

        stop_children(procs)
        raise
    for p in procs:  # one failed: the others would wait for it in a collective
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:  # blocked inside a collective, deaf to SIGTERM
            p.kill()
            p.wait()
    return rc


def print_summary(record: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..delta import delta_reference, reference_delta

    console = Console()
    table = Table(title=f"{record['method']} · {record['backbone']} · {record['dataset']} · "
                        f"seed {record['seed']} (epoch {record['report']['epoch'] + 1}, "
                        f"{record['report']['rule']})")
    table.add_column("task")
    table.add_column("metric")
    table.add_column("value", justify="right")
    lead = (record.get("schedule") or {}).get("leading_epochs")
    if lead:
        console.print(f"{lead} leading epoch(s) of the method ran before the run's {record['schedule']['epochs']}")
    for group, metrics in [("", record["metrics"]), *record.get("extra_metrics", {}).items()]:
        for t, ms in metrics.items():
            for k, v in ms.items():
                arrow = "↑" if record["tasks"][t]["metrics"].get(k) == "higher" else "↓"
                table.add_row(f"{group + ':' if group else ''}{t}", f"{k} {arrow}", f"{v:.4f}")
    console.print(table)
    name = delta_reference()
    d, ref = reference_delta(record, out, name)
    if d is not None:
        console.print(f"Δ vs {name} ({ref}): {d:+.2f}% (one seed; `mtlbench table` gives intervals over seeds)")
    elif name is not None and record["method"] != name:
        console.print(f"Δ vs {name}: not available ({ref}; run the same command with --method {name})")
    t = record["timing"]
    console.print(f"wall {t['wall_s']:.1f}s · train {t['train_images_per_s']:.1f} images/s · "
                  f"params {record['params']['deployable'] / 1e6:.2f}M deployable / "
                  f"{record['params']['training_system'] / 1e6:.2f}M trained · "
                  f"record: {record.get('_path')}")
