"""Data-parallel speed on the CPU: one run in 2 gloo processes against the same run in 1 process.

    python benchmarks/bench_ddp.py [--method baseline] [--backbone vit_tiny] [--n-train 64]
                                   [--batch 16] [--epochs 2] [--cores 2]

The same cores: 1 process with ``--cores`` torch threads (and, for reference, with 1), against
``--cores`` processes (``mtlbench run --nproc``) with 1 thread each, the same global batch.  What is
compared is the records' training throughput (``timing.train_images_per_s``: images of the
global batch per second of the training loop, without start-up, data generation,
evaluation or the record), and the wall time of the whole command.  Prints both and the
ratios (2 processes / 1 process: above 1 means data parallel is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(args, out: Path, nproc: int | None, threads: int | None = None) -> tuple[dict, float]:
    threads = threads or (args.cores if nproc is None else 1)
    cmd = [sys.executable, "-m", "mtlbench", "run", "--preset", "smoke", "--method", args.method,
           "--backbone", args.backbone, "--device", "cpu", "--epochs", str(args.epochs),
           "--batch-size", str(args.batch), "--set", f"dataset.n_train={args.n_train}",
           "--set", "train.max_steps_per_epoch=null", "--set", f"train.threads={threads}",
           "--out", str(out), "--quiet"]
    if nproc:
        cmd += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    wall = time.perf_counter() - t0
    (rec,) = [json.loads(p.read_text()) for p in out.glob("runs/**/*.json")]
    return rec, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="baseline")
    ap.add_argument("--backbone", default="vit_tiny")
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("MTLBENCH_CACHE", str(tmp / "cache"))
        # generate the data once, outside the timings
        run(argparse.Namespace(**{**vars(args), "epochs": 1, "n_train": args.n_train}), tmp / "warm", None)
        one, wall1 = run(args, tmp / "one", None)
        single, wall0 = run(args, tmp / "single", None, threads=1)
        many, wall2 = run(args, tmp / "many", args.cores)
    ips1, ips2 = one["timing"]["train_images_per_s"], many["timing"]["train_images_per_s"]
    ips0 = single["timing"]["train_images_per_s"]
    print(f"{args.method} / {args.backbone}, {args.n_train} images, global batch {args.batch}, "
          f"{args.epochs} epochs, {args.cores} cores")
    print(f"1 process x {args.cores} threads: {ips1:.1f} images/s train, wall {wall1:.1f} s")
    print(f"1 process x 1 thread:  {ips0:.1f} images/s train, wall {wall0:.1f} s")
    print(f"{args.cores} processes x 1 thread:  {ips2:.1f} images/s train, wall {wall2:.1f} s")
    print(f"ratio ({args.cores} processes / 1 process x {args.cores} threads): throughput {ips2 / ips1:.2f}x, "
          f"wall {wall1 / wall2:.2f}x")
    print(f"ratio ({args.cores} processes / 1 process x 1 thread): throughput {ips2 / ips0:.2f}x, "
          f"wall {wall0 / wall2:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
