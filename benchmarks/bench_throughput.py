"""Throughput of training steps: FLOPs, achieved GFLOP/s and the fraction of the machine's matmul ceiling.

For every method (x backbone) of a preset and every precision mode (``fp32``,
``bf16`` autocast), in one process:

* **FLOPs per step**, counted by ``torch.utils.flop_counter.FlopCounterMode``
  over one whole training step (forward, backward; matrix products,
  convolutions and attention: the CPU flash-attention kernel that timm's ViT
  reaches through ``scaled_dot_product_attention`` is not in torch's registry,
  so its forward and backward are counted here with torch's own SDPA formulas);
* **step time**: the median over interleaved rounds (every method and mode
  takes its turn each round, so drift on a shared machine hits all alike) of
  the trainer's own step, :func:`mtlbench.trainer.optimizer_step` with the
  optimisers of ``Method.optimizers()`` plus ``after_step``;
* **achieved GFLOP/s** = FLOPs / median step time, and the fraction of two
  ceilings measured on this machine with the same threads: ``peak``, the best
  of square matrix products (1024-2048) in that precision, and ``shapes``, the
  step's own dominant matrix products (the shapes holding 90% of its matmul
  FLOPs, recorded while it ran, each timed alone; their FLOP-weighted rate);
* **where the time goes**: forward (``training_step``), backward
  (``Method.backward``), optimiser (every optimiser's ``step``) and the rest of
  the step (zeroing, finite checks, ``after_step``), timed inside the step;
  ``data`` (a batch from a DataLoader as the trainer builds it) and ``eval``
  (``mtlbench.trainer.evaluate`` on validation batches), both per training
  image, and their share of an epoch of the preset (train steps + one
  evaluation of the validation split).

``--profile METHOD`` adds torch.profiler's self time per operator class
(matmul, attention, norm, cast, elementwise, optimiser, ...) for each mode: it
says where a bf16 step loses to its matrix products.  ``--split`` measures the
local sweep's core split: baseline steps per second of one process with all
threads against one single-thread process per core, all at once.

    nice .venv/bin/python benchmarks/bench_throughput.py                      # Table 1's methods, quick, fp32 + bf16
    .venv/bin/python benchmarks/bench_throughput.py --methods baseline,okd --modes fp32,bf16 --profile baseline
    .venv/bin/python benchmarks/bench_throughput.py --split                  # 1 x 2 threads against 2 x 1
    .venv/bin/python benchmarks/bench_throughput.py --smoke                  # seconds: smoke preset, 1 step

Figures, with the machine and the date, go to docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count
from torch.utils._python_dispatch import TorchDispatchMode

from mtlbench.api import TrainContext
from mtlbench.config import resolve
from mtlbench.runs import RunContext
from mtlbench.trainer import Optimisation, build, evaluate, optimizer_step, to_device

TABLE1_METHODS = "baseline,stl,dwa,gradnorm,uw,rlw,cross_stitch,kd_mtl,okd"
aten = torch.ops.aten


# ---------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------

def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args,
                            out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CUSTOM_FLOPS = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
                aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flop}


def count_flops(fn) -> tuple[int, dict[str, int]]:
    with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as fc:
        fn()
    per_op = {str(k).replace("aten.", ""): int(v) for k, v in fc.get_flop_counts()["Global"].items()}
    return int(fc.get_total_flops()), per_op


class MatmulShapes(TorchDispatchMode):
    """Records (M, K, N, dtype) and FLOPs of every matrix product that runs."""

    def __init__(self):
        super().__init__()
        self.flops: dict[tuple, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in (aten.mm, aten.addmm):
            a, b = (args[0], args[1]) if packet is aten.mm else (args[1], args[2])
            (m, k), n = a.shape, b.shape[1]
            self.flops[(m, k, n, str(a.dtype).replace("torch.", ""))] += 2 * m * k * n
        elif packet in (aten.bmm, aten.baddbmm):
            a, b = (args[0], args[1]) if packet is aten.bmm else (args[1], args[2])
            bs, m, k = a.shape
            n = b.shape[2]
            self.flops[(bs * m, k, n, str(a.dtype).replace("torch.", ""))] += 2 * bs * m * k * n
        return func(*args, **kwargs)


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype, seconds: float) -> float:
    """GFLOP/s of ``(m x k) @ (k x n)`` in ``dtype`` on this thread count (best of repeated blocks)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(k, n, generator=g).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    torch.mm(a, b, out=out)
    reps = min(200, max(1, int(2e8 / max(2 * m * k * n, 1))))  # blocks of ~0.1 s at most
    best, t_end = float("inf"), time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        best = min(best, (time.perf_counter() - t0) / reps)
        if time.perf_counter() > t_end:
            break
    return 2 * m * k * n / best / 1e9


