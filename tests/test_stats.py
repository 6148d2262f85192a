"""mtlbench.stats: paired differences, the Student-t interval and verdicts, against hand computation."""
from __future__ import annotations

import math

import pytest

from mtlbench.stats import (BETTER, NO_DIFFERENCE, TOO_FEW, WORSE, Interval, paired, paired_differences,
                            summarize, t_interval, verdict)

# t_{0.975, df} from a printed table of Student's t distribution
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764}


def test_t_interval_by_hand():
    # Δ = [1, 2, 3, 6]: mean 3, deviations -2 -1 0 3, sum of squares 14, sd sqrt(14/3)
    iv = t_interval([1, 2, 3, 6])
    sd = math.sqrt(14 / 3)
    assert iv.n == 4 and iv.mean == pytest.approx(3.0)
    assert iv.sd == pytest.approx(sd)
    assert iv.half_width == pytest.approx(3.182446 * sd / 2, rel=1e-6)  # t_{0.975,3} sd / sqrt(4)
    assert iv.half_width == pytest.approx(3.43738, abs=1e-4)
    assert (iv.lo, iv.hi) == (pytest.approx(3 - 3.43738, abs=1e-4), pytest.approx(3 + 3.43738, abs=1e-4))
    # three values: t_{0.975,2}; two: t_{0.975,1}
    iv3 = t_interval([2.0, 3.0, 4.0])
    assert iv3.half_width == pytest.approx(T975[2] * 1.0 / math.sqrt(3), abs=1e-4)
    iv2 = t_interval([10.625, 17.41883])
    assert iv2.half_width == pytest.approx(T975[1] * (17.41883 - 10.625) / math.sqrt(2) / math.sqrt(2), rel=1e-4)
    # a 90% interval is narrower: t_{0.95,3} = 2.3534
    assert t_interval([1, 2, 3, 6], confidence=0.9).half_width == pytest.approx(2.3534 * sd / 2, rel=1e-4)


def test_t_interval_edge_cases():
    assert t_interval([]) == Interval(None, 0)
    one = t_interval([4.5])
    assert (one.mean, one.n, one.sd, one.half_width, one.lo, one.hi) == (4.5, 1, None, None, None, None)
    flat = t_interval([2.0, 2.0, 2.0])
    assert (flat.sd, flat.half_width, flat.lo, flat.hi) == (0.0, 0.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="NaN"):
        t_interval([1.0, math.nan])
    with pytest.raises(ValueError, match="confidence"):
        t_interval([1.0, 2.0], confidence=1.5)


def test_paired_differences_use_common_seeds_only():
    a = {0: 51.0, 1: 52.5, 2: 50.9, 5: 1.0}
    b = {2: 50.5, 0: 50.0, 1: 51.0, 3: 9.0}
    d = paired_differences(a, b)
    assert list(d) == [0, 1, 2]  # sorted, seeds 3 and 5 unpaired
    assert d == pytest.approx({0: 1.0, 1: 1.5, 2: 0.4})
    assert paired(a, b, lambda x, y: x / y)[0] == pytest.approx(51.0 / 50.0)
    assert paired_differences({}, b) == {}


def test_verdicts():
    assert verdict(t_interval([2.0, 3.0, 4.0])) == BETTER  # [0.52, 5.48]
    assert verdict(t_interval([-2.0, -3.0, -4.0])) == WORSE
    assert verdict(t_interval([1.0, 2.0, 3.0, 6.0])) == NO_DIFFERENCE  # [-0.44, 6.44]
    assert verdict(t_interval([5.0, 6.0])) == TOO_FEW  # two seeds: too few, however clear
    assert verdict(t_interval([5.0])) == TOO_FEW and verdict(t_interval([])) == TOO_FEW
    assert verdict(t_interval([0.0, 0.0, 0.0])) == NO_DIFFERENCE  # [0, 0] contains 0
    assert verdict(t_interval([1.0, 1.0, 1.0])) == BETTER  # no spread, above 0
    # with min_n=2 the two-seed interval decides: 5.5 ± 12.706 * 0.5 = [-0.85, 11.85] contains 0
    assert t_interval([5.0, 6.0]).lo == pytest.approx(5.5 - T975[1] * 0.5, abs=1e-3)
    assert verdict(t_interval([5.0, 6.0]), min_n=2) == NO_DIFFERENCE
    assert verdict(t_interval([5.0, 5.1]), min_n=2) == BETTER  # 5.05 ± 0.64


