"""Divergence: a run that blows up (non-finite, or finite but worse than uniform guessing or than
its start) is recorded diverged with the quantity named, and `ehrfm fit` names every run it leaves out."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import polars as pl
import pytest
from test_train import make_token_dir

from analysis.synthetic import BESIROGLU, synthetic_results
from ehrfm.train import divergence_reason

pytestmark = pytest.mark.usefixtures("one_torch_thread")


ENV = {**os.environ, "EHRFM_QUIET": "1", "OMP_NUM_THREADS": "1"}
SHAPE = ["--n-layer", "2", "--d-model", "32", "--n-head", "2", "--context", "64"]


def test_divergence_reason_names_the_quantity_and_the_bound():
    # Non-finite quantities are named, each one, with the step (not the finite loss beside them).
    assert divergence_reason(13, train_loss=5.468, grad_norm=math.inf) == "grad norm became inf at step 13"
    assert divergence_reason(4, train_loss=math.nan, grad_norm=math.inf) == "train loss became nan and grad norm became inf at step 4"
    assert divergence_reason(20, val_loss=-math.inf) == "val loss became -inf at step 20"
    assert divergence_reason(7, train_loss=3.2, grad_norm=0.8) is None
    # Finite blow-ups at the end: above ln V (V = 240: 5.48) and/or above the initial loss.
    ln240 = math.log(240)
    assert divergence_reason(40, vocab_size=240, initial_loss=5.5, val_loss=2.4e6) == (
        f"val loss 2.4e+06 nats/token at step 40 is above uniform guessing ln V = {ln240:.4g} (V = 240) and above the initial loss 5.5"
        " (by more than 5%: its eval has no standard error, fewer than 2 subjects)")
    # Below ln V but worse than where it started (an initial loss under ln V: a strong prior at init).
    assert divergence_reason(9, vocab_size=240, initial_loss=4.0, val_loss=4.25) == (
        "val loss 4.25 nats/token at step 9 is above the initial loss 4 (by more than 5%: its eval has no standard error, "
        "fewer than 2 subjects)")
    # without the eval's standard error, within 5% of a bound is not a blow-up
    assert divergence_reason(9, vocab_size=240, initial_loss=5.5, val_loss=5.49) is None
    assert divergence_reason(9, vocab_size=240, initial_loss=5.5, val_loss=5.9).startswith("val loss 5.9 nats/token at step 9 is above uniform")
    assert divergence_reason(9, vocab_size=240, initial_loss=5.5, val_loss=3.1) is None
    assert divergence_reason(9, vocab_size=240, initial_loss=None, val_loss=5.0) is None


def test_finite_blow_up_is_recorded_diverged_not_completed(tmp_path):
    """--lr 50 (clipped gradients, so everything stays finite) ends far above ln V: diverged."""
    tok = make_token_dir(tmp_path / "tok")  # V = 40: ln V = 3.689
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ehrfm", "train", str(tok), "--out", str(out), *SHAPE, "--tokens", "6000",
           "--batch-size", "4", "--lr", "50", "--eval-tokens", "1024"]
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert p.returncode == 1, p.stderr[-2000:]
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "diverged" and res["diverged_step"] == res["steps"] == 24
    assert res["val_loss"] > 1000 and 3.68 < res["initial_train_loss"] < 3.70  # kept as a diagnosis, never fitted
    assert f"above uniform guessing ln V = {math.log(40):.4g} (V = 40)" in res["error"] and "above the initial loss" in res["error"]
    assert "run diverged: val loss" in p.stderr and p.stderr.count("\n") == 1
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["diverged"] == res["error"] and last["val_loss"] == res["val_loss"]
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True)  # the recorded outcome, not a retrain
    assert again.returncode == 1 and json.loads((out / "result.json").read_text()) == res


def test_non_finite_gradient_is_named_not_the_finite_loss(tmp_path):
    """lr 1e9 without clipping: at step 2 the gradient norm is NaN while that step's loss is finite."""
    from ehrfm.config import TrainConfig
    from ehrfm.train import train

    tok = make_token_dir(tmp_path / "tok")
    res = train(TrainConfig(tokens_dir=str(tok), out_dir=str(tmp_path / "run"), n_layer=2, d_model=32, n_head=2, context=64,
                            tokens=20_000, batch_size=4, lr=1e9, grad_clip=0.0, eval_tokens=1024))
    assert res["status"] == "diverged" and res["error"] == "grad norm became nan at step 2" and res["diverged_step"] == 2
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 2 and last["grad_norm"] is None and math.isfinite(last["train_loss"]) and last["diverged"] == res["error"]


def results_with_bad_runs() -> pl.DataFrame:
    t = synthetic_results(BESIROGLU, budgets=(1e18, 1e19, 1e20), sizes=5, noise=0.005, seed=0)
    t = t.with_columns(vocab_size=pl.lit(240), error=pl.lit(None, dtype=pl.Utf8))
    ids = t["run_id"].to_list()
    return t.with_columns(
        # a diverged run with its reason, and an old "completed" blow-up (2.4e6 nats/token > ln 240)
        status=pl.when(pl.col("run_id") == ids[2]).then(pl.lit("diverged")).otherwise(pl.col("status")),
        error=pl.when(pl.col("run_id") == ids[2]).then(pl.lit("grad norm became inf at step 13")).otherwise(pl.col("error")),
        loss=pl.when(pl.col("run_id") == ids[2]).then(None).when(pl.col("run_id") == ids[7]).then(2.4e6).otherwise(pl.col("loss")),
    )


