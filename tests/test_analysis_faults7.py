"""Faults a review helper found in `ehrfm fit` and `ehrfm recommend` (2026-12-04), each of its kind.

1. One row in another unit (tokens pasted in billions) passed the median-only unit check and was
   fitted into a tight, wrong exponent; now every row is checked, naming the runs.
2. A truncated .csv.gz ended in gzip's EOFError traceback; now one line says it is truncated.
3. A loss column of true/false was fitted as losses of 1.
4. recommend trusted laws of a fits.json without the fitted budgets' ends (at 1e40 FLOPs), a loss
   floor E below 0, a reversed interval, and an Approach 1 without edge_budgets.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
import shutil
import warnings

import numpy as np
import polars as pl
import pytest

from analysis.fit import FitConfig, fit_results, write_fits
from analysis.recommend import recommend
from analysis.synthetic import HOFFMANN, synthetic_results
from analysis.table import load_results
from ehrfm.errors import UserError
from ehrfm.law_checks import trust

BUDGETS = (1e18, 4e18, 1.6e19, 6.4e19)


def _table() -> pl.DataFrame:
    return synthetic_results(HOFFMANN, budgets=BUDGETS, sizes=5, span_decades=0.8, noise=0.002, seed=0)


@pytest.mark.parametrize(("col", "factor"), [("tokens", 1e-9), ("n_params", 1e-6), ("n_params", 1e20), ("flops", 1e-15)])
def test_one_row_in_another_unit_is_refused_naming_the_run(tmp_path, col, factor):
    t = _table().select("run_id", "n_params", "tokens", "flops", "loss")
    bad = t.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.col(col).cast(pl.Float64) * factor)
                         .otherwise(pl.col(col).cast(pl.Float64)).alias(col))
    path = tmp_path / "t.csv"
    bad.write_csv(path)
    with pytest.raises(UserError, match=r"columns flops, n_params and tokens disagree in 1 of 20 completed runs") as e:
        load_results(path)
    assert str(t["run_id"][3]) in str(e.value) and "\n" not in str(e.value)
    t.write_csv(path)
    assert load_results(path).n == 20  # the table as it was: read


def test_a_truncated_gzip_table_is_one_clear_error(tmp_path):
    t = _table().select("run_id", "n_params", "tokens", "flops", "loss")
    whole = gzip.compress(t.write_csv().encode() * 50)
    path = tmp_path / "t.csv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match=r"could not be read as CSV: .*the gzip file ends before its end-of-stream marker: "
                                        r"it is truncated"):
        load_results(path)


def test_a_boolean_loss_column_is_refused(tmp_path):
    t = _table().select("run_id", "n_params", "tokens", "flops", "loss").with_columns(pl.lit(True).alias("loss"))
    for path in (tmp_path / "t.parquet", tmp_path / "t.csv"):
        t.write_parquet(path) if path.suffix == ".parquet" else t.write_csv(path)
        with pytest.raises(UserError, match="column loss is (boolean|not numeric)"):
            load_results(path)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "F"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_results(load_results(_table()), config=FitConfig(bootstrap=40, holdout=False))
    write_fits(fit, out)
    return out


def _edited(fitted, tmp_path, edit) -> str:
    d = tmp_path / "edited"
    shutil.copytree(fitted, d)
    f = json.loads((d / "fits.json").read_text())
    edit(f)
    (d / "fits.json").write_text(json.dumps(f))
    return str(d)


def test_recommend_trusts_no_law_when_the_fitted_range_is_not_recorded(fitted, tmp_path):
    assert recommend(fitted, 1e19).trusted  # the fit as written: trusted within its budgets
    assert not recommend(fitted, 1e40).trusted

    def drop_ends(f):
        del f["inputs"]["min_budget"], f["inputs"]["max_budget"]
    d = _edited(fitted, tmp_path, drop_ends)
    assert recommend(d, 1e19).trusted  # the ends taken from inputs.budgets
    rec = recommend(d, 1e40)  # before: Approach 3 trusted, N_opt 2.1e19, 1e22x past the largest budget
    assert not rec.trusted and all("past the largest fitted budget" in p.why_untrusted for p in rec.per_approach)

    def drop_all(f):
        del f["inputs"]["min_budget"], f["inputs"]["max_budget"], f["inputs"]["budgets"]
    shutil.rmtree(tmp_path / "edited")
    rec = recommend(_edited(fitted, tmp_path, drop_all), 1e19)
    assert not rec.trusted and all("does not record the fitted budgets" in p.why_untrusted for p in rec.per_approach)


def test_trust_refuses_impossible_numbers_of_a_damaged_fit(fitted):
    f = json.loads((fitted / "fits.json").read_text())
    assert trust(f, 3) == (True, "") and trust(f, 2) == (True, "")
    for name, value in (("E", -5.0), ("A", 0.0), ("beta", -0.3)):
        ok, why = trust({**f, "approach3": {**f["approach3"], name: value}}, 3)
        assert not ok and f"{name} = " in why and "fits.json is damaged" in why
    a2 = f["approach2"]
    ok, why = trust({**f, "approach2": {**a2, "a_ci": a2["a_ci"][::-1]}}, 2)
    assert not ok and "interval of a in fits.json is reversed" in why
    a1 = {k: v for k, v in (f.get("approach1") or {"a": 0.5, "b": 0.5, "a_ci": [0.4, 0.6], "b_ci": [0.4, 0.6]}).items()
          if k != "edge_budgets"}
    ok, why = trust({**f, "approach1": a1}, 1)
    assert not ok and "no approach1 edge_budgets" in why
    assert np.isfinite(f["approach3"]["E"])


def test_an_empty_out_and_a_table_given_to_recommend_are_named(tmp_path, capsys):
    """`fit T --out ''` said "output  already exists"; `recommend T.csv` called the table a damaged fits file."""
    from ehrfm.app.cli import main

    t = tmp_path / "t.csv"
    _table().select("run_id", "n_params", "tokens", "flops", "loss").write_csv(t)
    for argv, says in ((["fit", str(t), "--out", ""], "the output path is empty (--out ''): give a path"),
                       (["recommend", str(t), "--flops", "1e18"], f"fits file {t} is a table, not a fits.json")):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err


def test_trust_never_passes_null_numbers_of_a_damaged_fit(fitted):
    """A review helper: edge_budgets null, or Approach 3's E NaN and A null, still passed trust()."""
    f = json.loads((fitted / "fits.json").read_text())
    a1 = {**f["approach2"], "n_points": 4, "edge_budgets": None}
    ok, why = trust({**f, "approach1": a1}, 1)
    assert not ok and "no approach1 edge_budgets list" in why
    ok, why = trust({**f, "approach3": {**f["approach3"], "E": float("nan"), "A": None}}, 3)
    assert not ok and "E is not a number, A is not a number" in why