def test_summarize_and_text():
    s = summarize({0: 2.0, 1: 3.0, 2: 4.0})
    assert s.values == {0: 2.0, 1: 3.0, 2: 4.0} and s.n == 3 and s.mean == pytest.approx(3.0)
    assert s.verdict == BETTER
    assert s.text() == f"+3.00 ± {T975[2] / math.sqrt(3):.2f}"
    assert summarize({7: -1.234}).text() == "-1.23"
    assert summarize({}).text() == "–" and summarize({}).verdict == TOO_FEW


# -- power ------------------------------------------------------------------------------------

from mtlbench.stats import (CONTRADICTED, INCONCLUSIVE, REPRODUCED, SMALLER, UNDERPOWERED,  # noqa: E402
                            best_row_test, claim_verdict, holm, min_detectable_effect, paired_power,
                            paired_t_pvalue, seeds_needed, tost_paired)


def _nct_power(effect_size: float, n: int, alpha: float = 0.05) -> float:
    """Two-sided paired t power straight from the noncentral t: P(T' > c) + P(T' < -c)."""
    from scipy.stats import nct, t

    c = t.ppf(1 - alpha / 2, n - 1)
    nc = effect_size * math.sqrt(n)
    return float(nct.sf(c, n - 1, nc) + nct.cdf(-c, n - 1, nc))


def test_power_against_the_noncentral_t_and_gpower():
    # n = 10 paired seeds, effect 1 sd: G*Power ("t tests - means: difference from constant",
    # dz = 1, two tails, alpha 0.05, n 10) prints power 0.8030969; the noncentral t gives the same
    assert _nct_power(1.0, 10) == pytest.approx(0.8030969, abs=1e-6)
    assert paired_power(1.0, 1.0, 10) == pytest.approx(0.8030969, abs=1e-6)
    # in Δ points: effect 3 with sd 3 is the same design; the sign of the effect does not matter
    assert paired_power(3.0, 3.0, 10) == pytest.approx(0.8030969, abs=1e-6)
    assert paired_power(-3.0, 3.0, 10) == pytest.approx(0.8030969, abs=1e-6)
    for d, n in ((0.5, 5), (2.0, 3), (0.3, 40)):
        assert paired_power(d * 1.7, 1.7, n) == pytest.approx(_nct_power(d, n), abs=1e-9)
    # the textbook rule "about 10 pairs for d = 1 at 80%": 9 pairs fall short (0.748), 10 reach it.
    # The normal approximation n = ((z_0.975 + z_0.8) / d)^2 = (1.95996 + 0.84162)^2 = 7.85 says 8,
    # which the t-test does not reach (power 0.681): the exact answer is 10.
    assert _nct_power(1.0, 9) == pytest.approx(0.748017, abs=1e-6)
    assert _nct_power(1.0, 8) == pytest.approx(0.680834, abs=1e-6)
    assert seeds_needed(1.0, 1.0) == 10 and seeds_needed(3.0, 3.0) == 10
    # edge cases: no test with one seed, alpha at the null, certainty without spread
    assert paired_power(1.0, 1.0, 1) == 0.0
    assert paired_power(0.0, 1.0, 10) == pytest.approx(0.05)
    assert paired_power(0.1, 0.0, 3) == 1.0
    with pytest.raises(ValueError, match="sd"):
        paired_power(1.0, -1.0, 5)
    with pytest.raises(ValueError, match="effect"):
        paired_power(math.nan, 1.0, 5)