def peak_rate(dtype: torch.dtype, sizes: list[int], seconds: float) -> float:
    return max(matmul_rate(s, s, s, dtype, seconds) for s in sizes)


def shapes_rate(shapes: dict[tuple, int], dtype: torch.dtype, seconds: float, cover: float = 0.9) -> float:
    """FLOP-weighted rate of the dominant shapes (those holding ``cover`` of the matmul FLOPs)."""
    total = sum(shapes.values())
    merged: dict[tuple, int] = defaultdict(int)
    for (m, k, n, _), f in shapes.items():
        merged[(m, k, n)] += f
    acc, flops, secs = 0, 0, 0.0
    for (m, k, n), f in sorted(merged.items(), key=lambda kv: -kv[1]):
        secs += f / (matmul_rate(m, k, n, dtype, seconds) * 1e9)
        flops += f
        acc += f
        if acc >= cover * total:
            break
    return flops / secs / 1e9


# ---------------------------------------------------------------------------
# one method in one precision, stepped as the trainer steps it
# ---------------------------------------------------------------------------

class Runner:
    def __init__(self, method: str, mode: str, args: argparse.Namespace):
        self.name, self.mode = method, mode
        amp, _, extra = mode.partition("+")  # e.g. bf16+compile
        self.amp = amp
        sets = [f"train.amp={amp}", *(["train.compile=true"] if extra == "compile" else [])]
        flags = [("method.name", method, "--method"), ("backbone.name", args.backbone, "--backbone"),
                 ("train.device", args.device, "--device"), ("seed", args.seed, "--seed")]
        self.cfg = resolve(preset=args.preset, flags=flags, sets=sets + args.set)
        # methods that load earlier runs (kd_mtl's stl teachers) find them in the default precision's
        # setting under --results: their weights do not change the step's work
        run = RunContext(resolve(preset=args.preset, flags=flags, sets=args.set), Path(args.results))
        self.s = build(self.cfg)
        m, tc = self.s.method, self.cfg.train
        lead = m.leading_epochs(tc.epochs)
        m.on_train_start(TrainContext(tc.epochs, 1, self.s.device, run, leading_epochs=lead, train_cfg=tc))
        m.on_epoch_start(lead)  # the first epoch of the multi-task network's own schedule
        m.train()
        self.optim = Optimisation(m, tc, 10_000)
        self.loader = DataLoader(self.s.train_set, batch_size=tc.batch_size, shuffle=False, drop_last=True,
                                 num_workers=self.cfg.dataset.num_workers)
        self.batches = [to_device(b, self.s.device, self.s.channels_last)
                        for b, _ in zip(self.loader, range(args.batches))]
        self.i = 0
        self.times: list[float] = []
        self.phases: dict[str, list[float]] = defaultdict(list)
        self._instrument()

    def _instrument(self) -> None:
        """Time forward, backward and the optimisers inside the trainer's own step."""
        m, optim = self.s.method, self.optim
        for attr, phase, owner in (("training_step", "forward", m), ("backward", "backward", m),
                                   ("step", "optimiser", optim)):
            inner = getattr(owner, attr)

            def timed(*a, _inner=inner, _phase=phase, **kw):
                if _phase == "optimiser" and self.counting:
                    return None  # no FLOPs the counter knows; dispatch modes make it slow
                self.sync()
                t0 = time.perf_counter()
                r = _inner(*a, **kw)
                self.sync()
                self._current[_phase] = self._current.get(_phase, 0.0) + time.perf_counter() - t0
                return r
            setattr(owner, attr, timed)
        self._current: dict[str, float] = {}
        self.counting = False

    @contextmanager
    def counting_mode(self):
        """Steps without the optimiser update, for the FLOP counter and the shape recorder: the
        update has no matrix products, and under a Python dispatch mode its per-tensor
        operations cost seconds."""
        self.counting = True
        try:
            with torch.compiler.set_stance("force_eager"):  # compiled kernels hide their aten ops
                yield
        finally:
            self.counting = False

    def sync(self) -> None:
        if self.s.device.type == "cuda":
            torch.cuda.synchronize(self.s.device)

    def step(self) -> None:
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        optimizer_step(self.s.method, self.optim, batch, self.s.device, self.s.amp)
        self.s.method.after_step(self.i, batch)

    def timed_step(self) -> None:
        self._current = {}
        self.sync()
        t0 = time.perf_counter()
        self.step()
        self.sync()
        dt = time.perf_counter() - t0
        self.times.append(dt)
        for k, v in self._current.items():
            self.phases[k].append(v)
        self.phases["other"].append(dt - sum(self._current.values()))

    def data_s_per_image(self, n: int) -> float:
        it = iter(self.loader)
        t0 = time.perf_counter()
        images = 0
        for _ in range(n):
            b = next(it)
            to_device(b, self.s.device, self.s.channels_last)
            images += len(next(iter(b.values())))
        return (time.perf_counter() - t0) / max(images, 1)

    def eval_s_per_image(self, n: int) -> float:
        loader = DataLoader(self.s.val_set, batch_size=self.cfg.train.batch_size, shuffle=False)
        batches = [b for b, _ in zip(loader, range(n))]
        images = sum(len(next(iter(b.values()))) for b in batches)
        t0 = time.perf_counter()
        for model in self.s.method.eval_models().values():  # as the trainer evaluates at an epoch's end
            evaluate(model, self.s.tasks, batches, self.s.device, self.s.amp, self.s.channels_last)
        return (time.perf_counter() - t0) / max(images, 1)


