"""Held-out-budget validation, the parameter count fitted, minimal tables and multi-epoch flags."""

import json
import re
import subprocess
import sys
import warnings

import numpy as np
import polars as pl
import pytest

from analysis.fit import FitConfig, FitWarning, fit_results, format_fit_table, load_fit, write_fits
from analysis.synthetic import HOFFMANN, Law, synthetic_results
from analysis.table import load_results
from ehrfm.errors import UserError

LAW = HOFFMANN


def _true_lmin(c):
    n = np.geomspace(LAW.n_opt(c) / 30, LAW.n_opt(c) * 30, 20001)
    return float(LAW.loss(n, c / (6 * n)).min())


@pytest.fixture(scope="module")
def table():
    return synthetic_results(LAW, budgets=np.logspace(18, 21, 5), sizes=9, noise=0.002, seed=0, center_jitter_decades=0.0)


@pytest.fixture(scope="module")
def fit(table):
    return fit_results(table, approaches=(2, 3), bootstrap=100, seed=0)


def test_holdout_predicts_the_largest_budget_from_the_others(fit):
    h = fit.holdout
    assert h["budget"] == 1e21 and h["fitted_budgets"] == pytest.approx([1e18, 10**18.75, 10**19.5, 10**20.25])
    by = {b.budget: b for b in fit.approach2.budgets}
    # Observed values are the held-out budget's own parabola (the main fit uses every budget).
    assert h["observed_loss"] == by[1e21].loss_min and h["observed_n_opt"] == by[1e21].n_opt
    assert fit.approach2.n_budgets_used == 5
    assert h["previous_loss"] == by[10**20.25].loss_min
    assert h["rel_error"] == pytest.approx(abs(h["predicted_loss"] - h["observed_loss"]) / h["observed_loss"], rel=1e-12)
    # The law knows the next budget: within 0.3% of what its runs show, and of the true frontier,
    # while "no change" (the previous budget's L_min) is 8% off.
    assert h["loss_method"] == "approach3" and h["rel_error"] < 0.003
    assert h["predicted_loss"] == pytest.approx(_true_lmin(1e21), rel=0.002)
    assert h["no_change_rel_error"] > 0.05 and h["error_ratio"] < 0.05
    assert h["predicted_loss_ci"][0] < h["predicted_loss"] < h["predicted_loss_ci"][1]
    assert h["predicted_n_opt"] == pytest.approx(h["observed_n_opt"], rel=0.02)
    assert h["predicted_n_opt"] == pytest.approx(float(LAW.n_opt(1e21)), rel=0.03)
    # A pure power law of L_min in C (no irreducible term) is biased on the same exact law.
    assert abs(h["approach2_predicted_loss"] / h["observed_loss"] - 1) > 0.02


