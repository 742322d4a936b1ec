"""Fits of whole results tables: known laws recovered, bad input refused or reported, outputs."""

import json
import re
import subprocess
import sys
import warnings

import numpy as np
import polars as pl
import pytest

from analysis.fit import FitWarning, fit_results, format_fit_table, write_fits
from analysis.synthetic import BESIROGLU, HOFFMANN, synthetic_results
from analysis.table import load_results
from ehrfm.errors import UserError

LAW = BESIROGLU
A_TRUE = LAW.beta / (LAW.alpha + LAW.beta)


@pytest.fixture(scope="module")
def table():
    return synthetic_results(LAW, budgets=np.logspace(18, 21, 6), sizes=9, noise=0.01, seed=1,
                             tasks={"mortality": (2.0, -0.05)})


@pytest.fixture(scope="module")
def fit(table):
    return fit_results(table, bootstrap=200, seed=0)


def test_known_law_is_recovered_within_bootstrap_intervals(fit):
    a3 = fit.approach3
    for name in ("alpha", "beta", "E"):
        lo, hi = getattr(a3, f"{name}_ci")
        assert lo <= getattr(LAW, name) <= hi, (name, getattr(a3, name), lo, hi)
        assert lo < getattr(a3, name) < hi
    assert fit.approach2.a == pytest.approx(A_TRUE, abs=0.03)
    assert fit.approach2.b == pytest.approx(1 - A_TRUE, abs=0.03)
    assert fit.approach2.a_ci[0] <= A_TRUE <= fit.approach2.a_ci[1]
    assert fit.approach1.a_ci[0] <= A_TRUE <= fit.approach1.a_ci[1]
    assert fit.approach3.a_ci[0] <= A_TRUE <= fit.approach3.a_ci[1]
    # Intervals are real intervals, not points.
    assert fit.approach2.a_ci[1] - fit.approach2.a_ci[0] > 0.005


def test_approach2_on_hoffmann_law():
    t = synthetic_results(HOFFMANN, budgets=np.logspace(18, 22, 5), sizes=9, noise=0.005, seed=3)
    f = fit_results(t, approaches=(2,), bootstrap=50, seed=0)
    assert f.approach2.a == pytest.approx(HOFFMANN.beta / (HOFFMANN.alpha + HOFFMANN.beta), abs=0.03)
    assert f.approach1 is None and f.approach3 is None
    assert all(b.used and b.interior and b.r2 > 0.9 for b in f.approach2.budgets)


def test_budget_minima_track_the_true_optimum(fit):
    for bf in fit.approach2.budgets:
        assert bf.n_opt == pytest.approx(float(LAW.n_opt(bf.budget)), rel=0.35)
        assert bf.d_opt == pytest.approx(bf.budget / (6 * bf.n_opt), rel=0.02)  # C = 6 N D in this table
        assert bf.n_opt_ci[0] < bf.n_opt < bf.n_opt_ci[1]


def test_utility_law_recovered(fit):
    u = fit.utility["auroc/mortality"]
    # The selected runs sit near, not at, each budget's optimum, so the slope is close, not exact.
    assert u.exponent == pytest.approx(-0.05, abs=0.012)
    assert u.exponent_ci[0] < u.exponent < u.exponent_ci[1]
    assert u.n_points == 6


