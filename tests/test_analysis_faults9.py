"""Faults a review helper found in `ehrfm fit` and `ehrfm recommend` (2026-12-07), each of its kind.

1. A failed run recorded only by an `error` text (no status column) was fitted as a measurement.
2. A hand-edited fits.json was judged only by its a and b against their intervals: G = 1e6 beside
   [0.71, 2.75], B x 100, n_coef x 1000, a reversed alpha interval, a G interval spanning 0 beside the
   flag "identified" and an alpha interval reaching 0 were all trusted, often as the headline.
3. Another fit's bootstrap.parquet copied beside a fits.json gave that fit's intervals, trusted.
"""

from __future__ import annotations

import json
import shutil
import warnings

import polars as pl
import pyarrow.parquet as pq
import pytest

from analysis.fit import FitConfig, FitWarning, fit_results, load_fits, write_fits
from analysis.recommend import recommend
from analysis.synthetic import HOFFMANN, synthetic_results
from analysis.table import load_results
from ehrfm.law_checks import trust

BUDGETS = (1e18, 1e19, 1e20, 1e21)


def _table(seed: int = 1, budgets=BUDGETS) -> pl.DataFrame:
    return synthetic_results(HOFFMANN, budgets=budgets, sizes=7, noise=0.005, seed=seed)


def _fit(table, **cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        return fit_results(load_results(table), config=FitConfig(**{"holdout": False, "bootstrap": 40, **cfg}))


def test_a_row_with_an_error_text_is_a_failed_run_whatever_its_status():
    t = _table().select("n_params", "tokens", "flops", "loss")
    oom = pl.int_range(pl.len()) % 9 == 4  # 3 of 28 rows
    t = t.with_columns(error=pl.when(oom).then(pl.lit("CUDA OOM at step 120")).otherwise(pl.lit(None)),
                       loss=pl.when(oom).then(pl.col("loss") * 1.5).otherwise(pl.col("loss")))
    fit = _fit(t, approaches=(2,), bootstrap=0)
    assert fit.n_fitted == 25 and len(fit.excluded) == 3
    assert all(e["reason"] == "failed: an error is recorded: CUDA OOM at step 120" for e in fit.excluded)
    # beside a status that says completed, the error still wins; an empty text is no error
    both = t.with_columns(status=pl.lit("completed"), error=pl.when(oom).then(pl.col("error")).otherwise(pl.lit("  ")))
    fit = _fit(both, approaches=(2,), bootstrap=0)
    assert fit.n_fitted == 25 and fit.excluded[0]["reason"].startswith("failed: an error is recorded beside status completed")


@pytest.fixture(scope="module")
def fitted():
    return _fit(_table()).to_json()


@pytest.mark.parametrize("edit, problem", [
    (lambda f: f["approach3"].update(G=1e6), r"G = 1e\+06 lies far outside its own interval"),
    (lambda f: f["approach3"].update(B=f["approach3"]["B"] * 100), r"B = .* lies far outside its own interval"),
    (lambda f: f["approach3"].update(E=3.0), r"E = 3 lies far outside its own interval"),
    (lambda f: f["approach3"].update(alpha_ci=f["approach3"]["alpha_ci"][::-1]), r"the interval of alpha in fits.json is reversed"),
    (lambda f: f["approach3"].update(G_ci=[0.0, 5.0]), r"its N_opt coefficient G is not identified"),
    (lambda f: f["approach3"].update(alpha_ci=[-0.05, 0.7]), r"the interval of alpha = .* includes 0"),
    (lambda f: f["approach2"].update(n_coef=f["approach2"]["n_coef"] * 1000), r"n_coef = .* lies far outside its own interval"),
])
def test_every_fitted_number_is_judged_against_its_interval(fitted, edit, problem):
    k = 2 if "approach2" in problem or "n_coef" in problem else 3
    assert trust(fitted, k)[0]  # the fit as written is trusted ...
    edited = json.loads(json.dumps(fitted))
    edit(edited)
    ok, why = trust(edited, k)  # ... and no longer after the edit
    assert not ok
    assert __import__("re").search(problem, why), why


def test_another_fits_bootstrap_draws_are_not_read_as_this_ones(tmp_path, capsys):
    one = write_fits(_fit(_table()), tmp_path / "one", plots=False)
    other = write_fits(_fit(_table(seed=2, budgets=(1e19, 1e20, 1e21, 1e22))), tmp_path / "other", plots=False)
    fits, draws = load_fits(one)
    assert draws and len(next(iter(draws.values()))) == 40  # its own draws are read
    before = recommend(one, 1e20)
    shutil.copy(other / "bootstrap.parquet", one / "bootstrap.parquet")
    fits, draws = load_fits(one)
    assert draws == {} and "was not written with fits.json as it is now" in capsys.readouterr().err
    after = recommend(one, 1e20)  # its intervals are n/a, never the other fit's
    assert before.n_opt == after.n_opt and before.n_opt_ci[0] < before.n_opt < before.n_opt_ci[1]
    assert all(v != v for v in after.n_opt_ci)
    # draws from before the fingerprint: judged by their replicate count
    table = pq.read_table(other / "bootstrap.parquet")
    pq.write_table(table.slice(0, 30).replace_schema_metadata({}), one / "bootstrap.parquet")
    assert load_fits(one)[1] == {} and "holds 30 replicates where fits.json records 40" in capsys.readouterr().err
