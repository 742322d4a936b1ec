"""Faults a break-it helper found in `ehrfm fit` and `ehrfm recommend` on hand-made tables (2026-12-07), each of its kind.

1. Every run at 20 tokens per parameter (exact Chinchilla losses): Approach 3 was trusted and recommended N_opt
   2.8e7 for 1e21 FLOPs, 65x below the truth (1.8e9), at a predicted loss 0.37 nats below the true optimum's.
2. A fits.json from before approach2.loss_law_misses printed a loss interval the current fit withholds.
3. Numbers edited by hand with their intervals edited alike were trusted: G beside A, B, alpha, beta; E above every
   measured minimum (a predicted loss of 1e9); Approach 2's n_coef (N_opt x D_opt x 6 = 1.5e6 x the budget).
4. Intervals of one element or [NaN, 0.4] were read as no interval, not as damage.
5. An interval of relative width 1e-9 (an optimizer's float noise) was printed as a certain [x, x].
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import polars as pl
import pytest

from analysis.fit import fit_results, write_fits
from analysis.laws import interval_problem
from analysis.recommend import recommend
from analysis.synthetic import HOFFMANN, synthetic_results
from ehrfm.law_checks import MIN_TOKENS_PER_PARAM_SPAN, trust

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28


def _chinchilla(n, d):
    return E + A / n**ALPHA + B / d**BETA


def test_approach3_on_runs_of_one_tokens_per_parameter_ratio_is_not_trusted(tmp_path):
    n = np.logspace(7, 10, 12)
    d = 20 * n
    table = pl.DataFrame({"n_params": n, "tokens": d, "flops": 6 * n * d, "loss": _chinchilla(n, d)})
    fit = fit_results(table, approaches=(3,), bootstrap=60, seed=0)
    assert fit.approach3.tokens_per_param == pytest.approx([20.0, 20.0])
    write_fits(fit, tmp_path / "fit", plots=False)
    fits = json.loads((tmp_path / "fit" / "fits.json").read_text())
    ok, why = trust(fits, 3)
    assert not ok and "its runs sample tokens per parameter (D/N) over only 1x (20 to 20)" in why, why
    rec = recommend(tmp_path / "fit", 1e21)
    assert not rec.trusted
    # an IsoFLOP grid samples the trade-off: trusted, and its N_opt is the law's
    grid = synthetic_results(HOFFMANN, budgets=np.logspace(18, 21, 4), sizes=7, noise=0.005, seed=1)
    full = fit_results(grid, approaches=(3,), bootstrap=60, seed=0)
    lo, hi = full.approach3.tokens_per_param
    assert hi / lo > MIN_TOKENS_PER_PARAM_SPAN
    write_fits(full, tmp_path / "grid", plots=False)
    assert trust(json.loads((tmp_path / "grid" / "fits.json").read_text()), 3) == (True, ""), \
        trust(json.loads((tmp_path / "grid" / "fits.json").read_text()), 3)
    # a fit written before the key is judged as before; a damaged value is damage
    older = json.loads((tmp_path / "grid" / "fits.json").read_text())
    older["approach3"].pop("tokens_per_param")
    assert trust(older, 3) == (True, "")
    older["approach3"]["tokens_per_param"] = [30.0, "x"]
    assert "tokens_per_param in fits.json is not a [min, max] pair" in trust(older, 3)[1]


@pytest.fixture(scope="module")
def grid_fit(tmp_path_factory):
    table = synthetic_results(HOFFMANN, budgets=np.logspace(18, 21, 4), sizes=7, noise=0.005, seed=1)
    out = tmp_path_factory.mktemp("a10") / "fit"
    write_fits(fit_results(table, bootstrap=200, seed=0), out, plots=False)
    return json.loads((out / "fits.json").read_text())


def test_an_older_fit_without_the_loss_law_misses_record_gets_no_loss_interval(grid_fit, tmp_path):
    fits = copy.deepcopy(grid_fit)
    fits["approach2"].pop("loss_law_misses")
    (tmp_path / "fit").mkdir()
    (tmp_path / "fit" / "fits.json").write_text(json.dumps(fits))
    rec = recommend(tmp_path / "fit", 1e22)
    (a2,) = [p for p in rec.per_approach if p.approach == 2]
    assert all(math.isnan(v) for v in a2.loss_ci)
    assert any("does not record whether its loss law L_min ~ C^k misses" in w for w in rec.warnings), rec.warnings


@pytest.mark.parametrize("edit, says", [
    (lambda f: f["approach3"].update(G=100.0, G_ci=[90.0, 110.0]), "its G = 100 is not that of its A, B, alpha and beta"),
    (lambda f: f["approach3"].update(E=1e9, E_ci=[1e9 - 1, 1e9 + 1]), "its irreducible loss E = 1e+09 is above every fitted"),
    (lambda f: f["approach3"].update(alpha_ci=[0.3]), "the interval of alpha in fits.json is not a pair"),
    (lambda f: f["approach3"].update(alpha_ci=[None, 0.4]), "the interval of alpha in fits.json is not a pair"),
])
def test_approach3_numbers_edited_with_their_intervals_are_damage(grid_fit, edit, says):
    assert trust(grid_fit, 3) == (True, "")
    fits = copy.deepcopy(grid_fit)
    edit(fits)
    ok, why = trust(fits, 3)
    assert not ok and says in why and "damaged" in why, why


def test_approach2_n_coef_edited_with_its_interval_is_damage(grid_fit):
    assert trust(grid_fit, 2) == (True, "")
    fits = copy.deepcopy(grid_fit)
    fits["approach2"].update(n_coef=1e6, n_coef_ci=[9e5, 1.1e6])
    ok, why = trust(fits, 2)
    assert not ok and "its N_opt x D_opt at the fitted budget 1e+18 FLOPs is" in why, why


def test_runs_of_many_flops_per_parameter_token_are_no_damage(tmp_path):
    """FLOPs per parameter per token of 30 (attention and embeddings of a small model: ehrfm.shapes counts them):
    N_opt x D_opt x 6 is a fifth of the budget, and a check against 6 called such a fit damaged."""
    table = synthetic_results(HOFFMANN, budgets=np.logspace(18, 21, 4), sizes=7, noise=0.005, seed=1)
    table = table.with_columns((pl.col("flops") * 5).alias("flops"), (pl.col("budget") * 5).alias("budget"))
    write_fits(fit_results(table, approaches=(1, 2), bootstrap=200, seed=0), tmp_path / "fit", plots=False)
    fits = json.loads((tmp_path / "fit" / "fits.json").read_text())
    for k in (1, 2):
        assert "damaged" not in trust(fits, k)[1], trust(fits, k)


def test_an_interval_of_float_noise_width_is_not_available():
    draws = 1.824217696e9 + np.random.default_rng(0).uniform(-1, 1, 500)
    assert interval_problem(draws).startswith("zero width: every replicate gives 1.82e+09")
    assert interval_problem(1.0 + np.random.default_rng(0).normal(0, 1e-4, 500)) == ""


def test_a_fits_json_reindented_keeps_its_draws_and_an_edited_one_does_not(grid_fit, tmp_path, capsys):
    """Before: `json.dump(json.load(f), indent=1)` (the same values) dropped every interval: the draws were matched to
    fits.json by its bytes. They are matched by its content now; an edited value still unmatches them."""
    import shutil

    from analysis.fit import load_fits

    table = synthetic_results(HOFFMANN, budgets=np.logspace(18, 21, 4), sizes=7, noise=0.005, seed=1)
    out = write_fits(fit_results(table, approaches=(2,), bootstrap=60, seed=0), tmp_path / "fit", plots=False)
    path = out / "fits.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=1))
    fits, draws = load_fits(out)
    assert draws and "was not written with" not in capsys.readouterr().err
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    f = json.loads((edited / "fits.json").read_text())
    f["approach2"]["a"] *= 1.01
    (edited / "fits.json").write_text(json.dumps(f))
    fits, draws = load_fits(edited)
    assert draws == {} and "was not written with fits.json as it is now" in capsys.readouterr().err