def test_seeds_needed_is_the_first_n_that_reaches_the_power():
    for effect, sd in ((1.3, 3.0), (6.2, 3.0), (2.0, 3.0), (0.5, 0.4)):
        n = seeds_needed(effect, sd)
        assert _nct_power(effect / sd, n) >= 0.8
        if n > 2:
            assert _nct_power(effect / sd, n - 1) < 0.8
    # the paper's smallest effect (+1.3 Δ) at the quick preset's noise floor (sd 3): 44 seeds
    assert seeds_needed(1.3, 3.0) == 44
    assert seeds_needed(6.2, 3.0) == 5
    assert seeds_needed(0.0, 3.0) is None  # no effect: no number of seeds
    assert seeds_needed(1.0, 0.0) == 2  # no spread: two seeds decide
    assert seeds_needed(0.001, 3.0, max_n=1000) is None  # beyond max_n
    assert seeds_needed(1.0, 1.0, power=0.9) == 13  # G*Power: dz 1, power 0.9 -> n 13
    assert _nct_power(1.0, 13) >= 0.9 > _nct_power(1.0, 12)


def test_min_detectable_effect():
    # n = 10 at 80%: the effect size whose power is exactly 0.8 (0.99600 sd, just under the 1 sd of
    # power 0.8031 above), scaled by sd
    d10 = min_detectable_effect(10, 1.0)
    assert _nct_power(d10, 10) == pytest.approx(0.8, abs=1e-9)
    assert d10 == pytest.approx(0.99600, abs=1e-5)
    assert min_detectable_effect(10, 3.0) == pytest.approx(3 * d10, rel=1e-9)
    # five seeds at the noise floor sd 3: 1.68200 sd = 5.046 Δ points
    assert min_detectable_effect(5, 3.0) == pytest.approx(5.046, abs=1e-3)
    assert _nct_power(min_detectable_effect(5, 3.0) / 3.0, 5) == pytest.approx(0.8, abs=1e-9)
    # many seeds: the normal approximation (z_0.975 + z_0.8) / sqrt(n) = 2.80158 / sqrt(n)
    assert min_detectable_effect(2000, 1.0) == pytest.approx(2.80158 / math.sqrt(2000), rel=2e-3)
    assert min_detectable_effect(1, 1.0) == math.inf
    assert min_detectable_effect(4, 0.0) == 0.0
    # two seeds: t_{0.975,1} = 12.7 makes the detectable effect huge (about 15.6 sd), but finite; the
    # far tail is negligible there (and NaN in scipy), so the upper tail alone is 0.8
    from scipy.stats import nct, t
    d2 = min_detectable_effect(2, 1.0)
    assert 10 < d2 < 20
    assert nct.sf(t.ppf(0.975, 1), 1, d2 * math.sqrt(2)) == pytest.approx(0.8, abs=1e-9)


# -- verdicts against the paper --------------------------------------------------------------------

def _iv(lo: float, hi: float, n: int = 5, sd: float = 1.0) -> Interval:
    return Interval((lo + hi) / 2, n, sd, (hi - lo) / 2)


def test_claim_verdicts_each_side():
    # CI above 0: reproduced, whatever its size against the paper's
    assert claim_verdict(_iv(0.2, 3.0), 6.2).verdict == REPRODUCED
    assert claim_verdict(_iv(0.2, 3.0), None).verdict == REPRODUCED
    # below 0: contradicted
    assert claim_verdict(_iv(-3.0, -0.1), 1.3).verdict == CONTRADICTED
    # contains 0 and ends below the paper's effect: smaller than the paper's
    v = claim_verdict(_iv(-1.0, 1.2), 1.3)
    assert v.verdict == SMALLER and "excludes the paper's +1.30" in v.reason
    # contains 0 and reaches the paper's effect: underpowered, with the seeds that would tell
    v = claim_verdict(_iv(-1.0, 1.5), 1.5)  # (binary-exact ends: mean 0.25, half-width 1.25)
    assert v.interval.hi == 1.5
    assert v.verdict == UNDERPOWERED  # the bound equal to the effect reaches it
    assert v.seeds_needed == seeds_needed(1.5, 1.0) == 6 and v.sd_used == 1.0
    assert claim_verdict(_iv(-1.0, 2.5), 1.3).verdict == UNDERPOWERED
    # no paper effect: inconclusive
    assert claim_verdict(_iv(-1.0, 1.3), None).verdict == INCONCLUSIVE
    # either end at 0 counts as containing 0 (as verdict())
    assert claim_verdict(_iv(0.0, 2.0), 1.0).verdict == UNDERPOWERED
    assert claim_verdict(_iv(-2.0, 0.0), 1.0).verdict == SMALLER
    # too few seeds, as before; with a noise floor it still says how many would do
    assert claim_verdict(t_interval([5.0, 6.0]), 1.3).verdict == TOO_FEW
    assert claim_verdict(t_interval([]), 1.3).verdict == TOO_FEW
    few = claim_verdict(t_interval([]), 1.3, noise_sd=3.0)
    assert few.verdict == TOO_FEW and few.seeds_needed == 44 and few.min_detectable is None


