"""Training-step time of the loss-weighting methods against the equal-weight baseline.

Each method is built through the registry and the config (``--preset``, quick by
default: vit_tiny, synthetic NYUv2-like data, the preset's batch size and image
size) and trained for real steps on the same real batches, in one process:
``training_step`` under the trainer's autocast, ``backward``, a step of every
optimiser of ``Method.optimizers()`` and ``after_step``, as the trainer does.  After warm-up steps
for every method, the methods are timed in interleaved rounds (so drift on a
shared machine hits all of them alike); the report gives each method's mean and
median step time and its ratio to ``baseline``'s mean, in wall time and in this
process's CPU time.  On a loaded, shared CPU the wall times swing widely from
step to step (docs/BENCHMARKS.md); with ``--threads 1`` the CPU time counts only
the work done and is the steadier measure (on CUDA only the wall time means anything).

    .venv/bin/python benchmarks/bench_weighting_step.py
    .venv/bin/python benchmarks/bench_weighting_step.py --methods baseline,gradnorm,gradnorm:shared_params=all
    .venv/bin/python benchmarks/bench_weighting_step.py --preset smoke --rounds 1 --steps 1 --warmup 1

A method entry ``NAME:KEY=VALUE[,KEY=VALUE]`` (``;`` between several keys) sets
``method.KEY`` for that entry only.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader

from mtlbench.config import resolve
from mtlbench.trainer import Optimisation, build, optimizer_step, to_device

DEFAULT_METHODS = "baseline,dwa,gradnorm,uw,rlw"


def parse_entry(entry: str) -> tuple[str, list[str]]:
    name, _, opts = entry.partition(":")
    sets = [f"method.{kv.strip()}" for kv in opts.split(";") if kv.strip()]
    return name.strip(), sets


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One method, its optimiser and a step counter."""

    def __init__(self, label: str, setup):
        self.label = label
        self.s = setup
        self.method = setup.method
        self.method.train()
        self.optim = Optimisation(self.method, setup.cfg.train, 10_000)  # the trainer's optimisers
        self.step_no = 0
        self.times: list[float] = []
        self.cpu_times: list[float] = []

    def step(self, batch: dict) -> tuple[float, float]:
        m, s = self.method, self.s
        sync(s.device)
        t0, c0 = time.perf_counter(), time.process_time()
        optimizer_step(m, self.optim, batch, s.device, s.amp)
        m.after_step(self.step_no, batch)
        sync(s.device)
        self.step_no += 1
        return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help=f"comma list, the first is the reference (default {DEFAULT_METHODS})")
    p.add_argument("--preset", default="quick")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every method (e.g. train.batch_size=8)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--batches", type=int, default=2, help="distinct real batches, used in turn")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=2, help="timed steps per method per round")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    entries = [e for e in args.methods.split(",") if e.strip()]
    runners: list[Runner] = []
    batches: list[dict] = []
    for entry in entries:
        name, extra = parse_entry(entry)
        cfg = resolve(preset=args.preset,
                      flags=[("method.name", name, "--method"), ("train.device", args.device, "--device")],
                      sets=[*args.sets, *extra])
        setup = build(cfg, with_data=not batches)
        if not batches:
            loader = DataLoader(setup.train_set, batch_size=cfg.train.batch_size, shuffle=False,
                                num_workers=0)
            for i, b in enumerate(loader):
                if i >= args.batches:
                    break
                batches.append(to_device(b, setup.device, setup.channels_last))
            first = cfg
        runners.append(Runner(entry, setup))
    img = batches[0]["image"]
    print(f"preset={args.preset} backbone={first.name('backbone')} dataset={first.name('dataset')} "
          f"batch={img.shape[0]} image={tuple(img.shape[-2:])} device={args.device} "
          f"amp={runners[0].s.amp} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{args.warmup} warm-up steps per method, then {args.rounds} interleaved rounds x "
          f"{args.steps} timed steps", flush=True)

    k = 0
    for r in runners:
        for _ in range(args.warmup):
            r.step(batches[k % len(batches)])
            k += 1
    for rnd in range(args.rounds):
        # Alternate the order between rounds so no method always follows the same one.
        order = runners if rnd % 2 == 0 else runners[::-1]
        for r in order:
            for _ in range(args.steps):
                wall, cpu = r.step(batches[k % len(batches)])
                r.times.append(wall)
                r.cpu_times.append(cpu)
                k += 1

    ref = statistics.mean(runners[0].times)
    ref_cpu = statistics.mean(runners[0].cpu_times)
    print(f"\n{'method':30s} {'wall mean s':>11s} {'median':>7s} {'ratio':>6s} "
          f"{'cpu mean s':>10s} {'median':>7s} {'ratio':>6s}   wall times of the steps")
    for r in runners:
        mean, cmean = statistics.mean(r.times), statistics.mean(r.cpu_times)
        print(f"{r.label:30s} {mean:11.3f} {statistics.median(r.times):7.3f} {mean / ref:6.2f} "
              f"{cmean:10.3f} {statistics.median(r.cpu_times):7.3f} {cmean / ref_cpu:6.2f}   "
              + ", ".join(f"{t:.2f}" for t in r.times), flush=True)


if __name__ == "__main__":
    main()
