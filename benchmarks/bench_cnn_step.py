"""Training-step time of the DeepLabV3 backbones: fp32 vs bf16 autocast + channels_last.

Decides ``default_amp`` / ``default_channels_last`` of ``deeplabv3`` and
``deeplabv3_mtan`` (backbones/deeplab.py).  One process, the same model per
backbone; the modes are timed in alternating blocks (so drift on a shared
machine hits all of them), each block ``--steps`` timed steps (the first round
after one warm-up step) of the equal-weight baseline at NYUv2 head sizes
(13/1/3 channels): forward under autocast, float32 losses, backward, AdamW
step, as the trainer does.  Printed: the fastest wall time per step and the
median process CPU time per step (all threads), per image and as speed-ups.

    .venv/bin/python benchmarks/bench_cnn_step.py                    # 288x384, batch 2, both backbones
    .venv/bin/python benchmarks/bench_cnn_step.py --size 64 64 --rounds 1 --backbones deeplabv3
    .venv/bin/python benchmarks/bench_cnn_step.py --modes fp32,bf16,fp32_cl,bf16_cl   # separate the two effects
    .venv/bin/python benchmarks/bench_cnn_step.py --modes bf16_cl+full_aspp,bf16_cl   # ASPP's dead taps computed

A mode's ``+full_aspp`` suffix computes ASPP's dilated convolutions in full,
kernel taps that read only zero padding included (as before
``SameDilatedConv2d``; the same outputs), to measure what skipping them saves.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from mtlbench.backbones.deeplab import SameDilatedConv2d
from mtlbench.registry import BACKBONES, METHODS
from mtlbench.tasks import Depth, Normal, SemSeg
from mtlbench.config import TrainConfig
from mtlbench.trainer import Optimisation, optimizer_step

MODES = {"fp32": (False, False), "bf16": (True, False), "fp32_cl": (False, True), "bf16_cl": (True, True)}


def make_batch(b: int, h: int, w: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(b, 3, h, w, generator=g),
             "semseg": torch.randint(-1, 13, (b, h, w), generator=g),
             "depth": torch.rand(b, 1, h, w, generator=g) + 0.1,
             "normal": F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)}
    return {k: v.to(device) for k, v in batch.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def full_aspp(on: bool):
    """Compute ASPP's dilated convolutions with every kernel tap (``nn.Conv2d``'s forward)."""
    saved = SameDilatedConv2d.forward
    if on:
        SameDilatedConv2d.forward = torch.nn.Conv2d.forward
    try:
        yield
    finally:
        SameDilatedConv2d.forward = saved


def parse_mode(mode: str) -> tuple[str, bool]:
    """``"bf16_cl+full_aspp"`` -> ``("bf16_cl", True)``."""
    base, _, extra = mode.partition("+")
    if base not in MODES or extra not in ("", "full_aspp"):
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}, each optionally +full_aspp")
    return base, extra == "full_aspp"


def time_block(method, batch, device, mode: str, steps: int, warmup: bool) -> list[tuple[float, float]]:
    """``(wall_s, cpu_s)`` of each timed step; ``cpu_s`` is the process's CPU time (all threads)."""
    base, full = parse_mode(mode)
    with full_aspp(full):
        return _time_block(method, batch, device, base, steps, warmup)


def _time_block(method, batch, device, mode: str, steps: int, warmup: bool) -> list[tuple[float, float]]:
    bf16, cl = MODES[mode]
    fmt = torch.channels_last if cl else torch.contiguous_format
    method.to(memory_format=fmt)
    batch = dict(batch, image=batch["image"].contiguous(memory_format=fmt))
    optim = Optimisation(method, TrainConfig(lr=1e-4), 10_000)  # the trainer's optimisers
    times = []
    for i in range(steps + int(warmup)):  # a warm-up step: allocator, oneDNN primitives
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        optimizer_step(method, optim, batch, device, "bf16" if bf16 else "fp32")
        sync(device)
        if i or not warmup:
            times.append((time.perf_counter() - t0, time.process_time() - c0))
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default="deeplabv3,deeplabv3_mtan")
    p.add_argument("--modes", default="fp32,bf16_cl",
                   help=f"comma list of {', '.join(MODES)}, each optionally +full_aspp")
    p.add_argument("--size", type=int, nargs=2, default=(288, 384), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=1, help="timed steps per block")
    p.add_argument("--rounds", type=int, default=2, help="alternating blocks per mode")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    modes = args.modes.split(",")
    for m in modes:
        try:
            parse_mode(m)
        except ValueError as exc:
            p.error(str(exc))
    tasks = {"semseg": SemSeg(13), "depth": Depth(), "normal": Normal()}
    h, w = args.size
    batch = make_batch(args.batch, h, w, device)
    print(f"device={device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"{h}x{w}, batch {args.batch}, {args.steps} timed steps x {args.rounds} round(s) per mode")
    for name in args.backbones.split(","):
        factory_cls = BACKBONES.get(name)
        method_cls = METHODS.get("baseline")
        torch.manual_seed(0)
        method = method_cls(method_cls.Config(), tasks, factory_cls(factory_cls.Config(), tasks)).to(device)
        method.train()
        per_mode: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
        for r in range(args.rounds):
            for m in modes:
                per_mode[m] += time_block(method, batch, device, m, args.steps, warmup=r == 0)
        # Wall: the fastest step (other load on a shared machine only adds time);
        # CPU: the median process CPU time, which being descheduled does not inflate.
        wall = {m: min(w for w, _ in per_mode[m]) for m in modes}
        cpu = {m: statistics.median(c for _, c in per_mode[m]) for m in modes}
        ref = modes[0]
        for m in modes:
            print(f"{name:15s} {m:18s} wall {wall[m]:7.2f} s/step = {wall[m] / args.batch:6.2f} s/image "
                  f"({wall[ref] / wall[m]:4.2f}x vs {ref})   cpu {cpu[m]:7.2f} s/step = "
                  f"{cpu[m] / args.batch:6.2f} s/image ({cpu[ref] / cpu[m]:4.2f}x)   steps wall/cpu: "
                  + ", ".join(f"{w:.1f}/{c:.1f}" for w, c in per_mode[m]), flush=True)
        del method


if __name__ == "__main__":
    main()