def test_claim_verdict_of_a_worse_claim_is_mirrored():
    # the paper claims a negative Δ (e.g. a method hurts): the reading is mirrored
    assert claim_verdict(_iv(-3.0, -0.1), -1.3).verdict == REPRODUCED
    assert claim_verdict(_iv(0.1, 3.0), -1.3).verdict == CONTRADICTED
    assert claim_verdict(_iv(-1.2, 1.0), -1.3).verdict == SMALLER
    assert claim_verdict(_iv(-1.5, 1.0), -1.5).verdict == UNDERPOWERED  # the end at -1.5 reaches it
    assert claim_verdict(_iv(-3.0, -0.1), None, claim="worse").verdict == REPRODUCED
    assert claim_verdict(_iv(-3.0, -0.1), None, claim="worse").direction == -1
    with pytest.raises(ValueError, match="sign"):
        claim_verdict(_iv(-1, 1), -1.3, claim="better")
    with pytest.raises(ValueError, match="equivalence"):
        claim_verdict(_iv(-1, 1), 0.0)


def test_underpowered_uses_the_larger_of_observed_sd_and_noise_floor():
    # Δ = [1, 2, 3, 6]: [-0.44, +6.44] contains 0 and reaches +6.2; observed sd sqrt(14/3) = 2.160
    iv = t_interval([1, 2, 3, 6])
    v = claim_verdict(iv, 6.2)
    assert v.verdict == UNDERPOWERED and v.sd_used == pytest.approx(math.sqrt(14 / 3))
    assert v.seeds_needed == seeds_needed(6.2, math.sqrt(14 / 3)) == 4
    assert _nct_power(6.2 / math.sqrt(14 / 3), 4) >= 0.8 > _nct_power(6.2 / math.sqrt(14 / 3), 3)
    # a noise floor of 3 Δ points is larger: it decides, and more seeds are needed
    v = claim_verdict(iv, 6.2, noise_sd=3.0)
    assert v.sd_used == 3.0 and v.seeds_needed == seeds_needed(6.2, 3.0) == 5
    assert "5 paired seeds would detect +6.20 with 80% power (sd 3.00)" in v.reason
    assert v.min_detectable == pytest.approx(min_detectable_effect(4, 3.0))
    # a noise floor below the observed sd does not lower it
    assert claim_verdict(iv, 6.2, noise_sd=1.0).sd_used == pytest.approx(math.sqrt(14 / 3))
    # the old verdict is unchanged for the same interval
    assert verdict(iv) == NO_DIFFERENCE


# -- Holm ----------------------------------------------------------------------------------------

def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01 = 0.03, 2 * 0.03 = 0.06, 1 * 0.04 = 0.04 -> running max
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    # capped at 1: 2 * 0.5 = 1.0, then max(1.0, 0.6) = 1.0
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([0.02]) == pytest.approx([0.02])  # one test: unchanged
    assert holm([0.01, math.nan]) == pytest.approx([0.02, 1.0])  # no test counts as p = 1
    assert holm([]) == []
    with pytest.raises(ValueError, match="p-values"):
        holm([0.1, 1.5])


