"""Faults a scaling-law reviewer finds in `ehrfm fit` / `ehrfm recommend`, fixed by kind (second round).

Each test builds a small table from a known law and checks real numbers:
- the data-constrained optimum was searched 4 decades around N_opt only, so with D_opt thousands
  of epochs over the unique tokens it was the grid's end (100 N_opt), reported as an optimum;
- `--bootstrap 0` printed Approach 3's A and B as numbers, though nothing checked that they are
  identified, under a header of "95% bootstrap intervals, 0 replicates";
- replicate runs of one shape (seeds): Approach 1 took the luckiest seed, and nothing said so;
- a nearly flat IsoFLOP parabola: N_opt overflowed to inf and D_opt to "0" tokens (numpy
  RuntimeWarnings on stderr), and a left-out budget's far vertex squashed every plot;
- a loss column in bits (or a perplexity): half the sweep excluded as "blow-ups", the rest fitted;
- a held-out error ratio of 0.004 printed "0.00" (reads as an exact prediction);
- W&B / MLflow tables (status "finished"): no completed runs; errors that did not count the statuses;
- `--max-epochs inf`: an Infinity token in fit_config.json (not JSON);
- a budget column holding each run's own FLOPs: 21 "IsoFLOP budgets" of 1-2 runs;
- tokens in billions or flops in PFLOP: fitted as models of a few parameters on a few tokens.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from analysis.fit import FitConfig, FitWarning, fit_results, format_fit_table, format_holdout, ratio_text, write_fits
from analysis.laws import effective_tokens
from analysis.recommend import recommend
from analysis.synthetic import BESIROGLU, synthetic_results
from ehrfm.errors import UserError
from ehrfm.law_checks import trust
from ehrfm.results import divergence_reason

ENV = {**os.environ, "EHRFM_QUIET": "1", "OMP_NUM_THREADS": "1"}
BUDGETS = (1e18, 1e19, 1e20, 1e21)


def _table(noise: float = 0.005, sizes: int = 7) -> pl.DataFrame:
    return synthetic_results(BESIROGLU, budgets=BUDGETS, sizes=sizes, noise=noise, seed=1)


def _fit(table, **cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        return fit_results(table, config=FitConfig(**{"holdout": False, **cfg}))


def _flat_top_budget(curvature: float) -> pl.DataFrame:
    """The 1e21 budget's losses falling almost linearly in ln N: its parabola's vertex lies far right."""
    t = _table()
    top = t["budget"].to_numpy() == 1e21
    x = np.log(t["n_params"].to_numpy()[top])
    loss = t["loss"].to_numpy().copy()
    loss[top] = 2.5 - 0.05 * (x - x.min()) + curvature * (x - x.min()) ** 2
    return t.with_columns(pl.Series("loss", loss))


def test_data_constrained_optimum_is_searched_until_it_is_found(tmp_path):
    fit = _fit(_table(), approaches=(3,), bootstrap=40)
    d = write_fits(fit, tmp_path / "fit", plots=False)
    c, unique = 1e21, 1e6  # D_opt is ~64,000 epochs over 1e6 unique tokens
    rec = recommend(d, c, unique_tokens=unique)
    dc = rec.data_constrained
    a3 = fit.approach3
    k = a3.flops_per_param_token

    # Muennighoff et al.'s full law: repeated tokens and parameters past U_N (the compute-optimal size for the unique
    # tokens) both lose value. Before 2026-12-07 only the tokens did, and the "optimum" was 1.3e13 parameters on
    # 126 epochs, past 300 N_opt, a model their law says is mostly worthless parameters (a helper).
    u_n = a3.G * (unique * a3.G) ** (a3.a / a3.b)
    n = np.logspace(math.log10(u_n) - 2, math.log10(c / (k * unique)) + 1, 400_001)
    full = a3.E + a3.A / effective_tokens(n, u_n, 5.309) ** a3.alpha + a3.B / effective_tokens(c / (k * n), unique) ** a3.beta
    best = int(np.argmin(full))
    assert abs(math.log(dc["n_opt"] / n[best])) < 0.02, (dc["n_opt"], n[best])
    assert dc["loss"] == pytest.approx(full[best], rel=1e-4)
    assert dc["n_opt"] < 10 * rec.n_opt  # not the old search's 300+ N_opt
    assert "note" not in dc  # an interior optimum, not "at the edge of the searched range"
    lo, hi = dc["n_opt_ci"]
    assert lo <= dc["n_opt"] <= hi
    assert dc["epochs"] > 1000  # the data is the limit: far more epochs than the old optimum's 50-500
    # Inside the data: no repetition, no data-constrained view.
    assert recommend(d, 1e19, unique_tokens=1e13).data_constrained is None


def test_bootstrap_0_says_approach3_parameters_are_unchecked():
    fit = _fit(_table(), approaches=(2, 3), bootstrap=0)
    text = format_fit_table(fit)
    assert "95% bootstrap intervals, 0 replicates" not in text
    assert "no intervals (--bootstrap 0: nothing below has an uncertainty)" in text.splitlines()[0]
    row = next(ln for ln in text.splitlines() if ln.startswith("| 3 parametric"))
    for name in ("E", "A", "B", "alpha", "beta"):
        assert f"{name}={getattr(fit.approach3, name):.3g} (unchecked)" in row
    assert "whether E, A, B, alpha and beta are identified is unchecked" in text
    # With intervals the check is made and the cells carry them.
    boot = format_fit_table(_fit(_table(), approaches=(3,), bootstrap=30))
    assert "(unchecked)" not in boot and "30 replicates" in boot


def test_seed_replicates_enter_approach1_as_their_shape_mean():
    # Two seeds per shape, one 3% above the noiseless law and one below by a shape-dependent 0-3%:
    # their mean is the law, their minimum is the luckiest seed.
    law = _table(noise=0.0)
    rng = np.random.default_rng(0)
    delta = rng.uniform(0.0, 0.03, law.height)
    seeds = pl.concat([
        law.with_columns(pl.col("run_id") + "-s0", loss=pl.col("loss") * (1 + pl.Series(delta))),
        law.with_columns(pl.col("run_id") + "-s1", loss=pl.col("loss") * (1 - pl.Series(delta))),
    ])
    fit = _fit(seeds, approaches=(1,), bootstrap=0)
    truth = dict(zip(zip(law["budget"], law["n_params"], strict=True), law["loss"], strict=True))
    for p in fit.approach1.points:
        assert p["n_runs"] == 2
        assert p["loss"] == pytest.approx(truth[(p["budget"], p["n_params"])], rel=1e-12)  # was the lower seed
    clean = _fit(law, approaches=(1,), bootstrap=0).approach1
    assert fit.approach1.loss_exponent == pytest.approx(clean.loss_exponent, rel=1e-9)
    assert fit.inputs["replicates"] == {"shapes": 28, "runs": 56, "max": 2}
    assert "**28 shape(s) (budget, N, D) were run more than once** (56 runs, up to 2 per shape" in format_fit_table(fit)
    assert _fit(law, approaches=(1,), bootstrap=0).inputs["replicates"] is None


def test_a_nearly_flat_parabola_has_no_minimum_and_no_overflow():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's overflow warnings went to stderr
        fit = _fit(_flat_top_budget(1e-5), approaches=(2,), bootstrap=40)
    top = fit.approach2.budgets[-1]
    assert top.budget == 1e21 and not top.used
    assert math.isnan(top.n_opt) and math.isnan(top.d_opt) and math.isnan(top.loss_min)  # were inf and 0.0
    assert top.reason.startswith("the parabola is nearly flat: its vertex, ln N = 2.52e+03, lies far outside")
    row = next(ln for ln in format_fit_table(fit).splitlines() if ln.startswith("| 1e+21 |"))
    assert row.startswith("| 1e+21 | 7 | n/a | n/a | n/a |")
    assert fit.approach2.n_budgets_used == 3 and fit.approach2.a == pytest.approx(0.5, abs=0.03)


def test_a_left_out_budgets_far_minimum_does_not_set_the_plot_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.plots import plot_isoflops, plot_optimal_scaling
    from analysis.table import load_results

    table = _flat_top_budget(1e-3)
    fit = _fit(table, approaches=(2,), bootstrap=0)
    top = fit.approach2.budgets[-1]
    assert not top.used and top.n_opt > 1e18 and top.d_opt < 100  # vertex 2.5e19 parameters, 7 tokens
    res = load_results(table)
    fig, (a1, a2, a3) = plt.subplots(1, 3)
    plot_isoflops(a1, fit, res)
    plot_optimal_scaling(a2, fit, res, "n")
    plot_optimal_scaling(a3, fit, res, "d")
    try:
        assert a1.get_xlim()[1] < 1e12  # was ~1e20: every used budget squeezed into the left edge
        assert a2.get_ylim()[1] < 1e12
        assert a3.get_ylim()[0] > 1e8  # was ~1: a D_opt of 7 tokens
    finally:
        plt.close(fig)


def _cli_fit_refuses(table: pl.DataFrame, csv: Path) -> str:
    """`ehrfm fit` of `table` written to `csv`: exit 2, one stderr line (returned), no fit dir left."""
    table.write_csv(csv)
    out = csv.parent / "fit"
    p = subprocess.run([sys.executable, "-m", "ehrfm", "fit", str(csv), "--out", str(out), "--bootstrap", "0", "--no-plots"],
                       env=ENV, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert not out.exists()
    return p.stderr


def test_a_loss_in_bits_is_refused_not_half_excluded_as_blowups(tmp_path):
    t = _table().with_columns(vocab_size=pl.lit(64))  # ln 64 = 4.16 nats; the runs' losses 2.3-4.1 nats
    bits = t.with_columns(loss=pl.col("loss") / math.log(2))
    # 11 of 28: the table has no eval_loss_se, so a loss counts as above ln V by more than 5% of it (blow_up_margin)
    with pytest.raises(UserError, match=r"column loss is above uniform guessing, ln\(vocab_size\) nats/token, in 11 of 28 "
                                        r"completed runs: a loss in another unit"):
        _fit(bits)
    err = _cli_fit_refuses(bits, tmp_path / "bits.csv")
    assert "bits.csv" in err and "nats = bits x 0.6931" in err
    # The same runs in nats fit every run; one real blow-up is still excluded, not an error.
    assert _fit(t, approaches=(2,), bootstrap=0).n_fitted == 28
    one = t.with_columns(loss=pl.when(pl.int_range(pl.len()) == 3).then(9.0).otherwise(pl.col("loss")))
    assert _fit(one, approaches=(2,), bootstrap=0).n_fitted == 27
    # A run at ln V within 3 of its eval standard errors is a measurement (the trainer calls it completed), not a blow-up.
    at_uniform = t.with_columns(eval_loss_se=pl.lit(0.01),
                                loss=pl.when(pl.int_range(pl.len()) == 3).then(math.log(64) + 0.02).otherwise(pl.col("loss")))
    assert _fit(at_uniform, approaches=(2,), bootstrap=0).n_fitted == 28
    beyond = at_uniform.with_columns(loss=pl.when(pl.int_range(pl.len()) == 3).then(math.log(64) + 0.04).otherwise(pl.col("loss")))
    assert _fit(beyond, approaches=(2,), bootstrap=0).n_fitted == 27
    # Without a standard error (an eval of one subject: the trainer records eval_loss_se null) the margin is the
    # trainer's, 5% of ln V (ehrfm.results.blow_up_margin): such a run 0.02 nats above ln V was excluded by the fit
    # though the trainer, by the same rule, called it completed.
    no_se = at_uniform.with_columns(eval_loss_se=pl.lit(None, dtype=pl.Float64))
    assert _fit(no_se, approaches=(2,), bootstrap=0).n_fitted == 28
    assert _fit(no_se.drop("eval_loss_se"), approaches=(2,), bootstrap=0).n_fitted == 28
    far = no_se.with_columns(loss=pl.when(pl.int_range(pl.len()) == 3).then(math.log(64) * 1.06).otherwise(pl.col("loss")))
    assert _fit(far, approaches=(2,), bootstrap=0).n_fitted == 27
    assert divergence_reason(9, vocab_size=64, val_loss=math.log(64) + 0.02) is None
    assert divergence_reason(9, vocab_size=64, val_loss=math.log(64) * 1.06) is not None


def test_small_ratios_are_not_printed_as_zero():
    assert [ratio_text(0.69), ratio_text(0.0045), ratio_text(0.0223, percent=True), ratio_text(4e-5, percent=True),
            ratio_text(None), ratio_text(0)] == ["0.69", "0.004", "2.23%", "0.004%", "n/a", "0.00"]
    fit = _fit(_table(), approaches=(2, 3), bootstrap=0, holdout=True)
    h = fit.holdout
    assert h["error_ratio"] < 0.005  # Approach 3 predicts the held-out 1e21 budget almost exactly
    text = format_holdout(fit)
    assert f"error ratio {ratio_text(h['error_ratio'])};" in text and "error ratio 0.00;" not in text
    # without intervals the main law is not trusted (recommend refuses it): the paragraph says so beside "beats"
    assert "so the law beats it" in text and "Beside it: the main fit's Approach 3 is not trusted (" in text, text
    assert "Beside it: the main fit's Approach 2 is not trusted (" in text, text  # its N_opt comes from Approach 2
    trusted = _fit(_table(), approaches=(2, 3), bootstrap=200, holdout=True)
    assert trust(trusted.to_json(), 3)[0] and "Beside it" not in format_holdout(trusted), format_holdout(trusted)
    # A ratio over an exact "no change" forecast is inf, written null in fits.json: "n/a", not a crash.
    fit.holdout = {**h, "error_ratio": None}
    assert "the law does not beat it (error ratio n/a;" in format_holdout(fit)


def test_other_trackers_finished_runs_are_completed_and_statuses_are_counted(tmp_path):
    t = _table()
    crashed = pl.int_range(pl.len()) % 4 == 0
    wandb = t.with_columns(status=pl.when(crashed).then(pl.lit("crashed")).otherwise(pl.lit("FINISHED")))  # W&B / MLflow
    fit = _fit(wandb, approaches=(2,), bootstrap=0)
    assert fit.n_fitted == 21 and [e["reason"] for e in fit.excluded] == ["status crashed"] * 7  # was: no completed runs
    odd = t.with_columns(status=pl.when(crashed).then(pl.lit("crashed")).otherwise(pl.lit("ok")))
    odd.write_csv(tmp_path / "odd.csv")
    p = subprocess.run([sys.executable, "-m", "ehrfm", "fit", str(tmp_path / "odd.csv"), "--out", str(tmp_path / "fit"),
                        "--bootstrap", "0", "--no-plots"], env=ENV, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "; status ok in 21, status crashed in 7): only rows with status completed (or finished, succeeded, success)" in p.stderr
    # One budget left after exclusions: the error says why the others are gone.
    one = t.with_columns(status=pl.when(pl.col("budget") > 1e18).then(pl.lit("failed")).otherwise(pl.col("status")))
    with pytest.raises(UserError, match=r"all 7 completed runs are one IsoFLOP budget \(21 other rows not fitted: status failed 21\)"):
        _fit(one)


def test_fit_config_json_has_no_infinity_token(tmp_path):
    import json

    from analysis.fit import load_fit

    fit = _fit(_table(), approaches=(2,), bootstrap=0, max_epochs=math.inf)  # `--max-epochs inf`: no limit
    d = write_fits(fit, tmp_path / "fit", plots=False)

    def refuse(token):
        raise AssertionError(f"{token} in JSON")

    for name in ("fits.json", "fit_config.json"):
        json.loads((d / name).read_text(), parse_constant=refuse)
    assert json.loads((d / "fit_config.json").read_text())["max_epochs"] is None
    assert load_fit(d).config.max_epochs is None


def test_a_budget_column_of_each_runs_own_flops_is_refused(tmp_path):
    # Another tool wrote each run's actual compute (planned budget +-1%) as its budget: 21 "budgets"
    # of 1-2 runs, Approach 2 could fit none and Approach 1 took 10 runs of one ladder as optima.
    t = _table()
    jitter = pl.Series(np.random.default_rng(0).uniform(-0.01, 0.01, t.height))
    own = t.with_columns(flops=pl.col("flops") * (1 + jitter), budget=pl.col("flops") * (1 + jitter))
    with pytest.raises(UserError, match=r"column budget holds 21 values, 21 of them within 12% of another \(e\.g\. 9\.903e\+17 "
                                        r"and 9\.954e\+17\): an IsoFLOP budget is the planned compute"):
        _fit(own)
    # Without the column, the same runs are grouped by their flops into the 4 budgets.
    fit = _fit(own.drop("budget"), approaches=(2,), bootstrap=0)
    assert fit.approach2.n_budgets_used == 4 and fit.approach2.a == pytest.approx(0.5, abs=0.02)
    # Budgets written with float noise (0.001%) are still one budget each, not an error.
    noisy = t.with_columns(budget=pl.col("budget") * (1 + 1e-5 * pl.int_range(pl.len()).cast(pl.Float64) / pl.len()))
    assert _fit(noisy, approaches=(2,), bootstrap=0).approach2.n_budgets_used == 4


def test_tokens_or_flops_in_another_unit_are_refused(tmp_path):
    t = _table()
    # Another tool's table: tokens in billions ("20.6"), or flops in PFLOP: every N_opt and D_opt
    # would come out in the wrong unit (a 1e21 budget "trained" on 20 tokens).
    for table, ratio, hint in ((t.with_columns(tokens=pl.col("tokens") / 1e9), "6e+09", "is n_params or tokens in millions or billions"),
                               (t.with_columns(flops=pl.col("flops") / 1e15, budget=pl.col("budget") / 1e15), "6e-15",
                                "is flops in another unit")):
        with pytest.raises(UserError, match=rf"columns flops, n_params and tokens disagree: flops / \(n_params x tokens\) is "
                                            rf"{re.escape(ratio)} in the median completed run .*: {hint}"):
            _fit(table)
    assert "pflop.csv" in _cli_fit_refuses(table, tmp_path / "pflop.csv")
    # A tiny model with a large vocabulary spends hundreds of FLOPs per non-embedding parameter and token: read.
    from ehrfm import shapes

    cfg = shapes.shape_for_params(3000, 30000, 4096)
    ratio = shapes.flops_per_token(cfg) / shapes.n_params(cfg)
    assert 100 < ratio < 1e5
    tiny = t.with_columns(flops=pl.col("flops") * ratio / 6, budget=pl.col("budget") * ratio / 6)
    assert _fit(tiny, approaches=(2,), bootstrap=0).approach2.n_budgets_used == 4


def test_a_directory_given_as_the_results_table_gets_the_path_to_pass(tmp_path):
    from analysis.fit import fit_results

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text("{}")
    with pytest.raises(UserError, match=r"is a directory, not a table: a sweep dir: run `ehrfm sweep collect .*sweep` first"):
        fit_results(sweep)
    pl.DataFrame({"n_params": [1.0]}).write_parquet(sweep / "results.parquet")
    with pytest.raises(UserError, match=r"is a directory \(a sweep dir\?\): pass .*sweep/results.parquet"):
        fit_results(sweep)
    with pytest.raises(UserError, match="is a directory, not a table: pass the results table"):
        fit_results(tmp_path)


def test_a_dataframe_is_named_in_messages_as_its_caller_says():
    from analysis.fit import fit_results

    one_budget = pl.DataFrame({"n_params": [1e5, 2e5, 4e5], "tokens": [2e6, 1e6, 5e5], "flops": [1.2e12] * 3, "loss": [3.0, 2.9, 3.1]})
    with pytest.raises(UserError, match=r"^demo/sweep/results.parquet \(stage 1's runs\): all 3 completed runs are one"):
        fit_results(one_budget, name="demo/sweep/results.parquet (stage 1's runs)")
    with pytest.raises(UserError, match=r"^\(a DataFrame\): all 3 completed runs"):
        fit_results(one_budget)