def test_utility_intervals_carry_each_aurocs_measurement_noise():
    # Three budgets whose AUROCs were measured with a standard error of 0.01 (a probe on ~1,000
    # held-out labels): three points' scatter alone cannot give an honest interval.
    kw = dict(budgets=np.logspace(18, 20, 3), sizes=7, noise=0.003, tasks={"mortality": (2.0, -0.05)})
    covered = 0
    for seed in range(4, 9):
        u = fit_results(synthetic_results(LAW, seed=seed, auroc_se=0.01, **kw), approaches=(2,), bootstrap=400, seed=0).utility["auroc/mortality"]
        assert u.measurement_noise and [p["se"] for p in u.points] == [0.01] * 3
        covered += u.exponent_ci[0] < -0.05 < u.exponent_ci[1]
        # The interval is the weighted least-squares one: 2 x 1.96 x the slope's standard error
        # with the delta-method SE of ln(1 - AUROC), 0.01 / (1 - AUROC), at each point, scaled by the
        # points' scatter beyond those SEs (the Birge ratio) where it exceeds 1.
        err = np.array([1 - p["value"] for p in u.points])
        x, w = np.log([p["budget"] for p in u.points]), (err / 0.01) ** 2
        slope_se = 1 / np.sqrt(np.sum(w * (x - np.sum(w * x) / w.sum()) ** 2))
        assert u.scatter["dof"] == 1
        assert np.diff(u.exponent_ci)[0] == pytest.approx(2 * 1.96 * slope_se * max(1.0, u.scatter["ratio"]), rel=0.1)
    assert covered >= 4  # 95% intervals: all five here, allow one miss
    # Without the se column: a case bootstrap of the three points, flagged as such.
    table = synthetic_results(LAW, seed=4, auroc_se=0.01, **kw)
    bare = fit_results(table.drop("auroc_se/mortality"), approaches=(2,), bootstrap=400, seed=0).utility["auroc/mortality"]
    assert not bare.measurement_noise and all(p["se"] is None for p in bare.points)
    # A standard error outside [0, 0.5] is refused, naming the column.
    with pytest.raises(UserError, match="auroc_se/mortality is outside"):
        load_results(table.with_columns(pl.lit(-1.0).alias("auroc_se/mortality")))


def test_utility_law_not_fitted_through_an_auroc_whose_se_the_heads_withheld():
    # The heads withhold an AUROC's SE below 10 held-out labels or subjects of a class: such an AUROC
    # (on 1 positive, say) is no measurement, and a law through it must not get an interval.
    kw = dict(budgets=np.logspace(18, 20, 3), sizes=7, noise=0.003, tasks={"mortality": (2.0, -0.05)})
    table = synthetic_results(LAW, seed=4, auroc_se=0.01, **kw)
    full = fit_results(table, approaches=(2,), bootstrap=100, seed=0)
    best = {p["run_id"] for p in full.utility["auroc/mortality"].points}
    assert len(best) == 3
    one = sorted(best)[0]
    withheld = table.with_columns(pl.when(pl.col("run_id") == one).then(None)
                                  .otherwise(pl.col("auroc_se/mortality")).alias("auroc_se/mortality"))
    with pytest.warns(FitWarning, match=r"utility auroc/mortality: the AUROC of 1 of its 3 budget\(s\) has no standard "
                                        r"error in auroc_se/mortality .*no law fitted"):
        fit = fit_results(withheld, approaches=(2,), bootstrap=100, seed=0)
    assert "auroc/mortality" not in fit.utility
    assert fit.approach2.a == full.approach2.a  # the loss laws do not depend on it
    # a withheld SE on a run the law does not pass through changes nothing
    other = table.filter(~pl.col("run_id").is_in(list(best)))["run_id"][0]
    aside = table.with_columns(pl.when(pl.col("run_id") == other).then(None)
                               .otherwise(pl.col("auroc_se/mortality")).alias("auroc_se/mortality"))
    u = fit_results(aside, approaches=(2,), bootstrap=100, seed=0).utility["auroc/mortality"]
    assert u.exponent == full.utility["auroc/mortality"].exponent
    assert u.exponent_ci == full.utility["auroc/mortality"].exponent_ci