# ---------------------------------------------------------------------------
# operator classes (--profile)
# ---------------------------------------------------------------------------

OP_EXACT = {
    "matmul": {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul",
               "aten::_addmm_activation", "aten::t", "aten::transpose", "aten::permute"},
    "cast": {"aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous"},
}
OP_SUBSTRINGS = (
    ("attention", ("scaled_dot_product", "flash_attention", "efficient_attention", "softmax")),
    ("conv", ("convolution", "conv2d", "mkldnn_conv")),
    ("norm", ("layer_norm", "batch_norm", "group_norm", "aten::norm", "vector_norm")),
    ("optimiser", ("adam", "_foreach", "sgd", "optimizer")),
    ("resize", ("upsample", "interpolate")),
    ("loss", ("cross_entropy", "nll_loss", "log_softmax", "l1_loss", "cosine_similarity")),
    ("activation", ("gelu", "relu", "sigmoid", "tanh")),
    ("elementwise", ("aten::add", "aten::mul", "aten::sub", "aten::div", "aten::sum", "aten::mean",
                     "aten::fill", "aten::zero", "aten::where", "aten::cat", "aten::pow", "aten::sqrt",
                     "aten::exp", "aten::neg", "aten::abs", "aten::clamp")),
)


def classify(name: str) -> str:
    """The operator class of a profiler event (exact aten names first, then substrings)."""
    for cls, names in OP_EXACT.items():
        if name in names:
            return cls
    low = name.lower()
    for cls, keys in OP_SUBSTRINGS:
        if any(k in low for k in keys):
            return cls
    return "other"


def profile_classes(r: Runner, steps: int, top: int = 0) -> tuple[dict[str, float], float]:
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if r.s.device.type == "cuda" else [])
    r.sync()
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(steps):
            r.step()
        r.sync()
    wall = (time.perf_counter() - t0) / steps
    out: dict[str, float] = defaultdict(float)
    events = prof.key_averages()
    for ev in events:
        out[classify(ev.key)] += ev.self_cpu_time_total / 1e6 / steps
    if top:
        print(f"  {r.name} {r.mode}: top {top} operators by self time (s per step, calls per step)")
        for ev in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
            print(f"    {ev.key[:58]:58} {classify(ev.key):11} {ev.self_cpu_time_total / 1e6 / steps:7.3f} "
                  f"{ev.count // steps:6d}")
    return dict(out), wall


# ---------------------------------------------------------------------------
# --split: one process with all threads against one single-thread process per core
# ---------------------------------------------------------------------------

def split_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    r = Runner(args.split_method, args.modes[0], args)
    for _ in range(args.warmup):
        r.step()
    t0 = time.perf_counter()
    for _ in range(args.split_steps):
        r.step()
    print(json.dumps({"steps": args.split_steps, "s": time.perf_counter() - t0}))


