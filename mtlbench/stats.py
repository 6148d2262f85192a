"""Seed statistics for comparing two rows: paired differences, a Student-t interval, a verdict.

Two configurations trained with the same seeds share their data order and
initialisation draws, so their results are compared *per seed* (paired): for
each seed ``s`` both have, ``d_s = f(A_s, B_s)`` (a difference, or the paper's
Δ of ``A_s`` against ``B_s``).  Over the ``n`` paired seeds::

    mean  = sum(d_s) / n
    sd    = sqrt(sum((d_s - mean)^2) / (n - 1))          (sample standard deviation)
    half  = t_{1 - alpha/2, n - 1} * sd / sqrt(n)        (Student t, alpha = 1 - confidence)
    CI    = [mean - half, mean + half]

The verdict reads the interval: ``better`` when it lies above 0, ``worse``
below 0, ``no significant difference`` when it contains 0, and ``too few
seeds`` with fewer than :data:`MIN_SEEDS` paired seeds (the interval is still
computed from 2 seeds, but a 2-seed t-interval is too wide and too fragile to
decide on: t_{0.975,1} = 12.7).

Example::

    from mtlbench.stats import paired_differences, summarize

    diffs = paired_differences({0: 51.0, 1: 52.5, 2: 50.9}, {0: 50.2, 1: 51.0, 2: 50.5})
    s = summarize(diffs)            # s.mean, s.half_width, s.lo, s.hi, s.verdict
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping, Sequence

__all__ = ["BETTER", "WORSE", "NO_DIFFERENCE", "TOO_FEW", "MIN_SEEDS", "VERDICTS", "Interval",
           "PairedSummary", "paired", "paired_differences", "t_interval", "verdict", "summarize"]

BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no significant difference"
TOO_FEW = "too few seeds"
VERDICTS = (BETTER, WORSE, NO_DIFFERENCE, TOO_FEW)

#: fewest paired seeds a verdict is drawn from
MIN_SEEDS = 3


def paired(a: Mapping[Hashable, Any], b: Mapping[Hashable, Any],
           fn: Callable[[Any, Any], float]) -> dict[Hashable, float]:
    """``{seed: fn(a[seed], b[seed])}`` over the seeds both have, in sorted seed order."""
    return {s: float(fn(a[s], b[s])) for s in sorted(set(a) & set(b))}


def paired_differences(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> dict[Hashable, float]:
    """``{seed: a[seed] - b[seed]}`` over the seeds both have."""
    return paired(a, b, lambda x, y: float(x) - float(y))


@dataclass(frozen=True)
class Interval:
    """Mean and two-sided Student-t confidence interval of a sample.

    ``sd``, ``half_width``, ``lo`` and ``hi`` are None with fewer than two
    values (no spread to estimate)."""

    mean: float | None
    n: int
    sd: float | None = None
    half_width: float | None = None
    confidence: float = 0.95

    @property
    def lo(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def hi(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The mean of ``values`` and its Student-t ``confidence`` interval (n - 1 degrees of freedom)."""
    from scipy.stats import t

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    xs = [float(v) for v in values]
    if any(math.isnan(x) for x in xs):
        raise ValueError("t_interval: NaN among the values")
    n = len(xs)
    if n == 0:
        return Interval(None, 0, confidence=confidence)
    mean = sum(xs) / n
    if n == 1:
        return Interval(mean, 1, confidence=confidence)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(t.ppf(1 - (1 - confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, n, sd, half, confidence)


def verdict(interval: Interval, min_n: int = MIN_SEEDS) -> str:
    """``better`` (interval above 0), ``worse`` (below 0), ``no significant difference``
    (contains 0, either end included), or ``too few seeds`` (fewer than ``min_n`` values)."""
    if interval.n < max(min_n, 2) or interval.half_width is None:
        return TOO_FEW
    if interval.lo > 0:
        return BETTER
    if interval.hi < 0:
        return WORSE
    return NO_DIFFERENCE


@dataclass(frozen=True)
class PairedSummary:
    """Per-seed values of a paired comparison, their mean, interval and verdict."""

    values: dict[Hashable, float] = field(default_factory=dict)
    interval: Interval = Interval(None, 0)
    verdict: str = TOO_FEW

    @property
    def n(self) -> int:
        return self.interval.n

    @property
    def mean(self) -> float | None:
        return self.interval.mean

    @property
    def sd(self) -> float | None:
        return self.interval.sd

    @property
    def half_width(self) -> float | None:
        return self.interval.half_width

    @property
    def lo(self) -> float | None:
        return self.interval.lo

    @property
    def hi(self) -> float | None:
        return self.interval.hi

    def text(self, digits: int = 2) -> str:
        """``+1.23 ± 0.45`` (``+1.23`` from one seed, ``–`` from none)."""
        if self.mean is None:
            return "–"
        s = f"{self.mean:+.{digits}f}"
        return s if self.half_width is None else f"{s} ± {self.half_width:.{digits}f}"


def summarize(values: Mapping[Hashable, float], confidence: float = 0.95,
              min_n: int = MIN_SEEDS) -> PairedSummary:
    """Mean, t-interval and verdict of per-seed paired values ``{seed: d}``."""
    vals = {k: float(v) for k, v in values.items()}
    iv = t_interval(list(vals.values()), confidence)
    return PairedSummary(vals, iv, verdict(iv, min_n))