def test_utility_intervals_paired_when_runs_share_resamples():
    # Every run scored on the same held-out labels: a resample that is hard for one run is hard for
    # all of them, so the points move together. Replicates that share that common shift (0.02 SD)
    # on top of a small run-specific part (0.002) pin the slope far better than independent SEs of
    # ~0.02 each would; the fit must use them as pairs, and report that it did.
    from ehrfm.clinical.metrics import shared_bootstrap_auroc

    kw = dict(budgets=np.logspace(18, 20, 3), sizes=7, noise=0.003, tasks={"mortality": (2.0, -0.05)})
    table = synthetic_results(LAW, seed=4, auroc_se=0.02, **kw)
    rng = np.random.default_rng(0)
    common = rng.normal(0, 0.02, 300)
    boot = [(a + common + rng.normal(0, 0.002, 300)).tolist() for a in table["auroc/mortality"]]
    paired_table = table.with_columns(pl.Series("auroc_boot/mortality", boot, dtype=pl.List(pl.Float64)))
    indep = fit_results(table, approaches=(2,), bootstrap=300, seed=0).utility["auroc/mortality"]
    paired = fit_results(paired_table, approaches=(2,), bootstrap=300, seed=0).utility["auroc/mortality"]
    assert paired.paired and not indep.paired
    assert paired.exponent == indep.exponent  # the point estimate is the same weighted fit
    assert np.diff(paired.exponent_ci)[0] < 0.3 * np.diff(indep.exponent_ci)[0]
    assert paired.exponent_ci[0] < paired.exponent < paired.exponent_ci[1] < 0
    assert "paired: every run's AUROC on the same held-out resamples" in format_fit_table(
        fit_results(paired_table, approaches=(2,), bootstrap=50, seed=0))
    # lists of different lengths cannot be the same resamples: one error naming the column
    ragged = table.with_columns(pl.Series("auroc_boot/mortality", [[0.7] * (3 + i % 2) for i in range(table.height)]))
    with pytest.raises(UserError, match=r"auroc_boot/mortality holds lists of 2 different lengths"):
        load_results(ragged)
    # the replicates are paired by construction: a monotone rescoring of the same labels with the
    # same seed gives the same AUROC on every resample; single-class resamples are NaN
    y = rng.integers(0, 2, 400)
    p = rng.random(400) + 0.5 * y
    assert np.array_equal(shared_bootstrap_auroc(y, p, 50, 3), shared_bootstrap_auroc(y, 10 * p**3, 50, 3))
    assert np.isnan(shared_bootstrap_auroc(np.zeros(10), p[:10], 5, 0)).all()


def test_utility_law_that_does_not_improve_is_reported_not_predicted_from():
    from analysis.recommend import recommend

    t = synthetic_results(LAW, budgets=np.logspace(18, 20, 3), sizes=7, noise=0.003, seed=2, tasks={"mortality": (0.02, 0.05)})
    with pytest.warns(FitWarning, match="AUROC does not rise with compute"):
        f = fit_results(t, approaches=(2, 3), bootstrap=50, seed=0)
    assert f.utility["auroc/mortality"].exponent > 0
    rec = recommend(f, 1e21)
    assert "mortality" not in rec.utility and any("no AUROC prediction for mortality" in w for w in rec.warnings)


def test_utility_predictions_stay_between_chance_and_perfect():
    from analysis.laws import auroc_from_law

    # A law whose AUROC falls with compute (noisy small sweeps) floors at chance, never below it.
    c = np.array([1e10, 1e12, 1e20])
    falling = auroc_from_law(0.1, 0.05, c)
    assert falling[0] == pytest.approx(1 - 0.1 * 1e10**0.05) and 0.5 < falling[1] < falling[0]
    assert falling[-1] == 0.5 and np.all(np.diff(falling) <= 0)
    rising = auroc_from_law(0.5, -0.05, c)
    assert np.all((rising >= 0.5) & (rising < 1)) and np.all(np.diff(rising) > 0)
def test_same_seed_same_fit_other_seed_other_intervals(table, fit):
    again = fit_results(table, bootstrap=200, seed=0)
    assert again.to_json() == fit.to_json()
    other = fit_results(table, approaches=(2,), bootstrap=200, seed=1)
    assert other.approach2.a == fit.approach2.a
    assert other.approach2.a_ci != fit.approach2.a_ci