def run_split(args: argparse.Namespace, cores: int) -> None:
    base = [sys.executable, __file__, "--preset", args.preset, "--backbone", args.backbone, "--device", "cpu",
            "--split-method", args.split_method, "--split-steps", str(args.split_steps),
            "--warmup", str(args.warmup), "--modes", args.modes[0], *sum((["--set", s] for s in args.set), [])]
    print(f"--split: {args.split_method}, {args.split_steps} timed steps per process after {args.warmup} "
          f"warm-up steps, {args.modes[0]}, {cores} cores")
    results = {}
    for procs, threads in ((1, cores), (cores, 1)):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        cmd = base + ["--split-worker", "--threads", str(threads)]
        t0 = time.perf_counter()
        ps = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
        outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in ps]
        wall = time.perf_counter() - t0
        rate = sum(o["steps"] / o["s"] for o in outs)
        results[(procs, threads)] = rate
        per = ", ".join(f"{o['s'] / o['steps']:.3f}" for o in outs)
        print(f"  {procs} process(es) x {threads} thread(s): {rate:.3f} steps/s in all "
              f"(per process {per} s/step; wall {wall:.0f} s)")
    one, many = results[(1, cores)], results[(cores, 1)]
    print(f"  {cores} x 1 against 1 x {cores}: {many / one:.2f}x the steps per second")


# ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--backbone", default="vit_tiny")
    p.add_argument("--methods", default=TABLE1_METHODS, help=f"comma list (default {TABLE1_METHODS})")
    p.add_argument("--modes", default="fp32,bf16",
                   help="comma list of train.amp values, each optionally +compile (train.compile), "
                        "e.g. fp32,bf16,bf16+compile (default fp32,bf16)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run, e.g. method.profile=text (repeatable)")
    p.add_argument("--device", default="cpu", help="cpu (default) | cuda | auto")
    p.add_argument("--seed", type=int, default=0, help="the runs' seed (kd_mtl needs that seed's stl run)")
    p.add_argument("--results", default="results",
                   help="results directory of earlier runs some methods load (kd_mtl: stl; default results)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--steps", type=int, default=3, help="timed steps per method, mode and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batches", type=int, default=4, help="distinct real batches cycled through")
    p.add_argument("--ceiling-seconds", type=float, default=0.3, help="time spent per measured matmul shape")
    p.add_argument("--profile", default=None, metavar="METHOD", help="profile this method's step per mode")
    p.add_argument("--profile-top", type=int, default=12, help="with --profile: list the N costliest operators")
    p.add_argument("--split", action="store_true", help="measure 1 x all threads against cores x 1 thread")
    p.add_argument("--split-method", default="baseline")
    p.add_argument("--split-steps", type=int, default=12)
    p.add_argument("--split-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true", help="seconds: smoke preset, baseline + okd, 1 step each")
    args = p.parse_args(argv)
    if args.smoke:
        args.preset, args.rounds, args.steps, args.warmup, args.batches = "smoke", 1, 1, 0, 1
        args.ceiling_seconds = 0.02
        if args.methods == TABLE1_METHODS:
            args.methods = "baseline,okd"
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.split_worker:
        split_worker(args)
        return 0
    if args.split:
        run_split(args, args.threads or os.cpu_count() or 1)
        return 0

    runners = [Runner(m, mode, args) for m in methods for mode in args.modes]
    flops, shapes = {}, {}
    first: dict[Runner, float] = {}
    for r in runners:
        t0 = time.perf_counter()
        r.step()  # the first step: compiling (+compile), oneDNN's kernel choices
        first[r] = time.perf_counter() - t0
        for _ in range(args.warmup - 1):
            r.step()
        with r.counting_mode():
            flops[r], _ = count_flops(r.step)
            rec = MatmulShapes()
            with rec:
                r.step()
        shapes[r] = rec.flops
    for _ in range(args.rounds):
        for r in runners:
            for _ in range(args.steps):
                r.timed_step()

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    sizes = [256] if args.smoke else [1024, 2048]
    peak = {amp: peak_rate(dtypes[amp], sizes, args.ceiling_seconds) for amp in dict.fromkeys(r.amp for r in runners)}
    n_data = 1 if args.smoke else 4
    r0 = runners[0]
    cfg = r0.cfg
    print(f"preset {args.preset}: {args.backbone}, batch {cfg.train.batch_size}, images "
          f"{cfg.dataset.image_size}, device {r0.s.device}, {torch.get_num_threads()} threads; "
          f"median of {args.rounds} x {args.steps} steps after {args.warmup} warm-up steps")
    print("matmul ceilings (GFLOP/s, best square product " + "/".join(map(str, sizes)) + "): "
          + ", ".join(f"{mode} {v:.0f}" for mode, v in peak.items()))
    head = (f"{'method':13} {'mode':12} {'GFLOP':>7} {'s/step':>7} {'GFLOP/s':>8} {'%peak':>6} {'%shapes':>7} "
            f"{'fwd':>6} {'bwd':>6} {'opt':>6} {'other':>6} {'x fp32':>6} {'flop x':>6} {'time x':>6}")
    print(head)
    base_t = {r.mode: statistics.median(r.times) for r in runners if r.name == methods[0]}
    base_f = {r.mode: flops[r] for r in runners if r.name == methods[0]}
    fp32_t = {r.name: statistics.median(r.times) for r in runners if r.mode == "fp32"}
    for r in runners:
        t = statistics.median(r.times)
        gfs = flops[r] / t / 1e9
        dtype = dtypes.get(r.amp, torch.float32)
        sh = shapes_rate(shapes[r], dtype, args.ceiling_seconds) if shapes[r] else float("nan")
        ph = {k: statistics.median(v) for k, v in r.phases.items()}
        speed = fp32_t[r.name] / t if r.name in fp32_t else float("nan")
        fx = flops[r] / base_f[r.mode]
        tx = t / base_t[r.mode]
        print(f"{r.name:13} {r.mode:12} {flops[r] / 1e9:7.1f} {t:7.3f} {gfs:8.1f} "
              f"{100 * gfs / peak[r.amp]:5.0f}% {100 * gfs / sh:6.0f}% "
              f"{ph.get('forward', 0):6.3f} {ph.get('backward', 0):6.3f} {ph.get('optimiser', 0):6.3f} "
              f"{ph.get('other', 0):6.3f} {speed:6.2f} {fx:6.2f} {tx:6.2f}")
    print(f"(flop x, time x: against {methods[0]} in the same mode; time x / flop x is the time per FLOP "
          f"against {methods[0]}'s. fwd/bwd/opt/other: median seconds per step.)")
    eager = {(r.name, r.amp): r for r in runners if "+" not in r.mode}
    for r in runners:
        if "+compile" in r.mode and (r.name, r.amp) in eager:
            e = eager[(r.name, r.amp)]
            t_c, t_e = statistics.median(r.times), statistics.median(e.times)
            over = first[r] - t_c
            gain = t_e - t_c
            be = f"pays off after {over / gain:.0f} steps" if gain > 0 else "never pays off (no faster per step)"
            print(f"{r.name} {r.mode}: first step {first[r]:.1f} s (eager {first[e]:.1f} s), then {t_c:.3f} s "
                  f"against eager {t_e:.3f} s: compiling {be}")

    # data and evaluation, per training image and as a share of an epoch of the preset
    tc = cfg.train
    n_train, n_val = len(r0.s.train_set), len(r0.s.val_set)
    for r in runners:
        if r.name != methods[0]:
            continue
        data = r.data_s_per_image(n_data)
        ev = r.eval_s_per_image(n_data)
        step_img = statistics.median(r.times) / tc.batch_size
        epoch = (n_train // tc.batch_size) * tc.batch_size * step_img + n_train * data + n_val * ev
        print(f"{r.name} {r.mode}: data {1e3 * data:.2f} ms/image ({100 * n_train * data / epoch:.1f}% of an "
              f"epoch), evaluation {1e3 * ev:.2f} ms/image ({100 * n_val * ev / epoch:.1f}% of an epoch: "
              f"{n_val} val images against {n_train} train images at {1e3 * step_img:.1f} ms/image)")

    if args.profile:
        prof_runners = [r for r in runners if r.name == args.profile]
        if not prof_runners:
            raise SystemExit(f"--profile {args.profile}: not among --methods {args.methods}")
        print(f"\nself time per operator class, {args.profile}, seconds per step (torch.profiler):")
        table = {r.mode: profile_classes(r, max(args.steps, 1), args.profile_top) for r in prof_runners}
        classes = sorted({c for d, _ in table.values() for c in d}, key=lambda c: -max(
            d.get(c, 0) for d, _ in table.values()))
        print(f"{'class':12} " + " ".join(f"{m:>8}" for m in table))
        for c in classes:
            print(f"{c:12} " + " ".join(f"{table[m][0].get(c, 0):8.3f}" for m in table))
        print(f"{'(wall)':12} " + " ".join(f"{table[m][1]:8.3f}" for m in table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
