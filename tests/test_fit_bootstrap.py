"""Approach 2's intervals: the fixed-design (residual) bootstrap, and the lack-of-fit test that leaves
out an IsoFLOP budget whose parabola does not describe its runs."""

import numpy as np
import polars as pl
import pytest

from analysis.fit import FitConfig, FitWarning, fit_results, load_fit, write_fits
from analysis.synthetic import BESIROGLU, synthetic_results

LAW = BESIROGLU
TRUE_A = LAW.beta / (LAW.alpha + LAW.beta)
BUDGETS = (1e18, 4e18, 1.6e19, 6.4e19)  # 4 budgets over 64x, as a small demo grid spans


def test_residual_bootstrap_covers_the_true_exponent_and_is_tighter_than_resampling_runs():
    """20 noisy sweeps of 4 budgets x 5 sizes from a known law: the residual intervals of a hold the
    true a about as often as a 95% interval should, and are narrower than resampling 5 runs."""
    hits, widths = {"residuals": 0, "runs": 0}, {"residuals": [], "runs": []}
    for seed in range(20):
        t = synthetic_results(LAW, budgets=BUDGETS, sizes=5, span_decades=0.8, noise=0.01, seed=seed)
        for method in hits:
            a2 = fit_results(t, config=FitConfig(approaches=(2,), bootstrap=300, seed=seed, holdout=False,
                                                 approach2_bootstrap=method)).approach2
            assert a2.bootstrap_method == method
            lo, hi = a2.a_ci
            hits[method] += lo <= TRUE_A <= hi
            widths[method].append(hi - lo)
    assert hits["residuals"] >= 16, hits  # nominal 19 of 20
    assert np.median(widths["residuals"]) < 0.7 * np.median(widths["runs"]), {k: np.median(v) for k, v in widths.items()}


def _off_centre_table(with_se: bool) -> pl.DataFrame:
    """4 budgets of 5 sizes; the smallest budget's ladder is centred 0.6 decades above its optimum
    and spans +-0.8 decades, so it runs up the steep side of its IsoFLOP curve (as a ladder clipped
    by the smallest model of a family does); the others are centred, +-0.4 decades."""
    rng = np.random.default_rng(3)
    rows = []
    for i, c in enumerate(BUDGETS):
        centre, span = (LAW.n_opt(c) * 10**0.6, 0.8) if i == 0 else (LAW.n_opt(c), 0.4)
        for n in centre * np.logspace(-span, span, 5):
            n, d = int(n), int(c / (6 * n))
            row = dict(run_id=f"c{c:.2g}-n{n}", budget=c, n_params=n, tokens=d, flops=6.0 * n * d,
                       loss=float(LAW.loss(n, d) + rng.normal(0, 0.003)), status="completed")
            if with_se:
                row["eval_loss_se"] = 0.003
            rows.append(row)
    return pl.DataFrame(rows)


def test_a_budget_whose_parabola_does_not_fit_its_runs_is_left_out_with_the_reason(tmp_path):
    with pytest.warns(FitWarning, match="does not fit its runs"):
        fit = fit_results(_off_centre_table(with_se=True), config=FitConfig(approaches=(2,), bootstrap=100, holdout=False))
    smallest = min(fit.approach2.budgets, key=lambda b: b.budget)
    assert not smallest.used and "lack-of-fit p" in smallest.reason and smallest.lack_of_fit_p < 0.01
    others = [b for b in fit.approach2.budgets if b is not smallest]
    assert all(b.used and b.lack_of_fit_p >= 0.01 for b in others), [(b.budget, b.lack_of_fit_p) for b in others]
    assert fit.approach2.n_budgets_used == 3
    # The verdict and the test's p survive fits.json.
    back = load_fit(write_fits(fit, tmp_path / "fit", plots=False))
    assert [b.used for b in back.approach2.budgets] == [b.used for b in fit.approach2.budgets]
    assert back.approach2.budgets[0].lack_of_fit_p == pytest.approx(smallest.lack_of_fit_p)
    assert back.approach2.bootstrap_method == "residuals"
    # Without the runs' standard errors there is nothing to test against: the budget is kept.
    fit = fit_results(_off_centre_table(with_se=False), config=FitConfig(approaches=(2,), bootstrap=100, holdout=False))
    assert all(b.used for b in fit.approach2.budgets) and np.isnan(fit.approach2.budgets[0].lack_of_fit_p)


def test_three_sizes_per_budget_leave_no_residuals_so_the_runs_are_resampled():
    t = synthetic_results(LAW, budgets=BUDGETS, sizes=3, span_decades=0.8, noise=0.01, seed=0)
    with pytest.warns(FitWarning, match="resample runs instead"):
        a2 = fit_results(t, config=FitConfig(approaches=(2,), bootstrap=100, holdout=False)).approach2
    assert a2.bootstrap_method == "runs" and np.isfinite(a2.a_ci).all()
