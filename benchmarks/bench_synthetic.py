"""Throughput of the synthetic scene generator on one CPU core.

Prints images/s at 96x128 (the default size) per variant, rendering only and
end to end (render + write the MTAN .npy files, what ``mtlbench data synth``
does).  Each figure is the best of ``--repeats`` runs by wall clock, and the
same runs' rate by this process's CPU time, which is the steadier figure on a
machine shared with other jobs::

    python benchmarks/bench_synthetic.py                  # both variants
    python benchmarks/bench_synthetic.py --variant nyuv2 --n 500 --repeats 3
"""
from __future__ import annotations

import os

# One core: set before numpy/torch start their thread pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mtlbench.data import synthetic  # noqa: E402


def _timed(fn, n: int, repeats: int) -> tuple[float, float]:
    """(best wall-clock images/s, CPU-time images/s of all runs)."""
    best, cpu = 0.0, 0.0
    for r in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(r)
        best = max(best, n / (time.perf_counter() - t0))
        cpu += time.process_time() - c0
    return best, n * repeats / cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=(*synthetic.VARIANTS, "all"), default="all")
    p.add_argument("--n", type=int, default=200, help="images per run")
    p.add_argument("--repeats", type=int, default=5, help="runs per figure (the best is printed)")
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--tmp", metavar="DIR", default=None,
                   help="where the end-to-end runs write (default: the system temp dir); writing "
                        "costs what the filesystem costs, e.g. compare with --tmp /dev/shm")
    args = p.parse_args()
    torch.set_num_threads(1)
    variants = synthetic.VARIANTS if args.variant == "all" else (args.variant,)
    h, w, n = args.height, args.width, args.n
    print(f"synthetic generator at {h}x{w}, 1 thread, numpy {np.__version__}, "
          f"best of {args.repeats} x {n} images; writing to {args.tmp or tempfile.gettempdir()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    for variant in variants:
        synthetic.render(variant, 0, h, w)  # warm-up: caches, imports

        def render(r: int) -> None:
            for i in range(n):
                synthetic.render(variant, synthetic.image_rng(r, variant, "train", i), h, w)

        tmp = tempfile.mkdtemp(dir=args.tmp)

        def write(r: int) -> None:
            synthetic.generate(variant, os.path.join(tmp, str(r)), n - 1, 1, h, w, seed=r)

        try:
            render_rate = _timed(render, n, args.repeats)
            write_rate = _timed(write, n, args.repeats)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"{variant:>10}: render only {render_rate[0]:6.1f} images/s ({render_rate[1]:6.1f} by CPU time); "
              f"rendered + written {write_rate[0]:6.1f} images/s ({write_rate[1]:6.1f} by CPU time)")


if __name__ == "__main__":
    main()
