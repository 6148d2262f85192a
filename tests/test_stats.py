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