def test_fits_json_follows_the_contract(fit, table, tmp_path):
    out = write_fits(fit, tmp_path / "fit", results=load_results(table))
    j = json.loads((out / "fits.json").read_text())
    assert set(j) >= {"approach1", "approach2", "approach3", "utility", "n_runs", "excluded"}
    assert j["n_runs"] == table.height and j["excluded"] == []
    for key in ("a", "b"):
        for ap in ("approach1", "approach2", "approach3"):
            assert len(j[ap][f"{key}_ci"]) == 2
    for key in ("E", "A", "B", "alpha", "beta"):
        assert j["approach3"][f"{key}_ci"][0] < j["approach3"][key] < j["approach3"][f"{key}_ci"][1]
    b0 = j["approach2"]["budgets"][0]
    assert set(b0) >= {"budget", "n_opt", "d_opt", "loss_min", "curvature", "r2", "n_points", "interior", "used"}
    assert "mortality" in j["utility"]
    cfg = json.loads((out / "fit_config.json").read_text())
    assert cfg["bootstrap"] == 200 and cfg["seed"] == 0 and cfg["approaches"] == [1, 2, 3]
    assert pl.read_parquet(out / "bootstrap.parquet").height == 200
    for name in ("isoflops", "optimal_scaling", "frontier", "utility"):
        assert (out / f"{name}.png").stat().st_size > 10_000 and (out / f"{name}.pdf").is_file()
    md = format_fit_table(fit)
    assert "| 2 IsoFLOP |" in md and f"{fit.approach2.a:.3g}" in md


# --- bad input -----------------------------------------------------------------------------


def _small(**kw):
    return synthetic_results(LAW, budgets=(1e18, 1e19, 1e20), sizes=5, noise=0.005, seed=0, **kw)


def test_nan_and_non_positive_values_name_the_runs(tmp_path):
    t = _small()
    ids = t["run_id"].to_list()
    bad = t.with_columns(loss=pl.when(pl.col("run_id") == ids[3]).then(float("nan")).otherwise(pl.col("loss")))
    with pytest.raises(UserError, match=f"column loss .*1 completed run.*{re.escape(ids[3])}"):
        fit_results(bad, bootstrap=0)
    bad = t.with_columns(n_params=pl.when(pl.col("run_id").is_in(ids[:2])).then(0).otherwise(pl.col("n_params")))
    with pytest.raises(UserError, match=f"column n_params .*2 completed run.*{re.escape(ids[0] + ', ' + ids[1])}"):
        fit_results(bad, bootstrap=0)
    path = tmp_path / "r.csv"
    t.with_columns(tokens=pl.when(pl.col("run_id") == ids[5]).then(None).otherwise(pl.col("tokens"))).write_csv(path)
    with pytest.raises(UserError, match=f"r.csv: column tokens .*{re.escape(ids[5])}"):
        fit_results(path, bootstrap=0)
    with pytest.raises(UserError, match="lacks column loss"):
        fit_results(t.drop("loss"), bootstrap=0)


def test_failed_runs_are_reported_not_fitted():
    t = _small()
    ids = t["run_id"].to_list()
    t = t.with_columns(status=pl.when(pl.col("run_id") == ids[0]).then(pl.lit("diverged")).otherwise(pl.col("status")),
                       loss=pl.when(pl.col("run_id") == ids[0]).then(float("nan")).otherwise(pl.col("loss")))
    f = fit_results(t, approaches=(2,), bootstrap=0)
    assert f.excluded == [{"run_id": ids[0], "reason": "status diverged"}]
    assert f.n_runs == 15 and f.n_fitted == 14