def test_an_ehrfm_file_output_is_recognised_by_its_content_whatever_its_name(tmp_path):
    """A review helper: `audit --out audit.txt` (or A.JSON) then --overwrite was refused as not ehrfm's, and so was
    every audit and label file written before the mark existed (the demo's own audit.json among them)."""
    from ehrfm.io import check_overwrite, file_output_command

    marked = {"ehrfm_output": "audit", "tasks": {}}
    legacy_audit = {"meds_dir": "M", "labels": "L", "tasks": {}, "clean": True}
    legacy_sidecar = {"task": "long_los", "config": {}, "n": 3}
    for name, content, by in (("a.txt", marked, "audit"), ("A.JSON", marked, "audit"), ("old.json", legacy_audit, "audit"),
                              ("L.json", legacy_sidecar, "labels"), ("notes.json", {"mine": 1}, None)):
        (tmp_path / name).write_text(json.dumps(content))
        assert file_output_command(tmp_path / name) == by, name
    labels = pl.DataFrame({"subject_id": [1], "prediction_time": [dt.datetime(2150, 1, 1)], "boolean_value": [True]})
    labels.write_parquet(tmp_path / "L.parquet")  # an old label file: beside its sidecar, it is the labels' output
    labels.write_parquet(tmp_path / "mine.parquet")  # the same columns, no sidecar: a user's file
    assert file_output_command(tmp_path / "L.parquet") == "labels" and file_output_command(tmp_path / "mine.parquet") is None
    check_overwrite(tmp_path / "a.txt", True, command="audit")
    check_overwrite(tmp_path / "L.parquet", True, command="labels")
    with pytest.raises(UserError, match="holds the output of `ehrfm labels`, not of `ehrfm audit`"):
        check_overwrite(tmp_path / "L.json", True, command="audit")
    with pytest.raises(UserError, match="is a file ehrfm did not write"):
        check_overwrite(tmp_path / "mine.parquet", True, command="labels")