def test_fit_warns_naming_every_excluded_run(tmp_path):
    t = results_with_bad_runs()
    ids = t["run_id"].to_list()
    t.write_parquet(tmp_path / "results.parquet")
    p = subprocess.run([sys.executable, "-m", "ehrfm", "fit", str(tmp_path / "results.parquet"), "--out", str(tmp_path / "fit"),
                        "--approach", "2", "--bootstrap", "0", "--no-plots"], env=ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    warned = [ln for ln in p.stderr.splitlines() if ln.startswith("ehrfm fit: warning: run ")]
    assert warned == [
        f"ehrfm fit: warning: run {ids[2]} not fitted: status diverged: grad norm became inf at step 13",
        f"ehrfm fit: warning: run {ids[7]} not fitted: status completed but loss 2.4e+06 nats/token is above uniform "
        f"guessing ln V = {math.log(240):.4g}: a blow-up, not a measurement",
    ]
    fits = json.loads((tmp_path / "fit" / "fits.json").read_text())
    assert [e["run_id"] for e in fits["excluded"]] == [ids[2], ids[7]] and fits["n_fitted"] == 13


def test_fit_of_only_excluded_runs_names_them(tmp_path):
    t = results_with_bad_runs().with_columns(status=pl.lit("diverged"), error=pl.lit("grad norm became nan at step 2"))
    t.head(3).write_csv(tmp_path / "r.csv")
    p = subprocess.run([sys.executable, "-m", "ehrfm", "fit", str(tmp_path / "r.csv"), "--out", str(tmp_path / "fit"),
                        "--bootstrap", "0", "--no-plots"], env=ENV, capture_output=True, text=True)
    ids = t["run_id"].to_list()[:3]
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "has no completed runs to fit (3 rows, 3 excluded: " + ", ".join(f"{i} (status diverged)" for i in ids) in p.stderr
    assert not (tmp_path / "fit").exists()


def test_an_eval_of_one_subject_is_warned_and_its_noise_is_not_a_blow_up(tok, tmp_path):
    """Before: with one eval subject there was no standard error and the bounds were strict: this healthy
    tiny run (val 3.702, ln V 3.689, initial 3.704) was recorded diverged, exit 1."""
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "ehrfm", "train", str(tok), "--out", str(out), "--n-layer", "1", "--d-model", "32",
                        "--n-head", "2", "--context", "64", "--batch-size", "8", "--tokens", "1000", "--eval-tokens", "64",
                        "--seed", "1"], capture_output=True, text=True, env={**os.environ, "EHRFM_QUIET": "1"}, timeout=300)
    assert p.returncode == 0, p.stderr
    assert ("ehrfm: warning: the held-out loss is measured on 1 subject of split tuning (raise --eval-tokens): it has no "
            "standard error, and one patient's loss is no estimate of the model's") in p.stderr.splitlines()
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "completed" and res["eval_loss_se"] is None
    assert math.log(res["vocab_size"]) < res["val_loss"] < 1.05 * math.log(res["vocab_size"])


def test_a_run_that_barely_moved_is_not_a_blow_up_at_any_width(tok, tmp_path):
    """An untrained model's logits RMSNorm(h) W^T ~ N(0, 0.02^2 d_model) put its loss ~0.1 nats above ln V at
    d_model 512. Before: one step at a tiny lr with a precise eval (SE 0.01) was recorded diverged, "val loss
    5.748 at step 1 is above uniform guessing ln V = 5.656", exit 1; the width's excess is now allowed for."""
    from ehrfm.results import untrained_excess

    assert untrained_excess(512) == pytest.approx(0.2048) and untrained_excess(float("nan")) == 0.0
    assert divergence_reason(1, vocab_size=40, val_loss=math.log(40) + 0.19, val_loss_se=0.005) is not None
    assert divergence_reason(1, vocab_size=40, val_loss=math.log(40) + 0.19, val_loss_se=0.005, d_model=512) is None
    # a blow-up still is one, and the message names the allowance
    assert divergence_reason(1, vocab_size=40, val_loss=math.log(40) + 0.3, val_loss_se=0.005, d_model=512) == (
        f"val loss {math.log(40) + 0.3:.4g} nats/token at step 1 is above uniform guessing ln V = {math.log(40):.4g} (V = 40) plus an "
        "untrained model's excess 0.2 (d_model 512) (by more than 3 standard errors, 3 x 0.005)")
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "ehrfm", "train", str(tok), "--out", str(out), "--n-layer", "1", "--d-model", "512",
                        "--n-head", "8", "--context", "64", "--batch-size", "4", "--tokens", "64", "--lr", "1e-8",
                        "--eval-tokens", "20000", "--seed", "1"], capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 0, p.stderr
    res = json.loads((out / "result.json").read_text())
    assert res["status"] == "completed" and res["steps"] == 1
    # it sits above ln V by more than 3 SE (the old rule's blow-up), within the width's excess
    lnv = math.log(res["vocab_size"])
    assert lnv + 3 * res["eval_loss_se"] < res["val_loss"] < lnv + untrained_excess(512) + 3 * res["eval_loss_se"], res
    # and the results table's re-check (ehrfm fit) agrees with the trainer
    from analysis.table import load_results

    rows = [{"run_id": r, "n_params": n, "tokens": d, "flops": 6.0 * n * d, "loss": loss, "status": "completed",
             "vocab_size": res["vocab_size"], "eval_loss_se": res["eval_loss_se"], "d_model": 512}
            for r, n, d, loss in (("a", res["n_params"], res["tokens"], res["val_loss"]), ("b", 1e5, 1e7, 3.0), ("c", 2e5, 1e7, 2.9))]
    assert load_results(pl.DataFrame(rows)).excluded == []