def test_small_and_concave_budgets_are_left_out_with_a_warning():
    t = _small()
    # Budget 1e18 keeps only 2 runs; budget 1e20's losses are made concave in ln N.
    keep = ~((pl.col("budget") == 1e18) & ~pl.col("run_id").is_in(t.filter(pl.col("budget") == 1e18)["run_id"][:2].to_list()))
    t = t.filter(keep)
    concave = (pl.col("budget") == 1e20)
    logn = pl.col("n_params").log()
    t = t.with_columns(loss=pl.when(concave).then(5.0 - 0.02 * (logn - logn.filter(concave).mean()) ** 2).otherwise(pl.col("loss")))
    t = pl.concat([t, synthetic_results(LAW, budgets=(1e19 * 3.3, 1e21), sizes=5, noise=0.005, seed=4)])
    with pytest.warns(FitWarning) as caught:
        f = fit_results(t, approaches=(2,), bootstrap=20)
    messages = [str(w.message) for w in caught]
    assert any(re.search("budget 1e\\+18 .*2 distinct model size", m) for m in messages), messages
    assert any(re.search("budget 1e\\+20 .*concave", m) for m in messages), messages
    by = {b.budget: b for b in f.approach2.budgets}
    assert not by[1e18].used and by[1e18].n_points == 2
    assert not by[1e20].used and "concave" in by[1e20].reason
    assert np.isnan(by[1e20].n_opt)
    assert f.approach2.n_budgets_used == 3
    assert any("concave" in w for w in f.warnings)


