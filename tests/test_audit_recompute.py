"""The claims audit's recomputations against closed forms (no files involved).

Tolerances: 1e-12 for exact arithmetic in float64; slopes and r^2 of lines through exact points
1e-9 (``scipy.stats.linregress``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tl_spec.audit.common import check, pct_change, ppl_slope, rho_eff, seed_ratios
from tl_spec.errors import TLSpecError


def test_slope_of_an_exact_line_and_of_a_known_scatter():
    fit = ppl_slope([0.0, 0.01, 0.02, 0.05, 0.1, 0.2], [2 + 300 * s for s in
                                                        (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)])
    assert fit.slope == pytest.approx(300.0, abs=1e-9)
    assert fit.intercept == pytest.approx(2.0, abs=1e-9) and fit.r_squared == pytest.approx(1.0, abs=1e-12)
    # x = 0..3, y = 0, 2, 2, 4: cov = 6, var_x = 5, var_y = 8 -> slope 6/5, r^2 = 36/40
    fit = ppl_slope([0, 1, 2, 3], [0.0, 2.0, 2.0, 4.0])
    assert fit.slope == pytest.approx(1.2, abs=1e-12) and fit.r_squared == pytest.approx(0.9, abs=1e-12)
    assert fit.n == 4


def test_slope_refuses_short_or_non_finite_curves():
    for xs, ys in (([0.0, 1.0], [1.0, 2.0]), ([0, 1, 2], [1.0, math.nan, 2.0]), ([0, 1, 2], [1.0, 2.0])):
        with pytest.raises(TLSpecError, match="PPL-vs-sigma"):
            ppl_slope(xs, ys)


def test_seed_ratio_aggregations_closed_form():
    # ratios 10, 20, 30; ratio of means (10+40+90)/(1+2+3) = 140/6
    agg = seed_ratios([10.0, 40.0, 90.0], [1.0, 2.0, 3.0])
    assert agg.per_seed == [10.0, 20.0, 30.0]
    assert agg.ratio_of_means == pytest.approx(140 / 6, abs=1e-12)
    assert agg.median_of_ratios == 20.0 and agg.mean_of_ratios == pytest.approx(20.0, abs=1e-12)
    # Appendix B's own seed values (Table 11): 5,834x / 9,515x / ~13,000x
    paper = seed_ratios([451342, 391573, 440977], [16.73, 156.96, 46.35])
    assert paper.ratio_of_means == pytest.approx(5834.81, abs=0.01)
    assert paper.median_of_ratios == pytest.approx(440977 / 46.35, abs=1e-9)
    assert paper.mean_of_ratios == pytest.approx(np.mean([451342 / 16.73, 391573 / 156.96,
                                                          440977 / 46.35]), abs=1e-9)
    with pytest.raises(TLSpecError):
        seed_ratios([1.0], [0.0])


@pytest.mark.parametrize(("h", "kv", "dh", "expected"), [
    (32, 32, 128, 0.25), (32, 8, 128, 1.0), (28, 4, 128, 1.53125), (32, 4, 64, 4.0),
    (16, 8, 256, 0.125), (12, 12, 64, 0.1875)])
def test_rho_eff_is_eq3(h, kv, dh, expected):
    assert rho_eff(h, kv, dh) == pytest.approx(expected, abs=1e-12)
    assert rho_eff(h, kv, dh) == pytest.approx((h / kv) * (h / dh), abs=1e-12)


def test_rho_eff_refuses_zero():
    with pytest.raises(TLSpecError, match="positive"):
        rho_eff(32, 0, 128)


def test_pct_change_and_verdicts():
    assert pct_change(0.474572, 0.591788) == pytest.approx(-19.807, abs=1e-3)
    assert check("T", "x", 1.0, "1.0", None, "none").verdict == "no artifact"
    assert check("T", "x", 1.0, "1.0", 1.004, "a", tol=0.005).verdict == "reproduced"
    c = check("T", "x", 1.0, "1.0", 1.2, "a", tol=0.005, cause="why")
    assert c.verdict == "differs" and c.diff == pytest.approx(0.2, abs=1e-12) and c.cause == "why"
    assert check("T", "x", 1.0, "1.0", 1.0, "a", tol=0, cause="why").cause == ""
