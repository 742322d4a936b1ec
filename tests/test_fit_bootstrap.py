"""Approach 2's intervals: the fixed-design (residual) bootstrap, and the lack-of-fit test that leaves
out an IsoFLOP budget whose parabola does not describe its runs."""

import numpy as np
import polars as pl
import pytest

from analysis.fit import FitConfig, FitWarning, fit_results, format_fit_table, load_fit, write_fits
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
            widths[method].append(hi - lo if np.isfinite(hi - lo) else np.inf)  # no interval: as wide as can be
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


def test_three_sizes_per_budget_leave_no_residuals_so_the_runs_are_resampled(tmp_path):
    t = synthetic_results(LAW, budgets=BUDGETS, sizes=3, span_decades=0.8, noise=0.01, seed=0)
    with pytest.warns(FitWarning, match="resample runs instead"):
        fit = fit_results(t, config=FitConfig(approaches=(2,), bootstrap=100, holdout=False))
    a2 = fit.approach2
    assert a2.bootstrap_method == "runs"
    # A replicate that draws fewer than the 3 distinct runs of a budget has no parabola: most of them
    # fail, and the few left would give an interval that only looks certain. None is reported.
    assert np.isnan(a2.a_ci).all() and np.isnan(a2.b_ci).all()
    why = fit.interval_notes["approach2/a"]
    failed = int(why.split(" of ")[0])
    assert failed > 10 and "of 100 bootstrap replicates could not be fitted; an interval needs 90% of them" in why
    for b in a2.budgets:  # each budget's minimum: no interval either, with the reason
        assert np.isnan(b.n_opt_ci).all() and "could not be fitted" in b.interval_note
    assert any(w.startswith("approach2: no interval for a, b,") for w in fit.warnings)
    d = write_fits(fit, tmp_path / "fit", plots=False)
    fits = __import__("json").loads((d / "fits.json").read_text())
    assert fits["approach2"]["a_ci"] == [None, None] and fits["intervals_not_available"]["approach2/a"] == why
    assert f"| 2 IsoFLOP | {a2.a:.3g} [n/a] |" in (d / "fits.md").read_text()
    assert load_fit(d).interval_notes["approach2/a"] == why


def test_zero_width_interval_is_not_reported_as_certain():
    """One model size per budget: every replicate's envelope has the same N, so Approach 1's a is 0
    by design; its interval [0, 0] would read as certainty."""
    from analysis.laws import interval_problem, percentile_ci

    t = synthetic_results(LAW, budgets=BUDGETS, sizes=1, noise=0.01, seed=0)
    t = t.with_columns(n_params=pl.lit(int(t["n_params"][0])), n_params_total=pl.lit(int(t["n_params"][0])))
    t = t.with_columns(tokens=(pl.col("budget") / (6 * pl.col("n_params"))).cast(pl.Int64))
    t = t.with_columns(flops=6.0 * pl.col("n_params") * pl.col("tokens"))
    with pytest.warns(FitWarning, match="zero width"):
        fit = fit_results(t, config=FitConfig(approaches=(1,), bootstrap=50, holdout=False))
    a1 = fit.approach1
    assert abs(a1.a) < 1e-9 and np.isnan(a1.a_ci).all()
    assert fit.interval_notes["approach1/a"].startswith("zero width: every replicate gives")
    assert "0 [n/a]" in format_fit_table(fit)
    assert percentile_ci([1.0] * 50) == [pytest.approx(np.nan, nan_ok=True)] * 2 and "zero width" in interval_problem([1.0] * 50)
    # 5 of 50 failed (10%): still an interval; 6 of 50: none
    draws = np.r_[np.linspace(0, 1, 45), [np.nan] * 5]
    assert np.isfinite(percentile_ci(draws)).all() and interval_problem(draws) == ""
    assert np.isnan(percentile_ci(np.r_[np.linspace(0, 1, 44), [np.nan] * 6])).all()


def _replicate_table(seed_sd: float, off_centre: bool) -> pl.DataFrame:
    """4 budgets x 5 sizes x 2 training seeds; each seed moves a run's loss by seed_sd (training noise),
    while its eval SE says 0.003. Optionally the smallest budget's ladder runs up its steep side."""
    rng = np.random.default_rng(7)
    rows = []
    for i, c in enumerate(BUDGETS):
        centre, span = (LAW.n_opt(c) * 10**0.6, 0.8) if (off_centre and i == 0) else (LAW.n_opt(c), 0.4)
        for n in centre * np.logspace(-span, span, 5):
            n, d = int(n), int(c / (6 * n))
            for seed in (0, 1):
                rows.append(dict(run_id=f"c{c:.2g}-n{n}-s{seed}", budget=c, n_params=n, tokens=d, flops=6.0 * n * d,
                                 seed=seed, loss=float(LAW.loss(n, d) + rng.normal(0, seed_sd)), eval_loss_se=0.003,
                                 status="completed"))
    return pl.DataFrame(rows)


def test_replicate_seeds_test_the_parabola_against_their_own_scatter():
    """With two seeds per size the lack-of-fit test is the F-test against pure error (the seeds' own
    scatter): seeds 2% apart on well-centred ladders are not a misfit (against the eval SE of 0.003
    each budget failed), while a ladder up the steep side still fails against seeds 0.3% apart."""
    fit = fit_results(_replicate_table(seed_sd=0.02, off_centre=False), config=FitConfig(approaches=(2,), bootstrap=0, holdout=False))
    assert all(b.used and b.lack_of_fit_test == "pure error" for b in fit.approach2.budgets), \
        [(b.budget, b.lack_of_fit_p, b.reason) for b in fit.approach2.budgets]
    with pytest.warns(FitWarning, match=r"does not fit its runs \(residual SD .* vs replicate SD"):
        fit = fit_results(_replicate_table(seed_sd=0.003, off_centre=True), config=FitConfig(approaches=(2,), bootstrap=0, holdout=False))
    smallest = min(fit.approach2.budgets, key=lambda b: b.budget)
    assert not smallest.used and smallest.lack_of_fit_test == "pure error" and smallest.lack_of_fit_p < 0.01
    # both readings are named (a review helper's seeds, one shape's copies 0.1% apart, were blamed on the ladder alone)
    assert smallest.reason.endswith("its sizes span too far from the optimum for a parabola in ln N, or its runs differ by "
                                    "more than their seed replicates do (runs of one shape that differ in more than the "
                                    "seed?)"), smallest.reason
    assert all(b.used for b in fit.approach2.budgets if b is not smallest)


def test_the_row_order_of_a_table_does_not_move_any_interval():
    """A review helper shuffled a results table's rows: the point estimates stayed, every interval moved
    (Approach 2's a [0.361, 0.551] -> [0.372, 0.543], the held-out N_opt's upper end 4.25e10 -> 2.55e14 at 30
    replicates), as the replicates resampled rows by position. Runs are now fitted in one canonical order."""
    t = synthetic_results(BESIROGLU, budgets=np.logspace(18, 21, 4), sizes=6, noise=0.01, seed=4)
    fits = [fit_results(order, bootstrap=40, seed=0).to_json()
            for order in (t, t.reverse(), t.sample(fraction=1.0, shuffle=True, seed=1))]
    assert fits[0]["approach2"]["a_ci"][0] < fits[0]["approach2"]["a_ci"][1]
    assert fits[1] == fits[0] and fits[2] == fits[0]