def test_paired_t_pvalue_by_hand():
    # [2, 3, 4]: mean 3, sd 1, t = 3 sqrt(3) = 5.19615, df 2.  Student t with 2 df has
    # F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided p = 1 - t / sqrt(2 + t^2) = 1 - 5.19615 / sqrt(29)
    t = 3 * math.sqrt(3)
    assert paired_t_pvalue([2, 3, 4]) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert paired_t_pvalue([2, 3, 4]) == pytest.approx(0.035098, abs=1e-6)
    assert paired_t_pvalue([2, 3, 4], "greater") == pytest.approx(0.035098 / 2, abs=1e-6)
    assert paired_t_pvalue([2, 3, 4], "less") == pytest.approx(1 - 0.035098 / 2, abs=1e-6)
    assert math.isnan(paired_t_pvalue([1.0]))
    assert paired_t_pvalue([1.0, 1.0]) == 0.0 and paired_t_pvalue([0.0, 0.0]) == 1.0
    assert paired_t_pvalue([1.0, 1.0], "less") == 1.0


def _t3_cdf(t: float) -> float:
    """Student t with 3 degrees of freedom, closed form: 1/2 + (x / (1 + x^2) + atan x) / pi, x = t / sqrt 3."""
    x = t / math.sqrt(3)
    return 0.5 + (x / (1 + x * x) + math.atan(x)) / math.pi


def test_best_row_with_holm_by_hand():
    # X against rival a: [2, 3, 4] -> p_a = 0.035098 (above); against b: [1, 2, 3, 6] -> t = 3 / (sqrt(14/3) / 2)
    # = 2.77746, df 3, p_b = 2 (1 - F3(t)).  Holm: the smaller (p_a) times 2, the larger times 1, running max.
    t_b = 3 / (math.sqrt(14 / 3) / 2)
    p_b = 2 * (1 - _t3_cdf(t_b))
    p_a = 1 - 3 * math.sqrt(3) / math.sqrt(29)
    assert p_b == pytest.approx(0.069137, abs=1e-6) and p_a < p_b  # between t_{0.95,3} and t_{0.975,3}
    res = best_row_test({"a": {0: 2, 1: 3, 2: 4}, "b": {0: 1, 1: 2, 2: 3, 3: 6}})
    assert res.comparisons["a"].p == pytest.approx(p_a, rel=1e-9)
    assert res.comparisons["b"].p == pytest.approx(p_b, rel=1e-6)
    assert res.comparisons["a"].p_holm == pytest.approx(2 * p_a, rel=1e-9)  # 0.0702
    assert res.comparisons["b"].p_holm == pytest.approx(max(2 * p_a, p_b), rel=1e-6)
    # uncorrected, rival a would be beaten at 0.05; after Holm neither is: the claim does not hold
    assert not res.comparisons["a"].significant and not res.holds
    # two clear wins hold; a clear loss is significant but not in X's favour
    clear = {"a": {0: 5.0, 1: 5.1, 2: 5.2, 3: 4.9}, "b": {0: 3.0, 1: 3.2, 2: 3.1, 3: 2.9}}
    assert best_row_test(clear).holds
    lost = {"a": {0: 5.0, 1: 5.1, 2: 5.2, 3: 4.9}, "b": {0: -3.0, 1: -3.2, 2: -3.1, 3: -2.9}}
    res = best_row_test(lost)
    assert res.comparisons["b"].p_holm < 0.05 and not res.comparisons["b"].significant and not res.holds
    assert not best_row_test({}).holds


# -- TOST ------------------------------------------------------------------------------------------

