"""Training-step time, peak memory and FLOPs of the gradient-based methods and FAMO against the baseline.

Every gradient method (``pcgrad``, ``mgda``, ``cagrad``, ``imtl_g``,
``nash_mtl``, ``aligned_mtl``, ``upgrad``, ``dualproj``, ``graddrop``) runs in
both places its gradient can be taken, ``grad_on=params`` (the Jacobian on the
shared parameters: one encoder backward per task) and ``grad_on=features``
(the shared representation: one encoder backward), beside ``famo`` and the
equal-weight ``baseline``.  Each is built through the config and
:func:`mtlbench.trainer.build` (the ``quick`` preset's shapes by default:
vit_tiny, batch 16, 96x128 synthetic images) and stepped exactly as the trainer
steps it: :func:`mtlbench.trainer.optimizer_step` with the optimisers of
``Method.optimizers()``, then the schedules and ``after_step`` (FAMO's extra
forward is part of its step).  In one process, after warm-up steps, the
methods are timed in interleaved rounds (so drift on a shared machine hits all
alike); the report gives the median step time (wall and this process's CPU
time) and its ratio to the baseline's, the peak memory a step adds over what
was allocated before it (CUDA: the allocator's peak; CPU: the rise of the
process's peak resident set, reset before the step through
``/proc/self/clear_refs``) and the FLOPs of one step counted by
``torch.utils.flop_counter.FlopCounterMode`` (matrix products and
convolutions; the aggregators' small solvers are not counted).

Targets (m tasks): ``features`` variants <= 1.3x the baseline's time,
``params`` variants <= (m + 0.5)x; the verdict column compares the median CPU
time on the CPU (a shared machine's load swings the wall time, not this
process's CPU time; use ``--threads 1`` so the two measure the same work) and
the median wall time on CUDA.

    nice .venv/bin/python benchmarks/bench_gradient_step.py --threads 2
    .venv/bin/python benchmarks/bench_gradient_step.py --methods baseline,mgda,famo --rounds 5
    .venv/bin/python benchmarks/bench_gradient_step.py --smoke        # seconds: 1 round, 1 step, smoke shapes

On Linux the script re-executes itself once with ``MALLOC_MMAP_THRESHOLD_``
fixed, so that freed tensors go back to the system and the resident-set peak
of one method is not hidden by memory a previous one left in the heap.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mtlbench.api import TrainContext
from mtlbench.config import resolve
from mtlbench.errors import UserError
from mtlbench.trainer import Optimisation, autocast_ctx, build, optimizer_step, to_device

GRADIENT_METHODS = ("pcgrad", "mgda", "cagrad", "imtl_g", "nash_mtl", "aligned_mtl", "upgrad",
                    "dualproj", "graddrop")
DEFAULT_METHODS = ",".join(("baseline", *GRADIENT_METHODS, "famo"))
MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
        return True
    except OSError:
        return False


def expand(entries: list[str]) -> list[tuple[str, str, list[str]]]:
    """``NAME`` -> (label, method, extra sets); a gradient method gives both ``grad_on`` variants.

    ``NAME[grad_on]`` picks one variant; ``NAME:KEY=VALUE;KEY=VALUE`` adds method options.
    """
    out = []
    for entry in entries:
        name, _, opts = entry.partition(":")
        sets = [f"method.{kv.strip()}" for kv in opts.split(";") if kv.strip()]
        name = name.strip()
        suffix = ":" + opts if opts else ""
        if "[" in name:
            base, variant = name.rstrip("]").split("[", 1)
            out.append((f"{base}[{variant}]{suffix}", base, [f"method.grad_on={variant}", *sets]))
        elif name in GRADIENT_METHODS:
            for variant in ("params", "features"):
                out.append((f"{name}[{variant}]{suffix}", name, [f"method.grad_on={variant}", *sets]))
        else:
            out.append((name + suffix, name, sets))
    return out


class Runner:
    """One method with its optimisers, stepped as the trainer steps it."""

    def __init__(self, label: str, setup, cfg):
        self.label = label
        self.s = setup
        self.method = m = setup.method
        m.train()
        lead = m.leading_epochs(cfg.train.epochs)
        m.on_train_start(TrainContext(cfg.train.epochs, 1, setup.device, None, leading_epochs=lead,
                                      autocast=lambda: autocast_ctx(setup.device, setup.amp),
                                      train_cfg=cfg.train))
        self.optim = Optimisation(m, cfg.train, max(cfg.train.epochs, 1) * 1000, 0)
        self.step_no = 0
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.peak_mb: float | None = None
        self.flops: int | None = None

    def step(self, batch: dict) -> tuple[float, float]:
        m, s = self.method, self.s
        sync(s.device)
        t0, c0 = time.perf_counter(), time.process_time()
        optimizer_step(m, self.optim, batch, s.device, s.amp)
        self.optim.schedule()
        m.after_step(self.step_no, batch)
        sync(s.device)
        self.step_no += 1
        return time.perf_counter() - t0, time.process_time() - c0

    def measure_memory(self, batch: dict) -> None:
        dev = self.s.device
        if dev.type == "cuda":
            sync(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            before = torch.cuda.memory_allocated(dev)
            self.step(batch)
            self.peak_mb = (torch.cuda.max_memory_allocated(dev) - before) / 2**20
            return
        before = _rss_kib("VmRSS")
        if before is None or not _reset_peak_rss():
            self.step(batch)
            return
        self.step(batch)
        peak = _rss_kib("VmHWM")
        self.peak_mb = max(0, peak - before) / 1024 if peak is not None else None

    def count_flops(self, batch: dict) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            self.step(batch)
        self.flops = counter.get_total_flops()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma list; the first is the reference (default: baseline, every gradient "
                        "method in both grad_on variants, famo); NAME[params] or NAME[features] picks one")
    p.add_argument("--preset", default="quick")
    p.add_argument("--backbone", default="vit_tiny")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every method (e.g. train.batch_size=8)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--batches", type=int, default=2, help="distinct real batches, used in turn")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per method first")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=2, help="timed steps per method per round")
    p.add_argument("--smoke", action="store_true",
                   help="a few seconds per method: smoke preset shapes, 1 round of 1 step, no warm-up")
    args = p.parse_args(argv)
    if args.smoke:
        args.preset, args.rounds, args.steps, args.warmup, args.batches = "smoke", 1, 1, 0, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    plan = expand([e for e in args.methods.split(",") if e.strip()])
    runners: list[Runner] = []
    batches: list[dict] = []
    skipped: list[str] = []
    first = None
    for label, name, extra in plan:
        cfg = resolve(preset=args.preset,
                      flags=[("method.name", name, "--method"), ("backbone.name", args.backbone, "--backbone"),
                             ("train.device", args.device, "--device")],
                      sets=[*args.sets, *extra])
        try:
            setup = build(cfg, with_data=not batches)
        except UserError as exc:  # e.g. a solver package missing: say so, time the rest
            skipped.append(f"{label}: {exc}")
            continue
        if not batches:
            loader = DataLoader(setup.train_set, batch_size=cfg.train.batch_size, shuffle=False, num_workers=0)
            for i, b in enumerate(loader):
                if i >= args.batches:
                    break
                batches.append(to_device(b, setup.device, setup.channels_last))
            first = (cfg, setup)
        runners.append(Runner(label, setup, cfg))
    if not runners:
        raise SystemExit("nothing to time: " + "; ".join(skipped))
    cfg0, s0 = first
    img = batches[0]["image"]
    n_tasks = len(s0.tasks)
    print(f"preset={args.preset} backbone={cfg0.name('backbone')} dataset={cfg0.name('dataset')} "
          f"tasks={n_tasks} batch={img.shape[0]} image={tuple(img.shape[-2:])} device={args.device} "
          f"amp={s0.amp} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{args.warmup} warm-up step(s) per method, then {args.rounds} interleaved round(s) x "
          f"{args.steps} timed step(s); one more step each for memory and for FLOPs", flush=True)

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
    for r in runners:
        r.measure_memory(batches[0])
        r.count_flops(batches[0])

    ref = runners[0]
    ref_wall, ref_cpu = statistics.median(ref.times), statistics.median(ref.cpu_times)
    print(f"\n{'method':26s} {'wall med s':>10s} {'ratio':>6s} {'cpu med s':>9s} {'ratio':>6s} "
          f"{'peak MB':>8s} {'GFLOP':>8s} {'ratio':>6s} {'target':>7s}")
    # The target verdict uses CPU time on the CPU (on a shared machine the wall time swings
    # with the other processes' load; the CPU time counts this process's work only) and the
    # wall time on CUDA (where CPU time means little).
    use_cpu = s0.device.type == "cpu"
    for r in runners:
        wall, cpu = statistics.median(r.times), statistics.median(r.cpu_times)
        ratio = cpu / ref_cpu if use_cpu else wall / ref_wall
        target = (1.3 if "[features]" in r.label else n_tasks + 0.5 if "[params]" in r.label else None)
        verdict = "" if target is None else f"{'ok' if ratio <= target else 'OVER'} {target:g}x"
        mem = "n/a" if r.peak_mb is None else f"{r.peak_mb:.0f}"
        gflop = r.flops / 1e9 if r.flops is not None else float("nan")
        fratio = r.flops / ref.flops if r.flops and ref.flops else float("nan")
        print(f"{r.label:26s} {wall:10.3f} {ratio:6.2f} {cpu:9.3f} {cpu / ref_cpu:6.2f} "
              f"{mem:>8s} {gflop:8.2f} {fratio:6.2f} {verdict:>7s}", flush=True)
    print(f"target: features <= 1.3x, params <= {n_tasks + 0.5:g}x the baseline's median "
          f"{'CPU' if use_cpu else 'wall'} time")
    print("\nwall times of the timed steps (s):")
    for r in runners:
        print(f"  {r.label:26s} " + ", ".join(f"{t:.2f}" for t in r.times))
    for line in skipped:
        print("skipped " + line)


if __name__ == "__main__":
    if sys.platform.startswith("linux") and MMAP_ENV not in os.environ:
        # Fix glibc's mmap threshold (it otherwise grows after large frees, keeping freed
        # tensors in the heap), so the resident-set peak of one step is that step's own.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, MMAP_ENV: "131072"})
    main()
