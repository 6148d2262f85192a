"""Peak memory and time of an OKD-MTL training step against the baseline's.

OKD-MTL trains N_t single-task networks beside the multi-task one, so its step
does N_t + 1 forward/backward passes.  Its lean step (``methods/okd.py``)
back-propagates each single-task network right after its forward pass and keeps
only detached features, so at most one single-task graph, or the multi-task
graph, is alive at a time.  This script checks the two targets:

* **step time** <= (N_t + 1) x 1.05 x baseline's;
* **step peak memory** <= 1.6 x baseline's.

Both methods are built through the config and the registry on ``--preset``
(quick by default: vit_tiny, synthetic NYUv2-like data, batch 16, 96x128), and a
step is what the trainer does (``mtlbench.trainer.optimizer_step``):
``zero_grad(set_to_none=True)``, ``training_step`` under the trainer's
autocast, ``backward``, a step of every optimiser of ``Method.optimizers()``.  ``okd`` is put in its distillation phase (after warm-up),
the regime that costs most.

Time: both methods live in this process and are timed in interleaved rounds,
after warm-up steps, on the same real batches (drift on a shared machine hits
both alike); the ratio is of median step times.

Memory: what a step needs *on top of* what the run holds between steps (the
weights and AdamW's moments; the last step's gradients are dropped before the
step is measured, as ``zero_grad`` would, so neither method gets credit for
freeing them early and each pays for all of its fresh gradients).  That steady part grows
with the number of networks whatever the step does (OKD-MTL trains N_t + 1
networks; the parameter counts are in docs/BENCHMARKS.md), so it is reported but not part of
the 1.6x target, which is about the step's own transient memory: activations
saved for backward, fresh gradients, the distilled features.  Each method is
measured in a fresh subprocess, so allocator state from one never serves the
other:

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``,
  minus ``memory_allocated`` before the step;
* CPU: the kernel's peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs``) minus the resident set before the step.  glibc's
  malloc is told to serve every block of 16 KiB or more with mmap
  (``MALLOC_MMAP_THRESHOLD_``, which also switches off its adaptive
  threshold) and to trim freed heap memory eagerly, so freed tensor buffers
  return to the kernel and the resident set follows live tensor memory;
  tracemalloc would not see torch's allocations.  The largest of several
  steps counts.

    .venv/bin/python benchmarks/bench_okd_step.py
    .venv/bin/python benchmarks/bench_okd_step.py --preset smoke --rounds 1 --steps 1
    .venv/bin/python benchmarks/bench_okd_step.py --device cuda
    .venv/bin/python benchmarks/bench_okd_step.py --okd-set afd=last_layer --okd-set otw=false
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mtlbench.api import TrainContext
from mtlbench.config import resolve
from mtlbench.trainer import Optimisation, build, optimizer_step, to_device

MEMORY_TARGET = 1.6
TIME_SLACK = 1.05


def _config(method: str, args: argparse.Namespace):
    sets = [f"method.{s}" for s in args.okd_set] if method == "okd" else []
    return resolve(preset=args.preset,
                   flags=[("method.name", method, "--method"),
                          ("backbone.name", args.backbone, "--backbone"),
                          ("train.device", args.device, "--device")],
                   sets=sets)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One method, its optimiser, and the trainer's step."""

    def __init__(self, method: str, args: argparse.Namespace):
        self.name = method
        self.cfg = _config(method, args)
        self.s = build(self.cfg)
        m = self.s.method
        tc = self.cfg.train
        # okd: the first epoch of distillation (after its warm-up), with the single-task
        # networks still training: the regime that costs most.
        lead = m.leading_epochs(tc.epochs)
        m.on_train_start(TrainContext(tc.epochs, 1, self.s.device, None, leading_epochs=lead, train_cfg=tc))
        m.on_epoch_start(lead)
        m.train()
        self.optim = Optimisation(m, tc, 10_000)  # the trainer's optimisers (AdamW on the quick preset)
        loader = DataLoader(self.s.train_set, batch_size=tc.batch_size, shuffle=False, drop_last=True)
        self.batches = [to_device(b, self.s.device, self.s.channels_last)
                        for b, _ in zip(loader, range(args.batches))]
        self.i = 0
        self.times: list[float] = []

    def step(self) -> None:
        s, m = self.s, self.s.method
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        optimizer_step(m, self.optim, batch, s.device, s.amp)
        m.after_step(self.i, batch)

    def timed_step(self) -> float:
        _sync(self.s.device)
        t0 = time.perf_counter()
        self.step()
        _sync(self.s.device)
        dt = time.perf_counter() - t0
        self.times.append(dt)
        return dt