def test_a_fit_that_fails_names_the_rows_it_left_out():
    """A failed fit said only "1e+10: 2 distinct model size(s)"; the run left out (failed, or above uniform
    guessing) that made it so was named only by a warning of a fit that succeeds. Now the error names it."""
    t = synthetic_results(HOFFMANN, budgets=BUDGETS[:2], sizes=3, span_decades=0.8, noise=0.002, seed=0)
    t = t.with_columns(status=pl.when(pl.int_range(pl.len()) == 1).then(pl.lit("failed")).otherwise(pl.lit("completed")),
                       error=pl.lit(None, pl.String))
    gone = t["run_id"][1]
    with pytest.raises(UserError) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_results(load_results(t), config=FitConfig(approaches=(2,), bootstrap=0, holdout=False))
    assert f"(1 row(s) not fitted: status failed 1: {gone})" in str(e.value), str(e.value)


def test_a_wandb_export_takes_its_state_column_as_the_status(tmp_path):
    """W&B's runs export names the status "State" (finished, crashed, running): before, its crashed and
    running runs were fitted as completed ("35 runs (0 excluded)")."""
    t = _table().select("n_params", "tokens", "flops", "loss")
    state = ["finished"] * t.height
    state[2], state[7] = "crashed", "running"
    t.with_columns(pl.Series("State", state)).write_csv(tmp_path / "wandb.csv")
    res = load_results(tmp_path / "wandb.csv")
    assert res.n == t.height - 2
    assert sorted(e["reason"] for e in res.excluded) == ["status crashed", "status running"]


def test_rows_with_a_count_below_one_are_refused_in_a_table_without_flops(tmp_path):
    """Tokens pasted in billions in 5 of 20 rows of a table without flops: before, fitted (a budget of
    3e7 FLOPs with D_opt 0.4 tokens) with no word of the column."""
    t = _table().select("n_params", "tokens", "loss")
    t = t.with_columns(pl.when(pl.int_range(pl.len()) < 5).then(pl.col("tokens").cast(pl.Float64) / 1e11)
                       .otherwise(pl.col("tokens").cast(pl.Float64)).alias("tokens"))
    assert (t["tokens"] < 1).sum() == 5
    t.write_csv(tmp_path / "t.csv")
    with pytest.raises(UserError, match=r"column tokens is below 1 in 5 of 20 completed runs"):
        load_results(tmp_path / "t.csv")


def test_a_csv_whose_rows_are_cut_short_is_refused_naming_the_lines(tmp_path):
    """A results CSV cut off in a copy: its last row's missing cells were read as nulls, and the run said
    to be "not fitted: status <null>" (or, with no status column, fitted on what was left)."""
    t = _table().select("run_id", "n_params", "tokens", "flops", "loss")
    t.write_csv(tmp_path / "t.csv")
    text = (tmp_path / "t.csv").read_text()
    (tmp_path / "cut.csv").write_text(text[: text.rstrip("\n").rfind(",")])  # the last row without its loss
    with pytest.raises(UserError, match=r"cut.csv: 1 row\(s\) have fewer fields than its header's 5 \(line 21\)"):
        load_results(tmp_path / "cut.csv")
    (tmp_path / "blank.csv").write_text(text + "\n")  # a blank line at the end is no row
    assert load_results(tmp_path / "blank.csv").n == 20


def test_a_table_pasted_twice_with_rounded_losses_is_not_taken_for_seeds(tmp_path):
    """A table pasted twice under new run ids, losses rounded to 4 decimals: before, fitted as 20 shapes of
    two seeds with no scatter (Approach 1's interval narrowed from [0.283, 0.788] to [0.415, 0.683] in the
    review's table). Real seeds rounded alike are kept."""
    t = _table().select("n_params", "tokens", "flops", pl.col("loss").round(4))
    twice = pl.concat([t, t]).with_row_index("run_id").with_columns(pl.col("run_id").cast(pl.Utf8))
    twice.write_csv(tmp_path / "twice.csv")
    with pytest.raises(UserError, match=r"each of the 20 shapes run more than once has one loss in all of its 40 runs"):
        load_results(tmp_path / "twice.csv")
    rng = np.random.default_rng(0)
    seeds = pl.concat([t, t.with_columns((pl.col("loss") * np.exp(rng.normal(0, 0.01, t.height))).round(4))])
    seeds = seeds.with_columns(pl.when(pl.int_range(pl.len()) == 20).then(pl.col("loss").first()).otherwise(pl.col("loss")))
    seeds.with_row_index("run_id").with_columns(pl.col("run_id").cast(pl.Utf8)).write_csv(tmp_path / "seeds.csv")
    assert load_results(tmp_path / "seeds.csv").n == 40  # one shape's two seeds alike by chance: still seeds


