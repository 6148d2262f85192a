"""Power of a paired TOST (α = 0.05, two one-sided t-tests) when the true difference is 0 and the paired
sd equals the margin, by simulation: the figures docs/BENCHMARK_DESIGN.md quotes for the bf16 test.

    python docs/scripts/tost_power.py            # 200,000 studies per n, seed 0
"""
import numpy as np
from scipy import stats

rng = np.random.default_rng(0)
for n in (5, 8, 10, 12, 15):
    x = rng.standard_normal((200_000, n))  # true difference 0, sd 1 (= the margin, in floor units)
    m, se = x.mean(1), x.std(1, ddof=1) / np.sqrt(n)
    t = stats.t.ppf(0.95, n - 1)
    print(f"{n} pairs: power {((m - t * se > -1) & (m + t * se < 1)).mean():.3f}")
