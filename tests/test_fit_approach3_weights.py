"""Approach 3's weighted least squares when the budgets' runs scatter unequally (analysis.fit.approach3_weights)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from analysis.fit import FitConfig, fit_results, write_fits
from analysis.synthetic import Law, synthetic_results
from ehrfm.errors import UserError

BUDGETS = (3.7e11, 9.5e11, 2.4e12, 6e12)  # the default demo's
LAW = Law(E=0.95, A=402.3, B=4.8e7, alpha=0.80, beta=1.44)  # near the demo's unweighted fit of its runs
A_TRUE = LAW.beta / (LAW.alpha + LAW.beta)
DEMO_NOISE = (0.019, 0.010, 0.0054, 0.0028)  # SD of ln L per budget: the demo's residual scales over its losses


def _table(noise, seed):
    return synthetic_results(LAW, budgets=BUDGETS, sizes=5, span_decades=0.8, noise=noise, seed=seed)


def _fit(table, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_results(table, config=FitConfig(**{"approaches": (3,), "bootstrap": 0, "holdout": False, **kw}))


def test_unequal_scatter_weighs_each_run_by_its_budgets_scale_and_finds_a_closer(tmp_path):
    errors = {"equal": [], "inverse-variance": []}
    for seed in range(12):
        table = _table(DEMO_NOISE, seed)
        for how in errors:
            errors[how].append(abs(_fit(table, approach3_weights=how).approach3.a - A_TRUE))
    eq, w = np.mean(errors["equal"]), np.mean(errors["inverse-variance"])
    assert w < 0.75 * eq, (w, eq)  # 0.026 vs 0.043 over these 12 draws (benchmarks/approach3_weights.py)

    fit = _fit(_table(DEMO_NOISE, 0), bootstrap=100)
    wt = fit.approach3.weighting
    assert wt["weights"] == "inverse-variance" and wt["bartlett_p"] < 0.05
    scales = [wt["scales"][f"{b:.6g}"] for b in BUDGETS]
    assert scales == sorted(scales, reverse=True) and scales[0] > 3 * scales[-1]
    lo, hi = fit.approach3.a_ci
    assert lo < fit.approach3.a < hi
    write_fits(fit, tmp_path / "fit", plots=False)
    saved = json.loads((tmp_path / "fit" / "fits.json").read_text())["approach3"]["weighting"]
    assert saved["weights"] == "inverse-variance" and saved["scales"] == wt["scales"]
    assert "weighted least squares" in (tmp_path / "fit" / "fits.md").read_text()


def test_equal_scatter_keeps_equal_weights_and_the_same_fit():
    table = _table(0.005, 1)
    auto, equal = _fit(table), _fit(table, approach3_weights="equal")
    assert auto.approach3.weighting["weights"] == "equal" and auto.approach3.weighting["bartlett_p"] >= 0.05
    assert auto.approach3.a == equal.approach3.a and auto.approach3.E == equal.approach3.E


def test_huber_lbfgs_stays_unweighted_as_published():
    fit = _fit(_table(DEMO_NOISE, 0), approach3_method="huber-lbfgs")
    assert fit.approach3.weighting["weights"] == "equal" and "huber-lbfgs" in fit.approach3.weighting["why"]


def test_a_bad_weighting_is_one_clear_error():
    with pytest.raises(UserError, match="approach3-weights must be one of inverse-variance, equal"):
        _fit(_table(0.005, 1), approach3_weights="robust")