def test_a_power_law_loss_far_from_approach_3s_frontier_is_flagged(tmp_path):
    """Approaches 1-2 predict L_min ~ C^k, with no floor: on Besiroglu-law data (budgets 1e15-1e17) at 1e19
    Approach 2 said 2.468 [2.44, 2.50], "trusted", where the law's loss is 2.93 and Approach 3's frontier
    2.944, without a word. Inside the fitted budgets they agree and nothing is said."""
    from analysis.synthetic import BESIROGLU

    t = synthetic_results(BESIROGLU, budgets=(1e15, 1e16, 1e17), sizes=7, span_decades=1.0, noise=0.005, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_results(load_results(t), config=FitConfig(bootstrap=60, holdout=False))
    far = recommend(fit, 1e19, approach=2)
    gap = [w for w in far.warnings if w.startswith("Approach 2's predicted loss") and "below Approach 3's frontier" in w]
    assert len(gap) == 1 and far.loss < 0.9 * BESIROGLU.loss(BESIROGLU.n_opt(1e19), 1e19 / 6 / BESIROGLU.n_opt(1e19))
    near = recommend(fit, 1e17, approach=2)
    assert not [w for w in near.warnings if "Approach 3's frontier" in w]


def test_approach_1_says_which_budgets_its_envelope_leaves_out():
    """One run recorded 30% low at the second budget: the lower envelope kept no later budget, and Approach 1's
    law rested on two of four budgets without a word (the review's table: 3 of 5)."""
    t = _table()
    second = t.filter(pl.col("budget") == BUDGETS[1])["loss"].arg_min()
    row = t.with_row_index().filter(pl.col("budget") == BUDGETS[1])["index"][second]
    t = t.with_columns(pl.when(pl.int_range(pl.len()) == row).then(pl.col("loss") * 0.7).otherwise(pl.col("loss")).alias("loss"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_results(load_results(t), config=FitConfig(approaches=(1,), bootstrap=0, holdout=False))
    said = [str(w.message) for w in caught if "lower envelope leaves out" in str(w.message)]
    assert fit.approach1.n_points == 2 and len(said) == 1
    assert "leaves out 2 of 4 budgets (1.6e+19, 6.4e+19 FLOPs)" in said[0]


def test_a_minimal_table_with_parameters_in_millions_is_said_by_fit_and_recommend(tmp_path):
    """Chinchilla's tables give "Model Size (M)": n_params in millions with no flops column passed the median
    check (a median of 228 "parameters" is above 100) and was fitted silently, every absolute N_opt 1e6 too small
    and recommended as "trusted". One row in millions in such a table became a stray budget, named nowhere."""
    from analysis.recommend import format_recommendation

    t = _table().select("run_id", "n_params", "tokens", "loss")
    assert not [w for w in _fit_warnings(t) if "tokens / n_params" in w]  # real units: nothing said
    millions = t.with_columns(pl.col("n_params") * 1e-6)
    said = [w for w in _fit_warnings(millions) if "tokens / n_params" in w]
    assert len(said) == 1 and "is n_params in millions" in said[0] and re.search(r"is \d\.\d+e\+07 in the median run", said[0]), said
    fit = _fit_quiet(millions)
    write_fits(fit, tmp_path / "fit", plots=False)
    text = format_recommendation(recommend(tmp_path / "fit", 1e12))
    assert "is n_params in millions" in text

    one = t.with_columns(pl.when(pl.int_range(pl.len()) == 9).then(pl.col("n_params") * 1e-6).otherwise(pl.col("n_params")))
    said = [w for w in _fit_warnings(one) if "tokens / n_params" in w]
    assert len(said) == 1 and "1 run(s) have tokens / n_params more than 10000x" in said[0] and t["run_id"][9] in said[0], said


def _fit_quiet(t):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_results(load_results(t), config=FitConfig(bootstrap=20, holdout=False))


def _fit_warnings(t) -> list[str]:
    return _fit_quiet(t).warnings
