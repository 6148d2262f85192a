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

Verdicts that know their limits (issue 22) build on the same interval:

* power of the two-sided paired t-test (:func:`paired_power`), the smallest
  effect it detects with ``n`` seeds (:func:`min_detectable_effect`) and the
  seeds it needs for a given effect (:func:`seeds_needed`);
* :func:`claim_verdict`: the interval read against the paper's claimed effect
  (*reproduced*, *contradicted*, *smaller than the paper's effect*,
  *underpowered*, *inconclusive*; *too few seeds* as before);
* :func:`holm` and :func:`best_row_test`: Holm's step-down correction of the
  paired t-tests behind an "X is the best row" claim;
* :func:`tost_paired`: two one-sided tests for the equivalence of paired
  values within a margin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping, Sequence

__all__ = ["BETTER", "WORSE", "NO_DIFFERENCE", "TOO_FEW", "MIN_SEEDS", "VERDICTS", "Interval",
           "PairedSummary", "paired", "paired_differences", "t_interval", "verdict", "summarize",
           "POWER", "ALPHA", "paired_power", "min_detectable_effect", "seeds_needed",
           "REPRODUCED", "CONTRADICTED", "SMALLER", "UNDERPOWERED", "INCONCLUSIVE", "CLAIM_VERDICTS",
           "ClaimVerdict", "claim_verdict", "paired_t_pvalue", "holm", "Comparison", "BestRow",
           "best_row_test", "Tost", "tost_paired"]

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


# -- power of the paired t-test ---------------------------------------------------------------
#
# The two-sided one-sample t-test of the paired values d_s (H0: mean 0) at level alpha rejects
# when |t| > c, t = mean / (sd / sqrt(n)), c = t_{1 - alpha/2, n - 1}.  Under a true mean
# ``effect`` the statistic follows a noncentral t with n - 1 degrees of freedom and
# noncentrality sqrt(n) * effect / sd, so
#
#     power = P(T' > c) + P(T' < -c),   T' ~ nct(n - 1, sqrt(n) * effect / sd)
#
# (the formula of statsmodels' TTestPower, the one-sample/paired t, and of G*Power's "difference
# from constant"; computed here with scipy's noncentral t, see paired_power).

#: the power a design is asked to have
POWER = 0.80
#: the test level: 1 - the confidence of the 95% intervals
ALPHA = 0.05


