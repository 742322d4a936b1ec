"""Faults a demanding user finds in the analysis and the sweep collector, fixed by kind.

Each test feeds a real table or a real sweep dir (no mocks) that broke a law's trust, an
interval, an error message or a status before its fix:
- all runs on one side of the optimum: Approach 1's envelope then follows the ladders' ends and
  must not be trusted;
- `--bootstrap 1/2`: a "95% interval" from 2 replicates is not one; `--bootstrap 1e9`: one line,
  not a numpy MemoryError traceback;
- `recommend` for a budget far outside the fitted ones (1 FLOP: a model of 0.07 parameters);
- a budget whose runs all have the same loss: named as such, not as an incredible minimum;
- a result.json that says failed or diverged without an error: the status and table say so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import polars as pl
import pytest

from analysis.fit import FitConfig, FitWarning, fit_results, format_fit_table, load_fit, write_fits
from analysis.laws import interval_problem, percentile_ci
from analysis.recommend import format_recommendation, recommend, trust
from analysis.synthetic import BESIROGLU, synthetic_results
from ehrfm.errors import UserError

ENV = {**os.environ, "EHRFM_QUIET": "1", "OMP_NUM_THREADS": "1"}
BUDGETS = (1e18, 1e19, 1e20, 1e21)


def _table(sizes: int = 7) -> pl.DataFrame:
    return synthetic_results(BESIROGLU, budgets=BUDGETS, sizes=sizes, noise=0.005, seed=1)


def _fit(table, tmp_path, name: str, **cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        fit = fit_results(table, config=FitConfig(holdout=False, **cfg))
    return fit, write_fits(fit, tmp_path / name, plots=False)


def test_envelope_runs_at_their_ladders_end_are_not_an_approach1_law(tmp_path):
    # Each budget keeps its 3 smallest sizes: the optimum lies above every ladder, so each budget's
    # best run is its largest size and Approach 1's "law" is the planner's ladder, not N_opt.
    one_side = _table().filter(pl.int_range(pl.len()).over("budget") < 3)
    with pytest.warns(FitWarning, match="Approach 1 is not an estimate of N_opt"):
        fit = fit_results(one_side, config=FitConfig(approaches=(1,), bootstrap=50, holdout=False))
    assert fit.approach1.edge_budgets == list(BUDGETS)
    assert all(p["at_edge"] for p in fit.approach1.points)
    assert "4 at their ladder's end: not bracketed, not trusted" in format_fit_table(fit)
    d = write_fits(fit, tmp_path / "one_side", plots=False)
    fits = json.loads((d / "fits.json").read_text())
    assert fits["approach1"]["a_ci"][0] > 0  # the interval alone would have passed
    ok, why = trust(fits, 1)
    assert not ok and "optimum is not bracketed" in why and "1e+18, 1e+19, 1e+20, 1e+21" in why
    rec = recommend(d, 1e22)
    assert not rec.trusted and format_recommendation(rec).startswith("**No trustworthy scaling law in this fit**")
    assert load_fit(d).approach1.edge_budgets == list(BUDGETS)  # round-trips

    # A sweep whose ladders bracket their optima: no edge, trusted; a fits.json written before
    # edge_budgets existed is read, but its Approach 1 is not trusted: whether its optimum is
    # bracketed is unknown, and unknown never passes (it was trusted, with no word).
    fit, d = _fit(_table(), tmp_path, "bracketed", approaches=(1,), bootstrap=50)
    assert fit.approach1.edge_budgets == [] and trust(json.loads((d / "fits.json").read_text()), 1) == (True, "")
    old = json.loads((d / "fits.json").read_text())
    del old["approach1"]["edge_budgets"]
    (d / "fits.json").write_text(json.dumps(old))
    rec = recommend(d, 1e22)
    assert not rec.trusted and "no approach1 edge_budgets list (an older fit, or null)" in rec.per_approach[0].why_untrusted
    assert load_fit(d).approach1.edge_budgets == []


def test_too_few_bootstrap_replicates_give_no_interval_and_no_trust(tmp_path):
    two = np.array([0.4, 0.6])
    assert np.isnan(percentile_ci(two)).all()
    assert interval_problem(two) == "2 bootstrap replicates: a 95% percentile interval needs >= 20 (--bootstrap)"
    # One replicate was reported as "0 of 1 bootstrap replicates could not be fitted"
    assert interval_problem([0.5]).startswith("1 bootstrap replicate: ")
    assert np.isfinite(percentile_ci(np.linspace(0, 1, 20))).all()
    table = _table()
    for b, trusted in ((2, False), (20, True)):
        fit, d = _fit(table, tmp_path, f"b{b}", approaches=(2,), bootstrap=b)
        ok, why = trust(json.loads((d / "fits.json").read_text()), 2)
        assert ok is trusted, (b, why)
        if not trusted:
            assert np.isnan(fit.approach2.a_ci).all() and "needs >= 20" in why
        # fits.md's header says which: "95% bootstrap intervals, 2 replicates" stood above intervals all n/a
        header = (d / "fits.md").read_text()
        assert ("no intervals: 2 bootstrap replicate(s), too few for a 95% interval (>= 20" in header) is not trusted
        assert ("95% bootstrap intervals, 20 replicates" in header) is trusted
    from analysis.laws import min_replicates

    assert min_replicates(0.95) == 20 and min_replicates(0.9) == 10 and min_replicates(0.99) == 100


def test_a_bootstrap_too_large_for_memory_is_one_line(tmp_path):
    path = tmp_path / "r.csv"
    _table().write_csv(path)
    p = subprocess.run([sys.executable, "-m", "ehrfm", "fit", str(path), "--out", str(tmp_path / "fit"), "--bootstrap",
                        "1000000000", "--no-plots"], capture_output=True, text=True, env=ENV)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "bootstrap must be <= 100,000" in lines[0]
    assert not (tmp_path / "fit").exists()
    with pytest.raises(UserError, match="bootstrap must be <= 100,000"):
        fit_results(_table(), config=FitConfig(bootstrap=100_001))


def test_budgets_far_outside_the_fitted_ones_get_no_trusted_law(tmp_path):
    _, d = _fit(_table(), tmp_path, "fit", approaches=(2,), bootstrap=50)
    assert recommend(d, 1e23).trusted  # 100x past the largest budget: the demo's 100x stays trusted
    assert recommend(d, 1e16).trusted
    for flops, where in ((1.0, "1e+18x below the smallest fitted budget"), (1e25, "1e+04x past the largest fitted budget")):
        rec = recommend(d, flops)
        assert not rec.trusted and not any(p.trusted for p in rec.per_approach)
        text = format_recommendation(rec)
        assert text.startswith("**No trustworthy scaling law in this fit**") and where in text.splitlines()[0]
    p = subprocess.run([sys.executable, "-m", "ehrfm", "recommend", str(d), "--flops", "1"], capture_output=True, text=True, env=ENV)
    assert p.returncode == 0 and p.stdout.startswith("**No trustworthy scaling law"), p.stdout + p.stderr


def test_a_budget_whose_runs_have_one_loss_is_named_flat(tmp_path):
    table = _table().with_columns(loss=pl.when(pl.col("budget") == 1e19).then(pl.lit(2.5)).otherwise(pl.col("loss")))
    fit, _ = _fit(table, tmp_path, "flat", approaches=(2,), bootstrap=0)
    flat = next(bf for bf in fit.approach2.budgets if bf.budget == 1e19)
    assert not flat.used and "have the same loss (2.5) at every size" in flat.reason, flat.reason
    assert fit.approach2.n_budgets_used == 3
    with pytest.raises(UserError, match="same loss"):
        fit_results(table.with_columns(loss=pl.lit(2.5)), config=FitConfig(approaches=(2,), bootstrap=0, holdout=False))


def test_a_result_that_failed_without_an_error_still_gives_a_reason(tok, tmp_path):
    from sweeps.collect import collect_sweep, status_rows
    from sweeps.plan import plan_sweep

    sweep = tmp_path / "sweep"
    _, rows, _ = plan_sweep(tok, [2e8, 6e8], sweep, sizes=2, context=64, min_steps=1, train={"batch_size": 4})
    failed, diverged = rows[0]["run_id"], rows[1]["run_id"]
    for rid, status in ((failed, "failed"), (diverged, "diverged")):
        (sweep / "runs" / rid).mkdir(parents=True)
        (sweep / "runs" / rid / "result.json").write_text(json.dumps({"status": status}))
    by_id = {r["run_id"]: r for r in status_rows(sweep)}
    assert by_id[failed]["state"] == "failed" and by_id[diverged]["state"] == "diverged"
    assert by_id[failed]["error"] == f"no reason recorded (runs/{failed}/result.json says failed without an error)"
    table = pl.read_parquet(collect_sweep(sweep))
    errors = dict(zip(table["run_id"], table["error"], strict=True))
    assert "diverged without an error" in errors[diverged] and errors[rows[2]["run_id"]] is None
    p = subprocess.run([sys.executable, "-m", "ehrfm", "sweep", "status", str(sweep)], capture_output=True, text=True, env=ENV)
    assert p.returncode == 0 and f"{diverged}: diverged: no reason recorded" in p.stdout, p.stdout + p.stderr
