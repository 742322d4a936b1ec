"""Approach 2's residual bootstrap when the budgets' runs scatter unequally (analysis.fit.residual_scales)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from analysis.fit import FitConfig, fit_results, write_fits
from analysis.synthetic import isoflop_parabolas
from analysis.table import load_results
from ehrfm.errors import UserError

A_TRUE = 0.45


def draw_table(sigma, rng):
    return isoflop_parabolas(sigma, rng, a=A_TRUE)


def _fit(table, level):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_results(table, config=FitConfig(approaches=(2,), bootstrap=300, holdout=False, seed=0,
                                                   residual_scaling_level=level))


def test_unequal_scatter_is_drawn_at_each_budgets_own_scale(tmp_path):
    # the smallest budget's runs scatter 7x more than the largest's, as short runs do
    table = load_results(draw_table(np.array([0.03, 0.012, 0.006, 0.004]), np.random.default_rng(3)))
    scaled, pooled = _fit(table, 0.05), _fit(table, 0.0)
    s = scaled.approach2.residual_scaling
    assert s["bartlett_p"] < 0.05 and s["slope"] < 0
    scales = list(s["scales"].values())
    assert scales == sorted(scales, reverse=True) and scales[0] > 3 * scales[-1]
    assert pooled.approach2.residual_scaling == {}
    assert scaled.approach2.a == pooled.approach2.a  # the point estimate is the same fit
    width = lambda f: f.approach2.a_ci[1] - f.approach2.a_ci[0]  # noqa: E731
    assert width(scaled) < 0.6 * width(pooled)
    assert scaled.approach2.a_ci[0] < A_TRUE < scaled.approach2.a_ci[1]
    write_fits(scaled, tmp_path / "fit", plots=False)
    saved = json.loads((tmp_path / "fit" / "fits.json").read_text())["approach2"]["residual_scaling"]
    assert saved["scales"] == s["scales"] and saved["bartlett_p"] == pytest.approx(s["bartlett_p"])


def test_equal_scatter_keeps_one_pool():
    table = load_results(draw_table(np.full(4, 0.005), np.random.default_rng(3)))
    scaled, pooled = _fit(table, 0.05), _fit(table, 0.0)
    assert scaled.approach2.residual_scaling["bartlett_p"] >= 0.05 and "scales" not in scaled.approach2.residual_scaling
    assert scaled.approach2.a_ci == pooled.approach2.a_ci  # the same draws: nothing was rescaled


@pytest.mark.parametrize("level", [-0.1, 1.0, float("nan"), True])
def test_a_bad_level_is_one_clear_error(level):
    table = load_results(draw_table(np.full(4, 0.005), np.random.default_rng(3)))
    with pytest.raises(UserError, match="residual-scaling-level must be a number in"):
        _fit(table, level)


def test_bartletts_test_counts_a_parabolas_three_coefficients():
    """A parabola's residuals have n - 3 degrees of freedom: counted as n - 1 (scipy.stats.bartlett's samples about
    a mean), equal noise was called unequal in ~32% of draws of 4 budgets x 5 sizes (a review, 2026-12-06)."""
    from scipy.stats import bartlett

    from analysis.fit import bartlett_p, residual_scales

    rng = np.random.default_rng(0)
    samples = [rng.normal(0, s, n) for s, n in ((1, 6), (2, 8), (1.5, 5))]
    assert bartlett_p([np.var(x, ddof=1) for x in samples], [x.size - 1 for x in samples]) == pytest.approx(
        bartlett(*samples).pvalue, rel=1e-9)  # samples about their means: scipy's own test
    rejected = 0
    for seed in range(100):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = fit_results(load_results(draw_table(np.full(4, 0.005), np.random.default_rng(seed))),
                              config=FitConfig(approaches=(2,), bootstrap=0, holdout=False))
        _, rec = residual_scales(fit.approach2.budgets)
        rejected += rec["bartlett_p"] < 0.05
    assert rejected <= 12, rejected  # nominal 5; with n - 1 degrees of freedom it was ~32