# ---------------------------------------------------------------------------
# memory: one method per fresh process
# ---------------------------------------------------------------------------

def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure_memory(method: str, args: argparse.Namespace) -> dict:
    r = Runner(method, args)
    dev = r.s.device
    for _ in range(args.warmup):
        r.step()  # AdamW moments and gradients exist from here on
    deltas, before_all, peaks = [], [], []
    for _ in range(max(args.steps, 2)):
        r.optim.zero_grad()
        gc.collect()
        _sync(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            before = torch.cuda.memory_allocated(dev)
        else:
            before = _status_kib("VmRSS") * 1024
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        r.step()
        _sync(dev)
        peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
                else _status_kib("VmHWM") * 1024)
        before_all.append(before)
        peaks.append(peak)
        deltas.append(peak - before)
    mib = 2 ** 20
    return {"method": method, "device": dev.type, "how": "cuda_allocated" if dev.type == "cuda" else "rss",
            "step_peak_mib": round(max(deltas) / mib, 1),
            "steady_mib": round(statistics.median(before_all) / mib, 1),
            "peak_mib": round(max(peaks) / mib, 1),
            "params": sum(p.numel() for p in r.s.method.parameters())}


def memory_in_subprocess(method: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="16384", MALLOC_TRIM_THRESHOLD_="0",
               MALLOC_TOP_PAD_="0", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, __file__, "--worker-memory", method, *sys.argv[1:]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"memory worker for {method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--backbone", default="vit_tiny")
    p.add_argument("--device", default="cpu", help="cpu (default) | cuda | auto")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--steps", type=int, default=3, help="timed steps per method and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    p.add_argument("--batches", type=int, default=4, help="distinct real batches cycled through")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--okd-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an okd option, e.g. afd=last_layer (repeatable)")
    p.add_argument("--worker-memory", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.worker_memory:
        print(json.dumps(measure_memory(args.worker_memory, args)))
        return 0

    mem = {m: memory_in_subprocess(m, args) for m in ("baseline", "okd")}

    runners = [Runner("baseline", args), Runner("okd", args)]
    n_tasks = len(runners[1].s.tasks)
    for r in runners:
        for _ in range(args.warmup):
            r.step()
    for _ in range(args.rounds):
        for r in runners:
            for _ in range(args.steps):
                r.timed_step()
    t_base, t_okd = (statistics.median(r.times) for r in runners)

    cfg = runners[0].cfg
    print(f"preset {args.preset}: {args.backbone}, batch {cfg.train.batch_size}, "
          f"images {cfg.dataset.image_size}, device {runners[0].s.device} ({runners[0].s.amp}), "
          f"{torch.get_num_threads()} threads, N_t = {n_tasks}"
          + (f", okd {' '.join(args.okd_set)}" if args.okd_set else ""))
    print(f"{'method':10} {'params':>10} {'steady MiB':>11} {'step peak MiB':>14} {'step s (median)':>16}")
    for r in runners:
        mm = mem[r.name]
        print(f"{r.name:10} {mm['params']:>10,} {mm['steady_mib']:>11.1f} {mm['step_peak_mib']:>14.1f} "
              f"{statistics.median(r.times):>16.3f}")
    mem_ratio = mem["okd"]["step_peak_mib"] / max(mem["baseline"]["step_peak_mib"], 1e-9)
    time_ratio = t_okd / t_base
    time_target = (n_tasks + 1) * TIME_SLACK
    print(f"memory ratio (okd / baseline step peak, {mem['okd']['how']}): {mem_ratio:.2f}  "
          f"(target <= {MEMORY_TARGET}: {'ok' if mem_ratio <= MEMORY_TARGET else 'MISSED'})")
    print(f"time ratio   (okd / baseline median step):       {time_ratio:.2f}  "
          f"(target <= {time_target:.2f}: {'ok' if time_ratio <= time_target else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