def test_tost_by_hand():
    # Δ = [1, 2, 3, 6], margin 5: mean 3, se = sqrt(14/3) / 2 = 1.080123, df 3
    # lower test: t = (3 + 5) / se = 7.40656, p = 1 - F3(t); upper: t = (3 - 5) / se = -1.85164, p = F3(t)
    se = math.sqrt(14 / 3) / 2
    p_low = 1 - _t3_cdf(8 / se)
    p_high = _t3_cdf(-2 / se)
    assert p_high == pytest.approx(0.08058, abs=1e-5)
    r = tost_paired([1, 2, 3, 6], 5.0)
    assert (r.low, r.high, r.n, r.mean) == (-5.0, 5.0, 4, pytest.approx(3.0))
    assert r.p_low == pytest.approx(p_low, rel=1e-6) and r.p_high == pytest.approx(p_high, rel=1e-6)
    assert r.p == pytest.approx(p_high, rel=1e-6) and not r.equivalent  # 0.081 >= 0.05
    # a margin of 7: (3 - 7) / se = -3.70328, p = F3(-3.70328) = 0.01710 < 0.05: equivalent
    r7 = tost_paired([1, 2, 3, 6], 7.0)
    assert r7.p == pytest.approx(_t3_cdf(-4 / se), rel=1e-6) and r7.p == pytest.approx(0.017100, abs=1e-6)
    assert r7.equivalent
    # equivalence at alpha = the 90% t-interval inside the margins: [3 - 2.3534 se, 3 + 2.3534 se] = [0.458, 5.542]
    hi90 = t_interval([1, 2, 3, 6], confidence=0.9).hi
    assert tost_paired([1, 2, 3, 6], hi90 + 1e-6).equivalent and not tost_paired([1, 2, 3, 6], hi90 - 1e-6).equivalent
    # asymmetric bounds
    ra = tost_paired([1, 2, 3, 6], (-1.0, 8.0))
    assert ra.p_low == pytest.approx(1 - _t3_cdf(4 / se), rel=1e-6)
    assert ra.p_high == pytest.approx(_t3_cdf(-5 / se), rel=1e-6)


def test_tost_edge_cases():
    assert tost_paired([0.5, 0.5, 0.5], 1.0).equivalent  # no spread, inside
    assert not tost_paired([1.5, 1.5, 1.5], 1.0).equivalent  # no spread, outside
    one = tost_paired([0.1], 1.0)
    assert one.n == 1 and math.isnan(one.p) and not one.equivalent
    with pytest.raises(ValueError, match="margin"):
        tost_paired([1, 2], 0.0)
    with pytest.raises(ValueError, match="low < high"):
        tost_paired([1, 2], (1.0, -1.0))


def test_power_matches_statsmodels_and_survives_scipy_nans():
    from statsmodels.stats.power import TTestPower

    for d, n in ((1.0, 10), (0.5, 5), (2.0, 3), (0.3, 40), (1.5, 2)):
        assert paired_power(d, 1.0, n) == pytest.approx(TTestPower().power(d, n, 0.05), abs=1e-12)
    # df 1, noncentrality 20 sqrt(2): scipy's nct.cdf of the far tail is NaN (so is TTestPower's power);
    # the far tail is negligible and the power is the upper tail alone
    from scipy.stats import nct, t
    assert math.isnan(TTestPower().power(20.0, 2, 0.05))
    assert paired_power(20.0, 1.0, 2) == pytest.approx(nct.sf(t.ppf(0.975, 1), 1, 20 * math.sqrt(2)), abs=1e-12)


def test_holm_agrees_with_statsmodels(monkeypatch):
    """The written-out Holm against statsmodels' multipletests (the oracle) on random p-values,
    ties and p-values near 1 included.  multipletests ends with a ``gc.collect()`` (about 0.6 s
    per call in a full suite's heap) that has no bearing on its result, so it is a no-op here."""
    import gc
    import random

    from statsmodels.stats.multitest import multipletests

    monkeypatch.setattr(gc, "collect", lambda *a, **k: 0)

    rng = random.Random(0)
    for trial in range(30):
        m = 1 + trial % 7
        ps = [round(rng.random() ** 3, 2 if trial % 3 == 0 else 6) for _ in range(m)]  # ties when rounded
        assert holm(ps) == pytest.approx(list(multipletests(ps, method="holm")[1]), abs=1e-12)
