"""Data loading of one quick-preset epoch: items kept in memory against read from disk every time.

    .venv/bin/python benchmarks/bench_data.py [--epochs 3] [--batch-size 16]

Iterates the quick preset's train split with the trainer's DataLoader settings (no model) and
prints seconds per epoch for the first epoch (reads from disk, fills the cache) and the later
ones, with the in-memory copy (the default) and with ``MTLBENCH_DATA_MEMORY_MB=0``.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from torch.utils.data import DataLoader, RandomSampler


def epochs(ds, n: int, bs: int) -> list[float]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        for _batch in DataLoader(ds, batch_size=bs, sampler=RandomSampler(ds, generator=g)):
            pass
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from mtlbench.config import resolve
    from mtlbench.registry import DATASETS

    cfg = resolve(preset="quick")
    plugin = DATASETS.get("synthetic")(cfg.dataset)
    plugin.data_dir()
    for label, budget in (("in memory", None), ("from disk", "0")):
        if budget is None:
            os.environ.pop("MTLBENCH_DATA_MEMORY_MB", None)
        else:
            os.environ["MTLBENCH_DATA_MEMORY_MB"] = budget
        ds = plugin.split("train")
        times = epochs(ds, args.epochs, args.batch_size)
        print(f"{label:10s} {len(ds)} images: epoch 1 {times[0]:.3f} s, later epochs "
              f"{sum(times[1:]) / max(len(times) - 1, 1):.3f} s each")


if __name__ == "__main__":
    main()
