"""Fitting held-out nats per event instead of per token (issue 12): the fits, fits.md, plots'
units and `ehrfm fit --loss-column` say which unit they fit."""

import json
import re
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from analysis.fit import fit_results, format_fit_table
from analysis.recommend import format_recommendation, recommend
from analysis.synthetic import BESIROGLU, synthetic_results
from analysis.table import load_results
from ehrfm.errors import UserError

TOKENS_PER_EVENT = 2.5


@pytest.fixture(scope="module")
def table():
    t = synthetic_results(BESIROGLU, budgets=(1e18, 1e19, 1e20), sizes=5, noise=0.005, seed=0)
    return t.with_columns(loss_per_event=pl.col("loss") * TOKENS_PER_EVENT)


def test_loss_per_event_is_fitted_and_named(table):
    per_token = fit_results(load_results(table), approaches=(2,), bootstrap=0)
    per_event = fit_results(load_results(table, loss_column="loss_per_event"), approaches=(2,), bootstrap=0)
    assert per_token.inputs["loss_column"] == "loss" and per_token.inputs["loss_unit"] == "nats/token"
    assert per_event.inputs["loss_column"] == "loss_per_event" and per_event.inputs["loss_unit"] == "nats/event"
    # A constant tokens-per-event factor scales every loss: same optima, L_min scaled by it.
    assert per_event.approach2.a == pytest.approx(per_token.approach2.a, rel=1e-6)
    for bt, be in zip(per_token.approach2.budgets, per_event.approach2.budgets, strict=True):
        assert be.n_opt == pytest.approx(bt.n_opt, rel=1e-6)
        assert be.loss_min == pytest.approx(TOKENS_PER_EVENT * bt.loss_min, rel=1e-6)
    md = format_fit_table(per_event)
    assert "Loss fitted: held-out loss_per_event (nats/event)." in md and "L_min (nats/event)" in md
    assert "nats/token" not in md
    assert "Loss fitted: held-out loss (nats/token)." in format_fit_table(per_token)
    rec = recommend(per_event, 1e19)
    assert rec.loss_unit == "nats/event" and "| loss (nats/event) |" in format_recommendation(rec)


def test_missing_or_bad_loss_column_is_one_clear_error(table):
    with pytest.raises(UserError, match="lacks column loss_per_event"):
        load_results(table.drop("loss_per_event"), loss_column="loss_per_event")
    ids = table["run_id"].to_list()
    bad = table.with_columns(loss_per_event=pl.when(pl.col("run_id") == ids[2]).then(np.nan).otherwise(pl.col("loss_per_event")))
    with pytest.raises(UserError, match=rf"column loss_per_event is missing, NaN, infinite or non-positive in 1 completed run\(s\): {re.escape(ids[2])}"):
        load_results(bad, loss_column="loss_per_event")
    load_results(bad)  # the per-token loss is still whole


def test_cli_loss_column(table, tmp_path):
    path = tmp_path / "results.parquet"
    table.write_parquet(path)
    run = lambda *a: subprocess.run([sys.executable, "-m", "ehrfm", "fit", str(path), *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True)
    p = run("--out", tmp_path / "fit", "--approach", "2", "--bootstrap", "0", "--no-plots", "--loss-column", "loss_per_event")
    assert p.returncode == 0, p.stderr
    assert "loss loss_per_event (nats/event)" in p.stdout
    assert json.loads((tmp_path / "fit/fits.json").read_text())["inputs"]["loss_unit"] == "nats/event"
    assert "(nats/event)" in (tmp_path / "fit/fits.md").read_text()
    runs = pl.read_parquet(tmp_path / "fit/runs.parquet")
    assert "loss" not in runs.columns and runs["loss_per_event"].to_list() == table["loss_per_event"].to_list()
    table.drop("loss_per_event").write_parquet(path)
    p = run("--out", tmp_path / "fit2", "--loss-column", "loss_per_event")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "lacks column loss_per_event" in p.stderr
    assert not (tmp_path / "fit2").exists()