def test_holdout_in_fits_json_report_and_plot(fit, table, tmp_path):
    out = write_fits(fit, tmp_path / "fit", results=load_results(table))
    j = json.loads((out / "fits.json").read_text())
    keys = {"budget", "predicted_loss", "observed_loss", "rel_error", "previous_loss", "predicted_n_opt", "observed_n_opt"}
    assert keys <= set(j["holdout"]) and j["holdout"]["budget"] == 1e21
    md = format_fit_table(fit)
    assert "Held-out budget 1e+21 FLOPs" in md and f"relative error {100 * fit.holdout['rel_error']:.2f}%" in md
    assert "| 1e+21 (held out) |" in md
    assert load_fit(out).holdout == j["holdout"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.plots import plot_isoflops

    fig, ax = plt.subplots()
    plot_isoflops(ax, fit, load_results(table))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("predicted from smaller budgets" in t for t in labels), labels
    plt.close(fig)


def test_holdout_needs_three_budgets():
    t = synthetic_results(LAW, budgets=(1e18, 1e19), sizes=7, noise=0.002, seed=0)
    with pytest.warns(FitWarning, match="held-out budget: not made: 2 usable"):
        f = fit_results(t, approaches=(2,), bootstrap=20, seed=0)
    assert f.holdout is None and "2 usable IsoFLOP budget" in f.not_fitted["holdout"]
    assert f.to_json()["holdout"] is None
    assert "Held-out budget: not made (2 usable" in format_fit_table(f)
    off = fit_results(t, config=FitConfig(approaches=(2,), bootstrap=0, holdout=False))
    assert off.holdout is None and "holdout" not in off.not_fitted


def _with_embeddings(t, vocab=200_000):
    # Total = non-embedding + embedding and head (2 V d), d ~ (N / 12)^(1/3): at these sizes the
    # embeddings are about as large as the rest, as in small EHR models with big vocabularies.
    d = (pl.col("n_params") / 12) ** (1 / 3)
    return t.with_columns(n_params_total=(pl.col("n_params") + 2 * vocab * d).round().cast(pl.Int64))


def test_n_count_switch_changes_the_column_fitted(table, tmp_path):
    t = _with_embeddings(table)
    total = fit_results(t, approaches=(2,), bootstrap=0)
    nonemb = fit_results(t, config=FitConfig(approaches=(2,), bootstrap=0, n_count="non-embedding"))
    assert total.n_count == "total" and nonemb.n_count == "non-embedding"
    assert total.to_json()["n_count"] == "total" and total.inputs["n_count_note"] is None
    # Each budget's N_opt lies among the counts it was fitted on.
    for bt, bn in zip(total.approach2.budgets, nonemb.approach2.budgets, strict=True):
        rows = t.filter(pl.col("budget") == bt.budget)
        assert rows["n_params_total"].min() <= bt.n_opt <= rows["n_params_total"].max()
        assert rows["n_params"].min() <= bn.n_opt <= rows["n_params"].max()
        assert bt.n_opt > 1.1 * bn.n_opt
    # Embeddings are a shrinking share as models grow: the total count's exponent is smaller.
    assert total.approach2.a < nonemb.approach2.a - 0.02
    assert "N counts total parameters" in format_fit_table(total)
    assert "N counts non-embedding parameters" in format_fit_table(nonemb)
    # The plots and runs.parquet use the count fitted.
    out = write_fits(total, tmp_path / "fit", results=load_results(t), plots=False)
    runs = pl.read_parquet(out / "runs.parquet")
    assert runs["n_params"].to_list() == pytest.approx(t["n_params_total"].cast(pl.Float64).to_list())
    p = subprocess.run([sys.executable, "-m", "ehrfm", "fit", str(_write(t, tmp_path)), "--out", str(tmp_path / "cli"),
                        "--approach", "2", "--bootstrap", "0", "--no-plots", "--n-count", "non-embedding"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "cli" / "fits.json").read_text())["n_count"] == "non-embedding"


def _write(t, tmp_path):
    path = tmp_path / "results.parquet"
    t.write_parquet(path)
    return path


def test_minimal_table_falls_back_to_n_params_and_says_so(table):
    minimal = table.select("n_params", "tokens", "flops", "loss")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f = fit_results(minimal, bootstrap=20, seed=0)
    assert f.n_count == "non-embedding" and f.approach2 is not None and f.approach3 is not None
    assert "no n_params_total column" in f.inputs["n_count_note"]
    assert any("no n_params_total column" in str(w.message) for w in caught)
    assert "total was requested" in format_fit_table(f)
    # A total count missing for some runs: the same fallback, naming them.
    partial = _with_embeddings(table).with_columns(
        n_params_total=pl.when(pl.col("run_id") == table["run_id"][0]).then(None).otherwise(pl.col("n_params_total")))
    with pytest.warns(FitWarning, match=re.escape(f"missing in 1 of 45 completed runs ({table['run_id'][0]})")):
        g = fit_results(partial, approaches=(2,), bootstrap=0)
    assert g.n_count == "non-embedding"


def test_runs_over_one_epoch_are_flagged_and_can_be_left_out(table):
    t = table.with_columns(epochs=pl.when(pl.col("n_params") == pl.col("n_params").min().over("budget"))
                           .then(2.5).otherwise(0.8))
    f = fit_results(t, approaches=(2,), bootstrap=0)
    multi = f.inputs["multi_epoch_runs"]
    assert len(multi) == 5 and all(m["epochs"] == 2.5 for m in multi)
    md = format_fit_table(f)
    assert "**5 fitted run(s) over 1 epoch**" in md and "kept in the fits" in md
    assert f.n_fitted == 45
    cut = fit_results(t, config=FitConfig(approaches=(2,), bootstrap=0, max_epochs=1.0))
    assert cut.n_fitted == 40 and len(cut.excluded) == 5 and "2.50 epochs > max_epochs 1" in cut.excluded[0]["reason"]
    assert cut.inputs["multi_epoch_runs"] == []
    # Without epochs or unique_tokens the limit cannot be applied: refused, not silently ignored.
    bare = t.select("n_params", "tokens", "flops", "loss")
    with pytest.raises(UserError, match=r"--max-epochs 1 needs each run's epochs: the table has no epochs or unique_tokens"):
        fit_results(bare, config=FitConfig(approaches=(2,), bootstrap=0, max_epochs=1.0))
    assert fit_results(bare, config=FitConfig(approaches=(2,), bootstrap=0, max_epochs=float("inf"))).n_fitted == 45


def test_an_unusable_largest_budget_holds_out_the_largest_usable_one(table):
    top = table.filter(pl.col("budget") == 1e21)["run_id"][:2].to_list()
    t = table.filter((pl.col("budget") < 1e21) | pl.col("run_id").is_in(top))  # 2 runs: no parabola
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        f = fit_results(t, approaches=(2, 3), bootstrap=20, seed=0)
    h = f.holdout
    assert h["budget"] == pytest.approx(10**20.25) and len(h["fitted_budgets"]) == 3
    assert "largest budget 1e+21 was not usable (2 distinct model size" in h["note"]
    assert h["rel_error"] < 0.005
    assert "Note: the largest budget 1e+21 was not usable" in format_fit_table(f)


def test_an_unidentified_approach3_does_not_predict_the_held_out_loss():
    """A law whose N term dies out within the sampled sizes (alpha = 5) puts the smaller budgets'
    Approach 3 alpha at the searched range's edge: the held-out L_min then comes from Approach 2's
    L_min law, and the note says why; a Chinchilla-like law keeps Approach 3's frontier."""
    steep = Law(E=1.0, A=0.3 * 3e4**5, B=410.7, alpha=5.0, beta=0.28)
    t = synthetic_results(steep, budgets=np.logspace(18, 21, 5), sizes=7, span_decades=1.0, noise=0.002, seed=0,
                          center_jitter_decades=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        h = fit_results(t, config=FitConfig(bootstrap=50)).holdout
    assert h["loss_method"] == "approach2" and np.isfinite(h["predicted_loss"])
    assert h["predicted_loss"] == h["approach2_predicted_loss"]
    assert "not used for L_min" in h["note"] and "alpha at the searched range's edge" in h["note"]
    t = synthetic_results(LAW, budgets=np.logspace(18, 21, 5), sizes=7, noise=0.002, seed=0, center_jitter_decades=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        h = fit_results(t, config=FitConfig(bootstrap=50)).holdout
    assert h["loss_method"] == "approach3" and "note" not in h
