"""The recommender never defaults to a law it cannot stand behind (issue 13, item 10)."""

import json
import subprocess
import sys

from analysis.recommend import format_recommendation, recommend, trust


def _a12(a, a_ci, b=0.9, b_ci=(0.6, 1.2)):
    return {"a": a, "a_ci": list(a_ci), "b": b, "b_ci": list(b_ci), "n_coef": 1e-3, "d_coef": 1e2, "loss_coef": 5.0,
            "loss_exponent": -0.02}


def _fit_dir(tmp_path, **approaches):
    d = tmp_path / "fit"
    d.mkdir(exist_ok=True)
    fits = {**approaches, "inputs": {"min_budget": 1e11, "max_budget": 1e12}, "utility": {}}
    (d / "fits.json").write_text(json.dumps(fits))
    return d


def test_negative_exponent_is_refused_and_said_first(tmp_path):
    d = _fit_dir(tmp_path, approach2=_a12(-0.15, (-0.6, 0.3)))
    rec = recommend(d, 1e13)
    assert not rec.trusted and rec.approach == 2
    text = format_recommendation(rec)
    assert text.splitlines()[0].startswith("**No trustworthy scaling law in this fit**")
    assert "a = -0.15 [-0.6, 0.3] does not grow with compute" in text.splitlines()[0]
    assert "(Approach 2, untrusted)" in text and "| 2 |" in text and "| no: " in text
    p = subprocess.run([sys.executable, "-m", "ehrfm", "recommend", str(d), "--flops", "1e13"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("**No trustworthy scaling law"), p.stdout + p.stderr


def test_interval_including_zero_is_not_the_default(tmp_path):
    assert trust({"approach2": _a12(0.3, (-0.05, 0.7))}, 2) == (False, "the interval of a = 0.3 [-0.05, 0.7] includes 0")
    assert trust({"approach2": _a12(0.5, (0.4, 0.6), b=0.5, b_ci=(0.0, 1.0))}, 2)[0] is False
    assert trust({"approach2": _a12(0.5, (0.4, 0.6))}, 2) == (True, "")
    # A trusted approach exists: it is the headline, the untrusted one is labelled.
    d = _fit_dir(tmp_path, approach2=_a12(0.3, (-0.05, 0.7)), approach1={**_a12(0.5, (0.3, 0.7)), "edge_budgets": []})
    rec = recommend(d, 1e13)
    assert rec.trusted and rec.approach == 1
    text = format_recommendation(rec)
    # Its first line says which approach it passed over, and why, before the numbers.
    first, _, third = text.splitlines()[:3]
    assert first == "**Headline from Approach 1**: Approach 2 is not trusted (the interval of a = 0.3 [-0.05, 0.7] includes 0)."
    assert third.startswith("Budget 1e+13 FLOPs (Approach 1):")
    assert "| 2 |" in text and "includes 0 |" in text
    # Asked for explicitly, it is shown, and its first line says it is not trusted.
    asked = recommend(d, 1e13, approach=2)
    assert asked.approach == 2 and not asked.trusted
    assert format_recommendation(asked).startswith("**Approach 2, as asked, is not trusted**")


def test_approach3_with_unidentified_frontier_is_not_trusted():
    a3 = {"a": 0.45, "a_ci": [0.1, 0.8], "b": 0.55, "b_ci": [0.2, 0.9], "identified": {"G": False}}
    ok, why = trust({"approach3": a3}, 3)
    assert not ok and "G is not identified" in why
    a3["identified"]["G"] = True
    assert trust({"approach3": a3}, 3) == (True, "")


def _iso_table():
    """A synthetic IsoFLOP sweep of a known law (4 budgets x 7 sizes) whose Approach 2 law is sound."""
    from analysis.synthetic import BESIROGLU, synthetic_results

    return synthetic_results(BESIROGLU, budgets=(1e18, 4e18, 1.6e19, 6.4e19), sizes=7, span_decades=1.2, noise=0.005, seed=0)


def test_a_fit_without_intervals_is_never_trusted(tmp_path):
    """`ehrfm fit --bootstrap 0`: every *_ci is null, so no law may pass for trusted (unknown is not a pass)."""
    from analysis.fit import FitConfig, fit_results, write_fits
    from analysis.recommend import NO_INTERVALS

    table = _iso_table()
    fit = fit_results(table, config=FitConfig(approaches=(2, 3), bootstrap=0, holdout=False))
    d = write_fits(fit, tmp_path / "b0", plots=False)
    fits = json.loads((d / "fits.json").read_text())
    assert fits["approach2"]["a"] > 0.3 and fits["approach2"]["a_ci"] == [None, None] and fits["inputs"]["bootstrap"] == 0
    assert trust(fits, 2) == (False, NO_INTERVALS) and trust(fits, 3) == (False, NO_INTERVALS)
    rec = recommend(d, 2.56e20)
    assert not rec.trusted and not any(p.trusted for p in rec.per_approach)
    text = format_recommendation(rec)
    assert text.startswith("**No trustworthy scaling law in this fit**") and "fitted without bootstrap intervals" in text
    # The same table with intervals: Approach 2's law is trusted, so it was the intervals that were missing.
    fit = fit_results(table, config=FitConfig(approaches=(2,), bootstrap=200, holdout=False))
    d = write_fits(fit, tmp_path / "b200", plots=False)
    ok, why = trust(json.loads((d / "fits.json").read_text()), 2)
    assert ok, why
    assert recommend(d, 2.56e20).trusted


def test_unknown_interval_or_identification_is_not_trusted():
    ci = [None, None]
    # no inputs.bootstrap (an older fits.json) and no interval at all: judged as unbootstrapped
    assert trust({"approach2": _a12(0.4, ci, b_ci=ci)}, 2)[0] is False
    assert trust({"approach2": _a12(-0.1, ci, b_ci=ci)}, 2)[0] is False
    # bootstrapped, but b's interval was not reported: the reason fits.json gives is quoted
    fits = {"approach2": _a12(0.5, (0.4, 0.6), b_ci=ci), "inputs": {"bootstrap": 50},
            "intervals_not_available": {"approach2/b": "43 of 50 bootstrap replicates could not be fitted"}}
    assert trust(fits, 2) == (False, "no interval of b (43 of 50 bootstrap replicates could not be fitted): trust cannot be judged")
    # Approach 3 whose G identification is unknown (null) is not trusted either
    a3 = {"a": 0.45, "a_ci": [0.1, 0.8], "b": 0.55, "b_ci": [0.2, 0.9], "identified": {"G": None}}
    ok, why = trust({"approach3": a3, "inputs": {"bootstrap": 100}}, 3)
    assert not ok and "no interval of G" in why


def test_auroc_is_predicted_only_from_a_law_that_rose_and_only_where_a_law_is_trusted(tmp_path):
    d = _fit_dir(tmp_path, approach2=_a12(0.5, (0.4, 0.6)))
    fits = json.loads((d / "fits.json").read_text())
    # 1 - AUROC = coef C^k: rising (k's interval < 0), flat (k's interval includes 0), and saturating at 1e13
    fits["utility"] = {"mortality": {"metric": "auroc/mortality", "coef": 0.5, "exponent": -0.05, "exponent_ci": [-0.08, -0.02]},
                       "icu": {"metric": "auroc/icu", "coef": 3.0, "exponent": -0.05, "exponent_ci": [-0.09, 0.01]},
                       "los": {"metric": "auroc/los", "coef": 1e2, "exponent": -0.5, "exponent_ci": [-0.7, -0.3]}}
    (d / "fits.json").write_text(json.dumps(fits))
    rec = recommend(d, 1e13)
    assert set(rec.utility) == {"mortality", "los"}
    assert abs(rec.utility["mortality"]["auroc"] - (1 - 0.5 * 1e13 ** -0.05)) < 1e-12
    assert any("no AUROC prediction for icu: its utility exponent's interval [-0.09, 0.01] includes 0" in w for w in rec.warnings)
    assert rec.utility["los"]["auroc"] > 0.9999 and any("the AUROC law of los reaches its bound at this budget (AUROC 1.0000)" in w
                                                        for w in rec.warnings)
    assert not any("law of mortality reaches" in w for w in rec.warnings)
    # 1e16 is 10,000x past the largest fitted budget (1e12): no law is trusted there, nor any AUROC from it
    far = recommend(d, 1e16)
    assert far.utility == {} and any(w.startswith("no AUROC prediction for mortality: the budget is 1e+04x past") for w in far.warnings)
    # a law through 2 budgets fits them exactly (r2 1): no prediction from it, as no Approach 2 through 2 budgets;
    # the demo's "AUROC rises" check does not count it either
    fits["utility"]["mortality"]["n_points"], fits["utility"]["los"]["n_points"] = 2, 3
    (d / "fits.json").write_text(json.dumps(fits))
    two = recommend(d, 1e13)
    assert set(two.utility) == {"los"}, two.utility
    assert ("no AUROC prediction for mortality: its utility law goes through 2 budget(s), which a power law fits exactly, "
            "so nothing tests it (>= 3 budgets with an AUROC are needed)") in two.warnings, two.warnings


def test_a_loss_that_does_not_fall_with_compute_is_no_law_to_recommend_from(tmp_path):
    """L_min ~ C^k with k >= 0, or k's interval reaching 0: the larger budgets learned no more; never the default."""
    rising = {**_a12(0.5, (0.4, 0.6)), "loss_exponent": 0.06, "loss_exponent_ci": [0.061, 0.062]}
    ok, why = trust({"approach2": rising}, 2)
    assert not ok and why.startswith("L_min ~ C^k with k = 0.06 [0.061, 0.062] does not fall with compute")
    flat = {**_a12(0.5, (0.4, 0.6)), "loss_exponent": -0.01, "loss_exponent_ci": [-0.03, 0.002]}
    assert trust({"approach2": flat}, 2) == (
        False, "the interval of L_min's exponent k = -0.01 [-0.03, 0.002] reaches 0: the loss may not fall with compute")
    falling = {**_a12(0.5, (0.4, 0.6)), "loss_exponent": -0.01, "loss_exponent_ci": [-0.03, -0.002]}
    assert trust({"approach2": falling}, 2) == (True, "")
    d = _fit_dir(tmp_path, approach2=rising)
    text = format_recommendation(recommend(d, 1e13))
    assert text.startswith("**No trustworthy scaling law in this fit**") and "does not fall with compute" in text.splitlines()[0]


def test_fit_warns_of_a_law_that_shows_no_scaling():
    """The fit says what the recommender will refuse: a loss rising with compute (+1 nat per decade added to an
    exact Chinchilla-form sweep) fits a clean law with L_min ~ C^+k, which `ehrfm fit` printed without a word."""
    import numpy as np
    import polars as pl

    from analysis.fit import fit_results
    from analysis.synthetic import BESIROGLU, synthetic_results

    t = synthetic_results(BESIROGLU, budgets=(1e18, 1e19, 1e20, 1e21), sizes=9, noise=0.005, seed=0)
    clean = fit_results(t, approaches=(2,), bootstrap=50, seed=0)
    assert clean.approach2.loss_exponent < 0 and not any("shows no scaling law" in w for w in clean.warnings)
    rising = t.with_columns(loss=pl.col("loss") + 1.0 * np.log10(t["flops"].to_numpy() / 1e18))
    fit = fit_results(rising, approaches=(2,), bootstrap=50, seed=0)
    assert fit.approach2.loss_exponent > 0
    warned = [w for w in fit.warnings if w.startswith("Approach 2 shows no scaling law here: L_min ~ C^k with k = ")]
    assert len(warned) == 1 and "does not fall with compute" in warned[0]
    assert not trust(fit.to_json(), 2)[0]


def test_a_shape_far_from_n_opt_is_said_with_its_cause(tmp_path):
    """With a large vocabulary the embeddings alone outweigh a small N_opt (total count): the shape line is warned."""
    law = {**_a12(0.5, (0.4, 0.6)), "n_coef": 0.05}  # N_opt = 0.05 * 1e13^0.5 = 1.58e5 at 1e13 FLOPs
    d = tmp_path / "fit"
    d.mkdir()
    (d / "fits.json").write_text(json.dumps({"approach2": law, "n_count": "total", "utility": {},
                                             "inputs": {"min_budget": 1e11, "max_budget": 1e12, "context": 256}}))
    big = recommend(d, 1e13, vocab_size=100_000)
    assert big.shape["n_params_total"] > 2 * big.n_opt
    said = [w for w in big.warnings if w.startswith("the family's nearest shape has ")]
    assert len(said) == 1 and "more than N_opt 1.58e+05: with a vocabulary of 100,000 its embeddings alone are" in said[0]
    small = recommend(d, 1e13, vocab_size=500)
    assert 0.5 < small.shape["n_params_total"] / small.n_opt < 2
    assert not any(w.startswith("the family's nearest shape has ") for w in small.warnings)


def test_an_emptied_approach_in_fits_json_is_said_not_dropped(tmp_path):
    """`"approach2": {}` (a hand edit) was read as "not fitted" without a word; now it is named as damaged."""
    import pytest

    from ehrfm.errors import UserError

    d = _fit_dir(tmp_path, approach2={}, approach1={**_a12(0.5, (0.3, 0.7)), "edge_budgets": []})
    rec = recommend(d, 1e13)
    assert rec.approach == 1 and any("approach2 is empty; not used" in w for w in rec.warnings)
    d = _fit_dir(tmp_path, approach2=[])
    with pytest.raises(UserError, match="has no usable approach: approach2 is not a JSON object"):
        recommend(d, 1e13)


def test_an_approach2_law_through_two_budgets_is_not_trusted():
    """A power law through 2 IsoFLOP minima fits them exactly: Approach 1's 2-point envelope was untrusted for that,
    while Approach 2 through 2 budgets was the trusted headline (at 100x its largest budget it predicted a loss
    below the true E)."""
    budgets = [{"budget": 1e11, "used": True}, {"budget": 1e12, "used": True}, {"budget": 1e13, "used": False}]
    ok, why = trust({"approach2": {**_a12(0.5, (0.4, 0.6)), "budgets": budgets}}, 2)
    assert not ok and why.startswith("it uses 2 budget(s): a power law through 2 IsoFLOP minima fits them exactly"), why
    budgets[2]["used"] = True
    assert trust({"approach2": {**_a12(0.5, (0.4, 0.6)), "budgets": budgets}}, 2) == (True, "")


def test_minima_in_repeated_data_are_no_compute_optimal_law_nor_a_reference_for_approach3():
    """On 1e9 unique tokens Approach 2's minima sat at up to 38 epochs: its law was the trusted headline, while
    Approach 3 (fitted on effective tokens, N_opt within 4% of the truth) was untrusted for disagreeing with it."""
    budgets = [{"budget": b, "used": True, "d_opt": d} for b, d in ((1e19, 2e9), (1e20, 8e9), (1e21, 3.8e10))]
    fits = {"approach2": {**_a12(0.58, (0.54, 0.63)), "budgets": budgets},
            "approach3": {"a": 0.45, "a_ci": [0.40, 0.50], "b": 0.55, "b_ci": [0.50, 0.60], "identified": {"G": True}},
            "inputs": {"unique_tokens": 1e9}}
    ok, why = trust(fits, 2)
    assert not ok and why.startswith("the IsoFLOP minima of budget(s) 1e+20 (8 epochs), 1e+21 (38 epochs) train over 4 "
                                     "epochs of the unique tokens"), why
    assert trust(fits, 3) == (True, "")
    # fresh enough data (at most 4 epochs at every minimum): Approach 2 is the reference again, and the two disagree
    fits["inputs"]["unique_tokens"] = 1e10
    assert trust(fits, 2) == (True, "")
    ok3, why3 = trust(fits, 3)
    assert not ok3 and "disagree" in why3