def _check_power_args(sd: float, power: float | None, alpha: float) -> None:
    if not (sd >= 0):  # also NaN
        raise ValueError(f"sd must be a number >= 0, got {sd!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if power is not None and not alpha < power < 1:
        raise ValueError(f"power must lie in (alpha, 1) = ({alpha}, 1), got {power!r}")


def paired_power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` with ``n`` paired seeds to detect a
    true mean difference ``effect`` when the paired differences have standard deviation ``sd``
    (``effect`` and ``sd`` in the same units, e.g. Δ points).

    0 with fewer than 2 seeds (no test); ``alpha`` for a zero effect; 1 for a nonzero effect
    without spread (``sd == 0``)."""
    from scipy.stats import nct, t

    _check_power_args(sd, None, alpha)
    if not math.isfinite(effect):
        raise ValueError(f"effect must be a finite number, got {effect!r}")
    n = int(n)
    if n < 2:
        return 0.0
    if effect == 0:
        return float(alpha)
    if sd == 0:
        return 1.0
    df, nc = n - 1, math.sqrt(n) * abs(float(effect)) / float(sd)
    c = float(t.ppf(1 - alpha / 2, df))
    upper = float(nct.sf(c, df, nc))
    # The far tail P(T' < -c) is negligible here, and scipy's nct.cdf returns NaN for some large
    # noncentralities (df 1, nc 20; df 5, nc 10), which statsmodels' TTestPower passes on: count it 0.
    lower = float(nct.cdf(-c, df, nc))
    return min(1.0, upper + (lower if math.isfinite(lower) else 0.0))


def min_detectable_effect(n: int, sd: float, power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest true mean difference (in the units of ``sd``) that the two-sided paired t-test
    with ``n`` seeds detects with probability ``power`` at level ``alpha``.

    ``inf`` with fewer than 2 seeds, 0 when ``sd == 0``.  Example: 5 seeds, sd 3 Δ points:
    1.682 sd = 5.05 Δ points."""
    from scipy.optimize import brentq

    _check_power_args(sd, power, alpha)
    n = int(n)
    if n < 2:
        return math.inf
    if sd == 0:
        return 0.0
    hi = 1.0
    while paired_power(hi, 1.0, n, alpha) < power:  # power -> 1 as the effect grows (n >= 2)
        hi *= 2.0
    d = brentq(lambda e: paired_power(e, 1.0, n, alpha) - power, 0.0, hi, xtol=1e-12, rtol=1e-12)
    return float(d) * float(sd)


def seeds_needed(effect: float, sd: float, power: float = POWER, alpha: float = ALPHA,
                 max_n: int = 100_000) -> int | None:
    """The fewest paired seeds (>= 2) for which the two-sided paired t-test at level ``alpha``
    detects a true mean difference ``effect`` with probability >= ``power``, given ``sd``.

    None for a zero effect, or when more than ``max_n`` seeds would be needed; 2 when
    ``sd == 0``.  Example: an effect of 1 sd needs 10 seeds (power 0.803; 9 give 0.748)."""
    _check_power_args(sd, power, alpha)
    if effect == 0 or not math.isfinite(effect):
        return None
    if sd == 0:
        return 2
    if paired_power(effect, sd, 2, alpha) >= power:
        return 2
    lo, hi = 2, 4  # power(lo) < target <= power(hi); power grows with n
    while paired_power(effect, sd, hi, alpha) < power:
        if hi >= max_n:
            return None
        lo, hi = hi, min(2 * hi, max_n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if paired_power(effect, sd, mid, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return hi


# -- verdicts against the paper's claim ----------------------------------------------------------

REPRODUCED = "reproduced"
CONTRADICTED = "contradicted"
SMALLER = "smaller than the paper's effect"
UNDERPOWERED = "underpowered"
INCONCLUSIVE = "inconclusive"
CLAIM_VERDICTS = (REPRODUCED, CONTRADICTED, SMALLER, UNDERPOWERED, INCONCLUSIVE, TOO_FEW)


@dataclass(frozen=True)
class ClaimVerdict:
    """An interval of paired values read against a claim and the paper's effect.

    ``direction``: +1 when the claim is that the values are above 0 ("better"), -1 below 0;
    ``sd_used``: the larger of the observed sd and the noise floor (None when neither is known);
    ``seeds_needed``: the paired seeds that detect the paper's effect with the requested power
    at ``sd_used`` (None without a paper effect or an sd); ``min_detectable``: the smallest
    effect the present number of seeds detects with that power (None without an sd);
    ``reason``: one sentence saying why.
    """

    verdict: str
    interval: Interval
    paper_effect: float | None = None
    direction: int = 1
    sd_used: float | None = None
    seeds_needed: int | None = None
    min_detectable: float | None = None
    reason: str = ""


def _claim_direction(claim: str | None, paper_effect: float | None) -> int:
    if claim is None:
        if paper_effect is None:
            return 1
        if paper_effect == 0:
            raise ValueError("claim_verdict: a paper effect of 0 is a claim of no difference; "
                             "test it for equivalence (tost_paired)")
        return 1 if paper_effect > 0 else -1
    if claim not in ("better", "worse"):
        raise ValueError(f"claim must be 'better', 'worse' or None, got {claim!r}")
    direction = 1 if claim == "better" else -1
    if paper_effect is not None and not paper_effect * direction > 0:
        raise ValueError(f"claim {claim!r} with a paper effect of {paper_effect:+g}: the effect must have "
                         "the claim's sign")
    return direction


def claim_verdict(interval: Interval, paper_effect: float | None = None, *, claim: str | None = None,
                  noise_sd: float | None = None, min_n: int = MIN_SEEDS, power: float = POWER,
                  alpha: float | None = None) -> ClaimVerdict:
    """Read the paired interval of Δ against a claim and the paper's own effect.

    ``interval``: the paired values' mean and t-interval (:func:`t_interval`), e.g. Δ of A
    against B per seed; ``paper_effect``: the paper's value of the same quantity (its Δ, in the
    same units), or None; ``claim``: ``"better"`` (the values are claimed above 0) or
    ``"worse"``; by default the sign of ``paper_effect``, else ``"better"``; ``noise_sd``: a
    noise floor for the sd of the paired values (e.g. the sd of Δ between two runs of the same
    configuration), used when larger than the observed sd; ``alpha``: the level of the power
    computation, by default ``1 - interval.confidence``.

    With the claim's direction taken as positive (the interval and the effect are multiplied by
    -1 for a ``"worse"`` claim), ``[lo, hi]`` the interval and ``e`` the paper's effect:

    * ``too few seeds``: fewer than ``min_n`` paired values (as :func:`verdict`);
    * ``reproduced``: ``lo > 0``, the interval lies on the claim's side of 0 (whatever its
      size against the paper's);
    * ``contradicted``: ``hi < 0``, it lies on the other side;
    * otherwise the interval contains 0 (either end included), and
      * ``smaller than the paper's effect``: ``hi < e``, an effect as large as the paper's is
        excluded;
      * ``underpowered``: ``hi >= e``, the interval reaches the paper's effect, so the seeds
        could not tell; ``seeds_needed`` says how many paired seeds would detect ``e`` with
        probability ``power`` (two-sided paired t-test, :func:`seeds_needed`) at ``sd_used``,
        the larger of the observed sd and ``noise_sd``;
      * ``inconclusive``: there is no paper effect to compare with.
    """
    direction = _claim_direction(claim, paper_effect)
    if alpha is None:
        alpha = 1.0 - interval.confidence
    sds = [s for s in (interval.sd, noise_sd) if s is not None]
    sd_used = max(sds) if sds else None
    effect = None if paper_effect is None else abs(float(paper_effect))
    needed = None
    if effect is not None and sd_used is not None:
        needed = seeds_needed(effect, sd_used, power, alpha)
    mde = None
    if sd_used is not None and interval.n >= 2:
        mde = min_detectable_effect(interval.n, sd_used, power, alpha)

    def out(v: str, reason: str) -> ClaimVerdict:
        return ClaimVerdict(v, interval, paper_effect, direction, sd_used, needed, mde, reason)

    side = "above" if direction > 0 else "below"
    if interval.n < max(min_n, 2) or interval.half_width is None:
        return out(TOO_FEW, f"{interval.n} paired value{'s' if interval.n != 1 else ''}; a verdict needs "
                            f"at least {max(min_n, 2)}")
    lo, hi = sorted((direction * interval.lo, direction * interval.hi))
    ci = f"the {interval.confidence:.0%} interval [{interval.lo:+.2f}, {interval.hi:+.2f}]"
    if lo > 0:
        return out(REPRODUCED, f"{ci} lies {side} 0")
    if hi < 0:
        return out(CONTRADICTED, f"{ci} lies {'below' if direction > 0 else 'above'} 0")
    if effect is None:
        return out(INCONCLUSIVE, f"{ci} contains 0 and there is no paper effect to compare with")
    pe = f"{float(paper_effect):+.2f}"
    if hi < effect:
        return out(SMALLER, f"{ci} contains 0 and excludes the paper's {pe}")
    if needed is None:
        more = "no number of seeds up to 100000 would detect it"
    else:
        more = f"{needed} paired seeds would detect {pe} with {power:.0%} power (sd {sd_used:.2f})"
    return out(UNDERPOWERED, f"{ci} contains 0 and reaches the paper's {pe}: {more}")


# -- several comparisons: Holm's correction ------------------------------------------------------

def paired_t_pvalue(values: Sequence[float], alternative: str = "two-sided") -> float:
    """The p-value of the one-sample t-test of paired values against 0 (the paired t-test).

    ``alternative``: ``"two-sided"``, ``"greater"`` (H1: mean > 0) or ``"less"``.  NaN with
    fewer than 2 values; without spread (all values equal) 1 for a zero mean, else 0 on the
    alternative's side and 1 on the other."""
    from scipy.stats import ttest_1samp

    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}")
    xs = [float(v) for v in values]
    if any(math.isnan(x) for x in xs):
        raise ValueError("paired_t_pvalue: NaN among the values")
    if len(xs) < 2:
        return math.nan
    mean = sum(xs) / len(xs)
    if all(x == xs[0] for x in xs):
        if mean == 0:
            return 1.0
        if alternative == "two-sided":
            return 0.0
        return 0.0 if (mean > 0) == (alternative == "greater") else 1.0
    return float(ttest_1samp(xs, 0.0, alternative=alternative).pvalue)


def holm(pvalues):
    """Holm's step-down adjusted p-values.

    With the ``m`` p-values sorted, ``p_(1) <= ... <= p_(m)``, the adjusted
    ``p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``; rejecting where ``p~ < alpha``
    controls the family-wise error rate at ``alpha``.  ``pvalues``: a mapping (returns a dict
    with the same keys) or a sequence (returns a list).  A NaN p-value (no test) counts as 1.

    Written out rather than calling statsmodels' ``multipletests(method="holm")``, which
    runs ``gc.collect()`` on every call (half a second in a process holding networks);
    tests/test_stats.py checks the two agree."""
    keys = list(pvalues) if isinstance(pvalues, Mapping) else None
    ps = [float(pvalues[k]) for k in keys] if keys is not None else [float(p) for p in pvalues]
    if any(not (0 <= p <= 1) for p in ps if not math.isnan(p)):
        raise ValueError(f"p-values must lie in [0, 1], got {ps}")
    ps = [1.0 if math.isnan(p) else p for p in ps]
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return dict(zip(keys, adjusted)) if keys is not None else adjusted


@dataclass(frozen=True)
class Comparison:
    """One paired comparison of a family: mean, number of pairs, raw and Holm-adjusted p-value,
    and whether it is significant in the claimed direction (adjusted p < alpha, mean > 0)."""

    mean: float | None
    n: int
    p: float
    p_holm: float
    significant: bool


@dataclass(frozen=True)
class BestRow:
    """"X is the best row": every comparison of X against a rival, and whether the claim holds
    (every comparison significant after Holm's correction)."""

    comparisons: dict
    alpha: float
    holds: bool


def best_row_test(comparisons: Mapping[Hashable, Mapping[Hashable, float]], alpha: float = ALPHA,
                  alternative: str = "two-sided") -> BestRow:
    """Test "X is better than every rival" with Holm's correction over the rivals.

    ``comparisons``: ``{rival: {seed: d}}``, ``d`` the paired difference of X against the rival
    per seed (e.g. Δ of X minus Δ of the rival, or :func:`paired_differences` of a metric,
    signed so that positive favours X).  Each rival gets a paired t-test (:func:`paired_t_pvalue`
    with ``alternative``), the p-values are adjusted together (:func:`holm`), and a comparison is
    significant when its adjusted p-value is below ``alpha`` and its mean is above 0.  The claim
    holds when every comparison is significant (and there is at least one)."""
    raw, means, ns = {}, {}, {}
    for rival, values in comparisons.items():
        xs = [float(v) for v in values.values()]
        raw[rival] = paired_t_pvalue(xs, alternative)
        means[rival] = sum(xs) / len(xs) if xs else None
        ns[rival] = len(xs)
    adjusted = holm(raw)
    out = {r: Comparison(means[r], ns[r], raw[r], adjusted[r],
                         bool(adjusted[r] < alpha and means[r] is not None and means[r] > 0))
           for r in comparisons}
    return BestRow(out, alpha, bool(out) and all(c.significant for c in out.values()))


# -- equivalence: two one-sided tests ------------------------------------------------------------

@dataclass(frozen=True)
class Tost:
    """Two one-sided tests of paired values for equivalence within ``(low, high)``.

    ``p_low``: the p-value of H0 mean <= low against mean > low; ``p_high``: of H0 mean >= high
    against mean < high; ``p = max(p_low, p_high)``; ``equivalent``: ``p < alpha`` (the same as
    the ``1 - 2 alpha`` t-interval lying inside ``(low, high)``)."""

    mean: float | None
    n: int
    sd: float | None
    low: float
    high: float
    p_low: float
    p_high: float
    p: float
    alpha: float
    equivalent: bool


def tost_paired(values: Sequence[float], margin: float | tuple[float, float],
                alpha: float = ALPHA) -> Tost:
    """Whether paired values ``d_s`` are equivalent to 0 within ``margin`` (TOST).

    ``margin``: ``m > 0`` for the interval ``(-m, m)``, or ``(low, high)`` with ``low < high``.
    With ``se = sd / sqrt(n)`` and ``T`` Student's t with ``n - 1`` degrees of freedom:
    ``p_low = P(T > (mean - low) / se)``, ``p_high = P(T < (mean - high) / se)`` (statsmodels
    ``ttost_paired``).  With fewer than 2 values the p-values are NaN and nothing is equivalent;
    without spread, each p-value is 0 when the mean lies strictly on the alternative's side and 1
    otherwise."""
    from statsmodels.stats.weightstats import ttost_paired

    if isinstance(margin, (tuple, list)):
        low, high = (float(m) for m in margin)
    else:
        if not float(margin) > 0:
            raise ValueError(f"margin must be > 0, got {margin!r}")
        low, high = -float(margin), float(margin)
    if not low < high:
        raise ValueError(f"the equivalence interval needs low < high, got ({low}, {high})")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5), got {alpha!r}")
    xs = [float(v) for v in values]
    if any(math.isnan(x) for x in xs):
        raise ValueError("tost_paired: NaN among the values")
    iv = t_interval(xs)
    if iv.n < 2:
        return Tost(iv.mean, iv.n, None, low, high, math.nan, math.nan, math.nan, alpha, False)
    if iv.sd == 0:
        p_low = 0.0 if iv.mean > low else 1.0
        p_high = 0.0 if iv.mean < high else 1.0
    else:
        import numpy as np

        x = np.asarray(xs, dtype=np.float64)
        _, (_, p_low, _), (_, p_high, _) = ttost_paired(x, np.zeros_like(x), low, high)
        p_low, p_high = float(p_low), float(p_high)
    p = max(p_low, p_high)
    return Tost(iv.mean, iv.n, iv.sd, low, high, p_low, p_high, p, alpha, bool(p < alpha))