def test_fewer_than_two_usable_budgets_is_an_error():
    t = synthetic_results(LAW, budgets=(1e18, 1e19), sizes=5, noise=0.005, seed=0)
    t = t.filter((pl.col("budget") == 1e18) | (pl.col("n_params") == pl.col("n_params").filter(pl.col("budget") == 1e19).min()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        with pytest.raises(UserError, match="Approach 2 needs >= 2 usable IsoFLOP budgets.*has 1 of 2"):
            fit_results(t, approaches=(2,), bootstrap=0)


def test_an_approach_the_data_cannot_support_is_reported_and_the_others_fitted():
    t = synthetic_results(LAW, budgets=(1e18, 1e19), sizes=5, noise=0.005, seed=0)
    t = t.filter((pl.col("budget") == 1e18) | (pl.col("n_params") == pl.col("n_params").filter(pl.col("budget") == 1e19).min()))
    with pytest.warns(FitWarning) as caught:
        f = fit_results(t, approaches=(2, 3), bootstrap=0)
    messages = [str(w.message) for w in caught]
    assert any("budget 1e+19 FLOPs left out" in m for m in messages), messages
    assert any(m.startswith("approach2 not fitted: Approach 2 needs >= 2 usable") for m in messages), messages
    assert f.approach2 is None and f.approach3 is not None
    assert "approach2" in f.to_json()["not_fitted"] and "approach2" not in f.to_json()
    with pytest.raises(UserError, match="one IsoFLOP budget"):
        fit_results(t.filter(pl.col("budget") == 1e18), bootstrap=0)


def test_budgets_are_grouped_when_the_column_is_absent():
    t = _small().drop("budget")
    f = fit_results(t, approaches=(2,), bootstrap=0)
    assert [b.n_points for b in f.approach2.budgets] == [5, 5, 5]
    assert [b.budget for b in f.approach2.budgets] == pytest.approx([1e18, 1e19, 1e20], rel=1e-3)


def test_unplanned_runs_are_excluded_not_regrouped(tmp_path):
    """Runs of a sweep dir its current plan no longer holds (budget null, as `sweep collect` writes
    them) are excluded with the reason, never grouped by FLOPs into the planned parabolas."""
    planned = _small()
    # another recipe's runs at the same budgets: same sizes, worse losses, budget null
    old = planned.with_columns(run_id=pl.col("run_id") + "-old", loss=pl.col("loss") + 0.3, budget=pl.lit(None, pl.Float64))
    t = pl.concat([planned, old])
    f = fit_results(t, approaches=(2,), bootstrap=0)
    assert f.n_runs == 30 and f.n_fitted == 15 and [b.n_points for b in f.approach2.budgets] == [5, 5, 5]
    assert sorted(e["run_id"] for e in f.excluded) == sorted(old["run_id"].to_list())
    assert {e["reason"] for e in f.excluded} == {"not in the sweep's current plan (budget null)"}
    path = tmp_path / "mixed.parquet"
    t.write_parquet(path)
    p = subprocess.run([sys.executable, "-m", "ehrfm", "fit", str(path), "--out", str(tmp_path / "fit"), "--bootstrap", "0",
                        "--approach", "2", "--no-plots"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "Fitted 15 of 30 runs (15 excluded)" in p.stdout
    assert p.stderr.count("not fitted: not in the sweep's current plan (budget null)") == 15
    # a table with no budget values at all (another tool's) is still grouped by FLOPs
    f = fit_results(old, approaches=(2,), bootstrap=0)
    assert f.n_fitted == 15 and not f.excluded and [b.n_points for b in f.approach2.budgets] == [5, 5, 5]


def test_budget_and_flops_must_agree():
    t = _small()
    wrong = t["run_id"][2]
    bad = t.with_columns(budget=pl.when(pl.col("run_id") == wrong).then(1e19).otherwise(pl.col("budget")))
    with pytest.raises(UserError, match=rf"columns budget and flops disagree in 1 completed run\(s\): {re.escape(wrong)} "
                                        r"\(e.g. budget 1e\+19 vs flops 1e\+18"):
        load_results(bad)
    # the planner's rounding (D = floor(C / F): flops up to one token's FLOPs below the budget) passes
    t = t.with_columns(tokens=pl.col("tokens") - 1, flops=6.0 * pl.col("n_params") * (pl.col("tokens") - 1))
    assert load_results(t).n == 15


def test_a_minimal_table_split_into_tiny_groups_gets_a_hint():
    t = _small().select("n_params", "tokens", "loss")
    # 6 N D of a table whose D was rounded coarsely: runs of one budget spread over 0.2 decades
    t = t.with_columns(tokens=(pl.col("tokens") * pl.Series(np.tile([1.0, 1.2, 1.45, 1.0, 1.2], 3))).cast(pl.Int64))
    with pytest.warns(FitWarning, match=r"grouped by 6 N D .* into \d+ IsoFLOP budgets, \d+ of them with fewer than 3 runs: "
                                        r"add a budget column .* or a flops column"):
        fit_results(t, approaches=(1,), bootstrap=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)
        fit_results(_small().drop("budget"), approaches=(1,), bootstrap=0)  # grouped into 3 groups of 5: no hint
    # one group of 2 among groups of 5 (flops scattered about their budget) is said too (it was only when most were)
    few = _small().drop("budget").with_row_index("i").filter(~pl.col("i").is_in([0, 1, 2])).drop("i")
    with pytest.warns(FitWarning, match=r"into 3 IsoFLOP budgets, 1 of them with fewer than 3 runs: add a budget column"):
        fit_results(few, approaches=(1,), bootstrap=0)


def test_a_parabola_with_an_incredible_minimum_is_not_used():
    """One run's loss recorded as 500 (3 sizes: the parabola passes through it) puts the vertex of
    its budget below 0; that budget is left out, named, and the run is named as the likely outlier."""
    t = synthetic_results(LAW, budgets=(1e18, 4e18, 1.6e19, 6.4e19), sizes=3, span_decades=0.8, noise=0.01, seed=0)
    bad = t.filter(pl.col("budget") == 6.4e19)["run_id"][0]
    t = t.with_columns(loss=pl.when(pl.col("run_id") == bad).then(500.0).otherwise(pl.col("loss")))
    # 500 nats/token is above uniform guessing over any tokenizer's 2^24 codes: the run is left out and named.
    with pytest.warns(FitWarning, match=r"budget 6.4e\+19 FLOPs left out of the power laws: 2 distinct model size"):
        f = fit_results(t, approaches=(2,), bootstrap=0)
    assert any(e["run_id"] == bad and "above uniform guessing over 2^24 codes" in e["reason"] for e in f.excluded)
    # The vertex rule stands for a loss the unit check lets through (a table declaring a vocabulary it allows).
    t = t.with_columns(vocab_size=pl.lit(1e220))
    with pytest.warns(FitWarning, match=r"budget 6.4e\+19 FLOPs left out of the power laws: L_min = -59.56 is not positive"):
        f = fit_results(t, approaches=(2,), bootstrap=0)
    top = f.approach2.budgets[-1]
    assert top.loss_min == pytest.approx(-59.56, abs=0.01) and not top.used
    assert f"run {bad}, loss 500 against the budget's median 2.659, is the likely outlier" in top.reason
    assert f.approach2.n_budgets_used == 3
    # the held-out check compares with a real minimum, not with -59.56
    assert f.holdout["budget"] == 1.6e19 and f.holdout["observed_loss"] == pytest.approx(2.821, abs=0.001)


def test_multi_epoch_tables_fit_effective_data():
    t = _small().with_columns(unique_tokens=(pl.col("tokens") // 3))
    f = fit_results(t, approaches=(3,), bootstrap=0)
    assert f.approach3.effective_data and f.approach3.r_star == 15.4
    assert f.inputs["multi_epoch"] and f.inputs["max_epochs"] == pytest.approx(3.0, rel=1e-6)


# --- CLI -----------------------------------------------------------------------------------


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ehrfm", *map(str, args)], capture_output=True, text=True)


def test_cli_fit_and_bad_input(tmp_path):
    path = tmp_path / "results.parquet"
    _small().write_parquet(path)
    p = _cli("fit", path, "--out", tmp_path / "fit", "--approach", "2,3", "--bootstrap", "30", "--no-plots")
    assert p.returncode == 0, p.stderr
    assert "| 2 IsoFLOP |" in p.stdout and "fit: 15 runs" in p.stdout
    j = json.loads((tmp_path / "fit" / "fits.json").read_text())
    assert "approach1" not in j and "approach3" in j
    bad = tmp_path / "bad.csv"
    _small().with_columns(loss=pl.lit(-1.0)).write_csv(bad)
    p = _cli("fit", bad, "--out", tmp_path / "fit2")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "column loss" in p.stderr
    assert not (tmp_path / "fit2").exists()
    p = _cli("fit", path, "--out", tmp_path / "fit")
    assert p.returncode == 2 and "already exists" in p.stderr


def test_csv_and_parquet_give_the_same_fit(tmp_path):
    t = _small()
    t.write_csv(tmp_path / "r.csv")
    t.write_parquet(tmp_path / "r.parquet")
    a = fit_results(tmp_path / "r.csv", approaches=(2,), bootstrap=20).to_json()
    b = fit_results(tmp_path / "r.parquet", approaches=(2,), bootstrap=20).to_json()
    a["inputs"].pop("source"), b["inputs"].pop("source")
    assert a == b


def test_degenerate_parametric_fit_is_reported_not_used():
    # Loss that rises with N at fixed D: the best L(N, D) has a negative alpha, i.e. no compute-
    # optimal frontier. Approach 3 must be reported as not fitted, never handed to the recommender.
    rows = []
    for c in (1e15, 3e15, 1e16):
        for n in np.geomspace(1e6, 1e8, 5):
            d = c / (6 * n)
            rows.append(dict(run_id=f"r{len(rows)}", budget=c, n_params=int(n), tokens=int(d), flops=c,
                             loss=1.5 + 0.02 * np.log(n) ** 2 / 10 + 30 / d**0.3, status="completed"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        fit = fit_results(pl.DataFrame(rows), bootstrap=0)
    assert fit.approach3 is None
    assert "degenerate" in fit.not_fitted["approach3"]
    assert fit.approach1 is not None  # the other approaches are still fitted

    from analysis.recommend import recommend

    rec = recommend(fit, 1e17)
    assert rec.approach != 3 and rec.n_opt > 0


# --- hand-made tables: the kinds of bad input users send (DESIGN.md section 5) ---------------------


def _minimal(t: pl.DataFrame) -> pl.DataFrame:
    """The minimal table of DESIGN.md section 5: n_params, tokens, flops, loss (no run_id, status, budget)."""
    return t.select("n_params", "tokens", "flops", "loss")


def test_duplicated_rows_are_refused_not_fitted_twice(tmp_path):
    t = _minimal(_small())
    path = tmp_path / "r.parquet"
    pl.concat([t, t.head(2)]).write_parquet(path)
    with pytest.raises(UserError, match=r"r.parquet: 4 rows are duplicates .*rows 0, 1, 15, 16"):
        load_results(path)
    # a repeated failed row is harmless (never fitted): only completed repeats are refused
    failed = t.head(1).with_columns(status=pl.lit("failed"), loss=pl.lit(None, pl.Float64))
    ok = pl.concat([t.with_columns(status=pl.lit("completed")), failed, failed])
    assert load_results(ok).n == 15


def test_one_budget_written_two_ways_is_one_isoflop_group():
    t = _small()
    # 1e18 vs 1.0000001e18: a CSV written by another tool, or a float formatted differently
    jitter = 1 + 1e-7 * pl.int_range(pl.len())
    t = t.with_columns(budget=pl.col("budget") * jitter, flops=pl.col("flops") * jitter)
    f = fit_results(t, approaches=(2,), bootstrap=0)
    assert [b.n_points for b in f.approach2.budgets] == [5, 5, 5]
    assert [b.budget for b in f.approach2.budgets] == pytest.approx([1e18, 1e19, 1e20], rel=1e-5)
    # budgets 2x apart stay apart
    twice = pl.when(pl.col("budget") == 1e18)
    res = load_results(_small().with_columns(budget=twice.then(2e18).otherwise(pl.col("budget")),
                                             flops=twice.then(pl.col("flops") * 2).otherwise(pl.col("flops"))))
    assert sorted(np.unique(res.budget)) == [2e18, 1e19, 1e20]


def test_text_numbers_in_a_csv_are_parsed_or_counted(tmp_path):
    t = _minimal(_small())
    path = tmp_path / "r.csv"
    # padded numbers and a padded header, as spreadsheets write them
    t.with_columns(pl.col("loss").cast(pl.Utf8) + " ").rename({"loss": "loss "}).write_csv(path)
    assert load_results(path).loss == pytest.approx(t["loss"].to_numpy())
    text = pl.when(pl.int_range(pl.len()).is_in([2, 7])).then(pl.lit("n/a")).otherwise(pl.col("tokens").cast(pl.Utf8))
    t.with_columns(tokens=text).write_csv(path)
    with pytest.raises(UserError, match=r"r.csv: column tokens has 2 completed row\(s\) of 15 that are not numbers") as e:
        load_results(path)
    assert "n/a" not in str(e.value).split("(text such as")[0]
    # text in a row that is not fitted (a failed run's loss written "diverged") is no number, not an error
    status = pl.when(pl.int_range(pl.len()) == 2).then(pl.lit("failed")).otherwise(pl.lit("completed"))
    loss = pl.when(pl.int_range(pl.len()) == 2).then(pl.lit("diverged")).otherwise(pl.col("loss").cast(pl.Utf8))
    t.with_columns(status=status, loss=loss).write_csv(path)
    res = load_results(path)
    assert res.n == 14 and res.excluded == [{"run_id": "row2", "reason": "status failed"}]


def test_status_written_another_way_is_completed_and_empty_tables_are_named(tmp_path):
    t = _small()
    f = load_results(t.with_columns(status=pl.lit(" Completed")))
    assert f.n == 15 and f.excluded == []
    path = tmp_path / "empty.csv"
    t.head(0).write_csv(path)
    with pytest.raises(UserError, match=r"empty.csv is empty \(0 rows; columns run_id"):
        load_results(path)


def test_infinite_optional_values_are_refused():
    t = _small()
    ids = t["run_id"].to_list()
    for col in ("budget", "unique_tokens"):
        bad = (t if col in t.columns else t.with_columns(unique_tokens=pl.col("tokens") * 10)).with_columns(
            pl.when(pl.col("run_id") == ids[4]).then(float("inf")).otherwise(pl.col(col)).cast(pl.Float64).alias(col))
        with pytest.raises(UserError, match=f"column {col} is non-positive or infinite in 1 run.*{re.escape(ids[4])}"):
            load_results(bad)
